"""The 3D edit of Sec. 5.1: lift -> transform -> project, the 3D-aware flow (Eq. 5), the valid
mask M_v, the edited object mask M'_o and the edited object depth (Eq. 7).

How the inverse of ``P o T o L_d`` is found (Eq. 5): every pixel is lifted with its depth; object
pixels are moved by ``T``, the rest stay. Object points are forward-splatted into a z-buffer
(:mod:`.splat`), background points keep their own pixel, and each target pixel takes the point
nearest the camera (overlaps) or none (a hole: ``M_v = 0``). For a pixel won by the object, its
source position is recovered *exactly* rather than from the winning splat: the target pixel is
lifted with the z-buffer's depth and moved back with ``T^-1``, then projected (sub-pixel
accurate, and valid at any feature resolution). Background pixels are their own source.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry.camera import (
    Camera,
    check_depth,
    lift_at,
    pixel_grid,
    pixels_to_normalized,
    project,
)
from diffusion_handles.geometry.poisson import (
    check_mask_leaves_background,
    fill_depth,
    poisson_composite,
)
from diffusion_handles.geometry.shell import shell_close_radius, shell_zbuffer
from diffusion_handles.geometry.splat import MAX_FOOTPRINT, close_zbuffer, zbuffer_splat
from diffusion_handles.geometry.transform import HandleEdit, Similarity
from diffusion_handles.geometry.warp import warp, warp_masked


@dataclass(frozen=True)
class FeatureEdit:
    """The edit sampled on one grid (image or feature resolution).

    Attributes:
        source: ``(B, 2, h, w)`` normalised ``[0, 1]^2`` source coordinates ``u - F(u)``.
        flow: ``(B, 2, h, w)`` the 3D-aware flow ``F`` of Eq. 5, normalised units.
        valid: ``(B, 1, h, w)`` M_v in ``[0, 1]`` (1 = not a hole; fractional at feature size
            where a cell is partly a hole).
        edited_mask: ``(B, 1, h, w)`` M'_o = W[M_o, F] * M_v in ``[0, 1]``.
    """

    source: torch.Tensor
    flow: torch.Tensor
    valid: torch.Tensor
    edited_mask: torch.Tensor


@dataclass(frozen=True)
class EditGeometry(FeatureEdit):
    """Everything the 3D edit produces at image resolution (``H x W`` of the depth map).

    Extra attributes:
        camera: the intrinsics used.
        transforms: one resolved :class:`Similarity` per batch item (scene units).
        object_mask: ``(B, 1, H, W)`` the input object mask M_o in {0, 1}.
        object_wins: ``(B, 1, H, W)`` bool, pixels where a transformed object point is the
            nearest surface.
        zbuffer: ``(B, 1, H, W)`` z-depth of the nearest surface after the edit, ``+inf`` in holes.
        object_depth: ``(B, 1, H, W)`` d'_o of Eq. 7 as z-depth (0 outside the edited object).
        object_distance: ``(B, 1, H, W)`` d'_o of Eq. 7 as camera distance ``||p||``.
        pivots: ``(B, 3)`` the rotation/scale centres (object centroids), scene units.
        whole_scene: the "object" is the whole scene (a camera move, :func:`compute_camera_move`):
            every valid pixel follows its warped activations and nothing is background.
        back_depth: ``(B, 1, H, W)`` z-depth of the object's mirrored back where it is the
            nearest surface, the front is not and the object used to be (:mod:`.shell`; holes
            already, ``M_v = 0``), 0 elsewhere; ``None`` when not computed (``complete_back=False``).
    """

    camera: Camera
    transforms: tuple[Similarity, ...]
    object_mask: torch.Tensor
    object_wins: torch.Tensor
    zbuffer: torch.Tensor
    object_depth: torch.Tensor
    object_distance: torch.Tensor
    pivots: torch.Tensor
    whole_scene: bool = False
    back_depth: torch.Tensor | None = None

    def at_resolution(self, height: int, width: int) -> FeatureEdit:
        """The same edit on an ``height x width`` feature grid (e.g. a UNet decoder block).

        The flow is evaluated exactly at the feature grid's pixel centres (same normalised
        coordinates as the image); masks are area-averaged from image resolution.
        """
        if (height, width) == (self.camera.height, self.camera.width):
            return FeatureEdit(self.source, self.flow, self.valid, self.edited_mask)
        b = self.zbuffer.shape[0]
        dtype, device = self.source.dtype, self.source.device
        centres = pixel_grid(height, width, dtype, device)  # (2, h, w) in feature pixels
        norm = pixels_to_normalized(centres.permute(1, 2, 0), height, width)  # (h, w, 2)
        img_px = norm * torch.tensor([self.camera.width, self.camera.height], dtype=dtype, device=device)
        # which surface is under each feature centre: the nearest image pixel decides
        ix = img_px[..., 0].floor().long().clamp(0, self.camera.width - 1)
        iy = img_px[..., 1].floor().long().clamp(0, self.camera.height - 1)
        wins = self.object_wins[:, 0, iy, ix]  # (B, h, w)
        # its depth: inverse depth (affine in pixels on a plane) interpolated over object pixels
        won = self.object_wins.to(dtype)
        inv = torch.where(self.object_wins, 1.0 / self.zbuffer.to(dtype), torch.zeros_like(won))
        inv_at, weight = warp_masked(inv, won, norm.permute(2, 0, 1)[None].expand(b, -1, -1, -1))
        wins = wins & (weight[:, 0] > 1e-6)
        z = 1.0 / inv_at[:, 0].clamp(min=1e-12)  # (B, h, w)
        source = norm.expand(b, -1, -1, -1).clone()  # (B, h, w, 2)
        for i, t in enumerate(self.transforms):
            sel = wins[i]
            if sel.any():
                src_px = _inverse_map(img_px[sel], z[i][sel], t, self.camera)
                source[i][sel] = pixels_to_normalized(src_px, self.camera.height, self.camera.width)
        source = source.permute(0, 3, 1, 2).contiguous()  # (B, 2, h, w)
        flow = norm.permute(2, 0, 1)[None] - source
        valid = F.interpolate(self.valid, size=(height, width), mode="area")
        edited = F.interpolate(self.edited_mask, size=(height, width), mode="area")
        return FeatureEdit(source, flow, valid, edited)


def _inverse_map(pixels: torch.Tensor, z: torch.Tensor, transform: Similarity, camera: Camera) -> torch.Tensor:
    """Source pixel positions ``(N, 2)`` of target pixels ``(N, 2)`` with z-depths ``(N,)``:
    ``P(T^-1(lift(u', z')))``."""
    pts = lift_at(pixels.double(), z.double(), camera)
    src, _ = project(transform.inverse().apply(pts), camera)
    return src.to(pixels.dtype)


def object_centroid(points: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the lifted object points: the pivot for rotation and scale.

    Args:
        points: ``(B, 3, H, W)`` lifted points; mask: ``(B, 1, H, W)`` in {0, 1}.

    Returns:
        ``(B, 3)`` centroids in scene units (float64).
    """
    bi, _, yi, xi = torch.nonzero(mask > 0.5, as_tuple=True)
    return _centroids(points.permute(0, 2, 3, 1)[bi, yi, xi], bi, points.shape[0])


