"""Reading user inputs (image, depth, mask) with checks that name what is wrong.

Every loader raises :class:`~diffusion_handles.errors.HandlesError` with one line naming the
argument, what was expected and what arrived. The decoding functions (:func:`image_to_rgb`,
:func:`depth_from_array`, :func:`depth_from_png16`) work on data already in memory and are
shared by the command line (files) and the web app (uploads), so both read every input the
same way.

Images, masks and depth maps: width and height in :data:`~diffusion_handles.limits.IMAGE_SIDE`
and at most :data:`~diffusion_handles.limits.IMAGE_PIXELS` pixels, read from the file's header
before anything is decoded (a small file can ask for gigabytes); only regular files are read (a
FIFO, a device or a folder is refused, saying which). PNG, JPEG, WebP, TIFF and HEIC/HEIF
(through ``pillow-heif``) are read. 8-bit grey, palette, RGB, CMYK and YCbCr images are
converted to RGB (CMYK by Pillow's formula, without colour management); 16-bit colour (48-bit RGB
PNG or TIFF) is read by Pillow as 8-bit RGB; 16-bit grey (PNG ``I;16``, or ``I`` with values in
0..65535) is scaled by 1/65535 (not clipped at 255); 32-bit float grey (``F``) is accepted with
values in [0, 1]. Images with transparency (an alpha channel or a transparent palette entry)
are accepted only if every pixel is opaque: what lies under a transparent pixel is undefined.

EXIF orientation: a photo, mask or depth image whose EXIF says it is stored turned or mirrored
(orientation 2..8, as phones write) is turned upright on reading (``PIL.ImageOps.exif_transpose``),
so it is edited, and written, the way a viewer shows it; orientation 0 (written by some software
for "unknown") counts as upright. An EXIF block that cannot be read (not a TIFF structure,
truncated) or an orientation outside 0..8 is refused: which way is up is then unknown.
:func:`read_photo` returns the upright image with its stored size, so a mask or depth map of the
stored (sideways) size is refused with a message that says so (:func:`check_matches_image`).

Depth files (the file's contents decide, not its name):

* ``.npy``: a real (integer or float) array ``(H, W)`` of z-depth in scene units (any unit;
  transforms use it); singleton axes around it (``(1, H, W)``, ``(H, W, 1)``) are dropped.
  Loaded without pickle. ``.npz`` archives and complex arrays are refused.
* 16-bit PNG: z-depth in millimetres, i.e. ``depth = value / 1000`` scene units (metres); the
  divisor is ``depth_scale`` (``--depth-scale`` on the command line). Value 0 means "no depth"
  and is rejected, since every pixel needs a depth to be lifted.
* TIFF (read by ``tifffile``): 16-bit integer as the 16-bit PNG (``value / depth_scale``), or
  float (16, 32 or 64 bits) in scene units; 8-bit TIFFs are refused (too few levels for depth).
* PFM (read by OpenCV, ``cv2.imread``): float32 in scene units.
* OpenEXR (read by the ``OpenEXR`` package; OpenCV's wheels are built without it): a HALF or FLOAT
  channel in scene units: the only channel, else the one named ``Z`` (or ``*.Z``, e.g. Blender's
  ``ViewLayer.Depth.Z``), else ``Y``, else ``R``/``G``/``B`` when they are equal. The first part
  of a multi-part file; deep images are refused.

A colour PFM, TIFF or EXR is read only when its channels are equal (a grey map saved as colour).
Messages the decoding libraries print while reading a broken file are kept off the terminal; the
first of them goes into the one-line error.

What the values are (:class:`DepthReading`, ``--depth-kind``; :func:`to_z_depth` is the one place
each conversion is written, for files and for the depth estimators alike):

* ``z`` (the default for files): z-depth in scene units, used as it is;
* ``inverse``: relative inverse depth (disparity, as MiDaS, DPT and Depth Anything give): known
  only up to a scale and shift, so its robust range (the 1st to 99th percentile) is mapped
  linearly in inverse depth onto ``[1/far, 1/near]``: with ``r`` the value, ``lo``, ``hi`` those
  percentiles and ``t = clip((r - lo) / (hi - lo), 0, 1)``, ``z = 1 / (1/far + t (1/near - 1/far))``,
  so the nearest pixels sit at ``near`` and the farthest at ``far`` scene units (``--depth-range``,
  default 1 and 10). Zero (the sky) and negative values are allowed; every value must be finite.
* ``relative-depth``: affine-invariant depth, mapped linearly onto ``[near, far]``.

After conversion every z-depth value must lie in :data:`DEPTH_RANGE` = [1e-6, 1e6] scene units:
beyond it float32 geometry and the inverse-depth Poisson solves lose all precision (a depth
scaled by 1e30 would give a constant edited depth), so such a map is refused rather than used.

Size: a depth map of another size than the image (an estimator's output, 518x392 for a 4032x3024
photo) is resized to the image when its aspect ratio is the image's within
:data:`~diffusion_handles.limits.DEPTH_ASPECT`: bilinearly (antialiased when shrinking), in the
file's own values before the kind's conversion, as the depth estimators' outputs are resized.
Invalid values (non-finite, and for ``z`` zero or negative) are refused before, so none is ever
interpolated into a valid pixel. A map of another aspect ratio is refused (one turned by 90
degrees, saying that the image was turned by its EXIF orientation when it was). Masks must have
the image's (upright) size exactly.

JSON files (``--keyframes``, ``--edits``; :func:`read_json_file`) are read up to
:data:`~diffusion_handles.limits.JSON_BYTES` and no further (a FIFO or ``/dev/zero`` never ends),
and their nesting is checked against :data:`~diffusion_handles.limits.JSON_DEPTH` before
``json.loads`` recurses (:func:`check_json_depth`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from diffusion_handles import limits
from diffusion_handles.errors import HandlesError, first_line

PNG16_DEPTH_SCALE = 1000.0  # 16-bit PNG depth: millimetres -> scene units (metres)
MIN_SIDE = limits.IMAGE_SIDE[0]  # smallest image / depth width or height (the web app's limit too)
MAX_SIDE = limits.IMAGE_SIDE[1]  # largest image / mask / depth width or height, from the file's header
DEPTH_RANGE = (1e-6, 1e6)  # accepted z-depth in scene units, after conversion
NPY_MAGIC = b"\x93NUMPY"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"  # .npz archives are zip files
EXR_MAGIC = b"\x76\x2f\x31\x01"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1")
EXIF_ORIENTATION = 0x0112
_GREY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, in words: ``a folder``, ``a FIFO``, ``a device``, ``a socket``, ``a regular file``."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def _existing(path: str | Path, arg: str) -> Path:
    """``path`` if it is a regular file (a FIFO would block or never end, a device never ends)."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise HandlesError(f"{arg}: file not found: {p}") from None
    except OSError as e:
        raise HandlesError(f"{arg}: could not read {p}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise HandlesError(f"{arg}: expected a regular file, got {file_kind(mode)}: {p}")
    return p


def check_side(width: int, height: int, arg: str, min_side: int = MIN_SIDE) -> None:
    """Refuse an image or depth smaller than ``min_side`` pixels in width or height."""
    if min(width, height) < min_side:
        raise HandlesError(f"{arg}: expected width and height of at least {min_side} pixels, got {width}x{height}")


def check_max_size(width: int, height: int, arg: str) -> None:
    """Refuse an image, mask or depth larger than :data:`~diffusion_handles.limits.IMAGE_SIDE` per
    side or :data:`~diffusion_handles.limits.IMAGE_PIXELS` in all (4096x4096 is accepted)."""
    if max(width, height) > MAX_SIDE:
        raise HandlesError(f"{arg}: expected width and height of at most {MAX_SIDE} pixels, got {width}x{height}")
    if width * height > limits.IMAGE_PIXELS:
        raise HandlesError(f"{arg}: expected at most {limits.IMAGE_PIXELS} pixels, got {width}x{height}")


def _head(p: Path, arg: str, n: int = 16) -> bytes:
    """The first ``n`` bytes of ``p`` (its magic)."""
    try:
        with open(p, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise HandlesError(f"{arg}: could not read {p}: {e.strerror or e}") from None


def is_heif(head: bytes) -> bool:
    """Whether a file starting with ``head`` is a HEIC/HEIF image (an ISO-BMFF ``ftyp`` box of a HEIF brand)."""
    return head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS


def register_heif(arg: str) -> None:
    """Let Pillow open HEIC/HEIF (``pillow_heif.register_heif_opener``, once); without
    ``pillow-heif`` one line says how to get it."""
    try:
        import pillow_heif
    except ImportError:
        raise HandlesError(f"{arg}: got a HEIC/HEIF photo, which needs the pillow-heif package: "
                           "pip install pillow-heif (or convert the photo to JPEG or PNG)") from None
    pillow_heif.register_heif_opener()


@contextlib.contextmanager
def _opened(p: Path, arg: str, what: str) -> Iterator[Image.Image]:
    """``Image.open(p)`` with its size checked from the header, before any pixel is decoded; PIL's
    own errors become one line ``{arg}: expected {what}, could not read ...``. HEIC/HEIF files
    are opened through ``pillow-heif`` (:func:`register_heif`)."""
    if is_heif(_head(p, arg)):
        register_heif(arg)
    with warnings.catch_warnings():
        # a broken EXIF block: Pillow warns while reading; exif_orientation() refuses it in one line
        warnings.filterwarnings("ignore", message="(?i)corrupt exif", category=UserWarning)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit is lower: checked below
                im = Image.open(p)
        except Image.DecompressionBombError as e:
            raise HandlesError(f"{arg}: expected width and height of at most {MAX_SIDE} pixels, got a larger image "
                               f"({first_line(e)})") from None
        except Exception as e:  # PIL raises many types for broken files
            raise HandlesError(f"{arg}: expected {what}, could not read {p}: {e}") from None
        with im:
            check_max_size(im.width, im.height, arg)
            try:
                yield im
            except HandlesError:
                raise
            except Exception as e:  # decoding a broken file
                raise HandlesError(f"{arg}: expected {what}, could not read {p}: {e}") from None


def _opaque(alpha: np.ndarray, what: str, arg: str) -> None:
    n = int((alpha < 255).sum())
    if n:
        raise HandlesError(f"{arg}: expected an opaque image, got {n} transparent or semi-transparent pixels in "
                           f"{what} (what lies under them is undefined); flatten it onto a background first")


def image_to_rgb(im: Image.Image, arg: str = "IMAGE") -> np.ndarray:
    """Decode a loaded PIL image to ``(H, W, 3)`` float32 RGB in ``[0, 1]`` (see the module docstring).

    Raises:
        HandlesError: a mode that cannot be read as colour (32-bit integers beyond 16 bits,
            floats outside [0, 1], transparency, unknown modes).
    """
    mode = im.mode
    if mode in _GREY16_MODES or mode == "I":
        a = np.asarray(im)
        if a.ndim != 2:
            raise HandlesError(f"{arg}: expected a single-channel {mode} image, got shape {a.shape}")
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise HandlesError(f"{arg}: expected 8- or 16-bit colour or grey, got a 32-bit integer image with values "
                               f"in [{lo}, {hi}] (a depth map?)")
        grey = a.astype(np.float32) / 65535.0
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        finite = bool(np.isfinite(a).all())
        if not finite or (a.size and (a.min() < 0.0 or a.max() > 1.0)):
            shown = "non-finite values" if not finite else f"values in [{a.min():g}, {a.max():g}]"
            raise HandlesError(f"{arg}: expected 8- or 16-bit colour or grey (or float grey in [0, 1]), got a 32-bit "
                               f"float image with {shown} (a depth map?)")
        return np.repeat(a[..., None], 3, axis=2)
    try:
        if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info) \
                or (mode in ("L", "RGB") and "transparency" in im.info):
            rgba = np.asarray(im.convert("RGBA"))
            what = f"an {mode} image" if mode in ("RGBA", "LA", "RGBa", "La") else f"a {mode} image with a transparent colour"
            _opaque(rgba[..., 3], what, arg)
            return rgba[..., :3].astype(np.float32) / 255.0
        rgb = np.asarray(im.convert("RGB"))
    except HandlesError:
        raise
    except Exception as e:  # PIL refuses some conversions (e.g. LAB, HSV, exotic raw modes)
        raise HandlesError(f"{arg}: expected a colour or grey image, could not convert mode {mode} to RGB "
                           f"({type(e).__name__}: {e})") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise HandlesError(f"{arg}: expected a colour or grey image, got mode {mode} (shape {rgb.shape}, {rgb.dtype})")
    return rgb.astype(np.float32) / 255.0


def _has_tiff_structure(raw: bytes) -> bool:
    """Whether raw EXIF bytes (``Exif\\0\\0`` optional) start with a TIFF header, as EXIF must."""
    body = raw[6:] if raw.startswith(b"Exif\x00\x00") else raw
    return body[:4] in (b"II*\x00", b"MM\x00*")


def exif_orientation(im: Image.Image, arg: str) -> int:
    """The EXIF orientation of an opened image: 1 (upright; also when absent or 0) .. 8.

    Raises:
        HandlesError: an EXIF block that is not a TIFF structure or is truncated (Pillow's
            "Corrupt EXIF data"), or an orientation outside 0..8: which way is up is unknown.
    """
    raw = im.info.get("exif")
    fix = "re-save the photo upright without EXIF, or fix its orientation tag"
    if isinstance(raw, bytes) and len(raw) > 6 and not _has_tiff_structure(raw):
        raise HandlesError(f"{arg}: expected readable EXIF metadata (it says which way is up), got an EXIF block "
                           f"that is not a TIFF structure (starts {raw[:10]!r}); {fix}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if isinstance(raw, bytes):  # parsed afresh: Pillow may have parsed it (and warned) on opening
                exif = Image.Exif()
                exif.load(raw)
            else:  # e.g. a TIFF's own tags
                exif = im.getexif()
            value = exif.get(EXIF_ORIENTATION, 1)
        except Exception as e:  # Pillow raises several types for broken EXIF
            raise HandlesError(f"{arg}: expected readable EXIF metadata (it says which way is up), got a broken EXIF "
                               f"block ({type(e).__name__}: {first_line(e)}); {fix}") from None
    corrupt = [str(w.message) for w in caught if "corrupt exif" in str(w.message).lower()]
    if corrupt:
        raise HandlesError(f"{arg}: expected readable EXIF metadata (it says which way is up), got a corrupt EXIF "
                           f"block ({' '.join(corrupt[0].split())[:120]}); {fix}")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 8:
        raise HandlesError(f"{arg}: expected an EXIF orientation of 1 to 8 (which way is up), got {value!r}; {fix}")
    return value or 1  # 0: "unknown", written by some software, is read as upright


def upright(im: Image.Image, arg: str) -> tuple[Image.Image, int]:
    """``im`` turned upright by its EXIF orientation (``ImageOps.exif_transpose``), and that orientation."""
    orientation = exif_orientation(im, arg)
    if orientation == 1:
        return im, 1
    return ImageOps.exif_transpose(im), orientation


@dataclass(frozen=True, eq=False)
class Photo:
    """An image as read from a file by :func:`read_photo`.

    Attributes:
        image: ``(1, 3, H, W)`` float32 RGB in ``[0, 1]``, upright (its EXIF orientation applied).
        stored_size: ``(width, height)`` as stored in the file, before the EXIF orientation.
        orientation: the EXIF orientation applied: 1 upright, 2..8 mirrored and/or turned
            (5..8 turned by 90 degrees, so width and height swap).
    """

    image: torch.Tensor
    stored_size: tuple[int, int]
    orientation: int = 1

    @property
    def turned(self) -> bool:
        """Whether the EXIF orientation turned the image by 90 degrees (width and height swapped)."""
        return self.orientation in (5, 6, 7, 8)

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` upright, the size the edit works at."""
        return int(self.image.shape[-1]), int(self.image.shape[-2])


IMAGE_FILES = "an image file (PNG, JPEG, WebP, TIFF or HEIC)"


def read_photo(path: str | Path, arg: str = "IMAGE") -> Photo:
    """An RGB image, upright, with its stored size and EXIF orientation (see the module docstring)."""
    p = _existing(path, arg)
    with _opened(p, arg, IMAGE_FILES) as im:
        stored = (im.width, im.height)
        check_side(im.width, im.height, arg)
        im.load()
        im, orientation = upright(im, arg)
        arr = image_to_rgb(im, arg)
    image = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].contiguous()
    return Photo(image=image, stored_size=stored, orientation=orientation)


def load_image(path: str | Path, arg: str = "IMAGE") -> torch.Tensor:
    """An RGB image as ``(1, 3, H, W)`` float32 in ``[0, 1]``, upright (:func:`read_photo`,
    decoded by :func:`image_to_rgb`)."""
    return read_photo(path, arg).image


# ---- what depth values are: --depth-kind ----------------------------------------------------------
METRIC_DEPTH = "metric-depth"  # z-depth in scene units, used as it is (--depth-kind z)
RELATIVE_DISPARITY = "relative-disparity"  # relative inverse depth, affine-invariant (--depth-kind inverse)
RELATIVE_DEPTH = "relative-depth"  # affine-invariant depth (--depth-kind relative-depth)
DEPTH_KINDS = (METRIC_DEPTH, RELATIVE_DISPARITY, RELATIVE_DEPTH)
DEPTH_KIND_FLAGS = {"z": METRIC_DEPTH, "inverse": RELATIVE_DISPARITY, "relative-depth": RELATIVE_DEPTH}
DEFAULT_DEPTH_RANGE = (1.0, 10.0)  # scene units of a relative map's nearest and farthest pixels


def depth_kind(name: str, arg: str = "--depth-kind") -> str:
    """The kind a name stands for: ``z``, ``inverse``, ``relative-depth`` (the flag's words) or one
    of :data:`DEPTH_KINDS` (``metric-depth`` is ``z``, ``relative-disparity`` is ``inverse``)."""
    if name in DEPTH_KINDS:
        return name
    if name in DEPTH_KIND_FLAGS:
        return DEPTH_KIND_FLAGS[name]
    raise HandlesError(f"{arg}: expected one of {', '.join(DEPTH_KIND_FLAGS)} (or {', '.join(DEPTH_KINDS)}), "
                       f"got {name!r}")


def kind_flag(kind: str) -> str:
    """The ``--depth-kind`` word of a kind: ``z``, ``inverse`` or ``relative-depth``."""
    return next(flag for flag, k in DEPTH_KIND_FLAGS.items() if k == depth_kind(kind))


def check_depth_range(near: float, far: float, arg: str = "--depth-range") -> None:
    """Refuse a relative map's range unless ``0 < near < far < inf``, both in :data:`DEPTH_RANGE`."""
    if not (0 < near < far < float("inf")):
        raise HandlesError(f"{arg}: expected 0 < near < far, got near={near} far={far}")
    lo, hi = DEPTH_RANGE
    if near < lo or far > hi:
        raise HandlesError(f"{arg}: expected near and far within [{lo:g}, {hi:g}] scene units, got near={near:g} far={far:g}")


def to_z_depth(raw: torch.Tensor, kind: str, *, near: float = DEFAULT_DEPTH_RANGE[0],
               far: float = DEFAULT_DEPTH_RANGE[1], quantiles: tuple[float, float] = (0.01, 0.99)) -> torch.Tensor:
    """Convert depth values of a ``kind`` to positive z-depth in scene units: the one place, for
    depth files (``--depth-kind``) and the depth estimators' outputs alike.

    A relative map (``relative-disparity`` or ``relative-depth``) is known only up to a scale and
    a shift (MiDaS-style affine invariance). Its robust range, the ``quantiles`` ``lo`` and ``hi``
    (1st and 99th percentile), fixes both: ``t = clip((raw - lo) / (hi - lo), 0, 1)``, then

    * ``relative-disparity``: ``z = 1 / (1/far + t (1/near - 1/far))``, linear in inverse depth,
      the largest values nearest;
    * ``relative-depth``: ``z = near + t (far - near)``.

    So the nearest pixels sit at ``near`` and the farthest at ``far`` scene units.

    Args:
        raw: ``(B, 1, H, W)`` values of the given ``kind``.
        kind: ``metric-depth`` (z-depth: passed through, clamped to >= 1e-3),
            ``relative-disparity`` (affine-invariant inverse depth) or ``relative-depth``
            (affine-invariant depth); the ``--depth-kind`` words ``z``, ``inverse`` too.
        near, far: scene units the robust minimum/maximum of a relative map maps to.
        quantiles: the robust range of a relative map.

    Returns:
        ``(B, 1, H, W)`` z-depth in scene units, finite and > 0. A constant relative map (no
        information) becomes the constant ``sqrt(near * far)``.
    """
    if raw.dim() != 4 or raw.shape[1] != 1:
        raise ValueError(f"raw: expected (B, 1, H, W), got {tuple(raw.shape)}")
    kind = DEPTH_KIND_FLAGS.get(kind, kind)
    raw = torch.nan_to_num(raw.float(), nan=0.0, posinf=0.0, neginf=0.0)
    if kind == METRIC_DEPTH:
        return raw.clamp_min(1e-3)
    if kind not in (RELATIVE_DISPARITY, RELATIVE_DEPTH):
        raise ValueError(f"kind: expected one of {DEPTH_KINDS}, got {kind!r}")
    flat = raw.flatten(1)  # (B, H*W)
    if flat.shape[1] > 1_000_000:  # torch.quantile has a size limit; a strided sample is plenty
        flat = flat[:, :: -(-flat.shape[1] // 1_000_000)]
    q = torch.quantile(flat, torch.tensor(quantiles, dtype=flat.dtype, device=flat.device), dim=1)  # (2, B)
    lo, hi = q[0].view(-1, 1, 1, 1), q[1].view(-1, 1, 1, 1)
    span = hi - lo
    degenerate = span <= 1e-8 * (hi.abs() + lo.abs() + 1e-12)
    t = ((raw - lo) / torch.where(degenerate, torch.ones_like(span), span)).clamp(0.0, 1.0)
    t = torch.where(degenerate, torch.full_like(t, 0.5), t)  # t in [0, 1], 1 = the largest raw value
    if kind == RELATIVE_DISPARITY:
        inv = (1.0 / far) + t * (1.0 / near - 1.0 / far)  # large disparity -> near
        z = 1.0 / inv
        # the constant map: the geometric middle of the range
        return torch.where(degenerate, torch.full_like(z, float(np.sqrt(near * far))), z)
    z = near + t * (far - near)
    return torch.where(degenerate, torch.full_like(z, float(np.sqrt(near * far))), z)


@dataclass(frozen=True)
class DepthReading:
    """How a depth file's values are read (``--depth-kind``, ``--depth-scale``, ``--depth-range``).

    Attributes:
        kind: what the values are: ``z`` (the default) or ``metric-depth``: z-depth in scene
            units; ``inverse`` or ``relative-disparity``: relative inverse depth; ``relative-depth``
            (see :func:`to_z_depth`). Stored as one of :data:`DEPTH_KINDS`.
        scale: 16-bit integer images (PNG, TIFF) of z-depth: scene units = value / scale.
        near, far: scene units of a relative map's nearest and farthest pixels.
    """

    kind: str = METRIC_DEPTH
    scale: float = PNG16_DEPTH_SCALE
    near: float = DEFAULT_DEPTH_RANGE[0]
    far: float = DEFAULT_DEPTH_RANGE[1]

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", depth_kind(self.kind))
        _check_depth_scale(self.scale)
        check_depth_range(self.near, self.far)

    @property
    def relative(self) -> bool:
        """Whether the values are relative (known up to a scale and shift), not z-depth."""
        return self.kind != METRIC_DEPTH


# ---- depth values from arrays -------------------------------------------------------------------
def _depth_plane(arr: np.ndarray, arg: str, min_side: int, what: str = "z-depth") -> np.ndarray:
    """A real array's ``(H, W)`` plane (singleton axes dropped) as float64, its type and shape checked."""
    arr = np.asarray(arr)
    shape, dtype = tuple(arr.shape), arr.dtype
    if dtype.kind == "c":
        raise HandlesError(f"{arg}: expected real {what} values, got a complex array (dtype {dtype}, shape {shape}); "
                           "save its real part or magnitude instead")
    if dtype.kind not in "iuf":
        raise HandlesError(f"{arg}: expected a numeric (integer or float) {what} array, got dtype {dtype} (shape {shape})")
    a = arr
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    while a.ndim > 2 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise HandlesError(f"{arg}: expected a 2-D (H, W) {what} array, got shape {shape}")
    h, w = a.shape
    if min(h, w) < min_side:
        raise HandlesError(f"{arg}: expected an (H, W) array of at least {min_side}x{min_side} (the image's size), "
                           f"got shape {shape}")
    a = a.astype(np.float64)
    bad = ~np.isfinite(a)
    if bad.any():
        raise HandlesError(f"{arg}: expected finite depth everywhere, got {int(bad.sum())} non-finite values")
    return a


def depth_from_array(arr: np.ndarray, arg: str = "--depth", min_side: int = MIN_SIDE) -> np.ndarray:
    """Check a z-depth array and return it as ``(H, W)`` float32 scene units.

    Accepts real (integer or float) arrays ``(H, W)``, with singleton axes before or after
    (``(1, H, W)``, ``(H, W, 1)``, ``(1, 1, H, W)``). Every value must be finite and lie in
    :data:`DEPTH_RANGE`.

    Raises:
        HandlesError: naming ``arg``, what the array holds and what was expected.
    """
    a = _depth_plane(arr, arg, min_side)
    if (a <= 0).any():
        raise HandlesError(f"{arg}: expected positive z-depth everywhere, got {int((a <= 0).sum())} pixels <= 0 (min {a.min():g})")
    lo, hi = DEPTH_RANGE
    if a.max() > hi or a.min() < lo:
        n = int(((a > hi) | (a < lo)).sum())
        raise HandlesError(f"{arg}: expected z-depth in [{lo:g}, {hi:g}] scene units, got values in "
                           f"[{a.min():g}, {a.max():g}] ({n} pixels outside); rescale it (e.g. to metres)")
    return a.astype(np.float32)


def _grey16_values(im: Image.Image, arg: str, depth_scale: float) -> np.ndarray:
    """The values of a 16-bit grey image (PIL ``I;16`` or ``I`` in 0..65535), mode and range checked."""
    mode = im.mode
    a = np.asarray(im)
    if mode not in (*_GREY16_MODES, "I") and a.dtype != np.uint16:
        raise HandlesError(f"{arg}: expected a 16-bit PNG (depth in 1/{depth_scale:g} units) or .npy, got a PNG of mode {mode}")
    if a.ndim != 2:
        raise HandlesError(f"{arg}: expected a single-channel 16-bit PNG, got shape {a.shape}")
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise HandlesError(f"{arg}: expected 16-bit values 0..65535, got values in [{a.min()}, {a.max()}]")
    return a


def depth_from_png16(im: Image.Image, arg: str = "--depth", depth_scale: float = PNG16_DEPTH_SCALE,
                     min_side: int = MIN_SIDE) -> np.ndarray:
    """A 16-bit PNG depth map (``value / depth_scale`` scene units; 0 = no depth) as ``(H, W)`` float32."""
    a = _grey16_values(im, arg, depth_scale)
    return depth_from_array(a.astype(np.float64) / float(depth_scale), arg, min_side)


def _check_depth_scale(depth_scale: float) -> None:
    try:
        v = float(depth_scale)
    except (TypeError, ValueError):
        raise HandlesError(f"--depth-scale: expected a positive number, got {depth_scale!r}") from None
    if not (np.isfinite(v) and v > 0):
        raise HandlesError(f"--depth-scale: expected a positive finite number, got {depth_scale}")


# ---- depth files --------------------------------------------------------------------------------
DEPTH_FILES = "a .npy array, a 16-bit PNG, a 16-bit or float TIFF, a PFM or an OpenEXR file"


@contextlib.contextmanager
def _library_messages() -> Iterator[list[str]]:
    """Keep what a decoding library prints while it reads a file off the terminal: C code writes
    to file descriptor 2, bindings to ``sys.stdout``/``sys.stderr``. The list holds the printed
    lines (stripped, non-empty) once the block ends, also when it raised."""
    lines: list[str] = []
    out, err = io.StringIO(), io.StringIO()
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no file descriptor 2: nothing to redirect
        saved = None
    with tempfile.TemporaryFile() as tmp:
        if saved is not None:
            os.dup2(tmp.fileno(), 2)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                yield lines
        finally:
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace") + "\n" + out.getvalue() + "\n" + err.getvalue()
            lines += [line.strip() for line in text.splitlines() if line.strip()]


def _detail(p: Path, lines: list[str], e: BaseException | None = None) -> str:
    """The first message a library printed (its file-name prefix and OpenCV's location dropped),
    else the exception's first line."""
    if lines:
        text = lines[0].replace(f"{p}: ", "").replace(f"'{p}'", "the file")
        if "error: (" in text:  # OpenCV: "... error: (-2:Unspecified error) what in function 'f'"
            text = text.rsplit(") ", 1)[-1]
        return text[:200]
    return first_line(e) if e is not None else "no data"


def _one_channel(a: np.ndarray, arg: str, what: str) -> np.ndarray:
    """An ``(H, W)`` map from an ``(H, W)`` array or an ``(H, W, C)`` one whose colour channels
    are equal (a grey map saved as colour; a 4th, alpha, channel is ignored)."""
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 1):
        return a.reshape(a.shape[:2])
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        rgb = a[..., :3]
        if all(np.array_equal(rgb[..., 0], rgb[..., c], equal_nan=True) for c in (1, 2)):
            return rgb[..., 0]
        raise HandlesError(f"{arg}: expected one depth channel, got a {what} with {a.shape[-1]} channels that differ "
                           "(a colour image?)")
    raise HandlesError(f"{arg}: expected one depth channel (H, W), got a {what} of shape {a.shape}")


def _read_pfm(p: Path, arg: str, head: bytes) -> np.ndarray:
    """A PFM file's values (read by OpenCV), its size checked from the header first."""
    tokens = head.split()
    try:
        width, height = int(tokens[1]), int(tokens[2])
        float(tokens[3])
    except (IndexError, ValueError):
        raise HandlesError(f"{arg}: expected a PFM file (PF or Pf, width, height, scale), could not read the header "
                           f"of {p} (starts {head[:20]!r})") from None
    if width < 1 or height < 1:
        raise HandlesError(f"{arg}: expected a PFM image of at least 1x1, got {width}x{height} in its header")
    check_max_size(width, height, arg)
    import cv2

    a, error = None, None
    with _library_messages() as lines:
        try:
            a = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        except cv2.error as e:
            error = e
    if a is None or lines or error is not None:
        raise HandlesError(f"{arg}: expected a PFM float image, could not read {p}: {_detail(p, lines, error)}")
    return _one_channel(a, arg, "PFM")


def _exr_channel(channels: dict, arg: str) -> np.ndarray:
    """The depth channel of an OpenEXR file (see the module docstring)."""
    names = sorted(channels)
    pick = names[0] if len(names) == 1 else None
    for want in ("Z", "Y"):
        if pick is None:
            found = [n for n in names if n == want or n.endswith("." + want)]
            pick = found[0] if len(found) == 1 else None
    if pick is not None:
        a = np.asarray(channels[pick])
    elif {"R", "G", "B"} <= set(names):
        a = _one_channel(np.stack([channels[c] for c in "RGB"], -1), arg, "OpenEXR image")
    else:
        raise HandlesError(f"{arg}: expected an OpenEXR depth channel (the only one, Z, Y, or equal R, G, B), "
                           f"got channels {', '.join(names) or 'none'}")
    if a.dtype.kind != "f":
        raise HandlesError(f"{arg}: expected a HALF or FLOAT OpenEXR depth channel, got {a.dtype} ({pick})")
    return _one_channel(a, arg, "OpenEXR channel")


def _read_exr(p: Path, arg: str) -> np.ndarray:
    """An OpenEXR file's depth channel (read by the ``OpenEXR`` package), its size checked from
    the header first."""
    try:
        import OpenEXR
    except ImportError:
        raise HandlesError(f"{arg}: got an OpenEXR file, which needs the OpenEXR package: pip install OpenEXR") from None
    header, error = None, None
    with _library_messages() as lines:
        try:
            header = OpenEXR.File(str(p), header_only=True, num_threads=1).header()
        except Exception as e:  # the binding raises RuntimeError, ValueError, ...
            error = e
    if header is None or lines:
        raise HandlesError(f"{arg}: expected an OpenEXR file, could not read the header of {p}: {_detail(p, lines, error)}")
    if "deep" in str(header.get("type", "")):
        raise HandlesError(f"{arg}: expected a flat (scanline or tiled) OpenEXR image, got a deep one")
    (x0, y0), (x1, y1) = (tuple(int(v) for v in corner) for corner in header["dataWindow"])
    width, height = x1 - x0 + 1, y1 - y0 + 1
    if width < 1 or height < 1:
        raise HandlesError(f"{arg}: expected an OpenEXR image of at least 1x1, got {width}x{height} in its header")
    check_max_size(width, height, arg)
    channels, error = None, None
    with _library_messages() as lines:
        try:
            channels = {k: c.pixels for k, c in OpenEXR.File(str(p), separate_channels=True, num_threads=1)
                        .channels().items()}
        except Exception as e:
            error = e
    if channels is None or lines:
        raise HandlesError(f"{arg}: expected an OpenEXR image, could not read {p}: {_detail(p, lines, error)}")
    return _exr_channel(channels, arg)


def _read_tiff(p: Path, arg: str) -> tuple[np.ndarray, bool]:
    """A TIFF's first image (read by ``tifffile``) and whether it is 16-bit integer (``value /
    scale``) rather than float, its size and type checked from the header first."""
    import tifffile

    try:
        with tifffile.TiffFile(p) as tif:
            page = tif.pages[0]
            check_max_size(int(page.imagewidth), int(page.imagelength), arg)
            dtype, spp = np.dtype(page.dtype), int(page.samplesperpixel)
            integer = dtype.kind in "iu" and dtype.itemsize in (2, 4)
            if not (integer or (dtype.kind == "f" and dtype.itemsize in (2, 4, 8))):
                bits = f"{dtype.itemsize * 8}-bit {'float' if dtype.kind == 'f' else 'integer'}" \
                    if dtype.kind in "iuf" else str(dtype)
                raise HandlesError(f"{arg}: expected a 16-bit integer or a float TIFF depth map, got a TIFF of {bits} "
                                   f"values ({spp} channel{'s' if spp != 1 else ''})")
            with _library_messages():  # tifffile logs warnings on odd tags; the data decides
                a = page.asarray()
    except HandlesError:
        raise
    except Exception as e:  # tifffile raises TiffFileError, ValueError, zlib errors, ...
        raise HandlesError(f"{arg}: expected a 16-bit or float TIFF depth map, could not read {p}: {first_line(e)}") from None
    if a.ndim == 3 and spp > 1 and a.shape[0] == spp and a.shape[-1] != spp:
        a = np.moveaxis(a, 0, -1)  # planar (channels first) to interleaved
    return _one_channel(a, arg, "TIFF"), integer


def _read_depth_file(p: Path, arg: str, reading: DepthReading) -> tuple[np.ndarray, bool]:
    """A depth file's values as stored, and whether they are 16-bit integers (``value / scale``
    for z-depth); the file's contents choose the reader, a name that promises another is refused."""
    head = _head(p, arg, 64)
    if head.startswith(ZIP_MAGIC):
        raise HandlesError(f"{arg}: got an .npz archive (zip) in {p}; expected a .npy array (np.save) or a 16-bit PNG")
    if head.startswith(b"\x80"):
        raise HandlesError(f"{arg}: got a Python pickle in {p} (never loaded: files are data, not code); "
                           "expected a .npy array (np.save) or a 16-bit PNG")
    if head.startswith(NPY_MAGIC):
        return _load_npy(p, arg), False
    if head.startswith(EXR_MAGIC):
        return _read_exr(p, arg), False
    if head[:2] in (b"PF", b"Pf") and head[2:3].isspace():
        return _read_pfm(p, arg, head), False
    if head[:4] in TIFF_MAGICS:
        return _read_tiff(p, arg)
    suffix = p.suffix.lower()
    promised = {".npy": ".npy array", ".exr": "OpenEXR file", ".pfm": "PFM file", ".tif": "TIFF", ".tiff": "TIFF"}
    if suffix in promised:
        name = promised[suffix]
        raise HandlesError(f"{arg}: expected {'an' if name[0] in '.aeiouAEIOU' else 'a'} {name}, but {p} has no "
                           f"{name.split()[0]} header (got {head[:6]!r}...)")
    with _opened(p, arg, DEPTH_FILES) as im:
        im.load()
        im, _ = upright(im, arg)
        return _grey16_values(im, arg, reading.scale), True


def fit_depth(values: torch.Tensor, image: Photo | torch.Tensor, arg: str = "--depth") -> torch.Tensor:
    """``(1, 1, h, w)`` depth values resized to the image's ``H x W``: bilinearly (antialiased
    when shrinking), if the aspect ratios agree within :data:`~diffusion_handles.limits.DEPTH_ASPECT`
    (and one pixel of rounding); the same tensor when the sizes already agree.

    Raises:
        HandlesError: another aspect ratio (one turned by 90 degrees is named as such, and when
            the image was turned by its EXIF orientation the message says so).
    """
    h, w = (int(v) for v in values.shape[-2:])
    img = image.image if isinstance(image, Photo) else image
    H, W = (int(v) for v in img.shape[-2:])
    if (h, w) == (H, W):
        return values
    slack = limits.DEPTH_ASPECT + 1.0 / min(h, w)  # one pixel of rounding on the shorter side
    if abs((w / h) / (W / H) - 1.0) > slack:
        turned = abs((h / w) / (W / H) - 1.0) <= slack
        hint = ""
        if turned and isinstance(image, Photo) and image.turned:
            sw, sh = image.stored_size
            hint = (f"; it is the photo's aspect as stored ({sw}x{sh}), before IMAGE's EXIF orientation "
                    f"{image.orientation} turned it upright: make it from the upright photo")
        elif turned:
            hint = "; it is turned by 90 degrees"
        raise HandlesError(f"{arg}: expected IMAGE's aspect ratio (it is resized to IMAGE's {W}x{H}), got {w}x{h}{hint}")
    shrink = h > H or w > W
    return F.interpolate(values.double(), size=(H, W), mode="bilinear", align_corners=False, antialias=shrink).float()


def load_depth(path: str | Path, arg: str = "--depth", reading: DepthReading | float = PNG16_DEPTH_SCALE, *,
               fit_to: Photo | torch.Tensor | None = None) -> torch.Tensor:
    """A depth file as ``(1, 1, H, W)`` float32 z-depth in scene units (see the module docstring).

    Args:
        path: the file: ``.npy``, 16-bit PNG, TIFF, PFM or OpenEXR (its contents decide).
        arg: the argument's name in messages.
        reading: what the values are (:class:`DepthReading`); a number is the ``scale`` of a
            16-bit z-depth image (``value / scale`` scene units), the values being z-depth.
        fit_to: an image (``(1, 3, H, W)`` or a :class:`Photo`) to resize the depth to
            (:func:`fit_depth`); ``None`` keeps the file's size.

    Raises:
        HandlesError: one line naming ``arg``.
    """
    reading = reading if isinstance(reading, DepthReading) else DepthReading(scale=reading)
    p = _existing(path, arg)
    values, integer = _read_depth_file(p, arg, reading)
    if reading.relative:  # any finite values; converted after resizing, as an estimator's output is
        plane = torch.from_numpy(_depth_plane(values, arg, MIN_SIDE, "depth"))[None, None]
        if fit_to is not None:
            plane = fit_depth(plane, fit_to, arg)
        return to_z_depth(plane, reading.kind, near=reading.near, far=reading.far).float().contiguous()
    z = values.astype(np.float64) / float(reading.scale) if integer else values
    depth = torch.from_numpy(depth_from_array(z, arg))[None, None]
    if fit_to is not None:
        depth = fit_depth(depth, fit_to, arg)
    return depth.contiguous()


def check_matches_image(image: Photo | torch.Tensor, arg: str, t: torch.Tensor, name: str = "IMAGE") -> None:
    """Refuse ``t`` (a mask) unless it has the image's upright size; a mask of the photo's stored
    size, before its EXIF orientation turned it, is named as such."""
    img = image.image if isinstance(image, Photo) else image
    (H, W), (h, w) = img.shape[-2:], t.shape[-2:]
    if (h, w) == (H, W):
        return
    if isinstance(image, Photo) and image.orientation != 1 and (w, h) == image.stored_size:
        raise HandlesError(f"{arg}: expected size {W}x{H} (W x H, same as {name} upright), got {w}x{h}: {name}'s size "
                           f"as stored, before its EXIF orientation {image.orientation} turned it; make {arg} on the "
                           "upright photo")
    check_same_size(name, img, arg, t)


def _npy_header(p: Path, arg: str) -> tuple[tuple, np.dtype]:
    """``(shape, dtype)`` of a ``.npy`` file from its header, nothing else read."""
    from numpy.lib import format as npy_format

    try:
        with open(p, "rb") as f:
            version = npy_format.read_magic(f)
            read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
            shape, _, dtype = read(f)
    except Exception as e:
        raise HandlesError(f"{arg}: expected a .npy float array, could not read {p}: {first_line(e)}") from None
    return tuple(shape) + tuple(dtype.shape), dtype.base


def _load_npy(p: Path, arg: str) -> np.ndarray:
    """A ``.npy`` array, its shape and dtype checked from the header before any of it is read."""
    shape, dtype = _npy_header(p, arg)
    if dtype.hasobject or dtype.kind in "VSUMm" or dtype.itemsize > 16:
        raise HandlesError(f"{arg}: expected a numeric (integer or float) z-depth array, got dtype {dtype} (shape {shape})")
    core = list(shape)  # the (H, W) inside singleton axes, as depth_from_array reads it
    while len(core) > 2 and core[0] == 1:
        core.pop(0)
    while len(core) > 2 and core[-1] == 1:
        core.pop()
    if len(core) != 2:
        raise HandlesError(f"{arg}: expected a 2-D (H, W) z-depth array, got shape {shape}")
    check_max_size(int(core[1]), int(core[0]), arg)
    try:
        return np.load(p, allow_pickle=False)
    except Exception as e:
        raise HandlesError(f"{arg}: expected a .npy float array, could not read {p}: {first_line(e)}") from None


def load_mask(path: str | Path, arg: str = "--mask") -> torch.Tensor:
    """A binary object mask ``(1, 1, H, W)`` float32 in ``{0, 1}``; pixels >= 128 are the object.

    Grey-scale, RGB (any channel) or an alpha channel (if the image has one and its colour is
    constant) are accepted; the mask's own EXIF orientation, if any, is applied (:func:`upright`).
    """
    p = _existing(path, arg)
    with _opened(p, arg, "a PNG mask") as im:
        im.load()
        im, _ = upright(im, arg)
        if im.mode in ("RGBA", "LA") and np.ptp(np.asarray(im.convert("L"))) == 0:
            arr = np.asarray(im.getchannel("A"))
        elif im.mode in ("I;16", "I;16B", "I"):
            a = np.asarray(im).astype(np.float64)
            arr = (a > 0).astype(np.uint8) * 255
        else:
            arr = np.asarray(im.convert("L"))
    mask = (arr >= 128).astype(np.float32)
    return torch.from_numpy(mask)[None, None].contiguous()


def check_same_size(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    ha, wa = a.shape[-2:]
    hb, wb = b.shape[-2:]
    if (ha, wa) != (hb, wb):
        raise HandlesError(f"{name_b}: expected size {wa}x{ha} (W x H, same as {name_a}), got {wb}x{hb}")


def check_mask_not_empty(mask: torch.Tensor, arg: str = "--mask") -> None:
    """Refuse an object mask with no object pixel, or one that leaves no background around the
    object (the whole image, e.g. a 1x1 image), before any heavy work is done."""
    from diffusion_handles.geometry.poisson import check_mask_leaves_background

    if not bool(mask.bool().any()):
        raise HandlesError(f"{arg}: expected at least one object pixel (value >= 128), got an empty mask")
    check_mask_leaves_background(mask, arg)


def save_image(path: str | Path, image: torch.Tensor) -> None:
    """Save ``(1, 3, H, W)`` / ``(3, H, W)`` in ``[0, 1]`` or ``(H, W)`` / ``(1, 1, H, W)`` as PNG."""
    t = image.detach().float().cpu()
    while t.dim() > 3:
        t = t[0]
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]
    arr = (t.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim == 3:
        arr = arr.transpose(1, 2, 0)
    Image.fromarray(arr).save(path)


def save_depth_png16(path: str | Path, depth: torch.Tensor, depth_scale: float = PNG16_DEPTH_SCALE) -> None:
    """Save z-depth as a 16-bit PNG in the format :func:`load_depth` reads."""
    arr = depth.detach().float().cpu().squeeze().numpy() * depth_scale
    Image.fromarray(np.clip(np.round(arr), 1, 65535).astype(np.uint16)).save(path)


# ---- JSON files ---------------------------------------------------------------------------------
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)
_QUOTE, _BACKSLASH = ord('"'), ord("\\")


def json_depth(text: str) -> int:
    """How deeply ``text``'s arrays and objects nest (brackets inside strings do not count), in
    linear time and without recursion: ``[]`` is 1, ``[{}]`` 2. Exact for valid JSON and for the
    part of invalid JSON before its first error (all that ``json.loads`` reads)."""
    b = np.frombuffer(text.encode("utf-8", "surrogatepass"), np.uint8)  # multi-byte UTF-8 has no ASCII bytes
    if not b.size:
        return 0
    pos = np.arange(b.size, dtype=np.int64)
    last_plain = np.maximum.accumulate(np.where(b != _BACKSLASH, pos, -1))  # last non-backslash at or before i
    backslashes_before = pos - 1 - np.concatenate(([-1], last_plain[:-1]))
    quote = (b == _QUOTE) & (backslashes_before % 2 == 0)  # a quote that is not escaped
    outside = np.cumsum(quote) % 2 == 0  # not inside a string (an opening quote counts as inside)
    step = (np.isin(b, _OPEN).astype(np.int64) - np.isin(b, _CLOSE)) * outside
    return max(0, int(np.cumsum(step).max()))


def check_json_depth(text: str, arg: str) -> None:
    """Refuse JSON nested deeper than :data:`~diffusion_handles.limits.JSON_DEPTH` (before
    ``json.loads``, whose recursion a deeply nested file would blow)."""
    depth = json_depth(text)
    if depth > limits.JSON_DEPTH:
        raise HandlesError(f"{arg}: expected JSON nested at most {limits.JSON_DEPTH} levels deep, got {depth}")


def parse_json(text: str, arg: str, expected: str) -> object:
    """``json.loads(text)`` after :func:`check_json_depth`; errors are one line naming ``arg``."""
    check_json_depth(text, arg)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise HandlesError(f"{arg}: expected {expected}, got invalid JSON ({e.msg} at line {e.lineno} "
                           f"column {e.colno})") from None
    except RecursionError:  # not reached after check_json_depth; kept as a guard
        raise HandlesError(f"{arg}: expected JSON nested at most {limits.JSON_DEPTH} levels deep, got deeper") from None


def read_json_file(path: str | Path, arg: str, expected: str = "a JSON list") -> object:
    """The parsed JSON of a small file (``--keyframes``, ``--edits``): at most
    :data:`~diffusion_handles.limits.JSON_BYTES` bytes are read, whatever the file is (a FIFO or
    ``/dev/zero`` never ends), UTF-8, nested at most :data:`~diffusion_handles.limits.JSON_DEPTH` deep."""
    p = Path(path)
    if p.is_dir() or not p.exists():
        raise HandlesError(f"{arg}: expected a JSON file, got {str(path)!r} ({'a folder' if p.is_dir() else 'no such file'})")
    limit = limits.JSON_BYTES
    try:
        with open(p, "rb") as f:
            size = p.stat().st_size if p.is_file() else 0
            data = f.read(limit + 1) if size <= limit else b""
    except OSError as e:
        raise HandlesError(f"{arg}: could not read {str(path)!r} ({e.strerror or e})") from None
    if size > limit or len(data) > limit:
        raise HandlesError(f"{arg}: expected a JSON file of at most {limit} bytes, got {size if size > limit else 'more'}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise HandlesError(f"{arg}: expected UTF-8 JSON text, got undecodable bytes in {str(path)!r}") from None
    return parse_json(text, arg, expected)
