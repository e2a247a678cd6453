"""3DEditBench in and out: its HDF5 cases, the conversion to this project's camera and edits, scoring.

3DEditBench (neuroailab/3DEditBench, MIT-licensed; Lee et al. 2025, "3D Scene Understanding
Through Local Random Access Sequence Modeling") is a set of real photo pairs with the object's
ground-truth rigid motion. One case is one HDF5 file (``*.hdf5``) of datasets (README of the
repository, "Data Description"):

``image1``, ``image2`` ``(H, W, 3)`` uint8 (input, ground-truth edit), ``K`` ``(3, 3)`` the
intrinsics, ``R`` ``(3, 3)`` and ``T`` ``(3,)`` the object's motion in camera coordinates
(``p' = R p + T``), ``point_prompt`` ``(2,)`` a pixel ``(x, y)`` on the object,
``GT_segment`` ``(H, W)`` the object's mask in ``image1``, and the annotated keypoints
``object_points_image1`` / ``object_points_image2`` ``(N, 2)`` (corresponding object points in
both images) and ``ground_points_image1`` ``(3, 2)``. Files this project writes add three
datasets 3DEditBench's tools ignore: ``depth`` (``(H, W)`` float32 z-depth of ``image1``),
``caption`` (text) and ``GT_segment_image2`` (the moved object's mask in ``image2``).

Conventions (:func:`camera_from_K`, :func:`handle_edit_from_rt`). 3DEditBench uses OpenCV camera
axes (x right, y down, z forward), **the same axes as this project**
(:mod:`diffusion_handles.geometry.camera`), so ``R`` and ``T`` need no change of axes. Pixel
coordinates differ by half a pixel: OpenCV puts pixel ``(i, j)``'s centre at ``(j, i)``, this
project at ``(j + 0.5, i + 0.5)``, so ``c_ours = c_K + 0.5``. This project's camera has square
pixels and its principal point at the image centre: ``fx`` and ``fy`` must agree within 1 %
(the horizontal field of view is ``2 atan(W / 2 fx)``); an off-centre principal point is handled
exactly by editing the largest window centred on it (same focal length, same optical axis, so
the same camera frame and the same ``R, T``) and pasting the result back into the full frame.

Rigid motion to :class:`~diffusion_handles.geometry.transform.HandleEdit`. A HandleEdit rotates
about the pivot ``c`` (the centroid of the lifted object pixels, what the pipeline uses) and then
translates: ``p' = c + t + R (p - c)``. Equal to ``R p + T`` for every ``p`` iff its rotation is
``R`` and ``t = R c + T - c`` (exact; :func:`handle_edit_from_rt`). ``R`` from a least-squares fit
is projected to the nearest rotation (SVD); more than 1e-3 away from one is refused.

Scores (:func:`score_edit`), as 3DEditBench's ``edit_bench/run_inference.py`` and
``edit_bench/utils.py`` (``ImageMetricCalculator``) define them, on the input, the ground truth and
the prediction all resized to 256 x 256: PSNR ``10 log10(1 / MSE)`` (images in [0, 1], 100 when
equal), SSIM (scikit-image, channels last, data range 1), LPIPS (AlexNet; only when the
``lpips`` package and its pretrained weights are already on disk, else ``None`` = "n/a", never
downloaded), and **edit adherence**: the IoU of two point-prompted segments,

* the *target*: the object segmented in the ground truth ``image2`` from its annotated keypoints
  ``object_points_image2``;
* the *prediction*: the object segmented in the edited image from the input keypoints
  ``object_points_image1`` carried into the edited image by the dense optical flow from the input
  to the edited image (the flow at each keypoint's pixel added to it).

Keypoints are scaled to the 256 grid by ``256 / W`` (the benchmark's ``/ 4`` for 1024 px images).
Two stand-ins, recorded with every result: the benchmark's flow network (DPFlow) is replaced by
OpenCV's DIS optical flow (no weights); its segmenter, SAM ViT-H, by SAM from local weights
(``--sam-model``) when present, else by a colour segmenter (``segmenter: "colour"``): the
project's classifier :func:`~diffusion_handles.bench.metrics.segment_object` with the labelled
views the file has (``image1`` with ``GT_segment``; ``image2`` with ``GT_segment_image2`` when
present), keeping the connected components that contain a prompt point (a point prompt selects
the object under it). Numbers with the colour segmenter are not comparable with published ones.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry.transform import HandleEdit, Similarity

EVAL_SIZE = 256  # 3DEditBench scores at 256 x 256
REQUIRED = ("image1", "image2", "K", "R", "T", "point_prompt", "GT_segment")
KEYPOINTS = ("object_points_image1", "object_points_image2", "ground_points_image1")
RESULTS_VERSION = 1


# ---------------------------------------------------------------------- files
@dataclass
class EditBenchCase:
    """One 3DEditBench case (see the module docstring for the keys)."""

    name: str
    image1: np.ndarray
    image2: np.ndarray
    K: np.ndarray
    R: np.ndarray
    T: np.ndarray
    point_prompt: np.ndarray
    gt_segment: np.ndarray
    object_points_image1: np.ndarray | None = None
    object_points_image2: np.ndarray | None = None
    ground_points_image1: np.ndarray | None = None
    depth: np.ndarray | None = None
    caption: str | None = None
    gt_segment_image2: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)


def list_cases(data: str | Path) -> list[Path]:
    """The ``*.hdf5`` / ``*.h5`` files of folder ``data``, sorted by name."""
    data = Path(data)
    if not data.is_dir():
        raise HandlesError(f"--data: expected a folder of 3DEditBench .hdf5 files, got {str(data)!r} (no such folder)")
    files = sorted(p for p in data.iterdir() if p.suffix in (".hdf5", ".h5") and p.is_file())
    if not files:
        raise HandlesError(f"--data: expected .hdf5 files in {str(data)!r}, got none")
    return files


def _array(f, key: str, path: Path, ndim: int, shape: tuple | None = None, kind: str = "number") -> np.ndarray:
    import h5py

    obj = f.get(key)
    if not isinstance(obj, h5py.Dataset):
        raise HandlesError(f"{path.name}: {key}: expected a dataset, got {'nothing' if obj is None else 'a group'}")
    if obj.dtype.kind not in ("u", "i", "f", "b"):
        raise HandlesError(f"{path.name}: {key}: expected numbers, got dtype {obj.dtype}")
    a = np.asarray(obj[()])
    if a.ndim != ndim or (shape is not None and any(s is not None and s != d for s, d in zip(shape, a.shape, strict=False))):
        raise HandlesError(f"{path.name}: {key}: expected shape {shape or ndim}, got {a.shape}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise HandlesError(f"{path.name}: {key}: expected finite numbers, got NaN or inf")
    return a


def read_case(path: str | Path) -> EditBenchCase:
    """Read and validate one HDF5 case (datasets only; nothing is unpickled or executed)."""
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise HandlesError(f"{path.name}: expected an HDF5 file, could not open it ({str(e).splitlines()[0]})") from None
    with f:
        missing = [k for k in REQUIRED if k not in f]
        if missing:
            raise HandlesError(f"{path.name}: expected datasets {', '.join(REQUIRED)}, missing {', '.join(missing)}")
        im1 = _array(f, "image1", path, 3, (None, None, 3))
        h, w = im1.shape[:2]
        out = EditBenchCase(
            name=path.stem, image1=im1, image2=_array(f, "image2", path, 3, (h, w, 3)),
            K=_array(f, "K", path, 2, (3, 3)).astype(np.float64), R=_array(f, "R", path, 2, (3, 3)).astype(np.float64),
            T=_array(f, "T", path, 1, (3,)).astype(np.float64),
            point_prompt=_array(f, "point_prompt", path, 1, (2,)).astype(np.float64),
            gt_segment=_array(f, "GT_segment", path, 2, (h, w)) > 0,
        )
        for name in ("image1", "image2"):
            a = getattr(out, name)
            if a.dtype != np.uint8:
                if a.dtype.kind == "f" and a.max() <= 1.0 and a.min() >= 0.0:
                    setattr(out, name, (a * 255.0 + 0.5).astype(np.uint8))
                else:
                    raise HandlesError(f"{path.name}: {name}: expected uint8 RGB, got dtype {a.dtype}")
        for key in KEYPOINTS:
            if key in f:
                a = _array(f, key, path, 2, (None, 2)).astype(np.float64)
                setattr(out, key, a)
        if "depth" in f:
            out.depth = _array(f, "depth", path, 2, (h, w)).astype(np.float32)
            if (out.depth <= 0).any():
                raise HandlesError(f"{path.name}: depth: expected positive z-depth everywhere")
        if "GT_segment_image2" in f:
            out.gt_segment_image2 = _array(f, "GT_segment_image2", path, 2, (h, w)) > 0
        if "caption" in f:
            c = f["caption"]
            v = c[()] if isinstance(c, h5py.Dataset) and c.dtype.kind in ("S", "O", "U") else None
            if isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            if not isinstance(v, str):
                raise HandlesError(f"{path.name}: caption: expected a text dataset, got {getattr(c, 'dtype', c)!r}")
            out.caption = v
        out.attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()
                     if isinstance(v, (int, float, str, np.integer, np.floating))}
    if not out.gt_segment.any():
        raise HandlesError(f"{path.name}: GT_segment: expected at least one object pixel, got an empty mask")
    return out


def write_case(path: str | Path, case: EditBenchCase) -> Path:
    """Write ``case`` as one HDF5 file in 3DEditBench's layout (atomically: temp file + rename)."""
    import h5py

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("image1", data=np.asarray(case.image1, np.uint8), compression="gzip")
        f.create_dataset("image2", data=np.asarray(case.image2, np.uint8), compression="gzip")
        f.create_dataset("K", data=np.asarray(case.K, np.float64))
        f.create_dataset("R", data=np.asarray(case.R, np.float64))
        f.create_dataset("T", data=np.asarray(case.T, np.float64))
        f.create_dataset("point_prompt", data=np.asarray(case.point_prompt, np.float64))
        f.create_dataset("GT_segment", data=np.asarray(case.gt_segment, bool), compression="gzip")
        for key in KEYPOINTS:
            if getattr(case, key) is not None:
                f.create_dataset(key, data=np.asarray(getattr(case, key), np.float64))
        if case.depth is not None:
            f.create_dataset("depth", data=np.asarray(case.depth, np.float32), compression="gzip")
        if case.gt_segment_image2 is not None:
            f.create_dataset("GT_segment_image2", data=np.asarray(case.gt_segment_image2, bool), compression="gzip")
        if case.caption is not None:
            f.create_dataset("caption", data=case.caption, dtype=h5py.string_dtype("utf-8"))
        for k, v in case.attrs.items():
            f.attrs[k] = v
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------- conventions
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

    See the module docstring. Raises HandlesError for a K that is not a pinhole matrix, non-square
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


