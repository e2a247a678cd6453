"""Pinhole camera, lifting and projection (Sec. 5.1, steps 1 and 3: L_d and P).

Conventions used throughout the project:

* The camera sits at the origin looking down +z, OpenCV axes: x right, y down, z forward.
* Pixel ``(row i, column j)`` covers the square ``[j, j+1) x [i, i+1)`` in pixel units, so its
  centre is at ``(j + 0.5, i + 0.5)``. Normalised image coordinates (the paper's ``[0, 1]^2``)
  are pixel coordinates divided by ``(W, H)``; they do not depend on resolution, which is what
  lets one flow serve the image and every feature map.
* ``depth`` is **z-depth** (distance along the optical axis) in scene units unless a name says
  otherwise; :func:`z_to_ray_distance` gives the Euclidean distance ``||p||`` that Eq. 7 uses.
* The field of view is horizontal, 55 degrees by default (Sec. 5.1: the field of view the depth
  estimator ZoeDepth was trained with). Pixels are square, so ``fy = fx``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DEFAULT_FOV_DEG = 55.0  # Sec. 5.1: "We assume the same 55 deg field of view ... [ZoeDepth]"


@dataclass(frozen=True)
class Camera:
    """Pinhole intrinsics for an ``height x width`` image.

    ``fx, fy, cx, cy`` are in pixels with the pixel-centre convention of this module. By default
    the principal point is the image centre and ``fx`` follows from the horizontal field of view
    ``fov_deg``; a window of a larger image (:meth:`window`) has its own: ``focal`` and
    ``principal`` (``(cx, cy)``) in this image's pixels, while ``fov_deg`` stays the whole
    photo's.
    """

    height: int
    width: int
    fov_deg: float = DEFAULT_FOV_DEG
    focal: float | None = None
    principal: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not (0.0 < self.fov_deg < 180.0):
            raise ValueError(f"fov_deg: expected a value in (0, 180), got {self.fov_deg}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"camera size: expected positive height and width, got {self.height}x{self.width}")
        if self.focal is not None and not self.focal > 0:
            raise ValueError(f"focal: expected a positive focal length in pixels, got {self.focal}")

    @property
    def fx(self) -> float:
        """Focal length in pixels (from the horizontal field of view unless ``focal`` is set)."""
        if self.focal is not None:
            return float(self.focal)
        return self.width / (2.0 * math.tan(math.radians(self.fov_deg) / 2.0))

    @property
    def fy(self) -> float:
        return self.fx

    @property
    def cx(self) -> float:
        return self.width / 2.0 if self.principal is None else float(self.principal[0])

    @property
    def cy(self) -> float:
        return self.height / 2.0 if self.principal is None else float(self.principal[1])

    def resized(self, height: int, width: int) -> Camera:
        """The same camera sampled on a ``height x width`` grid (the same rays: the focal length
        and principal point scale with the grid; the default centred camera stays centred)."""
        if self.focal is None and self.principal is None:
            return Camera(height, width, self.fov_deg)
        sx, sy = width / self.width, height / self.height
        return Camera(height, width, self.fov_deg, self.fx * sx, (self.cx * sx, self.cy * sy))

    def window(self, box: tuple[int, int, int, int]) -> Camera:
        """The camera of the crop ``box = (x0, y0, x1, y1)`` (pixels, half-open) of this image: the
        same focal length, the principal point shifted by ``(x0, y0)``. Resize it with
        :meth:`resized` (which scales the focal length) for the crop at another resolution."""
        x0, y0, x1, y1 = (int(v) for v in box)
        if not (0 <= x0 < x1 <= self.width and 0 <= y0 < y1 <= self.height):
            raise ValueError(f"window: expected a box inside the {self.width}x{self.height} image, got {box}")
        return Camera(y1 - y0, x1 - x0, self.fov_deg, self.fx, (self.cx - x0, self.cy - y0))

    def matrix(self, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
        """The 3x3 intrinsic matrix ``K`` (pixel units)."""
        return torch.tensor(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=dtype, device=device
        )


def pixel_grid(height: int, width: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Pixel-centre coordinates, shape ``(2, H, W)``: channel 0 is x (column + 0.5), 1 is y."""
    ys = torch.arange(height, dtype=dtype, device=device) + 0.5
    xs = torch.arange(width, dtype=dtype, device=device) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy])  # (2, H, W)


