"""Tests that pin the method's equations: each catches one way of writing the paper wrong.

* the targets stage warps the activations (Eq. 6), not copies them;
* ``M'_o = W[M_o, F] * M_v`` guides the object, not ``M_v``; ``M'_b = (1 - M'_o) * M_v``;
* ``w_o`` weighs G_o and ``w_b`` weighs G_b, from the configuration to the energy;
* Eq. 3's ``lambda grad G`` term lowers G (its sign);
* null-text inversion's Adam learning rate follows ``lr * (1 - i / 100)``;
* the pixel composite keeps the input exactly outside the edit region.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_handles.diffusion.config import GuidanceConfig, InversionConfig
from diffusion_handles.diffusion.energies import background_energy, guidance_energy, object_energy
from diffusion_handles.geometry import Camera, HandleEdit, compute_edit
from diffusion_handles.pipeline import guidance_targets

from .conftest import make_scene

N = 6


@pytest.fixture(scope="module")
def inverted(handles, scene):
    image, depth, mask = scene
    return handles.invert(image, "a box in front of a wall", depth, mask,
                          guidance=GuidanceConfig(layer_cycle=((0, 1),), guide_until=N),
                          inversion=InversionConfig(num_steps=N, null_inner_steps=2))


def _shift_edit(inverted, cells_at_latent: int):
    """A translation parallel to the image plane moving the box (z = 2) by a whole number of
    latent cells: ``f * t / z`` pixels (Sec. 5.1)."""
    h, w = inverted.depth.shape[-2:]
    cam = Camera(h, w)
    px = cells_at_latent * w / inverted.x_T.shape[-1]
    tx = px * 2.0 / cam.fx
    return compute_edit(inverted.depth.double(), inverted.mask.double(), HandleEdit(translate=(tx, 0.0, 0.0)), cam)


def test_targets_are_the_activations_moved_by_the_flow(handles, inverted):
    geom = _shift_edit(inverted, 2)  # 2 latent cells = 2 cells of an 8x8 layer, 1 of a 4x4 one
    sched = GuidanceConfig(layer_cycle=((0, 1),), guide_until=N).schedule(N, handles.backbone.num_up_blocks)
    plan = guidance_targets(inverted, geom, GuidanceConfig(), sched, tuple(inverted.x_T.shape[-2:]))
    checked = 0
    for (lay, step), psi in inverted.activations.items():
        tgt = plan.edited[(lay, step)]
        hl, wl = psi.shape[-2:]
        shift = 2 * wl // inverted.x_T.shape[-1]
        inside = plan.mask_object[lay][0, 0] > 0.999  # cells fully covered by the moved box
        ys, xs = torch.nonzero(inside, as_tuple=True)
        assert len(ys) > 0
        torch.testing.assert_close(tgt[0, :, ys, xs], psi.float()[0, :, ys, xs - shift], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(tgt[0, :, ys, xs], psi.float()[0, :, ys, xs], atol=1e-3)
        checked += 1
    assert checked == len(inverted.activations)


def test_object_and_background_masks_are_M_o_prime_and_M_b_prime(handles, inverted):
    geom = _shift_edit(inverted, 2)
    sched = GuidanceConfig().schedule(N, handles.backbone.num_up_blocks)
    plan = guidance_targets(inverted, geom, GuidanceConfig(), sched, tuple(inverted.x_T.shape[-2:]))
    for lay, m_o in plan.mask_object.items():
        hw = m_o.shape[-2:]
        fe = geom.at_resolution(*hw)
        torch.testing.assert_close(m_o, fe.edited_mask.float())
        torch.testing.assert_close(plan.mask_background[lay], (1 - fe.edited_mask.float()) * fe.valid.float())
        assert not torch.allclose(m_o, fe.valid.float())  # M_v is not the object mask
        assert float(fe.valid.min()) < 1.0  # the box left a hole, excluded from both


def test_weights_reach_the_right_energy_terms(handles, inverted):
    geom = _shift_edit(inverted, 2)
    cfg = GuidanceConfig(w_object=2.0, w_background=7.0, mode="paper")
    sched = cfg.schedule(N, handles.backbone.num_up_blocks)
    plan = guidance_targets(inverted, geom, cfg, sched, tuple(inverted.x_T.shape[-2:]))
    assert (plan.w_object, plan.w_background) == (2.0, 7.0)
    (lay, step), psi = next(iter(inverted.activations.items()))
    cur = psi.float() + 0.1 * torch.randn(psi.shape, generator=torch.Generator().manual_seed(0))
    go = object_energy(cur, plan.edited[(lay, step)], plan.mask_object[lay])
    gb = background_energy(cur, plan.edited[(lay, step)], plan.mask_background[lay])
    assert float(go) > 0 and float(gb) > 0 and not math.isclose(float(go), float(gb), rel_tol=0.1)
    g, parts = plan.energy({lay: cur}, step, (lay,))
    assert float(g) == pytest.approx(2.0 * float(go) + 7.0 * float(gb), rel=1e-5)
    g2, _ = guidance_energy({lay: cur}, {lay: plan.edited[(lay, step)]}, (plan.mask_object, plan.mask_background),
                            (lay,), (2.0, 7.0), scales={lay: 4.0})
    assert float(g2) == pytest.approx(float(g) / 4.0, rel=1e-5)


def test_eq3_lambda_term_lowers_G(handles, inverted):
    """With no latent steps (relative step 0), guidance acts only through ``eps + lambda grad G``;
    it must lower the energy the next steps start from."""
    edit = HandleEdit(translate=(0.3, 0.0, 0.0))
    base = dict(grad_steps=1, relative_step=0.0, layer_cycle=((0, 1),), guide_until=N - 1, composite=False)
    off = handles.edit(inverted, edit, guidance=GuidanceConfig(**base))
    on = handles.edit(inverted, edit, guidance=GuidanceConfig(**base, noise_guidance_scale=0.1))
    later = [s for s in on.monitor if s >= 1]
    assert later
    assert sum(on.monitor[s]["G"] for s in later) < 0.97 * sum(off.monitor[s]["G"] for s in later)


def test_null_text_learning_rate_schedule(handles, scene, monkeypatch):
    image, depth, mask = scene
    lrs = []
    adam = torch.optim.Adam

    def spy(params, lr, **kw):
        lrs.append(lr)
        return adam(params, lr=lr, **kw)

    monkeypatch.setattr(torch.optim, "Adam", spy)
    cfg = InversionConfig(num_steps=N, null_inner_steps=1, null_lr=0.02)
    handles.invert(image, "a box", depth, mask, inversion=cfg)
    assert lrs == pytest.approx([0.02 * (1 - i / 100) for i in range(N)])


def test_composite_keeps_the_input_outside_the_edit_region(handles):
    image, depth, mask = make_scene(size=48)
    mask = torch.zeros_like(mask)
    mask[..., 14:22, 14:22] = 1.0  # a small object in a larger image
    depth = torch.where(mask > 0.5, torch.full_like(depth, 2.0), torch.full_like(depth, 3.0))
    inv = handles.invert(image, "a box", depth, mask,
                         inversion=InversionConfig(method="negative-prompt", num_steps=3))
    scene = (image, depth, mask)
    plain = GuidanceConfig(keep_detail=False, effects=False)  # the composite alone (the finish is pinned elsewhere)
    out = handles.edit(inv, HandleEdit(translate=(0.2, 0.0, 0.0)), guidance=plain, source_image=image)
    outside = out.region[0, 0] == 0
    inside = out.region[0, 0] == 1
    assert bool(outside.any()) and bool(inside.any())
    torch.testing.assert_close(out.edited[0][:, outside], image[0][:, outside], atol=0, rtol=0)
    torch.testing.assert_close(out.edited[0][:, inside], out.generated[0][:, inside], atol=0, rtol=0)
    # the region covers where the object was and where it went
    assert bool((out.region[0, 0][scene[2][0, 0] > 0.5] == 1).all())
    assert bool((out.region[0, 0][out.edited_mask[0, 0] > 0.5] == 1).all())


def test_identity_transfer_copies_the_warped_inversion_into_the_object(handles, inverted):
    """At the transfer step the latent inside M'_o is the inversion's latent of that step moved by
    the flow (a translation of whole latent cells: an exact copy of shifted cells)."""
    geom = _shift_edit(inverted, 2)
    cfg = GuidanceConfig(identity_transfer=0.5)
    sched = cfg.schedule(N, handles.backbone.num_up_blocks)
    plan = guidance_targets(inverted, geom, cfg, sched, tuple(inverted.x_T.shape[-2:]))
    k = cfg.resolved_transfer_step(N)
    assert plan.transfer_step == k == 3
    start = inverted.trajectory[k - 1][None]  # the latent step k starts from
    inside = plan.transfer_mask[0, 0] > 0.5
    ys, xs = torch.nonzero(inside, as_tuple=True)
    assert len(ys) > 0
    x = torch.zeros_like(start)
    moved = plan.transfer_identity(x, k)
    torch.testing.assert_close(moved[0][:, ys, xs], start[0][:, ys, xs - 2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(moved[0][:, ~inside], x[0][:, ~inside])


def test_normalized_step_is_bounded_by_the_noise_level_and_the_polyak_step():
    from diffusion_handles.diffusion.guidance import GuidePlan, latent_update

    plan = GuidePlan(layers=[], edited={}, mask_object={}, mask_background={}, relative_step=0.2)
    x = torch.zeros(1, 1, 2, 2)
    g = torch.tensor([[[[2.0, 1.0], [0.0, -1.0]]]])
    alpha = 0.75  # noise level sqrt(1 - alpha) = 0.5
    big = latent_update(x, g, 1e9, plan, alpha)
    assert float(big.abs().max()) == pytest.approx(0.2 * 0.5)  # no element moves more than 0.2 x noise
    torch.testing.assert_close(big, -0.05 * g)  # the gradient's shape is kept
    small = latent_update(x, g, 0.06, plan, alpha)  # Polyak: G / |g|^2 = 0.06 / 6
    torch.testing.assert_close(small, -0.01 * g)
    torch.testing.assert_close(latent_update(x, g, 1e9, plan, alpha, shrink=0.5), -0.025 * g)
    torch.testing.assert_close(latent_update(x, g, 0.0, plan, alpha), x)  # G = 0: not moved
    paper = GuidePlan(layers=[], edited={}, mask_object={}, mask_background={}, mode="paper", step_size=0.1)
    torch.testing.assert_close(latent_update(x, g, 1e9, paper, alpha), -0.1 * g)


def test_long_schedules_keep_a_positive_learning_rate_and_valid_timesteps(backbone):
    """``--steps`` goes up to 1000: null-text's rate must stay positive past step 100 (Adam
    refuses a negative one) and the schedule must stay within the training timesteps."""
    from diffusion_handles.diffusion.config import InversionConfig
    from diffusion_handles.diffusion.ddim import make_schedule
    from diffusion_handles.diffusion.inversion import null_text_lr

    cfg = InversionConfig(num_steps=1000)
    assert min(null_text_lr(cfg, i) for i in range(1000)) > 0
    sched = make_schedule(backbone.scheduler, 1000)
    assert len(sched.timesteps) == 1000 and max(sched.timesteps) < len(backbone.scheduler.alphas_cumprod)
