"""3DEditBench's HDF5 files: one case in, one case out, and the cases of a folder.

A case is one ``*.hdf5`` file of datasets (the keys are listed in the docstring of
:mod:`diffusion_handles.bench.editbench3d`); :func:`read_case` checks every dataset's type and
shape and unpickles or executes nothing, :func:`write_case` writes the same layout (plus this
project's ``depth``, ``caption`` and ``GT_segment_image2``) atomically. Arrays keep the benchmark's
units: images ``(H, W, 3)`` uint8, ``K`` in pixels, ``T`` in the scene's units.

A case file is read as a hostile input: every dataset is looked at from its metadata (link kind,
storage, dtype, declared shape, chunk shape) before any of its data is read. A dataset must be
stored in the file itself: external and soft links, external storage and virtual datasets (whose
bytes live in other files) are refused, as are declared shapes beyond the limits
(:data:`diffusion_handles.limits.IMAGE_SIDE`, :data:`~diffusion_handles.limits.IMAGE_PIXELS`
and this module's limits below), so a file cannot reach outside ``--data`` nor make the reader
allocate more than an allowed image.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffusion_handles.errors import HandlesError
from diffusion_handles.limits import IMAGE_PIXELS, IMAGE_SIDE

REQUIRED = ("image1", "image2", "K", "R", "T", "point_prompt", "GT_segment")
KEYPOINTS = ("object_points_image1", "object_points_image2", "ground_points_image1")

# ---- limits of this reader (beyond diffusion_handles.limits), checked from a file's metadata ----
KEYPOINTS_MAX = 10_000  # rows of one keypoint list (3DEditBench annotates a handful per case)
CAPTION_BYTES = 4096  # a caption's length in bytes (the text encoder reads 77 tokens of it)
ITEMSIZE_MAX = 8  # bytes of one number (float64 / int64; wider dtypes are not numbers we read)
CHUNK_ELEMS_FLOOR = 1 << 20  # a chunk may hold this many elements (or the dataset's size, if more):
#                              a larger chunk, e.g. a gzip bomb in one chunk of a tiny dataset, is refused
NUMBERS = ("u", "i", "f", "b")


def require_h5py(option: str = "3DEditBench files"):
    """The h5py module (the ``bench3d`` extra), or a one-line :class:`HandlesError` naming the extra."""
    try:
        import h5py
    except ImportError:
        from diffusion_handles.hub import needs_extra

        raise HandlesError(needs_extra(option, "bench3d")) from None
    return h5py


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


def _dataset(f, key: str, path: Path):
    """The dataset ``key`` of ``f`` (None when there is no such name), checked from its link and
    storage before it is opened for data: a hard link to a dataset whose bytes are in this file."""
    import h5py

    link = f.get(key, getlink=True)  # the link itself: nothing is followed yet
    if link is None:
        return None
    if not isinstance(link, h5py.HardLink):
        kind = "an external link to another file" if isinstance(link, h5py.ExternalLink) else "a soft link"
        raise HandlesError(f"{path.name}: {key}: expected a dataset stored in the file, got {kind} (links are not followed)")
    obj = f.get(key)
    if not isinstance(obj, h5py.Dataset):
        raise HandlesError(f"{path.name}: {key}: expected a dataset, got {'a group' if isinstance(obj, h5py.Group) else 'a named type'}")
    if obj.is_virtual:
        raise HandlesError(f"{path.name}: {key}: expected a dataset stored in the file, got a virtual dataset (its data is in other files)")
    if obj.external:
        raise HandlesError(f"{path.name}: {key}: expected a dataset stored in the file, got external storage (its data is in another file)")
    return obj


def _shape_text(shape: tuple) -> str:
    return "(" + ", ".join("N" if s is None else str(s) for s in shape) + (",)" if len(shape) == 1 else ")")


def _checked(obj, key: str, path: Path, shape: tuple, max_rows: int | None = None):
    """``obj`` once its dtype, declared shape and chunk shape (metadata only) fit ``shape`` (None:
    any length up to ``max_rows``) and the limits."""
    dt = obj.dtype
    if dt.kind not in NUMBERS or dt.itemsize > ITEMSIZE_MAX or dt.subdtype is not None:
        raise HandlesError(f"{path.name}: {key}: expected numbers of at most {ITEMSIZE_MAX} bytes, got dtype {dt}")
    got = tuple(obj.shape) if obj.shape is not None else None  # None: an empty (null) dataspace
    if got is None:
        raise HandlesError(f"{path.name}: {key}: expected shape {_shape_text(shape)}, got an empty dataset")
    if len(got) != len(shape) or any(s is not None and s != d for s, d in zip(shape, got, strict=False)):
        raise HandlesError(f"{path.name}: {key}: expected shape {_shape_text(shape)}, got {got}")
    if max_rows is not None and got[0] > max_rows:
        raise HandlesError(f"{path.name}: {key}: expected at most {max_rows} rows, got {got[0]}")
    if obj.chunks is not None and math.prod(obj.chunks) > max(obj.size, CHUNK_ELEMS_FLOOR):
        raise HandlesError(f"{path.name}: {key}: expected chunks of at most {max(obj.size, CHUNK_ELEMS_FLOOR)} elements, "
                           f"got chunk shape {obj.chunks} (refused before decompressing it)")
    return obj


def _read(obj, key: str, path: Path) -> np.ndarray:
    """The data of a checked dataset; finite when it is floating point."""
    try:
        a = np.asarray(obj[()])
    except Exception as e:  # a corrupt chunk, a filter that is not available, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HandlesError(f"{path.name}: {key}: could not read the dataset ({first})") from None
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise HandlesError(f"{path.name}: {key}: expected finite numbers, got NaN or inf")
    return a


def _array(f, key: str, path: Path, shape: tuple, max_rows: int | None = None) -> np.ndarray | None:
    """Dataset ``key`` checked from its metadata (:func:`_dataset`, :func:`_checked`), then read;
    None when the file has no ``key``."""
    obj = _dataset(f, key, path)
    return None if obj is None else _read(_checked(obj, key, path, shape, max_rows), key, path)


def _image_size(f, path: Path) -> tuple[int, int]:
    """``(H, W)`` of ``image1`` from its declared shape, within the limits on an image's size."""
    obj = _checked(_dataset(f, "image1", path), "image1", path, (None, None, 3))
    h, w = obj.shape[:2]
    lo, hi = IMAGE_SIDE
    if not (lo <= h <= hi and lo <= w <= hi) or h * w > IMAGE_PIXELS:
        raise HandlesError(f"{path.name}: image1: expected width and height between {lo} and {hi} pixels "
                           f"(at most {IMAGE_PIXELS} pixels), got {w}x{h}")
    return h, w