def check_depth(depth: torch.Tensor, name: str = "depth") -> torch.Tensor:
    """Validate a ``(B, 1, H, W)`` or ``(H, W)`` depth; return it as ``(B, 1, H, W)``."""
    if depth.dim() == 2:
        depth = depth[None, None]
    if depth.dim() != 4 or depth.shape[1] != 1:
        raise ValueError(f"{name}: expected shape (B, 1, H, W) or (H, W), got {tuple(depth.shape)}")
    if not depth.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {depth.dtype}")
    return depth


def lift(depth: torch.Tensor, camera: Camera) -> torch.Tensor:
    """Step 1 of Sec. 5.1, ``L_d``: every pixel centre to a camera-space 3D point.

    Args:
        depth: ``(B, 1, H, W)`` z-depth in scene units (must match ``camera``'s size).
        camera: intrinsics.

    Returns:
        ``(B, 3, H, W)`` points ``(x, y, z)`` in scene units, camera axes (x right, y down,
        z forward); ``z`` equals ``depth``.
    """
    depth = check_depth(depth)
    b, _, h, w = depth.shape
    if (h, w) != (camera.height, camera.width):
        raise ValueError(f"depth: expected size {camera.height}x{camera.width} (the camera's), got {h}x{w}")
    grid = pixel_grid(h, w, depth.dtype, depth.device)  # (2, H, W)
    x = (grid[0] - camera.cx) / camera.fx * depth[:, 0]  # (B, H, W)
    y = (grid[1] - camera.cy) / camera.fy * depth[:, 0]
    return torch.stack([x, y, depth[:, 0]], dim=1)  # (B, 3, H, W)


def lift_at(pixels: torch.Tensor, depth: torch.Tensor, camera: Camera) -> torch.Tensor:
    """Lift arbitrary pixel positions with given z-depths.

    Args:
        pixels: ``(..., 2)`` continuous pixel coordinates (x, y), pixel-centre convention.
        depth: ``(...)`` z-depth in scene units.

    Returns:
        ``(..., 3)`` camera-space points.
    """
    x = (pixels[..., 0] - camera.cx) / camera.fx * depth
    y = (pixels[..., 1] - camera.cy) / camera.fy * depth
    return torch.stack([x, y, depth], dim=-1)


def project(points: torch.Tensor, camera: Camera) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 3 of Sec. 5.1, ``P``: camera-space points to continuous pixel coordinates.

    Args:
        points: ``(..., 3)`` camera-space points in scene units.

    Returns:
        ``(pixels, z)``: ``pixels`` is ``(..., 2)`` (x, y) in pixel units (pixel-centre
        convention), ``z`` is ``(...)`` z-depth. Points with ``z <= 0`` get non-finite pixels;
        callers must mask them.
    """
    z = points[..., 2]
    u = points[..., 0] / z * camera.fx + camera.cx
    v = points[..., 1] / z * camera.fy + camera.cy
    return torch.stack([u, v], dim=-1), z


def ray_norm(camera: Camera, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """``||K^-1 (u, v, 1)||`` per pixel centre, shape ``(1, 1, H, W)``; ray distance = z * this."""
    grid = pixel_grid(camera.height, camera.width, dtype, device)
    x = (grid[0] - camera.cx) / camera.fx
    y = (grid[1] - camera.cy) / camera.fy
    return torch.sqrt(x * x + y * y + 1.0)[None, None]


def z_to_ray_distance(depth: torch.Tensor, camera: Camera) -> torch.Tensor:
    """z-depth ``(B, 1, H, W)`` to Euclidean camera distance ``||p||`` (Eq. 7's measure)."""
    depth = check_depth(depth)
    return depth * ray_norm(camera, depth.dtype, depth.device)


def ray_distance_to_z(distance: torch.Tensor, camera: Camera) -> torch.Tensor:
    """Euclidean camera distance ``(B, 1, H, W)`` to z-depth; inverse of :func:`z_to_ray_distance`."""
    distance = check_depth(distance, "distance")
    return distance / ray_norm(camera, distance.dtype, distance.device)


def pixels_to_normalized(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(..., 2)`` pixel coordinates to the paper's normalised ``[0, 1]^2`` coordinates."""
    scale = torch.tensor([width, height], dtype=pixels.dtype, device=pixels.device)
    return pixels / scale


def normalized_to_pixels(coords: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(..., 2)`` normalised coordinates to pixel coordinates of an ``height x width`` grid."""
    scale = torch.tensor([width, height], dtype=coords.dtype, device=coords.device)
    return coords * scale
