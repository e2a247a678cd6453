"""Relight a turned object under the light stage 3 found (beyond the paper).

The finish keeps the warped input on the moved object's visible pixels, so a turned face keeps
the shading it had before the turn: a face that turns away from the sun stays lit. Under the
sun-and-sky light that :mod:`~diffusion_handles.geometry.shadow` estimates, a Lambertian
surface of albedo ``rho`` and unit normal ``n`` is lit as

    ``I = rho (A + E max(0, n . s))``

with ``s = -l`` the unit direction towards the sun, ``E`` the sun's irradiance and ``A`` the sky's.
Turning the object by ``R`` turns each normal to ``R n``; the albedo turns with it, so each
pixel's colour is scaled by

    ``g = (k + max(0, (R n) . s)) / (k + max(0, n . s))``,  ``k = A / E``.

``k`` comes from the shadow on the ground (ratio ``r``, per channel, where the sun is blocked):
``r = A / (A + E cos)`` with ``cos = n_g . s`` the ground's normal towards the sun, so
``k = r cos / (1 - r)``. Normals come from the depth (lifted points, box-smoothed inside the
object, central differences, turned to face the camera).

Units: depths in scene units; images ``(1, C, H, W)``; masks ``(1, 1, H, W)`` float in {0, 1};
directions ``(3,)`` unit vectors in camera axes (x right, y down, z forward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffusion_handles.geometry.camera import Camera, lift

NORMAL_SMOOTH_PX = 2  # the points are averaged over (2 r + 1)^2 px of the object before differencing
MAX_GAIN = 2.0  # the gain stays within [1 / MAX_GAIN, MAX_GAIN] (a normal at a silhouette is a guess)
MIN_COS = 0.05  # the ground's cosine to the sun is at least this (a grazing sun)


def surface_normals(depth: torch.Tensor, mask: torch.Tensor, camera: Camera, smooth: int = NORMAL_SMOOTH_PX) -> torch.Tensor:
    """``(1, 3, H, W)`` unit normals facing the camera (``n . p < 0`` at point ``p``), from
    ``depth`` ``(1, 1, H, W)``: the lifted points averaged over a ``(2 smooth + 1)`` box within
    ``mask`` (``(1, 1, H, W)``, so the background does not bend the object's edge), then the
    cross product of their central differences along x and y (zero on the image's border)."""
    p = lift(depth.float(), camera)
    m = (mask > 0.5).float()
    if smooth > 0:  # a masked mean: the zero padding cancels in the ratio
        k = 2 * smooth + 1
        p = F.avg_pool2d(p * m, k, 1, smooth) / F.avg_pool2d(m, k, 1, smooth).clamp(min=1e-6)
    dx, dy = torch.zeros_like(p), torch.zeros_like(p)
    dx[..., :, 1:-1] = p[..., :, 2:] - p[..., :, :-2]
    dy[..., 1:-1, :] = p[..., 2:, :] - p[..., :-2, :]
    n = torch.linalg.cross(dx, dy, dim=1)
    n = n / n.norm(dim=1, keepdim=True).clamp(min=1e-9)
    away = (n * p).sum(1, keepdim=True) > 0
    return torch.where(away, -n, n)


def sky_over_sun(ratio: torch.Tensor, ground_cos: float) -> torch.Tensor:
    """``k = A / E`` ``(1, 3, 1, 1)`` from the shadow's light ratio ``r`` ``(1, 3, 1, 1)`` (in
    (0, 1]) and the cosine between the ground's normal and the sun (see the module docstring)."""
    cos = max(float(ground_cos), MIN_COS)
    r = ratio.float().clamp(1e-3, 0.999)
    return r * cos / (1.0 - r)


def turn_gain(normals: torch.Tensor, rotation: torch.Tensor, sun: torch.Tensor, k: torch.Tensor,
              mask: torch.Tensor) -> torch.Tensor:
    """``(1, 3, H, W)`` the factor ``g`` of the module docstring on ``mask`` (1 elsewhere).

    Args:
        normals: ``(1, 3, H, W)`` from :func:`surface_normals`; rotation: ``(3, 3)`` the turn
            ``R`` (the transform's linear part over its scale); sun: ``(3,)`` unit direction
            towards the sun, ``-l``; k: ``(1, 3, 1, 1)`` from :func:`sky_over_sun`.
    """
    s = sun.float().view(1, 3, 1, 1)
    turned = torch.einsum("ij,bjhw->bihw", rotation.float(), normals.float())
    before = k + (normals * s).sum(1, keepdim=True).clamp(min=0)
    after = k + (turned * s).sum(1, keepdim=True).clamp(min=0)
    gain = (after / before.clamp(min=1e-6)).clamp(1.0 / MAX_GAIN, MAX_GAIN)
    on = (mask > 0.5).float()
    return gain * on + (1.0 - on)