def mask_pivot(depth: torch.Tensor, mask: torch.Tensor, camera: Camera) -> torch.Tensor:
    """The object's centroid (the rotation/scale pivot, :func:`object_centroid`) lifting only the
    pixels of ``mask``, so a 12-megapixel photo costs its object's pixels, not the whole image.

    Args:
        depth: ``(1, 1, H, W)`` z-depth in scene units; mask: ``(1, 1, H, W)`` (> 0.5 = object);
            camera: the photo's intrinsics (``H x W``).

    Returns:
        ``(3,)`` float64, scene units (camera axes).
    """
    ys, xs = torch.nonzero(mask[0, 0] > 0.5, as_tuple=True)
    if ys.numel() == 0:
        raise HandlesError("mask: expected at least one object pixel, got an empty mask")
    pixels = torch.stack([xs.double() + 0.5, ys.double() + 0.5], dim=-1)  # pixel centres
    pts = lift_at(pixels, depth[0, 0][ys, xs].double(), camera)
    return _centroids(pts, torch.zeros(pts.shape[0], dtype=torch.long, device=pts.device), 1)[0]


def _centroids(points: torch.Tensor, batch_index: torch.Tensor, batch: int) -> torch.Tensor:
    """Per-image mean of object points ``(N, 3)`` with batch indices ``(N,)``: ``(B, 3)`` float64.
    The one definition of the rotation/scale pivot."""
    counts = torch.bincount(batch_index, minlength=batch).to(torch.float64).clamp(min=1.0)
    sums = torch.zeros(batch, 3, dtype=torch.float64, device=points.device).index_add_(0, batch_index, points.double())
    return sums / counts[:, None]


