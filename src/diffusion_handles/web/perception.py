"""Optional selection and depth tools from :mod:`diffusion_handles.perception`, if installed.

The page offers click (point-prompted segmenter) and text-query selection, and accepts
uploads without a depth map, only when the perception layer provides them. Every failure
(not installed, weights not available offline) is a :class:`HandlesError` with a clear message.
"""

from __future__ import annotations

import importlib

import numpy as np

from diffusion_handles.errors import HandlesError


def _module():
    try:
        return importlib.import_module("diffusion_handles.perception")
    except ModuleNotFoundError:
        return None


def capabilities() -> dict[str, bool]:
    """Which tools exist: ``click``, ``text`` (segmenters), ``depth`` (estimator)."""
    mod = _module()
    if mod is None:
        return {"click": False, "text": False, "depth": False}
    return {
        "click": callable(getattr(mod, "segment_click", None)),
        "text": callable(getattr(mod, "segment_text", None)),
        "depth": callable(getattr(mod, "estimate_depth", None)),
    }


def _call(name: str, what: str, *args):
    mod = _module()
    fn = getattr(mod, name, None) if mod is not None else None
    if not callable(fn):
        raise HandlesError(f"{what}: not available in this installation (diffusion_handles.perception.{name} is missing)")
    try:
        return fn(*args)
    except HandlesError:
        raise
    except Exception as e:
        raise HandlesError(f"{what}: failed ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None


def _as_mask(m, shape) -> np.ndarray:
    arr = m.detach().cpu().numpy() if hasattr(m, "detach") else np.asarray(m)
    arr = np.squeeze(arr)
    if arr.shape != shape:
        raise HandlesError(f"segmenter: expected a mask of shape {shape}, got {arr.shape}")
    return arr > 0.5


def segment_click(image: np.ndarray, x: float, y: float) -> np.ndarray:
    """Mask ``(H, W)`` bool of the object at pixel ``(x, y)`` of ``image`` ``(H, W, 3)`` uint8."""
    return _as_mask(_call("segment_click", "click selection", image, (float(x), float(y))), image.shape[:2])


def segment_text(image: np.ndarray, query: str) -> np.ndarray:
    """Mask ``(H, W)`` bool of the object described by ``query``."""
    return _as_mask(_call("segment_text", "text selection", image, query), image.shape[:2])


def estimate_depth(image: np.ndarray) -> np.ndarray:
    """Z-depth ``(H, W)`` float32 for an image ``(H, W, 3)`` uint8, if an estimator is installed."""
    if not capabilities()["depth"]:
        raise HandlesError("depth: expected a depth map upload (.npy z-depth or 16-bit PNG in mm); no depth estimator is installed")
    d = _call("estimate_depth", "depth estimation", image)
    arr = np.squeeze(d.detach().cpu().numpy() if hasattr(d, "detach") else np.asarray(d)).astype(np.float32)
    if arr.ndim != 2 or not np.isfinite(arr).all() or (arr <= 0).any():
        raise HandlesError(f"depth estimation: expected positive finite (H, W) depth, got shape {arr.shape}")
    return arr
