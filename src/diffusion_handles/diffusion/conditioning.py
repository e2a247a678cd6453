"""Depth conditioning of Stable Diffusion 2 depth: the one place where z-depth becomes ``c_d``.

SD2-depth was trained with MiDaS (DPT) predictions as its depth channel: *relative inverse
depth* (disparity up to scale and shift), resized to the latent grid and normalised per image
to ``[-1, 1]`` (nearest surface +1, farthest -1). Every caller (inversion, guided generation,
the miniature world's training) converts through :func:`depth_to_condition`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def depth_to_condition(depth_z: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """z-depth to SD2-depth's conditioning channel.

    Args:
        depth_z: ``(B, 1, H, W)`` z-depth in scene units, positive (any units: the result is
            invariant to a global scale of the depth).
        latent_hw: ``(h, w)`` of the latent grid (image size / VAE factor).

    Returns:
        ``(B, 1, h, w)`` float tensor in ``[-1, 1]``: inverse depth ``1/z``, resized bicubically
        to ``latent_hw`` (as the depth2img pipeline resizes its estimate), then min-max
        normalised per image. A constant depth maps to 0 everywhere.
    """
    if depth_z.dim() != 4 or depth_z.shape[1] != 1:
        raise ValueError(f"depth_z: expected shape (B, 1, H, W), got {tuple(depth_z.shape)}")
    inv = 1.0 / depth_z.float().clamp(min=1e-6)  # (B, 1, H, W) relative inverse depth
    inv = F.interpolate(inv, size=tuple(latent_hw), mode="bicubic", align_corners=False)  # (B, 1, h, w)
    lo = inv.amin(dim=(1, 2, 3), keepdim=True)
    hi = inv.amax(dim=(1, 2, 3), keepdim=True)
    span = hi - lo
    out = torch.where(span > 1e-12, 2.0 * (inv - lo) / span.clamp(min=1e-12) - 1.0, torch.zeros_like(inv))
    return out.to(depth_z.dtype)
