"""Z-buffered forward splatting of points into an image grid (used by step 3 of Sec. 5.1).

Overlapping points keep the one nearest the camera (smallest z), as the paper does for
overlaps of ``P o T o L_d``. Each point covers the pixels whose centres lie within a square of
side ``footprint`` pixels around its projection, so a surface brought closer (magnified) does
not break up into a sieve of single pixels. Fully vectorised: one ``scatter_reduce`` per call.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_EPS = 1e-4  # pixels: a centre exactly on a footprint's edge counts as covered
MAX_FOOTPRINT = 8.0  # pixels; a point may cover at most an 8x8 square when magnified


def zbuffer_splat(
    pixels: torch.Tensor,
    z: torch.Tensor,
    batch_index: torch.Tensor,
    footprint: torch.Tensor,
    batch: int,
    height: int,
    width: int,
) -> torch.Tensor:
    """Splat points into a z-buffer.

    Args:
        pixels: ``(N, 2)`` projected positions (x, y) in pixel units (pixel-centre convention:
            pixel ``(i, j)`` has its centre at ``(j + 0.5, i + 0.5)``).
        z: ``(N,)`` z-depth of each point (scene units), > 0.
        batch_index: ``(N,)`` long, which image of the batch each point belongs to.
        footprint: ``(N,)`` side of each point's square footprint in pixels (>= 1).
        batch, height, width: output grid size.

    Returns:
        ``(B, 1, H, W)`` the smallest z that landed on each pixel, ``+inf`` where none did.
    """
    zbuf = torch.full((batch * height * width,), math.inf, dtype=z.dtype, device=z.device)
    if pixels.shape[0] == 0:
        return zbuf.view(batch, 1, height, width)
    half = footprint.clamp(min=1.0) * 0.5 + _EPS  # (N,)
    k = int(math.ceil(float(half.max()) * 2.0)) + 1  # window side covering every footprint
    offsets = torch.arange(k, device=z.device)
    # Lowest candidate pixel index per axis, then a k x k window of candidates; (N, 2)
    lo = torch.floor(pixels - half[:, None] - 0.5).long() + 1
    cand_x = lo[:, 0:1] + offsets  # (N, k)
    cand_y = lo[:, 1:2] + offsets  # (N, k)
    in_x = ((cand_x.to(z.dtype) + 0.5 - pixels[:, 0:1]).abs() <= half[:, None]) & (cand_x >= 0) & (cand_x < width)
    in_y = ((cand_y.to(z.dtype) + 0.5 - pixels[:, 1:2]).abs() <= half[:, None]) & (cand_y >= 0) & (cand_y < height)
    keep = in_y[:, :, None] & in_x[:, None, :]  # (N, k, k)
    flat = batch_index[:, None, None] * (height * width) + cand_y[:, :, None] * width + cand_x[:, None, :]
    flat = flat[keep]  # (M,)
    zz = z[:, None, None].expand(-1, k, k)[keep]  # (M,)
    zbuf.scatter_reduce_(0, flat, zz, reduce="amin", include_self=True)
    return zbuf.view(batch, 1, height, width)


def close_zbuffer(zbuf: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Morphological closing of a z-buffer's coverage, filling pinholes left by splatting.

    A pixel not covered but inside the closing (dilate then erode, ``(2r+1)^2`` square) of the
    covered set gets the smallest z among its covered neighbours; everything else is unchanged.

    Args:
        zbuf: ``(B, 1, H, W)`` z-depth with ``+inf`` where empty.

    Returns:
        ``(B, 1, H, W)`` the closed z-buffer.
    """
    if radius <= 0:
        return zbuf
    size = 2 * radius + 1
    covered = torch.isfinite(zbuf).to(zbuf.dtype)
    dilated = F.max_pool2d(covered, size, stride=1, padding=radius)
    # erosion of the dilated set; outside the image counts as covered so borders don't erode
    closed = -F.max_pool2d(-F.pad(dilated, (radius,) * 4, value=1.0), size, stride=1) > 0.5
    finite = torch.where(torch.isfinite(zbuf), zbuf, torch.full_like(zbuf, math.inf))
    nearest = -F.max_pool2d(-finite, size, stride=1, padding=radius)  # min over the window
    fill = closed & ~torch.isfinite(zbuf) & torch.isfinite(nearest)
    return torch.where(fill, nearest, zbuf)
