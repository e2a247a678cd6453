"""Running jobs as Ray tasks: the driver loop of ``handles batch`` (and of ``handles bench --ray``).

Scheduling is Ray's: every job is a ``ray.remote`` task with ``num_cpus`` / ``num_gpus``
resources, placed wherever the cluster has them. The driver only decides *when* to submit:

* jobs that share an inversion (:meth:`Job.inversion_group`) are submitted one first, the rest
  when it has finished, so the shared inversion is computed once and the others load it from
  the cache ``OUT/.cache`` (entries are written by renaming a complete staged folder, so a
  concurrent reader never sees half an entry, and two writers of one key cannot corrupt it);
* a job whose ``OUT/<id>/summary.json`` exists is finished (``handles edit`` writes its folder
  all at once) and is skipped: rerunning the same command resumes an interrupted batch.

Each job runs through the ``run_edit`` callable the caller passes (``handles batch`` passes
:func:`diffusion_handles.cli.batch.run_edit`: the ``handles edit`` parser and code path), so this
layer never imports the CLI. A job that fails (an exception in the edit, a crashed worker) is
recorded with a one-line error and the others go on. ``ray_session`` starts a local Ray instance (and shuts it down afterwards)
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from diffusion_handles.batch.jobs import BadLine, Job, parse_jobs
from diffusion_handles.bench.ray import check_resources, one_line, ray_session
from diffusion_handles.errors import HandlesError
from diffusion_handles.outputs import write_json

CACHE_NAME = ".cache"
STATE_NAME = "batch.json"

# Runs ``handles edit`` with these arguments (``["edit", IMAGE, ...]``) in this process and returns
# its exit code; a module-level function, so that Ray pickles it by reference.
EditRunner = Callable[[list[str]], int]


# ---------------------------------------------------------------------- one job (runs in a Ray worker)
def run_job(spec: dict, out_dir: str, cache_dir: str | None, run_edit: EditRunner) -> dict:
    """Run one job through ``run_edit`` (``handles edit``: same parser, same code path); never raises.

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
        from diffusion_handles.pipeline import keep_loaded_models

        # the worker runs job after job: the next one with the same model reuses this one's
        with keep_loaded_models(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = int(run_edit(job.edit_argv(target, cache_dir)) or 0)
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


@dataclass
class _Progress:
    """The state saved as ``batch.json``, with every job's record so far."""

    out: Path
    state: dict
    order: dict[str, int]  # job id -> its line in the job file
    records: dict[str, dict] = field(default_factory=dict)
    t_start: float = field(default_factory=time.perf_counter)

    def save(self) -> None:
        self.state["jobs"] = sorted(self.records.values(), key=lambda r: self.order.get(r["id"], 0))
        self.state["wall_s"] = time.perf_counter() - self.t_start
        write_json(self.out / STATE_NAME, self.state)


def _check_per_job(gpus_per_job: float, cpus_per_job: float) -> None:
    if not (gpus_per_job >= 0 and gpus_per_job == gpus_per_job):
        raise HandlesError(f"--gpus-per-job: expected a number >= 0, got {gpus_per_job}")
    if not cpus_per_job > 0:
        raise HandlesError(f"--cpus-per-job: expected a number > 0, got {cpus_per_job}")


def _unfinished(jobs: list[Job], progress: _Progress) -> list[Job]:
    """The jobs still to run; those an earlier run finished are recorded as ``skipped``."""
    prev = _previous(progress.out)
    todo: list[Job] = []
    for j in jobs:
        if (progress.out / j.id / "summary.json").is_file():
            old = prev.get(j.id, {})
            progress.records[j.id] = {"id": j.id, "line": j.line, "status": "skipped", "error": None,
                                      "seconds": old.get("seconds"), "cache_hit": old.get("cache_hit"),
                                      "host": old.get("host"), "note": "finished by an earlier run"}
        else:
            todo.append(j)
    return todo


def _run_on_ray(todo: list[Job], progress: _Progress, run_edit: EditRunner, cpus: float, gpus: float,
                log: Callable[[str], None]) -> None:
    """Submit the jobs as Ray tasks (a shared inversion's followers after its leader) and record
    each as it finishes."""
    import ray

    out, cache = str(progress.out), str(progress.out / CACHE_NAME)
    task = ray.remote(run_job).options(num_cpus=cpus, num_gpus=gpus, max_retries=1)
    groups: dict[str, list[Job]] = {}
    for j in todo:
        groups.setdefault(j.inversion_group(), []).append(j)
    pending: dict = {}  # ObjectRef -> (job, group)
    for g, members in groups.items():
        pending[task.remote(members[0].spec, out, cache, run_edit)] = (members[0], g)
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
        progress.records[job.id] = rec
        done_n += 1
        if groups.get(g) and groups[g][0] is job:  # the leader is done: its followers may start
            for follower in groups.pop(g)[1:]:
                pending[task.remote(follower.spec, out, cache, run_edit)] = (follower, g)
        secs = f"{rec['seconds']:.1f} s" if rec.get("seconds") is not None else "-"
        what = "ok" if rec["status"] == "ok" else f"failed: {rec['error']}"
        log(f"handles batch: [{done_n}/{len(todo)}] {job.id} {what} ({secs})")
        progress.save()


def run_batch(jobs_file: str | Path, out: str | Path, *, run_edit: EditRunner, ray_address: str = "auto",
              gpus_per_job: float = 0.0, cpus_per_job: float = 1.0, num_cpus: int | None = None,
              log: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) every job of ``jobs_file`` into ``out``; returns the state saved as ``batch.json``.

    Each job runs as ``run_edit(argv)`` (see :data:`EditRunner`) in a Ray task. ``out/<id>/``
    holds each job's ``handles edit`` outputs, ``out/.cache`` the shared inversions,
    ``out/batch.json`` every job's status (``ok``, ``skipped`` = finished by an earlier run,
    ``failed`` with its error; bad lines are ``failed`` with their line number), and
    ``out/report.html`` one row per job.
    """
    from diffusion_handles.batch.report import write_report

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    _check_per_job(gpus_per_job, cpus_per_job)
    jobs, bad = parse_jobs(jobs_file)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise HandlesError(f"--out: expected a folder, got the file {str(out)!r}")
    out.mkdir(parents=True, exist_ok=True)
    state = {"jobs_file": str(Path(jobs_file).resolve()), "out": str(out.resolve()), "ray": ray_address,
             "gpus_per_job": gpus_per_job, "cpus_per_job": cpus_per_job, "cluster": None, "wall_s": None,
             "jobs": []}
    progress = _Progress(out, state, {**{b.id: b.line for b in bad}, **{j.id: j.line for j in jobs}})
    for b in bad:
        progress.records[b.id] = _bad_record(b)
        log(f"handles batch: {b.id} failed: {b.error}")
    todo = _unfinished(jobs, progress)
    progress.save()
    if todo:
        with ray_session(ray_address, num_cpus) as where:
            state["cluster"] = where
            log(f"handles batch: {len(todo)} job(s) to run on {where} "
                f"({len(jobs) - len(todo)} finished earlier, {len(bad)} bad line(s))")
            check_resources(cpus_per_job, gpus_per_job)
            _run_on_ray(todo, progress, run_edit, cpus_per_job, gpus_per_job, log)
    progress.save()
    write_report(state, out)
    return state


def _bad_record(b: BadLine) -> dict:
    return {"id": b.id, "line": b.line, "status": "failed", "error": b.error, "seconds": None}


__all__ = ["EditRunner", "run_batch", "run_job", "ray_session", "check_resources", "one_line"]
