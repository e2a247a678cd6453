"""Stage 6 of an edit: decode, back to the input's frame, keep what the warp gets right, composite.

The generated latent is decoded at the work size; every output is resized back to the input's
size ``H x W``. With ``GuidanceConfig.composite`` (not in the paper) the input's pixels are kept
outside the soft edit region (a feathered seam), or for a camera move the input warped to the
new view. With ``GuidanceConfig.keep_detail`` as well (not in the paper), inside the region the
input warped by the 3D flow at the input's own resolution (recomputed from the input's own depth
and mask when the request carries them, :func:`fine_edit`), its shadows moved (stage 3), is kept
wherever the warp has a pixel (:func:`keep_weight`) and the generation fills the holes (blended
from their rims, :func:`hole_fill`): the generation is blurrier than the input and drifts in
colour where nothing needs to change, so copying it there loses detail for nothing (measured:
``GuidanceConfig.keep_detail``). With ``GuidanceConfig.silhouette_rims`` the object's old
footprint and the rim of its old silhouette count as holes too (:func:`old_rim`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from diffusion_handles.diffusion.backbone import Backbone
from diffusion_handles.diffusion.config import GuidanceConfig
from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry import warp
from diffusion_handles.stages.s1_prepare import Prepared
from diffusion_handles.stages.s2_geometry import Geometry
from diffusion_handles.stages.s5_sample import Sampled


@dataclass
class EditOutput:
    """Result of an edit (:meth:`DiffusionHandles.edit`, :meth:`DiffusionHandles.remove`), at the
    input image's size ``H x W``.

    Attributes:
        edited: ``(1, 3, H, W)`` the edited image x'_0 in [0, 1].
        reconstruction: ``(1, 3, H, W)`` the inversion's reconstruction in [0, 1].
        preview: ``(1, 3, H, W)`` the input warped by the 3D flow (holes magenta; a removal: its
            region magenta).
        edited_depth: ``(1, 1, H, W)`` d', z-depth in scene units.
        edited_mask: ``(1, 1, H, W)`` M'_o in [0, 1]; valid_mask: ``(1, 1, H, W)`` M_v.
        region: ``(1, 1, H, W)`` the soft edit region (1 = generated, 0 = input), whether or
            not the composite was applied (:func:`diffusion_handles.geometry.region.edit_region`).
        generated: ``(1, 3, H, W)`` the decoded generation before any composite.
        effects: ``(1, 1, H, W)`` in [0, 1], the effects region (stage 3): the object's old shadow
            and the moved object's new one; zeros when none was found.
        light: ``(3,)`` the estimated direction the light travels (camera axes), or ``None``.
        timings: seconds per stage of this edit; unet_evals: UNet evaluations of this edit.
        energies: ``{step: [ {"G": ..., "G_o[i]": ..., ...} per gradient step ]}``.
        monitor: ``{step: {"G": ..., "G_o[i]": ...}}`` the energies of the latent each step
            starts from, for every recorded (layer, step), guided or not.
        config: the resolved guidance configuration (layers, guide_until filled in).
        prompt: the generation's prompt: the inversion's, or a restyle's (the object's words
            replaced, ``DiffusionHandles.edit(..., restyle=...)``).
    """

    edited: torch.Tensor
    reconstruction: torch.Tensor
    preview: torch.Tensor
    edited_depth: torch.Tensor
    edited_mask: torch.Tensor
    valid_mask: torch.Tensor
    region: torch.Tensor | None = None
    generated: torch.Tensor | None = None
    effects: torch.Tensor | None = None
    light: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)
    unet_evals: dict[str, dict[str, int]] = field(default_factory=dict)
    energies: dict[int, list[dict[str, float]]] = field(default_factory=dict)
    monitor: dict[int, dict[str, float]] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    prompt: str | None = None


class Frame:
    """The way back from the work frame to the input's: resized to the input's size, or for an
    edit window (``inverted.config.window``) resized to the window and placed in the photo."""

    def __init__(self, backbone: Backbone, prep: Prepared) -> None:
        inv = prep.inverted
        self.backbone, self.hw, self.box = backbone, tuple(inv.input_hw), inv.config.window
        given = prep.request.source_image
        if given is not None and tuple(given.shape[-2:]) != self.hw:
            raise HandlesError(f"source_image: expected size {self.hw[1]}x{self.hw[0]} (W x H), "
                               f"got {given.shape[-1]}x{given.shape[-2]}")
        if given is None and self.box is not None:
            raise HandlesError("source_image: an inversion of a window of the photo (inversion.window) needs the "
                               "whole photo as source_image")
        self.source = self.back(inv.image, 0.0) if given is None else given.float().cpu()
        self.context = inv.context_depth

    def back(self, x: torch.Tensor, fill: float | torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """``x`` ``(1, C, h, w)`` at the work size -> ``(1, C, H, W)`` at the input's; outside a
        window ``fill`` (a number or a ``(1, C, H, W)`` tensor)."""
        x = x.float().cpu()
        if self.box is None:
            return self.backbone.resize_to_work(x, self.hw, mode)
        from diffusion_handles.geometry.window import paste

        canvas = fill if isinstance(fill, torch.Tensor) else torch.full((1, x.shape[1], *self.hw), float(fill))
        return paste(x, canvas.float().cpu(), self.box, mode)

    def depth(self, x: torch.Tensor) -> torch.Tensor:
        """A work-size depth back at the input's size; outside a window the photo's own depth."""
        fill = 0.0 if self.context is None else self.backbone.resize_to_work(self.context.float().cpu(), self.hw)
        return self.back(x, fill)

    def flow_source(self, flow) -> torch.Tensor:
        """The edit's normalised source coordinates at the input's size, ``(1, 2, H, W)`` (the
        identity outside a window): the flow evaluated exactly at the finer grid's pixel centres
        (``EditGeometry.at_resolution``: each pixel's source through the inverse 3D transform at
        its interpolated depth), not the work-size coordinates interpolated, which would smear the
        object's edge into its background."""
        from diffusion_handles.geometry.window import source_to_image

        if self.box is None:
            return flow.at_resolution(*self.hw).source.float().cpu()
        x0, y0, x1, y1 = self.box
        return source_to_image(flow.at_resolution(y1 - y0, x1 - x0).source.float().cpu(), self.box, self.hw)


