"""The region an object edit may change, for preserving everything else (beyond the paper).

An object edit changes the pixels of the object where it was (now background or a hole), where
it lands, the disocclusion holes, and what the object does to its surroundings: contact shadows
and ambient occlusion on the floor beneath it, antialiased edges. The region is chosen as:

1. ``U = M_o | M'_o | (1 - M_v)``: source object, target object, holes;
2. dilated by a margin ``r`` pixels (default ``max(2, 0.15 * sqrt(area(U)))``: a fraction of the
   object's size, so it scales with the image and the object);
3. extended *downwards* in the image by ``2 r`` more (objects rest on the floor below them, where
   their contact shadows fall);
4. feathered over ``f = max(1, r // 2)`` pixels outside (a box blur of the region dilated by
   ``f``), so the seam is soft and the region itself has weight exactly 1.

Long cast shadows of a low sun fall outside it; the guided generation there is replaced by the
input, as the paper's background energy asks for anyway.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EDIT_MARGIN = 0.15  # edit and hole region margin, as a fraction of the sqrt of the region's area


def _dilate(m: torch.Tensor, r: int) -> torch.Tensor:
    """Square dilation of ``m`` ``(B, 1, H, W)`` in {0, 1} by ``r`` pixels."""
    if r <= 0:
        return m
    return F.max_pool2d(m, 2 * r + 1, stride=1, padding=r)


def _extend_down(m: torch.Tensor, d: int) -> torch.Tensor:
    """``m`` or'ed with itself shifted 1..d pixels down (image +y)."""
    if d <= 0:
        return m
    pad = F.pad(m, (0, 0, d, 0))  # (B, 1, H + d, W): d rows on top
    return F.max_pool2d(pad, (d + 1, 1), stride=1)[..., : m.shape[-2], :]


def edit_region(object_mask: torch.Tensor, edited_mask: torch.Tensor, valid: torch.Tensor,
                margin: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hard, soft)`` edit region, both ``(B, 1, H, W)`` float in [0, 1] (see the module doc).

    Args:
        object_mask: ``M_o`` ``(B, 1, H, W)`` (> 0.5 = object); edited_mask: ``M'_o``;
        valid: ``M_v`` (0 = disocclusion hole).
        margin: ``r`` in pixels (default: 15 % of the square root of the union's area, >= 2).

    Returns:
        ``hard`` in {0, 1}: where the edit may change the image; ``soft``: 1 on ``hard``,
        falling to 0 over ``max(1, r // 2)`` pixels outside it (the blending weight of the edit).
    """
    u = ((object_mask > 0.5) | (edited_mask > 0.5) | (valid < 0.5)).float()  # (B, 1, H, W)
    return _grow(u, margin, EDIT_MARGIN, 2, down=True)


def _grow(u: torch.Tensor, margin: int | None, fraction: float, minimum: int, down: bool
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 2-4 of the module doc on ``u`` ``(B, 1, H, W)`` in {0, 1}: dilate by ``margin`` pixels
    (default ``max(minimum, fraction * sqrt(area(u)))``, the largest area of the batch), extend
    ``2 * margin`` down when ``down``, feather over ``max(1, margin // 2)``; ``(hard, soft)``."""
    if margin is None:
        area = float(u.flatten(1).sum(1).max())
        margin = max(minimum, int(round(fraction * math.sqrt(area))))
    hard = _dilate(u, margin)
    if down:
        hard = _extend_down(hard, 2 * margin)
    f = max(1, margin // 2)
    soft = F.avg_pool2d(_dilate(hard, f), 2 * f + 1, stride=1, padding=f, count_include_pad=False)
    return hard, torch.maximum(soft, hard).clamp(0.0, 1.0)


def latent_region(hard: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """The region at latent size ``(B, 1, h, w)``: a cell is free if any of its pixels is, plus a
    one-cell border (the UNet's and VAE's receptive fields mix neighbouring cells)."""
    cell = F.adaptive_max_pool2d(hard.float(), latent_hw)
    return _dilate(cell, 1)


REMOVAL_MARGIN = 0.25  # removal region margin, as a fraction of the sqrt of the object's area


def removal_region(object_mask: torch.Tensor, margin: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hard, soft)`` region regenerated when an object is removed, ``(B, 1, H, W)`` in [0, 1].

    The object leaves more than its silhouette behind: its contact shadow and ambient occlusion
    on the floor under it, the cast shadow beside it and antialiased edges. Where the sun is is
    not known from one photo, so the region is the mask grown generously, as in
    :func:`edit_region` but with a wider margin: ``r = max(3, 0.25 * sqrt(area))`` pixels around
    (a quarter of the object's size: the contact shadow and edge halo, and a short cast shadow
    in any direction), then extended ``2 r`` further *down* the image, where a resting object's
    shadow falls on the floor. A longer cast shadow (low sun) stays partly outside; pass a
    larger ``margin`` for it.

    Args:
        object_mask: ``(B, 1, H, W)`` (> 0.5 = the object to remove).
        margin: ``r`` in pixels (default above).
    """
    return _grow((object_mask > 0.5).float(), margin, REMOVAL_MARGIN, 3, down=True)


def hole_region(valid: torch.Tensor, margin: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hard, soft)`` region around the disocclusion holes ``M_v = 0`` of a camera move,
    ``(B, 1, H, W)`` in [0, 1]: the holes grown by ``r = max(2, 0.15 * sqrt(area))`` pixels (no
    downward extension: no object rests there), feathered over ``max(1, r // 2)`` pixels.
    Outside it a camera move keeps the input *warped* to the new view."""
    return _grow((valid < 0.5).float(), margin, EDIT_MARGIN, 2, down=False)