def _uint8_image(a: np.ndarray, key: str, path: Path) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind == "f" and a.max() <= 1.0 and a.min() >= 0.0:
        return (a * 255.0 + 0.5).astype(np.uint8)
    raise HandlesError(f"{path.name}: {key}: expected uint8 RGB, got dtype {a.dtype}")


def _caption(f, path: Path) -> str | None:
    import h5py

    c = _dataset(f, "caption", path)
    if c is None:
        return None
    info = h5py.check_string_dtype(c.dtype)
    if info is None or c.shape != ():
        raise HandlesError(f"{path.name}: caption: expected one text string, got dtype {c.dtype} and shape {c.shape}")
    if info.length is not None and info.length > CAPTION_BYTES:
        raise HandlesError(f"{path.name}: caption: expected at most {CAPTION_BYTES} bytes, got {info.length}")
    try:
        v = c[()]  # variable-length text lives in the file's heap: at most the file's size
    except Exception as e:
        raise HandlesError(f"{path.name}: caption: could not read the dataset ({type(e).__name__})") from None
    if isinstance(v, bytes):
        if len(v) > CAPTION_BYTES:
            raise HandlesError(f"{path.name}: caption: expected at most {CAPTION_BYTES} bytes, got {len(v)}")
        v = v.decode("utf-8", "replace")
    if not isinstance(v, str) or len(v.encode("utf-8")) > CAPTION_BYTES:
        raise HandlesError(f"{path.name}: caption: expected a text of at most {CAPTION_BYTES} bytes")
    return v


def _attrs(f) -> dict:
    """The file's scalar number and text attributes (an attribute's shape and type are read from
    its metadata first; arrays and other types are skipped unread)."""
    out = {}
    for k in list(f.attrs):
        a = f.attrs.get_id(k)
        if a.shape != () or a.dtype.kind not in ("u", "i", "f", "O", "U") or a.dtype.itemsize > ITEMSIZE_MAX:
            continue
        try:
            v = f.attrs[k]
        except Exception:
            continue
        if isinstance(v, (int, float, str, np.integer, np.floating)) and len(str(v)) <= CAPTION_BYTES:
            out[k] = v.item() if hasattr(v, "item") else v
    return out


def _open(path: Path):
    h5py = require_h5py()
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise HandlesError(f"{path.name}: expected an HDF5 file, could not open it ({str(e).splitlines()[0]})") from None


def read_case(path: str | Path) -> EditBenchCase:
    """Read and validate one HDF5 case (datasets only; nothing is unpickled or executed, nothing
    outside the file is followed, nothing is read before its declared size is checked)."""
    path = Path(path)
    with _open(path) as f:
        missing = [k for k in REQUIRED if f.get(k, getlink=True) is None]
        if missing:
            raise HandlesError(f"{path.name}: expected datasets {', '.join(REQUIRED)}, missing {', '.join(missing)}")
        h, w = _image_size(f, path)
        out = EditBenchCase(
            name=path.stem, image1=_uint8_image(_array(f, "image1", path, (h, w, 3)), "image1", path),
            image2=_uint8_image(_array(f, "image2", path, (h, w, 3)), "image2", path),
            K=_array(f, "K", path, (3, 3)).astype(np.float64), R=_array(f, "R", path, (3, 3)).astype(np.float64),
            T=_array(f, "T", path, (3,)).astype(np.float64),
            point_prompt=_array(f, "point_prompt", path, (2,)).astype(np.float64),
            gt_segment=_array(f, "GT_segment", path, (h, w)) > 0,
        )
        for key in KEYPOINTS:
            a = _array(f, key, path, (None, 2), max_rows=KEYPOINTS_MAX)
            if a is not None:
                setattr(out, key, a.astype(np.float64))
        depth = _array(f, "depth", path, (h, w))
        if depth is not None:
            out.depth = depth.astype(np.float32)
            if (out.depth <= 0).any():
                raise HandlesError(f"{path.name}: depth: expected positive z-depth everywhere")
        seg2 = _array(f, "GT_segment_image2", path, (h, w))
        out.gt_segment_image2 = None if seg2 is None else seg2 > 0
        out.caption = _caption(f, path)
        out.attrs = _attrs(f)
    if not out.gt_segment.any():
        raise HandlesError(f"{path.name}: GT_segment: expected at least one object pixel, got an empty mask")
    return out


def write_case(path: str | Path, case: EditBenchCase) -> Path:
    """Write ``case`` as one HDF5 file in 3DEditBench's layout (atomically: temp file + rename)."""
    h5py = require_h5py()

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

