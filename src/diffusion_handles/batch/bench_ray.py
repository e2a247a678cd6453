"""``handles bench --ray``: the TinyWorld benchmark with Ray doing the scheduling.

The run is split into one Ray task per scene: task ``i`` of ``K = --scenes`` is the benchmark's
own shard ``i/K`` (:class:`~diffusion_handles.bench.runner.BenchConfig` ``shard``), which renders
(or reuses) its case and runs every method, writing ``edits/<id>.json`` atomically. The driver
prints one line per finished task and then aggregates the whole folder in a report-only pass
(``results.json``, ``report.html``, the table). Resuming works as without Ray: finished edits
are reused. ``--shard`` remains for processes started by hand.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

from diffusion_handles.batch.execute import check_resources, one_line, ray_session


def run_shard(cfg_dict: dict, out: str) -> dict:
    """One shard of a benchmark (in a Ray worker); never raises: ``{"shard", "error", "seconds", "edits"}``."""
    import contextlib
    import io

    from diffusion_handles.bench.runner import BenchConfig, run_benchmark

    t0 = time.perf_counter()
    cfg = BenchConfig(**{**cfg_dict, "shard": tuple(cfg_dict["shard"])})
    rec = {"shard": list(cfg.shard), "error": None, "edits": 0}
    try:
        if cfg.device == "cpu" and cfg.threads is None:
            cfg.threads = 1  # one task per CPU: intra-op threads would only contend
        from diffusion_handles.pipeline import keep_loaded_models

        with keep_loaded_models(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            res = run_benchmark(cfg, out, progress=False, log=lambda *a, **k: None)
        rec["edits"] = len(res["edits"])
        rec["edit_errors"] = [e["error"] for e in res["edits"] if e.get("error")]
    except BaseException as e:  # recorded; the final aggregation reports what is missing
        rec["error"] = one_line(e)
    rec["seconds"] = time.perf_counter() - t0
    return rec


def run_benchmark_on_ray(cfg, out: str | Path, *, ray_address: str = "auto", gpus_per_job: float = 0.0,
                         cpus_per_job: float = 1.0, num_cpus: int | None = None, progress: bool = True,
                         log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the benchmark ``cfg`` into ``out``, one Ray task per scene; returns the results."""
    from diffusion_handles.bench.runner import run_benchmark

    err: Callable[[str], None] = (lambda s: print(s, file=sys.stderr, flush=True)) if progress else (lambda s: None)
    k = int(cfg.scenes)
    base = dataclasses.replace(cfg, report_only=False)
    if gpus_per_job > 0 and base.device == "cpu":
        base = dataclasses.replace(base, device="cuda")
    Path(out).mkdir(parents=True, exist_ok=True)
    with ray_session(ray_address, num_cpus) as where:
        import ray

        check_resources(cpus_per_job, gpus_per_job)
        err(f"handles bench: {k} task(s) on {where}")
        task = ray.remote(run_shard).options(num_cpus=cpus_per_job, num_gpus=gpus_per_job, max_retries=1)
        pending = {task.remote(dataclasses.replace(base, shard=(i, k)).to_dict(), str(out)): f"shard {i}/{k}"
                   for i in range(k)}
        _drain(pending, err)
    final = dataclasses.replace(cfg, shard=(0, 1), report_only=True)
    return run_benchmark(final, out, progress=False, log=log)


def run_editbench_case(cfg_dict: dict, data: str, out: str, name: str) -> dict:
    """One 3DEditBench file (in a Ray worker); never raises."""
    from diffusion_handles.bench.editbench3d import EditBenchConfig, run_editbench

    t0 = time.perf_counter()
    rec = {"case": name, "error": None}
    try:
        cfg = EditBenchConfig(**cfg_dict)
        if cfg.device == "cpu" and cfg.threads is None:
            cfg.threads = 1
        from diffusion_handles.pipeline import keep_loaded_models

        with keep_loaded_models():  # the worker's next case reuses this one's model
            res = run_editbench(cfg, data, out, only=[name], progress=False, log=lambda *a, **k: None)
        errs = [r.get("error") for r in res["edits"] if r.get("error")]
        errs += [e["error"] for r in res["edits"] for e in r.get("methods", {}).values() if e.get("error")]
        rec["error"] = errs[0] if errs else None
    except BaseException as e:
        rec["error"] = one_line(e)
    rec["seconds"] = time.perf_counter() - t0
    return rec


def run_editbench_on_ray(cfg, data, out, names: list[str], *, ray_address: str = "auto", gpus_per_job: float = 0.0,
                         cpus_per_job: float = 1.0, num_cpus: int | None = None, progress: bool = True,
                         log: Callable[[str], None] = print) -> dict:
    """``handles bench --suite 3deditbench --ray``: one Ray task per file, then the aggregation here."""
    from diffusion_handles.bench.editbench3d import run_editbench

    err: Callable[[str], None] = (lambda s: print(s, file=sys.stderr, flush=True)) if progress else (lambda s: None)
    if gpus_per_job > 0 and cfg.device == "cpu":
        cfg = dataclasses.replace(cfg, device="cuda")
    Path(out).mkdir(parents=True, exist_ok=True)
    with ray_session(ray_address, num_cpus) as where:
        import ray

        check_resources(cpus_per_job, gpus_per_job)
        err(f"handles bench: {len(names)} case(s) on {where}")
        task = ray.remote(run_editbench_case).options(num_cpus=cpus_per_job, num_gpus=gpus_per_job, max_retries=1)
        pending = {task.remote(cfg.to_dict(), str(data), str(out), n): n for n in names}
        _drain(pending, err)
    return run_editbench(cfg, data, out, report_only=True, progress=False, log=log)


def _drain(pending: dict, err) -> None:
    """Wait for Ray task refs ``{ref: label}`` as they finish, one progress line each on ``err``.

    A task that raised (its worker died, or Ray gave up after its retry) is reported, never raised:
    the shards or cases it wrote stay on disk and the final report pass counts what is there.
    """
    import ray

    total, done = len(pending), 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        label = pending.pop(ready[0])
        try:
            rec = ray.get(ready[0])
        except Exception as e:
            rec = {"error": one_line(e), "seconds": 0.0}
        done += 1
        what = f"failed: {rec['error']}" if rec.get("error") else "ok"
        err(f"handles bench: [{done}/{total}] {label} {what} ({rec.get('seconds', 0.0):.1f} s)")
