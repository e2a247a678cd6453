"""Inversion: null-text beats DDIM at high guidance; save/load round trip; seeds; UNet counts."""

from __future__ import annotations

import pytest
import torch

from diffusion_handles.diffusion.conditioning import depth_to_condition
from diffusion_handles.diffusion.config import GuidanceConfig, InversionConfig
from diffusion_handles.diffusion.inversion import Conditions, invert
from diffusion_handles.diffusion.inverted import InvertedImage
from diffusion_handles.errors import HandlesError
from diffusion_handles.pipeline import DiffusionHandles

from .conftest import make_scene


def test_null_text_reconstructs_far_better_than_ddim_at_high_guidance(backbone):
    image, depth, _ = make_scene()
    z0 = backbone.encode_image(image)
    text, empty = backbone.encode_prompt("a box in front of a wall"), backbone.encode_prompt("")
    dcond = depth_to_condition(depth, z0.shape[-2:])
    errors = {}
    for method in ("ddim", "null-text"):
        cfg = InversionConfig(method=method, num_steps=6, guidance_scale=7.5, null_inner_steps=10, null_lr=0.1)
        res = invert(backbone, z0, Conditions(text, empty, dcond), cfg, progress=False)
        errors[method] = float((res.latent_0 - z0).pow(2).mean())
    assert errors["null-text"] < 0.2 * errors["ddim"], errors


def test_unet_counts_per_stage_match_the_configuration(handles):
    image, depth, mask = make_scene()
    n, inner = 4, 2
    guidance = GuidanceConfig(grad_steps=2)
    inv = handles.invert(image, "a box", depth, mask, guidance=guidance,
                         inversion=InversionConfig(num_steps=n, null_inner_steps=inner, null_early_stop=0.0))
    assert inv.unet_evals["ddim_inversion"] == {"forward": n, "backward": 0, "calls": n}
    # per step: 1 conditional + `inner` unconditional with backward + 1 unconditional
    assert inv.unet_evals["null_text"] == {"forward": n * (2 + inner), "backward": n * inner, "calls": n * (2 + inner)}
    assert "reconstruction" not in inv.unet_evals  # recorded during the null-text passes
    plan = guidance.schedule(n, 2)
    assert set(inv.activations) == {(lay, i) for i, ls in enumerate(plan) for lay in ls}

    for method, per_step in (("ddim", 2), ("negative-prompt", 1)):
        inv = handles.invert(image, "a box", depth, mask, guidance=guidance,
                             inversion=InversionConfig(method=method, num_steps=n))
        assert inv.unet_evals["reconstruction"]["forward"] == per_step * n
        assert inv.unet_evals["reconstruction"]["backward"] == 0


def test_inverted_image_round_trips_bit_exactly(handles, tmp_path):
    image, depth, mask = make_scene()
    inv = handles.invert(image, "a box", depth, mask,
                         inversion=InversionConfig(num_steps=3, null_inner_steps=1),
                         guidance=GuidanceConfig(record_dtype="float16"))
    inv.save(tmp_path / "inv")
    back = InvertedImage.load(tmp_path / "inv")
    for name in ("image", "depth", "mask", "x_T", "latent_0", "text_embedding", "null_embeddings", "reconstruction"):
        a, b = getattr(inv, name), getattr(back, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert inv.activations.keys() == back.activations.keys()
    assert all(torch.equal(inv.activations[k], back.activations[k]) for k in inv.activations)
    assert all(t.dtype == torch.float16 for t in back.activations.values())
    assert (back.prompt, back.model_id, back.config, back.record_plan, back.key, back.input_hw) == \
           (inv.prompt, inv.model_id, inv.config, inv.record_plan, inv.key, inv.input_hw)
    with pytest.raises(HandlesError, match="expected tensors.safetensors"):
        InvertedImage.load(tmp_path / "nothing")


def test_cache_skips_inversion_and_keys_on_inputs(backbone, tmp_path):
    image, depth, mask = make_scene()
    cached = DiffusionHandles(backbone, cache_dir=tmp_path).set_progress_bar_config(disable=True)
    kw = dict(inversion=InversionConfig(method="negative-prompt", num_steps=3))
    first = cached.invert(image, "a box", depth, mask, **kw)
    second = cached.invert(image, "a box", depth, mask, **kw)
    assert not first.cache_hit and second.cache_hit and first.key == second.key
    assert torch.equal(first.x_T, second.x_T)
    other = cached.invert(image, "a red box", depth, mask, **kw)
    assert not other.cache_hit and other.key != first.key
    assert len(list(tmp_path.iterdir())) == 2


def test_same_seed_same_output_and_seed_matters(handles):
    image, depth, mask = make_scene()
    cfg = InversionConfig(method="ddim", num_steps=3)
    a = handles.invert(image, "a box", depth, mask, inversion=cfg, seed=5)
    b = handles.invert(image, "a box", depth, mask, inversion=cfg, seed=5)
    c = handles.invert(image, "a box", depth, mask, inversion=cfg, seed=6)
    assert torch.equal(a.x_T, b.x_T) and torch.equal(a.reconstruction, b.reconstruction)
    assert not torch.equal(a.x_T, c.x_T)  # the seed draws the VAE posterior sample


def test_inversion_config_refuses_a_bad_null_lr():
    for bad in (0.0, -1e-2, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="null_lr"):
            InversionConfig(null_lr=bad)
