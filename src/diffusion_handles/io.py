"""Reading user inputs (image, depth, mask) with checks that name what is wrong.

Every loader raises :class:`~diffusion_handles.errors.HandlesError` with one line naming the
argument, what was expected and what arrived.

Depth files:

* ``.npy``: a float array ``(H, W)`` of z-depth in scene units (any unit; transforms use it).
* 16-bit PNG: z-depth in millimetres, i.e. ``depth = value / 1000`` scene units (metres); the
  divisor is ``depth_scale`` (``--depth-scale`` on the command line). Value 0 means "no depth"
  and is rejected, since every pixel needs a depth to be lifted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffusion_handles.errors import HandlesError

PNG16_DEPTH_SCALE = 1000.0  # 16-bit PNG depth: millimetres -> scene units (metres)


def _existing(path: str | Path, arg: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise HandlesError(f"{arg}: file not found: {p}")
    return p


def load_image(path: str | Path, arg: str = "IMAGE") -> torch.Tensor:
    """An RGB image as ``(1, 3, H, W)`` float32 in ``[0, 1]``."""
    p = _existing(path, arg)
    try:
        with Image.open(p) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except Exception as e:  # PIL raises many types for broken files
        raise HandlesError(f"{arg}: expected an image file (PNG/JPEG), could not read {p}: {e}") from None
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def load_depth(path: str | Path, arg: str = "--depth", depth_scale: float = PNG16_DEPTH_SCALE) -> torch.Tensor:
    """A z-depth map as ``(1, 1, H, W)`` float32 in scene units; positive and finite everywhere."""
    p = _existing(path, arg)
    if p.suffix.lower() == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except Exception as e:
            raise HandlesError(f"{arg}: expected a .npy float array, could not read {p}: {e}") from None
        arr = np.squeeze(arr)
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
            raise HandlesError(f"{arg}: expected a numeric (H, W) array, got shape {arr.shape} dtype {arr.dtype}")
        arr = arr.astype(np.float32)
    else:
        try:
            with Image.open(p) as im:
                mode = im.mode
                arr = np.asarray(im)
        except Exception as e:
            raise HandlesError(f"{arg}: expected a .npy array or a 16-bit PNG, could not read {p}: {e}") from None
        if arr.dtype != np.uint16 and mode not in ("I;16", "I;16B", "I"):
            raise HandlesError(f"{arg}: expected a 16-bit PNG (depth in 1/{depth_scale:g} units) or .npy, got a PNG of mode {mode}")
        if arr.ndim != 2:
            raise HandlesError(f"{arg}: expected a single-channel 16-bit PNG, got shape {arr.shape}")
        arr = arr.astype(np.float32) / float(depth_scale)
    if not np.isfinite(arr).all():
        raise HandlesError(f"{arg}: expected finite depth everywhere, got {int((~np.isfinite(arr)).sum())} non-finite values")
    if (arr <= 0).any():
        raise HandlesError(f"{arg}: expected positive z-depth everywhere, got {int((arr <= 0).sum())} pixels <= 0 (min {arr.min():g})")
    return torch.from_numpy(arr)[None, None].contiguous()


def load_mask(path: str | Path, arg: str = "--mask") -> torch.Tensor:
    """A binary object mask ``(1, 1, H, W)`` float32 in ``{0, 1}``; pixels >= 128 are the object.

    Grey-scale, RGB (any channel) or an alpha channel (if the image has one and its colour is
    constant) are accepted.
    """
    p = _existing(path, arg)
    try:
        with Image.open(p) as im:
            if im.mode in ("RGBA", "LA") and np.ptp(np.asarray(im.convert("L"))) == 0:
                arr = np.asarray(im.getchannel("A"))
            elif im.mode in ("I;16", "I;16B", "I"):
                a = np.asarray(im).astype(np.float64)
                arr = (a > 0).astype(np.uint8) * 255
            else:
                arr = np.asarray(im.convert("L"))
    except Exception as e:
        raise HandlesError(f"{arg}: expected a PNG mask, could not read {p}: {e}") from None
    mask = (arr >= 128).astype(np.float32)
    return torch.from_numpy(mask)[None, None].contiguous()


def check_same_size(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    ha, wa = a.shape[-2:]
    hb, wb = b.shape[-2:]
    if (ha, wa) != (hb, wb):
        raise HandlesError(f"{name_b}: expected size {wa}x{ha} (W x H, same as {name_a}), got {wb}x{hb}")


def check_mask_not_empty(mask: torch.Tensor, arg: str = "--mask") -> None:
    if not bool(mask.bool().any()):
        raise HandlesError(f"{arg}: expected at least one object pixel (value >= 128), got an empty mask")


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
