"""Small synthetic scenes with known geometry for the geometry tests."""

from __future__ import annotations

import torch


def box_on_wall(h: int = 96, w: int = 128, z_wall: float = 6.0, z_box: float = 3.0, box=(30, 60, 40, 80), dtype=torch.float64):
    """A fronto-parallel square at ``z_box`` in front of a wall at ``z_wall``.

    Returns ``(depth (1,1,H,W), mask (1,1,H,W))``; ``box = (y0, y1, x0, x1)`` pixel rows/cols.
    """
    y0, y1, x0, x1 = box
    depth = torch.full((1, 1, h, w), z_wall, dtype=dtype)
    mask = torch.zeros((1, 1, h, w), dtype=dtype)
    mask[..., y0:y1, x0:x1] = 1.0
    depth[mask > 0.5] = z_box
    return depth, mask


def bbox(mask: torch.Tensor):
    """``(y0, y1, x0, x1)`` half-open bounding box of ``mask > 0.5``."""
    ys, xs = torch.nonzero(mask.squeeze() > 0.5, as_tuple=True)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
