"""Reading user inputs (image, depth, mask) with checks that name what is wrong.

Every loader raises :class:`~diffusion_handles.errors.HandlesError` with one line naming the
argument, what was expected and what arrived. The decoding functions (:func:`image_to_rgb`,
:func:`depth_from_array`, :func:`depth_from_png16`) work on data already in memory and are
shared by the command line (files) and the web app (uploads), so both read every input the
same way.

Images, masks and depth maps: width and height in :data:`~diffusion_handles.limits.IMAGE_SIDE`
and at most :data:`~diffusion_handles.limits.IMAGE_PIXELS` pixels, read from the file's header
before anything is decoded (a small file can ask for gigabytes); only regular files are read (a
FIFO, a device or a folder is refused, saying which). 8-bit grey, palette, RGB, CMYK and
YCbCr images are converted to RGB; 16-bit grey (PNG ``I;16``, or ``I`` with values in
0..65535) is scaled by 1/65535 (not clipped at 255); 32-bit float grey (``F``) is accepted with
values in [0, 1]. Images with transparency (an alpha channel or a transparent palette entry)
are accepted only if every pixel is opaque: what lies under a transparent pixel is undefined.

Depth files (the file's contents decide, not its name):

* ``.npy``: a real (integer or float) array ``(H, W)`` of z-depth in scene units (any unit;
  transforms use it); singleton axes around it (``(1, H, W)``, ``(H, W, 1)``) are dropped.
  Loaded without pickle. ``.npz`` archives and complex arrays are refused.
* 16-bit PNG: z-depth in millimetres, i.e. ``depth = value / 1000`` scene units (metres); the
  divisor is ``depth_scale`` (``--depth-scale`` on the command line). Value 0 means "no depth"
  and is rejected, since every pixel needs a depth to be lifted.

After conversion every depth value must lie in :data:`DEPTH_RANGE` = [1e-6, 1e6] scene units:
beyond it float32 geometry and the inverse-depth Poisson solves lose all precision (a depth
scaled by 1e30 would give a constant edited depth), so such a map is refused rather than used.

JSON files (``--keyframes``, ``--edits``; :func:`read_json_file`) are read up to
:data:`~diffusion_handles.limits.JSON_BYTES` and no further (a FIFO or ``/dev/zero`` never ends),
and their nesting is checked against :data:`~diffusion_handles.limits.JSON_DEPTH` before
``json.loads`` recurses (:func:`check_json_depth`).
"""

from __future__ import annotations

import contextlib
import json
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffusion_handles import limits
from diffusion_handles.errors import HandlesError, first_line

PNG16_DEPTH_SCALE = 1000.0  # 16-bit PNG depth: millimetres -> scene units (metres)
MIN_SIDE = limits.IMAGE_SIDE[0]  # smallest image / depth width or height (the web app's limit too)
MAX_SIDE = limits.IMAGE_SIDE[1]  # largest image / mask / depth width or height, from the file's header
DEPTH_RANGE = (1e-6, 1e6)  # accepted z-depth in scene units, after conversion
NPY_MAGIC = b"\x93NUMPY"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"  # .npz archives are zip files
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


@contextlib.contextmanager
def _opened(p: Path, arg: str, what: str) -> Iterator[Image.Image]:
    """``Image.open(p)`` with its size checked from the header, before any pixel is decoded; PIL's
    own errors become one line ``{arg}: expected {what}, could not read ...``."""
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


def load_image(path: str | Path, arg: str = "IMAGE") -> torch.Tensor:
    """An RGB image as ``(1, 3, H, W)`` float32 in ``[0, 1]`` (decoded by :func:`image_to_rgb`)."""
    p = _existing(path, arg)
    with _opened(p, arg, "an image file (PNG/JPEG)") as im:
        check_side(im.width, im.height, arg)
        im.load()
        arr = image_to_rgb(im, arg)
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].contiguous()