def compute_edit(
    depth: torch.Tensor,
    mask: torch.Tensor,
    edit: HandleEdit | Similarity,
    camera: Camera | None = None,
    *,
    pivot: torch.Tensor | None = None,
    close_radius: int = 1,
    require_background: bool = True,
    complete_back: bool = False,
) -> EditGeometry:
    """Apply a 3D edit to the object ``mask`` of a scene with z-depth ``depth`` (Sec. 5.1).

    Args:
        depth: ``(B, 1, H, W)`` or ``(H, W)`` z-depth in scene units, finite and > 0.
        mask: same size, the object mask M_o (> 0.5 = object). An all-ones mask with a
            :func:`~diffusion_handles.geometry.transform.camera_move` transform is a camera move.
        edit: a :class:`HandleEdit` (rotation and scale about ``pivot``) or a resolved
            :class:`Similarity` (used as is, ``pivot`` ignored).
        camera: intrinsics; default 55 degree horizontal field of view for this size.
        pivot: ``(B, 3)`` or ``(3,)`` rotation/scale centre; default the object's centroid.
        close_radius: radius of the morphological closing that fills splatting pinholes.
        require_background: refuse a mask that leaves no background to fill the object's
            place from (:func:`~.poisson.check_mask_leaves_background`); a camera move
            (:func:`compute_camera_move`, all-ones mask) passes False.
        complete_back: also move the object's back, mirrored from its front (:mod:`.shell`),
            so that a side a rotation uncovers in the object's old place gets the back's depth
            (``back_depth``) instead of the background's.

    Returns:
        :class:`EditGeometry` at image resolution.

    Raises:
        HandlesError: the object is empty or covers the whole image, moves behind the camera
            (the message names the part of the transform that does it), or is not visible
            after the edit (out of frame or fully hidden).
    """
    depth, obj, camera = _check_edit_inputs(depth, mask, camera, require_background)
    # Steps 1-2, lift and transform: only the object's pixels move, so only they are lifted
    pts, transforms, pivots = _lift_and_move(depth, obj, edit, camera, pivot)
    # Step 3, project and splat: one z-buffer of the moved object and the background
    object_wins, zbuffer = _splat_object(depth, obj, pts, transforms, camera, close_radius)
    valid = (~obj | object_wins).to(depth.dtype)  # background keeps its pixel; the object's old place is a hole unless covered
    back_depth = _back_depth(depth, obj, object_wins, zbuffer, transforms, camera) if complete_back else None
    # Eq. 5: inverse correspondence at the pixels the object won; elsewhere the source is the
    # pixel itself (identity flow).
    won = _winner_sources(object_wins, zbuffer, transforms, camera)
    source, flow = _flow_field(won, depth)
    edited_mask, object_depth, object_distance = _object_signals(pts, won, depth)
    object_wins &= object_depth > 0
    return EditGeometry(
        source=source,
        flow=flow,
        valid=valid,
        edited_mask=edited_mask,
        camera=camera,
        transforms=transforms,
        object_mask=obj.to(depth.dtype),
        object_wins=object_wins,
        zbuffer=zbuffer,
        object_depth=object_depth,
        object_distance=object_distance,
        pivots=pivots,
        back_depth=back_depth,
    )


