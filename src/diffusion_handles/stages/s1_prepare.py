"""Stage 1 of an edit: the caller's request and the inversion in the model's working frame.

The request says which kind of edit is asked for (:data:`EDIT_KINDS`) and carries the inputs
given at the *input* size; :func:`prepare` checks the inversion against the model and the
guidance, moves it to the model's device and brings every input to the work size the inversion
was made at (``Backbone.work_size``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from diffusion_handles.diffusion.backbone import Backbone
from diffusion_handles.diffusion.config import GuidanceConfig
from diffusion_handles.diffusion.inverted import InvertedImage
from diffusion_handles.diffusion.prompts import restyle_prompt
from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry import DEFAULT_FOV_DEG, Camera, HandleEdit, Similarity, mask_pivot

EDIT_KINDS = ("object", "objects", "camera", "remove")
_TRANSFORMS = (HandleEdit, Similarity)


@dataclass(frozen=True)
class CameraMove:
    """Move the camera instead of an object.

    Attributes:
        transform: a :class:`HandleEdit` (translation in camera axes, scene units; rotation
            about the camera centre) or a :class:`Similarity` taken as the scene transform
            itself (:func:`~diffusion_handles.geometry.camera_move`).
    """

    transform: HandleEdit | Similarity


@dataclass(frozen=True)
class ObjectMove:
    """One object of a several-object edit.

    Attributes:
        mask: ``(1, 1, H, W)`` the object's mask at the input size (> 0.5 = object).
        transform: its :class:`HandleEdit` (about its own centroid) or :class:`Similarity`.
    """

    mask: torch.Tensor
    transform: HandleEdit | Similarity


@dataclass
class EditRequest:
    """One edit as the caller states it, at the input size ``H x W``.

    Attributes:
        kind: one of :data:`EDIT_KINDS`.
        transforms: one per object (``"object"``: one; ``"camera"``: the camera's; ``"remove"``:
            none).
        object_masks: ``"objects"``: one ``(1, 1, H, W)`` mask per transform.
        background_depth: ``(1, 1, H, W)`` z-depth of the object-free scene ``d'_b``, or ``None``
            (the harmonic fill of the object region).
        source_image: ``(1, 3, H, W)`` the input at its own size for the composite, or ``None``
            (the work-size image resized back).
        source_depth: ``(1, 1, H, W)`` the input's z-depth at its own size, or ``None``; with it
            (and ``source_mask`` for one object) stage 6 recomputes the object edits' 3D flow at
            the input's resolution, so a photo larger than the work size keeps sharp silhouettes.
        source_mask: ``"object"``: ``(1, 1, H, W)`` the object's mask at the input's size, or ``None``.
        fov_deg: horizontal field of view, degrees (Sec. 5.1: 55).
        region_margin: ``"remove"``: the region's margin, work-size pixels (``None``: default).
        noise_seed: ``"remove"``: seed of the fresh noise in the region (``None``: keep the
            inverted noise).
        restyle: ``"object"``: the object's new description (e.g. ``"a red striped sphere"``):
            the generation's prompt is the inversion's with the object's words replaced
            (:func:`~diffusion_handles.diffusion.prompts.restyle_prompt`); ``None``: no restyle.
        restyle_words: the words of the inversion's prompt that name the object (``None``: its
            one object phrase, :func:`~diffusion_handles.diffusion.prompts.object_phrases`).
    """

    kind: str
    transforms: tuple = ()
    object_masks: tuple = ()
    background_depth: torch.Tensor | None = None
    source_image: torch.Tensor | None = None
    source_depth: torch.Tensor | None = None
    source_mask: torch.Tensor | None = None
    fov_deg: float = DEFAULT_FOV_DEG
    region_margin: int | None = None
    noise_seed: int | None = 0
    restyle: str | None = None
    restyle_words: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in EDIT_KINDS:
            raise HandlesError(f"kind: expected one of {', '.join(EDIT_KINDS)}, got {self.kind!r}")
        _check_restyle(self)


def _check_restyle(request: EditRequest) -> None:
    """A restyle changes one moved object's look: refuse it for the other kinds and refuse
    ``restyle_words`` without ``restyle``."""
    if request.restyle is None:
        if request.restyle_words is not None:
            raise HandlesError(f"restyle_words: expected only with restyle, got {request.restyle_words!r} and no restyle")
        return
    if not isinstance(request.restyle, str) or not request.restyle.strip():
        raise HandlesError("restyle: expected the object's new description (e.g. 'a red striped sphere'), "
                           f"got {request.restyle!r}")
    if request.kind != "object":
        what = {"camera": "a camera move", "remove": "a removal", "objects": "a several-object edit"}[request.kind]
        raise HandlesError(f"restyle: expected a one-object edit (a HandleEdit or Similarity), got {what}; "
                           "restyle one object at a time")


def request_for_edit(transform, **inputs) -> EditRequest:
    """The :class:`EditRequest` of ``DiffusionHandles.edit``'s ``transform`` argument:
    a :class:`HandleEdit` or :class:`Similarity` (one object), a :class:`CameraMove`, or a list of
    :class:`ObjectMove` (several objects). ``inputs``: the request's other fields."""
    if isinstance(transform, _TRANSFORMS):
        return EditRequest("object", (transform,), **inputs)
    if isinstance(transform, CameraMove):
        if not isinstance(transform.transform, _TRANSFORMS):
            raise HandlesError("transform: expected CameraMove(HandleEdit or Similarity), "
                               f"got CameraMove({type(transform.transform).__name__})")
        return EditRequest("camera", (transform.transform,), **inputs)
    if isinstance(transform, Sequence) and transform and all(isinstance(m, ObjectMove) for m in transform):
        for k, m in enumerate(transform):
            if not isinstance(m.transform, _TRANSFORMS):
                raise HandlesError(f"transform[{k}]: expected ObjectMove(mask, HandleEdit or Similarity), "
                                   f"got a transform of type {type(m.transform).__name__}")
        return EditRequest("objects", tuple(m.transform for m in transform),
                           tuple(m.mask for m in transform), **inputs)
    raise HandlesError("transform: expected a HandleEdit or Similarity (one object), a CameraMove, or a "
                       f"non-empty list of ObjectMove (several objects), got {_describe(transform)}")


