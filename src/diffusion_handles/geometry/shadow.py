"""Cast shadows from a depth map: where an object's shadow falls for a sun direction (beyond the paper).

Diffusion Handles regenerates a region around the edited object and keeps the input elsewhere;
a sun's shadow falls outside that region, so the object's old shadow would stay where it was.
This module finds where a shadow lies without any ground truth, from the depth alone:

1. The occluder is the object's lifted pixels (its visible front) together with the same pixels
   mirrored to the back about the object's centroid depth (a closed shell, as a convex object's
   back mirrors its front; at least :data:`THICKNESS` of the object's width deep, so that a flat
   face seen head-on still has a body), and the points between them.
2. :func:`cast_shadow`: every occluder point marches along the light's direction ``l`` (the
   way the light travels, camera axes, unit) until it passes behind the receiving surface (the
   depth map without the object, ``d'_b``); the pixels where the marches end are in shadow.
3. :func:`estimate_light`: of a fixed set of candidate directions (light travelling downwards
   in the camera's frame, up to 80 degrees from its y axis, then refined around the best), the one whose cast shadow best covers the pixels that are
   darker than their surroundings (``darkness``), or ``None`` when no candidate's shadow covers
   dark pixels better than it covers bright ones, or when a direction far from the best one
   explains them nearly as well (dark texture, or another object's dark side, lies in many
   directions from the object; its own shadow in one).

Units: points and depths in scene units, camera axes (x right, y down, z forward); images
``(1, C, H, W)``; masks ``(1, 1, H, W)`` float in {0, 1}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from diffusion_handles.geometry.camera import Camera, lift, project

MARCH_STEPS = 48  # samples along each shadow ray
MIN_MARCH = 2  # a ray must travel this many samples before its hit counts (no shadow at the point itself)
THICKNESS = 0.8  # the least depth of the shell, as a fraction of the object's width
SHELL_LAYERS = 3  # occluder points per object pixel: front, middle, mirrored back
DARK_RATIO = 0.75  # a pixel is dark when its luminance is below this fraction of its surroundings'
MIN_PRECISION = 0.6  # the fraction of the found shadow's pixels that must be dark to accept it
MIN_SCORE = 0.05  # the best candidate's score (fraction of the object's area) needed to accept a light
RIVAL_ANGLE = 40.0  # degrees: a candidate this far from the best one is a rival explanation of the dark pixels
MAX_RIVAL = 0.1  # a light is kept only when no rival scores more than this fraction of its score
SEARCH = ((64, 80.0), (24, 12.0))  # candidates and their cap's half-angle (degrees): whole sky, then refined
LIFT_CAP_PX = 3  # the window whose mean brightness caps the old shadow's lift (0: no cap; lift_map)
MAX_TINT = 2.0  # a shadow dims every channel alike: a ratio whose channels differ more than this is no shadow
ESTIMATE_POINTS = 400  # occluder points used to score the candidates (all are used for the result)


@dataclass
class Effects:
    """An edit's shadows (:mod:`diffusion_handles.stages.s3_effects`), at the work size.

    Attributes:
        light: ``(3,)`` the unit direction the light travels (camera axes), or ``None``.
        old: ``(1, 1, H, W)`` in [0, 1], the object's shadow in the input (outside the object
            and the moved object).
        new: ``(1, 1, H, W)`` in [0, 1], the moved object's shadow (outside the moved object).
        ratio: ``(1, 3, 1, 1)`` the light a shadow leaves, per channel (1: no shadow); the new
            shadow multiplies the image by it.
        lift: ``(1, 3, H, W)`` in ``[1, 1 / ratio]``: what lifts the old shadow at each pixel
            (the surroundings' brightness over the pixel's, :func:`lift_map`), so a penumbra or a
            pixel the estimate covers but the shadow does not is lifted only as far as it is dark.
        turn: ``(1, 3, H, W)`` in the input's frame (before the edit's warp): what each turned
            object's pixel is multiplied by, relit for its turned normal
            (:mod:`~diffusion_handles.geometry.relight`), 1 elsewhere; ``None`` when nothing turns.
    """

    light: torch.Tensor | None
    old: torch.Tensor
    new: torch.Tensor
    ratio: torch.Tensor
    lift: torch.Tensor | None = None
    turn: torch.Tensor | None = None

    @property
    def region(self) -> torch.Tensor:
        """``(1, 1, H, W)`` in [0, 1]: both shadows."""
        return torch.maximum(self.old, self.new)

    @property
    def any(self) -> bool:
        return self.light is not None and float(self.region.sum()) > 0

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` ``(1, 3, H, W)``, the maps' size, with the old shadow lifted and the new one
        cast (:func:`move_shadow`); the maps of another size go through :meth:`placed` first."""
        if not self.any:
            return image
        lift = 1.0 / self.ratio if self.lift is None else self.lift
        return move_shadow(image, self.old.to(image), self.new.to(image), self.ratio.to(image), lift.to(image))

    def outside(self, mask: torch.Tensor) -> Effects:
        """The same shadows with nothing on ``mask`` ``(1, 1, H, W)`` in [0, 1] (the moved object):
        a shadow's soft edge (:func:`soften`) must neither darken nor lift the object standing
        beside it. Measured on 30 tuning edits (seeds from 1 003 100, ``python
        benchmarks/silhouette_light.py``, ``finish``): the object +0.17 dB on exact and on
        estimated depth, the whole image +0.02 / +0.04 dB, the shadows unchanged."""
        keep = 1.0 - mask.float().clamp(0, 1).to(self.old)
        return Effects(self.light, self.old * keep, self.new * keep, self.ratio, self.lift, self.turn)

    def placed(self, place) -> Effects:
        """The same shadows with every edited-frame map passed through ``place(map, fill)`` (e.g.
        back to the input's size and into its frame; ``fill``: the value where a map has no pixel,
        0 for the shadows and 1 for the lift); without :attr:`turn`, which lies in the input's
        frame and must be moved by the edit's flow, not placed."""
        lift = (1.0 / self.ratio).expand(1, 3, *self.old.shape[-2:]) if self.lift is None else self.lift
        return Effects(self.light, place(self.old, 0.0), place(self.new, 0.0), self.ratio, place(lift, 1.0))

    @staticmethod
    def none(size: tuple[int, int]) -> Effects:
        """No effects: empty shadows of ``size`` ``(H, W)``."""
        zero = torch.zeros(1, 1, *size)
        return Effects(None, zero, zero.clone(), torch.ones(1, 3, 1, 1))