def finish(backbone: Backbone, prep: Prepared, geo: Geometry, sampled: Sampled,
           guidance: GuidanceConfig) -> EditOutput:
    """Stage 6: decode ``sampled.latent``, bring every output to the input's size (:class:`Frame`),
    keep the warp, composite."""
    inv = prep.inverted
    frame = Frame(backbone, prep)
    region = frame.back(geo.region, 0.0).clamp(0, 1)
    generated = frame.back(backbone.decode(sampled.latent), frame.source)
    edited = generated
    if guidance.composite:
        kept = frame.back(geo.keep_image, frame.source) if geo.keep_image is not None else frame.source
        inside = _detail(prep, geo, generated, kept, frame, region, guidance.silhouette_rims) \
            if guidance.keep_detail else generated
        if prep.request.restyle is not None and guidance.keep_detail:  # the moved object takes its new look
            inside = restyle_inside(inside, generated, frame.back(geo.edited_mask, 0.0), guidance.restyle_finish,
                                    input_per_work(inv))
        edited = composite(inside, region, kept)
    n = inv.config.num_steps
    resolved = guidance.to_dict()
    resolved["layers"] = list(guidance.resolved_layers(backbone.num_up_blocks))
    resolved["guide_until"] = guidance.resolved_guide_until(n)
    effects = geo.effects.region if geo.effects is not None else torch.zeros_like(geo.hard.float())
    return EditOutput(
        edited=edited, reconstruction=frame.back(inv.reconstruction, frame.source),
        preview=frame.back(geo.preview, frame.source), edited_depth=frame.depth(geo.edited_depth),
        edited_mask=frame.back(geo.edited_mask, 0.0), valid_mask=frame.back(geo.valid, 1.0, "nearest"),
        region=region, generated=generated, effects=frame.back(effects, 0.0).clamp(0, 1),
        light=None if geo.effects is None else geo.effects.light, unet_evals=sampled.unet_evals,
        energies=sampled.energies, monitor=sampled.monitor, config=resolved,
        prompt=inv.prompt if prep.prompt is None else prep.prompt,
    )


