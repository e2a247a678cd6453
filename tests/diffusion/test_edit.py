"""Guided generation through the facade: identity edits, G decreases, schedule, Eq. 3, sizes."""

from __future__ import annotations

import pytest
import torch

from diffusion_handles.diffusion.config import GuidanceConfig, InversionConfig
from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry import HandleEdit

from .conftest import make_scene

N = 6


@pytest.fixture(scope="module")
def inverted(handles, scene):
    image, depth, mask = scene
    return handles.invert(image, "a box in front of a wall", depth, mask,
                          inversion=InversionConfig(num_steps=N, null_inner_steps=2))


def test_identity_edit_reproduces_the_reconstruction(handles, inverted, scene):
    _, depth, _ = scene
    out = handles.edit(inverted, HandleEdit(), background_depth=depth)
    torch.testing.assert_close(out.edited_depth, depth)
    torch.testing.assert_close(out.generated, out.reconstruction, atol=1e-4, rtol=0)
    assert all(e["G"] < 1e-8 for steps in out.energies.values() for e in steps)
    assert out.edited.shape == (1, 3, 16, 16)


def test_each_guidance_step_lowers_G_in_the_paper_mode(handles, inverted):
    out = handles.edit(inverted, HandleEdit(translate=(0.25, 0.0, 0.0)),
                       guidance=GuidanceConfig(mode="paper"))
    assert out.energies, "no guided steps ran"
    for step, history in out.energies.items():
        g = [e["G"] for e in history]
        assert len(g) == 3
        assert all(b < a for a, b in zip(g, g[1:], strict=False)), (step, g)
    assert not torch.allclose(out.edited, out.reconstruction, atol=1e-3)


def test_normalized_guidance_lowers_G_and_ends_below_depth_only(handles, inverted):
    """The default (normalized) rule: each guided timestep ends with a lower G than it started
    with, and the energy the generation reaches is well below the unguided one's."""
    edit = HandleEdit(translate=(0.25, 0.0, 0.0))
    out = handles.edit(inverted, edit, guidance=GuidanceConfig(identity_transfer=None))
    for step, history in out.energies.items():
        assert min(e["G"] for e in history) < history[0]["G"], (step, history)
    free = handles.edit(inverted, edit,
                        guidance=GuidanceConfig(grad_steps=0, guide_until=5, identity_transfer=None))
    last = max(out.energies)  # the last guided step: G of the latent it starts from, both runs
    assert out.monitor[last]["G"] < 0.75 * free.monitor[last]["G"]


def test_schedule_guides_the_intended_layers_at_the_intended_steps(handles, inverted):
    out = handles.edit(inverted, HandleEdit(translate=(0.25, 0.0, 0.0)))
    # tiny UNet: 2 up blocks, so the paper's "layer 2, layer 3" are up_blocks[0], up_blocks[1]
    expected = {0: [1], 1: [0], 2: [0, 1], 3: [1], 4: [0]}  # guide until round(38/50 * 6) = 5
    seen = {s: sorted(int(k[4:-1]) for k in h[0] if k.startswith("G_o[")) for s, h in out.energies.items()}
    assert seen == expected
    assert out.config["layers"] == [0, 1] and out.config["guide_until"] == 5
    # UNet evaluations of the edit: CFG (2) every step + (forward, backward) per gradient step
    assert out.unet_evals["edit"]["forward"] == 2 * N + 3 * 5
    assert out.unet_evals["edit"]["backward"] == 3 * 5


def test_eq3_noise_term_and_weights_change_the_result(handles, inverted):
    edit = HandleEdit(translate=(0.25, 0.0, 0.0))
    base = handles.edit(inverted, edit, guidance=GuidanceConfig(grad_steps=1))
    lam = handles.edit(inverted, edit, guidance=GuidanceConfig(grad_steps=1, noise_guidance_scale=0.5))
    none = handles.edit(inverted, edit, guidance=GuidanceConfig(grad_steps=1, w_object=0.0, w_background=0.0))
    avg = handles.edit(inverted, edit, guidance=GuidanceConfig(grad_steps=1, object_guidance="averaged"))
    # the generation (the finish keeps the warped input wherever it has pixels, so compare before it)
    assert not torch.allclose(base.generated, lam.generated, atol=1e-4)
    assert not torch.allclose(base.generated, avg.generated, atol=1e-4)
    assert not torch.allclose(base.generated, none.generated, atol=1e-4)


def test_unrecorded_layers_are_refused(handles, inverted):
    with pytest.raises(HandlesError, match="did not record"):
        handles.edit(inverted, HandleEdit(), guidance=GuidanceConfig(guide_until=N))