def occluder_points(depth: torch.Tensor, mask: torch.Tensor, camera: Camera) -> torch.Tensor:
    """``(N, 3)`` camera-space points of the object's shell (see the module docstring, step 1).

    Args:
        depth: ``(1, 1, H, W)`` z-depth; mask: ``(1, 1, H, W)`` the object (> 0.5).
    """
    pts = lift(depth.float(), camera)[0].permute(1, 2, 0)[mask[0, 0] > 0.5]  # (n, 3)
    if pts.shape[0] == 0:
        return pts
    zc = pts[:, 2].mean()
    width = float(pts[:, 0].max() - pts[:, 0].min())
    # the back: the front mirrored about the centroid's depth plane (a round object), but at least
    # THICKNESS of the object's width behind its nearest point (a flat face seen head-on)
    back = torch.maximum(2.0 * zc - pts[:, 2], pts[:, 2].min() + THICKNESS * width).clamp(min=pts[:, 2])
    layers = []
    for s in torch.linspace(0.0, 1.0, SHELL_LAYERS):
        z = pts[:, 2] + s * (back - pts[:, 2])
        layers.append(pts * (z / pts[:, 2]).unsqueeze(1))  # same pixel, further along its ray
    return torch.cat(layers)


def shell_footprint(points: torch.Tensor, camera: Camera) -> torch.Tensor:
    """``(1, 1, H, W)`` in {0, 1}: the pixels the occluder ``points`` ``(N, 3)`` (camera space,
    scene units; e.g. :func:`occluder_points` moved by an edit's transform) project to, the
    holes they enclose filled: where the whole object lies after the edit, its unseen back
    included (a turned cylinder's or box's side the input never showed), not only where its
    visible pixels land. ``H x W`` is ``camera``'s size."""
    from scipy.ndimage import binary_fill_holes

    out = torch.zeros(camera.height, camera.width, dtype=torch.bool)
    if points.shape[0]:
        px, z = project(points.float(), camera)
        ix, iy = px[..., 0].floor().long(), px[..., 1].floor().long()
        ok = (z > 0) & (ix >= 0) & (ix < camera.width) & (iy >= 0) & (iy < camera.height)
        out[iy[ok], ix[ok]] = True
    return torch.from_numpy(binary_fill_holes(out.numpy())).float()[None, None]


