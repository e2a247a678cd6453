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
    assert len(hist) == 2  # the first run's sitting is carried into the second's record


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
    assert gpu["device"] == "cuda" and gpu["max_minutes"] <= 9 and sum(gpu["stage_minutes"].values()) <= gpu["max_minutes"]
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

    save_dataset(packed, load_dataset(data))
    res = subprocess.run(
        ["bash", str(script), str(packed), str(tmp_path / "wheels"), str(tmp_path / "model"), "--device", "cpu",
         "--vae-steps", "1", "--unet-steps", "1", "--decoder-steps", "1", "--unet-batch", "2", "--image-size", "32", "--threads", "1"],
        cwd=repo, env={**__import__("os").environ, "RUN_DIR": str(tmp_path / "run")}, capture_output=True, text=True,
        timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "trained and exported in" in res.stdout
    assert (tmp_path / "model" / "model_index.json").is_file()
