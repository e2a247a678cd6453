"""Hostile but fair command lines (issue 13, items 3, 5 and the argument parts of 4 and 8).

Through the real command line (``diffusion_handles.cli.main`` in-process), every case must exit
2 with one line on stderr, ``handles <cmd>: error: <argument>: ...``, no traceback, and nothing
written or overwritten; ``handles bench`` exits 1 when an edit failed. Classes:

* ``--out`` of every command that takes one: ``""``, ``.``, a folder above the current one, an
  existing file, a path under a file, a non-empty folder without ``--overwrite``, a place where
  nothing can be created: refused before any model loads or any computation starts (the
  loaders and the work are replaced by tripwires); ``--overwrite`` replaces a folder whole;
* ``handles bench``: failures give exit 1 and a count, bounds on sizes and counts (stated in
  ``--help``), ``--report-only`` without results, corrupt ``settings.json`` / ``edits/*.json``,
  a folder that is not a bench run;
* arguments: ``--seed`` beyond 63 bits or negative, ``--device`` unknown or absent, ``--scale``
  out of range, ``handles segment`` suggesting a flag it does not have, ``--quiet`` and the
  weight-loading bars.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusion_handles.cli import main

H, W = 48, 64
BOX = (14, 34, 20, 44)  # rows y0:y1, cols x0:x1
BENCH = ["--scenes", "1", "--size", "32", "--spp", "4", "--steps", "2", "--methods", "warp_only", "--quiet"]


# ---------------------------------------------------------------------- helpers
def run(capsys, *argv):
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def assert_one_line_error(code: int, err: str, cmd: str, arg: str, status: int = 2) -> str:
    assert code == status, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"handles {cmd}: error:"), lines[0]
    assert arg in lines[0], lines[0]
    return lines[0]


def snapshot(root: Path) -> dict:
    """Every path under ``root`` with its bytes and modification time (folders: None)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink() or p.is_dir():
            out[str(p.relative_to(root))] = None
        else:
            out[str(p.relative_to(root))] = (p.read_bytes(), p.stat().st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("inputs")
    depth = np.full((H, W), 6.0, np.float32)
    y0, y1, x0, x1 = BOX
    depth[y0:y1, x0:x1] = 3.0
    mask = np.zeros((H, W), np.uint8)
    mask[y0:y1, x0:x1] = 255
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 2] = 180
    rgb[y0:y1, x0:x1] = (220, 40, 40)
    paths = {"image": d / "img.png", "depth": d / "depth.npy", "mask": d / "mask.png", "run": d / "run"}
    Image.fromarray(rgb).save(paths["image"])
    np.save(paths["depth"], depth)
    Image.fromarray(mask).save(paths["mask"])
    paths["run"].mkdir()
    (paths["run"] / "unet.pt").write_bytes(b"")  # passes `world export`'s --run-dir check; never loaded
    return paths


@pytest.fixture()
def tripwires(monkeypatch):
    """Model loaders and the commands' work raise: a refusal must come before any of them."""
    def trip(what):
        def f(*a, **k):
            raise AssertionError(f"{what} ran before the arguments were checked")
        return f

    for target in ("diffusion_handles.pipeline.DiffusionHandles.from_pretrained",
                   "diffusion_handles.perception.depth.DepthEstimator.load",
                   "diffusion_handles.perception.segment.SamSegmenter.load",
                   "diffusion_handles.perception.segment.TextDetector.load",
                   "diffusion_handles.preview.make_preview",
                   "diffusion_handles.bench.runner.run_benchmark",
                   "diffusion_handles.world.render.render",
                   "diffusion_handles.world.train.export",
                   "diffusion_handles.world.evaluate.evaluate",
                   "diffusion_handles.bench.editbench3d.export_tinyworld"):
        monkeypatch.setattr(target, trip(target.rsplit(".", 1)[-1]))


@pytest.fixture()
def cwd(tmp_path, monkeypatch) -> Path:
    """A current folder holding what a careless --out would overwrite."""
    root = tmp_path / "home"
    work = root / "work"
    work.mkdir(parents=True)
    (work / "summary.json").write_text('{"precious": true}')
    (work / "afile.txt").write_text("a file, not a folder")
    (work / "full").mkdir()
    (work / "full" / "summary.json").write_text('{"an earlier run": true}')
    (work / "full" / "edited.png").write_bytes(b"old edit")
    monkeypatch.chdir(work)
    return work


