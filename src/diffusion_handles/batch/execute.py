"""Running jobs as Ray tasks: the driver loop of ``handles batch`` (and of ``handles bench --ray``).

Scheduling is Ray's: every job is a ``ray.remote`` task with ``num_cpus`` / ``num_gpus``
resources, placed wherever the cluster has them. The driver only decides *when* to submit:

* jobs that share an inversion (:meth:`Job.inversion_group`) are submitted one first, the rest
  when it has finished, so the shared inversion is computed once and the others load it from
  the cache ``OUT/.cache`` (entries are written by renaming a complete staged folder, so a
  concurrent reader never sees half an entry, and two writers of one key cannot corrupt it);
* a job whose ``OUT/<id>/summary.json`` exists is finished (``handles edit`` writes its folder
  all at once) and is skipped: rerunning the same command resumes an interrupted batch.

A job that fails (an exception in the edit, a crashed worker) is recorded with a one-line error
and the others go on. ``ray_session`` starts a local Ray instance (and shuts it down afterwards)
or connects to an existing cluster; a Ray already initialised in this process is reused.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from diffusion_handles.batch.jobs import BadLine, Job, parse_jobs
from diffusion_handles.bench.runner import _write_json
from diffusion_handles.errors import HandlesError, first_line

CACHE_NAME = ".cache"
STATE_NAME = "batch.json"


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
        raise HandlesError("--ray: expected the ray package, got none installed (pip install 'ray>=2.9')") from None
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


# ---------------------------------------------------------------------- one job (runs in a Ray worker)
def run_job(spec: dict, out_dir: str, cache_dir: str | None) -> dict:
    """Run one job through ``handles edit`` (same parser, same code path); never raises.

    Returns ``{"id", "status": "ok"|"failed", "error", "seconds", "host", "cache_hit"}``.
    """
    t0 = time.perf_counter()
    job = Job(spec["id"], 0, spec)
    target = Path(out_dir) / job.id
    rec = {"id": job.id, "status": "failed", "error": None, "seconds": 0.0, "host": socket.gethostname(),
           "cache_hit": None}
    err = io.StringIO()
    try:
        if "device" not in spec and os.environ.get("CUDA_VISIBLE_DEVICES") and _has_cuda():
            spec = {**spec, "device": "cuda"}  # Ray gave this task a GPU
            job = Job(job.id, 0, spec)
        from diffusion_handles.cli import build_parser
        from diffusion_handles.pipeline import keep_loaded_models

        # the worker runs job after job: the next one with the same model reuses this one's
        with keep_loaded_models(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            args = build_parser().parse_args(job.edit_argv(target, cache_dir))
            code = int(args.func(args) or 0)
        if code != 0:
            raise HandlesError(f"handles edit exited with code {code}")
        rec["status"] = "ok"
        try:
            rec["cache_hit"] = bool(json.loads((target / "summary.json").read_text())["inversion"]["cache_hit"])
        except (OSError, ValueError, KeyError):
            pass
    except SystemExit:  # the edit parser rejected an option: its one-line message is on stderr
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        rec["error"] = lines[-1].split("error: ", 1)[-1] if lines else "invalid options"
    except BaseException as e:  # recorded, not fatal (KeyboardInterrupt included: the worker is told to stop)
        rec["error"] = one_line(e)
    rec["seconds"] = time.perf_counter() - t0
    return rec


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


# ---------------------------------------------------------------------- the driver
def _previous(out: Path) -> dict:
    try:
        return {r["id"]: r for r in json.loads((out / STATE_NAME).read_text())["jobs"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def run_batch(jobs_file: str | Path, out: str | Path, *, ray_address: str = "auto", gpus_per_job: float = 0.0,
              cpus_per_job: float = 1.0, num_cpus: int | None = None,
              log: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) every job of ``jobs_file`` into ``out``; returns the state saved as ``batch.json``.

    ``out/<id>/`` holds each job's ``handles edit`` outputs, ``out/.cache`` the shared inversions,
    ``out/batch.json`` every job's status (``ok``, ``skipped`` = finished by an earlier run,
    ``failed`` with its error; bad lines are ``failed`` with their line number), and
    ``out/report.html`` one row per job.
    """
    from diffusion_handles.batch.report import write_report

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    if not (gpus_per_job >= 0 and gpus_per_job == gpus_per_job):
        raise HandlesError(f"--gpus-per-job: expected a number >= 0, got {gpus_per_job}")
    if not cpus_per_job > 0:
        raise HandlesError(f"--cpus-per-job: expected a number > 0, got {cpus_per_job}")
    jobs, bad = parse_jobs(jobs_file)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise HandlesError(f"--out: expected a folder, got the file {str(out)!r}")
    out.mkdir(parents=True, exist_ok=True)
    cache = out / CACHE_NAME
    prev = _previous(out)
    records: dict[str, dict] = {}
    t_start = time.perf_counter()
    for b in bad:
        records[b.id] = _bad_record(b)
        log(f"handles batch: {b.id} failed: {b.error}")
    todo: list[Job] = []
    for j in jobs:
        if (out / j.id / "summary.json").is_file():
            old = prev.get(j.id, {})
            records[j.id] = {"id": j.id, "line": j.line, "status": "skipped", "error": None,
                             "seconds": old.get("seconds"), "cache_hit": old.get("cache_hit"),
                             "host": old.get("host"), "note": "finished by an earlier run"}
        else:
            todo.append(j)
    state = {"jobs_file": str(Path(jobs_file).resolve()), "out": str(out.resolve()), "ray": ray_address,
             "gpus_per_job": gpus_per_job, "cpus_per_job": cpus_per_job, "cluster": None, "wall_s": None,
             "jobs": []}

    def save() -> None:
        order = {**{b.id: b.line for b in bad}, **{j.id: j.line for j in jobs}}
        state["jobs"] = sorted(records.values(), key=lambda r: order.get(r["id"], 0))
        state["wall_s"] = time.perf_counter() - t_start
        _write_json(out / STATE_NAME, state)

    save()
    if todo:
        with ray_session(ray_address, num_cpus) as where:
            import ray

            state["cluster"] = where
            log(f"handles batch: {len(todo)} job(s) to run on {where} "
                f"({len(jobs) - len(todo)} finished earlier, {len(bad)} bad line(s))")
            check_resources(cpus_per_job, gpus_per_job)
            task = ray.remote(run_job).options(num_cpus=cpus_per_job, num_gpus=gpus_per_job, max_retries=1)
            groups: dict[str, list[Job]] = {}
            for j in todo:
                groups.setdefault(j.inversion_group(), []).append(j)
            pending: dict = {}  # ObjectRef -> (job, group)
            for g, members in groups.items():
                pending[task.remote(members[0].spec, str(out), str(cache))] = (members[0], g)
            done_n = 0
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                ref = ready[0]
                job, g = pending.pop(ref)
                try:
                    rec = ray.get(ref)
                except Exception as e:  # the worker died (or Ray lost the task) after retries
                    rec = {"id": job.id, "status": "failed", "error": one_line(e), "seconds": None}
                rec["line"] = job.line
                records[job.id] = rec
                done_n += 1
                if groups.get(g) and groups[g][0] is job:  # the leader is done: its followers may start
                    for follower in groups.pop(g)[1:]:
                        pending[task.remote(follower.spec, str(out), str(cache))] = (follower, g)
                secs = f"{rec['seconds']:.1f} s" if rec.get("seconds") is not None else "-"
                what = "ok" if rec["status"] == "ok" else f"failed: {rec['error']}"
                log(f"handles batch: [{done_n}/{len(todo)}] {job.id} {what} ({secs})")
                save()
    save()
    write_report(state, out)
    return state


def _bad_record(b: BadLine) -> dict:
    return {"id": b.id, "line": b.line, "status": "failed", "error": b.error, "seconds": None}


__all__ = ["run_batch", "run_job", "ray_session", "check_resources", "one_line"]
