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
from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry import DEFAULT_FOV_DEG, Camera, HandleEdit, Similarity

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
        fov_deg: horizontal field of view, degrees (Sec. 5.1: 55).
        region_margin: ``"remove"``: the region's margin, work-size pixels (``None``: default).
        noise_seed: ``"remove"``: seed of the fresh noise in the region (``None``: keep the
            inverted noise).
    """

    kind: str
    transforms: tuple = ()
    object_masks: tuple = ()
    background_depth: torch.Tensor | None = None
    source_image: torch.Tensor | None = None
    fov_deg: float = DEFAULT_FOV_DEG
    region_margin: int | None = None
    noise_seed: int | None = 0

    def __post_init__(self) -> None:
        if self.kind not in EDIT_KINDS:
            raise HandlesError(f"kind: expected one of {', '.join(EDIT_KINDS)}, got {self.kind!r}")


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
    """

    request: EditRequest
    inverted: InvertedImage
    schedule_layers: list[tuple[int, ...]]
    camera: Camera
    object_masks: list[torch.Tensor] = field(default_factory=list)
    background: torch.Tensor | None = None
    source_work: torch.Tensor | None = None


def prepare(backbone: Backbone, inverted: InvertedImage, request: EditRequest,
            guidance: GuidanceConfig) -> Prepared:
    """Stage 1: check the inversion and the guidance, bring the request to the work size."""
    schedule_layers = check_inverted(backbone, inverted, guidance)
    inverted = inverted.to(backbone.device)
    h, w = inverted.depth.shape[-2:]
    masks = work_masks(backbone, inverted, request.object_masks) if request.kind == "objects" else []
    background = None
    if request.background_depth is not None and request.kind != "camera":
        background = _work_background(backbone, inverted, request.background_depth)
    source = None
    if request.kind == "camera" and request.source_image is not None:
        source = to_work(backbone, inverted, request.source_image.float().to(inverted.depth.device))
    return Prepared(request, inverted, schedule_layers, work_camera(inverted, request.fov_deg), masks, background,
                    source)


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
