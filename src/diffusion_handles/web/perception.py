"""Optional selection and depth tools from :mod:`diffusion_handles.perception`, if installed.

The page offers click (SAM) and text-query (detector + SAM) selection, and accepts uploads
without a depth map (depth estimator), only when the perception layer imports. Models load on
first use and are kept; a failure (e.g. weights not available offline) is the perception
layer's :class:`HandlesError`, shown in the page.
"""

from __future__ import annotations

import importlib
import threading

import numpy as np
import torch

from diffusion_handles.errors import HandlesError


def _module():
    try:
        return importlib.import_module("diffusion_handles.perception")
    except ImportError:
        return None


def _tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(1, 3, H, W)`` float in [0, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0


class Perception:
    """Lazily loaded segmenters and depth estimator (one instance per app; thread-safe).

    Args:
        models: optional overrides ``{"sam_model", "detector_model", "depth_model"}`` (hub ids or
            local folders); the perception layer's defaults otherwise.
    """

    def __init__(self, models: dict[str, str] | None = None):
        self.models = {k: v for k, v in (models or {}).items() if v}
        self._mod = _module()
        self._models: dict[str, object] = {}
        self._lock = threading.Lock()

    def capabilities(self) -> dict[str, bool]:
        """Which tools are installed: ``click``, ``text`` (segmenters), ``depth`` (estimator)."""
        ok = self._mod is not None
        return {"click": ok, "text": ok, "depth": ok}

    def _require(self, what: str):
        if self._mod is None:
            raise HandlesError(f"{what}: not available in this installation (diffusion_handles.perception is missing); upload a mask instead")
        return self._mod

    def _load(self, name: str, factory):
        with self._lock:
            if name not in self._models:
                self._models[name] = factory()
            return self._models[name]

    def _select(self, image: np.ndarray, what: str, **prompt) -> np.ndarray:
        p = self._require(what)
        cfg = p.SegmentConfig(**{k: v for k, v in self.models.items() if k in ("sam_model", "detector_model")})
        try:
            sam = self._load("sam", lambda: p.SamSegmenter.load(cfg, bypass="upload a mask instead"))
            detector = None
            if "text" in prompt:
                detector = self._load("detector", lambda: p.TextDetector.load(cfg))
            sel = p.select_object(_tensor(image), config=cfg, sam=sam, detector=detector, **prompt)
        except HandlesError as e:
            raise HandlesError(f"{what}: {e}") from None
        return sel.mask[0, 0].cpu().numpy() > 0.5

    def segment_click(self, image: np.ndarray, x: float, y: float) -> np.ndarray:
        """Mask ``(H, W)`` bool of the object at pixel ``(x, y)`` of ``image`` ``(H, W, 3)`` uint8."""
        return self._select(image, "click selection", clicks=[(float(x), float(y))])

    def segment_text(self, image: np.ndarray, query: str) -> np.ndarray:
        """Mask ``(H, W)`` bool of the object described by ``query``."""
        return self._select(image, "text selection", text=query)

    def _depth_config(self, p):
        return p.DepthConfig(model=self.models["depth_model"]) if "depth_model" in self.models else p.DepthConfig()

    def estimate_depth(self, image: np.ndarray) -> np.ndarray:
        """Z-depth ``(H, W)`` float32 (scene units) of ``image`` ``(H, W, 3)`` uint8."""
        p = self._require("depth")
        try:
            est = self._load("depth", lambda: p.DepthEstimator.load(self._depth_config(p), bypass="upload a depth map (.npy z-depth or 16-bit PNG in mm) with the image"))
            d = est.estimate(_tensor(image)).depth[0, 0].cpu().numpy().astype(np.float32)
        except HandlesError as e:
            raise HandlesError(f"depth: no depth map was uploaded and the estimator is unavailable: {e}") from None
        if not np.isfinite(d).all() or (d <= 0).any():
            raise HandlesError("depth: the estimator returned non-positive or non-finite depth; upload a depth map instead")
        return d
