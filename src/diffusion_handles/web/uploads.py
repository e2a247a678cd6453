"""Checks on uploaded files: size, declared content type, magic bytes, decodability, dimensions.

Every check raises :class:`UploadError` carrying the HTTP status the API answers with
(413 too large, 415 wrong type, 422 decodable but unusable) and a one-line message naming the
form field. Nothing here touches the file system: uploads are decoded from memory. Sizes are
checked from the file's header before anything is decoded (:data:`diffusion_handles.limits.IMAGE_SIDE`,
:data:`~diffusion_handles.limits.IMAGE_PIXELS`), an image's also at the app's working size (its
shorter side must not fall below the minimum when the longer is scaled down). Decoding is CPU
work: the routes run these functions on worker threads, never on the event loop.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from diffusion_handles.errors import HandlesError
from diffusion_handles.io import ZIP_MAGIC, depth_from_array, depth_from_png16, image_to_rgb
from diffusion_handles.limits import IMAGE_PIXELS, IMAGE_SIDE
from diffusion_handles.web.sessions import fit_size

IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
DEPTH_TYPES = {"application/octet-stream", "application/x-npy", "application/npy", "image/png"}
NPY_MAGIC = b"\x93NUMPY"


class UploadError(Exception):
    """A rejected upload: ``status`` is the HTTP status code, ``message`` one line for the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class UploadLimits:
    """Limits on uploads.

    Attributes:
        max_bytes: largest accepted file, per field (10 MB).
        max_side: largest accepted image width or height in pixels, checked from the header
            before decoding (guards against decompression bombs).
        min_side: smallest accepted width or height (of an image also at the working size).
        max_pixels: largest accepted width x height, from the header.
    """

    max_bytes: int = 10 * 1024 * 1024
    max_side: int = IMAGE_SIDE[1]
    min_side: int = IMAGE_SIDE[0]
    max_pixels: int = IMAGE_PIXELS