def edit_target(transform, *, camera: bool = False, object_masks: Sequence[torch.Tensor] | None = None):
    """The ``transform`` argument of ``DiffusionHandles.edit`` for a caller that holds a mode:
    ``CameraMove(transform)`` when ``camera``, ``[ObjectMove(mask, T), ...]`` pairing
    ``object_masks`` with the list ``transform`` (one each), else ``transform`` itself."""
    if camera and object_masks:
        raise HandlesError("camera: expected either a camera move or object masks, got both")
    if camera:
        return CameraMove(transform)
    if object_masks:
        transforms = list(transform) if isinstance(transform, (list, tuple)) else [transform]
        if len(transforms) != len(object_masks):
            raise HandlesError(f"transform: expected one transform per mask ({len(object_masks)}), "
                               f"got {len(transforms)}")
        return [ObjectMove(m, t) for m, t in zip(object_masks, transforms, strict=True)]
    return transform


def request_for_removal(**inputs) -> EditRequest:
    """The :class:`EditRequest` of ``DiffusionHandles.remove``."""
    return EditRequest("remove", **inputs)


def _describe(value) -> str:
    if isinstance(value, (list, tuple)):
        kinds = sorted({type(v).__name__ for v in value})
        return f"a {type(value).__name__} of {', '.join(kinds) or 'nothing'}"
    return type(value).__name__


