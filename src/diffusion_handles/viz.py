"""Pictures a person can look at: colour-mapped depth, masks and labelled side-by-side strips."""

from __future__ import annotations

import cv2
import numpy as np
import torch


def colorize_depth(depth: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Colour-map a z-depth map: turbo on inverse depth, near = warm (red), far = cool (blue).

    The colour range is the 1st-99th percentile of inverse depth over the shown pixels, so a few
    outliers (a pixel at the horizon, a flying pixel) do not wash out the picture.

    Args:
        depth: ``(H, W)`` / ``(1, 1, H, W)`` z-depth; non-finite or <= 0 pixels are shown black.
        valid: optional mask of pixels to show.

    Returns:
        ``(1, 3, H, W)`` float in [0, 1].
    """
    d = depth.detach().double().cpu().squeeze().numpy()
    ok = np.isfinite(d) & (d > 0)
    if valid is not None:
        ok &= valid.detach().cpu().squeeze().numpy() > 0.5
    inv = np.zeros_like(d)
    inv[ok] = 1.0 / d[ok]
    if ok.any():
        lo, hi = np.quantile(inv[ok], [0.01, 0.99])
        inv = (inv - lo) / max(hi - lo, 1e-12)
    u8 = (np.clip(inv, 0, 1) * 255 + 0.5).astype(np.uint8)
    rgb = cv2.applyColorMap(u8, cv2.COLORMAP_TURBO)[..., ::-1].astype(np.float32) / 255.0
    rgb[~ok] = 0.0
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None]


def to_rgb(x: torch.Tensor) -> torch.Tensor:
    """A ``(1|B, 1|3, H, W)`` tensor in [0, 1] as ``(1, 3, H, W)`` float."""
    x = x.detach().float().cpu()
    if x.dim() == 2:
        x = x[None, None]
    x = x[:1]
    return x.expand(1, 3, *x.shape[-2:]) if x.shape[1] == 1 else x


def side_by_side(panels: list[tuple[str, torch.Tensor]], label_height: int = 18, min_side: int = 256) -> torch.Tensor:
    """Panels ``[(label, (1, C, H, W))]`` of equal height in one labelled strip ``(1, 3, H', W')``.

    Panels whose long side is below ``min_side`` pixels are enlarged by the smallest integer
    factor that reaches it, nearest neighbour (a small model's pixels stay visible as blocks,
    not blurred); ``min_side=0`` keeps every panel's size.
    """
    imgs = []
    for label, t in panels:
        arr = (to_rgb(t)[0].permute(1, 2, 0).numpy() * 255).clip(0, 255).astype(np.uint8)
        if min_side and max(arr.shape[:2]) < min_side:
            f = -(-min_side // max(arr.shape[:2]))
            arr = np.repeat(np.repeat(arr, f, 0), f, 1)
        bar = np.full((label_height, arr.shape[1], 3), 255, np.uint8)
        scale = 0.4 if arr.shape[1] < 200 else 0.5
        cv2.putText(bar, label, (3, label_height - 5), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
        imgs.append(np.concatenate([bar, arr], 0))
        imgs.append(np.full((label_height + arr.shape[0], 4, 3), 255, np.uint8))
    strip = np.concatenate(imgs[:-1], 1)
    return torch.from_numpy(strip).permute(2, 0, 1)[None].float() / 255.0
