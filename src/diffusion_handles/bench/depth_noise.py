"""Exact depth made to look estimated: the benchmark's "estimated depth" track.

Real photos never come with exact depth; monocular estimators (ZoeDepth, Depth Anything, DPT)
err in three characteristic ways, which :func:`degrade_depth` reproduces on a rendered z-depth,
deterministically from a seed. All operations act on inverse depth (the quantity estimators
regress), at any image size; sizes in pixels are given for a 128-pixel image and scale with
the image side ``S``:

1. **Lost thin structures**: a grey-scale morphological opening of inverse depth (erosion then
   dilation) with a square of side ``thin_px`` (default 3 at S = 128): near structures
   narrower than that sink into what is behind them.
2. **Edges blurred across depth discontinuities**: a Gaussian blur of inverse depth with
   standard deviation ``edge_sigma_px`` (default 1.5 at S = 128): at an object's silhouette the
   depth ramps from object to background over a few pixels ("flying pixels" once lifted).
3. **Smooth scale and shift drift**: inverse depth times ``1 + a(u)`` plus ``b(u)``, with
   ``a`` and ``b`` smooth random fields (a 3x3 grid of normal values, bicubically upsampled) of
   standard deviation ``scale_drift`` (default 0.05) and ``shift_drift`` (default 0.02 of the
   mean inverse depth): relative depth that is right locally, wrong by a few percent across
   the image.

The result is clamped to positive inverse depth and returned as z-depth.
"""

from __future__ import annotations

import numpy as np


def degrade_depth(depth: np.ndarray, seed: int = 0, *, thin_px: float = 3.0, edge_sigma_px: float = 1.5,
                  scale_drift: float = 0.05, shift_drift: float = 0.02) -> np.ndarray:
    """``depth (H, W)`` z-depth (scene units, > 0) -> degraded z-depth ``(H, W)`` float32.

    Pixel sizes are for a 128-pixel side and scale with ``max(H, W) / 128``; see the module
    docstring for each step. ``seed`` fixes the drift fields.
    """
    import cv2

    d = np.asarray(depth, np.float64)
    if d.ndim != 2 or not np.isfinite(d).all() or (d <= 0).any():
        raise ValueError(f"depth: expected an (H, W) array of positive finite z-depth, got shape {d.shape}")
    h, w = d.shape
    k = max(h, w) / 128.0
    inv = (1.0 / d).astype(np.float32)
    side = max(1, int(round(thin_px * k)))
    if side > 1:
        kernel = np.ones((side, side), np.uint8)
        inv = cv2.dilate(cv2.erode(inv, kernel), kernel)  # opening: thin near structures vanish
    sigma = edge_sigma_px * k
    if sigma > 0:
        inv = cv2.GaussianBlur(inv, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)
    rng = np.random.default_rng([int(seed), 17])

    def field(std: float) -> np.ndarray:
        grid = rng.normal(0.0, std, (3, 3)).astype(np.float32)
        return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)

    mean_inv = float(inv.mean())
    inv = inv * (1.0 + field(scale_drift)) + mean_inv * field(shift_drift)
    inv = np.maximum(inv, 1e-3 * mean_inv)
    return (1.0 / inv).astype(np.float32)