@dataclass
class Prepared:
    """Stage 1's output: everything at the work size ``H x W``, on the model's device.

    Attributes:
        request: the caller's request.
        inverted: the inversion, on the model's device.
        schedule_layers: per step ``0..N-1``, the up-blocks the guidance uses (Sec. 5.2).
        camera: the pinhole camera of the work-size image.
        object_masks: ``"objects"``: per-object ``(1, 1, H, W)`` masks in {0, 1}; else empty.
        background: ``(1, 1, H, W)`` the given ``d'_b`` resized, or ``None`` (harmonic fill).
        source_work: ``"camera"``: ``(1, 3, H, W)`` the given source image resized, or ``None``
            (the inversion's image).
        pivots: object edits with ``request.source_depth``: one ``(3,)`` rotation/scale centre
            per object (scene units), its centroid lifted at the input's resolution
            (:func:`input_pivots`); ``None``: the work-size centroids.
        prompt: the generation's prompt: the inversion's, or under ``request.restyle`` the
            inversion's with the object's words replaced; ``None``: the inversion's.
    """

    request: EditRequest
    inverted: InvertedImage
    schedule_layers: list[tuple[int, ...]]
    camera: Camera
    object_masks: list[torch.Tensor] = field(default_factory=list)
    background: torch.Tensor | None = None
    source_work: torch.Tensor | None = None
    pivots: list[torch.Tensor] | None = None
    prompt: str | None = None


def prepare(backbone: Backbone, inverted: InvertedImage, request: EditRequest,
            guidance: GuidanceConfig) -> Prepared:
    """Stage 1: check the inversion and the guidance, bring the request to the work size."""
    schedule_layers = check_inverted(backbone, inverted, guidance)
    check_sources(request, tuple(inverted.input_hw))
    inverted = inverted.to(backbone.device)
    h, w = inverted.depth.shape[-2:]
    masks = work_masks(backbone, inverted, request.object_masks) if request.kind == "objects" else []
    background = None
    if request.background_depth is not None and request.kind != "camera":
        background = _work_background(backbone, inverted, request.background_depth)
    source = None
    if request.kind == "camera" and request.source_image is not None:
        source = to_work(backbone, inverted, request.source_image.float().to(inverted.depth.device))
    prompt = inverted.prompt
    if request.restyle is not None:
        prompt = restyle_prompt(inverted.prompt, request.restyle, request.restyle_words)
    return Prepared(request, inverted, schedule_layers, work_camera(inverted, request.fov_deg), masks, background,
                    source, pivots=input_pivots(request, tuple(inverted.input_hw)), prompt=prompt)


def input_pivots(request: EditRequest, input_hw: tuple[int, int]) -> list[torch.Tensor] | None:
    """The object edits' rotation/scale centres from the input's own depth and masks
    (``source_depth``, and ``source_mask`` or ``object_masks``), one ``(3,)`` per object, or
    ``None`` without them. The work-size centroid moves with the resampling (a few tenths of a
    work pixel, several input pixels on a large photo), which turns and scales the object about
    another point than the photo's own centroid; the finish then warps the photo by a transform
    that is not the one asked for."""
    if request.source_depth is None or request.kind not in ("object", "objects"):
        return None
    masks = [request.source_mask] if request.kind == "object" else list(request.object_masks)
    if any(m is None for m in masks):
        return None
    camera = Camera(*input_hw, request.fov_deg)
    depth = request.source_depth.float().cpu()
    return [mask_pivot(depth, m.float().cpu(), camera) for m in masks]


def check_sources(request: EditRequest, input_hw: tuple[int, int]) -> None:
    """Refuse a ``source_depth`` or ``source_mask`` that is not ``(1, 1, H, W)`` at the inverted
    image's input size ``input_hw``, a depth that is not positive and finite, or an empty mask."""
    h, w = input_hw
    for name in ("source_depth", "source_mask"):
        t = getattr(request, name)
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[:2] != (1, 1):
            raise HandlesError(f"{name}: expected a tensor (1, 1, H, W), got {getattr(t, 'shape', type(t))}")
        if tuple(t.shape[-2:]) != (h, w):
            raise HandlesError(f"{name}: expected size {w}x{h} (W x H, the inverted image's), "
                               f"got {t.shape[-1]}x{t.shape[-2]}")
    d = request.source_depth
    if d is not None and not (bool(torch.isfinite(d).all()) and bool((d > 0).all())):
        raise HandlesError("source_depth: expected positive, finite z-depth everywhere")
    if request.source_mask is not None and not bool((request.source_mask > 0.5).any()):
        raise HandlesError("source_mask: expected at least one object pixel, got an empty mask")


