"""What a preview or render moves: the selected object, several objects, or the camera.

A request (:class:`~diffusion_handles.web.schemas.EditRequest`) names a ``mode`` and, for
objects, a list of other masks with their transforms; :func:`resolve` checks it against the
session (mask indices, the selected object listed again) and :func:`preview_target` computes
the instant geometric preview of any of the three, as ``handles preview`` does for a camera
move and :func:`~diffusion_handles.geometry.compute_multi_edit` for several objects.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry import (
    Camera,
    HandleEdit,
    background_depth_fill,
    compute_multi_edit,
    edited_depth,
    render_preview,
)
from diffusion_handles.web.render import RenderInput, check_background, object_names
from diffusion_handles.web.schemas import EditRequest

__all__ = ["EditRequest", "EditTarget", "preview_target", "render_input", "resolve", "session_tensors"]
from diffusion_handles.web.sessions import Session


@dataclass
class EditTarget:
    """What moves. ``masks`` ``(H, W)`` bool, the selected object first (none for a camera
    move); ``edits`` one per mask, or the camera's move."""

    camera: bool
    masks: list[np.ndarray]
    edits: list[HandleEdit]

    @property
    def multi(self) -> bool:
        return len(self.masks) > 1

    @property
    def edit(self) -> HandleEdit | list[HandleEdit]:
        """What the renderer takes: one edit, or a list for several objects."""
        return list(self.edits) if self.multi else self.edits[0]

    def inversion_mask(self, hw: tuple[int, int]) -> np.ndarray:
        """The mask the image is inverted with: all ones for a camera move (the facade's
        requirement), the union of the objects otherwise."""
        if self.camera:
            return np.ones(hw, bool)
        return np.logical_or.reduce(self.masks)


def resolve(s: Session, req: EditRequest) -> EditTarget:
    """The request checked against the session (call with ``s.lock`` held).

    Raises:
        HandlesError: objects or a scale in camera mode; no object selected (object mode); a
            listed mask that does not exist, is listed twice or is the selected object (one
            line naming ``objects[k].mask``).
    """
    if req.mode == "camera":
        if req.objects:
            raise HandlesError(f"objects: expected none in camera mode (the camera moves the whole scene), "
                               f"got {len(req.objects)}")
        if req.transform.scale != 1:
            raise HandlesError(f"transform.scale: expected 1 in camera mode (a camera move cannot scale), "
                               f"got {req.transform.scale:g}")
        return EditTarget(True, [], [req.transform.to_edit()])
    seen: dict[int, int] = {}
    for k, o in enumerate(req.objects):
        if o.mask in seen:
            raise HandlesError(f"objects[{k}].mask: expected each mask once, got mask {o.mask} again "
                               f"(also objects[{seen[o.mask]}])")
        seen[o.mask] = k
    masks, edits = [s.require_mask()], [req.transform.to_edit()]
    for k, o in enumerate(req.objects):
        if o.mask >= len(s.masks):
            raise HandlesError(f"objects[{k}].mask: expected a mask index in [0, {len(s.masks)}), got {o.mask}")
        if o.mask == s.selected:
            raise HandlesError(f"objects[{k}].mask: expected another object than the selected one (mask {o.mask} "
                               "moves by transform), got it again")
        masks.append(s.masks[o.mask][1])
        edits.append(o.transform.to_edit())
    return EditTarget(False, masks, edits)


def session_tensors(s: Session, target: EditTarget) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple]:
    """``image (1, 3, H, W)``, ``depth (1, 1, H, W)``, the inversion mask ``(1, 1, H, W)`` and the
    per-object masks (several objects only) as tensors (call with ``s.lock`` held)."""
    image = torch.from_numpy(s.image).permute(2, 0, 1)[None].float() / 255.0
    depth = torch.from_numpy(s.depth)[None, None].float()

    def t(m: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(m))[None, None].float()

    per_object = tuple(t(m) for m in target.masks) if target.multi else ()
    return image, depth, t(target.inversion_mask(s.size_hw)), per_object


def render_input(s: Session, target: EditTarget, prompt: str, model: str) -> RenderInput:
    """A frozen copy of the session for a job (call with ``s.lock`` held)."""
    image, depth, mask, per_object = session_tensors(s, target)
    key = s.content_key(prompt, model, mask=target.inversion_mask(s.size_hw))
    return RenderInput(image, depth, mask, prompt, s.fov_deg, key, object_masks=per_object, camera=target.camera)


@dataclass
class PreviewTensors:
    preview: torch.Tensor
    edited_mask: torch.Tensor
    valid: torch.Tensor
    edited_depth: torch.Tensor
    timings_ms: dict[str, float]


def preview_target(image: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor, per_object: tuple,
                   target: EditTarget, fov_deg: float, with_depth: bool) -> PreviewTensors:
    """The instant preview of ``target``: a camera move (``preview_edit(move_camera=True)``, as
    ``handles preview --camera``), one object (``preview_edit``) or several objects (one z-buffer,
    :func:`~diffusion_handles.geometry.compute_multi_edit`; edited depth over the background
    with all of them filled in)."""
    from diffusion_handles.preview import preview_edit

    if target.camera:
        res = preview_edit(image, depth, mask, target.edits[0], fov_deg, with_depth=with_depth, move_camera=True)
        return PreviewTensors(res.preview, res.edited_mask, res.valid, res.edited_depth, res.timings_ms)
    check_background(mask)  # the render fills the background from it: refuse now, not after minutes
    if not target.multi:
        res = preview_edit(image, depth, mask, target.edits[0], fov_deg, with_depth=with_depth)
        return PreviewTensors(res.preview, res.edited_mask, res.valid, res.edited_depth, res.timings_ms)
    t0 = time.perf_counter()
    with object_names():
        geom = compute_multi_edit(depth, list(per_object), target.edits, Camera(depth.shape[-2], depth.shape[-1], fov_deg))
    t1 = time.perf_counter()
    preview = render_preview(image, geom)
    t2 = time.perf_counter()
    if with_depth:
        d_edit = edited_depth(geom, background_depth_fill(depth, mask))
    else:
        d_edit = torch.where(torch.isfinite(geom.zbuffer), geom.zbuffer, torch.zeros_like(depth))
    t3 = time.perf_counter()
    timings = {"geometry": (t1 - t0) * 1e3, "render": (t2 - t1) * 1e3, "edited_depth": (t3 - t2) * 1e3,
               "total": (t3 - t0) * 1e3}
    return PreviewTensors(preview, geom.edited_mask, geom.valid, d_edit, timings)
