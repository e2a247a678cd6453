"""A session's depth as a coloured point cloud for the page's 3D view (three.js axes)."""

from __future__ import annotations

import math

import numpy as np
import torch

from diffusion_handles.geometry import Camera, lift, object_centroid
from diffusion_handles.web.context import b64
from diffusion_handles.web.schemas import PointCloud
from diffusion_handles.web.sessions import Session

THREE_AXES = np.array([1.0, -1.0, -1.0])  # camera axes (x right, y down, z forward) to three.js (y up, z to the viewer)


def point_cloud(s: Session, max_points: int) -> PointCloud:
    """The session's depth lifted (Step 1 of Sec. 5.1), sub-sampled to at most about
    ``max_points`` points, with the selected object flagged and its centroid (the edit's pivot)."""
    h, w = s.size_hw
    cam = Camera(h, w, s.fov_deg)
    pts = lift(torch.from_numpy(s.depth)[None, None].double(), cam)  # (1, 3, H, W) camera axes
    stride = max(1, math.ceil(math.sqrt(h * w / max_points)))
    sub = pts[0, :, ::stride, ::stride]  # (3, h', w')
    gh, gw = sub.shape[1:]
    xyz = sub.reshape(3, -1).T.numpy() * THREE_AXES
    rgb = s.image[::stride, ::stride].reshape(-1, 3)
    mask = s.mask
    obj = (mask[::stride, ::stride].reshape(-1) if mask is not None else np.zeros(gh * gw, bool)).astype(np.uint8)
    pivot = _pivot(pts, mask)
    pivot3 = None if pivot is None else (pivot[0], -pivot[1], -pivot[2])
    vfov = 2 * math.degrees(math.atan(math.tan(math.radians(s.fov_deg) / 2) * h / w))
    return PointCloud(
        count=gh * gw, stride=stride, grid_width=gw, grid_height=gh, positions=b64(xyz.astype(np.float32)),
        colors=b64(rgb.astype(np.uint8)), object=b64(obj), pivot=pivot3, pivot_camera=pivot,
        vertical_fov_deg=vfov, aspect=w / h, point_size=stride / cam.fx,
    )


def _pivot(points: torch.Tensor, mask: np.ndarray | None) -> tuple[float, float, float] | None:
    """The selected object's centroid ``(x, y, z)`` in camera axes (scene units) from the lifted
    ``points`` ``(1, 3, H, W)``; None without an object."""
    if mask is None or not mask.any():
        return None
    c = object_centroid(points, torch.from_numpy(mask)[None, None])[0].tolist()
    return (c[0], c[1], c[2])