def work_camera(inverted: InvertedImage, fov_deg: float) -> Camera:
    """The camera of the work-size image: the photo's (``fov_deg`` across its width), or for an
    edit window (``inverted.config.window``) the window's, scaled to the work size."""
    h, w = inverted.depth.shape[-2:]
    box = inverted.config.window
    if box is None:
        return Camera(h, w, fov_deg)
    return Camera(*inverted.input_hw, fov_deg).window(box).resized(h, w)


def to_work(backbone: Backbone, inverted: InvertedImage, x: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``x`` ``(1, C, H_in, W_in)`` at the input's size -> the work frame: cropped to the edit window
    (``inverted.config.window``) if there is one, resized to the work size."""
    if inverted.config.window is not None:
        from diffusion_handles.geometry.window import crop

        x = crop(x, inverted.config.window)
    return backbone.resize_to_work(x, tuple(inverted.depth.shape[-2:]), mode)


def check_inverted(backbone: Backbone, inverted: InvertedImage, guidance: GuidanceConfig) -> list[tuple[int, ...]]:
    """Refuse an inversion of another model or an unusable one; the guidance schedule (per step,
    the up-blocks guided), which must only use recorded ``(layer, step)`` activations."""
    if inverted.model_id != backbone.model_id:
        raise HandlesError(f"inverted: was made with model {inverted.model_id!r}, this pipeline runs "
                           f"{backbone.model_id!r}; invert again")
    if inverted.weights_digest and inverted.weights_digest != backbone.weights_digest:
        raise HandlesError(f"inverted: was made with other weights of model {backbone.model_id!r}; invert again")
    problem = None if inverted.verified else inverted.problem()
    if problem is not None:
        raise HandlesError(f"inverted: unusable ({problem}); invert again")
    try:
        schedule_layers = guidance.schedule(inverted.config.num_steps, backbone.num_up_blocks)
    except ValueError as e:
        raise HandlesError(str(e)) from None
    missing = sorted({(lay, i) for i, ls in enumerate(schedule_layers) for lay in ls} - set(inverted.activations))
    if missing:
        raise HandlesError(f"guidance: needs activations (layer, step) {missing[:3]}... that the inversion did not "
                           "record; invert with the same guidance configuration")
    return schedule_layers


def work_masks(backbone: Backbone, inverted: InvertedImage, masks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per-object masks ``(1, 1, H, W)`` at the input size -> work size (nearest), validated."""
    out = []
    for k, m in enumerate(masks):
        if not isinstance(m, torch.Tensor) or m.dim() != 4 or m.shape[:2] != (1, 1):
            raise HandlesError(f"object_masks[{k}]: expected a tensor (1, 1, H, W), got {getattr(m, 'shape', type(m))}")
        if tuple(m.shape[-2:]) != tuple(inverted.input_hw):
            raise HandlesError(f"object_masks[{k}]: expected size {inverted.input_hw[1]}x{inverted.input_hw[0]} "
                               f"(W x H, the inverted image's), got {m.shape[-1]}x{m.shape[-2]}")
        mw = (to_work(backbone, inverted, (m > 0.5).float(), "nearest") > 0.5).float()
        out.append(mw.to(inverted.depth.device))
    return out


def _work_background(backbone: Backbone, inverted: InvertedImage, background: torch.Tensor) -> torch.Tensor:
    """The given ``d'_b`` ``(1, 1, H', W')`` (stretched to the input's size if it has another) in
    the work frame (:func:`to_work`)."""
    if not isinstance(background, torch.Tensor) or background.dim() != 4 or background.shape[:2] != (1, 1):
        raise HandlesError("background_depth: expected a tensor (1, 1, H, W), got "
                           f"{getattr(background, 'shape', type(background))}")
    background = backbone.resize_to_work(background.float().to(inverted.depth.device), tuple(inverted.input_hw))
    return to_work(backbone, inverted, background)
