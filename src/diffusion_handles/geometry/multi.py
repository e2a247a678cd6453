"""Several objects edited in one pass: one z-buffer for all moved objects (Sec. 5.1, extended).

The paper moves one object. With ``K`` objects, each with its own mask ``M_k`` and transform
``T_k``, every object is lifted, transformed and splatted as in :func:`~.edit.compute_edit`, but
against the background *without any of the objects* (their source pixels are treated as empty,
``z = +inf``), so an object is never hidden by another object's *old* position. The ``K``
results are then z-tested against each other: at each pixel the nearest surface wins, among the
static background and the ``K`` moved objects. A pixel of any source mask that no moved object
covers is a disocclusion hole (``M_v = 0``).

Per pixel the winner's flow (Eq. 5) and depth (Eq. 7) are kept, so the warp of activations
(Eq. 6) moves each object by its own transform; the per-object edited masks ``M'_o,k`` (each
``W[M_k, F] * M_v`` restricted to the pixels object ``k`` won) give one object energy (Eq. 8)
per object.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry.camera import Camera, check_depth
from diffusion_handles.geometry.edit import (
    EditGeometry,
    FeatureEdit,
    check_mask_shape,
    compute_edit,
    emptied,
)
from diffusion_handles.geometry.poisson import check_mask_leaves_background
from diffusion_handles.geometry.transform import HandleEdit, Similarity


@dataclass(frozen=True)
class MultiEditGeometry(EditGeometry):
    """:class:`EditGeometry` of ``K`` objects moved together (batch size 1).

    The inherited fields describe the union: ``object_mask`` = union of the source masks,
    ``object_wins`` = pixels won by any moved object, ``edited_mask`` = sum of the per-object
    ``M'_o,k`` (disjoint), ``zbuffer`` / ``object_depth`` / ``source`` / ``flow`` from the winner
    at each pixel; ``transforms`` and ``pivots`` ``(K, 3)`` are per *object* (not per batch item).

    Extra attributes:
        parts: one :class:`EditGeometry` per object, its ``object_wins`` restricted to the pixels
            it won across objects (used to evaluate each object's flow at feature resolution).
        labels: ``(1, 1, H, W)`` int64, the index of the object that won each pixel, -1 elsewhere.
        edited_masks: ``(1, K, H, W)`` the per-object ``M'_o,k`` in [0, 1].
    """

    parts: tuple[EditGeometry, ...] = ()
    labels: torch.Tensor | None = None
    edited_masks: torch.Tensor | None = None

    def at_resolution(self, height: int, width: int) -> FeatureEdit:
        """The edit on an ``height x width`` grid: each object's exact flow where it won."""
        if (height, width) == (self.camera.height, self.camera.width):
            return FeatureEdit(self.source, self.flow, self.valid, self.edited_mask)
        identity = None
        source = None
        for part in self.parts:
            fe = part.at_resolution(height, width)
            if identity is None:  # a part's source is the identity wherever it did not win
                identity = fe.source + fe.flow
                source = identity.clone()
            source = source + (fe.source - identity)
        flow = identity - source
        valid = F.interpolate(self.valid, size=(height, width), mode="area")
        edited = F.interpolate(self.edited_mask, size=(height, width), mode="area")
        return FeatureEdit(source, flow, valid, edited)

    def object_masks_at(self, height: int, width: int) -> torch.Tensor:
        """``(1, K, height, width)`` per-object ``M'_o,k`` (area-averaged): one Eq. 8 term each."""
        if (height, width) == (self.camera.height, self.camera.width):
            return self.edited_masks
        return F.interpolate(self.edited_masks, size=(height, width), mode="area")


def disjoint_masks(masks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Object masks made disjoint: a pixel claimed by several masks goes to the first listed.

    Args:
        masks: ``K`` masks ``(1, 1, H, W)`` (> 0.5 = object).

    Returns:
        ``K`` float masks in {0, 1}.

    Raises:
        HandlesError: a mask is empty, or empty once the earlier masks took their pixels.
    """
    taken = None
    out = []
    for k, m in enumerate(masks):
        b = m > 0.5
        if not bool(b.any()):
            raise HandlesError(f"edits[{k}].mask: expected at least one object pixel, got an empty mask")
        own = b if taken is None else b & ~taken
        if not bool(own.any()):
            raise HandlesError(f"edits[{k}].mask: expected pixels of its own, got a mask entirely inside "
                               "earlier objects' masks (a pixel belongs to the first object listed)")
        out.append(own.to(m.dtype if m.is_floating_point() else torch.float32))
        taken = b if taken is None else taken | b
    return out


def compute_multi_edit(depth: torch.Tensor, masks: Sequence[torch.Tensor],
                       edits: Sequence[HandleEdit | Similarity], camera: Camera | None = None,
                       *, close_radius: int = 1, pivots: Sequence[torch.Tensor] | None = None) -> MultiEditGeometry:
    """Move ``K`` objects at once with one z-buffer (see the module docstring; Sec. 5.1).

    Args:
        depth: ``(1, 1, H, W)`` z-depth in scene units, finite and > 0.
        masks: ``K`` object masks ``(1, 1, H, W)``, made disjoint by :func:`disjoint_masks`.
        edits: ``K`` transforms; a :class:`HandleEdit` rotates and scales about its own
            object's centroid.
        camera: intrinsics (default 55 degrees horizontal field of view).
        close_radius: see :func:`~.edit.compute_edit`.
        pivots: ``K`` rotation/scale centres ``(3,)`` (scene units) for the :class:`HandleEdit` s,
            default each object's centroid in ``depth``.

    Returns:
        :class:`MultiEditGeometry` at image resolution.

    Raises:
        HandlesError: no objects, a count mismatch, an empty or fully overlapped mask, masks
            that together leave no background, or any per-object failure of
            :func:`~.edit.compute_edit` (the message is prefixed with ``edits[k]``).
    """
    depth, masks, union = _check_multi_inputs(depth, masks, edits)
    camera = camera or Camera(depth.shape[-2], depth.shape[-1])
    parts = _edit_each_object(depth, masks, union, edits, camera, close_radius, pivots)
    labels, zmin = _nearest_surface(depth, union, parts)
    wins_any = labels >= 0
    valid = (~union | wins_any).to(depth.dtype)
    won = tuple(dataclasses.replace(p, object_wins=labels == k, zbuffer=emptied(p.zbuffer, labels != k))
                for k, p in enumerate(parts))
    edited_masks = torch.cat([torch.where(labels == k, p.edited_mask, torch.zeros_like(p.edited_mask))
                              for k, p in enumerate(parts)], dim=1)  # (1, K, H, W)
    first = parts[0]  # a part's source is the identity wherever it did not win
    return MultiEditGeometry(
        source=_winners_value(labels, [p.source for p in parts], first.source + first.flow),
        flow=_winners_value(labels, [p.flow for p in parts], torch.zeros_like(first.flow)),
        valid=valid, edited_mask=edited_masks.sum(1, keepdim=True), camera=camera,
        transforms=tuple(p.transforms[0] for p in parts), object_mask=union.to(depth.dtype),
        object_wins=wins_any, zbuffer=emptied(zmin, valid <= 0.5),
        object_depth=_winners_value(labels, [p.object_depth for p in parts], torch.zeros_like(depth)),
        object_distance=_winners_value(labels, [p.object_distance for p in parts], torch.zeros_like(depth)),
        pivots=torch.cat([p.pivots for p in parts], dim=0), parts=won, labels=labels,
        edited_masks=edited_masks,
    )


def _check_multi_inputs(depth: torch.Tensor, masks: Sequence[torch.Tensor],
                        edits: Sequence) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Validate the inputs of :func:`compute_multi_edit`.

    Returns:
        ``(depth, masks, union)``: depth ``(1, 1, H, W)``, the ``K`` disjoint float masks
        ``(1, 1, H, W)`` in {0, 1}, and their union ``(1, 1, H, W)`` bool.
    """
    depth = check_depth(depth)
    if depth.shape[0] != 1:
        raise HandlesError(f"depth: expected one image (1, 1, H, W), got batch {depth.shape[0]}")
    if len(masks) == 0:
        raise HandlesError("edits: expected at least one object, got none")
    if len(masks) != len(edits):
        raise HandlesError(f"edits: expected one transform per mask, got {len(edits)} transforms for {len(masks)} masks")
    for k, m in enumerate(masks):
        check_mask_shape(m, depth, f"edits[{k}].mask")
    masks = disjoint_masks([m.to(depth.dtype) for m in masks])
    union = torch.stack([m > 0.5 for m in masks]).any(0)  # (1, 1, H, W)
    check_mask_leaves_background(union, "edits")
    return depth, masks, union


def _edit_each_object(depth: torch.Tensor, masks: list[torch.Tensor], union: torch.Tensor,
                      edits: Sequence[HandleEdit | Similarity], camera: Camera,
                      close_radius: int, pivots: Sequence[torch.Tensor] | None = None) -> list[EditGeometry]:
    """:func:`~.edit.compute_edit` of each object against the background without any object:
    the other objects' pixels are empty (``+inf``), so no object hides behind another's old place.

    Raises:
        HandlesError: an object's edit fails (the message is prefixed with ``edits[k]``).
    """
    parts = []
    for k, (m, e) in enumerate(zip(masks, edits, strict=True)):
        d_k = emptied(depth, union & ~(m > 0.5))
        try:
            pivot = None if pivots is None else pivots[k]
            parts.append(compute_edit(d_k, m, e, camera, pivot=pivot, close_radius=close_radius,
                                      require_background=False))
        except HandlesError as err:
            raise HandlesError(f"edits[{k}]: {err}") from None
    return parts


def _nearest_surface(depth: torch.Tensor, union: torch.Tensor,
                     parts: list[EditGeometry]) -> tuple[torch.Tensor, torch.Tensor]:
    """One z-buffer across objects: at each pixel the nearest of the static background (``depth``
    ``(1, 1, H, W)`` outside the ``union`` of the source masks) and every moved object (its
    splatted z, as :func:`~.edit.compute_edit`'s z-test uses).

    Returns:
        ``(labels, zmin)``: ``(1, 1, H, W)`` int64 index of the object that won each pixel (-1
        for the background or a hole), and ``(1, 1, H, W)`` the nearest z-depth (``+inf``: none).
    """
    candidates = [emptied(depth, union)] + [emptied(p.zbuffer, ~p.object_wins) for p in parts]
    zs = torch.cat(candidates, dim=1)  # (1, K + 1, H, W)
    zmin, arg = zs.min(dim=1, keepdim=True)
    labels = torch.where(torch.isfinite(zmin) & (arg > 0), arg - 1, torch.full_like(arg, -1))  # (1, 1, H, W)
    return labels, zmin


def _winners_value(labels: torch.Tensor, values: list[torch.Tensor], default: torch.Tensor) -> torch.Tensor:
    """Per pixel, ``values[k]`` of the object ``k`` that won it (``labels`` ``(1, 1, H, W)``),
    ``default`` where none did; all ``(1, C, H, W)``."""
    out = default
    for k, v in enumerate(values):
        out = torch.where(labels == k, v, out)
    return out
