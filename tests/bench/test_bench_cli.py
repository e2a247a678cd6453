"""The fast CI split of ``handles bench``: 2 scenes x 2 methods on a tiny random model, 32x32,
3 DDIM steps, built once per module. Checks outputs, resuming, and that failures are recorded
(the run goes on) and give exit status 1. (Hostile arguments: tests/hostile/test_cli_outputs.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from diffusion_handles.cli import main


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from diffusion_handles.diffusion.random_models import (
        build_backbone_components,
        save_model_folder,
        tiny_configs,
    )

    return save_model_folder(build_backbone_components(tiny_configs(), seed=0), tmp_path_factory.mktemp("tiny-model"))


ARGS = ["--scenes", "2", "--size", "32", "--steps", "3", "--inversion", "ddim", "--spp", "4", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "run"
    assert main(["bench", "--model", str(tiny_model), *ARGS, "--methods", "ours", "warp_only", "--out", str(out)]) == 0
    return out


def test_fast_split_writes_results_report_and_table(run_dir, capsys):
    res = json.loads((run_dir / "results.json").read_text())
    assert [e["case_id"] for e in res["edits"]] == ["s1000500", "s1000501"]
    for e in res["edits"]:
        assert e["error"] is None
        for name in ("ours", "warp_only"):
            m = e["methods"][name]
            assert m["error"] is None, m["error"]
            assert 0.0 <= m["iou"] <= 1.0 and m["cycle_l1"] >= 0.0 and m["lpips"] is None
    agg = res["aggregate"]
    assert agg["ours"]["ok"] == 2 and agg["warp_only"]["ok"] == 2
    assert agg["ground_truth"]["psnr_obj"]["mean"] == 100.0
    ci = agg["warp_only"]["iou"]
    assert ci["lo"] <= ci["mean"] <= ci["hi"]
    # warp only on true depth places the object well; the reference row "input" does not move it
    assert agg["warp_only"]["iou"]["mean"] > agg["input"]["iou"]["mean"]
    assert res["lpips"]["available"] is False
    html = (run_dir / "report.html").read_text()
    links = re.findall(r'src="([^"]+)"', html)
    assert links and all(not Path(p).is_absolute() and (run_dir / p).is_file() for p in links)
    for needed in ("input.png", "preview.png", "ours.png", "warp_only.png", "gt.png", "ours_cycle.png"):
        assert any(p.endswith(needed) for p in links)


def test_every_result_row_carries_its_cost_and_results_aggregate_it(run_dir):
    """UNet forward-equivalents (a backward counts 2) and seconds per edit and per stage, in each
    row and aggregated per method in results.json. (Before the tests below rerun ``run_dir``.)"""
    res = json.loads((run_dir / "results.json").read_text())
    n, until, k = 3, 2, 3  # 3 steps, guided until round(38/50 * 3) = 2, 3 gradient steps (forward + backward)
    for e in res["edits"]:
        ours, warp = e["methods"]["ours"], e["methods"]["warp_only"]
        fwd = ours["unet_evals"]["forward"] + 2 * ours["unet_evals"]["backward"]
        assert ours["fwd_eq"] == fwd == 2 * n + k * until * 3
        assert ours["fwd_eq_inversion"] == n + 2 * n  # DDIM inversion, then the CFG reconstruction
        assert set(ours["seconds_by_stage"]) >= {"prepare", "geometry", "targets", "sample", "finish"}
        assert ours["seconds"] == pytest.approx(sum(ours["seconds_by_stage"].values()))
        assert ours["seconds_inversion"] > 0 and ours["seconds_total"] >= ours["seconds"]
        assert warp["fwd_eq"] == warp["fwd_eq_inversion"] == 0 and warp["seconds"] >= 0
    agg = res["aggregate"]
    assert agg["ours"]["fwd_eq"]["mean"] == 2 * n + k * until * 3 and agg["ours"]["fwd_eq"]["n"] == 2
    assert agg["ours"]["seconds"]["n"] == 2 and agg["ours"]["seconds"]["mean"] > 0
    assert agg["ours"]["fwd_eq_inversion"]["mean"] == 3 * n
    assert agg["warp_only"]["fwd_eq"]["mean"] == 0
    assert agg["ground_truth"]["fwd_eq"]["n"] == 0
    from diffusion_handles.bench.report import format_table

    header, *_, warp_row = [r for r in format_table(res).splitlines() if r.startswith("| ")]
    assert "UNet fwd-eq / edit | s / edit" in header
    row = next(r for r in format_table(res).splitlines() if r.startswith("| ours |"))
    assert f"| {2 * n + k * until * 3} |" in row


def test_ours_draft_inverts_on_its_own_and_is_charged_its_own_inversion(run_dir, tiny_model, tmp_path):
    """``ours_draft`` (issue 35) has its own inversion (negative-prompt, a fifth of the steps),
    computed once per edit beside the run's, and its rows carry that inversion's cost."""
    out = tmp_path / "draft"
    out.mkdir()
    (out / "cases").symlink_to(run_dir / "cases")  # the same rendered cases
    args = [a if a != "3" else "10" for a in ARGS]  # 10 steps: the draft runs 2
    assert args[args.index("--steps") + 1] == "10"
    assert main(["bench", "--model", str(tiny_model), *args, "--no-cycle", "--methods", "ours", "ours_draft",
                 "reconstruction", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    for e in res["edits"]:
        ours, draft, rec = (e["methods"][k] for k in ("ours", "ours_draft", "reconstruction"))
        assert ours["error"] is None and draft["error"] is None, (ours["error"], draft["error"])
        assert draft["inversion"]["method"] == "negative-prompt" and draft["inversion"]["num_steps"] == 2
        assert "inversion" not in ours  # the run's inversion (ddim, 10 steps)
        assert ours["fwd_eq_inversion"] == rec["fwd_eq_inversion"] == 10 + 2 * 10
        assert draft["fwd_eq_inversion"] == 2 + 2  # DDIM inversion, then the one-pass reconstruction
        assert ours["fwd_eq"] == 2 * 10 + 3 * 8 * 3 and draft["fwd_eq"] == 2 + 2 * 3  # guided 8 of 10, 2 of 2
        assert draft["config_key"] != ours["config_key"] and draft["seconds_inversion"] > 0
    agg = res["aggregate"]
    assert agg["ours_draft"]["fwd_eq_inversion"]["mean"] == 4 and agg["ours"]["fwd_eq_inversion"]["mean"] == 30
    assert "ours_draft" in res["methods"]


def test_rerun_resumes_and_adds_missing_methods(run_dir, tiny_model, capsys):
    edit_file = run_dir / "edits" / "s1000500.json"
    before = edit_file.stat().st_mtime_ns
    assert main(["bench", "--model", str(tiny_model), *ARGS, "--methods", "ours", "warp_only", "--out", str(run_dir)]) == 0
    assert edit_file.stat().st_mtime_ns == before  # nothing redone
    table = capsys.readouterr().out
    assert "| ours |" in table and "| warp_only |" in table and "n/a" in table
    # a method the build cannot run (or that fails) is recorded with its error; the run goes on
    assert main(["bench", "--model", str(tiny_model), *ARGS, "--methods", "ours", "warp_only", "stop38",
                 "--out", str(run_dir)]) == 0
    rec = json.loads(edit_file.read_text())
    assert rec["methods"]["stop38"]["same_as"] == "ours"  # same resolved configuration: computed once
    assert rec["methods"]["stop38"]["iou"] == rec["methods"]["ours"]["iou"]
    # --report-only aggregates what is there and runs nothing (depth_only was never run)
    assert main(["bench", "--model", str(tiny_model), *ARGS, "--methods", "ours", "depth_only",
                 "--report-only", "--out", str(run_dir)]) == 0
    assert edit_file.stat().st_mtime_ns != before
    res = json.loads((run_dir / "results.json").read_text())
    assert res["aggregate"]["ours"]["ok"] == 2 and res["aggregate"]["depth_only"]["ok"] == 0
    assert "depth_only" not in json.loads(edit_file.read_text())["methods"]


def test_failures_are_recorded_and_exit_1(tmp_path, run_dir, capsys):
    out = tmp_path / "bad"
    out.mkdir()
    # reuse the rendered cases; a model that does not exist fails every diffusion method
    (out / "cases").symlink_to(run_dir / "cases")
    capsys.readouterr()
    assert main(["bench", "--model", str(tmp_path / "no-such-model"), *ARGS, "--methods", "ours", "warp_only",
                 "--out", str(out)]) == 1  # the run goes on, but it did not succeed
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("handles bench: error: 2 of 2 edits failed (ours: 2)"), err
    rec = json.loads((out / "edits" / "s1000500.json").read_text())
    assert "no-such-model" in rec["methods"]["ours"]["error"]
    assert rec["methods"]["warp_only"]["error"] is None
    res = json.loads((out / "results.json").read_text())
    assert res["aggregate"]["ours"]["failed"] == 2 and res["aggregate"]["warp_only"]["ok"] == 2


def test_bad_arguments(tmp_path, capsys):
    assert main(["bench", "--methods", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "--methods" in capsys.readouterr().err
    assert main(["bench", "--shard", "3/2", "--scenes", "1", "--out", str(tmp_path / "y")]) == 2
    assert "--shard" in capsys.readouterr().err
    assert main(["bench", "--size", "4096", "--out", str(tmp_path / "z")]) == 2
    assert "--size: expected an integer in [16, 1024]" in capsys.readouterr().err
    for bad in ("0", "-0.01", "nan", "2"):
        assert main(["bench", "--null-lr", bad, "--out", str(tmp_path / "w")]) == 2
        assert "--null-lr: expected a learning rate in (0, 1]" in capsys.readouterr().err
    assert main(["bench", "--encode-refine-steps", "-1", "--out", str(tmp_path / "v")]) == 2
    assert "--encode-refine-steps: expected an integer in [0, 1000]" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_null_lr_reaches_the_inversion_and_keys_the_run(run_dir, tiny_model, capsys):
    from diffusion_handles.bench.runner import BenchConfig, CaseRunner

    assert CaseRunner(BenchConfig(null_lr=0.05))._inversion_config().null_lr == 0.05
    assert json.loads((run_dir / "settings.json").read_text())["null_lr"] == 1e-2
    capsys.readouterr()
    assert main(["bench", "--model", str(tiny_model), *ARGS, "--null-lr", "0.05", "--methods", "ours",
                 "--out", str(run_dir)]) == 2  # a resume must not mix two learning rates
    assert "other settings (null_lr)" in capsys.readouterr().err


def test_encode_refinement_reaches_the_inversion_and_keys_the_run(run_dir, tiny_model, capsys):
    from diffusion_handles.bench.runner import BenchConfig, CaseRunner

    assert CaseRunner(BenchConfig(encode_refine_steps=3))._inversion_config().encode_refine_steps == 3
    settings = run_dir / "settings.json"
    saved = json.loads(settings.read_text())
    assert saved["encode_refine_steps"] == 0  # the model's own, resolved and recorded: this one has no handles.json
    capsys.readouterr()
    assert main(["bench", "--model", str(tiny_model), *ARGS, "--encode-refine-steps", "4", "--methods", "ours",
                 "--out", str(run_dir)]) == 2
    assert "other settings (encode_refine_steps)" in capsys.readouterr().err
    # the model's own setting changed since the run began: a resume would mix the two
    (tiny_model / "handles.json").write_text('{"encode_refine_steps": 5}')
    try:
        assert main(["bench", "--model", str(tiny_model), *ARGS, "--methods", "ours", "--out", str(run_dir)]) == 2
        assert "other settings (encode_refine_steps)" in capsys.readouterr().err
        # a run saved before the refinement existed had none
        settings.write_text(json.dumps({k: v for k, v in saved.items() if k != "encode_refine_steps"}))
        assert main(["bench", "--model", str(tiny_model), *ARGS, "--methods", "ours", "--out", str(run_dir)]) == 2
        assert "other settings (encode_refine_steps)" in capsys.readouterr().err
    finally:
        (tiny_model / "handles.json").unlink()
        settings.write_text(json.dumps(saved))


def test_resume_refuses_a_folder_that_is_not_a_bench_run(run_dir, tmp_path, capsys):
    out = tmp_path / "edit-output"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    assert main(["bench", *ARGS, "--methods", "warp_only", "--out", str(out)]) == 2
    assert "--out: expected a new or empty folder or a bench run to resume" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["summary.json"]