def cast_shadow(points: torch.Tensor, receiver: torch.Tensor, directions: torch.Tensor, camera: Camera,
                reach: float) -> torch.Tensor:
    """Pixels of ``receiver`` shadowed by ``points`` for light travelling along each direction.

    Args:
        points: ``(N, 3)`` occluder points, camera space, scene units.
        receiver: ``(1, 1, H, W)`` z-depth of the receiving surface (the scene without the occluder).
        directions: ``(3,)`` or ``(K, 3)`` unit directions the light travels, camera axes.
        reach: longest march in scene units (e.g. a few object sizes).

    Returns:
        ``(K, 1, H, W)`` float in {0, 1} (``K = 1`` for one direction): 1 where a march from an
        occluder point first passes behind the receiver, closed with a 3x3 max/min pool so the
        points' gaps do not show. Points already behind the receiver cast nothing.
    """
    dirs = directions.float().reshape(-1, 3)
    k, (h, w) = dirs.shape[0], receiver.shape[-2:]
    out = torch.zeros(k, h * w)
    if points.shape[0] > 0:
        t = torch.linspace(0.0, reach, MARCH_STEPS)[1:]  # (T,)
        q = points.float()[None, :, None, :] + t[None, None, :, None] * dirs[:, None, None, :]  # (K, N, T, 3)
        px, z = project(q, camera)
        ix, iy = px[..., 0].floor().long(), px[..., 1].floor().long()
        inside = (z > 1e-6) & (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
        flat = iy.clamp(0, h - 1) * w + ix.clamp(0, w - 1)  # (K, N, T)
        behind = inside & (z >= receiver.float().reshape(-1)[flat] - 1e-3)
        first = torch.argmax(behind.int(), dim=2, keepdim=True)  # the first sample behind the surface
        where = torch.gather(flat, 2, first)[..., 0]  # (K, N)
        hit = behind.any(dim=2) & (first[..., 0] >= MIN_MARCH) & _in_front(points.float(), receiver, camera)[None, :]
        cand = torch.arange(k)[:, None].expand_as(where)
        out[cand[hit], where[hit]] = 1.0
    m = out.view(k, 1, h, w)
    closed = -F.max_pool2d(-F.max_pool2d(m, 3, 1, 1), 3, 1, 1)
    return torch.maximum(m, closed)


def box_mean(x: torch.Tensor, size: int) -> torch.Tensor:
    """Mean of ``x`` ``(1, C, H, W)`` over a ``k x k`` box, ``k = 2 (size // 2) + 1``, edges
    replicated; separable, so the cost does not grow with ``k`` squared."""
    r = size // 2
    if r <= 0:
        return x
    k = 2 * r + 1
    x = F.avg_pool2d(F.pad(x, (r, r, 0, 0), mode="replicate"), (1, k), 1)
    return F.avg_pool2d(F.pad(x, (0, 0, r, r), mode="replicate"), (k, 1), 1)


def _in_front(points: torch.Tensor, receiver: torch.Tensor, camera: Camera) -> torch.Tensor:
    """``(N,)`` bool: the points ``(N, 3)`` that lie in front of the receiving surface (or outside
    the image); a point already behind it (a moved shell sunk into the floor, a mirrored back
    through the wall) casts no shadow."""
    h, w = receiver.shape[-2:]
    px, z = project(points, camera)
    ix, iy = px[:, 0].floor().long(), px[:, 1].floor().long()
    inside = (z > 1e-6) & (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    surface = receiver.float().reshape(-1)[iy.clamp(0, h - 1) * w + ix.clamp(0, w - 1)]
    return ~inside | (z < surface - 1e-3)


def darkness(image: torch.Tensor, ignore: torch.Tensor, window: int) -> torch.Tensor:
    """``(1, 1, H, W)`` luminance over the surroundings' (1 = as bright, < 1 darker).

    Luminance (Rec. 709) is smoothed over 5x5 pixels first so that texture does not count as
    shadow; the surroundings' luminance is its mean within ``window`` pixels, with ``ignore``
    (e.g. the object, ``(1, 1, H, W)``) left out of both. ``image`` ``(1, 3, H, W)`` in [0, 1].
    """
    luma = (image.float() * torch.tensor([0.2126, 0.7152, 0.0722]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    keep = (ignore < 0.5).float()

    smooth = box_mean(luma * keep, 5) / box_mean(keep, 5).clamp(min=1e-6)
    around = box_mean(luma * keep, window) / box_mean(keep, window).clamp(min=1e-6)
    return smooth / around.clamp(min=1e-4)


def candidate_directions(axis: torch.Tensor, count: int, max_angle_deg: float) -> torch.Tensor:
    """``(count, 3)`` unit directions spread evenly (a Fibonacci lattice) over the cap of
    directions within ``max_angle_deg`` of the unit ``axis`` ``(3,)``."""
    axis = axis.float() / axis.float().norm()
    i = torch.arange(count, dtype=torch.float32) + 0.5
    cos_min = math.cos(math.radians(max_angle_deg))
    c = 1.0 - (1.0 - cos_min) * i / count  # cos of the angle to ``axis``
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    s = (1.0 - c * c).clamp(min=0).sqrt()
    a = torch.tensor([1.0, 0.0, 0.0]) if abs(float(axis[0])) < 0.9 else torch.tensor([0.0, 0.0, 1.0])
    e1 = torch.linalg.cross(axis, a)
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(axis, e1)
    return c[:, None] * axis + s[:, None] * (torch.cos(phi)[:, None] * e1 + torch.sin(phi)[:, None] * e2)


def estimate_light(image: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor, receiver: torch.Tensor,
                   camera: Camera, max_rival: float = MAX_RIVAL) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The light direction whose cast shadow of the object best explains the image's dark pixels.

    Args:
        image: ``(1, 3, H, W)`` in [0, 1]; depth: ``(1, 1, H, W)`` z-depth with the object;
        mask: ``(1, 1, H, W)`` the object, or a list of such masks (several objects, each
        casting from its own shell); receiver: ``(1, 1, H, W)`` the depth without it (``d'_b``).

    Returns:
        ``(direction, shadow)``: ``(3,)`` unit direction the light travels (camera axes), or
        ``None`` when no candidate's shadow lies on dark pixels (score at most
        :data:`MIN_SCORE` of the object's area: light from behind the camera, or a shadow
        hidden by the object) or the best one's pixels are not mostly dark (fewer than
        :data:`MIN_PRECISION`: dark texture rather than a shadow) or a candidate more than
        :data:`RIVAL_ANGLE` degrees from it scores more than ``max_rival`` of its score (the
        dark pixels are no evidence of one direction; 1: no check); ``shadow`` ``(1, 1, H, W)``:
        the object's shadow for it, outside the object (zeros for ``None``). Score of a candidate: pixels of its shadow that are dark
        (:func:`darkness` below :data:`DARK_RATIO`) minus those that are not.
    """
    masks = [(m > 0.5).float() for m in (mask if isinstance(mask, (list, tuple)) else [mask])]
    obj = torch.stack(masks).amax(0)
    area = float(obj.sum())
    zero = torch.zeros_like(obj)
    if area == 0:
        return None, zero
    pts = torch.cat([occluder_points(depth, m, camera) for m in masks])  # each object its own shell
    size = float((pts.max(0).values - pts.min(0).values).norm())
    sparse = pts[torch.linspace(0, pts.shape[0] - 1, min(pts.shape[0], ESTIMATE_POINTS)).long()]
    dark = darkness(image, obj, window=max(9, int(4 * math.sqrt(area)))) < DARK_RATIO
    vote = torch.where(dark, 1.0, -1.0) * (1.0 - obj)
    best, best_score, rival = _search(sparse, receiver, camera, 3.0 * size, vote)
    if best_score <= MIN_SCORE * area or rival > max_rival * best_score:
        return None, zero
    best_shadow = cast_shadow(pts, receiver, best, camera, 3.0 * size) * (1.0 - obj)
    if float((best_shadow * dark).sum()) < MIN_PRECISION * float(best_shadow.sum()):
        return None, zero
    return best, best_shadow


def _search(points: torch.Tensor, receiver: torch.Tensor, camera: Camera, reach: float,
            vote: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """``(best direction (3,), its score, the best rival's score)``: the :data:`SEARCH` passes
    over candidate directions (the whole cap, then around the best so far), each scored by
    ``vote`` ``(1, 1, H, W)`` summed over its cast shadow; a rival is a candidate of the first pass
    more than :data:`RIVAL_ANGLE` degrees from the best, scored on the pixels the best one's
    shadow leaves out (dark pixels in another direction, not the overlap of two shadows near the
    object's foot).

    Why a rival vetoes: dark checker squares and other objects' dark sides lie in many directions
    from the object, its own shadow in one. Measured on 30 tuning edits (seeds from 1 003 100,
    ``python benchmarks/silhouette_light.py --seed 1003100 --scenes 32``), the shadows moved on
    the warp baseline with its old silhouette refilled: every found light used, -0.99 dB on the
    background, +0.27 dB on the pixels the truth brightens, +0.13 dB on those it darkens; with
    :data:`MAX_RIVAL` 0.1, +0.26, +0.51, +0.44 (0.2: +0.15, +0.54, +0.43).
    """
    best, best_score = torch.tensor([0.0, 1.0, 0.0]), -math.inf
    for i, (count, angle) in enumerate(SEARCH):
        dirs = candidate_directions(best, count, angle)
        maps = cast_shadow(points, receiver, dirs, camera, reach) > 0.5  # (K, 1, H, W)
        scores = (maps * vote).sum((1, 2, 3))
        if float(scores.max()) > best_score:
            best, best_score = dirs[int(scores.argmax())], float(scores.max())
        if i == 0:
            first_dirs, first_maps = dirs, maps
    far = first_dirs @ best < math.cos(math.radians(RIVAL_ANGLE))
    if not bool(far.any()):
        return best, best_score, 0.0
    own = cast_shadow(points, receiver, best, camera, reach) > 0.5
    rival = float((first_maps[far] & ~own).mul(vote).sum((1, 2, 3)).max())
    return best, best_score, rival


def surroundings(image: torch.Tensor, shadow: torch.Tensor, ignore: torch.Tensor, ring: int) -> torch.Tensor:
    """``(1, 3, H, W)`` the brightness of the lit pixels next to a shadow, per channel: the mean of
    the ring of pixels within ``ring`` px of ``shadow`` (``(1, 1, H, W)``) that are neither in it
    nor in ``ignore``, taken locally (a box of ``4 ring + 1`` px) and, where the box holds none of
    the ring, over the whole ring. Only the ring counts: a dark wall or sky farther away is
    another surface, not the lit floor the shadow lies on."""
    hard = (shadow > 0.5).float()
    ringm = ((F.max_pool2d(hard, 2 * ring + 1, 1, ring) > 0.5) & (hard < 0.5) & (ignore < 0.5)).float()
    img = image.float()
    if float(ringm.sum()) < 1:
        return torch.ones_like(img)
    weight = box_mean(ringm, 4 * ring + 1)
    local = box_mean(img * ringm, 4 * ring + 1) / weight.clamp(min=1e-6)
    whole = (img * ringm).sum((2, 3), keepdim=True) / ringm.sum()
    return torch.where(weight > 1e-3, local, whole)


def shadow_ratio(image: torch.Tensor, shadow: torch.Tensor, around: torch.Tensor) -> torch.Tensor:
    """``(1, 3, 1, 1)`` how much of the light a shadow leaves, per channel, in (0, 1]: the median
    over ``shadow`` pixels of the image over ``around``, its lit :func:`surroundings`; 1 for an
    empty shadow."""
    if float(shadow.sum()) < 1:
        return torch.ones(1, 3, 1, 1)
    ratio = (image.float() / around.clamp(min=1e-4))[0][:, shadow[0, 0] > 0.5]  # (3, n)
    return ratio.median(dim=1).values.clamp(0.05, 1.0).view(1, 3, 1, 1)


def move_shadow(image: torch.Tensor, old: torch.Tensor, new: torch.Tensor, ratio: torch.Tensor,
                lift: torch.Tensor | None = None) -> torch.Tensor:
    """``image * (1 + (r - 1) new) * (1 + (l - 1) old)``: the shadow ``old`` lifted and ``new``
    cast, ``(1, 3, H, W)``; ``old``, ``new`` ``(1, 1, H, W)`` in [0, 1] (soft edges blend),
    ``ratio`` ``r`` from :func:`shadow_ratio`, ``lift`` ``l`` from :func:`lift_map` (default
    ``1 / r`` everywhere)."""
    lift = 1.0 / ratio if lift is None else lift
    return (image * (1.0 + (ratio - 1.0) * new) * (1.0 + (lift - 1.0) * old)).clamp(0, 1)


def lift_map(image: torch.Tensor, shadow: torch.Tensor, ignore: torch.Tensor, ratio: torch.Tensor,
             around: torch.Tensor) -> torch.Tensor:
    """``(1, 3, H, W)`` in ``[1, 1 / ratio]``: ``around``, the lit :func:`surroundings`, over the mean of the
    shadow's pixels within 5x5 of each pixel (texture averages out, a lit pixel the estimate
    covers stays lit), per channel; the factor that brings each shadowed pixel back to its
    surroundings' brightness, never darker, never more than the shadow took, and, for a pixel
    at least as bright as the mean of every pixel within :data:`LIFT_CAP_PX` square around it (``ignore``
    left out; the lit side of an edge), never more than ``around`` over that mean: where the estimate
    reaches past the true shadow's edge, the 5x5 mean of its pixels still holds the shadow's dark
    ones, and the lit pixels there would be lifted into a bright outline (measured on 30 tuning
    edits, seeds from 1 003 100, ``python benchmarks/silhouette_light.py``: the outline gone, the
    pixels the truth brightens +0.10 dB, the background +0.07 dB)."""
    inside = ((shadow > 0.5) & (ignore < 0.5)).float()
    own = box_mean(image.float() * inside, 5) / box_mean(inside, 5).clamp(min=1e-6)
    lift = torch.minimum((around / own.clamp(min=1e-4)).clamp(min=1.0), 1.0 / ratio)
    if LIFT_CAP_PX <= 0:
        return lift
    free = (ignore < 0.5).float()
    near = box_mean(image.float() * free, LIFT_CAP_PX) / box_mean(free, LIFT_CAP_PX).clamp(min=1e-6)
    capped = torch.minimum(lift, (around / near.clamp(min=1e-4)).clamp(min=1.0))
    return torch.where(image.float() >= near, capped, lift)  # the lit side of an edge; the dark side lifts fully


def find_shadows(image: torch.Tensor, depth: torch.Tensor, masks: list[torch.Tensor], receiver: torch.Tensor,
                 camera: Camera, transforms: list | None, moved: torch.Tensor, max_rival: float = MAX_RIVAL) -> Effects:
    """An edit's old and new shadows (see the module docstring), all ``(1, C, H, W)`` at one size.

    Args:
        image: ``(1, 3, H, W)`` in [0, 1]; depth: ``(1, 1, H, W)`` z-depth with the objects.
        masks: the moved objects, ``(1, 1, H, W)`` each; receiver: ``d'_b`` without them.
        transforms: one :class:`~diffusion_handles.geometry.transform.Similarity` per mask, or
            ``None`` (a removal: no new shadow).
        moved: ``(1, 1, H, W)`` where the moved objects land (``M'_o``): no shadow shows there.
        max_rival: :func:`estimate_light`'s rival check (1: none).

    No effects either when the found shadow's ratio (:func:`shadow_ratio`) is not grey, its
    channels differing by more than :data:`MAX_TINT`: a shadow under white or sky light dims
    every channel by about as much (a bluish shadow keeps a little more blue), while dark pixels
    that are another object's shaded side (a red sphere beside the object: a ratio of (0.97,
    0.32, 0.33)) would be "lifted" into a red smear on the floor and cast as a cyan one. The check
    changes none of 30 tuning edits (seeds from 1 003 100, ``python benchmarks/silhouette_light.py``:
    ``rims+shadows_any_tint`` scores as ``rims+shadows``); its held-out effect is in
    docs/benchmark.md.
    """
    size = tuple(image.shape[-2:])
    union = (torch.stack([m.float() for m in masks]).amax(0) > 0.5).float()
    light, old = estimate_light(image, depth, list(masks), receiver, camera, max_rival)
    if light is None:
        return Effects.none(size)
    on_top = (moved.float() > 0.5).float()
    new = torch.zeros_like(union)
    for m, t in zip(masks, transforms or [], strict=False):
        pts = occluder_points(depth, (m.float() > 0.5).float(), camera)
        if pts.shape[0]:
            reach = 3.0 * float((pts.max(0).values - pts.min(0).values).norm())
            new = torch.maximum(new, cast_shadow(t.apply(pts.double()).float(), receiver, light, camera, reach))
    old, new = old * (1.0 - on_top), new * (1.0 - on_top)
    ring = max(2, int(0.25 * math.sqrt(float(union.sum()))))  # a quarter of the object's size
    around = surroundings(image, old, union, ring)
    ratio = shadow_ratio(image, old, around)
    if float(ratio.max() / ratio.min()) > MAX_TINT:  # not a shadow: another colour (an object beside it)
        return Effects.none(size)
    lift = lift_map(image, old, union, ratio, around)
    turn = turn_gains(depth, masks, transforms, camera, receiver, old, ratio, light)
    return Effects(light, soften(old), soften(new), ratio, lift, turn).outside(on_top)


def turn_gains(depth: torch.Tensor, masks: list[torch.Tensor], transforms: list | None, camera: Camera,
               receiver: torch.Tensor, old: torch.Tensor, ratio: torch.Tensor, light: torch.Tensor) -> torch.Tensor | None:
    """``(1, 3, H, W)`` :attr:`Effects.turn`: each turned object relit
    (:func:`~diffusion_handles.geometry.relight.turn_gain`, ``k`` from the old shadow's ``ratio``
    and the ground's normal there, ``receiver``'s), in the input's frame; ``None`` when no
    transform turns its object or the old shadow ``old`` ``(1, 1, H, W)`` is empty. Arguments as
    :func:`find_shadows`'s; ``light`` ``(3,)`` the direction the light travels."""
    from diffusion_handles.geometry.relight import sky_over_sun, surface_normals, turn_gain

    turns = []
    for m, t in zip(masks, transforms or [], strict=False):
        rot = (t.matrix[:3, :3] / t.scale).float()
        if not torch.allclose(rot, torch.eye(3), atol=1e-4):
            turns.append(((m.float() > 0.5).float(), rot))
    shade = old > 0.5
    if not turns or not bool(shade.any()):
        return None
    sun = -light.float()
    ground = (surface_normals(receiver, torch.ones_like(old), camera) * sun.view(1, 3, 1, 1)).sum(1, keepdim=True)
    k = sky_over_sun(ratio, float(ground[shade].median()))
    gain = torch.ones(1, 3, *old.shape[-2:])
    for m, rot in turns:
        gain = gain * turn_gain(surface_normals(depth, m, camera), rot, sun, k, m)
    return gain


def soften(m: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """``m`` ``(1, 1, H, W)`` with a soft edge of ``radius`` px outside it (grown, then
    box-blurred), so a thin shadow keeps its full weight inside."""
    k = 2 * radius + 1
    grown = F.max_pool2d(m, k, 1, radius)
    return torch.maximum(m, F.avg_pool2d(F.pad(grown, (radius,) * 4, mode="replicate"), k, 1)).clamp(0, 1)
