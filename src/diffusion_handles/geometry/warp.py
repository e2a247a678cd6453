"""The warping operator W of Eq. 4: ``W[X, F](u) = X(u - F(u))``.

Signals ``X`` (images, masks, activations of any resolution) are sampled bilinearly (the
paper's ``rho`` of Eq. 6) at the *source* coordinates ``u - F(u)``. Coordinates are the
paper's normalised ``[0, 1]^2`` with pixel centres at ``(j + 0.5) / W``, which is exactly
``grid_sample``'s ``align_corners=False`` convention after mapping ``[0, 1] -> [-1, 1]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def warp(x: torch.Tensor, source: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Eq. 4 (and Eq. 6 with bilinear ``rho``): sample ``x`` at ``source``.

    Args:
        x: ``(B, C, h, w)`` signal on its own grid (any resolution).
        source: ``(B, 2, h', w')`` normalised ``[0, 1]^2`` source coordinates ``u - F(u)``
            (channel 0 is x, channel 1 is y) for every output pixel ``u``.
        mode: ``"bilinear"`` (default) or ``"nearest"``.

    Returns:
        ``(B, C, h', w')``; samples that fall outside the image are zero.
    """
    if x.dim() != 4 or source.dim() != 4 or source.shape[1] != 2:
        raise ValueError(f"warp: expected x (B, C, h, w) and source (B, 2, h', w'), got {tuple(x.shape)} and {tuple(source.shape)}")
    if source.shape[0] != x.shape[0]:
        if source.shape[0] == 1:
            source = source.expand(x.shape[0], -1, -1, -1)
        else:
            raise ValueError(f"warp: batch of source ({source.shape[0]}) does not match x ({x.shape[0]})")
    grid = (source.to(x.dtype) * 2.0 - 1.0).permute(0, 2, 3, 1)  # (B, h', w', 2) in [-1, 1]
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def warp_masked(x: torch.Tensor, mask: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised bilinear warp of ``x`` restricted to ``mask``: ``W[x M] / W[M]``.

    Bilinear taps that fall outside ``mask`` are dropped and the rest renormalised, so values
    near a mask's edge are not mixed with what lies outside it (e.g. the object's 3D points
    with the background's).

    Args:
        x: ``(B, C, h, w)``; mask: ``(B, 1, h, w)`` in ``[0, 1]``; source as in :func:`warp`.

    Returns:
        ``(values, weight)``: ``(B, C, h', w')`` and the warped mask ``(B, 1, h', w')``;
        ``values`` is 0 where ``weight`` is 0.
    """
    num = warp(x * mask, source)
    den = warp(mask, source)
    values = torch.where(den > 1e-6, num / den.clamp(min=1e-6), torch.zeros_like(num))
    return values, den
