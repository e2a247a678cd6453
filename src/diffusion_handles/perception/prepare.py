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
    estimate_background = need_background and (cfg.background == "estimate" or (cfg.background == "auto" and depth is None))
    info: dict = {"notes": []}

    # 1. load every model this request needs, so a missing one fails before any work is done
    estimator = None
    if depth is None or estimate_background:
        bypass = "give --depth FILE to skip depth estimation" if depth is None else "pass --background-mode fill"
        estimator = DepthEstimator.load(cfg.depth, bypass=bypass)
    detector = sam = None
    if object_text is not None:
        detector = TextDetector.load(cfg.segment)
    if object_text is not None or clicks:
        sam = SamSegmenter.load(cfg.segment, bypass="give --mask FILE instead of --object/--click")
    inpainter = None
    if estimate_background:
        inpainter, notes = load_inpainter(cfg.inpaint)
        info["notes"] += notes

    # 2. depth
    if depth is None:
        est = estimator.estimate(image)
        depth, depth_kind = est.depth, est.kind
        info["depth"] = {"source": "estimated", "model": est.model, "kind": est.kind}
    else:
        depth_kind = "given"
        info["depth"] = {"source": "given"}
    depth = depth.float()

    # 3. object mask
    candidates: list[dict] = []
    if mask is None:
        sel = select_object(image, text=object_text, clicks=clicks, config=cfg.segment, detector=detector, sam=sam)
        mask = sel.mask
        candidates = [c.to_json() for c in sel.candidates]
        info["mask"] = {"source": sel.source, **sel.summary(), "detector": detector.source if detector else None,
                        "sam": sam.source}
        info["notes"] += sel.notes
    else:
        info["mask"] = {"source": "file", "mask_pixels": int(mask.sum().item())}
    mask = (mask > 0.5).float()

    # 4. background depth d'_b
    background_image = None
    if not need_background:
        d_b = depth
        info["background"] = {"method": "none"}
    elif estimate_background:
        removal = remove_object(image, mask, cfg.inpaint, inpainter)
        background_image = removal.image
        bg = background_depth(removal.image, depth, removal.mask_dilated, estimator)
        d_b = bg.depth
        info["background"] = {"method": "inpaint+estimate+align", "inpainter": removal.method,
                              "depth_model": estimator.source, "align_space": bg.space,
                              "align_scale": bg.scale, "align_shift": bg.shift, "fit_pixels": bg.fit_pixels}
    else:
        from diffusion_handles.geometry import background_depth_fill

        d_b = background_depth_fill(depth, mask)
        info["background"] = {"method": "harmonic fill (geometry.background_depth_fill)"}
    return PreparedInputs(depth=depth, depth_kind=depth_kind, mask=mask, background_depth=d_b,
                          background_image=background_image, candidates=candidates, info=info)