def _unwritable(tmp_path: Path, name: str = "out") -> str:
    """A place no folder can be made at: under /proc as root, else in a read-only folder."""
    if os.geteuid() == 0:  # root writes through permission bits: use a file system that takes no folders
        if os.access("/proc", os.F_OK):
            return f"/proc/handles-{name}"
        pytest.skip("running as root and no /proc to stand for an unwritable place")
    ro = tmp_path / "readonly"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    return str(ro / name)


COMMANDS = {  # argv without --out; valid, so that only --out can stop them
    "preview": lambda p: ["preview", p["image"], "--depth", p["depth"], "--mask", p["mask"], "--translate", "0.1", "0", "0"],
    "edit": lambda p: ["edit", p["image"], "--prompt", "a red box", "--depth", p["depth"], "--mask", p["mask"],
                       "--model", "tinyworld", "--steps", "2", "--quiet"],
    "depth": lambda p: ["depth", p["image"]],
    "segment": lambda p: ["segment", p["image"], "--click", "30,20"],
    "demo": lambda p: ["demo", "--steps", "2", "--quiet"],
    "bench": lambda p: ["bench", *BENCH],
    "world render": lambda p: ["world", "render", "--seed", "1", "--size", "32", "--spp", "4"],
    "world export": lambda p: ["world", "export", "--run-dir", p["run"]],
    "world eval": lambda p: ["world", "eval", "--n", "2", "--steps", "1"],
    "world leak-prior": lambda p: ["world", "leak-prior", "--data", p["depth"]],  # an existing file passes --data's check
    "world extend-vocab": lambda p: ["world", "extend-vocab"],
    "world export-3deditbench": lambda p: ["world", "export-3deditbench", "--scenes", "1"],
}
BAD_OUT = {  # name -> (--out value, words the message must hold)
    "empty": ("", "expected a folder name"),
    "dot": (".", "current folder"),
    "parent": ("..", "above the current folder"),
    "file": ("afile.txt", "is a file"),
    "under_file": ("afile.txt/sub", "under the file"),
    "non_empty": ("full", "expected a new or empty folder"),
    "unwritable": (None, "expected a writable place"),
}


# ---------------------------------------------------------------------- --out
@pytest.mark.parametrize("bad", list(BAD_OUT))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_out_is_refused_before_any_work(command, bad, inputs, cwd, tripwires, tmp_path, capsys):
    value, words = BAD_OUT[bad]
    if value is None:
        value = _unwritable(tmp_path)
    before = snapshot(tmp_path)
    code, _, err = run(capsys, *COMMANDS[command](inputs), "--out", value)
    line = assert_one_line_error(code, err, command.split()[0], "--out")
    assert words in line
    assert snapshot(tmp_path) == before  # nothing written, overwritten or left behind (no staging)


@pytest.mark.parametrize("command", ["preview", "edit", "bench", "world render"])
@pytest.mark.parametrize("value", [".", ".."])
def test_overwrite_never_replaces_the_current_folder_or_above(command, value, inputs, cwd, tripwires, tmp_path, capsys):
    before = snapshot(tmp_path)
    code, _, err = run(capsys, *COMMANDS[command](inputs), "--out", value, "--overwrite")
    assert_one_line_error(code, err, command.split()[0], "--out")
    assert snapshot(tmp_path) == before


def test_a_non_empty_folder_names_the_way_out(inputs, cwd, tripwires, capsys):
    code, _, err = run(capsys, *COMMANDS["preview"](inputs), "--out", "full")
    line = assert_one_line_error(code, err, "preview", "--out")
    assert "--overwrite" in line and "2 entries" in line
    # commands without --overwrite do not suggest it
    code, _, err = run(capsys, *COMMANDS["world export"](inputs), "--out", "full")
    assert "--overwrite" not in assert_one_line_error(code, err, "world", "--out")


def _preview(inputs, out, *extra):
    return ["preview", inputs["image"], "--depth", inputs["depth"], "--mask", inputs["mask"], *extra, "--out", out]