def restyle_inside(kept: torch.Tensor, generated: torch.Tensor, moved: torch.Tensor, how: str,
                   scale: float = 1.0) -> torch.Tensor:
    """A restyle's finish inside the moved object (``GuidanceConfig.restyle_finish``): where the
    detail finish kept the input warped (the old look), the object's new look.

    ``moved`` is ``M'_o`` ``(1, 1, H, W)`` in [0, 1] at the input's size; it is grown by one work
    pixel (``scale`` input pixels per work pixel) so the old colour of the silhouette's blended
    edge goes too. ``"generate"``: the generation there; ``"detail"``: the generation blurred
    inside the object (a Gaussian of 1.5 work pixels normalized over the grown mask) plus the
    high-pass luminance of ``kept`` over the same mask, so the warp's sharp pattern and shading
    edges stay and its colour goes; ``"warp"``: ``kept`` unchanged. All images ``(1, 3, H, W)``.
    """
    if how == "warp":
        return kept
    r = max(1, int(math.ceil(scale)))
    w = F.max_pool2d(moved.float().clamp(0, 1), 2 * r + 1, 1, r)
    new = generated
    if how == "detail":
        sigma = 1.5 * scale
        luma = torch.tensor([0.2126, 0.7152, 0.0722]).view(1, 3, 1, 1).to(kept)
        lum = (kept * luma).sum(1, keepdim=True)
        high = lum - _masked_blur(lum, w, sigma)
        new = _masked_blur(generated, w, sigma) + high
    return w * new + (1.0 - w) * kept


