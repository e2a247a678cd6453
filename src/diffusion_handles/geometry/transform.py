"""3D transforms (Sec. 5.1, step 2: ``T``).

Two layers:

* :class:`HandleEdit` is what a user types: a translation (scene units, camera axes x right,
  y down, z forward), a rotation as axis + degrees about a pivot, and a uniform scale about the
  pivot. For object edits the pivot is the object's centroid; it is resolved into a matrix with
  :meth:`HandleEdit.resolve`.
* :class:`Similarity` is the resolved 4x4 similarity matrix ``p' = s R p + t`` in float64. It
  composes (``a @ b`` applies ``b`` first) and inverts exactly, and applies to point clouds.

A camera move is the inverse transform applied to the whole scene (:func:`camera_move`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


def rotation_matrix(axis: Sequence[float], degrees: float) -> torch.Tensor:
    """3x3 rotation (float64) by ``degrees`` about ``axis`` (right-hand rule, camera axes).

    The axis need not be unit length but must be non-zero.
    """
    a = torch.as_tensor(axis, dtype=torch.float64)
    norm = torch.linalg.norm(a)
    if a.shape != (3,) or not torch.isfinite(a).all() or norm < 1e-12:
        raise ValueError(f"rotation axis: expected three finite numbers, not all zero, got {list(axis)}")
    x, y, z = (a / norm).tolist()
    t = math.radians(degrees)
    c, s, C = math.cos(t), math.sin(t), 1.0 - math.cos(t)
    return torch.tensor(
        [
            [c + x * x * C, x * y * C - z * s, x * z * C + y * s],
            [y * x * C + z * s, c + y * y * C, y * z * C - x * s],
            [z * x * C - y * s, z * y * C + x * s, c + z * z * C],
        ],
        dtype=torch.float64,
    )


@dataclass(frozen=True)
class Similarity:
    """A resolved similarity transform ``p' = M[:3, :3] p + M[:3, 3]`` (float64, 4x4)."""

    matrix: torch.Tensor = field(default_factory=lambda: torch.eye(4, dtype=torch.float64))

    def __post_init__(self) -> None:
        m = torch.as_tensor(self.matrix, dtype=torch.float64)
        if m.shape != (4, 4):
            raise ValueError(f"matrix: expected shape (4, 4), got {tuple(m.shape)}")
        object.__setattr__(self, "matrix", m)

    @staticmethod
    def identity() -> Similarity:
        return Similarity()

    @staticmethod
    def from_parts(
        rotation: torch.Tensor | None = None,
        translation: Sequence[float] = (0.0, 0.0, 0.0),
        scale: float = 1.0,
        pivot: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> Similarity:
        """``p' = pivot + scale * R (p - pivot) + translation``."""
        r = torch.eye(3, dtype=torch.float64) if rotation is None else torch.as_tensor(rotation, dtype=torch.float64)
        c = torch.as_tensor(pivot, dtype=torch.float64)
        t = torch.as_tensor(translation, dtype=torch.float64)
        m = torch.eye(4, dtype=torch.float64)
        m[:3, :3] = scale * r
        m[:3, 3] = c - scale * (r @ c) + t
        return Similarity(m)

    def __matmul__(self, other: Similarity) -> Similarity:
        """Composition: ``(a @ b).apply(p) == a.apply(b.apply(p))``."""
        return Similarity(self.matrix @ other.matrix)

    def inverse(self) -> Similarity:
        return Similarity(torch.linalg.inv(self.matrix))

    @property
    def scale(self) -> float:
        """The uniform scale factor ``s`` (cube root of the linear part's determinant)."""
        return float(torch.linalg.det(self.matrix[:3, :3]).abs() ** (1.0 / 3.0))

    def is_identity(self, tol: float = 1e-12) -> bool:
        return bool(torch.allclose(self.matrix, torch.eye(4, dtype=torch.float64), atol=tol, rtol=0))

    def apply(self, points: torch.Tensor) -> torch.Tensor:
        """Transform points stored last-axis ``(..., 3)``, keeping dtype and device."""
        m = self.matrix.to(points.device, points.dtype)
        return points @ m[:3, :3].T + m[:3, 3]

    def apply_map(self, points: torch.Tensor) -> torch.Tensor:
        """Transform a point map ``(B, 3, H, W)`` (channels first)."""
        return self.apply(points.movedim(1, -1)).movedim(-1, 1)

    def to_list(self) -> list[list[float]]:
        return self.matrix.tolist()


@dataclass(frozen=True)
class HandleEdit:
    """A user's 3D edit of one object (or of the camera, see :func:`camera_move`).

    Attributes:
        translate: ``(x, y, z)`` in scene units (the depth map's units), camera axes: x right,
            y down, z forward (away from the camera).
        rotate_axis: rotation axis in camera axes; need not be unit length.
        rotate_deg: rotation angle in degrees about ``rotate_axis`` through the pivot
            (right-hand rule).
        scale: uniform scale factor about the pivot, > 0.

    Applied as: scale and rotate about the pivot, then translate.
    """

    translate: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotate_axis: tuple[float, float, float] = (0.0, 1.0, 0.0)
    rotate_deg: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        vals = [*self.translate, *self.rotate_axis, self.rotate_deg, self.scale]
        if len(self.translate) != 3:
            raise ValueError(f"translate: expected three numbers X Y Z, got {list(self.translate)}")
        if len(self.rotate_axis) != 3:
            raise ValueError(f"rotate_axis: expected three numbers X Y Z, got {list(self.rotate_axis)}")
        if not all(math.isfinite(float(v)) for v in vals):
            raise ValueError(f"transform: expected finite numbers, got {vals}")
        if not self.scale > 0:
            raise ValueError(f"scale: expected a positive number, got {self.scale}")
        if self.rotate_deg != 0 and math.sqrt(sum(float(a) ** 2 for a in self.rotate_axis)) < 1e-12:
            raise ValueError(f"rotate_axis: expected a non-zero axis, got {list(self.rotate_axis)}")
        object.__setattr__(self, "translate", tuple(float(v) for v in self.translate))
        object.__setattr__(self, "rotate_axis", tuple(float(v) for v in self.rotate_axis))
        object.__setattr__(self, "rotate_deg", float(self.rotate_deg))
        object.__setattr__(self, "scale", float(self.scale))

    def is_identity(self) -> bool:
        return self.translate == (0.0, 0.0, 0.0) and self.rotate_deg % 360.0 == 0.0 and self.scale == 1.0

    def resolve(self, pivot: Sequence[float] | torch.Tensor) -> Similarity:
        """The matrix of this edit with rotation and scale about ``pivot`` (scene units)."""
        rot = rotation_matrix(self.rotate_axis, self.rotate_deg) if self.rotate_deg else None
        return Similarity.from_parts(rot, self.translate, self.scale, torch.as_tensor(pivot, dtype=torch.float64).tolist())

    def inverse(self) -> HandleEdit:
        """The edit that undoes this one about the *moved* pivot (the object's new centroid).

        ``edit.resolve(c)`` followed by ``edit.inverse().resolve(c + translate)`` is the identity.
        """
        # p' = c + t + sR(p - c)  =>  p = (c + t) - t + (1/s) R^T (p' - (c + t))
        return HandleEdit(
            translate=tuple(-v for v in self.translate),
            rotate_axis=self.rotate_axis,
            rotate_deg=-self.rotate_deg,
            scale=1.0 / self.scale,
        )

    def to_dict(self) -> dict:
        return {
            "translate": list(self.translate),
            "rotate_axis": list(self.rotate_axis),
            "rotate_deg": self.rotate_deg,
            "scale": self.scale,
        }

    @staticmethod
    def from_dict(d: dict) -> HandleEdit:
        unknown = set(d) - {"translate", "rotate_axis", "rotate_deg", "scale"}
        if unknown:
            raise ValueError(f"transform: unknown keys {sorted(unknown)}; expected translate, rotate_axis, rotate_deg, scale")
        try:
            return HandleEdit(
                translate=tuple(float(v) for v in d.get("translate", (0, 0, 0))),
                rotate_axis=tuple(float(v) for v in d.get("rotate_axis", (0, 1, 0))),
                rotate_deg=float(d.get("rotate_deg", 0.0)),
                scale=float(d.get("scale", 1.0)),
            )
        except (TypeError, ValueError) as e:
            raise ValueError(f"transform: could not read {d!r}: {e}") from None


def camera_move(edit: HandleEdit, pivot: Sequence[float] = (0.0, 0.0, 0.0)) -> Similarity:
    """The scene transform that shows the scene from a moved camera.

    ``edit`` moves the *camera* (translation in the current camera's axes; rotation about
    ``pivot``, the camera centre by default, or e.g. the scene centroid to orbit around it).
    Moving the camera by ``C`` is the same image as moving every scene point by ``C^-1``, so
    the returned transform is applied to all points with the ordinary object machinery.
    """
    return edit.resolve(pivot).inverse()
