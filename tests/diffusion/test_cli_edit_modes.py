"""``handles edit --camera``, ``handles edit --edits FILE.json`` and ``handles remove`` on the tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from diffusion_handles.cli import main

S = 20


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((S, S, 3)) * 255).astype(np.uint8)).save(d / "image.png")
    depth = np.full((S, S), 3.0, np.float32)
    depth[5:12, 2:8] = 2.0
    depth[5:12, 12:18] = 2.5
    np.save(d / "depth.npy", depth)
    for name, cols in (("a", slice(2, 8)), ("b", slice(12, 18))):
        m = np.zeros((S, S), np.uint8)
        m[5:12, cols] = 255
        Image.fromarray(m).save(d / f"{name}.png")
    (d / "sub").mkdir()
    (d / "sub" / "edits.json").write_text(json.dumps([
        {"mask": "../a.png", "translate": [0, -0.2, 0]},
        {"mask": str(d / "b.png"), "rotate_deg": 20, "scale": 1.1},
    ]))
    return d


def _common(inputs, model, out):
    return [str(inputs / "image.png"), "--prompt", "two boxes", "--depth", str(inputs / "depth.npy"),
            "--model", str(model), "--steps", "3", "--inversion", "negative-prompt", "--quiet", "--out", str(out)]


def test_camera_edit(inputs, tiny_model_dir, tmp_path):
    out = tmp_path / "cam"
    assert main(["edit", *_common(inputs, tiny_model_dir, out), "--camera", "--translate", "0.6", "0", "0"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["mode"] == "camera" and s["transform"]["moves"] == "camera"
    assert s["results"]["hole_pixels"] > 0
    for name in ("edited.png", "comparison.png", "edited_depth.npy"):
        assert (out / name).is_file()
    with Image.open(out / "comparison.png") as im:
        assert im.height >= 256


def test_multi_edit(inputs, tiny_model_dir, tmp_path):
    out = tmp_path / "multi"
    assert main(["edit", *_common(inputs, tiny_model_dir, out), "--edits", str(inputs / "sub" / "edits.json")]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["mode"] == "multi" and len(s["transform"]["edits"]) == 2
    assert s["results"]["objects"] == 2 and all(n == 42 for n in s["results"]["object_pixels"])
    assert (out / "edited.png").is_file()


def test_remove(inputs, tiny_model_dir, tmp_path):
    out = tmp_path / "rm"
    assert main(["remove", *_common(inputs, tiny_model_dir, out), "--mask", str(inputs / "a.png")]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["results"]["region_pixels"] > s["results"]["object_pixels"]
    for name in ("removed.png", "region.png", "comparison.png", "background_depth.npy"):
        assert (out / name).is_file()
    removed = np.asarray(Image.open(out / "removed.png"))
    image = np.asarray(Image.open(inputs / "image.png"))
    region = np.asarray(Image.open(out / "region.png").convert("L"))
    assert np.array_equal(removed[region == 0], image[region == 0])  # the input kept outside


@pytest.mark.parametrize("command, extra, arg", [
    ("edit", ["--camera", "--mask", "a.png"], "--camera"),
    ("edit", ["--edits", "missing.json"], "--edits"),
    ("edit", ["--edits", "bad.json"], "--edits"),
    ("edit", ["--edits", "sub/edits.json", "--translate", "1", "0", "0"], "--translate"),
    ("edit", ["--camera", "--edits", "sub/edits.json"], "--camera"),
    ("edit", ["--camera", "--translate", "0.6", "0", "0", "--complete-back"], "--complete-back"),
    ("remove", [], "--mask/--object/--click"),
    ("remove", ["--mask", "a.png", "--margin", "0"], "--margin"),
])
def test_bad_inputs_exit_2_in_one_line_and_write_nothing(inputs, tiny_model_dir, tmp_path, capsys, command, extra, arg):
    (inputs / "bad.json").write_text(json.dumps([{"mask": "a.png", "translate": [1, 2]}]))
    extra = [str(inputs / e) if e.endswith((".png", ".json")) else e for e in extra]
    out = tmp_path / "out"
    assert main([command, *_common(inputs, tiny_model_dir, out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"error: {arg}" in err, err
    assert not out.exists()