def depth_from_array(arr: np.ndarray, arg: str = "--depth", min_side: int = MIN_SIDE) -> np.ndarray:
    """Check a z-depth array and return it as ``(H, W)`` float32 scene units.

    Accepts real (integer or float) arrays ``(H, W)``, with singleton axes before or after
    (``(1, H, W)``, ``(H, W, 1)``, ``(1, 1, H, W)``). Every value must be finite and lie in
    :data:`DEPTH_RANGE`.

    Raises:
        HandlesError: naming ``arg``, what the array holds and what was expected.
    """
    arr = np.asarray(arr)
    shape, dtype = tuple(arr.shape), arr.dtype
    if dtype.kind == "c":
        raise HandlesError(f"{arg}: expected real z-depth values, got a complex array (dtype {dtype}, shape {shape}); "
                           "save its real part or magnitude instead")
    if dtype.kind not in "iuf":
        raise HandlesError(f"{arg}: expected a numeric (integer or float) z-depth array, got dtype {dtype} (shape {shape})")
    a = arr
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    while a.ndim > 2 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise HandlesError(f"{arg}: expected a 2-D (H, W) z-depth array, got shape {shape}")
    h, w = a.shape
    if min(h, w) < min_side:
        raise HandlesError(f"{arg}: expected an (H, W) array of at least {min_side}x{min_side} (the image's size), "
                           f"got shape {shape}")
    a = a.astype(np.float64)
    bad = ~np.isfinite(a)
    if bad.any():
        raise HandlesError(f"{arg}: expected finite depth everywhere, got {int(bad.sum())} non-finite values")
    if (a <= 0).any():
        raise HandlesError(f"{arg}: expected positive z-depth everywhere, got {int((a <= 0).sum())} pixels <= 0 (min {a.min():g})")
    lo, hi = DEPTH_RANGE
    if a.max() > hi or a.min() < lo:
        n = int(((a > hi) | (a < lo)).sum())
        raise HandlesError(f"{arg}: expected z-depth in [{lo:g}, {hi:g}] scene units, got values in "
                           f"[{a.min():g}, {a.max():g}] ({n} pixels outside); rescale it (e.g. to metres)")
    return a.astype(np.float32)


def depth_from_png16(im: Image.Image, arg: str = "--depth", depth_scale: float = PNG16_DEPTH_SCALE,
                     min_side: int = MIN_SIDE) -> np.ndarray:
    """A 16-bit PNG depth map (``value / depth_scale`` scene units; 0 = no depth) as ``(H, W)`` float32."""
    mode = im.mode
    a = np.asarray(im)
    if mode not in (*_GREY16_MODES, "I") and a.dtype != np.uint16:
        raise HandlesError(f"{arg}: expected a 16-bit PNG (depth in 1/{depth_scale:g} units) or .npy, got a PNG of mode {mode}")
    if a.ndim != 2:
        raise HandlesError(f"{arg}: expected a single-channel 16-bit PNG, got shape {a.shape}")
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise HandlesError(f"{arg}: expected 16-bit values 0..65535, got values in [{a.min()}, {a.max()}]")
    return depth_from_array(a.astype(np.float64) / float(depth_scale), arg, min_side)


def _check_depth_scale(depth_scale: float) -> None:
    try:
        v = float(depth_scale)
    except (TypeError, ValueError):
        raise HandlesError(f"--depth-scale: expected a positive number, got {depth_scale!r}") from None
    if not (np.isfinite(v) and v > 0):
        raise HandlesError(f"--depth-scale: expected a positive finite number, got {depth_scale}")


def load_depth(path: str | Path, arg: str = "--depth", depth_scale: float = PNG16_DEPTH_SCALE) -> torch.Tensor:
    """A z-depth map as ``(1, 1, H, W)`` float32 in scene units (see the module docstring)."""
    _check_depth_scale(depth_scale)
    p = _existing(path, arg)
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise HandlesError(f"{arg}: could not read {p}: {e}") from None
    if head.startswith(ZIP_MAGIC):
        raise HandlesError(f"{arg}: got an .npz archive (zip) in {p}; expected a .npy array (np.save) or a 16-bit PNG")
    if head.startswith(b"\x80"):
        raise HandlesError(f"{arg}: got a Python pickle in {p} (never loaded: files are data, not code); "
                           "expected a .npy array (np.save) or a 16-bit PNG")
    if head.startswith(NPY_MAGIC):
        return torch.from_numpy(depth_from_array(_load_npy(p, arg), arg))[None, None].contiguous()
    if p.suffix.lower() == ".npy":
        raise HandlesError(f"{arg}: expected a .npy array, but {p} has no .npy header (got {head[:6]!r}...)")
    with _opened(p, arg, "a .npy array or a 16-bit PNG") as im:
        im.load()
        arr = depth_from_png16(im, arg, depth_scale)
    return torch.from_numpy(arr)[None, None].contiguous()


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
    constant) are accepted.
    """
    p = _existing(path, arg)
    with _opened(p, arg, "a PNG mask") as im:
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