# ---------------------------------------------------------------------- scoring
def resize_uint8(img: np.ndarray, size: int = EVAL_SIZE) -> np.ndarray:
    """Resize an ``(H, W, 3)`` uint8 image to ``size x size`` (scikit-image, anti-aliased), as the benchmark."""
    from skimage.transform import resize

    return resize(img, (size, size), preserve_range=True).astype(np.uint8)


def _resize_mask(m: np.ndarray, size: int = EVAL_SIZE) -> np.ndarray:
    import cv2

    return cv2.resize(np.asarray(m, np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0


def dense_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Optical flow ``(H, W, 2)`` (dx, dy) from uint8 RGB ``a`` to ``b`` (OpenCV DIS, medium preset)."""
    import cv2

    ga = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
    gb = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis.calc(ga, gb, None)


class PointSegmenter:
    """Point-prompted segmentation for edit adherence: SAM from local weights, or the colour stand-in."""

    def __init__(self, sam_model: str | None = None, device: str = "cpu") -> None:
        self.sam = None
        self.kind = "colour"
        if sam_model:
            try:
                from diffusion_handles.perception.segment import SamSegmenter, SegmentConfig

                cfg = SegmentConfig(sam_model=sam_model, device=device)
                folder = Path(sam_model).expanduser()
                if folder.is_dir() or _in_hf_cache(sam_model):
                    self.sam = SamSegmenter.load(cfg, bypass=None)
                    self.kind = "sam"
            except Exception:
                self.sam = None

    def __call__(self, image: np.ndarray, points: np.ndarray, examples: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        h, w = image.shape[:2]
        pts = [(float(np.clip(x, 0, w - 1)), float(np.clip(y, 0, h - 1))) for x, y in np.asarray(points).reshape(-1, 2)]
        if not pts:
            return np.zeros((h, w), bool)
        if self.sam is not None:
            import torch

            t = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
            mask, _ = self.sam._run(t, True, input_points=[[[list(p) for p in pts]]], input_labels=[[[1] * len(pts)]])
            return mask[0, 0].numpy() > 0.5
        return colour_point_segment(image, pts, examples)


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


def colour_point_segment(image: np.ndarray, points, examples) -> np.ndarray:
    """The colour stand-in for SAM: object pixels (:func:`segment_object`) in components holding a point."""
    import cv2

    from diffusion_handles.bench.metrics import segment_object

    obj = segment_object(image, examples)
    n, labels = cv2.connectedComponents(obj.astype(np.uint8), connectivity=8)
    keep = set()
    h, w = obj.shape
    for x, y in points:
        i, j = int(np.clip(round(y), 0, h - 1)), int(np.clip(round(x), 0, w - 1))
        # a prompt that lands a pixel off the object still selects the component next to it
        win = labels[max(i - 1, 0): i + 2, max(j - 1, 0): j + 2]
        keep.update(int(v) for v in np.unique(win) if v != 0)
    return np.isin(labels, sorted(keep)) if keep else np.zeros_like(obj)


def edit_adherence(pred: np.ndarray, case: EditBenchCase, segmenter: PointSegmenter) -> float | None:
    """3DEditBench's edit adherence of ``pred`` (see the module docstring); None without keypoints."""
    from diffusion_handles.bench.metrics import iou

    p1, p2 = case.object_points_image1, case.object_points_image2
    if p1 is None or p2 is None or len(p1) == 0 or len(p2) == 0:
        return None
    s = EVAL_SIZE / case.image1.shape[1]
    im1, im2, pr = resize_uint8(case.image1), resize_uint8(case.image2), resize_uint8(pred)
    examples = [(im1, _resize_mask(case.gt_segment))]
    if case.gt_segment_image2 is not None:
        examples.append((im2, _resize_mask(case.gt_segment_image2)))
    flow = dense_flow(im1, pr)
    q = np.clip(np.floor(p1 * s).astype(int), 0, EVAL_SIZE - 1)
    moved = q + flow[q[:, 1], q[:, 0]]
    seg_gt = segmenter(im2, p2 * s, examples)
    seg_pred = segmenter(pr, moved, examples)
    return iou(seg_pred, seg_gt)


def score_edit(pred: np.ndarray, case: EditBenchCase, segmenter: PointSegmenter, lpips=None) -> dict:
    """``{"psnr", "ssim", "lpips", "edit_adherence", "mse"}`` of ``pred`` against ``case.image2``."""
    from skimage.metrics import structural_similarity

    a = resize_uint8(pred).astype(np.float64) / 255.0
    b = resize_uint8(case.image2).astype(np.float64) / 255.0
    mse = float(((a - b) ** 2).mean())
    return {
        "mse": mse,
        "psnr": 100.0 if mse == 0 else float(10.0 * math.log10(1.0 / mse)),
        "ssim": float(structural_similarity(a, b, channel_axis=2, data_range=1.0)),
        "lpips": None if lpips is None else float(lpips(resize_uint8(pred), resize_uint8(case.image2))),
        "edit_adherence": edit_adherence(pred, case, segmenter),
    }


# ---------------------------------------------------------------------- running a configuration
@dataclass
class EditBenchConfig:
    """Settings of a 3DEditBench run (saved in ``results.json``).

    ``gt_mask``: select the object by ``GT_segment`` (else SAM at ``point_prompt``);
    ``prompt``: the text prompt for files without our ``caption`` extension.
    """

    model: str = "tinyworld"
    methods: list[str] | None = None
    steps: int = 50
    inversion: str = "null-text"
    null_inner_steps: int = 5
    gt_mask: bool = False
    sam_model: str | None = None
    prompt: str = ""
    device: str = "cpu"
    threads: int | None = None

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def _tensor_image(img: np.ndarray):
    import torch

    return torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


def _uint8(t) -> np.ndarray:
    a = t.detach().float().cpu()[0].clamp(0, 1).permute(1, 2, 0).numpy()
    return (a * 255.0 + 0.5).astype(np.uint8)


class EditBenchRunner:
    """Runs methods on cases with one lazily loaded pipeline (and SAM when ``gt_mask`` is off)."""

    def __init__(self, cfg: EditBenchConfig) -> None:
        from diffusion_handles.bench.methods import resolve_methods

        self.cfg = cfg
        self.methods = resolve_methods(cfg.methods or ["ours"])
        self._pipe = None
        self.sam = None
        if not cfg.gt_mask:  # the click path, as `handles edit --click`: fails at once without weights
            from diffusion_handles.perception.segment import (
                DEFAULT_SAM_MODEL,
                SamSegmenter,
                SegmentConfig,
            )

            self.sam = SamSegmenter.load(SegmentConfig(sam_model=cfg.sam_model or DEFAULT_SAM_MODEL, device=cfg.device),
                                         bypass="pass --gt-mask to select the object by the files' GT_segment")

    @property
    def pipe(self):
        if self._pipe is None:
            from diffusion_handles.pipeline import DiffusionHandles

            self._pipe = DiffusionHandles.from_pretrained(self.cfg.model, device=self.cfg.device)
        return self._pipe

    def inputs(self, case: EditBenchCase):
        """``(window, image, depth, mask, background, pivot, edit)`` at the camera window."""
        import torch

        from diffusion_handles.bench.runner import _pivot
        from diffusion_handles.geometry import background_depth_fill

        h, w = case.image1.shape[:2]
        win = camera_from_K(case.K, h, w)
        y0, y1, x0, x1 = win.box
        image = _tensor_image(case.image1[y0:y1, x0:x1])
        if self.sam is not None:
            x, y = case.point_prompt
            if not (x0 <= x < x1 and y0 <= y < y1):
                raise HandlesError(f"point_prompt: expected a point inside the camera window {win.box}, got {x:g},{y:g}")
            mask, _ = self.sam.mask_from_clicks(image, [(float(x - x0), float(y - y0))])
        else:
            mask = torch.from_numpy(case.gt_segment[y0:y1, x0:x1].astype(np.float32))[None, None]
        if not bool((mask > 0.5).any()):
            raise HandlesError("mask: expected object pixels inside the camera window, got none")
        if case.depth is not None:
            depth = torch.from_numpy(case.depth[y0:y1, x0:x1].astype(np.float32))[None, None]
        else:
            from diffusion_handles.perception import PerceptionConfig, prepare_inputs

            depth = prepare_inputs(image, mask=mask, models=PerceptionConfig(), need_background=False).depth
        background = background_depth_fill(depth.double(), (mask > 0.5).double()).float()
        pivot = _pivot(depth, mask, win.fov_deg)
        edit = handle_edit_from_rt(case.R, case.T, pivot.numpy())
        return win, image, depth, mask, background, pivot, edit

    def run(self, case: EditBenchCase, done: dict, on_method=None) -> dict[str, tuple[dict, np.ndarray | None]]:
        """``{method: (entry, edited uint8 full frame)}`` for methods not in ``done``."""
        from diffusion_handles.bench.methods import record_all_guidance
        from diffusion_handles.bench.runner import warp_only
        from diffusion_handles.diffusion.config import InversionConfig

        todo = [m for m in self.methods if m.name not in done]
        out: dict = {}
        if not todo:
            return out
        win, image, depth, mask, background, _, edit = self.inputs(case)
        y0, y1, x0, x1 = win.box
        inverted = None
        for m in todo:
            t0 = time.perf_counter()
            entry: dict = {"method": m.name, "error": None, "edit": edit.to_dict(), "fov_deg": win.fov_deg,
                           "window": list(win.box)}
            full = None
            try:
                if m.kind == "warp":
                    edited = warp_only(image, depth, mask, edit, background, win.fov_deg)[0]
                else:
                    if inverted is None:
                        prompt = case.caption if case.caption is not None else self.cfg.prompt
                        inv_cfg = InversionConfig(method=self.cfg.inversion, num_steps=self.cfg.steps,
                                                  null_inner_steps=self.cfg.null_inner_steps)
                        inverted = self.pipe.invert(image, prompt, depth, mask, inversion=inv_cfg,
                                                    guidance=record_all_guidance(self.cfg.steps), seed=0, progress=False)
                    if m.kind == "reconstruction":
                        edited = self.pipe.backbone.resize_to_work(inverted.reconstruction.float().cpu(),
                                                                   tuple(image.shape[-2:]))
                    else:
                        res = self.pipe.edit(inverted, edit, guidance=m.guidance(self.cfg.steps),
                                             background_depth=background, fov_deg=win.fov_deg, source_image=image,
                                             progress=False)
                        edited = res.edited
                full = case.image1.copy()
                full[y0:y1, x0:x1] = _uint8(edited)
            except Exception as e:  # recorded, not fatal
                entry["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                entry["traceback"] = traceback.format_exc(limit=3)
            entry["seconds"] = time.perf_counter() - t0
            out[m.name] = (entry, full)
            if on_method is not None:
                on_method(m.name, entry, full)
        return out


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=False))
    tmp.replace(path)


def _save_png(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    Image.fromarray(arr).save(tmp)
    tmp.replace(path)


METRICS = (("psnr", "PSNR ↑"), ("ssim", "SSIM ↑"), ("lpips", "LPIPS ↓"), ("edit_adherence", "Edit adherence ↑"))


def run_editbench(cfg: EditBenchConfig, data: str | Path, out: str | Path, *, only: list[str] | None = None,
                  report_only: bool = False, progress: bool = True, log=print) -> dict:
    """Run (or resume) ``cfg`` on the 3DEditBench files of ``data`` into ``out``; returns the results.

    ``out/edits/<case>.json`` (per method: scores, seconds, error), ``out/images/<case>/*.png``
    (input, gt, one per method, at the evaluation size), ``out/results.json``, ``out/report.html``.
    ``only``: the case names to run (a Ray task runs one); ``report_only``: aggregate what exists.
    """
    from tqdm import tqdm

    from diffusion_handles.bench.metrics import LPIPS, bootstrap_ci, lpips_status

    files = list_cases(data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = out / "settings.json"
    keys = ("model", "steps", "inversion", "null_inner_steps", "gt_mask", "prompt")
    if settings.exists():
        prev = json.loads(settings.read_text())
        diff = [k for k in keys if prev.get(k) != cfg.to_dict().get(k)]
        if diff:
            raise HandlesError(f"--out: {out} holds a run with other settings ({', '.join(diff)}); use a new folder")
    if not report_only:
        _write_json(settings, {**cfg.to_dict(), "suite": "3deditbench", "data": str(Path(data).resolve())})
    ok_lpips, lpips_why = lpips_status()
    runner = None if report_only else EditBenchRunner(cfg)
    from diffusion_handles.bench.methods import resolve_methods

    methods = resolve_methods(cfg.methods or ["ours"])
    segmenter = PointSegmenter(cfg.sam_model or "facebook/sam-vit-base", cfg.device) if not report_only else None
    lp = LPIPS() if ok_lpips and not report_only else None
    if cfg.threads:
        import torch

        torch.set_num_threads(int(cfg.threads))
    records = []
    t_start = time.perf_counter()
    todo_files = [p for p in files if only is None or p.stem in only]
    bar = tqdm(todo_files, desc="3deditbench", unit="case", disable=not progress)
    for path in bar:
        name = path.stem
        rec_path = out / "edits" / f"{name}.json"
        rec = json.loads(rec_path.read_text()) if rec_path.exists() else None
        done = dict(rec["methods"]) if rec and not rec.get("error") else {}
        if report_only or (rec is not None and not rec.get("error") and all(m.name in done for m in methods)):
            if rec is not None:
                records.append(rec)
            continue
        img_dir = out / "images" / name
        try:
            case = read_case(path)
            rec = {"case": name, "error": None, "methods": done, "segmenter": segmenter.kind, "flow": "opencv-dis",
                   "references": {}}
            _save_png(resize_uint8(case.image1), img_dir / "input.png")
            _save_png(resize_uint8(case.image2), img_dir / "gt.png")
            rec["references"]["input"] = {**score_edit(case.image1, case, segmenter, lp), "error": None}
            rec["references"]["ground_truth"] = {**score_edit(case.image2, case, segmenter, lp), "error": None}

            def save(mname: str, entry: dict, full, rec=rec, case=case, img_dir=img_dir, rec_path=rec_path) -> None:
                if full is not None:
                    entry.update(score_edit(full, case, segmenter, lp))
                    _save_png(resize_uint8(full), img_dir / f"{mname}.png")
                rec["methods"][mname] = entry
                _write_json(rec_path, rec)

            runner.run(case, done, on_method=save)
        except HandlesError as e:
            rec = {"case": name, "error": str(e), "methods": {}}
        except Exception as e:
            rec = {"case": name, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}",
                   "methods": {}}
        _write_json(rec_path, rec)
        records.append(rec)
    bar.close()
    agg = {}
    refs = ("input", "ground_truth")
    for row in [m.name for m in methods] + list(refs):
        entries = [(r.get("references", {}) if row in refs else r.get("methods", {})).get(row) for r in records]
        good = [e for e in entries if e and not e.get("error")]
        failed = sum(1 for r, e in zip(records, entries, strict=False) if r.get("error") or (e and e.get("error")))
        agg[row] = {k: bootstrap_ci([e.get(k) for e in good]) for k, _ in METRICS}
        agg[row].update(ok=len(good), failed=failed)
    segs = sorted({r.get("segmenter") for r in records if r.get("segmenter")})
    results = {
        "version": RESULTS_VERSION, "suite": "3deditbench", "settings": cfg.to_dict(),
        "data": str(Path(data).resolve()), "lpips": {"available": ok_lpips, "note": lpips_why},
        "adherence": {"segmenter": segs, "flow": "opencv-dis",
                      "definition": "IoU of SAM-style point-prompted segments: GT image2 from object_points_image2, "
                                    "edited image from object_points_image1 moved by the input->edited flow "
                                    "(neuroailab/3DEditBench edit_bench/utils.py get_iou_score)"},
        "wall_time_s_this_invocation": time.perf_counter() - t_start,
        "methods": [m.name for m in methods], "aggregate": agg, "edits": records,
    }
    if only is None:
        _write_json(out / "results.json", results)
        write_report(results, out)
        log(format_table(results))
    return results


def _fmt(ci: dict) -> str:
    return "n/a" if not ci or ci.get("mean") is None else f"{ci['mean']:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}]"


def format_table(results: dict) -> str:
    header = ["method", *[h for _, h in METRICS], "ok/failed"]
    rows = [header]
    for name, a in results["aggregate"].items():
        label = f"({name.replace('_', ' ')})" if name in ("input", "ground_truth") else name
        rows.append([label, *[_fmt(a[k]) for k, _ in METRICS], f"{a['ok']}/{a['failed']}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) for r in rows]
    seg = ", ".join(results["adherence"]["segmenter"]) or "-"
    lines.append(f"3DEditBench scores at {EVAL_SIZE}x{EVAL_SIZE}; edit adherence segmenter: {seg}, flow: OpenCV DIS"
                 + ("" if results["lpips"]["available"] else f"; LPIPS n/a ({results['lpips']['note']})"))
    return "\n".join(lines)


def write_report(results: dict, out: str | Path) -> Path:
    """``out/report.html``: the table, then per case input | methods | ground truth (relative links)."""
    import html

    out = Path(out)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>3DEditBench</title><style>"
             "body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:3px}figure{display:inline-block;margin:2px}"
             "figcaption{font-size:11px}.err{color:#a00}</style></head><body><h1>3DEditBench</h1><pre>",
             html.escape(format_table(results)), "</pre>"]
    for rec in results["edits"]:
        name = rec["case"]
        parts.append(f"<h3>{html.escape(name)}</h3>")
        if rec.get("error"):
            parts.append(f"<p class='err'>{html.escape(rec['error'])}</p>")
            continue
        figs = [("input.png", "input")]
        for m, e in rec["methods"].items():
            if e.get("error"):
                parts.append(f"<p class='err'>{html.escape(m)}: {html.escape(e['error'])}</p>")
            else:
                ea = e.get("edit_adherence")
                figs.append((f"{m}.png", f"{m} PSNR {e['psnr']:.2f}" + (f" EA {ea:.2f}" if ea is not None else "")))
        figs.append(("gt.png", "ground truth"))
        parts.append("<div>" + "".join(
            f"<figure><img src='images/{html.escape(name)}/{html.escape(f)}' width='160'><figcaption>"
            f"{html.escape(c)}</figcaption></figure>" for f, c in figs) + "</div>")
    parts.append("</body></html>")
    path = out / "report.html"
    tmp = path.with_name(f".report.html.{os.getpid()}.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------- export (TinyWorld -> 3DEditBench)
def _keypoints(case, R: np.ndarray, T: np.ndarray, rng: np.random.Generator, n: int = 12):
    """Object pixels of the input visible after the move, and where they land (OpenCV pixel coordinates)."""
    import torch

    from diffusion_handles.geometry.camera import Camera, lift_at, project

    h, w = case.mask_src.shape
    cam = Camera(h, w, case.fov_deg)
    rows, cols = np.nonzero(case.mask_src)
    pix = torch.from_numpy(np.stack([cols + 0.5, rows + 0.5], -1).astype(np.float64))
    pts = lift_at(pix, torch.from_numpy(case.depth[rows, cols].astype(np.float64)), cam).numpy()
    moved = pts @ R.T + T
    uv, z = project(torch.from_numpy(moved), cam)
    uv = uv.numpy()
    u, v = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h) & (z.numpy() > 0)
    ok = np.zeros(len(rows), bool)
    ok[inside] = case.mask_gt[v[inside], u[inside]] & (
        np.abs(case.gt_depth[v[inside], u[inside]] - z.numpy()[inside]) < 0.03 * z.numpy()[inside])
    idx = np.nonzero(ok)[0]
    if len(idx) == 0:
        return None, None
    pick = np.sort(rng.choice(idx, size=min(n, len(idx)), replace=False))
    p1 = np.stack([cols[pick], rows[pick]], -1).astype(np.float64)
    p2 = uv[pick] - 0.5  # this project's pixel coordinates -> OpenCV's
    return p1, p2


def _ground_points(case) -> np.ndarray:
    """Three floor pixels of the input (world height ~0, not an object), left to right (OpenCV (x, y))."""
    import torch

    from diffusion_handles.geometry.camera import Camera, lift
    from diffusion_handles.world.scene import Scene

    h, w = case.depth.shape
    pts = lift(torch.from_numpy(case.depth.astype(np.float64))[None, None], Camera(h, w, case.fov_deg))[0].numpy()
    c2w = Scene.from_dict(case.scene).c2w()
    y_world = np.einsum("j,jhw->hw", c2w[1, :3], pts) + c2w[1, 3]
    rows, cols = np.nonzero((np.abs(y_world) < 1e-3) & ~case.mask_src)
    if len(rows) == 0:
        return np.zeros((3, 2))
    order = np.argsort(cols)
    pick = order[np.clip((np.array([0.15, 0.5, 0.85]) * len(order)).astype(int), 0, len(order) - 1)]
    return np.stack([cols[pick], rows[pick]], -1).astype(np.float64)


def case_from_tinyworld(case) -> EditBenchCase | None:
    """A TinyWorld bench case in 3DEditBench's layout; None for a non-rigid (scale) edit or no visible keypoint."""
    import cv2

    if abs(case.edit.scale - 1.0) > 1e-12:
        return None
    R, T = rt_from_edit(case.edit, case.pivot)
    rng = np.random.default_rng([case.seed, 14])
    p1, p2 = _keypoints(case, R, T, rng)
    if p1 is None:
        return None
    h, w = case.mask_src.shape
    dist = cv2.distanceTransform(np.pad(case.mask_src.astype(np.uint8), 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    i, j = np.unravel_index(int(np.argmax(dist)), dist.shape)  # the object pixel farthest from its outline
    return EditBenchCase(
        name=case.case_id, image1=case.image, image2=case.gt, K=opencv_K(case.fov_deg, h, w), R=R, T=T,
        point_prompt=np.array([float(j), float(i)]), gt_segment=case.mask_src.copy(),
        object_points_image1=p1, object_points_image2=p2, ground_points_image1=_ground_points(case),
        depth=case.depth.astype(np.float32), caption=case.caption, gt_segment_image2=case.mask_gt.copy(),
        attrs={"source": "TinyWorld (diffusion-handles)", "seed": int(case.seed), "kind": case.kind,
               "fov_deg": float(case.fov_deg)},
    )


def export_tinyworld(n: int, out: str | Path, *, first_seed: int | None = None, size: int = 128, spp: int = 64,
                     log=None) -> list[Path]:
    """Write ``n`` rigid TinyWorld edits as 3DEditBench HDF5 files into the new folder ``out`` (whole or not at all).

    Cases come from the benchmark's generator (:func:`~diffusion_handles.bench.cases.make_case`) over
    :func:`~diffusion_handles.bench.cases.bench_seeds`; scale edits (not rigid) and seeds without an
    acceptable edit are skipped.
    """
    from diffusion_handles.bench.cases import BENCH_SEED0, NoEditFound, bench_seeds, make_case

    if n < 1:
        raise HandlesError(f"--scenes: expected >= 1, got {n}")
    if size < 16:
        raise HandlesError(f"--size: expected >= 16 pixels, got {size}")
    if spp < 1:
        raise HandlesError(f"--spp: expected >= 1, got {spp}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HandlesError(f"--out: expected a new or empty folder, got {str(out)!r} (not empty)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.resolve().parent))
    written: list[str] = []
    try:
        for seed in bench_seeds(n * 20, BENCH_SEED0 if first_seed is None else first_seed):
            if len(written) >= n:
                break
            try:
                case = make_case(seed, size=size, spp=spp)
            except NoEditFound:
                continue
            eb = case_from_tinyworld(case)
            if eb is None:
                continue
            write_case(staging / f"{case.case_id}.hdf5", eb)
            written.append(f"{case.case_id}.hdf5")
            if log:
                log(f"  {case.case_id}: {case.kind}, {case.caption}")
        if len(written) < n:
            raise HandlesError(f"--scenes: expected {n} rigid edits, found {len(written)} in {n * 20} seeds")
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [out / w for w in written]


# ---------------------------------------------------------------------- command line
def run_cli(args) -> int:
    """``handles bench --suite 3deditbench``: validate the flags, run (locally or on Ray), print the table."""
    if not args.data:
        raise HandlesError("--data: expected a folder of 3DEditBench .hdf5 files with --suite 3deditbench, got none")
    for value, arg, lo in ((args.steps, "--steps", 1), (args.null_inner_steps, "--null-inner-steps", 0)):
        if value < lo:
            raise HandlesError(f"{arg}: expected an integer >= {lo}, got {value}")
    if args.threads is not None and args.threads < 1:
        raise HandlesError(f"--threads: expected an integer >= 1, got {args.threads}")
    if args.shard != "0/1":
        raise HandlesError("--shard: expected 0/1 with --suite 3deditbench (use --ray to spread the cases)")
    from diffusion_handles.bench.methods import resolve_methods

    resolve_methods(args.methods)
    files = list_cases(args.data)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "settings.json").is_file())):
        raise HandlesError(f"--out: expected a new or empty folder or a 3deditbench run to resume, got {args.out!r}")
    cfg = EditBenchConfig(model=args.model, methods=args.methods, steps=args.steps, inversion=args.inversion,
                          null_inner_steps=args.null_inner_steps, gt_mask=args.gt_mask, sam_model=args.sam_model,
                          prompt=args.prompt, device=args.device, threads=args.threads)
    if args.ray is not None:
        from diffusion_handles.batch.bench_ray import run_editbench_on_ray

        results = run_editbench_on_ray(cfg, args.data, out, [p.stem for p in files], ray_address=args.ray,
                                       gpus_per_job=args.gpus_per_job, progress=not args.quiet)
    else:
        results = run_editbench(cfg, args.data, out, progress=not args.quiet, report_only=args.report_only)
    print(f"results written to {args.out}: results.json, report.html, edits/, images/")
    failed = sum(a["failed"] for a in results["aggregate"].values())
    if failed:
        import sys

        first = next((r.get("error") or next((e.get("error") for e in r.get("methods", {}).values() if e.get("error")), None)
                      for r in results["edits"] if r.get("error") or any(e.get("error") for e in r.get("methods", {}).values())), None)
        print(f"handles bench: error: {failed} failed result(s); first: {first}", file=sys.stderr)
        return 1
    return 0
