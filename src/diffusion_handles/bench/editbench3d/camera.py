"""3DEditBench's OpenCV intrinsics and rigid motion in this project's camera and edits.

``K`` ``(3, 3)`` (pixels) becomes this project's centred camera, a field of view in degrees and
the window ``(y0, y1, x0, x1)`` centred on the principal point (:func:`camera_from_K`, inverse
:func:`opencv_K`); ``R`` ``(3, 3)`` and ``T`` ``(3,)`` (``p' = R p + T`` in camera coordinates,
the scene's units) become a :class:`~diffusion_handles.geometry.transform.HandleEdit` about a
pivot (:func:`handle_edit_from_rt`, inverse :func:`rt_from_edit`). The conventions and the
derivation are in the docstring of :mod:`diffusion_handles.bench.editbench3d`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry.transform import HandleEdit, Similarity


@dataclass(frozen=True)
class CameraWindow:
    """This project's camera for a case: the field of view of the window ``box`` ((y0, y1, x0, x1))
    centred on the principal point (the whole image when it is centred)."""

    fov_deg: float
    box: tuple[int, int, int, int]
    cropped: bool


def camera_from_K(K: np.ndarray, height: int, width: int, tol_px: float = 0.5,
                  min_fraction: float = 0.5) -> CameraWindow:
    """This project's camera (and the window it needs) for OpenCV intrinsics ``K`` of an ``height x width`` image.

    See the docstring of :mod:`diffusion_handles.bench.editbench3d`. Raises HandlesError for a K that is not a pinhole matrix, non-square
    pixels (fx, fy more than 1 % apart), skew, or a principal point so far off-centre that the
    centred window would keep less than ``min_fraction`` of a side.
    """
    K = np.asarray(K, np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all():
        raise HandlesError(f"K: expected a finite 3x3 matrix, got shape {K.shape}")
    fx, fy, s, cx, cy = K[0, 0], K[1, 1], K[0, 1], K[0, 2], K[1, 2]
    if not np.allclose(K[2], [0, 0, 1], atol=1e-9) or abs(K[1, 0]) > 1e-9 or not (fx > 0 and fy > 0):
        raise HandlesError(f"K: expected [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0, got {K.tolist()}")
    if abs(s) > 1e-3 * fx:
        raise HandlesError(f"K: expected no skew (this project's camera has rectangular pixels), got s = {s:g}")
    if abs(fx - fy) > 0.01 * fx:
        raise HandlesError(f"K: expected square pixels (fx and fy within 1 %), got fx = {fx:g}, fy = {fy:g}")
    c = (cy + 0.5, cx + 0.5)  # OpenCV (pixel centre at integer coordinates) -> this project (at + 0.5)
    box = []
    for centre, side, axis in ((c[0], height, "cy"), (c[1], width, "cx")):
        if abs(centre - side / 2.0) <= tol_px:
            box += [0, side]
            continue
        half = math.floor(min(centre, side - centre))
        lo = int(round(centre - half))
        lo = min(max(lo, 0), side - 2 * half)
        if half * 2 < min_fraction * side or abs(lo + half - centre) > tol_px + 1e-9:
            raise HandlesError(f"K: expected the principal point near the image centre (this project's camera is "
                               f"centred), got {axis} = {centre - 0.5:g} for a side of {side} px: a centred window "
                               f"would keep only {2 * half} px; crop the images around it first")
        box += [lo, lo + 2 * half]
    y0, y1, x0, x1 = box
    fov = math.degrees(2.0 * math.atan((x1 - x0) / (2.0 * fx)))
    return CameraWindow(fov, (y0, y1, x0, x1), (y0, y1, x0, x1) != (0, height, 0, width))


def nearest_rotation(R: np.ndarray, tol: float = 1e-3) -> np.ndarray:
    """``R`` projected to SO(3) (SVD); refuses a matrix farther than ``tol`` from a rotation."""
    R = np.asarray(R, np.float64)
    if R.shape != (3, 3) or not np.isfinite(R).all():
        raise HandlesError(f"R: expected a finite 3x3 rotation, got shape {R.shape}")
    u, _, vt = np.linalg.svd(R)
    Q = u @ vt
    if np.linalg.det(Q) < 0:
        raise HandlesError("R: expected a rotation (det +1), got a reflection (det -1)")
    if np.abs(Q - R).max() > tol:
        raise HandlesError(f"R: expected a rotation matrix (orthonormal within {tol:g}), got one off by "
                           f"{np.abs(Q - R).max():.3g}")
    return Q


def rigid_from_rt(R: np.ndarray, T: np.ndarray) -> Similarity:
    """The rigid transform ``p' = R p + T`` (camera coordinates) as a :class:`Similarity`."""
    T = np.asarray(T, np.float64).reshape(-1)
    if T.shape != (3,) or not np.isfinite(T).all():
        raise HandlesError(f"T: expected three finite numbers, got shape {T.shape}")
    m = np.eye(4)
    m[:3, :3] = nearest_rotation(R)
    m[:3, 3] = T
    return Similarity(m)


def axis_angle(R: np.ndarray) -> tuple[tuple[float, float, float], float]:
    """``(unit axis, degrees)`` of a rotation matrix, right-hand rule (inverse of ``rotation_matrix``)."""
    R = nearest_rotation(R)
    cos = float(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))
    angle = math.acos(cos)
    if angle < 1e-12:
        return (0.0, 1.0, 0.0), 0.0
    v = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    if math.sin(angle) > 1e-6:
        axis = v / (2.0 * math.sin(angle))
    else:  # near 180 degrees: the axis is the eigenvector of eigenvalue 1 (R = 2 a a^T - I)
        b = (R + np.eye(3)) / 2.0
        i = int(np.argmax(np.diag(b)))
        axis = b[:, i] / math.sqrt(max(b[i, i], 1e-300))
    axis = axis / np.linalg.norm(axis)
    return (float(axis[0]), float(axis[1]), float(axis[2])), math.degrees(angle)


def handle_edit_from_rt(R: np.ndarray, T: np.ndarray, pivot) -> HandleEdit:
    """The HandleEdit about ``pivot`` that equals ``p' = R p + T``: rotation ``R``, ``t = R c + T - c``."""
    sim = rigid_from_rt(R, T)
    Rm = sim.matrix[:3, :3].numpy()
    c = np.asarray(pivot, np.float64).reshape(3)
    axis, deg = axis_angle(Rm)
    t = Rm @ c + np.asarray(T, np.float64).reshape(3) - c
    return HandleEdit(translate=tuple(float(v) for v in t), rotate_axis=axis, rotate_deg=deg)


def rt_from_edit(edit: HandleEdit, pivot) -> tuple[np.ndarray, np.ndarray]:
    """``(R, T)`` of a rigid HandleEdit about ``pivot`` (``p' = R p + T``); refuses a scale."""
    if abs(edit.scale - 1.0) > 1e-12:
        raise HandlesError(f"edit: expected a rigid edit (scale 1) for 3DEditBench's R, T, got scale {edit.scale:g}")
    m = edit.resolve(pivot).matrix.numpy()
    return m[:3, :3].copy(), m[:3, 3].copy()


def opencv_K(fov_deg: float, height: int, width: int) -> np.ndarray:
    """The OpenCV intrinsics of this project's centred camera (inverse of :func:`camera_from_K`)."""
    from diffusion_handles.geometry.camera import Camera

    cam = Camera(height, width, fov_deg)
    return np.array([[cam.fx, 0.0, cam.cx - 0.5], [0.0, cam.fy, cam.cy - 0.5], [0.0, 0.0, 1.0]])
