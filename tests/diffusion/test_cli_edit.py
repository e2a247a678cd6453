"""``handles edit`` end to end on a tiny diffusers-layout model folder."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from diffusion_handles.cli import main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    s = 20  # not a multiple of 8: the work size is chosen by the model
    Image.fromarray((rng.random((s, s, 3)) * 255).astype(np.uint8)).save(d / "image.png")
    depth = np.full((s, s), 3.0, np.float32)
    depth[5:14, 6:13] = 2.0
    np.save(d / "depth.npy", depth)
    mask = np.zeros((s, s), np.uint8)
    mask[5:14, 6:13] = 255
    Image.fromarray(mask).save(d / "mask.png")
    Image.fromarray(np.zeros((s, s), np.uint8)).save(d / "empty.png")
    return d


def _args(inputs, model, out, *extra):
    return ["edit", str(inputs / "image.png"), "--prompt", "a box in front of a wall",
            "--depth", str(inputs / "depth.npy"), "--mask", str(inputs / "mask.png"),
            "--model", str(model), "--steps", "5", "--translate", "0.2", "0", "0", "--rotate-deg", "15",
            "--quiet", "--out", str(out), *extra]


def test_edit_then_cached_edit(inputs, tiny_model_dir, tmp_path, capsys):
    cache = tmp_path / "cache"
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    assert main(_args(inputs, tiny_model_dir, out1, "--cache", str(cache), "--inversion", "null-text")) == 0
    for name in ("edited.png", "reconstruction.png", "edited_depth.png", "comparison.png", "summary.json"):
        assert (out1 / name).is_file(), name
    with Image.open(out1 / "edited.png") as im:
        assert im.size == (20, 20)
    s1 = json.loads((out1 / "summary.json").read_text())
    n, until, k = 5, 4, 3  # guide until round(38/50 * 5) = 4 steps, 3 gradient steps each
    assert s1["config"]["guidance"]["guide_until"] == until
    assert s1["inversion"]["cache_hit"] is False
    inv = s1["unet_evals"]["inversion"]
    assert inv["ddim_inversion"]["forward"] == n
    assert inv["null_text"]["forward"] == 2 * n + inv["null_text"]["backward"]
    assert inv["null_text"]["backward"] <= 5 * n
    assert s1["unet_evals"]["edit"]["edit"] == {"forward": 2 * n + k * until, "backward": k * until, "calls": 2 * n + k * until}

    assert main(_args(inputs, tiny_model_dir, out2, "--cache", str(cache), "--inversion", "null-text")) == 0
    s2 = json.loads((out2 / "summary.json").read_text())
    assert s2["inversion"]["cache_hit"] is True and s2["inversion"]["skipped"] is True
    assert s2["unet_evals"]["inversion"] == {} and s2["timings_s"]["inversion"] == 0.0
    assert s2["unet_evals"]["edit"] == s1["unet_evals"]["edit"]
    assert (out1 / "edited.png").read_bytes() == (out2 / "edited.png").read_bytes()
    assert "loaded from cache" in capsys.readouterr().out


def test_fast_configuration_counts(inputs, tiny_model_dir, tmp_path):
    out = tmp_path / "fast"
    assert main(_args(inputs, tiny_model_dir, out, "--inversion", "negative-prompt", "--grad-steps", "1",
                      "--guidance-steps", "2")) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["unet_evals"]["inversion"]["reconstruction"] == {"forward": 5, "backward": 0, "calls": 5}
    assert s["unet_evals"]["edit"]["edit"]["forward"] == 5 + 1 * 2
    assert s["unet_evals"]["edit"]["edit"]["backward"] == 2


def test_presets_and_guidance_flags(inputs, tiny_model_dir, tmp_path):
    out = tmp_path / "paper"
    assert main(_args(inputs, tiny_model_dir, out, "--preset", "paper")) == 0
    g = json.loads((out / "summary.json").read_text())["config"]["guidance"]
    assert g["mode"] == "paper" and g["composite"] is False and g["identity_transfer"] is None
    out = tmp_path / "mixed"
    assert main(_args(inputs, tiny_model_dir, out, "--guidance-mode", "paper", "--composite", "off",
                      "--identity-transfer", "off", "--blend-latents")) == 0
    s = json.loads((out / "summary.json").read_text())
    g = s["config"]["guidance"]
    assert g["mode"] == "paper" and not g["composite"] and g["identity_transfer"] is None and g["blend_latents"]
    assert s["energy_monitor"], "the energies of every recorded step are logged"
    out = tmp_path / "latent"
    assert main(_args(inputs, tiny_model_dir, out, "--transfer-source", "latent", "--identity-transfer", "0.5",
                      "--complete-back")) == 0
    g = json.loads((out / "summary.json").read_text())["config"]["guidance"]
    assert g["transfer_source"] == "latent" and g["identity_transfer"] == 0.5 and g["complete_back"] is True
    out = tmp_path / "fast"
    args = _args(inputs, tiny_model_dir, out, "--preset", "fast")
    del args[args.index("--steps"):args.index("--steps") + 2]  # the preset's 20 steps
    assert main(args) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["config"]["inversion"]["method"] == "negative-prompt" and s["config"]["inversion"]["num_steps"] == 20
    ev = s["unet_evals"]["edit"]["edit"]
    assert ev["forward"] + 2 * ev["backward"] <= 100  # the fast preset's budget per edit


def test_draft_preset_runs(inputs, tiny_model_dir, tmp_path):
    """``--preset draft`` (issue 35): its own 10 steps, negative-prompt inversion, one gradient
    step; summary.json's cost is a tenth of the default's 442 per edit."""
    out = tmp_path / "draft"
    args = _args(inputs, tiny_model_dir, out, "--preset", "draft")
    del args[args.index("--steps"):args.index("--steps") + 2]  # the preset's 10 steps
    assert main(args) == 0
    s = json.loads((out / "summary.json").read_text())
    inv, g = s["config"]["inversion"], s["config"]["guidance"]
    assert inv["method"] == "negative-prompt" and inv["num_steps"] == 10
    assert g["grad_steps"] == 1 and g["guide_until"] == 8 and g["identity_transfer"] == 0.7 and g["composite"]
    assert s["cost"]["fwd_eq"] == {"inversion": 10 + 10, "edit": 10 + 8 * 3, "total": 54}
    assert 10 * s["cost"]["fwd_eq"]["edit"] <= 442
    with Image.open(out / "edited.png") as im:
        assert im.size == (20, 20)


@pytest.mark.parametrize("change, needle", [
    (("--mask", "empty.png"), "--mask"),
    (("--depth", "mask.png"), "--depth"),
    (("--steps", "zero"), "--steps"),
    (("--scale", "-1"), "--scale"),
    (("--model", "does/not/exist/here"), "--model"),
    (("--identity-transfer", "1.5"), "--identity-transfer"),
    (("--grad-steps", "-1"), "--grad-steps"),
])
def test_broken_inputs_exit_2_with_one_line(inputs, tiny_model_dir, tmp_path, capsys, change, needle):
    args = _args(inputs, tiny_model_dir, tmp_path / "out")
    flag, value = change
    if flag in args:
        args[args.index(flag) + 1] = str(inputs / value) if value.endswith(".png") else value
    else:
        args[-2:-2] = [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("handles edit: error:") and needle in err[0], err
    assert not (tmp_path / "out").exists()


def test_bad_choice_exits_2_with_one_line(inputs, tiny_model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(_args(inputs, tiny_model_dir, tmp_path / "out", "--transfer-source", "pixel"))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--transfer-source" in err[0] and "'pixel'" in err[0], err
    assert not (tmp_path / "out").exists()


def test_entry_point_subprocess(inputs, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "diffusion_handles", *_args(inputs, tiny_model_dir, out)[:-2],
                           "--mask", str(inputs / "missing.png"), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("handles edit: error: --mask")
    assert not out.exists()


def test_a_photo_larger_than_the_model_comes_back_whole(tmp_path, tiny_model_dir):
    """A 96-px photo on the 32-px tiny model: the edit runs in a window around the object and
    writes a 96-px edited.png equal to the input byte for byte wherever region.png is 0 (a
    result at the model's size, or a composite that touches the rest, fails)."""
    rng = np.random.default_rng(1)
    s = 96
    image = (rng.random((s, s, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "image.png")
    depth = np.full((s, s), 4.0, np.float32)
    depth[40:54, 40:54] = 3.0
    np.save(tmp_path / "depth.npy", depth)
    mask = np.zeros((s, s), np.uint8)
    mask[40:54, 40:54] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    args = ["edit", str(tmp_path / "image.png"), "--prompt", "a box", "--depth", str(tmp_path / "depth.npy"),
            "--mask", str(tmp_path / "mask.png"), "--model", str(tiny_model_dir), "--steps", "3",
            "--inversion", "ddim", "--translate", "0.2", "0", "0", "--quiet", "--out", str(out)]
    assert main(args) == 0
    edited = np.asarray(Image.open(out / "edited.png").convert("RGB"))
    region = np.asarray(Image.open(out / "region.png").convert("L"))
    assert edited.shape == (s, s, 3)
    outside = region == 0
    assert outside.mean() > 0.5 and np.array_equal(edited[outside], image[outside])
    summary = json.loads((out / "summary.json").read_text())
    x0, y0, x1, y1 = summary["config"]["inversion"]["window"]
    assert x1 - x0 == y1 - y0 < s and x0 <= 40 and x1 >= 54
    assert summary["inputs"]["work_size_hw"] == [32, 32]