def _masked_blur(x: torch.Tensor, m: torch.Tensor, sigma: float) -> torch.Tensor:
    """``blur(x m) / blur(m)`` with a separable Gaussian of ``sigma`` px (``x`` where ``blur(m)`` is 0)."""
    r = max(1, int(math.ceil(3 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2)
    k = (k / k.sum()).to(x.device)

    def blur(t: torch.Tensor) -> torch.Tensor:
        c = t.shape[1]
        t = F.conv2d(F.pad(t, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        return F.conv2d(F.pad(t, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)

    den = blur(m)
    return torch.where(den > 1e-6, blur(x * m) / den.clamp(min=1e-6), x)


def composite(generated: torch.Tensor, region: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``region * generated + (1 - region) * kept``: all ``(1, C, H, W)``, region in [0, 1]."""
    return region * generated + (1.0 - region) * kept


def keep_weight(valid: torch.Tensor) -> torch.Tensor:
    """``(1, 1, H, W)`` in [0, 1]: how much of the warped input to keep over the generation: the
    valid mask ``M_v`` ``(1, 1, H, W)`` eroded by one pixel and box-blurred over 3x3, so the
    warp is kept wherever it has a pixel and a hole's rim blends into the generation."""
    v = -F.max_pool2d(-(valid > 0.5).float(), 3, 1, 1)  # eroded by one pixel
    return F.avg_pool2d(F.pad(v, (1, 1, 1, 1), mode="replicate"), 3, 1)


RIM_PX = 4.0  # work-size px over which a hole's fill goes from the inpainted warp (its rim) to the generation


def hole_fill(warped: torch.Tensor, valid: torch.Tensor, generated: torch.Tensor, rim_px: float,
              moved: torch.Tensor | None = None) -> torch.Tensor:
    """``(1, 3, H, W)``: the generation in the holes of ``warped``, blended from its rim: within a
    pixel of the rim the warp inpainted (OpenCV Telea, radius 3), the generation from ``rim_px + 1``
    pixels in, linear between (``w = clamp(1 - (dist - 1) / rim_px, 0, 1)`` with ``dist`` the
    distance to the nearest valid pixel). The inpainting continues the surrounding colour where the
    hole meets it; the generation supplies what no neighbour has. Chosen on 8 tuning edits (seeds
    from 1 003 100) over the generation alone and over the inpainting alone in the holes, by an
    offline comparison of saved generations that the project does not keep; the held-out effect
    of the whole finish is ``ours`` against ``ours_plain_finish`` in docs/benchmark.md.

    With ``moved`` (``(1, 1, H, W)``, the moved object ``> 0.5`` with the holes it encloses,
    :func:`object_cover`), a hole outside the moved object (what the object uncovered: background)
    is inpainted from the background alone, the moved object's pixels left out as sources, so its
    colour does not bleed into the ground it left; a hole on the object (a side it turns towards
    the camera, a gap between its splats) from everything around it. Measured on 30 tuning edits
    (seeds from 1 003 100, the warp baseline, ``python benchmarks/silhouette_light.py``,
    ``finish_no_shell`` against ``rims+shadows``): the uncovered footprint +4.9 dB, the whole
    image +1.1 dB, the object -0.25 dB, the sharpness of the edit region 0.89 against 0.84.

    Args:
        warped: ``(1, 3, H, W)`` in [0, 1]; valid: ``(1, 1, H, W)`` ``M_v``; generated: like ``warped``.
    """
    from scipy.ndimage import distance_transform_edt

    holes = (valid[0, 0] < 0.5).cpu().numpy()
    if not holes.any():
        return generated
    telea = inpaint(warped, holes, None if moved is None else (moved[0, 0] > 0.5).cpu().numpy()).to(generated)
    dist = torch.from_numpy(distance_transform_edt(holes)).float()[None, None].to(generated)
    w = (1.0 - (dist - 1.0) / rim_px).clamp(0, 1)
    return w * telea + (1.0 - w) * generated


COVER_PX = 2  # input px per work px: a gap up to twice this wide inside the moved object is on the object


def object_cover(moved: torch.Tensor, radius: int = COVER_PX) -> torch.Tensor:
    """``(1, 1, H, W)`` in {0, 1}: the moved object ``moved > 0.5`` (``(1, 1, H, W)``) with its gaps
    up to ``2 radius`` px across closed (a binary closing; a rotated or enlarged object's splats
    leave thin gaps in the warp, and its edited mask, ``W[M_o] M_v``, is 0 there) and every hole it
    encloses filled: the holes that lie on the object, not on the ground it uncovered. Chosen on
    30 tuning edits (seeds from 1 003 100) by an offline comparison of saved generations that the
    project does not keep: against the plain mask, the object +0.03 dB, the uncovered footprint
    +0.12 dB (radius 1: +0.02, +0.12; 3: +0.03, +0.12); the held-out effect of the whole change is
    in docs/benchmark.md ("Inpainting behind the moved object")."""
    from scipy.ndimage import binary_closing, binary_fill_holes

    m = (moved[0, 0] > 0.5).cpu().numpy()
    if radius > 0 and m.any():
        p = radius + 1
        m = m | binary_closing(np.pad(m, p), iterations=radius)[p:-p, p:-p]
    return torch.from_numpy(binary_fill_holes(m)).float()[None, None]


def inpaint(image: torch.Tensor, holes, foreground=None) -> torch.Tensor:
    """``image`` ``(1, 3, H, W)`` in [0, 1] with its ``holes`` (``(H, W)`` bool array) inpainted
    (OpenCV Telea, radius 3, on 8 bits: :func:`~diffusion_handles.perception.inpaint.inpaint_opencv`);
    with ``foreground`` (``(H, W)`` bool), the holes outside it are inpainted as if the foreground
    were a hole too (from the rest alone), those inside it from everything around them."""
    from diffusion_handles.perception.inpaint import inpaint_opencv

    def telea(m) -> torch.Tensor:
        return inpaint_opencv(image, torch.from_numpy(m)[None, None].float(), "opencv-telea", 3)

    if foreground is None or not foreground.any() or not (holes & ~foreground).any():
        return telea(holes)
    behind = torch.from_numpy(holes & ~foreground)[None, None]
    return torch.where(behind, telea(holes | foreground), telea(holes))


def input_per_work(inv) -> float:
    """Input pixels per work pixel of the inversion ``inv`` (its window's, or the whole image's)."""
    box = inv.config.window
    return (inv.input_hw[0] if box is None else box[3] - box[1]) / inv.image.shape[-2]


def _detail(prep: Prepared, geo: Geometry, generated: torch.Tensor, kept: torch.Tensor, frame: Frame,
            region: torch.Tensor, rims: bool = True) -> torch.Tensor:
    """Inside ``region``: the input warped by the flow at the input's size (shadows moved, stage
    3) where it has pixels (:func:`keep_weight`), the holes filled by :func:`hole_fill`; ``kept``
    outside (a camera move keeps its warped input, a removal the input outside its region).
    With ``rims`` (``GuidanceConfig.silhouette_rims``) an object move also refills its old
    footprint and its silhouette's rim (:func:`old_rim`); the ground a move uncovers is inpainted
    from the background alone (:func:`hole_fill` with the moved object, its gaps closed,
    :func:`object_cover`, and its unseen sides, :func:`moved_shell`). The per-pixel work is
    done on the region's bounding box only, so a large photo costs what its edit covers."""
    scale = input_per_work(prep.inverted)
    grow = int(math.ceil(scale)) - 1  # a hole's edge is only known to a work pixel: grow it by one
    area = work_area(region, scale)
    if area is None:
        return kept
    sl = (slice(None), slice(None), slice(area[0], area[1]), slice(area[2], area[3]))
    moves = geo.flow is not None and geo.keep_image is None
    fine = fine_edit(prep, geo, area) if moves and scale > 1.0 else None

    def moving(x: torch.Tensor) -> torch.Tensor:  # an input-frame image moved by the flow, on the area
        if fine is not None:
            return warp(x[sl], fine.source.float().cpu())
        return (warp(x, frame.flow_source(geo.flow)) if moves else x)[sl]

    if fine is not None:  # the flow and its holes at the input's resolution, on the area alone
        valid = fine.valid.float().cpu()
    else:
        valid = _erode(frame.back(geo.valid, 1.0, "nearest")[sl], grow)
    warped, moved = moving(kept), None
    if moves:
        m = fine.edited_mask.float().cpu() if fine is not None else frame.back(geo.edited_mask, 0.0)[sl]
        moved = (m > 0.5).float()
    fx = geo.effects
    if fx is not None and fx.any:  # at the input's size the shadows' edges stop at the moved object too
        turn, fx = fx.turn, fx.placed(lambda m, fill: frame.back(m, fill)[sl])
        warped = (fx if moved is None else fx.outside(moved)).apply(warped)
        if turn is not None and moves:  # a turned object relit, moved with it (1 where the warp has no source)
            warped = warped * (1.0 + moving(frame.back(turn, 1.0) - 1.0))
    w = keep_weight(valid)
    out, cover = kept.clone(), None
    if moves:
        masks, depth = _source_masks(prep, frame)
        if rims:  # the old footprint and its blended rim are holes too (no feather: its neighbours are known)
            ring = old_rim(torch.stack(masks).amax(0)[sl], moved, depth[sl])
            valid, w = valid * (1.0 - ring), w * (1.0 - ring)
        cover = object_cover(moved, COVER_PX * int(math.ceil(scale)))
        shell = moved_shell(prep, geo, masks, depth, area)
        if shell is not None:  # the moved object's unseen sides are on the object too
            cover = object_cover(torch.maximum(cover, shell), 0)
        # nothing in front of the uncovered ground is its source either
        cover = torch.maximum(cover, in_front(frame.depth(geo.edited_depth)[sl], valid, cover))
    out[sl] = w * warped + (1.0 - w) * hole_fill(warped, valid, generated[sl], RIM_PX * scale, cover)
    return out


RING_PX = 1  # input px around the object's old silhouette that are refilled (its blended rim)
OCCLUDER = 0.05  # a pixel this much (relative) nearer than the object beside it is in front of it, not its rim
BESIDE_PX = 1  # input px beside the moved silhouette kept from the warp (the moved object's own blended rim)


def in_front(depth: torch.Tensor, valid: torch.Tensor, cover: torch.Tensor, margin: float = OCCLUDER) -> torch.Tensor:
    """``(1, 1, H, W)`` in {0, 1}: the valid pixels more than ``margin`` (relative) nearer than the nearest hole outside ``cover``: another object standing
    beside the ground a move uncovered, which the inpainting of that ground leaves out as a source
    (its colour would bleed into the floor). ``depth`` ``(1, 1, H, W)`` the edited z-depth ``d'``
    (a hole's: the background filled in); ``valid`` ``M_v`` and ``cover`` (:func:`object_cover`)
    ``(1, 1, H, W)``. Measured on 30 tuning edits (seeds from 1 003 100, the warp baseline,
    ``python benchmarks/silhouette_light.py``, ``finish`` against ``finish_no_front``): the
    uncovered footprint +0.39 dB, the whole image +0.12 dB. The margin is :func:`old_rim`'s
    occluder test's (a scratch comparison, not kept: 2 % did 0.05 dB better on the whole image,
    10 % 0.1 dB worse)."""
    from scipy.ndimage import distance_transform_edt

    ground = ((valid[0, 0] < 0.5) & (cover[0, 0] < 0.5)).cpu().numpy()
    if not ground.any():
        return torch.zeros_like(cover)
    _, (iy, ix) = distance_transform_edt(~ground, return_indices=True)
    d = depth[0, 0].float().cpu()
    nearest = d[torch.from_numpy(iy), torch.from_numpy(ix)]
    return ((valid[0, 0].cpu() >= 0.5) & (d < nearest * (1.0 - margin))).float()[None, None].to(cover)


def old_rim(source: torch.Tensor, moved: torch.Tensor, depth: torch.Tensor | None = None,
            ring: int = RING_PX, beside: int = BESIDE_PX) -> torch.Tensor:
    """``(1, 1, H, W)`` in {0, 1}: where the object was, grown by ``ring`` px, outside the moved
    object grown by ``beside`` px and outside anything in front of the object: ``source``
    ``(1, 1, H, W)`` the object's old silhouette, ``moved`` the moved one (``> 0.5`` is the
    object), ``depth`` ``(1, 1, H, W)`` z-depth (a grown pixel more than :data:`OCCLUDER` nearer
    than the object beside it is an occluder's edge and stays), or ``None``.

    A mask drawn on an image (a renderer's, a segmenter's) leaves the silhouette's anti-aliased
    rim outside it: those pixels mix the object's colour with the background's, so the warp would
    leave a faint outline of the object where it was. The finish treats them as a hole, and the
    whole old footprint with them (the warp's holes already cover it except where the moved
    silhouette's soft edge reaches in). The pixels within ``beside`` px of the moved silhouette
    stay the warp's: the moved object's own blended rim lies there, and an inpainting from the
    background loses it. Measured on 30 tuning edits (seeds from 1 003 100, the warp baseline
    with its holes inpainted, ``python benchmarks/silhouette_light.py``): the pixels the truth
    makes brighter +0.7 dB, those it makes darker +2.5 dB, the background +0.2 dB, the whole
    image -0.2 dB, the sharpness of the edit region 0.84 against 0.86; with ``beside=0`` the
    background -0.1 dB and the whole image -0.3 dB; a ring of 2 px did worse.
    """
    obj = (source > 0.5).float()
    grown = F.max_pool2d(obj, 2 * ring + 1, 1, ring)
    if depth is not None:
        far = torch.full_like(depth.float(), float("inf"))
        near = -F.max_pool2d(-torch.where(obj > 0.5, depth.float(), far), 2 * ring + 1, 1, ring)
        grown = grown * torch.maximum(obj, (depth.float() >= near * (1.0 - OCCLUDER)).float())
    there = F.max_pool2d((moved > 0.5).float(), 2 * beside + 1, 1, beside) if beside > 0 else (moved > 0.5).float()
    return grown * (1.0 - there)


def _source_masks(prep: Prepared, frame: Frame) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``([mask per edited object], depth)``, ``(1, 1, H, W)`` each at the input's size: the
    edited objects where they are in the input (in {0, 1}) and the input's z-depth: the request's
    own when it carries them, else the work-size ones brought back."""
    req = prep.request
    depth = req.source_depth.float().cpu() if req.source_depth is not None else frame.depth(prep.inverted.depth)
    if req.kind == "objects" and req.object_masks:
        return [(m.float().cpu() > 0.5).float() for m in req.object_masks], depth
    if req.source_mask is not None:
        return [(req.source_mask.float().cpu() > 0.5).float()], depth
    return [(frame.back(prep.inverted.mask, 0.0) > 0.5).float()], depth


def moved_shell(prep: Prepared, geo: Geometry, masks: list[torch.Tensor], depth: torch.Tensor,
                area: tuple[int, int, int, int]) -> torch.Tensor | None:
    """``(1, 1, h, w)`` in {0, 1} on ``area`` ``(y0, y1, x0, x1)`` (input pixels), or ``None`` (no
    object move): where the edited objects lie after the edit, their unseen backs included: each
    object's shell (stage 3's occluder, :func:`~diffusion_handles.geometry.shadow.occluder_points`,
    from ``masks`` and ``depth`` at the input's size, :func:`_source_masks`) moved by its
    transform and projected onto the area (:func:`~diffusion_handles.geometry.shadow.shell_footprint`
    with the photo's camera restricted to it; each shell is lifted from its object's bounding box
    alone, so a large photo costs what its objects cover). A hole there is a side of the object
    the input never showed (a turned box's face), so :func:`hole_fill` inpaints it from the object
    too, not from the background alone. Measured on 30 tuning edits (seeds from 1 003 100, the
    warp baseline, ``python benchmarks/silhouette_light.py``; ``finish_no_front`` against
    ``finish_no_shell``): the whole image +0.38 dB, the object +0.14 dB, the uncovered footprint
    +0.73 dB."""
    from diffusion_handles.geometry import Camera
    from diffusion_handles.geometry.shadow import occluder_points, shell_footprint
    from diffusion_handles.geometry.window import crop

    req = prep.request
    if geo.flow is None or geo.keep_image is not None or req.kind not in ("object", "objects"):
        return None
    camera = Camera(*prep.inverted.input_hw, req.fov_deg)
    pts = []
    for m, t in zip(masks, geo.flow.transforms, strict=False):
        b = _bounds(m, pad=0)
        if b is not None:
            box = (b[2], b[0], b[3], b[1])
            pts.append(t.apply(occluder_points(crop(depth, box), crop(m, box), camera.window(box)).double()).float())
    y0, y1, x0, x1 = area
    return shell_footprint(torch.cat(pts), camera.window((x0, y0, x1, y1))) if pts else None


def fine_edit(prep: Prepared, geo: Geometry, area: tuple[int, int, int, int]):
    """The object edit of ``geo.flow`` recomputed at the input's resolution on ``area``
    ``(y0, y1, x0, x1)`` (input pixels), or ``None`` when the request has no ``source_depth``
    (and, for one object, no ``source_mask``) or the recomputation fails.

    The transforms are the work-size edit's resolved :class:`Similarity` s (camera axes, scene
    units), which do not depend on the image's resolution; the camera is the photo's restricted
    to ``area`` (:meth:`Camera.window`), so the flow is the work-size one sampled finer, but its
    silhouettes and holes follow the input's depth and mask pixel by pixel instead of the work
    grid's steps. ``area`` holds every pixel the region covers (the object where it is and
    where it lands), so cropping loses no part of the object.

    Returns:
        an :class:`~diffusion_handles.geometry.EditGeometry` of the ``area`` crop (``source`` in
        the crop's normalised coordinates) or ``None``.
    """
    from diffusion_handles.geometry import Camera, compute_edit, compute_multi_edit
    from diffusion_handles.geometry.window import crop

    req = prep.request
    if req.source_depth is None or req.kind not in ("object", "objects"):
        return None
    if req.kind == "object" and req.source_mask is None:
        return None
    y0, y1, x0, x1 = area
    box = (x0, y0, x1, y1)
    camera = Camera(*prep.inverted.input_hw, req.fov_deg).window(box)
    depth = crop(req.source_depth.float().cpu(), box)
    try:
        if req.kind == "object":
            mask = (crop(req.source_mask.float().cpu(), box) > 0.5).float()
            return compute_edit(depth, mask, geo.flow.transforms[0], camera, complete_back=geo.flow.back_depth is not None)
        masks = [(crop(m.float().cpu(), box) > 0.5).float() for m in req.object_masks]
        return compute_multi_edit(depth, masks, list(geo.flow.transforms), camera)
    except HandlesError:  # e.g. an object too thin to survive at one resolution: the work-size flow
        return None


def work_area(region: torch.Tensor, scale: float) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)``: where :func:`_detail` works: the bounding box of ``region > 0``
    ``(1, 1, H, W)`` grown by a hole's blend (:data:`RIM_PX` work pixels of ``scale`` input
    pixels each) and a work pixel, or ``None`` for an empty region."""
    return _bounds(region, pad=int(math.ceil(scale)) - 1 + int(math.ceil(RIM_PX * scale)) + 2)


def _bounds(region: torch.Tensor, pad: int) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` of ``region > 0`` ``(1, 1, H, W)`` grown by ``pad`` px, or ``None``."""
    ys = torch.nonzero(region[0, 0].amax(1) > 0).flatten()
    xs = torch.nonzero(region[0, 0].amax(0) > 0).flatten()
    if ys.numel() == 0:
        return None
    h, w = region.shape[-2:]
    return (max(0, int(ys[0]) - pad), min(h, int(ys[-1]) + 1 + pad),
            max(0, int(xs[0]) - pad), min(w, int(xs[-1]) + 1 + pad))


def _erode(m: torch.Tensor, r: int) -> torch.Tensor:
    """Square erosion of ``m`` ``(1, 1, H, W)`` in [0, 1] by ``r`` px (outside the image counts as
    1), separable, so its cost grows with ``r``, not ``r`` squared."""
    if r <= 0:
        return m
    m = -F.max_pool2d(F.pad(-m, (0, 0, r, r), value=-1.0), (2 * r + 1, 1), 1)
    return -F.max_pool2d(F.pad(-m, (r, r, 0, 0), value=-1.0), (1, 2 * r + 1), 1)
