"""GuidanceConfig.hole_noise: fresh noise in the latent cells a move uncovers, nowhere else."""

from __future__ import annotations

import torch

from diffusion_handles.geometry import HandleEdit, compute_edit
from diffusion_handles.stages.s4_targets import fresh_holes


def test_only_the_uncovered_cells_away_from_the_moved_object_get_fresh_noise():
    """A box moved right uncovers its left part: those cells change, the cells the box's new
    place touches and everything else keep the inverted noise; a mask taken from the wrong side
    (the moved object instead of the holes) fails."""
    depth = torch.full((1, 1, 64, 64), 5.0)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 24:40, 8:32] = 1.0
    depth[mask > 0.5] = 3.0
    geom = compute_edit(depth, mask, HandleEdit(translate=(0.6, 0.0, 0.0)))
    x_T = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    out = fresh_holes(x_T, geom)
    changed = (out != x_T).any(dim=1)[0]  # (8, 8) cells
    holes = geom.valid[0, 0] < 0.5
    assert bool(holes[24:40, 8:16].all())  # the box's left part is uncovered
    assert bool(changed[3:5, 1].all())  # its cells (rows 24-39 -> 3-4, cols 8-15 -> 1) are re-drawn
    moved = geom.edited_mask[0, 0] > 0.5
    ys, xs = torch.nonzero(moved, as_tuple=True)
    y0, y1, x0, x1 = int(ys.min()) // 8, int(ys.max()) // 8, int(xs.min()) // 8, int(xs.max()) // 8
    assert not bool(changed[y0:y1 + 1, x0:x1 + 1].any())  # every cell the new place touches
    assert not bool(changed[0].any()) and not bool(changed[-1].any())  # far from the edit: kept
    assert torch.equal(fresh_holes(x_T, geom), out)  # seeded: the same every time