def test_any_size_and_fast_inversion(handles):
    image, depth, mask = make_scene(size=24)
    image, depth, mask = image[..., :18, :22], depth[..., :18, :22], mask[..., :18, :22]
    inv = handles.invert(image, "a box", depth, mask,
                         inversion=InversionConfig(method="negative-prompt", num_steps=4))
    assert tuple(inv.image.shape[-2:]) == (16, 24)  # a multiple of 4 (what the tiny model accepts) nearby
    out = handles.edit(inv, HandleEdit(rotate_deg=20.0, scale=1.1))
    assert out.edited.shape == (1, 3, 18, 22) and out.edited_depth.shape == (1, 1, 18, 22)
    assert inv.unet_evals["reconstruction"]["forward"] == 4  # null text = prompt: one pass per step
    assert out.unet_evals["edit"]["forward"] == 4 + 3 * 3


def test_bad_inputs_raise_one_line_errors(handles):
    image, depth, mask = make_scene()
    with pytest.raises(HandlesError, match="depth: expected size"):
        handles.invert(image, "a box", depth[..., :8, :], mask)
    with pytest.raises(HandlesError, match="empty mask"):
        handles.invert(image, "a box", depth, torch.zeros_like(mask))
    with pytest.raises(HandlesError, match="positive"):
        handles.invert(image, "a box", -depth, mask)


def test_many_edits_of_one_inversion_do_their_shared_work_once(handles, scene, monkeypatch):
    """An animation edits one inversion N times: the harmonic fill of d'_b is solved once per
    (depth, mask), and the inversion's integrity check runs when it is made, not per edit."""
    import diffusion_handles.stages.s2_geometry as stage
    from diffusion_handles.diffusion.inverted import InvertedImage

    image, depth, mask = make_scene(seed=3)
    monkeypatch.setattr(stage, "_FILL", {})  # forget fills of other tests
    inv = handles.invert(image, "a box", depth, mask, inversion=InversionConfig(method="ddim", num_steps=3))
    assert inv.verified
    fills, checks = [], []
    real_fill, real_problem = stage.background_depth_fill, InvertedImage.problem
    monkeypatch.setattr(stage, "background_depth_fill", lambda d, m: fills.append(1) or real_fill(d, m))
    monkeypatch.setattr(InvertedImage, "problem", lambda self: checks.append(1) or real_problem(self))
    outs = [handles.edit(inv, HandleEdit((0.05 * k, 0.0, 0.0))) for k in range(1, 4)]
    assert len(fills) == 1 and checks == []
    assert not torch.equal(outs[0].edited_depth, outs[2].edited_depth)  # still three different edits


def test_edits_of_one_sampled_inversion_encode_its_mode_once(handles, scene, monkeypatch):
    """The pixel transfer needs E(I), the posterior's mode; an inversion that sampled the posterior
    (``seed`` set) has it only by encoding again. Each edit encodes the warped image; E(I) itself is
    encoded for the first edit only, and the later edits get the same result as a fresh
    inversion's first edit (a memo that went stale or served another image would differ)."""
    image, depth, mask = scene
    cfg = InversionConfig(method="ddim", num_steps=3)
    inv = handles.invert(image, "a box", depth, mask, inversion=cfg, seed=1)
    fresh = handles.invert(image, "a box", depth, mask, inversion=cfg, seed=1)
    calls = []
    real = type(handles.backbone).encode_image
    monkeypatch.setattr(type(handles.backbone), "encode_image", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    moves = [HandleEdit(translate=(0.05 * k, 0.0, 0.0)) for k in (1, 2, 3)]
    outs = [handles.edit(inv, m) for m in moves]
    assert len(calls) == 3 + 1  # one warped image per edit, E(I) once
    again = handles.edit(fresh, moves[2])
    assert torch.equal(again.edited, outs[2].edited)


def test_pixel_transfer_changes_nothing_for_an_identity_edit_and_something_for_a_move(handles, inverted, scene):
    """``transfer_source="pixels"`` swaps the warped clean latent for the encoding of the warped
    image: with no move the two are the same latent, so the edit must be bit-for-bit the latent
    transfer's (a wrong reference latent, e.g. the inversion's sampled one, or a flow applied at
    the wrong resolution would show here); with a move it must differ."""
    image, depth, mask = scene
    sampled = handles.invert(image, "a box in front of a wall", depth, mask, seed=3,
                             inversion=InversionConfig(num_steps=N, null_inner_steps=2))  # E(I) is not latent_0
    cases = [(inverted, HandleEdit(), True), (sampled, HandleEdit(), True),
             (inverted, HandleEdit(translate=(0.25, 0.0, 0.0), rotate_deg=30.0), False)]
    for inv, edit, same in cases:
        a = handles.edit(inv, edit, background_depth=depth,
                         guidance=GuidanceConfig(transfer_source="latent"))
        b = handles.edit(inv, edit, background_depth=depth)  # the default: pixels
        assert torch.allclose(a.generated, b.generated, atol=1e-5) == same


def test_transfer_source_is_checked():
    with pytest.raises(ValueError, match="transfer_source"):
        GuidanceConfig(transfer_source="pixel")
