"""``handles animate`` end to end on a tiny diffusers-layout model folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from diffusion_handles.cli import main
from diffusion_handles.diffusion.random_models import (
    build_backbone_components,
    save_model_folder,
    tiny_configs,
)

S = 20


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("animate")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((S, S, 3)) * 255).astype(np.uint8)).save(d / "image.png")
    depth = np.full((S, S), 3.0, np.float32)
    depth[6:14, 6:14] = 2.0
    np.save(d / "depth.npy", depth)
    mask = np.zeros((S, S), np.uint8)
    mask[6:14, 6:14] = 255
    Image.fromarray(mask).save(d / "mask.png")
    (d / "keys.json").write_text(json.dumps([{}, {"translate": [0.4, 0, 0], "rotate_deg": 30, "scale": 1.21}]))
    save_model_folder(build_backbone_components(tiny_configs(), seed=0), d / "model")
    return d


def _args(d, out, *extra, keys="keys.json"):
    return ["animate", str(d / "image.png"), "--prompt", "a box", "--depth", str(d / "depth.npy"),
            "--mask", str(d / "mask.png"), "--model", str(d / "model"), "--steps", "3", "--preset", "fast",
            "--keyframes", str(d / keys), "--quiet", "--out", str(out), *extra]


def test_animate_writes_frames_video_gif_and_interpolated_transforms(inputs, tmp_path, capsys):
    import imageio_ffmpeg

    out = tmp_path / "anim"
    assert main(_args(inputs, out, "--frames", "3", "--fps", "4")) == 0
    frames = sorted((out / "frames").iterdir())
    assert [f.name for f in frames] == ["0000.png", "0001.png", "0002.png"]
    assert all(Image.open(f).size == (S, S) for f in frames)
    reader = imageio_ffmpeg.read_frames(str(out / "animation.mp4"))
    meta = next(reader)
    assert "h264" in meta["codec"] and sum(1 for _ in reader) == 3
    assert max(meta["size"]) >= 256  # shown at a size a person can see
    with Image.open(out / "animation.gif") as gif:
        assert gif.n_frames == 3
    with Image.open(out / "comparison.png") as comp:
        assert comp.height >= 256
    s = json.loads((out / "summary.json").read_text())
    edits = [f["edit"] for f in s["frames"]]
    assert edits[0]["translate"] == [0.0, 0.0, 0.0] and edits[2]["translate"] == [0.4, 0.0, 0.0]
    assert edits[1]["translate"] == pytest.approx([0.2, 0.0, 0.0])
    assert edits[1]["scale"] == pytest.approx(1.1) and edits[1]["rotate_deg"] == pytest.approx(15.0)
    assert s["config"]["frames"] == 3


@pytest.mark.parametrize("extra, keys, match", [
    (["--frames", "1"], "keys.json", "--frames"),
    (["--frames", "many"], "keys.json", "--frames"),
    (["--fps", "0"], "keys.json", "--fps"),
    ([], "missing.json", "--keyframes"),
    ([], "bad.json", "--keyframes"),
    ([], "scale.json", "--keyframes: keyframe 1"),
])
def test_bad_arguments_exit_2_with_one_line_and_nothing_written(inputs, tmp_path, capsys, extra, keys, match):
    (inputs / "bad.json").write_text("{oops")
    (inputs / "scale.json").write_text(json.dumps([{}, {"scale": 0}]))
    out = tmp_path / "anim"
    assert main(_args(inputs, out, *extra, keys=keys)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("handles animate: error: ") and match in err[0], err
    assert not out.exists()


def test_camera_keyframes_move_the_camera_without_a_mask(inputs, tmp_path):
    out = tmp_path / "cam"
    argv = [a for a in _args(inputs, out, "--frames", "2", "--camera") if a not in ("--mask", str(inputs / "mask.png"))]
    assert main(argv) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["moves"] == "camera" and s["inputs"]["mask"] == "None"
    assert [f["edit"]["translate"] for f in s["frames"]] == [[0.0, 0.0, 0.0], [0.4, 0.0, 0.0]]
    first, last = (np.asarray(Image.open(out / "frames" / f)).astype(int) for f in ("0000.png", "0001.png"))
    assert np.abs(first - last).max() > 0  # the camera moved


def test_camera_with_a_mask_is_refused(inputs, tmp_path, capsys):
    out = tmp_path / "cam"
    assert main(_args(inputs, out, "--camera")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--camera: expected no --mask/--object/--click" in err[0], err
    assert not out.exists()
