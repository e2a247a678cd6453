"""Everything an edit needs from a photo, from whatever the user gave: :func:`prepare_inputs`.

The user may give a depth file or not, and a mask file, a text query or clicks. This module
decides which models are needed, loads all of them *before* running any (so a missing model
fails at once, naming the model and the bypass option), then produces:

* ``depth``: z-depth ``(1, 1, H, W)`` in scene units (given, or estimated: :mod:`.depth`);
* ``mask``: the object mask ``(1, 1, H, W)`` in {0, 1} (given, or :mod:`.segment`);
* ``background_depth``: d'_b ``(1, 1, H, W)``. With an estimated depth, the paper's route
  (Sec. 5.1): remove the object (:mod:`.inpaint`), estimate depth on x_b, align it to d outside
  the dilated mask. With a *given* depth (no estimator needed, so it runs offline), the
  harmonic fill of the geometry layer, :func:`diffusion_handles.geometry.background_depth_fill`.
  ``background="estimate"`` forces the paper's route even with a given depth.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from diffusion_handles.errors import HandlesError
from diffusion_handles.io import check_mask_not_empty, check_same_size
from diffusion_handles.perception.depth import DepthConfig, DepthEstimator
from diffusion_handles.perception.inpaint import (
    InpaintConfig,
    background_depth,
    load_inpainter,
    remove_object,
)
from diffusion_handles.perception.segment import (
    SamSegmenter,
    SegmentConfig,
    TextDetector,
    select_object,
)

BACKGROUND_MODES = ("auto", "estimate", "fill")


@dataclass
class PerceptionConfig:
    """The perception models and options (each sub-config documents its defaults).

    ``background``: ``auto`` (estimate d'_b when the depth is estimated, harmonic fill when it
    is given), ``estimate`` (always inpaint + estimate + align) or ``fill`` (always harmonic).
    """

    depth: DepthConfig = field(default_factory=DepthConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    inpaint: InpaintConfig = field(default_factory=InpaintConfig)
    background: str = "auto"

    def __post_init__(self) -> None:
        if self.background not in BACKGROUND_MODES:
            raise HandlesError(f"--background-mode: expected one of {', '.join(BACKGROUND_MODES)}, got {self.background!r}")

    def to_json(self) -> dict:
        def clean(d: dict) -> dict:
            return {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in d.items()}

        return {"depth": clean(asdict(self.depth)), "segment": clean(asdict(self.segment)),
                "inpaint": clean(asdict(self.inpaint)), "background": self.background}


@dataclass
class PreparedInputs:
    """Inputs of an edit, all at the image's size ``H x W``.

    Attributes:
        depth: ``(1, 1, H, W)`` z-depth in scene units.
        depth_kind: ``given``, ``metric-depth``, ``relative-disparity`` or ``relative-depth``.
        mask: ``(1, 1, H, W)`` float32 {0, 1} object mask.
        background_depth: ``(1, 1, H, W)`` z-depth d'_b of the scene without the object.
        background_image: ``(1, 3, H, W)`` object-removed image x_b, or None (harmonic fill).
        candidates: detector boxes with scores (text queries), as JSON-ready dicts.
        info: what was used and remarks, JSON-ready (for ``summary.json``).
    """

    depth: torch.Tensor
    depth_kind: str
    mask: torch.Tensor
    background_depth: torch.Tensor
    background_image: torch.Tensor | None
    candidates: list[dict]
    info: dict


def prepare_inputs(
    image: torch.Tensor,
    *,
    depth: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    object_text: str | None = None,
    clicks: list[tuple[float, float]] | None = None,
    models: PerceptionConfig | None = None,
    need_background: bool = True,
) -> PreparedInputs:
    """Depth, object mask and background depth for ``image``, estimating what was not given.

    Args:
        image: ``(1, 3, H, W)`` RGB in [0, 1].
        depth: ``(1, 1, H, W)`` z-depth in scene units, or None to estimate it.
        mask: ``(1, 1, H, W)`` object mask, or None to select the object by ``object_text`` or
            ``clicks`` (exactly one of the three must be given).
        object_text: text query (detector -> SAM); clicks: ``(x, y)`` pixels (SAM).
        models: model choices; defaults to :class:`PerceptionConfig()`.
        need_background: compute d'_b (False skips object removal).

    Raises:
        HandlesError: conflicting or missing inputs, size mismatch, no object matched, or model
            weights that cannot be had (before any model runs).
    """
    cfg = models or PerceptionConfig()
    _check_request(image, depth, mask, object_text, clicks)
    estimate_background = need_background and (cfg.background == "estimate" or (cfg.background == "auto" and depth is None))
    # 1. load every model this request needs, so a missing one fails before any work is done
    loaded = _load_models(cfg, given_depth=depth is not None, object_text=object_text, clicks=bool(clicks),
                          estimate_background=estimate_background)
    info: dict = {"notes": list(loaded.notes)}
    # 2. depth
    depth, depth_kind, info["depth"] = _depth(image, depth, loaded.estimator)
    # 3. object mask
    mask, candidates, info["mask"] = _object_mask(image, mask, object_text, clicks, cfg.segment, loaded, info["notes"])
    # 4. background depth d'_b
    how = "none" if not need_background else "estimate" if estimate_background else "fill"
    d_b, background_image, info["background"] = _background_depth(image, depth, mask, how, cfg.inpaint, loaded)
    return PreparedInputs(depth=depth, depth_kind=depth_kind, mask=mask, background_depth=d_b,
                          background_image=background_image, candidates=candidates, info=info)


def _check_request(image: torch.Tensor, depth: torch.Tensor | None, mask: torch.Tensor | None,
                   object_text: str | None, clicks: list[tuple[float, float]] | None) -> None:
    """Refuse conflicting or missing ways to pick the object, a non-RGB ``(1, 3, H, W)`` image,
    and a depth or mask of another size (or an empty mask)."""
    given = (mask is not None) + (object_text is not None) + bool(clicks)
    if given != 1:
        raise HandlesError(f"--mask/--object/--click: expected exactly one way to pick the object, got {given}")
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise HandlesError(f"IMAGE: expected an RGB image (1, 3, H, W), got shape {tuple(image.shape)}")
    if depth is not None:
        check_same_size("IMAGE", image, "--depth", depth)
    if mask is not None:
        check_same_size("IMAGE", image, "--mask", mask)
        check_mask_not_empty(mask)


@dataclass
class _Models:
    """The perception models one request needs, loaded (None: not needed), and the loaders' notes."""

    estimator: DepthEstimator | None = None
    detector: TextDetector | None = None
    sam: SamSegmenter | None = None
    inpainter: object | None = None
    notes: list[str] = field(default_factory=list)


