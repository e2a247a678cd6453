"""``handles batch`` on a local Ray instance: tinyworld edits of one TinyWorld scene (48 px, 3 steps),
a broken line, a failing job; resumed after the failure is fixed; ``handles bench --ray``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from diffusion_handles.batch.jobs import parse_jobs
from diffusion_handles.cli import main

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    from PIL import Image

    from diffusion_handles.bench.cases import make_case

    d = tmp_path_factory.mktemp("scene")
    case = make_case(1000501, size=48, spp=4)
    Image.fromarray(case.image).save(d / "input.png")
    Image.fromarray(case.mask_src.astype(np.uint8) * 255).save(d / "mask.png")
    np.save(d / "depth.npy", case.depth)
    (d / "caption.txt").write_text(case.caption)
    return d


def _job(jid: str, caption: str, **kw) -> str:
    spec = {"id": jid, "image": "input.png", "prompt": caption, "mask": "mask.png", "depth": "depth.npy",
            "model": "tinyworld", "steps": 3, "preset": "fast", **kw}
    return json.dumps(spec)


def test_parse_jobs_validates_every_line(tmp_path):
    lines = [
        json.dumps({"id": "ok-1", "image": "a.png", "prompt": "p", "click": [3, 4], "translate": [0.1, 0, 0],
                    "transfer_source": "latent", "complete_back": True}),
        json.dumps({"id": "ok-2", "image": "/abs/a.png", "prompt": "p", "click": [[1, 2], [3, 4.5]]}),
        "",
        "# a comment",
        json.dumps({"id": "../up", "image": "a.png", "prompt": "p", "mask": "m.png"}),
        json.dumps({"id": "t", "image": "a.png", "prompt": "p", "mask": "m.png", "steps": "20"}),
        json.dumps({"id": "u", "image": "a.png", "prompt": "p", "mask": "m.png", "object": "cup"}),
        json.dumps({"id": "v", "image": "a.png", "prompt": "p", "mask": "m.png", "rotate_deg": True}),
        json.dumps({"id": "w", "image": "a.png", "prompt": "p", "mask": "m.png", "colour": "red"}),
        json.dumps({"id": "OK-1", "image": "a.png", "prompt": "p", "mask": "m.png"}),
        "[1, 2]",
        json.dumps({"id": "x", "image": "a.png", "prompt": "p", "mask": "m.png", "transfer_source": "pixel"}),
        "{not json",
    ]
    f = tmp_path / "sub" / "jobs.jsonl"
    f.parent.mkdir()
    f.write_text("\n".join(lines))
    jobs, bad = parse_jobs(f)
    assert [j.id for j in jobs] == ["ok-1", "ok-2"]
    assert jobs[0].spec["image"] == str((f.parent / "a.png").resolve())  # relative to the JSONL file
    assert jobs[0].spec["click"] == [[3.0, 4.0]] and jobs[1].spec["click"] == [[1.0, 2.0], [3.0, 4.5]]
    errors = {b.line: b.error for b in bad}
    assert sorted(errors) == [5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert "transfer_source" in errors[12] and "'pixel'" in errors[12]
    assert "id: expected a folder-safe name" in errors[5]
    assert "steps: expected an integer" in errors[6]
    assert "mask/object/click: expected exactly one" in errors[7]
    assert "rotate_deg: expected a finite number" in errors[8]
    assert "colour" in errors[9]
    assert "unique id" in errors[10] and "line 1" in errors[10]
    assert all(e.startswith(f"line {n}: ") for n, e in errors.items())
    argv = jobs[0].edit_argv("OUT/ok-1", "OUT/.cache")
    assert "--click=3.0,4.0" in argv and argv[-1] == "--out=OUT/ok-1"
    assert "--transfer-source=latent" in argv and "--complete-back" in argv


def test_batch_failures_resume_and_report(ray_local, scene, capsys):
    caption = (scene / "caption.txt").read_text()
    jobs = scene / "jobs.jsonl"
    jobs.write_text("\n".join([
        _job("left", caption, translate=[-0.15, 0, 0]),
        _job("turn", caption, rotate_axis=[0, 1, 0], rotate_deg=25),  # same inversion as "left"
        '{"id": "broken", "image": ',
        _job("late", caption, mask="late_mask.png", translate=[0.1, 0, 0]),  # its mask is not there yet
    ]) + "\n")
    out = scene / "out"
    code = main(["batch", str(jobs), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    state = json.loads((out / "batch.json").read_text())
    by_id = {r["id"]: r for r in state["jobs"]}
    assert [r["id"] for r in state["jobs"]] == ["left", "turn", "line-3", "late"]
    assert by_id["left"]["status"] == "ok" and by_id["turn"]["status"] == "ok"
    assert by_id["turn"]["cache_hit"] is True and by_id["left"]["cache_hit"] is False  # one shared inversion
    assert len(list((out / ".cache").iterdir())) == 1
    assert by_id["line-3"]["status"] == "failed" and by_id["line-3"]["error"].startswith("line 3: ")
    assert by_id["late"]["status"] == "failed" and "--mask" in by_id["late"]["error"]
    assert "\n" not in by_id["late"]["error"]
    for jid in ("left", "turn"):  # exactly what `handles edit` writes
        names = {p.name for p in (out / jid).iterdir()}
        assert {"edited.png", "reconstruction.png", "comparison.png", "summary.json"} <= names
        assert json.loads((out / jid / "summary.json").read_text())["command"] == "edit"
    assert not (out / "late").exists()
    assert re.search(r"\[\d/3\] left ok", captured.err) and "late failed" in captured.err
    assert "2 ok, 0 skipped (finished earlier), 2 failed" in captured.out
    html = (out / "report.html").read_text()
    assert html.count("<tr class=") == 4
    links = re.findall(r'src="([^"]+)"', html)
    assert len(links) == 4 and all(not Path(p).is_absolute() and (out / p).resolve().is_file() for p in links)

    # fix the failing job and rerun: finished jobs are skipped (their files untouched), the failed one runs
    mtimes = {jid: (out / jid / "summary.json").stat().st_mtime_ns for jid in ("left", "turn")}
    (scene / "late_mask.png").write_bytes((scene / "mask.png").read_bytes())
    code = main(["batch", str(jobs), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1  # the broken line is still broken
    by_id = {r["id"]: r for r in json.loads((out / "batch.json").read_text())["jobs"]}
    assert by_id["left"]["status"] == "skipped" and by_id["turn"]["status"] == "skipped"
    assert by_id["late"]["status"] == "ok" and (out / "late" / "edited.png").is_file()
    assert {jid: (out / jid / "summary.json").stat().st_mtime_ns for jid in mtimes} == mtimes
    assert "[1/1] late ok" in captured.err
    assert "1 ok, 2 skipped (finished earlier), 1 failed" in captured.out


def test_bench_runs_through_ray(ray_local, tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["bench", "--ray", "local", "--scenes", "2", "--size", "32", "--spp", "4", "--methods", "warp_only",
                 "--no-cycle", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert [e["case_id"] for e in res["edits"]] == ["s1000500", "s1000501"]
    assert res["aggregate"]["warp_only"]["ok"] == 2
    assert "[2/2] shard" in err


def test_a_worker_reuses_the_model_from_job_to_job(scene, tmp_path, monkeypatch):
    """Ray runs many jobs in one worker process: the second job with the same model must not load
    it again (seconds to tens of seconds for SD2-depth), and a load outside a job still loads."""
    from diffusion_handles.batch.execute import run_job
    from diffusion_handles.cli.batch import run_edit
    from diffusion_handles.diffusion.backbone import Backbone
    from diffusion_handles.pipeline import DiffusionHandles

    loads = []
    real = Backbone.from_pretrained

    def counted(*args, **kwargs):
        loads.append(args[0] if args else kwargs.get("model"))
        return real(*args, **kwargs)

    monkeypatch.setattr(Backbone, "from_pretrained", staticmethod(counted))
    base = {"image": str(scene / "input.png"), "prompt": (scene / "caption.txt").read_text(), "mask": str(scene / "mask.png"),
            "depth": str(scene / "depth.npy"), "model": "tinyworld", "steps": 2, "preset": "fast"}
    recs = [run_job({**base, "id": f"j{i}", "translate": [0.1 * i, 0.0, 0.0]}, str(tmp_path), None, run_edit)
            for i in (1, 2)]
    assert [r["status"] for r in recs] == ["ok", "ok"], recs
    assert (tmp_path / "j2" / "edited.png").is_file()
    assert loads == ["tinyworld"]
    DiffusionHandles.from_pretrained("tinyworld")  # outside a job: a separate model
    assert len(loads) == 2
