"""The shipped TinyWorld model: loads like a hub model, and its images follow the depth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffusion_handles.world.model import build_tokenizer_files, load_tokenizer
from diffusion_handles.world.scene import CAPTION_WORDS


def test_tokenizer_encodes_every_caption_word_as_one_token(tmp_path):
    build_tokenizer_files(tmp_path)
    tok = load_tokenizer(tmp_path)
    for w in CAPTION_WORDS:
        assert len(tok(w, add_special_tokens=False).input_ids) == 1, w
    ids = tok("a red striped cube and an orange sphere on a wooden floor by a grey wall").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 18


def test_shipped_model_loads_through_the_backbone_path():
    from diffusion_handles.diffusion.backbone import Backbone
    from diffusion_handles.world import model_path

    path = model_path()
    files = [f for f in path.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 40 * 2**20
    assert max(f.stat().st_size for f in files) <= 16 * 2**20
    assert (path / "model_index.json").is_file()
    bb = Backbone.from_pretrained("tinyworld")
    assert bb.unet.config.in_channels == bb.vae.config.latent_channels + 1
    assert bb.default_size == 128 and bb.vae_factor == 4 and bb.vae.config.latent_channels == 8
    # since model version 2.5 the encoder is twice as wide as the decoder (an AsymmetricAutoencoderKL)
    assert tuple(bb.vae.config.down_block_out_channels) == tuple(2 * c for c in bb.vae.config.up_block_out_channels)
    assert bb.scaling_factor != 1.0  # set from the training latents
    for w in ("red", "striped", "cylinder", "wooden"):
        assert len(bb.tokenizer(w, add_special_tokens=False).input_ids) == 1


def _tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32), layers_per_block=1,
                         norm_num_groups=8, mid_block_add_attention=False, sample_size=32).eval()


def test_widened_encoder_gives_the_same_latents_and_keeps_the_decoder():
    """Net2WiderNet widening (adjacent copies, weights reading them divided by the factor):
    a wrong copy order would change the GroupNorm statistics, a missing division would double
    the activations; either changes the latents."""
    from diffusion_handles.world.model import widen_encoder

    vae = _tiny_vae()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x).latent_dist
        wide = widen_encoder(vae, 2, noise=0.0)
        zw = wide.encode(x).latent_dist
        torch.testing.assert_close(zw.mean, z.mean, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(zw.logvar, z.logvar, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(wide.decode(z.mean).sample, vae.decode(z.mean).sample, atol=1e-5, rtol=1e-4)
        noisy = widen_encoder(vae, 2)  # symmetry-breaking noise: close to, not equal to, the old latents
        zn = noisy.encode(x).latent_dist.mean
    assert type(wide).__name__ == "AsymmetricAutoencoderKL"
    assert tuple(wide.config.down_block_out_channels) == (32, 64, 64) and tuple(wide.config.up_block_out_channels) == (16, 32, 32)
    w = noisy.encoder.conv_in.weight
    assert not torch.equal(w[0::2], w[1::2])  # the two copies of each channel can learn apart
    assert 0 < float((zn - z.mean).abs().max()) < 0.05 * float(z.mean.abs().mean())
    with pytest.raises(ValueError, match="factor"):
        widen_encoder(vae, 1)
    with pytest.raises(ValueError, match="vae: expected an AutoencoderKL"):  # its attention would be reset
        widen_encoder(wide, 2)


def test_backbone_loads_a_model_whose_vae_has_a_wider_encoder(tmp_path):
    """The VAE class comes from its config: the widened model loads, encodes and decodes like the
    narrow one it was widened from."""
    from diffusion_handles.diffusion.backbone import Backbone
    from diffusion_handles.world.model import build_components, save_model, widen_encoder

    shipped = Backbone.from_pretrained("tinyworld")
    narrow = build_components(shipped.tokenizer, image_size=128, encoder_width=1)["vae"].eval()  # the plain AutoencoderKL
    narrow.register_to_config(scaling_factor=shipped.scaling_factor)
    parts = {"unet": shipped.unet, "text_encoder": shipped.text_encoder, "tokenizer": shipped.tokenizer,
             "scheduler": shipped.scheduler}
    save_model(tmp_path / "n", vae=narrow, **parts)
    save_model(tmp_path / "m", vae=widen_encoder(narrow, 2, noise=0.0), **parts)
    assert '"AsymmetricAutoencoderKL"' in (tmp_path / "m" / "model_index.json").read_text()
    assert "block_out_channels" not in json.loads((tmp_path / "m" / "vae" / "config.json").read_text())  # no load warning
    bb = Backbone.from_pretrained(str(tmp_path / "n"))
    wide = Backbone.from_pretrained(str(tmp_path / "m"))
    assert type(wide.vae).__name__ == "AsymmetricAutoencoderKL"
    assert (wide.vae_factor, wide.default_size, wide.scaling_factor) == (bb.vae_factor, bb.default_size, bb.scaling_factor)
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    z = bb.encode_image(x, refine_steps=0)  # the encoders: equal up to float rounding
    torch.testing.assert_close(wide.encode_image(x, refine_steps=0), z, atol=1e-5, rtol=1e-4)
    # with the latent refinement (Adam normalises each step, so rounding can move an element by a
    # step where its gradient is near zero): close, not equal
    torch.testing.assert_close(wide.encode_image(x), bb.encode_image(x), atol=2e-3, rtol=0)
    torch.testing.assert_close(wide.decode(z), bb.decode(z), atol=1e-5, rtol=1e-4)


def _heldout(n: int, first: int = 0):
    from diffusion_handles.world.dataset import HELDOUT_SEED0, render_seed

    return [render_seed((HELDOUT_SEED0 + 200 + first + j, 128, 64)) for j in range(n)]


def test_shipped_model_reproduces_held_out_images():
    """v2's VAE round trip on held-out renders: the encoder alone (33.6 dB over 32 scenes, 30.8 on
    these three; v1: 25.6), and with the model's own latent refinement (handles.json), which
    every edit starts from."""
    pytest.importorskip("mitsuba")
    from diffusion_handles.diffusion.backbone import Backbone

    bb = Backbone.from_pretrained("tinyworld")
    assert bb.encode_refine_steps > 0  # the shipped folder's settings file is read
    ps, pr = [], []
    for r in _heldout(3):
        x = torch.from_numpy(r["rgb"]).permute(2, 0, 1)[None].float() / 255.0
        for out, steps in ((ps, 0), (pr, None)):
            y = bb.decode(bb.encode_image(x, refine_steps=steps))
            out.append(float(10 * torch.log10(1.0 / (y - x).pow(2).mean())))
    print(f"VAE round trip {np.mean(ps):.2f} dB, refined {np.mean(pr):.2f} dB (worst {min(ps):.2f} -> {min(pr):.2f})")
    assert np.mean(ps) > 29.5
    assert np.mean(pr) > np.mean(ps) + 0.7 and min(pr) > min(ps)


@pytest.mark.slow  # the shipped weights' quality: run with -m slow after retraining (the code path is pinned by
# test_pinned_edits.py and null-text inversion by tests/diffusion/test_inversion.py)
def test_shipped_model_null_text_reconstruction_is_an_identity_edit():
    """Null-text inversion at the paper's 50 steps reproduces a held-out scene: 31.0 dB here (30.8
    on the eval's 8 scenes), the issue's target is 28 (v1: 23.9 dB on the demo scene)."""
    pytest.importorskip("mitsuba")
    from diffusion_handles.pipeline import DiffusionHandles
    from diffusion_handles.world.evaluate import reconstruct

    (r,) = _heldout(1, first=5)
    dh = DiffusionHandles.from_pretrained("tinyworld")
    x = torch.from_numpy(r["rgb"]).permute(2, 0, 1)[None].float() / 255.0
    depth = torch.from_numpy(r["depth"].astype(np.float32))[None, None]
    mask = torch.from_numpy((r["ids"] == 0).astype(np.float32))[None, None]
    rec = reconstruct(dh, x, r["caption"], depth, mask)
    psnr = float(10 * torch.log10(1.0 / (rec - x).pow(2).mean()))
    print(f"null-text reconstruction {psnr:.2f} dB")
    assert psnr > 28.0


@pytest.mark.slow  # the shipped weights' quality: run with -m slow after retraining (a depth that never reaches
# the UNet also fails test_denoising_loss_needs_the_scene_s_own_depth, in the default run)
def test_shipped_model_silhouettes_follow_the_depth():
    """Generated objects cover the true masks much better than with another scene's depth.

    Held-out seeds (never trained on), 25 DDIM steps.
    """
    pytest.importorskip("mitsuba")
    from diffusion_handles.diffusion.backbone import Backbone
    from diffusion_handles.world.evaluate import generate, image_metrics

    bb = Backbone.from_pretrained("tinyworld")
    rows = _heldout(4, first=10)
    right, wrong = [], []
    for j, r in enumerate(rows):
        ref = r["rgb"].astype(np.float32) / 255.0
        n_obj = int(r["ids"][r["ids"] != 255].max()) + 1
        for depth_row, out in ((r, right), (rows[(j + 1) % len(rows)], wrong)):
            depth = torch.from_numpy(depth_row["depth"].astype(np.float32))[None, None]
            gen = generate(bb, r["caption"], depth, seed=j, steps=25)[0].permute(1, 2, 0).numpy()
            out.append(image_metrics(gen, ref, r["ids"], n_obj)["iou_fg"])
    print(f"iou_fg with the true depth {np.mean(right):.3f}, with another scene's depth {np.mean(wrong):.3f}")
    # per scene the values spread widely: on these 4 scenes model version 2.8 0.567,
    # v2.9 0.313, v2.10 0.343 and v2.11 (shipped) 0.333, though from plain noise on 64
    # tuning scenes v2.9 is the better of the first two, 0.625 against 0.575
    # (benchmarks/generation_sweep.py --no-prior); v1: 0.25
    assert np.mean(right) > 0.27
    assert np.mean(right) > np.mean(wrong) + 0.05


def test_generate_starts_from_the_given_latent():
    """``generate(init=...)`` starts the sampler there (benchmarks/signal_leak.py leaks a mean into
    it); without it the start is N(0, 1) drawn from ``seed``."""
    pytest.importorskip("mitsuba")
    from diffusion_handles.diffusion.backbone import Backbone
    from diffusion_handles.world.evaluate import generate

    bb = Backbone.from_pretrained("tinyworld")
    (r,) = _heldout(1, first=30)
    depth = torch.from_numpy(r["depth"].astype(np.float32))[None, None]
    c, (h, w) = int(bb.vae.config.latent_channels), bb.latent_hw((128, 128))
    noise = torch.randn((1, c, h, w), generator=torch.Generator().manual_seed(3))
    base = generate(bb, r["caption"], depth, seed=3, steps=2)
    torch.testing.assert_close(generate(bb, r["caption"], depth, seed=0, steps=2, init=noise), base)
    assert (generate(bb, r["caption"], depth, seed=3, steps=2, init=noise + 1.0) - base).abs().mean() > 0.01


def test_denoising_loss_needs_the_scene_s_own_depth():
    """The evaluator's training-objective figure: the shipped model predicts the noise of a
    held-out scene better from that scene's depth than from another scene's (a wrong noise
    schedule, a missing depth channel or swapped timesteps would erase the difference)."""
    pytest.importorskip("mitsuba")
    from diffusion_handles.diffusion.backbone import Backbone
    from diffusion_handles.world.evaluate import denoising_loss

    bb = Backbone.from_pretrained("tinyworld")
    rows = _heldout(2, first=20)
    right, wrong = [], []
    for j, r in enumerate(rows):
        x = torch.from_numpy(r["rgb"]).permute(2, 0, 1)[None].float() / 255.0
        for depth_row, out in ((r, right), (rows[1 - j], wrong)):
            depth = torch.from_numpy(depth_row["depth"].astype(np.float32))[None, None]
            out.append(denoising_loss(bb, bb.encode_image(x), depth, r["caption"]))
    print(f"denoising loss: own depth {np.mean(right):.4f}, another scene's {np.mean(wrong):.4f}")
    assert 0 < np.mean(right) < 0.2
    assert np.mean(wrong) > 1.3 * np.mean(right)


def test_world_eval_writes_every_figure_under_stable_keys(tmp_path, capsys):
    """``handles world eval`` end to end on two held-out scenes, with a training set for the
    memorisation figure."""
    pytest.importorskip("mitsuba")
    import json

    from diffusion_handles.cli import main
    from diffusion_handles.world import model_path
    from diffusion_handles.world.dataset import build_dataset
    from diffusion_handles.world.leak_prior import PRIOR_FILE

    train = build_dataset(tmp_path / "train.npz", range(2), size=128, spp=4, workers=1)
    out = tmp_path / "eval"
    assert main(["world", "eval", "--n", "2", "--recon-n", "1", "--steps", "2", "--first-seed", "1000400",
                 "--train-data", str(train), "--out", str(out)]) == 0
    fig = json.loads((out / "metrics.json").read_text())["figures"]
    keys = ("vae_psnr", "reconstruction_psnr", "generation_psnr", "generation_ssim", "generation_iou_obj",
            "generation_iou_fg", "generation_colour_err", "object_cells", "denoise_loss_heldout", "denoise_loss_train")
    assert set(keys) <= set(fig) and all(np.isfinite(fig[k]) for k in keys)
    assert fig["vae_psnr"] > 25 and fig["object_cells"] > 10 and 0 < fig["denoise_loss_heldout"] < 1
    # the round trip the pipeline starts from (the shipped model refines its encoder's latent)
    assert fig["encode_refine_steps"] > 0 and fig["vae_psnr"] > fig["vae_psnr_encoder"] > 25
    assert fig["vae_psnr_min"] <= fig["vae_psnr"]
    # the relit reference: the same scene under another light, scored like the generation
    assert all(k in fig for k in ("relit_psnr", "relit_iou_obj", "relit_colour_err"))
    assert 5 < fig["relit_psnr"] < 60 and fig["leak_prior"] == (model_path() / PRIOR_FILE).is_file()
    assert "denoise_loss_train" in capsys.readouterr().out
    plain = tmp_path / "plain"  # the same scenes and noise, plain noise and no layout binding: only generation changes
    assert main(["world", "eval", "--n", "2", "--recon-n", "0", "--steps", "2", "--first-seed", "1000400",
                 "--no-leak-prior", "--no-binding", "--out", str(plain)]) == 0
    res0, res = (json.loads((d / "metrics.json").read_text()) for d in (plain, out))
    fig0 = res0["figures"]
    assert fig0["leak_prior"] is False and fig0["binding"] is False and fig["binding"] is True
    assert fig0["vae_psnr"] == fig["vae_psnr"] and fig0["relit_psnr"] == fig["relit_psnr"]
    assert res0["scenes"][0]["vae"] == res["scenes"][0]["vae"]
    assert res0["scenes"][0]["model"]["psnr"] != res["scenes"][0]["model"]["psnr"]
    assert main(["world", "eval", "--n", "2", "--train-data", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "e2")]) == 2
    assert "--train-data" in capsys.readouterr().err
    assert main(["world", "eval", "--n", "2", "--threads", "0", "--out", str(tmp_path / "e3")]) == 2
    assert "--threads" in capsys.readouterr().err and not (tmp_path / "e3").exists()


def test_pixel_transfer_latent_decodes_to_the_warped_image():
    """The identity transfer's clean part, warped in pixels and re-encoded
    (:func:`~diffusion_handles.pipeline.pixel_transfer` at ``alpha = 1``), decodes closer to the
    input warped by the 3D flow than the latent warped in its 4x coarser grid: 5.9-6.9 dB on these
    held-out scenes (rotation 40 degrees and a move). A flipped correction, holes left unfilled
    or the image warped by the wrong flow fails it."""
    pytest.importorskip("mitsuba")
    from types import SimpleNamespace

    from diffusion_handles.diffusion.backbone import Backbone
    from diffusion_handles.diffusion.config import InversionConfig
    from diffusion_handles.geometry import Camera, HandleEdit, compute_edit, warp
    from diffusion_handles.pipeline import pixel_transfer

    bb = Backbone.from_pretrained("tinyworld")
    edit = HandleEdit(translate=(0.1, 0.0, 0.2), rotate_axis=(0.0, 1.0, 0.0), rotate_deg=40.0)
    gains = []
    for r in _heldout(3):
        x = torch.from_numpy(r["rgb"]).permute(2, 0, 1)[None].float() / 255.0
        depth = torch.from_numpy(r["depth"].astype(np.float32))[None, None]
        mask = torch.from_numpy((r["ids"] == 0).astype(np.float32))[None, None]
        geom = compute_edit(depth, mask, edit, Camera(128, 128, 55.0))
        z = bb.encode_image(x)
        latent_warp = warp(z, geom.at_resolution(*z.shape[-2:]).source)
        inv = SimpleNamespace(image=x, config=InversionConfig(), seed=None, latent_0=z)
        pixel = pixel_transfer(bb, inv, geom, SimpleNamespace(transfer=latent_warp), 1.0)
        target = warp(x, geom.source)
        m = (geom.edited_mask * geom.valid).bool().expand_as(x)

        err = [(bb.decode(lat) - target)[m].pow(2).mean() for lat in (pixel, latent_warp)]
        gains.append(float(10 * torch.log10(err[1] / err[0])))  # PSNR(pixel) - PSNR(latent warp)
    print("pixel transfer gain over the latent warp (dB):", [round(g, 2) for g in gains])
    assert min(gains) > 3.0
