"""Latent refinement after the VAE encoder (semi-amortised inference): the objective's sign and
anchor, the model folder's own setting, and the pipeline resolving it before the cache key."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from diffusion_handles.diffusion.backbone import Backbone, refine_latent
from diffusion_handles.diffusion.config import InversionConfig
from diffusion_handles.errors import HandlesError
from diffusion_handles.pipeline import DiffusionHandles
from tests.diffusion.conftest import make_scene


def _round_trip_error(vae, x, z) -> float:
    with torch.no_grad():
        return float((vae.decode(z).sample - x).pow(2).mean())


def test_refinement_lowers_the_decoders_error_and_the_anchor_holds_the_latent(backbone):
    vae = backbone.vae
    x = make_scene()[0] * 2 - 1  # (1, 3, S, S) in [-1, 1]
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mode()
    assert torch.equal(refine_latent(vae, x, z, 0), z)  # 0 steps: the encoder's latent
    free = refine_latent(vae, x, z, 30, lr=5e-2, anchor=0.0)
    held = refine_latent(vae, x, z, 30, lr=5e-2, anchor=100.0)
    e0, e_free, e_held = (_round_trip_error(vae, x, t) for t in (z, free, held))
    assert e_free < 0.8 * e0  # a gradient step the wrong way would raise it
    assert e_free < e_held < e0 + 1e-6
    drift = lambda t: float((t - z).pow(2).mean().sqrt() / z.pow(2).mean().sqrt())  # noqa: E731
    assert drift(held) < 0.3 * drift(free)  # the anchor term pulls towards the encoder's latent
    assert all(p.grad is None for p in vae.parameters())  # the VAE itself is not trained


def test_encode_image_uses_the_models_own_refinement(tiny_components):
    x = make_scene()[0]
    plain = Backbone(tiny_components)
    refined = Backbone(tiny_components, encode_refine_steps=10)
    z0, z10 = plain.encode_image(x), refined.encode_image(x)
    assert not torch.allclose(z0, z10)
    torch.testing.assert_close(refined.encode_image(x, refine_steps=0), z0)
    torch.testing.assert_close(plain.encode_image(x, refine_steps=10), z10)


def test_model_folder_settings_file_is_read_and_checked(tiny_model_dir, tmp_path):
    assert Backbone.from_pretrained(tiny_model_dir).encode_refine_steps == 0  # no file: none
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "handles.json").write_text(json.dumps({"encode_refine_steps": 7}))
    assert Backbone.from_pretrained(folder).encode_refine_steps == 7
    for bad in ('{"encode_refine_steps": -1}', '{"encode_refine_steps": "many"}', "[1]", "{not json"):
        (folder / "handles.json").write_text(bad)
        with pytest.raises(HandlesError, match="--model: .*handles.json"):
            Backbone.from_pretrained(folder)


def test_invert_resolves_the_models_refinement_before_the_cache_key(tiny_components, tmp_path):
    image, depth, mask = make_scene()
    bb = Backbone(tiny_components, model_id="tiny", encode_refine_steps=5)
    h = DiffusionHandles(bb)
    cfg = InversionConfig(num_steps=3, null_inner_steps=0)
    inv = h.invert(image, "a box", depth, mask, inversion=cfg)
    assert inv.config.encode_refine_steps == 5
    sample = lambda steps: bb.encode_image(image, torch.Generator().manual_seed(0), refine_steps=steps)  # noqa: E731
    torch.testing.assert_close(inv.latent_0, sample(5))  # invert's default seed 0 samples the posterior
    explicit = h.invert(image, "a box", depth, mask, inversion=dataclasses.replace(cfg, encode_refine_steps=5))
    none = h.invert(image, "a box", depth, mask, inversion=dataclasses.replace(cfg, encode_refine_steps=0))
    assert explicit.key == inv.key and none.key != inv.key
    torch.testing.assert_close(none.latent_0, sample(0))
    with pytest.raises(ValueError, match="encode_refine_steps"):
        InversionConfig(encode_refine_steps=-2)
