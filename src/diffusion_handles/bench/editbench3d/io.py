"""3DEditBench's HDF5 files: one case in, one case out, and the cases of a folder.

A case is one ``*.hdf5`` file of datasets (the keys are listed in the docstring of
:mod:`diffusion_handles.bench.editbench3d`); :func:`read_case` checks every dataset's type and
shape and unpickles or executes nothing, :func:`write_case` writes the same layout (plus this
project's ``depth``, ``caption`` and ``GT_segment_image2``) atomically. Arrays keep the benchmark's
units: images ``(H, W, 3)`` uint8, ``K`` in pixels, ``T`` in the scene's units.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffusion_handles.errors import HandlesError

REQUIRED = ("image1", "image2", "K", "R", "T", "point_prompt", "GT_segment")
KEYPOINTS = ("object_points_image1", "object_points_image2", "ground_points_image1")


@dataclass
class EditBenchCase:
    """One 3DEditBench case (the keys: the docstring of :mod:`diffusion_handles.bench.editbench3d`)."""

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