def sniff(data: bytes) -> str | None:
    """The format named by the file's magic bytes: ``PNG``, ``JPEG``, ``WEBP``, ``NPY`` or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(NPY_MAGIC):
        return "NPY"
    return None


def _base_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def check_size(data: bytes, field: str, limits: UploadLimits) -> None:
    if len(data) > limits.max_bytes:
        raise UploadError(413, f"{field}: expected at most {limits.max_bytes // (1024 * 1024)} MB, got {len(data) / 1e6:.1f} MB")
    if not data:
        raise UploadError(422, f"{field}: expected a file, got an empty upload")


def check_dimensions(w: int, h: int, field: str, limits: UploadLimits, work_side: int | None = None) -> None:
    """Width and height from a header within the limits and, with ``work_side``, the shorter side
    still at least ``limits.min_side`` once the longer is scaled down to ``work_side`` (the size
    the app edits at): 16x4096 is 2 px high at 512, too thin to edit or render."""
    if max(w, h) > limits.max_side or min(w, h) < limits.min_side or w * h > limits.max_pixels:
        raise UploadError(422, f"{field}: expected width and height between {limits.min_side} and {limits.max_side} pixels "
                               f"(at most {limits.max_pixels} pixels), got {w}x{h}")
    if work_side is not None:
        H, W = fit_size(h, w, work_side)
        if min(H, W) < limits.min_side:
            ratio = work_side // limits.min_side
            raise UploadError(422, f"{field}: expected an aspect ratio of at most {ratio}:1, got {w}x{h}: its shorter side "
                                   f"would be {min(H, W)} px at the working size {W}x{H}, below {limits.min_side} px")


def _open_image(data: bytes, field: str, limits: UploadLimits, work_side: int | None = None) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))  # reads the header only
    except Exception as e:
        raise UploadError(415, f"{field}: expected a PNG, JPEG or WebP image, could not decode it ({type(e).__name__})") from None
    w, h = im.size
    check_dimensions(w, h, field, limits, work_side)
    try:
        im.load()
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UploadError(415, f"{field}: the image is truncated or corrupt ({type(e).__name__}: {first})") from None
    return im


def read_image(data: bytes, content_type: str | None, field: str, limits: UploadLimits,
               work_side: int | None = None) -> np.ndarray:
    """Decode an uploaded RGB image to ``(H, W, 3)`` uint8. With ``work_side`` (the app's working
    size): also refused when too thin at that size (:func:`check_dimensions`), and an 8-bit image is
    scaled down to it while decoding (the session is kept at that size anyway)."""
    check_size(data, field, limits)
    ct = _base_type(content_type)
    fmt = sniff(data)
    if ct not in IMAGE_TYPES:
        raise UploadError(415, f"{field}: expected content type image/png, image/jpeg or image/webp, got {ct or 'none'}")
    if fmt not in ("PNG", "JPEG", "WEBP"):
        raise UploadError(415, f"{field}: expected PNG, JPEG or WebP file contents, got bytes that are not an image")
    im = _open_image(data, field, limits, work_side)
    if im.mode in ("RGB", "L") and "transparency" not in im.info:
        # 8-bit colour or grey, opaque: the pixels the decoder below gives, without its float copies; scaled
        # down to the working size by PIL (area averaging, in C without the GIL) before becoming an array
        w, h = im.size
        H, W = fit_size(h, w, work_side) if work_side is not None else (h, w)
        if (H, W) != (h, w):
            im = im.resize((W, H), Image.Resampling.BOX)
        return np.array(im.convert("RGB"), dtype=np.uint8)
    try:  # the command line's decoder: 16-bit grey scaled by 1/65535, transparency refused, ...
        rgb = image_to_rgb(im, field)
    except HandlesError as e:
        raise UploadError(422, str(e)) from None
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def read_mask(data: bytes, content_type: str | None, field: str, limits: UploadLimits) -> np.ndarray:
    """Decode an uploaded mask to ``(H, W)`` bool: pixels >= 128 (or alpha >= 128) are the object."""
    check_size(data, field, limits)
    ct = _base_type(content_type)
    if ct not in IMAGE_TYPES or sniff(data) not in ("PNG", "JPEG", "WEBP"):
        raise UploadError(415, f"{field}: expected a PNG mask image (content type image/png), got {ct or 'none'} with {'image' if sniff(data) else 'non-image'} contents")
    im = _open_image(data, field, limits)
    if im.mode in ("RGBA", "LA") and np.ptp(np.asarray(im.convert("L"))) == 0:
        arr = np.asarray(im.getchannel("A"))
    elif im.mode in ("I;16", "I;16B", "I"):
        arr = (np.asarray(im) > 0).astype(np.uint8) * 255
    else:
        arr = np.asarray(im.convert("L"))
    return arr >= 128


def read_depth(data: bytes, content_type: str | None, field: str, limits: UploadLimits,
               png_scale: float = 1000.0) -> np.ndarray:
    """Decode an uploaded z-depth map to ``(H, W)`` float32 scene units, positive and finite.

    Accepts a ``.npy`` float/int array (scene units; loaded without pickle) or a 16-bit PNG in
    millimetres (``value / png_scale``), checked by the command line's decoders
    (:func:`diffusion_handles.io.depth_from_array`, :func:`~diffusion_handles.io.depth_from_png16`):
    complex arrays, ``.npz`` archives and values outside
    :data:`~diffusion_handles.io.DEPTH_RANGE` are refused.
    """
    check_size(data, field, limits)
    ct = _base_type(content_type)
    fmt = sniff(data)
    if data.startswith(ZIP_MAGIC):
        raise UploadError(415, f"{field}: got an .npz archive (zip); expected a .npy array (np.save) or a 16-bit PNG depth map")
    if ct not in DEPTH_TYPES or fmt not in ("NPY", "PNG"):
        raise UploadError(415, f"{field}: expected a .npy array or a 16-bit PNG depth map, got content type {ct or 'none'} with {fmt or 'unrecognised'} contents")
    if fmt == "NPY":
        return _read_npy(data, field, limits)
    im = _open_image(data, field, limits)
    try:
        return depth_from_png16(im, field, png_scale, min_side=limits.min_side)
    except HandlesError as e:
        raise UploadError(422, str(e)) from None


def _read_npy(data: bytes, field: str, limits: UploadLimits) -> np.ndarray:
    """A ``.npy`` depth array: its header (shape, dtype) checked before the array is read."""
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(buf)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UploadError(415, f"{field}: could not read the .npy header ({type(e).__name__}: {first[:200]})") from None
    if len(shape) >= 2 and (max(shape) > limits.max_side or math.prod(shape) > limits.max_pixels):
        raise UploadError(422, f"{field}: expected width and height between {limits.min_side} and {limits.max_side}, got shape {shape}")
    if dtype.hasobject:
        raise UploadError(415, f"{field}: expected a numeric .npy array, got dtype {dtype} (objects are not loaded)")
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UploadError(415, f"{field}: could not read the .npy array ({type(e).__name__}: {first[:200]})") from None
    try:
        return depth_from_array(arr, field, min_side=limits.min_side)
    except HandlesError as e:
        raise UploadError(422, str(e)) from None
