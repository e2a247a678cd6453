"""Monocular depth estimation through ``transformers`` (ZoeDepth, Depth Anything V2, DPT).

Each estimator family predicts a different quantity; this module states which and converts it
to **z-depth in scene units** in one place, :func:`~diffusion_handles.io.to_z_depth` (re-exported
here as :func:`to_z_depth`):

=========================  ===============================  ==================================
family (``model_type``)    raw output                       kind (``--depth-kind``)
=========================  ===============================  ==================================
``zoedepth``               metric z-depth in metres         ``metric-depth`` (``z``: passed
                                                            through)
``depth_anything``         relative inverse depth, or       ``relative-disparity``
                           metric depth (``depth_estima-    (``inverse``) or ``metric-depth``
                           tion_type == "metric"``)         (``z``), from the config
``dpt`` (MiDaS / DPT)      relative inverse depth           ``relative-disparity`` (``inverse``)
``glpn``, ``depth_pro``    metric z-depth                   ``metric-depth`` (``z``)
=========================  ===============================  ==================================

A relative disparity ``r`` is known only up to an unknown scale and shift of inverse depth
(MiDaS-style affine invariance). :func:`~diffusion_handles.io.to_z_depth`, the one conversion
that depth files given with ``--depth-kind`` go through too, maps its robust range (the 1st to
99th percentile) linearly in inverse depth onto ``[1/far, 1/near]``, so the nearest pixels sit at
``near`` and the farthest at ``far`` scene units (defaults 1 and 10: room-to-street scale).
Each estimate carries its kind (:attr:`DepthEstimate.kind`, ``summary.json``'s ``kind``).

:func:`align_scale_shift` is the one least-squares scale-and-shift fit of one depth map to
another, used to put the background depth d'_b estimated on the object-removed image into the
frame of the original depth (see :mod:`.inpaint`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from diffusion_handles.errors import HandlesError
from diffusion_handles.hub import load_pretrained
from diffusion_handles.io import (  # the kinds and their conversion live with the depth files' reader
    DEFAULT_DEPTH_RANGE,
    DEPTH_KINDS,
    METRIC_DEPTH,
    RELATIVE_DEPTH,
    RELATIVE_DISPARITY,
    check_depth_range,
    depth_kind,
    to_z_depth,
)
from diffusion_handles.perception.model_folder import check_model_folder, guarded_loader

__all__ = ["DEFAULT_DEPTH_MODEL", "DEPTH_KINDS", "METRIC_DEPTH", "RELATIVE_DEPTH", "RELATIVE_DISPARITY",
           "DepthConfig", "DepthEstimate", "DepthEstimator", "align_scale_shift", "depth_model_types",
           "image_to_pil", "kind_of_model", "to_z_depth"]

# Sec. 5 / supplement: the paper estimates depth with ZoeDepth (metric, trained with the 55 deg
# field of view the geometry assumes). This is its NYU+KITTI checkpoint on the hub.
DEFAULT_DEPTH_MODEL = "Intel/zoedepth-nyu-kitti"


@dataclass
class DepthConfig:
    """Which depth estimator to run and how to read its output.

    Attributes:
        model: hub id or local folder (``save_pretrained`` output). Default: ZoeDepth, as in the
            paper (Sec. 5). Alternatives: ``depth-anything/Depth-Anything-V2-Small-hf``
            (relative), ``depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf`` (metric),
            ``Intel/dpt-hybrid-midas`` (relative).
        kind: override the kind inferred from the model family (one of :data:`DEPTH_KINDS`, or
            the ``--depth-kind`` words ``z``, ``inverse``, ``relative-depth``; stored as the former).
        near, far: scene units that a relative estimate's nearest/farthest pixels map to.
        device, dtype: where the estimator runs.
    """

    model: str = DEFAULT_DEPTH_MODEL
    kind: str | None = None
    near: float = DEFAULT_DEPTH_RANGE[0]
    far: float = DEFAULT_DEPTH_RANGE[1]
    device: str = "cpu"
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.kind is not None:
            self.kind = depth_kind(self.kind)
        check_depth_range(self.near, self.far)


def depth_model_types() -> list[str]:
    """``model_type`` values of the depth estimators ``AutoModelForDepthEstimation`` can load."""
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES

        return sorted(MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES)
    except ImportError:  # pragma: no cover - a transformers without the mapping
        return ["depth_anything", "depth_pro", "dpt", "glpn", "prompt_depth_anything", "zoedepth"]


def kind_of_model(config) -> str:
    """The kind of depth a ``transformers`` depth model predicts, from its config."""
    model_type = getattr(config, "model_type", "")
    if model_type == "zoedepth":
        return METRIC_DEPTH
    if model_type in ("depth_anything", "prompt_depth_anything"):
        return METRIC_DEPTH if getattr(config, "depth_estimation_type", "relative") == "metric" else RELATIVE_DISPARITY
    if model_type in ("dpt", "glpn", "depth_pro"):
        # DPT/MiDaS checkpoints: relative inverse depth. (GLPN and Depth Pro are metric.)
        return RELATIVE_DISPARITY if model_type == "dpt" else METRIC_DEPTH
    raise HandlesError(f"--depth-model: cannot tell whether a {model_type!r} model predicts metric or relative "
                       f"depth; pass --depth-kind ({', '.join(DEPTH_KINDS)})")


def align_scale_shift(source: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, *,
                      space: str = "depth", min_depth: float = 1e-3) -> tuple[torch.Tensor, float, float]:
    """Least-squares scale ``s`` and shift ``t`` with ``s * f(source) + t ~= f(target)`` on ``valid``.

    ``f`` is the identity for ``space="depth"`` (metric estimators: z-depth is right up to a
    scale and shift) and ``1/z`` for ``space="disparity"`` (relative estimators are affine in
    inverse depth). The fit is closed-form (2x2 normal equations, float64). If it is degenerate
    (fewer than 2 valid pixels, constant source) or gives a non-positive scale, the scale falls
    back to the ratio of medians with zero shift.

    Args:
        source: ``(B, 1, H, W)`` z-depth to align (e.g. estimated on the object-removed image).
        target: ``(B, 1, H, W)`` z-depth to match (the original image's depth).
        valid: ``(B, 1, H, W)`` bool, pixels used for the fit (outside the dilated object mask).
        space: ``"depth"`` or ``"disparity"``.

    Returns:
        ``(aligned, s, t)``: aligned z-depth ``(B, 1, H, W)`` (clamped to ``>= min_depth``) and
        the fitted scale and shift (of the first batch element, for the record).
    """
    if space not in ("depth", "disparity"):
        raise ValueError(f"space: expected 'depth' or 'disparity', got {space!r}")
    if source.shape != target.shape or valid.shape != source.shape:
        raise ValueError(f"source/target/valid: expected equal shapes, got {tuple(source.shape)}, "
                         f"{tuple(target.shape)}, {tuple(valid.shape)}")
    fwd = (lambda z: z) if space == "depth" else (lambda z: 1.0 / z.clamp_min(min_depth))
    out = torch.empty_like(source)
    s0 = t0 = 0.0
    for b in range(source.shape[0]):  # batch loop only; each fit is vectorised
        x = fwd(source[b].double())
        y = fwd(target[b].double())
        m = valid[b].bool()
        xs, ys = x[m], y[m]
        s, t = float("nan"), float("nan")
        if xs.numel() >= 2:
            a = torch.stack([xs, torch.ones_like(xs)], dim=1)  # (N, 2)
            ata = a.T @ a
            if torch.linalg.det(ata).abs() > 1e-12 * (ata.abs().max() ** 2):
                s, t = (torch.linalg.solve(ata, a.T @ ys)).tolist()
        if not (np.isfinite(s) and np.isfinite(t) and s > 0):
            denom = xs.median() if xs.numel() else x.median()
            numer = ys.median() if ys.numel() else y.median()
            s, t = float(numer / denom.clamp_min(1e-12)), 0.0
        fitted = s * x + t
        z = fitted if space == "depth" else 1.0 / fitted.clamp_min(1.0 / 1e6)
        out[b] = z.clamp_min(min_depth).to(source.dtype)
        if b == 0:
            s0, t0 = s, t
    return out, s0, t0


@dataclass
class DepthEstimate:
    """Output of :meth:`DepthEstimator.estimate`.

    Attributes:
        depth: ``(1, 1, H, W)`` z-depth in scene units at the input image's size.
        raw: ``(1, 1, H, W)`` the model's output resized to the image (units per ``kind``).
        kind: ``metric-depth``, ``relative-disparity`` or ``relative-depth``.
        model: the hub id or folder it came from.
    """

    depth: torch.Tensor
    raw: torch.Tensor
    kind: str
    model: str


def image_to_pil(image: torch.Tensor):
    """``(1, 3, H, W)`` float in ``[0, 1]`` -> ``PIL.Image`` RGB."""
    from PIL import Image

    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise ValueError(f"image: expected (1, 3, H, W), got {tuple(image.shape)}")
    arr = (image[0].detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(arr)


class DepthEstimator:
    """A ``transformers`` depth model (``AutoModelForDepthEstimation`` + ``AutoImageProcessor``)."""

    def __init__(self, model, processor, config: DepthConfig, source: str):
        self.model = model.eval()
        self.processor = processor
        self.config = config
        self.source = source
        self.kind = config.kind or kind_of_model(model.config)

    @classmethod
    def load(cls, config: DepthConfig, *, bypass: str | None = "give --depth FILE to skip depth estimation") -> DepthEstimator:
        def _load(name: str, local_only: bool):
            from transformers import AutoImageProcessor, AutoModelForDepthEstimation

            model = AutoModelForDepthEstimation.from_pretrained(name, local_files_only=local_only, dtype=config.dtype)
            processor = AutoImageProcessor.from_pretrained(name, local_files_only=local_only)
            return model, processor

        check_model_folder(config.model, option="--depth-model", what="depth estimation", model_types=depth_model_types())
        model, processor = load_pretrained(guarded_loader(_load), config.model, what="depth", option="--depth-model",
                                           bypass=bypass)
        return cls(model.to(config.device), processor, config, config.model)

    @torch.no_grad()
    def estimate(self, image: torch.Tensor) -> DepthEstimate:
        """Depth of one image.

        Args:
            image: ``(1, 3, H, W)`` RGB in ``[0, 1]``.

        Returns:
            :class:`DepthEstimate` with ``depth`` ``(1, 1, H, W)`` z-depth in scene units.
        """
        h, w = image.shape[-2:]
        inputs = self.processor(images=image_to_pil(image), return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.config.device, self.model.dtype)
        outputs = self.model(pixel_values=pixel_values)
        pred = outputs.predicted_depth.float()[:, None]  # (1, 1, h', w') at the model's resolution
        if self.model.config.model_type == "zoedepth" and getattr(self.processor, "do_pad", False):
            # ZoeDepth's processor reflect-pads the image by int(3 * sqrt(side / 2)) pixels on each
            # side before resizing; the prediction covers the padded image, so crop the padding.
            # (transformers' own post-processing needs torchvision, which the PIL backend lacks.)
            ph, pw = int(np.sqrt(h / 2) * 3), int(np.sqrt(w / 2) * 3)
            pred = F.interpolate(pred, size=(h + 2 * ph, w + 2 * pw), mode="bilinear", align_corners=False)
            pred = pred[..., ph:ph + h, pw:pw + w]  # (1, 1, H, W)
        raw = F.interpolate(pred, size=(h, w), mode="bilinear", align_corners=False)  # (1, 1, H, W)
        raw = raw.cpu()
        depth = to_z_depth(raw, self.kind, near=self.config.near, far=self.config.far)
        return DepthEstimate(depth=depth, raw=raw, kind=self.kind, model=self.source)