def check_mask_shape(mask: torch.Tensor, depth: torch.Tensor, name: str = "mask") -> None:
    """Refuse a mask whose shape is not the depth's ``(B, 1, H, W)`` (``name`` labels the message)."""
    if tuple(mask.shape) != tuple(depth.shape):
        raise HandlesError(f"{name}: expected shape {tuple(depth.shape)} (same as depth), got {tuple(mask.shape)}")


def emptied(depth: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """``depth`` ``(B, 1, H, W)`` with the pixels of ``region`` (bool, broadcastable) made empty:
    ``+inf``, no surface there (the z-buffer value of a hole)."""
    return torch.where(region, torch.full_like(depth, math.inf), depth)


def _check_edit_inputs(depth: torch.Tensor, mask: torch.Tensor, camera: Camera | None,
                       require_background: bool) -> tuple[torch.Tensor, torch.Tensor, Camera]:
    """Validate the inputs of :func:`compute_edit`.

    Returns:
        ``(depth, obj, camera)``: depth ``(B, 1, H, W)``, the object ``(B, 1, H, W)`` bool, and
        the camera (default 55 degrees for this size).
    """
    depth = check_depth(depth)
    mask = check_depth(mask.to(depth.dtype), "mask")
    _, _, h, w = depth.shape
    check_mask_shape(mask, depth)
    camera = camera or Camera(h, w)
    if (camera.height, camera.width) != (h, w):
        raise HandlesError(f"camera: expected size {h}x{w} (the depth's), got {camera.height}x{camera.width}")
    obj = mask > 0.5  # (B, 1, H, W)
    if not bool(obj.flatten(1).any(1).all()):
        raise HandlesError("mask: expected at least one object pixel in every image, got an empty mask")
    if require_background:
        check_mask_leaves_background(obj)
    return depth, obj, camera


@dataclass(frozen=True)
class _ObjectPoints:
    """The object's ``N`` pixels (over the whole batch) through Steps 1-2 of Sec. 5.1.

    Attributes:
        batch, row, col: ``(N,)`` int64 image index, y and x of each object pixel.
        points: ``(N, 3)`` L_d(u), the pixel centres lifted with their z-depth (scene units).
        moved: ``(N, 3)`` T(L_d(u)) with each image's own transform (scene units).
    """

    batch: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    points: torch.Tensor
    moved: torch.Tensor


def _lift_and_move(depth: torch.Tensor, obj: torch.Tensor, edit: HandleEdit | Similarity, camera: Camera,
                   pivot: torch.Tensor | None) -> tuple[_ObjectPoints, tuple[Similarity, ...], torch.Tensor]:
    """Steps 1-2 of Sec. 5.1 on the object's pixels: lift ``L_d``, then transform ``T``.

    Args:
        depth: ``(B, 1, H, W)`` z-depth; obj: ``(B, 1, H, W)`` bool object mask.
        edit, pivot: as in :func:`compute_edit`.

    Returns:
        ``(points, transforms, pivots)``: the object's points, one resolved :class:`Similarity`
        per image, and the ``(B, 3)`` pivots (scene units).

    Raises:
        HandlesError: the transform gives non-finite points or puts any at or behind the camera.
    """
    bi, _, yi, xi = torch.nonzero(obj, as_tuple=True)  # (N,) indices
    src_px = torch.stack([xi, yi], dim=-1).to(depth.dtype) + 0.5  # (N, 2) pixel centres
    src_pts = lift_at(src_px, depth[bi, 0, yi, xi], camera)  # (N, 3)
    transforms, pivots = _resolve_transforms(edit, src_pts, bi, depth.shape[0], pivot)
    if len(transforms) == 1:
        moved = transforms[0].apply(src_pts)
    else:
        moved = torch.empty_like(src_pts)
        for i, t in enumerate(transforms):
            sel = bi == i
            moved[sel] = t.apply(src_pts[sel])
    overflow = ~torch.isfinite(moved).all(dim=1)
    if bool(overflow.any()):
        raise HandlesError(f"transform: gives non-finite positions for {int(overflow.sum())} of {moved.shape[0]} object "
                           f"pixels (numbers too large for the scene's {depth.dtype} depth); use a smaller scale or translation")
    behind = moved[:, 2] <= 1e-6
    if bool(behind.any()):
        raise HandlesError(_behind_camera_message(edit, src_pts, bi, pivots, behind))
    return _ObjectPoints(bi, yi, xi, src_pts, moved), transforms, pivots


def _resolve_transforms(edit: HandleEdit | Similarity, points: torch.Tensor, batch_index: torch.Tensor, batch: int,
                        pivot: torch.Tensor | None) -> tuple[tuple[Similarity, ...], torch.Tensor]:
    """One :class:`Similarity` per image and the ``(B, 3)`` pivots: a :class:`HandleEdit` turns
    and scales about ``pivot`` (default the object's centroid of the lifted ``points`` ``(N, 3)``);
    a :class:`Similarity` is used as is (the pivots are then the centroids)."""
    centroids = _centroids(points, batch_index, batch)
    if isinstance(edit, Similarity):
        return tuple(edit for _ in range(batch)), centroids
    pivots = centroids if pivot is None else torch.as_tensor(pivot, dtype=torch.float64).reshape(-1, 3).expand(batch, 3)
    return tuple(edit.resolve(pivots[i]) for i in range(batch)), pivots


def _splat_object(depth: torch.Tensor, obj: torch.Tensor, pts: _ObjectPoints, transforms: tuple[Similarity, ...],
                  camera: Camera, close_radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 3 of Sec. 5.1: project the moved object, splat it into a z-buffer (over its projected
    bounding box only) and z-test it against the background, whose object pixels are empty.

    The splat footprint is the local magnification ``s * z / z'`` (pixels).

    Returns:
        ``(object_wins, zbuffer)``: ``(B, 1, H, W)`` bool, pixels where the moved object is the
        nearest surface; ``(B, 1, H, W)`` z-depth of the nearest surface, ``+inf`` in holes.

    Raises:
        HandlesError: the object leaves the frame or is hidden in some image.
    """
    b, _, h, w = depth.shape
    dtype, device = depth.dtype, depth.device
    proj, z_new = project(pts.moved, camera)  # (N, 2), (N,)
    scales = torch.tensor([t.scale for t in transforms], dtype=dtype, device=device)[pts.batch]
    footprint = (scales * pts.points[:, 2] / z_new).clamp(1.0, MAX_FOOTPRINT)
    x0, y0, x1, y1 = _splat_window(proj, close_radius, h, w)
    origin = torch.tensor([x0, y0], dtype=dtype, device=device)
    z_obj = zbuffer_splat(proj - origin, z_new, pts.batch, footprint, b, y1 - y0, x1 - x0)
    z_obj = close_zbuffer(z_obj, close_radius)  # (B, 1, hc, wc)
    z_bg = emptied(depth[:, :, y0:y1, x0:x1], obj[:, :, y0:y1, x0:x1])
    wins_crop = torch.isfinite(z_obj) & (z_obj < z_bg)
    if not bool(wins_crop.flatten(1).any(1).all()):
        raise HandlesError("transform: the object is not visible after the edit (out of frame or hidden behind the scene)")
    object_wins = torch.zeros_like(obj)
    object_wins[:, :, y0:y1, x0:x1] = wins_crop
    zbuffer = emptied(depth, obj)
    zbuffer[:, :, y0:y1, x0:x1] = torch.where(wins_crop, z_obj, z_bg)
    return object_wins, zbuffer


def _splat_window(proj: torch.Tensor, close_radius: int, h: int, w: int) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``: the half-open pixel box, clipped to the ``h x w`` image, around the
    in-frame projections ``proj`` ``(N, 2)`` with room for the largest footprint and the closing.

    Raises:
        HandlesError: no projection is inside the frame.
    """
    in_frame = (proj[:, 0] > 0) & (proj[:, 0] < w) & (proj[:, 1] > 0) & (proj[:, 1] < h)
    if not bool(in_frame.any()):
        raise HandlesError("transform: moves the object completely out of the frame")
    margin = int(MAX_FOOTPRINT) + 2 * close_radius + 2
    lo = proj[in_frame].amin(0).floor().long() - margin
    hi = proj[in_frame].amax(0).ceil().long() + margin
    return max(int(lo[0]), 0), max(int(lo[1]), 0), min(int(hi[0]), w), min(int(hi[1]), h)


def _back_depth(depth: torch.Tensor, obj: torch.Tensor, object_wins: torch.Tensor, zbuffer: torch.Tensor,
                transforms: tuple[Similarity, ...], camera: Camera) -> torch.Tensor:
    """The uncovered back (``complete_back``, :mod:`.shell`): a hole whose depth is known.

    Front and back are closed as one surface (grazing front pixels spread apart when turned).

    Returns:
        ``(B, 1, H, W)`` z-depth of the back where it is nearest, the front is not, and the
        object used to be; 0 elsewhere.
    """
    h, w = depth.shape[-2:]
    z_back = shell_zbuffer(depth, obj, transforms, camera)
    front = emptied(zbuffer, ~object_wins)
    z_back = close_zbuffer(torch.minimum(front, z_back), shell_close_radius(h, w))
    revealed = torch.isfinite(z_back) & ~object_wins & (z_back < zbuffer) & obj  # only where the object was
    return torch.where(revealed, z_back, torch.zeros_like(z_back))


@dataclass(frozen=True)
class _Winners:
    """The ``M`` pixels (over the batch) the moved object won, with their exact sources (Eq. 5).

    Attributes:
        batch, row, col: ``(M,)`` int64 image index, y and x of each won pixel.
        target: ``(M, 2)`` its pixel centre u' (x, y), pixels.
        source: ``(M, 2)`` its source ``P(T^-1(L(u', z')))`` with the z-buffer's depth z', pixels.
    """

    batch: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    target: torch.Tensor
    source: torch.Tensor


def _winner_sources(object_wins: torch.Tensor, zbuffer: torch.Tensor, transforms: tuple[Similarity, ...],
                    camera: Camera) -> _Winners:
    """Eq. 5 at the pixels the object won (``object_wins`` ``(B, 1, H, W)`` bool): each target
    pixel lifted with its z-buffer depth ``(B, 1, H, W)``, moved back by ``T^-1`` and projected."""
    wb, _, wy, wx = torch.nonzero(object_wins, as_tuple=True)  # (M,)
    target_px = torch.stack([wx, wy], dim=-1).to(zbuffer.dtype) + 0.5  # (M, 2)
    z_win = zbuffer[wb, 0, wy, wx]
    source_win = torch.empty_like(target_px)
    for i, t in enumerate(transforms):
        sel = wb == i
        source_win[sel] = _inverse_map(target_px[sel], z_win[sel], t, camera)
    return _Winners(wb, wy, wx, target_px, source_win)


def _flow_field(won: _Winners, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 3D-aware flow ``F`` of Eq. 5 on the image grid of ``depth`` ``(B, 1, H, W)``: the
    winners' ``u' - source``, zero (identity) elsewhere.

    Returns:
        ``(source, flow)``, each ``(B, 2, H, W)`` in normalised ``[0, 1]^2`` units.
    """
    b, _, h, w = depth.shape
    dtype, device = depth.dtype, depth.device
    scale_hw = torch.tensor([w, h], dtype=dtype, device=device)
    grid = pixel_grid(h, w, dtype, device)  # (2, H, W)
    identity = (grid / scale_hw[:, None, None]).expand(b, 2, h, w)  # (B, 2, H, W) normalised
    flow = torch.zeros(b, 2, h, w, dtype=dtype, device=device)
    flow.permute(0, 2, 3, 1)[won.batch, won.row, won.col] = (won.target - won.source) / scale_hw
    return identity - flow, flow


def _object_signals(pts: _ObjectPoints, won: _Winners,
                    depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The object's signals warped to the pixels it won, sampled (bilinear, Eq. 4) at the
    winners' sources only: M_o for ``M'_o = W[M_o, F] * M_v``, and the transformed points
    ``T o L_d`` for Eq. 7.

    Returns:
        ``(edited_mask, object_depth, object_distance)``, each ``(B, 1, H, W)`` like ``depth``
        and zero away from the winners: M'_o in ``[0, 1]``, d'_o as z-depth and as camera
        distance ``||p||`` (scene units).
    """
    b, _, h, w = depth.shape
    dtype, device = depth.dtype, depth.device
    scale_hw = torch.tensor([w, h], dtype=dtype, device=device)
    moved_map = torch.zeros(b, 4, h, w, dtype=dtype, device=device)  # (x', y', z', 1) on the object
    moved_map.permute(0, 2, 3, 1)[pts.batch, pts.row, pts.col] = torch.cat(
        [pts.moved, torch.ones_like(pts.moved[:, :1])], dim=1)
    sampled = _sample_points(moved_map, won.source / scale_hw, won.batch)  # (M, 4)
    weight = sampled[:, 3]
    wb, wy, wx = won.batch, won.row, won.col
    edited_mask = torch.zeros_like(depth)
    edited_mask[wb, 0, wy, wx] = weight  # W[M_o, F] at the winners; zero elsewhere (holes or background)

    # Eq. 7: d'_o(u) = || W[T o L_d, F](u) ||, the warp restricted to object taps (renormalised)
    # so the object's edge does not mix in background points.
    ok = weight > 1e-3
    pts_won = sampled[:, :3] / weight.clamp(min=1e-3)[:, None]
    object_distance = torch.zeros_like(depth)
    object_depth = torch.zeros_like(depth)
    object_distance[wb[ok], 0, wy[ok], wx[ok]] = pts_won[ok].norm(dim=1)
    # the z-depth form of Eq. 7: the warped points' z (equal to ||.|| / ray norm in the interior,
    # and exact at the edge where renormalised taps need not lie on the target pixel's ray)
    object_depth[wb[ok], 0, wy[ok], wx[ok]] = pts_won[ok, 2]
    return edited_mask, object_depth, object_distance


def _behind_camera_message(edit: HandleEdit | Similarity, src_pts: torch.Tensor, bi: torch.Tensor,
                           pivots: torch.Tensor, behind: torch.Tensor) -> str:
    """Why an edit puts object points at or behind the camera, naming the part of the transform
    (translation, rotation or scale about the pivot) that does it on its own."""
    i = int(bi[behind][0])  # the first image with a point behind
    pts = src_pts[bi == i].double()
    z = pts[:, 2]
    head = (f"transform: puts {int(behind.sum())} of {behind.numel()} object pixels at or behind the camera (z <= 0; "
            f"the object spans z {float(z.min()):.3g} to {float(z.max()):.3g} scene units")
    if not isinstance(edit, HandleEdit):
        return head + "); the transform moves the object behind the camera"
    pivot = pivots[i].double()
    head += f", its pivot is at z {float(pivot[2]):.3g})"
    parts = [
        (f"the translation ({', '.join(f'{v:g}' for v in edit.translate)})", "a smaller translation towards the camera",
         HandleEdit(translate=edit.translate)),
        (f"the rotation of {edit.rotate_deg:g} degrees about the pivot", "a smaller rotation",
         HandleEdit(rotate_axis=edit.rotate_axis, rotate_deg=edit.rotate_deg)),
        (f"the scale {edit.scale:g} about the pivot", "a smaller scale", HandleEdit(scale=edit.scale)),
    ]
    alone = [(name, hint) for name, hint, part in parts
             if not part.is_identity() and bool((part.resolve(pivot).apply(pts)[:, 2] <= 1e-6).any())]
    if not alone:
        return head + "; the translation, rotation and scale together move the object behind the camera: use smaller ones"
    verb = "alone moves" if len(alone) == 1 else "each alone move"
    return (head + f"; {' and '.join(n for n, _ in alone)} {verb} the object behind the camera: use "
            + " or ".join(h for _, h in alone))


def _sample_points(x: torch.Tensor, coords: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``x`` (B, C, H, W) at normalised ``coords`` (M, 2) of images
    ``batch_index`` (M,); returns ``(M, C)`` (zero outside the image)."""
    out = torch.zeros(coords.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
    for i in range(x.shape[0]):
        sel = batch_index == i
        if bool(sel.any()):
            grid = coords[sel].to(x.dtype)[None, None] * 2.0 - 1.0  # (1, 1, m, 2)
            out[sel] = F.grid_sample(x[i : i + 1], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, :, 0].T
    return out


def compute_camera_move(depth: torch.Tensor, transform: Similarity, camera: Camera | None = None) -> EditGeometry:
    """A viewpoint change: ``transform`` (see :func:`~.transform.camera_move`) applied to *every*
    point of the scene, with the same machinery as an object edit."""
    depth = check_depth(depth)
    geom = compute_edit(depth, torch.ones_like(depth), transform, camera, require_background=False)
    return dataclasses.replace(geom, whole_scene=True)


def seam_band_px(height: int, width: int) -> int:
    """Width of the Poisson blending band around the object: 3 pixels at 512, at least 1."""
    return max(1, round(min(height, width) / 170))


def edited_depth(geometry: EditGeometry, background_depth: torch.Tensor, band_px: int | None = None) -> torch.Tensor:
    """The edited depth d' (Sec. 5.1): d'_o composited over the object-free depth d'_b with
    Poisson image editing; holes of d'_b (if any are non-finite) are filled first.

    Args:
        geometry: the edit; background_depth: ``(B, 1, H, W)`` z-depth d'_b.
        band_px: blending band width; default :func:`seam_band_px` (scales with image size).

    Returns:
        ``(B, 1, H, W)`` z-depth d'.
    """
    background_depth = check_depth(background_depth, "background_depth")
    holes = ~torch.isfinite(background_depth) | (background_depth <= 0)
    if bool(holes.flatten(1).all(1).any()):
        raise HandlesError("background_depth: expected positive finite z-depth at some pixels, got none")
    if bool(holes.any()):
        background_depth = fill_depth(torch.where(holes, torch.ones_like(background_depth), background_depth), holes)
    inside = geometry.object_wins & (geometry.object_depth > 0)
    object_depth = geometry.object_depth
    if geometry.back_depth is not None:  # the uncovered back (compute_edit(complete_back=True))
        back = geometry.back_depth > 0
        inside = inside | back
        object_depth = torch.where(back, geometry.back_depth, object_depth)
    if band_px is None:
        band_px = seam_band_px(geometry.camera.height, geometry.camera.width)
    return poisson_composite(object_depth, background_depth, inside, band_px)


def camera_move_depth(geometry: EditGeometry) -> torch.Tensor:
    """Edited depth after a camera move: the z-buffer with disocclusion holes filled."""
    z = geometry.zbuffer
    holes = ~torch.isfinite(z)
    return fill_depth(torch.where(holes, torch.ones_like(z), z), holes)


def render_preview(image: torch.Tensor, geometry: FeatureEdit, hole_color=(1.0, 0.0, 1.0)) -> torch.Tensor:
    """The image re-rendered after the edit by warping it with the flow; holes get ``hole_color``.

    Args:
        image: ``(B, 3, H, W)`` in [0, 1]; geometry: the edit at the image's resolution.

    Returns:
        ``(B, 3, H, W)`` preview.
    """
    warped = warp(image, geometry.source)
    hole = torch.tensor(hole_color, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    v = geometry.valid.to(image.dtype)
    return warped * v + hole * (1.0 - v)

