"""``handles bench --ray``: the benchmarks with Ray doing the scheduling.

The TinyWorld run is split into one Ray task per scene: task ``i`` of ``K = --scenes`` is the
benchmark's own shard ``i/K`` (:class:`~diffusion_handles.bench.runner.BenchConfig` ``shard``),
which renders (or reuses) its case and runs every method, writing ``edits/<id>.json`` atomically.
A 3DEditBench run (``--suite 3deditbench``) is one task per file. The driver prints one line per
finished task and then aggregates the whole folder in a report-only pass (``results.json``,
``report.html``, the table). Resuming works as without Ray: finished edits are reused.
``--shard`` remains for processes started by hand.

Ray itself is imported only inside :func:`ray_session` and the functions that run under it.
:func:`ray_session`, :func:`check_resources` and :func:`one_line` are the Ray plumbing that
``handles batch`` (:mod:`diffusion_handles.batch.execute`) shares.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from diffusion_handles.errors import HandlesError, first_line
from diffusion_handles.hub import needs_extra


@dataclass(frozen=True)
class RaySettings:
    """Where the tasks run and what each asks for.

    ``address``: ``"local"``, ``"auto"`` or a cluster's address (:func:`ray_session`);
    ``gpus_per_job`` / ``cpus_per_job``: each task's Ray resources; ``num_cpus``: the CPUs of a
    local instance (None: all).
    """

    address: str = "auto"
    gpus_per_job: float = 0.0
    cpus_per_job: float = 1.0
    num_cpus: int | None = None


def ray_installed() -> bool:
    """Whether Ray (the ``batch`` extra) is installed, found without importing it."""
    import importlib.util

    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):  # a broken installation
        return False


def check_ray_installed() -> None:
    """Refuse at once, in one line naming the ``batch`` extra, when Ray is not installed."""
    if not ray_installed():
        raise HandlesError(needs_extra("--ray", "batch"))


def one_line(e: BaseException) -> str:
    """``Type: first line of the message`` (a HandlesError's message alone)."""
    text = first_line(e, 10_000) if str(e).strip() else ""
    if isinstance(e, HandlesError):
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# ---------------------------------------------------------------------- Ray
@contextlib.contextmanager
def ray_session(address: str = "auto", num_cpus: int | None = None) -> Iterator[str]:
    """Make Ray available for the body; yields a description of the cluster.

    Args:
        address: ``"local"``: start a local instance (``num_cpus`` CPUs, no dashboard) and shut it
            down at the end; ``"auto"``: connect to ``$RAY_ADDRESS`` when set, else as ``local``;
            anything else: the address of a running cluster (``HOST:PORT`` or ``ray://HOST:PORT``),
            disconnected from (not stopped) at the end.
    """
    try:
        import ray
    except ImportError:
        raise HandlesError(needs_extra("--ray", "batch")) from None
    if ray.is_initialized():  # e.g. a caller (or a test) that manages Ray itself
        yield "the Ray instance already running in this process"
        return
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS") or "local"
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
            where = f"a local Ray instance ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
            res = ray.cluster_resources()
            where = f"the Ray cluster at {address} ({int(res.get('CPU', 0))} CPUs, {res.get('GPU', 0):g} GPUs)"
    except HandlesError:
        raise
    except Exception as e:
        raise HandlesError(f"--ray: could not start or connect to Ray at {address!r}: {one_line(e)}") from None
    try:
        yield where
    finally:
        ray.shutdown()


def check_resources(cpus: float, gpus: float) -> None:
    """Refuse at once a per-task request no node of the cluster can ever meet (Ray would wait forever)."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        have = ", ".join(f"{r.get('CPU', 0):g} CPU/{r.get('GPU', 0):g} GPU" for r in nodes) or "no live nodes"
        raise HandlesError(f"--gpus-per-job/--cpus-per-job: expected a request one node can meet ({cpus:g} CPU, "
                           f"{gpus:g} GPU per job), got nodes with {have}")


# ---------------------------------------------------------------------- one task (runs in a Ray worker)
def run_shard(cfg_dict: dict, out: str) -> dict:
    """One shard of a benchmark (in a Ray worker); never raises: ``{"shard", "error", "seconds", "edits"}``."""
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


def run_editbench_case(cfg_dict: dict, data: str, out: str, name: str) -> dict:
    """One 3DEditBench file (in a Ray worker); never raises."""
    from diffusion_handles.bench.editbench3d.runner import EditBenchConfig, run_editbench

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


# ---------------------------------------------------------------------- the driver
def run_benchmark_on_ray(cfg, out: str | Path, *, ray_address: str = "auto", gpus_per_job: float = 0.0,
                         cpus_per_job: float = 1.0, num_cpus: int | None = None, progress: bool = True,
                         log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the benchmark ``cfg`` into ``out``, one Ray task per scene; returns the results."""
    from diffusion_handles.bench.runner import run_benchmark

    ray_cfg = RaySettings(ray_address, gpus_per_job, cpus_per_job, num_cpus)
    k = int(cfg.scenes)
    base = dataclasses.replace(cfg, report_only=False)
    if gpus_per_job > 0 and base.device == "cpu":
        base = dataclasses.replace(base, device="cuda")
    Path(out).mkdir(parents=True, exist_ok=True)
    calls = [((dataclasses.replace(base, shard=(i, k)).to_dict(), str(out)), f"shard {i}/{k}") for i in range(k)]
    _run_tasks(run_shard, calls, ray_cfg, f"{k} task(s)", progress)
    final = dataclasses.replace(cfg, shard=(0, 1), report_only=True)
    return run_benchmark(final, out, progress=False, log=log)


def run_editbench_on_ray(cfg, data, out, names: list[str], ray_cfg: RaySettings | None = None, *,
                         progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """``handles bench --suite 3deditbench --ray``: one Ray task per file, then the aggregation here."""
    from diffusion_handles.bench.editbench3d.runner import run_editbench

    ray_cfg = ray_cfg or RaySettings()
    if ray_cfg.gpus_per_job > 0 and cfg.device == "cpu":
        cfg = dataclasses.replace(cfg, device="cuda")
    Path(out).mkdir(parents=True, exist_ok=True)
    calls = [((cfg.to_dict(), str(data), str(out), n), n) for n in names]
    _run_tasks(run_editbench_case, calls, ray_cfg, f"{len(names)} case(s)", progress)
    return run_editbench(cfg, data, out, report_only=True, progress=False, log=log)


def _run_tasks(fn: Callable[..., dict], calls: list[tuple[tuple, str]], ray_cfg: RaySettings, what: str,
               progress: bool) -> None:
    """Run ``fn(*args)`` as one Ray task per ``(args, label)`` of ``calls`` and wait for them all,
    one line each on stderr (when ``progress``) as they finish; ``what`` names them in the first line."""
    err: Callable[[str], None] = (lambda s: print(s, file=sys.stderr, flush=True)) if progress else (lambda s: None)
    with ray_session(ray_cfg.address, ray_cfg.num_cpus) as where:
        import ray

        check_resources(ray_cfg.cpus_per_job, ray_cfg.gpus_per_job)
        err(f"handles bench: {what} on {where}")
        task = ray.remote(fn).options(num_cpus=ray_cfg.cpus_per_job, num_gpus=ray_cfg.gpus_per_job, max_retries=1)
        pending = {task.remote(*args): label for args, label in calls}
        _drain(pending, err)


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


__all__ = ["RaySettings", "check_ray_installed", "check_resources", "one_line", "ray_session", "run_benchmark_on_ray", "run_editbench_case",
           "run_editbench_on_ray", "run_shard"]
