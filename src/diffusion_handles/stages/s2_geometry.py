"""Stage 2 of an edit: the 3D edit's geometry at the work size (Sec. 5.1).

Per edit kind: the flow of every pixel (:class:`~diffusion_handles.geometry.EditGeometry`), the
edited depth ``d'`` that conditions the generation, the soft region the generation replaces (1 =
generated, 0 = kept), the image kept outside it and the instant preview. A removal has no flow:
its region is the object grown for its shadow, its ``d'`` the background depth ``d'_b``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffusion_handles.diffusion.config import GuidanceConfig
from diffusion_handles.geometry import (
    EditGeometry,
    background_depth_fill,
    camera_move,
    camera_move_depth,
    compute_camera_move,
    compute_edit,
    compute_multi_edit,
    edit_region,
    edited_depth,
    hole_region,
    removal_region,
    render_preview,
    warp,
)
from diffusion_handles.geometry.shadow import Effects
from diffusion_handles.geometry.transform import HandleEdit
from diffusion_handles.stages.s1_prepare import Prepared

MAGENTA = (1.0, 0.0, 1.0)  # the colour of pixels the preview cannot show (holes, removed region)


@dataclass
class Geometry:
    """Stage 2's output, every tensor ``(1, C, H, W)`` at the work size.

    Attributes:
        flow: the edit's geometry (flow ``source``, masks ``M_o``, ``M'_o``, ``M_v``), or ``None``
            for a removal (the identity flow).
        edited_depth: ``d'`` (C = 1), z-depth in scene units.
        region: the soft region (C = 1) in [0, 1]: 1 = generated, 0 = kept.
        hard: the hard region (C = 1) in {0, 1} behind ``region``.
        keep_image: (C = 3) the image the composite keeps outside ``region``, or ``None`` for the
            input itself (a camera move keeps the input warped to the new view).
        preview: (C = 3) the instant preview: the input warped by the flow, holes magenta.
        edited_mask: ``M'_o`` (C = 1): where the moved object lands (empty for a removal).
        valid: ``M_v`` (C = 1): pixels the flow fills (for a removal: outside the region).
        effects: the object's old and new shadows (stage 3, :mod:`.s3_effects`); ``None`` before it.
    """

    flow: EditGeometry | None
    edited_depth: torch.Tensor
    region: torch.Tensor
    hard: torch.Tensor
    keep_image: torch.Tensor | None
    preview: torch.Tensor
    edited_mask: torch.Tensor
    valid: torch.Tensor
    effects: Effects | None = None


def geometry(prep: Prepared, guidance: GuidanceConfig) -> Geometry:
    """Stage 2: the geometry of ``prep.request.kind`` (see the module docstring)."""
    return _BY_KIND[prep.request.kind](prep, guidance)


def _object(prep: Prepared, guidance: GuidanceConfig) -> Geometry:
    """One object (the paper): M_o moved by the transform about its centroid."""
    inv = prep.inverted
    depth = inv.depth.float()
    pivot = None if prep.pivots is None else prep.pivots[0]
    flow = compute_edit(depth, inv.mask, prep.request.transforms[0], prep.camera, pivot=pivot,
                        complete_back=guidance.complete_back)
    d_edit = edited_depth(flow, background_fill(prep, inv.mask))
    return _with_flow(prep, flow, d_edit, edit_region(flow.object_mask, flow.edited_mask, flow.valid))


def _objects(prep: Prepared, guidance: GuidanceConfig) -> Geometry:
    """Several objects in one z-buffer, one transform each."""
    depth = prep.inverted.depth.float()
    flow = compute_multi_edit(depth, prep.object_masks, list(prep.request.transforms), prep.camera, pivots=prep.pivots)
    d_edit = edited_depth(flow, background_fill(prep, flow.object_mask))
    return _with_flow(prep, flow, d_edit, edit_region(flow.object_mask, flow.edited_mask, flow.valid))


def _camera(prep: Prepared, guidance: GuidanceConfig) -> Geometry:
    """A camera move: every scene point moves; the composite keeps the input warped to the new
    view outside the grown holes."""
    inv = prep.inverted
    move = prep.request.transforms[0]
    flow = compute_camera_move(inv.depth.float(), camera_move(move) if isinstance(move, HandleEdit) else move,
                               prep.camera)
    src = inv.image.float() if prep.source_work is None else prep.source_work
    geo = _with_flow(prep, flow, camera_move_depth(flow), hole_region(flow.valid))
    geo.keep_image = warp(src, flow.source.float())
    return geo


def _removal(prep: Prepared, guidance: GuidanceConfig) -> Geometry:
    """A removal: the object's region grown for its shadow; ``d' = d'_b``."""
    inv = prep.inverted
    hard, soft = removal_region(inv.mask, prep.request.region_margin)
    keep = 1.0 - hard
    image = inv.image.float()
    magenta = torch.tensor(MAGENTA, device=image.device).view(1, 3, 1, 1)
    preview = image * keep.to(image.device) + magenta * hard.to(image.device)
    return Geometry(None, background_fill(prep, inv.mask), soft, hard, None, preview,
                    torch.zeros_like(inv.depth.float()), keep)


def _with_flow(prep: Prepared, flow: EditGeometry, d_edit: torch.Tensor, regions) -> Geometry:
    hard, soft = regions
    return Geometry(flow, d_edit, soft, hard, None, render_preview(prep.inverted.image.float(), flow),
                    flow.edited_mask, flow.valid)


_BY_KIND = {"object": _object, "objects": _objects, "camera": _camera, "remove": _removal}


# ---- d'_b: the harmonic fill, solved once per (depth, mask) --------------------------------------
_FILL: dict = {}


def background_fill(prep: Prepared, mask: torch.Tensor) -> torch.Tensor:
    """``d'_b`` ``(1, 1, H, W)``: the given one, or the harmonic fill of ``mask`` in the work-size
    depth. The last fill is kept (keyed by the depth's and mask's bytes), so the frames of a
    trajectory, which edit one inversion many times, solve one Poisson system, not one each."""
    if prep.background is not None:
        return prep.background
    depth = prep.inverted.depth.float()
    key = (tuple(depth.shape), hash(depth.detach().cpu().numpy().tobytes()),
           hash(mask.detach().cpu().numpy().tobytes()))
    if _FILL.get("key") != key:
        _FILL.clear()
        _FILL.update(key=key, fill=background_depth_fill(depth, mask))
    return _FILL["fill"]
