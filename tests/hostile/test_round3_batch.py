"""Issue 37, items 2, 3, 7 and 8b: ``handles batch``'s output folder, resume, caches, SIGTERM, modes.

* item 2: ``handles batch --out`` is checked like every other ``--out`` (a folder holding a
  previous batch run is resumed, anything else needs ``--overwrite``); job ids equal to the
  runner's own files (``batch.json``, ``report.html``) are bad lines;
* item 3: a finished job is resumed only when its resolved line, the checksums of its input files
  and its model are those the finished run recorded; otherwise it runs again and says why;
* item 7: ``--cache`` is checked up front (not a file, a broken link, an unwritable place, nor
  inside ``--out``); SIGTERM during a staged write cleans up like Ctrl-C, a killed run's staging
  folder is removed by the next run, and a batch driver given SIGTERM stops cleanly (exit 130);
* item 8b: output folders get the mode a plain ``mkdir`` gives under the umask (not 0700).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusion_handles.cli import main

from .test_cli_outputs import _unwritable

H = W = 48


# ---------------------------------------------------------------------- helpers
def run(capsys, *argv):
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def one_line(code: int, err: str, cmd: str, arg: str) -> str:
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"handles {cmd}: error:") and arg in lines[0], lines[0]
    return lines[0]


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): None if p.is_dir() or p.is_symlink() else (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def _wait_for(predicate, what: str, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (code {proc.returncode}) before {what}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    """A TinyWorld scene (48 px): input.png, mask.png, depth.npy, caption.txt."""
    from diffusion_handles.bench.cases import make_case

    d = tmp_path_factory.mktemp("scene")
    case = make_case(1000501, size=H, spp=4)
    Image.fromarray(case.image).save(d / "input.png")
    Image.fromarray(case.mask_src.astype(np.uint8) * 255).save(d / "mask.png")
    np.save(d / "depth.npy", case.depth)
    (d / "caption.txt").write_text(case.caption)
    (d / "keys.json").write_text(json.dumps([{}, {"translate": [0.1, 0, 0]}]))
    return d


def _job(scene: Path, jid: str, **kw) -> str:
    spec = {"id": jid, "image": str(scene / "input.png"), "prompt": (scene / "caption.txt").read_text(),
            "mask": str(scene / "mask.png"), "depth": str(scene / "depth.npy"), "model": "tinyworld", "steps": 2,
            "preset": "fast", **kw}
    return json.dumps(spec)


@pytest.fixture()
def no_ray(monkeypatch):
    """A check that must come before any job runs: starting Ray fails the test."""
    def trip(*a, **k):
        raise AssertionError("Ray was started (a job was about to run)")

    monkeypatch.setattr("diffusion_handles.batch.execute.ray_session", trip)


@pytest.fixture()
def tripwires(monkeypatch):
    def trip(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")

    for target in ("diffusion_handles.pipeline.DiffusionHandles.from_pretrained",
                   "diffusion_handles.perception.depth.DepthEstimator.load",
                   "diffusion_handles.perception.segment.SamSegmenter.load"):
        monkeypatch.setattr(target, trip)


@pytest.fixture()
def cwd(tmp_path, monkeypatch) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    return work


# ---------------------------------------------------------------------- item 2: batch --out
def test_batch_out_is_checked_like_every_other_out(cwd, tmp_path, no_ray, capsys):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "a", "image": \n')  # a bad line only: no job would run
    before = snapshot(tmp_path)
    code, _, err = run(capsys, "batch", jobs, "--out", ".")
    assert "current folder" in one_line(code, err, "batch", "--out")
    assert snapshot(tmp_path) == before
    # a folder holding the user's own batch.json and report.html is not a batch run: refused, untouched
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "batch.json").write_text('{"precious": true}')
    (mine / "report.html").write_text("<p>my report</p>")
    before = snapshot(tmp_path)
    code, _, err = run(capsys, "batch", jobs, "--out", mine)
    line = one_line(code, err, "batch", "--out")
    assert "a batch run" in line and "--overwrite" in line
    assert snapshot(tmp_path) == before
    # --overwrite replaces it whole (no staging left beside it)
    code, _, err = run(capsys, "batch", jobs, "--out", mine, "--overwrite")
    assert code == 1, err
    assert sorted(p.name for p in mine.iterdir()) == ["batch.json", "report.html"]
    assert "precious" not in (mine / "batch.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.jsonl", "mine", "work"]
    # and the folder it wrote is a batch run: resumed without --overwrite
    code, _, err = run(capsys, "batch", jobs, "--out", mine)
    assert code == 1 and "--out" not in err, err


def test_job_ids_of_the_runners_own_files_are_bad_lines(scene, tmp_path, no_ray, capsys):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join([_job(scene, "report.html"), _job(scene, "BATCH.JSON")]) + "\n")
    out = tmp_path / "out"
    code, _, err = run(capsys, "batch", jobs, "--out", out)
    assert code == 1, err
    assert "Traceback" not in err
    state = json.loads((out / "batch.json").read_text())
    assert [(r["id"], r["status"]) for r in state["jobs"]] == [("line-1", "failed"), ("line-2", "failed")]
    for n, r in enumerate(state["jobs"], start=1):
        assert r["error"].startswith(f"line {n}: id: expected") and "batch.json" in r["error"], r["error"]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 2 and all("id: expected" in ln for ln in lines), err
    assert (out / "report.html").is_file() and sorted(p.name for p in out.iterdir()) == ["batch.json", "report.html"]


# ---------------------------------------------------------------------- item 3: resume checks the inputs
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_resume_reruns_a_job_whose_line_or_input_changed(ray_local, scene, tmp_path, capsys):
    other = tmp_path / "other.png"
    other.write_bytes((scene / "input.png").read_bytes())
    jobs = tmp_path / "jobs.jsonl"
    lines = {"j0": _job(scene, "j0", translate=[0.1, 0, 0]), "j1": _job(scene, "j1", image=str(other)),
             "j2": _job(scene, "j2", translate=[-0.1, 0, 0])}
    jobs.write_text("\n".join(lines.values()) + "\n")
    out = tmp_path / "out"
    code, _, err = run(capsys, "batch", jobs, "--out", out)
    assert code == 0, err
    first = {r["id"]: r for r in json.loads((out / "batch.json").read_text())["jobs"]}
    assert all(r["status"] == "ok" and r.get("fingerprint") for r in first.values()), first
    kept = (out / "j2" / "summary.json").stat().st_mtime_ns

    # j0's transform changes, j1's image file changes, j2 stays as it was
    lines["j0"] = _job(scene, "j0", translate=[0.2, 0, 0])
    jobs.write_text("\n".join(lines.values()) + "\n")
    rgb = np.array(Image.open(other).convert("RGB"))
    rgb[0, 0] = 255 - rgb[0, 0]
    Image.fromarray(rgb).save(other)
    code, stdout, err = run(capsys, "batch", jobs, "--out", out)
    assert code == 0, err
    second = {r["id"]: r for r in json.loads((out / "batch.json").read_text())["jobs"]}
    assert {k: r["status"] for k, r in second.items()} == {"j0": "ok", "j1": "ok", "j2": "skipped"}
    assert "j0: inputs changed since the last run (translate), running again" in err, err
    assert "j1: inputs changed since the last run (image file), running again" in err, err
    assert "j2:" not in err
    summary = json.loads((out / "j0" / "summary.json").read_text())
    assert summary["transform"]["edit"]["translate"] == [0.2, 0.0, 0.0]
    assert (out / "j2" / "summary.json").stat().st_mtime_ns == kept
    assert "2 ok, 1 skipped" in stdout

    # nothing changed: everything is resumed (the fingerprints were carried over)
    code, stdout, err = run(capsys, "batch", jobs, "--out", out)
    assert code == 0, err
    assert "0 ok, 3 skipped" in stdout


# ---------------------------------------------------------------------- item 7: --cache up front
def _argv(command: str, scene: Path, tmp_path: Path) -> list:
    img, depth, mask = scene / "input.png", scene / "depth.npy", scene / "mask.png"
    common = ["--depth", depth, "--mask", mask, "--model", "tinyworld", "--steps", "2", "--quiet"]
    if command == "edit":
        return ["edit", img, "--prompt", "a box", *common, "--translate", "0.1", "0", "0"]
    if command == "remove":
        return ["remove", img, "--prompt", "a floor", *common]
    if command == "animate":
        return ["animate", img, "--prompt", "a box", *common, "--keyframes", scene / "keys.json", "--frames", "2"]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(_job(scene, "j0") + "\n")
    return ["batch", jobs]


BAD_CACHE = {  # name -> words the message must hold
    "file": "a file",
    "broken_link": "a broken link",
    "unwritable": "expected a writable place",
    "inside_out": "inside --out",
    "is_out": "inside --out",
}


@pytest.mark.parametrize("bad", list(BAD_CACHE))
@pytest.mark.parametrize("command", ["edit", "remove", "animate", "batch"])
def test_bad_cache_is_refused_before_any_work(command, bad, scene, tmp_path, tripwires, no_ray, capsys):
    out = tmp_path / "o"
    cache = {"file": tmp_path / "afile", "broken_link": tmp_path / "link", "inside_out": out / "cache",
             "is_out": out}.get(bad)
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    if cache is None:
        cache = _unwritable(tmp_path, "cache")
    argv = _argv(command, scene, tmp_path)
    before = snapshot(tmp_path)
    code, _, err = run(capsys, *argv, "--cache", cache, "--out", out)
    assert BAD_CACHE[bad] in one_line(code, err, command, "--cache")
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------- item 7: SIGTERM and stale staging
STAGED_WRITE = """
import sys, time
from pathlib import Path
from diffusion_handles.outputs import atomic_output_dir
with atomic_output_dir(sys.argv[1]) as tmp:
    (tmp / "half.txt").write_text("half written")
    Path(sys.argv[2]).write_text("ready")
    time.sleep(120)
