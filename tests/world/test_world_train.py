"""Training accumulates: resumable stages, warm starts from a model folder, weights-only
checkpoints, the GPU preset's command run on the CPU with tiny settings, exports in small files."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("mitsuba")

from diffusion_handles.cli import main  # noqa: E402
from diffusion_handles.world.dataset import build_dataset  # noqa: E402
from diffusion_handles.world.train import PRESETS, config_from_preset, export, train  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("tw") / "d.npz"
    return build_dataset(path, range(3), size=32, spp=2, workers=1)


def test_tiny_preset_trains_every_stage_resumes_and_exports(data, tmp_path):
    run = tmp_path / "run"
    cfg = config_from_preset("tiny", data=str(data), run_dir=str(run))
    train(cfg)
    log = (run / "train.log").read_text()
    for stage in ("vae step 2", "unet step 2", "decoder step 1"):
        assert stage in log
    assert " t " in log  # wall time on every line
    # a second call with more UNet steps resumes instead of starting over
    cfg.unet_steps = 3
    train(cfg)
    log = (run / "train.log").read_text()
    assert "unet: resumed at step 2" in log and "unet step 3" in log and "vae: resumed at step 2" in log
    out = export(run, tmp_path / "model")
    info = json.loads((out / "training.json").read_text())
    assert info["unet_steps"] == 3 and info["history"][-1]["stages"]["unet"]["steps"] == 3
    assert all(f.stat().st_size <= 16 * 2**20 for f in out.rglob("*") if f.is_file())
    # a new run warm-starts from that model folder (the run folder of the first is not needed)
    cfg2 = config_from_preset("tiny", data=str(data), run_dir=str(tmp_path / "run2"), init_from=str(out), unet_steps=1)
    train(cfg2)
    assert "init unet from" in (tmp_path / "run2" / "train.log").read_text()
    from safetensors.torch import load_file

    a = load_file(str(next((out / "unet").glob("*.safetensors"))))
    b = torch.load(tmp_path / "run2" / "init_unet.pt", weights_only=True)["model"]
    k = next(iter(a))
    torch.testing.assert_close(b[k], a[k])  # step 0 of the new run is the old model
    hist = json.loads((export(tmp_path / "run2", tmp_path / "model2") / "training.json").read_text())["history"]
    assert len(hist) == 2  # the first run is carried into the second's record


def test_checkpoints_are_loaded_without_pickled_code(data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()

    class Boom:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    torch.save({"model": {}, "opt": {}, "step": 1, "evil": Boom()}, run / "vae.pt")
    cfg = config_from_preset("tiny", data=str(data), run_dir=str(run))
    with pytest.raises(Exception, match="[Ww]eights only|weights_only|Unsupported"):
        train(cfg)


def test_gpu_preset_command_on_cpu_with_tiny_settings(data, tmp_path, capsys):
    """The prepared GPU command, exactly as documented, with the device and sizes shrunk.

    The preset continues the shipped model: no VAE stage, so the encoder and its latent scale are
    the shipped ones (the warm-started UNet was trained on exactly those latents), while the UNet
    and the decoder train."""
    from safetensors.torch import load_file

    from diffusion_handles.world import model_path

    gpu = PRESETS["gpu"]
    assert gpu["device"] == "cuda" and gpu["max_minutes"] <= 9 and sum(gpu.get("stage_minutes", {}).values()) <= gpu["max_minutes"]
    rc = main(["world", "train", "--preset", "gpu", "--device", "cpu", "--data", str(data), "--run-dir", str(tmp_path / "g"),
               "--unet-steps", "1", "--decoder-steps", "1", "--unet-batch", "2",
               "--image-size", "32", "--threads", "1", "--export", str(tmp_path / "gm")])
    assert rc == 0
    cfg = json.loads((tmp_path / "gm" / "training.json").read_text())["config"]
    assert cfg["init_from"] == "tinyworld" and cfg["vae_steps"] == 0
    assert all(f.stat().st_size <= 16 * 2**20 for f in (tmp_path / "gm").rglob("*") if f.is_file())
    shipped, out = model_path(), tmp_path / "gm"
    vae_cfg = [json.loads((m / "vae" / "config.json").read_text())["scaling_factor"] for m in (shipped, out)]
    assert vae_cfg[0] == pytest.approx(vae_cfg[1], rel=1e-6)
    v0, v1 = (load_file(str(m / "vae" / "diffusion_pytorch_model.safetensors")) for m in (shipped, out))
    enc = [k for k in v0 if k.startswith("encoder.")]
    assert enc and all(torch.equal(v0[k], v1[k]) for k in enc)  # the encoder is untouched
    assert any(not torch.equal(v0[k], v1[k]) for k in v0 if k.startswith("decoder."))  # the decoder trained
    u0, u1 = (load_file(str(m / "unet" / "diffusion_pytorch_model.safetensors")) for m in (shipped, out))
    assert u0.keys() == u1.keys() and any(not torch.equal(u0[k], u1[k]) for k in u0)


def test_train_cli_refuses_bad_arguments(data, tmp_path, capsys):
    assert main(["world", "train", "--data", str(tmp_path / "missing.npz")]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["world", "train", "--data", str(data), "--init-from", str(tmp_path / "nope")]) == 2
    assert "--init-from" in capsys.readouterr().err
    assert main(["world", "train", "--data", str(data), "--device", "cuda:7"]) == 2
    assert "--device" in capsys.readouterr().err
    assert main(["world", "train", "--data", str(data), "--unet-lr=-1e-4"]) == 2
    assert "--unet-lr" in capsys.readouterr().err


def test_gpu_script_runs_end_to_end_with_tiny_settings(data, tmp_path):
    """``world/gpu_train.sh``, the prepared device-machine command, on the CPU with tiny settings."""
    import shutil
    import subprocess
    from pathlib import Path

    import diffusion_handles

    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    script = Path(diffusion_handles.__file__).parent / "world" / "gpu_train.sh"
    repo = Path(diffusion_handles.__file__).parents[2]
    packed = tmp_path / "packed.npz"
    from diffusion_handles.world.dataset import load_dataset, save_dataset

    save_dataset(packed, load_dataset(data), jpeg_quality=95)  # carried as a JPEG pack: the UNet stage only
    res = subprocess.run(
        ["bash", str(script), str(packed), str(tmp_path / "wheels"), str(tmp_path / "model"), "--device", "cpu",
         "--unet-steps", "1", "--unet-batch", "2", "--unet-dropout", "0.1", "--image-size", "32", "--threads", "1"],
        cwd=repo, env={**__import__("os").environ, "RUN_DIR": str(tmp_path / "run")}, capture_output=True, text=True,
        timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "trained and exported in" in res.stdout
    assert (tmp_path / "model" / "model_index.json").is_file()
    assert json.loads((tmp_path / "model" / "unet" / "config.json").read_text())["dropout"] == 0.1


def test_jpeg_pack_round_trip_is_close_but_lossy_and_refused_for_the_vae(data, tmp_path, capsys):
    """A JPEG pack decodes to the same arrays (images within JPEG error, the rest exact), and
    training refuses to fit the VAE or decoder to its artefacts."""
    import numpy as np

    from diffusion_handles.world.dataset import load_dataset, save_dataset

    ref = load_dataset(data)
    save_dataset(tmp_path / "q.npz", ref, jpeg_quality=95)
    got = load_dataset(tmp_path / "q.npz")
    assert got["rgb"].shape == ref["rgb"].shape and got["rgb"].dtype == np.uint8
    err = got["rgb"].astype(float) - ref["rgb"].astype(float)
    assert 0 < np.abs(err).max() and 10 * np.log10(255**2 / (err**2).mean()) > 30  # lossy, but close
    for k in ("ids", "caption", "caption_mirrored", "seed", "scene"):
        assert np.array_equal(got[k], ref[k])
    np.testing.assert_allclose(got["depth"], ref["depth"], rtol=1e-3)
    assert int(got["rgb_jpeg_quality"]) == 95
    # a lossless re-pack of a JPEG pack keeps the images and the lossy marker
    save_dataset(tmp_path / "l.npz", got)
    again = load_dataset(tmp_path / "l.npz")
    assert np.array_equal(again["rgb"], got["rgb"]) and int(again["rgb_jpeg_quality"]) == 95
    capsys.readouterr()
    assert main(["world", "pack", str(data), str(tmp_path / "cli.npz"), "--jpeg-quality", "95"]) == 0
    assert "dB PSNR against the input" in capsys.readouterr().out
    assert main(["world", "pack", str(data), str(tmp_path / "bad.npz"), "--jpeg-quality", "0"]) == 2
    assert "--jpeg-quality" in capsys.readouterr().err and not (tmp_path / "bad.npz").exists()
    assert main(["world", "train", "--preset", "tiny", "--data", str(tmp_path / "q.npz"), "--run-dir", str(tmp_path / "r")]) == 2
    err_text = capsys.readouterr().err
    assert "--data" in err_text and "--vae-steps 0 --decoder-steps 0" in err_text and not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="JPEG"):
        train(config_from_preset("tiny", data=str(tmp_path / "q.npz"), run_dir=str(tmp_path / "r2"), vae_steps=0))
    assert not (tmp_path / "r2").exists()  # refused before anything is written
    assert main(["world", "train", "--data", str(data), "--unet-dropout", "1"]) == 2
    assert "--unet-dropout" in capsys.readouterr().err


def test_pack_merges_training_sets_and_refuses_a_scene_twice(data, tmp_path, capsys):
    import numpy as np

    from diffusion_handles.world.dataset import load_dataset

    more = build_dataset(tmp_path / "more.npz", range(3, 5), size=32, spp=2, workers=1)
    assert main(["world", "pack", str(data), str(more), str(tmp_path / "all.npz")]) == 0
    a, b, got = load_dataset(data), load_dataset(more), load_dataset(tmp_path / "all.npz")
    assert got["seed"].tolist() == [0, 1, 2, 3, 4]
    assert np.array_equal(got["rgb"], np.concatenate([a["rgb"], b["rgb"]]))
    assert list(got["caption"]) == list(a["caption"]) + list(b["caption"])
    assert main(["world", "pack", str(data), str(data), str(tmp_path / "twice.npz")]) == 2
    assert "disjoint seeds" in capsys.readouterr().err and not (tmp_path / "twice.npz").exists()


def test_depth_is_stored_as_invertible_differences_and_old_files_still_load(data, tmp_path):
    """The pack keeps depth to 1e-4 relative through the 2D differences (which wrap modulo 2^16:
    a depth map with steep edges must come back too), and a file of the earlier layout (the
    quantised values, ``inv_depth``) loads to the same depth."""
    import numpy as np

    from diffusion_handles.world.dataset import load_dataset, save_dataset

    ref = load_dataset(data)
    ref["depth"] = ref["depth"].copy()
    ref["depth"][0, :, ::2] *= 3.0  # stripes: differences far beyond int16, so the wrap-around is exercised
    save_dataset(tmp_path / "d.npz", ref)
    with np.load(tmp_path / "d.npz") as z:
        stored = {k: z[k] for k in z.files}
    assert "inv_depth" not in stored
    got = load_dataset(tmp_path / "d.npz")
    np.testing.assert_allclose(got["depth"], ref["depth"], rtol=1e-4)
    d = stored.pop("inv_depth_delta")
    q = np.cumsum(np.cumsum(d, axis=1, dtype=np.uint16), axis=2, dtype=np.uint16)  # the earlier layout
    np.savez_compressed(tmp_path / "old.npz", inv_depth=q, **stored)
    np.testing.assert_array_equal(load_dataset(tmp_path / "old.npz")["depth"], got["depth"])


def test_encoder_stage_widens_and_trains_only_the_encoder(data, tmp_path, capsys):
    """``--stage encoder --encoder-width 2``, as a GPU training run would run it beside a UNet run: the
    decoder, the UNet and the latent scale stay the shipped ones, the encoder is wider and trains."""
    from safetensors.torch import load_file

    from diffusion_handles.world import model_path
    from diffusion_handles.world.dataset import load_dataset, save_dataset

    packed = tmp_path / "packed.npz"
    save_dataset(packed, load_dataset(data), jpeg_quality=95)  # the encoder stage may use a JPEG pack
    rc = main(["world", "train", "--preset", "gpu", "--device", "cpu", "--stage", "encoder", "--encoder-width", "2",
               "--encoder-steps", "2", "--data", str(packed), "--run-dir", str(tmp_path / "e"),
               "--image-size", "32", "--threads", "1", "--export", str(tmp_path / "em")])
    assert rc == 0
    shipped, out = model_path(), tmp_path / "em"
    cfg = json.loads((out / "vae" / "config.json").read_text())
    assert cfg["_class_name"] == "AsymmetricAutoencoderKL" and cfg["down_block_out_channels"] == [64, 128, 128]
    assert cfg["scaling_factor"] == pytest.approx(json.loads((shipped / "vae" / "config.json").read_text())["scaling_factor"])
    v0 = load_file(str(shipped / "vae" / "diffusion_pytorch_model.safetensors"))
    v1 = load_file(str(next((out / "vae").glob("*.safetensors"))))
    assert all(torch.equal(v0[k], v1[k]) for k in v0 if k.startswith(("decoder.", "post_quant_conv.")))
    u0, u1 = (load_file(str(m / "unet" / "diffusion_pytorch_model.safetensors")) for m in (shipped, out))
    assert all(torch.equal(u0[k], u1[k]) for k in u0)
    hist = json.loads((out / "training.json").read_text())["history"][-1]["stages"]
    assert hist["encoder"]["steps"] == 2 and "unet" not in hist
    init = torch.load(tmp_path / "e" / "init_vae.pt", weights_only=True)["model"]
    assert any(not torch.equal(init[k], v1[k]) for k in v1 if k.startswith("encoder."))  # the encoder trained
    assert main(["world", "train", "--data", str(data), "--encoder-width", "0"]) == 2
    assert "--encoder-width" in capsys.readouterr().err
    assert main(["world", "train", "--data", str(data), "--encoder-anchor=-1"]) == 2
    assert "--encoder-anchor" in capsys.readouterr().err


def test_encoder_anchor_holds_the_latents_near_the_ones_the_unet_learned(data, tmp_path):
    """A sign error or a missing drift term in the encoder stage's loss lets the latents wander."""
    from diffusion_handles.world.dataset import load_dataset

    x = torch.from_numpy(load_dataset(data)["rgb"]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    drift = {}
    for anchor in (0.0, 1e4):
        run = tmp_path / f"a{anchor}"
        cfg = config_from_preset("tiny", data=str(data), run_dir=str(run), stage="encoder", encoder_steps=4,
                                 encoder_lr=3e-2, encoder_anchor=anchor, encoder_batch=3, warmup=1)
        train(cfg)
        from diffusion_handles.world.model import build_components, load_tokenizer

        vae = build_components(load_tokenizer(run / "tokenizer_files"), image_size=32)["vae"]
        vae.load_state_dict(torch.load(run / "init_vae.pt", weights_only=True)["model"])
        with torch.no_grad():
            z0 = vae.encode(x).latent_dist.mean
            st = torch.load(run / "encoder.pt", weights_only=True)
            vae.encoder.load_state_dict(st["encoder"])
            vae.quant_conv.load_state_dict(st["quant_conv"])
            drift[anchor] = float((vae.encode(x).latent_dist.mean - z0).pow(2).mean() / z0.var())
    assert drift[1e4] < 0.5 * drift[0.0], drift


def test_a_time_limit_stops_with_a_checkpoint_that_resumes(data, tmp_path):
    """--max-minutes ends the call after the step in progress, checkpointed as not done; the
    same command then resumes there and finishes the stage (and only then the next one runs)."""
    run = tmp_path / "run"
    cfg = config_from_preset("tiny", data=str(data), run_dir=str(run), vae_steps=4, ckpt_every=100,
                             max_minutes=1e-9)
    train(cfg)
    log = (run / "train.log").read_text()
    assert "vae: stopping at step 1 (time limit)" in log and "unet step" not in log
    st = torch.load(run / "vae.pt", weights_only=True)
    assert st["step"] == 1 and st["done"] is False  # checkpointed although step 1 is not a ckpt_every step
    cfg.max_minutes = 0.0
    train(cfg)
    log = (run / "train.log").read_text()
    assert "vae: resumed at step 1" in log and "vae step 4 l1" in log and "unet step 2 loss" in log
    assert torch.load(run / "vae.pt", weights_only=True)["step"] == 4


def test_join_puts_the_encoder_runs_vae_next_to_the_unet_runs_unet(data, tmp_path, capsys):
    """``handles world join``: the two runs trained side by side from one model (the UNet
    run, and ``--stage encoder --encoder-width 2``) become one model. It keeps the UNet run's UNet
    and the encoder run's (wider) VAE and its class, records both runs once, and refuses a VAE
    whose decoder is not the UNet run's (it would decode the UNet's latents differently)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from diffusion_handles.diffusion.backbone import Backbone

    def run(name, **kw):
        train(config_from_preset("tiny", data=str(data), run_dir=str(tmp_path / name), **kw))
        return export(tmp_path / name, tmp_path / f"m{name}")

    base = run("base", vae_steps=1, unet_steps=1, decoder_steps=0)  # a plain AutoencoderKL
    mu = run("u", init_from=str(base), vae_steps=0, decoder_steps=0, unet_steps=1)
    me = run("e", init_from=str(base), stage="encoder", encoder_width=2, encoder_steps=1, encoder_batch=2)
    for model, hours in ((mu, 0.25), (me, 1.5)):  # tiny runs last seconds: give each run hours to add
        info = json.loads((model / "training.json").read_text())
        info["history"][-1]["hours"] = hours
        (model / "training.json").write_text(json.dumps(info))
    capsys.readouterr()
    j = tmp_path / "j"
    assert main(["world", "join", str(mu), str(me), "--out", str(j)]) == 0
    assert "handles world join: wrote" in capsys.readouterr().out

    def tensors(model, part):
        return load_file(str(next((model / part).glob("*.safetensors"))))

    uj, uu, ub = tensors(j, "unet"), tensors(mu, "unet"), tensors(base, "unet")
    assert all(torch.equal(uj[k], uu[k]) for k in uj) and any(not torch.equal(uj[k], ub[k]) for k in uj)
    vj, ve = tensors(j, "vae"), tensors(me, "vae")
    assert vj.keys() == ve.keys() and all(torch.equal(vj[k], ve[k]) for k in vj)  # the encoder run's VAE
    index = json.loads((j / "model_index.json").read_text())
    assert index["vae"][1] == "AsymmetricAutoencoderKL"  # its class, not the UNet run's AutoencoderKL
    assert json.loads((mu / "model_index.json").read_text())["vae"][1] == "AutoencoderKL"
    assert type(Backbone.from_pretrained(str(j)).vae).__name__ == "AsymmetricAutoencoderKL"  # it loads
    hist = json.loads((j / "training.json").read_text())
    stages = [h["stages"] for h in hist["history"]]
    assert len(stages) == 3 and "unet" in stages[1] and "encoder" in stages[2]  # base, then each run once
    assert [h["hours"] for h in hist["history"][1:]] == [0.25, 1.5]
    assert hist["cumulative_hours"] == pytest.approx(hist["history"][0]["hours"] + 1.75)  # both runs counted

    # a VAE with another decoder is refused, naming the argument; nothing is written
    bad = tmp_path / "bad"
    shutil.copytree(me, bad)
    vb = {k: v.clone() for k, v in tensors(bad, "vae").items()}  # read whole before the file is rewritten
    key = "decoder.conv_in.weight"  # (the asymmetric decoder also has a condition encoder the plain one lacks)
    vb[key] = vb[key] + 1e-3
    save_file(vb, str(next((bad / "vae").glob("*.safetensors"))))
    assert main(["world", "join", str(mu), str(bad), "--out", str(tmp_path / "j2")]) == 2
    err = capsys.readouterr().err
    assert "ENCODER_MODEL: expected the decoder of UNET_MODEL" in err and "1 of" in err and "Traceback" not in err
    assert not (tmp_path / "j2").exists() and not (tmp_path / "j2.joining").exists()
    assert main(["world", "join", str(mu), str(tmp_path / "nope"), "--out", str(tmp_path / "j3")]) == 2
    assert "ENCODER_MODEL: expected a model folder" in capsys.readouterr().err
    assert main(["world", "join", str(mu), str(me), "--out", str(j)]) == 2  # never over a model
    assert "--out" in capsys.readouterr().err


def _unet_runs(data, tmp_path, prefix: str, option: str, values, *, steps: int, part: str) -> dict:
    """Tiny runs (seeded alike) differing only in ``option``; ``part`` of each UNet checkpoint by value."""
    runs = {}
    for v in values:
        run = tmp_path / f"{prefix}{v}"
        cfg = config_from_preset("tiny", data=str(data), run_dir=str(run), vae_steps=1, decoder_steps=0,
                                 unet_steps=steps, **{option: v})
        train(cfg)
        runs[v] = torch.load(run / "unet.pt", weights_only=True)[part]
    return runs


def test_grounding_term_enters_the_unet_stage_and_needs_object_masks(data, tmp_path, capsys):
    """--ground-weight adds world.grounding's token loss: logged, and it changes the step taken
    (same seed and batch as a run without it); a set without masks is refused by name."""
    runs = _unet_runs(data, tmp_path, "g", "ground_weight", (0.0, 5.0), steps=2, part="text")
    log = (tmp_path / "g5.0" / "train.log").read_text()
    assert "grounding: object masks (3, 3, 4, 4)" in log and "unet step 2 loss" in log and " ground " in log
    assert " ground " not in (tmp_path / "g0.0" / "train.log").read_text()
    assert any(not torch.equal(runs[0.0][k], runs[5.0][k]) for k in runs[0.0])  # the text encoder got its gradient
    assert main(["world", "train", "--data", str(data), "--ground-weight=-1"]) == 2
    assert "--ground-weight" in capsys.readouterr().err
    import numpy as np

    stripped = tmp_path / "no_ids.npz"
    np.savez(stripped, **{k: v for k, v in np.load(data).items() if k not in ("ids", "scene")})
    cfg = config_from_preset("tiny", data=str(stripped), run_dir=str(tmp_path / "g3"), vae_steps=1, ground_weight=1.0)
    with pytest.raises(Exception, match="--ground-weight: the training set has no object masks"):
        train(cfg)


def test_ground_steps_end_the_grounded_phase(data, tmp_path, capsys):
    """--ground-steps N: the token loss is logged and applied in the first N UNet steps only, after
    which the cross-attention layers get their own processors back (a run grounded for one of two
    steps ends neither where a run grounded for both does nor where an ungrounded one does)."""
    from diffusion_handles.world.grounding import AttentionRecorder

    runs = {}
    for name, weight, until in (("all", 5.0, 0), ("first", 5.0, 1), ("none", 0.0, 0)):
        cfg = config_from_preset("tiny", data=str(data), run_dir=str(tmp_path / name), vae_steps=1, decoder_steps=0,
                                 unet_steps=2, ground_weight=weight, ground_steps=until)
        train(cfg)
        runs[name] = torch.load(tmp_path / name / "unet.pt", weights_only=True)["text"]
    lines = [ln for ln in (tmp_path / "first" / "train.log").read_text().splitlines() if " unet step " in ln]
    assert " ground " in lines[0] and " ground " not in lines[1]
    for other in ("all", "none"):
        assert any(not torch.equal(runs["first"][k], runs[other][k]) for k in runs["first"])
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 8),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                                layers_per_block=1, norm_num_groups=4, attention_head_dim=2)
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    rec = AttentionRecorder()
    rec.install(unet)
    assert any(v is rec for v in unet.attn_processors.values())
    rec.uninstall(unet)
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before
    assert main(["world", "train", "--data", str(data), "--ground-steps=-1"]) == 2
    assert "--ground-steps" in capsys.readouterr().err


def test_offset_noise_adds_one_constant_per_sample_and_channel():
    """noise_for_training: with an offset, each (sample, channel) gets one shared constant (the
    spatial means spread by the offset, not by 1 / sqrt(h w)); without one it is the plain
    N(0, 1) draw of the runs before the option (same generator stream)."""
    from diffusion_handles.world.train import noise_for_training

    shape = (256, 8, 32, 32)
    plain = noise_for_training(shape, torch.Generator().manual_seed(3))
    assert torch.equal(plain, torch.randn(shape, generator=torch.Generator().manual_seed(3)))
    assert abs(plain.mean((2, 3)).std().item() - 1 / 32) < 0.004
    off = noise_for_training(shape, torch.Generator().manual_seed(3), offset=0.2)
    expected = (0.2**2 + 1 / 32**2) ** 0.5  # the offset plus the Gaussian's own spatial-mean spread
    assert abs(off.mean((2, 3)).std().item() - expected) < 0.015
    residual = off - off.mean((2, 3), keepdim=True)  # what is left per pixel stays unit Gaussian
    assert abs(residual.std().item() - 1.0) < 0.01


def test_offset_noise_reaches_the_unet_stage_and_is_validated(data, tmp_path, capsys):
    """--offset-noise changes the UNet's step (same seed and batch as a run without it); a
    negative or non-finite value is refused by name."""
    runs = _unet_runs(data, tmp_path, "o", "offset_noise", (0.0, 0.5), steps=1, part="unet")
    assert any(not torch.equal(runs[0.0][k], runs[0.5][k]) for k in runs[0.0])
    for bad in ("-0.1", "nan", "2"):
        assert main(["world", "train", "--data", str(data), f"--offset-noise={bad}"]) == 2
        err = capsys.readouterr().err
        assert "--offset-noise: expected a standard deviation in [0, 1]" in err and bad in err


def test_warm_start_copies_word_embeddings_by_token_when_the_vocabulary_grows(data, tmp_path):
    """A model whose tokenizer knows fewer caption words (before the light's side joined the
    caption) warm-starts a run with the full vocabulary: each known word keeps its own embedding
    row, although the ids move, and the new words start from the fresh initialisation."""
    import shutil

    from safetensors.torch import load_file, save_file

    from diffusion_handles.world.model import TOKEN_EMBEDDING, build_tokenizer_files, load_tokenizer
    from diffusion_handles.world.scene import CAPTION_WORDS, LIGHT_WORDS

    run = tmp_path / "run"
    train(config_from_preset("tiny", data=str(data), run_dir=str(run), init_from="", unet_steps=1))
    old = export(run, tmp_path / "old")
    shutil.rmtree(old / "tokenizer")
    build_tokenizer_files(old / "tokenizer", words=[w for w in CAPTION_WORDS if w not in LIGHT_WORDS])
    old_vocab = load_tokenizer(old / "tokenizer").get_vocab()
    f = next((old / "text_encoder").glob("*.safetensors"))
    state = load_file(str(f))
    torch.manual_seed(1)
    state[TOKEN_EMBEDDING] = torch.randn(len(old_vocab), state[TOKEN_EMBEDDING].shape[1])  # distinct rows
    save_file(state, str(f))

    run2 = tmp_path / "run2"
    train(config_from_preset("tiny", data=str(data), run_dir=str(run2), init_from=str(old), unet_steps=1))
    new = torch.load(run2 / "init_text_encoder.pt", weights_only=True)["model"][TOKEN_EMBEDDING]
    vocab = load_tokenizer(run2 / "tokenizer_files").get_vocab()
    assert len(vocab) > len(old_vocab)
    moved = [w + "</w>" for w in ("red", "wall", "teal") if vocab[w + "</w>"] != old_vocab[w + "</w>"]]
    assert moved  # the test means something only where ids moved
    for tok in ("red</w>", "wall</w>", "teal</w>", "sphere</w>", "<|endoftext|>"):
        torch.testing.assert_close(new[vocab[tok]], state[TOKEN_EMBEDDING][old_vocab[tok]])
    assert new[vocab["lit</w>"]].abs().max() < 0.2  # fresh (std 0.02), not a copied N(0, 1) row
    assert "word embeddings copied by token" in (run2 / "train.log").read_text()


def _model_before_the_light_words(tmp_path):
    """The shipped model as it was before the captions named the light: its tokenizer built from
    the caption words without the light words, its word embeddings moved back to those ids."""
    import shutil

    from transformers import CLIPTextModel

    from diffusion_handles.world import model_path
    from diffusion_handles.world.model import (
        build_tokenizer_files,
        load_tokenizer,
        remap_token_embedding,
    )
    from diffusion_handles.world.scene import CAPTION_WORDS, LIGHT_WORDS

    old = tmp_path / "old"
    shutil.copytree(model_path(), old)
    (old / "leak_prior.safetensors").unlink()
    shutil.rmtree(old / "tokenizer")
    build_tokenizer_files(tmp_path / "tok", words=[w for w in CAPTION_WORDS if w not in LIGHT_WORDS])
    tok = load_tokenizer(tmp_path / "tok")
    tok.save_pretrained(old / "tokenizer")
    te = CLIPTextModel.from_pretrained(str(model_path() / "text_encoder"))
    cfg = te.config
    cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    small = CLIPTextModel(cfg)
    state, _ = remap_token_embedding(te.state_dict(), load_tokenizer(model_path() / "tokenizer").get_vocab(), tok.get_vocab(),
                                     torch.zeros(len(tok), cfg.hidden_size))
    small.load_state_dict(state)
    shutil.rmtree(old / "text_encoder")
    small.save_pretrained(str(old / "text_encoder"))
    return old


def test_extend_vocab_rebuilds_the_shipped_text_encoder_from_the_one_before(tmp_path, capsys):
    """``handles world extend-vocab`` on the model as it was before the light words gives the
    shipped tokenizer exactly and the shipped text encoder wherever the old model had the weight:
    every layer, and every old word's embedding row under its new id. The new words' rows are fresh
    (the shipped model trained them afterwards). It copies UNet and VAE untouched, drops the stale
    leak prior, records itself, and refuses a model that already knows every word or an existing
    --out, naming the argument."""
    from safetensors.torch import load_file

    from diffusion_handles.world import model_path
    from diffusion_handles.world.model import load_tokenizer, token_embedding_key

    old = _model_before_the_light_words(tmp_path)
    out = tmp_path / "new"
    assert main(["world", "extend-vocab", "--model", str(old), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "words added: back from front left lit right the" in printed
    vocab = load_tokenizer(out / "tokenizer").get_vocab()
    assert vocab == load_tokenizer(model_path() / "tokenizer").get_vocab()
    a, b = load_file(str(out / "text_encoder" / "model.safetensors")), load_file(str(model_path() / "text_encoder" / "model.safetensors"))
    key = token_embedding_key(a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if k != key)
    before = load_tokenizer(old / "tokenizer").get_vocab()
    new_ids = sorted(i for t, i in vocab.items() if t not in before)
    old_ids = sorted(i for t, i in vocab.items() if t in before)
    assert len(new_ids) == 19 and torch.equal(a[key][old_ids], b[key][old_ids])
    prev = load_file(str(old / "text_encoder" / "model.safetensors"))[key]  # the old words' rows
    assert not (a[key][new_ids][:, None] == prev[None]).all(-1).any()  # fresh rows, none copied from a word
    cfg = json.loads((out / "text_encoder" / "config.json").read_text())
    assert cfg["vocab_size"] == 638 and cfg["eos_token_id"] == load_tokenizer(out / "tokenizer").eos_token_id
    for f in (old / "unet").iterdir():
        assert (out / "unet" / f.name).read_bytes() == f.read_bytes()
    assert not (out / "leak_prior.safetensors").exists()
    assert json.loads((out / "training.json").read_text())["history"][-1]["stages"]["vocabulary"]["rows_new"] == 19
    assert main(["world", "extend-vocab", "--model", str(out), "--out", str(tmp_path / "again")]) == 2
    assert "--model" in capsys.readouterr().err and not (tmp_path / "again").exists()
    assert main(["world", "extend-vocab", "--model", str(old), "--out", str(out)]) == 2
    assert "--out" in capsys.readouterr().err
