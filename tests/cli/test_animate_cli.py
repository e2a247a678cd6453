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


def _two_objects(d):
    """Two masks beside each other and an --edits file moving them on their own tracks."""
    for name, cols in (("left.png", slice(2, 8)), ("right.png", slice(12, 18))):
        m = np.zeros((S, S), np.uint8)
        m[6:14, cols] = 255
        Image.fromarray(m).save(d / name)
    (d / "two.json").write_text(json.dumps([
        {"mask": "left.png", "keyframes": [{}, {"translate": [0.0, 0.3, 0.0]}]},
        {"mask": "right.png", "keyframes": [{"scale": 1.0}, {"scale": 0.81}, {"rotate_deg": 20}]},
    ]))


def _multi_args(d, out, *extra):
    return ["animate", str(d / "image.png"), "--prompt", "two boxes", "--depth", str(d / "depth.npy"),
            "--model", str(d / "model"), "--steps", "3", "--preset", "fast", "--quiet", "--out", str(out), *extra]


def test_edits_animate_several_objects_each_on_its_own_track(inputs, tmp_path, monkeypatch):
    """``--edits``: one inversion, and per frame one edit per object, each interpolated along its
    own keyframes and applied to its own mask (a swapped track or mask, or one track for all,
    fails here)."""
    from diffusion_handles.pipeline import DiffusionHandles

    calls, real_edit = [], DiffusionHandles.edit

    def spy(self, inverted, edit, **kw):
        calls.append(([m.transform for m in edit], [m.mask for m in edit]))  # a list of ObjectMove
        return real_edit(self, inverted, edit, **kw)

    monkeypatch.setattr(DiffusionHandles, "edit", spy)
    _two_objects(inputs)
    out = tmp_path / "two"
    assert main(_multi_args(inputs, out, "--edits", str(inputs / "two.json"), "--frames", "5")) == 0
    assert len(calls) == 5
    edits, masks = calls[-1]
    assert len(edits) == 2 and len(masks) == 2
    assert float(masks[0][0, 0, 6:14, 2:8].min()) == 1.0 and float(masks[0].sum()) == 48  # the left object
    assert float(masks[1][0, 0, 6:14, 12:18].min()) == 1.0 and float(masks[1].sum()) == 48
    assert edits[0].translate[1] == pytest.approx(0.3) and edits[1].rotate_deg == pytest.approx(20.0)
    s = json.loads((out / "summary.json").read_text())
    assert s["moves"] == "objects" and len(s["objects"]) == 2 and len(s["frames"]) == 5
    left = [f["edits"][0] for f in s["frames"]]
    right = [f["edits"][1] for f in s["frames"]]
    assert [e["translate"][1] for e in left] == pytest.approx([0.0, 0.075, 0.15, 0.225, 0.3])
    assert all(e["scale"] == 1.0 and e["rotate_deg"] == 0.0 for e in left)
    assert right[2]["scale"] == pytest.approx(0.81) and right[1]["scale"] == pytest.approx(0.9)  # geometric
    assert right[4]["rotate_deg"] == pytest.approx(20.0) and right[4]["scale"] == pytest.approx(1.0)
    assert all(e["translate"] == [0.0, 0.0, 0.0] for e in right)
    frames = [np.asarray(Image.open(out / "frames" / f"{i:04d}.png")).astype(int) for i in (0, 4)]
    assert np.abs(frames[0] - frames[1]).max() > 0
    assert (out / "animation.mp4").stat().st_size > 0


@pytest.mark.parametrize("extra, match", [
    (["--keyframes", "KEYS"], "--keyframes: expected either --keyframes (one object or the camera) or --edits"),
    (["--camera"], "--camera: expected either --camera or --edits"),
    (["--mask", "MASK"], "--edits: expected no --mask"),
])
def test_edits_conflicts_are_refused(inputs, tmp_path, capsys, extra, match):
    _two_objects(inputs)
    extra = [str(inputs / "keys.json") if a == "KEYS" else str(inputs / "mask.png") if a == "MASK" else a for a in extra]
    out = tmp_path / "two"
    assert main(_multi_args(inputs, out, "--edits", str(inputs / "two.json"), *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("entries, match", [
    ([{"mask": "left.png", "translate": [0, 1, 0]}], "--edits: [0]: unknown key(s) translate; expected mask|object|click and keyframes"),
    ([{"mask": "left.png"}], '--edits: [0]: expected "keyframes"'),
    ([{"mask": "left.png", "keyframes": [{}]}, {"mask": "right.png", "keyframes": [{}, {"scale": 0}]}],
     "--edits: [1].keyframes: keyframe 1"),
    ([{"mask": "left.png", "keyframes": []}], "--edits: [0].keyframes: expected a JSON list of transforms"),
])
def test_edits_file_errors_name_the_entry(inputs, tmp_path, capsys, entries, match):
    _two_objects(inputs)
    (inputs / "bad_edits.json").write_text(json.dumps(entries))
    out = tmp_path / "two"
    assert main(_multi_args(inputs, out, "--edits", str(inputs / "bad_edits.json"))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    assert not out.exists()


def test_neither_keyframes_nor_edits_is_refused(inputs, tmp_path, capsys):
    out = tmp_path / "none"
    assert main(_multi_args(inputs, out, "--mask", str(inputs / "mask.png"))) == 2
    assert "got neither" in capsys.readouterr().err
    assert not out.exists()