"""


def _staged_write(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    parent = tmp_path / "parent"
    parent.mkdir()
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", STAGED_WRITE, str(parent / "out"), str(ready)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(ready.exists, "the staged write", proc)
    return proc, parent, ready


def test_sigterm_during_a_staged_write_cleans_up(tmp_path):
    proc, parent, _ = _staged_write(tmp_path)
    assert len(list(parent.iterdir())) == 1  # the staging folder
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    assert proc.returncode != 0
    assert list(parent.iterdir()) == []  # neither the output nor its staging folder


def test_a_killed_runs_staging_folder_is_removed_by_the_next_run(tmp_path):
    from diffusion_handles.outputs import atomic_output_dir

    proc, parent, _ = _staged_write(tmp_path)
    proc.kill()  # SIGKILL: nothing can clean up
    proc.wait(60)
    assert len(list(parent.iterdir())) == 1
    with atomic_output_dir(parent / "out") as tmp:
        (tmp / "done.txt").write_text("done")
    assert sorted(p.name for p in parent.iterdir()) == ["out"]


def test_batch_driver_stops_cleanly_on_sigterm(scene, tmp_path):
    pytest.importorskip("ray")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(_job(scene, "slow", steps=1000) + "\n")  # still running when the signal comes
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"OMP_NUM_THREADS": "1"}
    log = tmp_path / "stderr.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "diffusion_handles", "batch", str(jobs), "--out", str(out),
                                 "--ray", "local", "--num-cpus", "1"], stdout=subprocess.DEVNULL, stderr=f, env=env)
    try:  # the driver says when Ray is up and the job is submitted
        _wait_for(lambda: "job(s) to run on" in log.read_text(), "the job to start", proc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(60)
    err = log.read_text()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "SIGTERM received" not in err, err
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert last.startswith("handles batch: terminated (SIGTERM): stopped") and "batch.json" in last, last
    state = json.loads((out / "batch.json").read_text())
    assert state["jobs"] == [] and not (out / "slow").exists()


# ---------------------------------------------------------------------- item 8b: folder modes
@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o002, 0o775)])
def test_output_folders_get_the_umask_mode(umask, mode, tmp_path):
    from diffusion_handles.outputs import atomic_output_dir

    old = os.umask(umask)
    try:
        with atomic_output_dir(tmp_path / "out") as tmp:
            (tmp / "a.txt").write_text("a")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == mode