def _load_models(cfg: PerceptionConfig, *, given_depth: bool, object_text: str | None, clicks: bool,
                 estimate_background: bool) -> _Models:
    """Load every model the request needs before any runs, so a missing one fails at once,
    naming the option that does without it."""
    out = _Models()
    if not given_depth or estimate_background:
        bypass = "give --depth FILE to skip depth estimation" if not given_depth else "pass --background-mode fill"
        out.estimator = DepthEstimator.load(cfg.depth, bypass=bypass)
    if object_text is not None:
        out.detector = TextDetector.load(cfg.segment)
    if object_text is not None or clicks:
        out.sam = SamSegmenter.load(cfg.segment, bypass="give --mask FILE instead of --object/--click")
    if estimate_background:
        out.inpainter, notes = load_inpainter(cfg.inpaint)
        out.notes += notes
    return out


def _depth(image: torch.Tensor, depth: torch.Tensor | None,
           estimator: DepthEstimator | None) -> tuple[torch.Tensor, str, dict]:
    """The given depth, or the estimator's for ``image``.

    Returns:
        ``(depth, kind, info)``: float32 z-depth ``(1, 1, H, W)``, its kind and what was used.
    """
    if depth is None:
        est = estimator.estimate(image)
        return est.depth.float(), est.kind, {"source": "estimated", "model": est.model, "kind": est.kind}
    return depth.float(), "given", {"source": "given"}


def _object_mask(image: torch.Tensor, mask: torch.Tensor | None, object_text: str | None,
                 clicks: list[tuple[float, float]] | None, cfg: SegmentConfig, loaded: _Models,
                 notes: list[str]) -> tuple[torch.Tensor, list[dict], dict]:
    """The given mask, or the object selected by ``object_text`` or ``clicks`` (the selection's
    notes are added to ``notes``).

    Returns:
        ``(mask, candidates, info)``: float32 {0, 1} mask ``(1, 1, H, W)``, the detector's
        candidates as JSON-ready dicts, and what was used.
    """
    if mask is not None:
        return (mask > 0.5).float(), [], {"source": "file", "mask_pixels": int(mask.sum().item())}
    detector, sam = loaded.detector, loaded.sam
    sel = select_object(image, text=object_text, clicks=clicks, config=cfg, detector=detector, sam=sam)
    notes += sel.notes
    info = {"source": sel.source, **sel.summary(), "detector": detector.source if detector else None,
            "sam": sam.source}
    return (sel.mask > 0.5).float(), [c.to_json() for c in sel.candidates], info


def _background_depth(image: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor, how: str, cfg: InpaintConfig,
                      loaded: _Models) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """d'_b ``(1, 1, H, W)`` by ``how``: ``none`` (the depth itself), ``estimate`` (the paper's
    route: remove the object, estimate depth on x_b, align it to d) or ``fill`` (harmonic).

    Returns:
        ``(d_b, background_image, info)``: the background depth, x_b ``(1, 3, H, W)`` (None
        unless estimated) and what was used.
    """
    if how == "none":
        return depth, None, {"method": "none"}
    if how == "estimate":
        removal = remove_object(image, mask, cfg, loaded.inpainter)
        bg = background_depth(removal.image, depth, removal.mask_dilated, loaded.estimator)
        return bg.depth, removal.image, {
            "method": "inpaint+estimate+align", "inpainter": removal.method, "depth_model": loaded.estimator.source,
            "align_space": bg.space, "align_scale": bg.scale, "align_shift": bg.shift, "fit_pixels": bg.fit_pixels}
    from diffusion_handles.geometry import background_depth_fill

    return background_depth_fill(depth, mask), None, {"method": "harmonic fill (geometry.background_depth_fill)"}
