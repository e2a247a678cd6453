"""Stage 4 of an edit: what the guided generation follows, and the latent it starts from.

For every recorded ``(layer, step)``: the target ``Psi' = W[rho(Psi), F]`` (Eq. 6, bilinear
``rho``, the flow evaluated at that layer's resolution), per layer the masks of the object term
(Eq. 8) and the background term (Eq. 9), and per target the energy divisor (the activation
variance of ``Psi`` in the normalized mode, 1 in the paper's). Then the latent preservation the
configuration asks for (blending with the inversion's trajectory, identity transfer of the
object's latents) and the starting latent (the inverted noise; a removal re-draws it in its
region).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from diffusion_handles.diffusion.backbone import Backbone
from diffusion_handles.diffusion.config import GuidanceConfig
from diffusion_handles.diffusion.energies import activation_scale
from diffusion_handles.diffusion.guidance import GuidePlan
from diffusion_handles.diffusion.inverted import InvertedImage
from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry import (
    EditGeometry,
    MultiEditGeometry,
    edit_region,
    latent_region,
    warp,
)
from diffusion_handles.geometry.shadow import Effects
from diffusion_handles.stages.s1_prepare import Prepared
from diffusion_handles.stages.s2_geometry import Geometry

# (targets {(layer, step): Psi'}, M'_o {layer: mask}, M'_b {layer: mask}) of one activation Psi:
# called with ((layer, step), Psi) and returns (Psi', M'_o, M'_b) at Psi's resolution.
FollowRule = Callable[[tuple[int, int], torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class Targets:
    """Stage 4's output.

    Attributes:
        plan: the guide plan (targets, masks, weights, step rule, latent preservation).
        x_T: ``(1, c, h, w)`` the latent the generation starts from.
        desc: the progress bar's label.
    """

    plan: GuidePlan
    x_T: torch.Tensor
    desc: str = "guided generation"


def targets(backbone: Backbone, prep: Prepared, geo: Geometry, guidance: GuidanceConfig) -> Targets:
    """Stage 4 for ``prep.request.kind``: a removal follows the input's own activations outside
    its region; every other kind the activations warped by its flow."""
    inv = prep.inverted
    if geo.flow is None:
        return _removal_targets(prep, geo, guidance)
    fx = geo.effects if geo.effects is not None and geo.effects.any else None
    shadows = None if fx is None else fx.region.to(inv.x_T.device)
    plan = guidance_targets(inv, geo.flow, guidance, prep.schedule_layers, tuple(inv.x_T.shape[-2:]), shadows)
    if prep.request.restyle is not None:
        restyle_plan(plan, geo.flow, guidance)
    if plan.transfer is not None and guidance.transfer_source == "pixels":
        alpha = backbone.schedule(inv.config.num_steps).alpha[plan.transfer_step]
        plan.transfer = pixel_transfer(backbone, inv, geo.flow, plan, alpha, fx)
    x_T = fresh_holes(inv.x_T, geo.flow) if guidance.hole_noise else inv.x_T
    return Targets(plan, x_T)


HOLE_NOISE_SEED = 0  # the fresh noise of GuidanceConfig.hole_noise (a removal's default noise_seed too)


def fresh_holes(x_T: torch.Tensor, geom: EditGeometry) -> torch.Tensor:
    """``x_T`` ``(1, c, h, w)`` with fresh noise (seed :data:`HOLE_NOISE_SEED`) in the latent cells
    of the edit's holes (``M_v = 0``) that no pixel of the moved object touches:
    ``GuidanceConfig.hole_noise``."""
    hw = tuple(x_T.shape[-2:])
    holes = (geom.valid.float() < 0.5).float()
    cells = F.adaptive_max_pool2d(holes, hw) * (1.0 - F.adaptive_max_pool2d((geom.edited_mask.float() > 0).float(), hw))
    if not bool((cells > 0).any()):
        return x_T
    gen = torch.Generator().manual_seed(HOLE_NOISE_SEED)
    noise = torch.randn(tuple(x_T.shape), generator=gen).to(x_T.device, x_T.dtype)
    cells = cells.to(x_T.device, x_T.dtype)
    return cells * noise + (1.0 - cells) * x_T


def restyle_plan(plan: GuidePlan, geom: EditGeometry, guidance: GuidanceConfig) -> None:
    """A restyle's guide plan (``GuidanceConfig.restyle_energy``, ``restyle_transfer``): the
    object term on appearance-normalized activations, and the identity transfer without the moved
    object's latent cells (``W[M_o, F]`` at the latent's size; the shadows' cells keep it; no
    transfer at all when nothing else is left)."""
    if guidance.restyle_energy == "appearance":
        plan.object_guidance = "appearance"
    if plan.transfer is None or guidance.restyle_transfer == "keep":
        return
    fe = geom.at_resolution(*plan.transfer.shape[-2:])
    moved = (fe.edited_mask.float() > 0.0).float().to(plan.transfer_mask)  # every cell the object touches
    plan.transfer_mask = plan.transfer_mask * (1.0 - moved)
    if not bool((plan.transfer_mask > 0).any()):
        plan.transfer = plan.transfer_mask = plan.transfer_step = None


def follow(inverted: InvertedImage, guidance: GuidanceConfig, rule: FollowRule, schedule_layers: list) -> GuidePlan:
    """The guide plan of every recorded activation under ``rule`` (targets and masks), with the
    configuration's weights and step rule; the energy divisors are the activation variances
    (normalized mode) or 1 (the paper's)."""
    edited, m_obj, m_bg, scale, norm = {}, {}, {}, {}, {}
    for key, psi in inverted.activations.items():
        edited[key], m_obj[key[0]], m_bg[key[0]] = rule(key, psi)
        norm[key] = activation_scale(psi)
        scale[key] = norm[key] if guidance.mode == "normalized" else 1.0
    return GuidePlan(
        layers=schedule_layers, edited=edited, mask_object=m_obj, mask_background=m_bg, scale=scale, norm=norm,
        w_object=guidance.w_object, w_background=guidance.w_background, object_guidance=guidance.object_guidance,
        mode=guidance.mode, grad_steps=guidance.grad_steps, step_size=guidance.step_size,
        relative_step=guidance.relative_step, noise_guidance_scale=guidance.noise_guidance_scale,
    )


def guidance_targets(inverted: InvertedImage, geom: EditGeometry, guidance: GuidanceConfig,
                     schedule_layers: list[tuple[int, ...]], latent_hw: tuple[int, int],
                     shadows: torch.Tensor | None = None) -> GuidePlan:
    """The guide plan of an edit with a flow (Sec. 5.1-5.2).

    Per layer ``M'_o = W[M_o, F] * M_v`` and ``M'_b = (1 - M'_o) * M_v`` (holes excluded from both
    energies). A :class:`MultiEditGeometry` gives ``M'_o`` one channel per object, so Eq. 8 is one
    term per object. A camera move (``geom.whole_scene``) makes the whole scene the "object":
    ``M'_o = M_v`` and there is no background (Eq. 9) term.

    Args:
        inverted: the inverted image (activations, trajectory, work-size masks).
        geom: the edit's geometry at the work size.
        guidance: the configuration; schedule_layers: per step, the up-blocks to guide.
        latent_hw: the latent grid ``(h, w)``.
        shadows: ``(1, 1, H, W)`` in [0, 1], the old and new shadows (stage 3), or ``None``: their
            feature cells leave ``M'_b`` (Eq. 9 would pull them back to the input's shading) and
            join the identity transfer's cells.
    """
    camera = geom.whole_scene
    per_res: dict = {}

    def warped(key, psi):
        hw = tuple(psi.shape[-2:])
        if hw not in per_res:
            per_res[hw] = geom.at_resolution(*hw)
        fe = per_res[hw]
        target = warp(psi.float(), fe.source.to(psi.device).float())
        if camera:  # every valid pixel is guided by Eq. 8; nothing is "background"
            m_obj = fe.valid.float().to(psi.device)
            return target, m_obj, torch.zeros_like(m_obj)
        per_object = geom.object_masks_at(*hw) if isinstance(geom, MultiEditGeometry) else fe.edited_mask
        m_bg = ((1.0 - fe.edited_mask.float()) * fe.valid.float()).to(psi.device)  # M'_b, Sec. 5.1
        if shadows is not None:
            m_bg = m_bg * (1.0 - _cells(shadows, hw).to(psi.device))
        return target, per_object.float().to(psi.device), m_bg

    plan = follow(inverted, guidance, warped, schedule_layers)
    if camera:
        plan.w_background = 0.0
    k = guidance.resolved_transfer_step(len(schedule_layers))
    if guidance.blend_latents or k is not None:
        _need_trajectory(inverted)
    if guidance.blend_latents:
        hard, _ = edit_region(geom.object_mask, geom.edited_mask, geom.valid)
        _blend(plan, inverted, latent_region(hard, latent_hw).float())
    if k is not None:
        _transfer(plan, inverted, geom, k, latent_hw)
        if shadows is not None:
            plan.transfer_mask = torch.maximum(plan.transfer_mask, _cells(shadows, latent_hw).to(plan.transfer_mask))
    return plan


def _cells(m: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``(1, 1, h, w)`` in {0, 1}: the cells of an ``h x w`` grid that touch ``m > 0.5`` ``(1, 1, H, W)``."""
    return (F.adaptive_max_pool2d((m.float() > 0.5).float(), hw) > 0.5).float()


def _need_trajectory(inverted: InvertedImage) -> None:
    if inverted.trajectory is None:
        raise HandlesError("guidance: latent blending and identity transfer need the inversion's trajectory; "
                           "invert again")


def _blend(plan: GuidePlan, inverted: InvertedImage, cells: torch.Tensor) -> None:
    """Latent blending: outside ``cells`` ``(1, 1, h, w)`` the latent follows the inversion's."""
    device = inverted.x_T.device
    plan.blend_mask = cells.to(device)
    plan.blend_trajectory = [t[None].float() for t in inverted.trajectory.to(device)]
    plan.blend_until = len(plan.layers)


def _transfer(plan: GuidePlan, inverted: InvertedImage, geom: EditGeometry, k: int, latent_hw) -> None:
    """Identity transfer at step ``k``: the inversion's latent there, warped by the flow."""
    device = inverted.x_T.device
    fe = geom.at_resolution(*latent_hw)
    start = inverted.x_T if k == 0 else inverted.trajectory[k - 1][None]  # the latent step k starts from
    plan.transfer = warp(start.float().to(device), fe.source.float().to(device))
    moved = fe.valid if geom.whole_scene else fe.edited_mask  # a camera move transfers the whole valid view
    plan.transfer_mask = (moved.float() > 0.5).float().to(device)
    plan.transfer_step = k


def _removal_targets(prep: Prepared, geo: Geometry, guidance: GuidanceConfig) -> Targets:
    """A removal follows the identity flow outside its region (``Psi' = Psi``; the local Eq. 8
    term and the Eq. 9 term over the kept cells, nothing guided inside, where the model fills
    from ``d'`` and the prompt), and starts from the inverted noise with the region's latent
    cells re-drawn (``noise_seed``; the inverted noise there still encodes the object)."""
    inv = prep.inverted
    kept: dict = {}

    def identity(key, psi):
        hw = tuple(psi.shape[-2:])
        if hw not in kept:  # a feature cell is kept only when none of its pixels is in the region
            kept[hw] = (1.0 - F.adaptive_max_pool2d(geo.hard.float(), hw)).to(psi.device)
        return psi.float(), kept[hw], kept[hw]

    plan = follow(inv, guidance, identity, prep.schedule_layers)
    plan.object_guidance = "local"  # nothing moves: each kept cell follows its own activation
    cells = latent_region(geo.hard, tuple(inv.x_T.shape[-2:])).float().to(inv.x_T.device)  # (1, 1, h, w)
    if guidance.blend_latents:
        _need_trajectory(inv)
        _blend(plan, inv, cells)
    x_T = inv.x_T
    if prep.request.noise_seed is not None:
        gen = torch.Generator().manual_seed(int(prep.request.noise_seed))
        noise = torch.randn(tuple(x_T.shape), generator=gen).to(x_T.device, x_T.dtype)
        x_T = cells.to(x_T.dtype) * noise + (1.0 - cells.to(x_T.dtype)) * x_T
    return Targets(plan, x_T, desc="removal")


def _encoded_mode(bb: Backbone, inverted: InvertedImage, image: torch.Tensor) -> torch.Tensor:
    """``E(I)`` ``(1, c, h, w)``: the VAE posterior's mode of the work-size image, refined as the
    inversion was. It is ``latent_0`` unless the inversion sampled the posterior (``seed`` set);
    then it is encoded once per inversion and device (``inverted.memo``), not once per edit: a
    trajectory's frames share it."""
    if inverted.seed is None:
        return inverted.latent_0
    steps = inverted.config.encode_refine_steps
    key = ("encoded_mode", str(image.device), steps)
    if key not in inverted.memo:
        inverted.memo[key] = bb.encode_image(image, refine_steps=steps)
    return inverted.memo[key]


def pixel_transfer(bb: Backbone, inverted: InvertedImage, geom, plan: GuidePlan, alpha: float,
                   shadows: Effects | None = None) -> torch.Tensor:
    """The identity-transfer latent with its clean part warped in pixels instead of latents.

    DDIM's latent at the transfer step is ``x_k = sqrt(a_k) x0 + sqrt(1 - a_k) eps`` (Song et al.
    2021, Eq. 12), so warping it in the latent grid (``plan.transfer = W[x_k]``) warps the clean
    image at the grid's resolution (1/8 of the pixels' on SD2, 1/4 on TinyWorld), which smears
    stripes and dots. This replaces that part by the encoding of the input warped in pixels:

        ``W[x_k] + sqrt(a_k) (E(W_px[I]) - W[E(I)])``

    with ``E`` the VAE encoder (mode, the inversion's latent refinement) and the holes of
    ``W_px[I]`` filled with ``D(W[E(I)])``, so they change little (by the round trip's error). An
    identity edit returns ``plan.transfer`` unchanged. With ``shadows`` (stage 3), the warped
    image has the old shadow lifted and the new one cast before it is encoded, so the cells of
    both shadows start the last steps from the shadow-moved input.

    Args:
        bb: the backbone (its VAE); inverted: the inversion (``image (1, 3, H, W)`` at the work size;
            its ``latent_0`` is ``E(I)`` when it was not a posterior sample, ``seed`` None).
        geom: the edit's geometry at the work size (``source (1, 2, H, W)``, ``valid (1, 1, H, W)``).
        plan: the guide plan with ``plan.transfer (1, c, h, w)`` set.
        alpha: ``alphas_cumprod`` at the transfer step's timestep.
        shadows: the edit's :class:`~diffusion_handles.geometry.shadow.Effects`, or ``None``.

    Returns:
        ``(1, c, h, w)`` float32, the corrected transfer latent.
    """
    device = plan.transfer.device
    steps = inverted.config.encode_refine_steps
    image = inverted.image.float().to(device)
    fe = geom.at_resolution(*plan.transfer.shape[-2:])
    z0 = _encoded_mode(bb, inverted, image)  # E(I)
    warped_z = warp(z0.float().to(device), fe.source.float().to(device))
    warped_px = warp(image, geom.source.float().to(device))
    valid = geom.valid.float().to(device)
    filled = warped_px * valid + bb.decode(warped_z).to(device) * (1.0 - valid)
    if shadows is not None:
        filled = shadows.apply(filled)
    z = bb.encode_image(filled, refine_steps=steps).float().to(device)
    return plan.transfer + alpha ** 0.5 * (z - warped_z)