def test_empty_folder_is_used_and_overwrite_replaces_whole(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run(capsys, *_preview(inputs, out, "--translate", "0.1", "0", "0"))
    assert code == 0, err
    first = json.loads((out / "summary.json").read_text())
    (out / "stale_edited.png").write_bytes(b"from an older edit")
    # without --overwrite: refused, untouched
    before = snapshot(tmp_path)
    code, _, err = run(capsys, *_preview(inputs, out, "--translate", "0.2", "0", "0"))
    assert_one_line_error(code, err, "preview", "--out")
    assert snapshot(tmp_path) == before
    # with it: the folder is replaced whole (no stale file merged in), no staging left beside it
    code, _, err = run(capsys, *_preview(inputs, out, "--translate", "0.2", "0", "0"), "--overwrite")
    assert code == 0, err
    assert not (out / "stale_edited.png").exists()
    second = json.loads((out / "summary.json").read_text())
    assert first["transform"]["edit"]["translate"] == [0.1, 0.0, 0.0]
    assert second["transform"]["edit"]["translate"] == [0.2, 0.0, 0.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_overwrite_leaves_the_old_folder(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text('{"keep": 1}')
    before = snapshot(tmp_path)
    code, _, err = run(capsys, *_preview(inputs, out, "--translate", "0", "0", "-10"), "--overwrite")  # behind the camera
    assert "--out" not in assert_one_line_error(code, err, "preview", "")
    assert snapshot(tmp_path) == before


def test_atomic_output_dir_replaces_or_leaves_alone(tmp_path):
    from diffusion_handles.outputs import atomic_output_dir

    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_output_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    with atomic_output_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ---------------------------------------------------------------------- handles bench
@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> Path:
    """One warp-only edit at 32x32 (no diffusion model): a real, resumable bench folder."""
    out = tmp_path_factory.mktemp("bench") / "run"
    assert main(["bench", *BENCH, "--out", str(out)]) == 0
    return out


@pytest.fixture()
def bench_copy(bench_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(bench_run, dst, symlinks=True)
    return dst


def test_bench_exits_1_and_counts_failures(bench_run, tmp_path, capsys):
    out = tmp_path / "bad"
    out.mkdir()
    (out / "cases").symlink_to(bench_run / "cases")  # the rendered case is reused
    code, stdout, err = run(capsys, "bench", *BENCH[:-3], "--methods", "warp_only", "ours", "--quiet",
                            "--model", tmp_path / "no-such-model", "--out", out)
    line = assert_one_line_error(code, err, "bench", "1 of 1 edits failed", status=1)
    assert "ours: 1" in line and "no-such-model" in line and "results.json" in line
    res = json.loads((out / "results.json").read_text())  # the results are still written
    assert res["aggregate"]["ours"]["failed"] == 1 and res["aggregate"]["warp_only"]["ok"] == 1
    assert "| ours |" in stdout


@pytest.mark.parametrize("flag, value", [
    ("--size", "2000"), ("--size", "8"), ("--scenes", "0"), ("--scenes", "100000"), ("--steps", "0"),
    ("--steps", "5000"), ("--spp", "0"), ("--spp", "100000"), ("--null-inner-steps", "-1"),
    ("--null-inner-steps", "1000"), ("--seed", "-1"), ("--seed", str(2**64 + 1)), ("--threads", "0"),
    ("--device", "gpu9"), ("--shard", "2/2"),
])
def test_bench_bounds_are_enforced_up_front(flag, value, tripwires, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(capsys, "bench", *BENCH, flag, value, "--out", out)
    assert_one_line_error(code, err, "bench", flag)
    assert not out.exists()


def test_bench_help_states_the_bounds(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for bound in ("in [16, 1024]", "in [1, 10000]", "in [1, 1000]", "in [0, 100]", "in [1, 4096]", "Exit status"):
        assert bound in text, bound


def test_report_only_needs_results(bench_run, tripwires, tmp_path, capsys):
    missing = tmp_path / "missing"
    code, _, err = run(capsys, "bench", *BENCH, "--report-only", "--out", missing)
    assert_one_line_error(code, err, "bench", "--report-only")
    assert not missing.exists()
    for name, files in (("empty", {}), ("foreign", {"summary.json": "{}"})):
        d = tmp_path / name
        d.mkdir()
        for f, text in files.items():
            (d / f).write_text(text)
        before = snapshot(d)
        code, _, err = run(capsys, "bench", *BENCH, "--report-only", "--out", d)
        assert_one_line_error(code, err, "bench", "--report-only")
        assert snapshot(d) == before


def test_report_only_on_other_scenes_writes_nothing(bench_copy, capsys):
    before = snapshot(bench_copy)
    code, _, err = run(capsys, "bench", *BENCH, "--seed", "2000500", "--report-only", "--out", bench_copy)
    assert "holds no edits" in assert_one_line_error(code, err, "bench", "--report-only")
    assert snapshot(bench_copy) == before
    code, _, err = run(capsys, "bench", *BENCH, "--report-only", "--out", bench_copy)  # its own scenes: fine
    assert code == 0, err


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_corrupt_settings_is_one_line_naming_the_file(text, bench_copy, capsys):
    (bench_copy / "settings.json").write_text(text)
    before = snapshot(bench_copy)
    for extra in ([], ["--report-only"]):
        code, _, err = run(capsys, "bench", *BENCH, *extra, "--out", bench_copy)
        assert "settings.json" in assert_one_line_error(code, err, "bench", "--out")
        assert snapshot(bench_copy) == before


@pytest.mark.parametrize("text", ["{truncated", '{"case_id": "s1000500", "methods": []}',
                                  '{"case_id": "s1000500", "methods": {"warp_only": {"iou": "high"}}}'])
def test_corrupt_edit_is_recomputed_or_refused(text, bench_copy, capsys):
    edit = bench_copy / "edits" / "s1000500.json"
    good = json.loads(edit.read_text())
    edit.write_text(text)
    # --report-only cannot recompute: one line naming the file, nothing written
    before = snapshot(bench_copy)
    code, _, err = run(capsys, "bench", *BENCH, "--report-only", "--out", bench_copy)
    assert str(edit) in assert_one_line_error(code, err, "bench", "--report-only")
    assert snapshot(bench_copy) == before
    # a run recomputes that edit and says so
    code, _, err = run(capsys, "bench", *BENCH, "--out", bench_copy)
    assert code == 0, err
    assert "Traceback" not in err
    notes = [ln for ln in err.splitlines() if ln.strip()]
    assert len(notes) == 1 and notes[0].startswith("handles bench: note:") and str(edit) in notes[0]
    assert "recomputing" in notes[0]
    rec = json.loads(edit.read_text())
    assert rec["methods"]["warp_only"]["iou"] == good["methods"]["warp_only"]["iou"]


def test_bench_resumes_its_own_folder_only(bench_copy, tmp_path, capsys):
    results = bench_copy / "results.json"
    edit_before = (bench_copy / "edits" / "s1000500.json").read_bytes()
    code, _, err = run(capsys, "bench", *BENCH, "--out", bench_copy)  # same settings: resumed, nothing redone
    assert code == 0, err
    assert (bench_copy / "edits" / "s1000500.json").read_bytes() == edit_before and results.exists()
    # other settings: refused before anything is written
    before = snapshot(bench_copy)
    code, _, err = run(capsys, "bench", *[v if v != "32" else "48" for v in BENCH], "--out", bench_copy)
    assert "other settings (size)" in assert_one_line_error(code, err, "bench", "--out")
    assert snapshot(bench_copy) == before
    # a folder holding anything else is not a bench run
    (bench_copy / "summary.json").write_text("{}")
    before = snapshot(bench_copy)
    code, _, err = run(capsys, "bench", *BENCH, "--out", bench_copy)
    assert "a bench run" in assert_one_line_error(code, err, "bench", "--out")
    assert snapshot(bench_copy) == before


def test_bench_overwrite_starts_afresh(bench_copy, tmp_path, capsys):
    (bench_copy / "images" / "stale.png").write_bytes(b"old")
    code, _, err = run(capsys, "bench", *BENCH, "--overwrite", "--out", bench_copy)
    assert code == 0, err
    assert not (bench_copy / "images" / "stale.png").exists()
    assert (bench_copy / "results.json").is_file() and (bench_copy / "edits" / "s1000500.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging or old folder left
    code, _, err = run(capsys, "bench", *BENCH, "--overwrite", "--report-only", "--out", bench_copy)
    assert_one_line_error(code, err, "bench", "--overwrite")


# ---------------------------------------------------------------------- arguments
@pytest.mark.parametrize("value", [str(2**64), str(2**63), "-1", "1.5", "9" * 5000])
def test_edit_seed_out_of_range(value, inputs, tripwires, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(capsys, *COMMANDS["edit"](inputs), "--seed", value, "--out", out)
    line = assert_one_line_error(code, err, "edit", "--seed")
    assert len(line) < 300 and not out.exists()


@pytest.mark.parametrize("command", ["edit", "depth", "segment", "bench"])
@pytest.mark.parametrize("device", ["gpu9", "cuda:x", "meta"])
def test_unknown_device_is_refused_before_model_load(command, device, inputs, tripwires, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(capsys, *COMMANDS[command](inputs), "--device", device, "--out", out)
    assert_one_line_error(code, err, command, "--device")
    assert not out.exists()


def test_cuda_without_a_gpu_is_refused_before_model_load(inputs, tripwires, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for command in ("edit", "depth", "segment", "bench"):
        code, _, err = run(capsys, *COMMANDS[command](inputs), "--device", "cuda", "--out", tmp_path / "out")
        assert "no CUDA GPU" in assert_one_line_error(code, err, command, "--device")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["preview", "edit"])
@pytest.mark.parametrize("scale", ["1e9", "1e-9"])
def test_scale_out_of_range_says_so(command, scale, inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("diffusion_handles.pipeline.DiffusionHandles.from_pretrained",
                        lambda *a, **k: pytest.fail("model loaded"))
    out = tmp_path / "out"
    code, _, err = run(capsys, *COMMANDS[command](inputs), "--scale", scale, "--out", out)
    line = assert_one_line_error(code, err, command, "--scale")
    assert "range" in line and "translation" not in line
    assert not out.exists()


def test_scale_inside_the_range_still_works(inputs, tmp_path, capsys):
    code, _, err = run(capsys, *_preview(inputs, tmp_path / "out", "--scale", "0.5"))
    assert code == 0, err


def _mask_suggestions_point_at_edit(line: str) -> None:
    rest = line
    while "--mask" in rest:
        i = rest.index("--mask")
        assert rest[:i].endswith("handles edit "), line  # never this command's own (absent) --mask
        rest = rest[i + 1:]


def test_segment_does_not_suggest_a_mask_flag_it_lacks(inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    for argv, arg in (
        (["--object", "a red box", "--detector-model", "nobody/no-such-detector"], "--detector-model"),
        (["--click", "30,20", "--sam-model", "nobody/no-such-sam"], "--sam-model"),
        ([], "--object/--click"),
    ):
        code, _, err = run(capsys, "segment", inputs["image"], *argv, "--out", out)
        line = assert_one_line_error(code, err, "segment", arg)
        _mask_suggestions_point_at_edit(line)
    assert not out.exists()
    from diffusion_handles.cli.segment import for_segment
    from diffusion_handles.perception.segment import Candidate, NoMatchError, choose_candidate

    cands = [Candidate(box=(0.0, 0.0, 4.0, 4.0), score=0.9, label="a box"),
             Candidate(box=(5.0, 5.0, 9.0, 9.0), score=0.8, label="a box")]
    _, notes = choose_candidate(cands, 0.5, "a box")  # two matches: "pass --pick N, ... --mask FILE"
    with pytest.raises(NoMatchError) as e:
        choose_candidate(cands, 0.95, "a box")
    for text in (*notes, str(e.value)):
        assert "--mask" in text  # the library's wording, which this command rewrites
        _mask_suggestions_point_at_edit(for_segment(text))


@pytest.fixture()
def bars_on(monkeypatch):
    """Progress bars enabled, as for a user's first command."""
    import diffusers.utils.logging
    import huggingface_hub.utils
    import transformers.utils.logging

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    for lib in (transformers.utils.logging, diffusers.utils.logging):
        if not lib.is_progress_bar_enabled():
            pytest.skip("progress bars are disabled in this test session")
    if huggingface_hub.utils.are_progress_bars_disabled():
        pytest.skip("HF_HUB_DISABLE_PROGRESS_BARS is set for this test session")
    return (huggingface_hub.utils.are_progress_bars_disabled, transformers.utils.logging.is_progress_bar_enabled,
            diffusers.utils.logging.is_progress_bar_enabled)


def test_quiet_silences_weight_loading_bars(inputs, tmp_path, capsys, bars_on):
    from diffusion_handles.diffusion.random_models import (
        build_backbone_components,
        save_model_folder,
        tiny_configs,
    )

    model = save_model_folder(build_backbone_components(tiny_configs(), seed=0), tmp_path / "model")
    capsys.readouterr()
    argv = ["edit", inputs["image"], "--prompt", "a red box", "--depth", inputs["depth"], "--mask", inputs["mask"],
            "--model", model, "--steps", "1", "--inversion", "ddim", "--grad-steps", "0", "--translate", "0.1", "0", "0"]
    code, _, loud = run(capsys, *argv, "--out", tmp_path / "loud")
    assert code == 0, loud
    assert "Loading" in loud and "it/s" in loud  # without --quiet the bars are there (so the check below can fail)
    code, _, quiet = run(capsys, *argv, "--quiet", "--out", tmp_path / "quiet")
    assert code == 0, quiet
    assert "it/s" not in quiet and "%|" not in quiet and "Loading" not in quiet, quiet
    hub_disabled, transformers_on, diffusers_on = bars_on
    assert not hub_disabled() and transformers_on() and diffusers_on()  # only for that command
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
