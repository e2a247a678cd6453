"""Hostile inputs, round 3 (issue 37, items 1, 6 and 8a): through the real command line.

* unbounded work: ``--steps`` / ``--grad-steps`` beyond :data:`~diffusion_handles.limits.STEPS`
  / ``GRAD_STEPS`` in ``handles edit`` and ``handles remove`` and in batch lines; images, masks
  and depth maps larger than :data:`~diffusion_handles.limits.IMAGE_SIDE` (read from the header,
  never decoded);
* keyframes and edits files: nesting beyond ``JSON_DEPTH``, endless files (``/dev/zero``, a FIFO
  that never ends), strings read as vectors and booleans as numbers, magnitudes beyond
  ``TRANSLATE`` / ``ROTATE_DEG`` / ``SCALE``;
* a FIFO, a device or a folder given as IMAGE, ``--depth`` or ``--mask``.

Every case exits 2 with one line naming the argument, before any model loads (loading one fails
the test), and writes nothing.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusion_handles import limits
from diffusion_handles.cli import main

from .test_inputs_hostile import assert_refused

S = 20


# ---------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    """Every refusal must come before a model loads: loading one fails the test."""
    from diffusion_handles.pipeline import DiffusionHandles

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was refused")

    monkeypatch.setattr(DiffusionHandles, "from_pretrained", refuse)


@pytest.fixture()
def scene(tmp_path) -> dict:
    """A 20x20 image, depth (.npy) and mask, and a keyframes file."""
    rng = np.random.default_rng(0)
    paths = {k: tmp_path / n for k, n in (("image", "img.png"), ("depth", "depth.npy"), ("mask", "mask.png"))}
    Image.fromarray((rng.random((S, S, 3)) * 255).astype(np.uint8)).save(paths["image"])
    depth = np.full((S, S), 3.0, np.float32)
    depth[6:14, 6:14] = 2.0
    np.save(paths["depth"], depth)
    mask = np.zeros((S, S), np.uint8)
    mask[6:14, 6:14] = 255
    Image.fromarray(mask).save(paths["mask"])
    return paths


def run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def edit_args(scene, out, *extra, command="edit"):
    return [command, scene["image"], "--prompt", "a box", "--depth", scene["depth"], "--mask", scene["mask"],
            "--model", "tinyworld", "--quiet", "--out", out, *extra]


def animate_args(scene, out, *extra):
    return ["animate", scene["image"], "--prompt", "a box", "--depth", scene["depth"], "--mask", scene["mask"],
            "--model", "tinyworld", "--frames", "3", "--quiet", "--out", out, *extra]


# ---------------------------------------------------------------------------- item 1: unbounded work
@pytest.mark.parametrize("command, flags, needle", [
    ("edit", ["--steps", "1001"], "--steps: expected an integer in [1, 1000], got 1001"),
    ("edit", ["--steps", "100000000"], "--steps: expected an integer in [1, 1000], got 100000000"),
    ("remove", ["--steps", "1001"], "--steps: expected an integer in [1, 1000], got 1001"),
    ("edit", ["--grad-steps", "51"], "--grad-steps: expected an integer in [0, 50], got 51"),
    ("edit", ["--rotate-deg", "1e308"], "--rotate-deg: expected degrees in [-36000, 36000], got 1e+308"),
    ("edit", ["--translate", "1e9", "0", "0"], "--translate: expected numbers in [-10000, 10000], got 1e+09"),
])
def test_work_beyond_the_limits_is_refused_before_any_model_loads(command, flags, needle, scene, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run(capsys, *edit_args(scene, out, *flags, command=command))
    assert_refused(code, err, out, command, needle)


@pytest.mark.parametrize("key, value, needle", [
    ("steps", 1001, "steps: expected an integer in [1, 1000], got 1001"),
    ("steps", 10**30, "steps: expected an integer in [1, 1000], got 1000000000000000000000000000000"),
    ("grad_steps", 51, "grad_steps: expected an integer in [0, 50], got 51"),
    ("guidance_steps", 5000, "guidance_steps: expected an integer in [0, 1000], got 5000"),
    ("seed", 2**63, f"seed: expected an integer in [0, {2**63 - 1}], got {2**63}"),
    ("translate", [1e5, 0, 0], "translate: expected numbers in [-10000, 10000]"),
    ("rotate_deg", 1e6, "rotate_deg: expected degrees in [-36000, 36000], got 1e+06"),
    ("scale", 1e4, "scale: expected a factor in [0.001, 1000], got 10000"),
])
def test_batch_lines_get_the_same_ranges(key, value, needle, tmp_path):
    from diffusion_handles.batch.jobs import parse_jobs

    line = {"id": "a", "image": "i.png", "prompt": "a box", "mask": "m.png", key: value}
    (tmp_path / "jobs.jsonl").write_text(json.dumps(line) + "\n")
    jobs, bad = parse_jobs(tmp_path / "jobs.jsonl")
    assert not jobs and len(bad) == 1, (jobs, bad)
    assert bad[0].error.startswith("line 1: ") and needle in bad[0].error, bad[0].error


def test_batch_line_nested_too_deeply_is_a_bad_line(tmp_path):
    from diffusion_handles.batch.jobs import parse_jobs

    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "jobs.jsonl").write_text(f'{{"id": "a", "image": "i.png", "prompt": "p", "click": {deep}}}\n')
    jobs, bad = parse_jobs(tmp_path / "jobs.jsonl")
    assert not jobs and "nested at most 16 levels deep" in bad[0].error, bad


def _big_png(path: Path, w: int, h: int, mode: str = "1") -> Path:
    Image.new(mode, (w, h)).save(path)  # tiny on disk: a header that asks for w x h pixels
    return path


@pytest.mark.parametrize("which, kind", [
    ("IMAGE", "4097x16"), ("IMAGE", "5000x5000"), ("--mask", "4097x16"), ("--depth", "png16"), ("--depth", "npy"),
])
def test_images_larger_than_the_limit_are_refused_from_the_header(which, kind, scene, tmp_path, capsys):
    if kind == "png16":
        p, size = tmp_path / "big_depth.png", "16x4097"
        Image.fromarray(np.full((4097, 16), 1000, np.uint16)).save(p)
    elif kind == "npy":
        p, size = tmp_path / "big_depth.npy", "16x4097"
        np.save(p, np.ones((4097, 16), np.float32))
    else:
        w, h = (int(v) for v in kind.split("x"))
        p, size = _big_png(tmp_path / f"big{kind}.png", w, h), kind
    files = {**scene, {"IMAGE": "image", "--mask": "mask", "--depth": "depth"}[which]: p}
    out = tmp_path / "out"
    code, err = run(capsys, *edit_args(files, out))
    assert_refused(code, err, out, "edit", f"{which}: expected width and height of at most 4096 pixels, got {size}")


def test_image_larger_than_the_limit_is_refused_without_decoding(tmp_path):
    """A header claiming 5000x5000 over a truncated body: refused for its size, not for the body."""
    from diffusion_handles.errors import HandlesError
    from diffusion_handles.io import load_image, load_mask

    p = _big_png(tmp_path / "big.png", 5000, 5000, "L")
    data = p.read_bytes()
    p.write_bytes(data[:200])  # the header and the start of the pixels only
    for load, arg in ((load_image, "IMAGE"), (load_mask, "--mask")):
        with pytest.raises(HandlesError, match=f"^{arg}: expected width and height of at most 4096 pixels, got 5000x5000"):
            load(p, arg)


def test_the_image_size_limit_is_inclusive(tmp_path):
    from diffusion_handles.io import load_mask

    side = limits.IMAGE_SIDE[1]
    m = load_mask(_big_png(tmp_path / "max.png", side, side), "--mask")
    assert tuple(m.shape) == (1, 1, side, side)


# ---------------------------------------------------------------------------- item 6: keyframes and edits files
def _nested(depth: int) -> str:
    return "[" * depth + "{}" + "]" * depth


def run_json_flag(capsys, scene, out: Path, flag: str, path) -> tuple[int, str, str]:
    """``handles animate --keyframes PATH`` or ``handles edit --edits PATH``: (code, stderr, command)."""
    if flag == "--keyframes":
        return (*run(capsys, *animate_args(scene, out, "--keyframes", path)), "animate")
    return (*run(capsys, "edit", scene["image"], "--prompt", "boxes", "--depth", scene["depth"],
                 "--model", "tinyworld", "--edits", path, "--out", out), "edit")


@pytest.mark.parametrize("flag, depth", [("--keyframes", 100_000), ("--keyframes", 17), ("--edits", 100_000),
                                         ("--edits", 17)])
def test_json_nested_too_deeply_is_refused(flag, depth, scene, tmp_path, capsys):
    p = tmp_path / "deep.json"
    p.write_text(_nested(depth))
    out = tmp_path / "out"
    code, err, command = run_json_flag(capsys, scene, out, flag, p)
    assert_refused(code, err, out, command, f"{flag}: expected JSON nested at most 16 levels deep")


def _endless_fifo(path: Path, cap: int = 64 << 20) -> dict:
    """A FIFO whose writer sends zeros until the reader hangs up (or ``cap`` bytes, then stops)."""
    os.mkfifo(path)
    state = {"sent": 0}

    def write():
        try:
            with open(path, "wb") as f:
                chunk = b" " * 65536
                while state["sent"] < cap:
                    f.write(chunk)
                    state["sent"] += len(chunk)
        except (BrokenPipeError, OSError):
            pass

    t = threading.Thread(target=write, daemon=True)
    t.start()
    state["thread"] = t
    return state


@pytest.mark.parametrize("flag, source", [("--keyframes", "/dev/zero"), ("--edits", "/dev/zero"),
                                          ("--keyframes", "fifo"), ("--keyframes", "big")])
def test_json_files_are_read_only_up_to_the_limit(flag, source, scene, tmp_path, capsys):
    fifo = None
    if source == "fifo":
        path = tmp_path / "endless.json"
        fifo = _endless_fifo(path)
    elif source == "big":
        path = tmp_path / "big.json"
        path.write_text("[{}" + " " * (limits.JSON_BYTES + 10) + "]")
    else:
        path = Path(source)
    out = tmp_path / "out"
    code, err, command = run_json_flag(capsys, scene, out, flag, path)
    assert_refused(code, err, out, command, f"{flag}: expected a JSON file of at most {limits.JSON_BYTES} bytes")
    if fifo is not None:
        fifo["thread"].join(timeout=10)
        assert fifo["sent"] < 8 * limits.JSON_BYTES, fifo["sent"]  # the reader hung up early


@pytest.mark.parametrize("keyframe, needle", [
    ({"translate": "123"}, 'keyframe 0: translate: expected a list of 3 numbers, got "123"'),
    ({"scale": True}, "keyframe 0: scale: expected a number, got true"),
    ({"rotate_deg": "30"}, 'keyframe 0: rotate_deg: expected a number, got "30"'),
    ({"rotate_axis": [True, 0, 0], "rotate_deg": 5}, "keyframe 0: rotate_axis: expected a list of 3 numbers"),
    ({"translate": [2e4, 0, 0]}, "keyframe 0: translate: expected numbers in [-10000, 10000], got 20000"),
    ({"rotate_deg": 1e308}, "keyframe 0: rotate_deg: expected degrees in [-36000, 36000], got 1e+308"),
    ({"scale": 1e-9}, "keyframe 0: scale: expected a factor in [0.001, 1000], got 1e-09"),
])
def test_keyframes_are_read_strictly(keyframe, needle, scene, tmp_path, capsys):
    p = tmp_path / "keys.json"
    p.write_text(json.dumps([keyframe, {"rotate_deg": -1e308} if "1e+308" in needle else {}]))
    out = tmp_path / "out"
    code, err = run(capsys, *animate_args(scene, out, "--keyframes", p))
    assert_refused(code, err, out, "animate", f"--keyframes: {needle}")


@pytest.mark.parametrize("entry, needle", [
    ({"translate": [0, 2e4, 0]}, "--edits: [0].translate: expected numbers in [-10000, 10000], got 0 20000 0"),
    ({"rotate_deg": -1e6}, "--edits: [0].rotate_deg: expected degrees in [-36000, 36000], got -1e+06"),
    ({"keyframes": [{"translate": "123"}]}, '--edits: [0].keyframes: keyframe 0: translate: expected a list of 3'),
])
def test_edits_files_are_read_strictly(entry, needle, scene, tmp_path, capsys):
    p = tmp_path / "edits.json"
    p.write_text(json.dumps([{"mask": str(scene["mask"]), **entry}]))
    out = tmp_path / "out"
    if "keyframes" in entry:
        code, err = run(capsys, "animate", scene["image"], "--prompt", "boxes", "--depth", scene["depth"],
                        "--model", "tinyworld", "--edits", p, "--out", out)
        command = "animate"
    else:
        code, err = run(capsys, "edit", scene["image"], "--prompt", "boxes", "--depth", scene["depth"],
                        "--model", "tinyworld", "--edits", p, "--out", out)
        command = "edit"
    assert_refused(code, err, out, command, needle)


# ---------------------------------------------------------------------------- item 8a: not a regular file
@pytest.mark.parametrize("which, kind", [("--mask", "fifo"), ("IMAGE", "fifo"), ("--depth", "fifo"),
                                         ("--mask", "folder"), ("--depth", "device")])
def test_inputs_that_are_not_regular_files_say_what_they_are(which, kind, scene, tmp_path, capsys):
    if kind == "fifo":
        p = tmp_path / "pipe"
        os.mkfifo(p)
        what = "a FIFO"
    elif kind == "folder":
        p = tmp_path / "folder"
        p.mkdir()
        what = "a folder"
    else:
        p = Path("/dev/null")
        what = "a device"
    files = {**scene, {"IMAGE": "image", "--mask": "mask", "--depth": "depth"}[which]: p}
    out = tmp_path / "out"
    code, err = run(capsys, *edit_args(files, out))
    assert_refused(code, err, out, "edit", f"{which}: expected a regular file, got {what}")
