"""Running jobs as Ray tasks: the driver loop of ``handles batch`` (and of ``handles bench --ray``).

Scheduling is Ray's: every job is a ``ray.remote`` task with ``num_cpus`` / ``num_gpus``
resources, placed wherever the cluster has them. The driver only decides *when* to submit:

* jobs that share an inversion (:meth:`Job.inversion_group`) are submitted one first, the rest
  when it has finished, so the shared inversion is computed once and the others load it from
  the cache ``OUT/.cache`` (entries are written by renaming a complete staged folder, so a
  concurrent reader never sees half an entry, and two writers of one key cannot corrupt it);
* a job whose ``OUT/<id>/summary.json`` exists is finished (``handles edit`` writes its folder
  all at once) and is skipped when its fingerprint (:func:`fingerprint`: the resolved line, the
  checksums of its input files, its model) is the one ``batch.json`` recorded when it finished:
  rerunning the same command resumes an interrupted batch, and a job whose line or inputs changed
  runs again (saying why).

Each job runs through the ``run_edit`` callable the caller passes (``handles batch`` passes
:func:`diffusion_handles.cli.batch.run_edit`: the ``handles edit`` parser and code path), so this
layer never imports the CLI. A job that fails (an exception in the edit, a crashed worker) is
recorded with a one-line error and the others go on. ``ray_session`` starts a local Ray instance (and shuts it down afterwards)
or connects to an existing cluster; a Ray already initialised in this process is reused.
SIGTERM stops the driver like Ctrl-C: Ray is shut down, ``batch.json`` saved, ``KeyboardInterrupt``
raised (``handles batch`` exits 130 with one line).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from diffusion_handles.batch.jobs import PATH_KEYS, BadLine, Job, parse_jobs
from diffusion_handles.bench.ray import check_resources, one_line, ray_session
from diffusion_handles.errors import HandlesError
from diffusion_handles.outputs import atomic_output_dir, terminate_as_interrupt, write_json

CACHE_NAME = ".cache"
STATE_NAME = "batch.json"
REPORT_NAME = "report.html"
RUNNER_FILES = (STATE_NAME, REPORT_NAME)  # no job may be named like these (case-insensitively)

# Runs ``handles edit`` with these arguments (``["edit", IMAGE, ...]``) in this process and returns
# its exit code; a module-level function, so that Ray pickles it by reference.
EditRunner = Callable[[list[str]], int]


# ---------------------------------------------------------------------- one job (runs in a Ray worker)
def run_job(spec: dict, out_dir: str, cache_dir: str | None, run_edit: EditRunner) -> dict:
    """Run one job through ``run_edit`` (``handles edit``: same parser, same code path); never raises.

    Returns ``{"id", "status": "ok"|"failed", "error", "seconds", "host", "cache_hit"}``, and for a
    finished restyle (the line's ``restyle``) ``generation_prompt``, the prompt its generation used.
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

        argv = job.edit_argv(target, cache_dir)
        if target.exists() or target.is_symlink():  # an earlier result of changed inputs: replaced whole
            argv.append("--overwrite")
        # the worker runs job after job: the next one with the same model reuses this one's
        with keep_loaded_models(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = int(run_edit(argv) or 0)
        if code != 0:
            raise HandlesError(f"handles edit exited with code {code}")
        rec["status"] = "ok"
        try:
            summary = json.loads((target / "summary.json").read_text())
            rec["cache_hit"] = bool(summary["inversion"]["cache_hit"])
            if "restyle" in spec:  # a restyle: the prompt the generation used (the object's words replaced)
                rec["generation_prompt"] = summary["inputs"]["generation_prompt"]
        except (OSError, ValueError, KeyError, TypeError):
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
@dataclass
class BatchOptions:
    """How ``handles batch`` runs: where Ray is, what each job reserves, the cache, ``--overwrite``."""

    ray_address: str = "auto"
    gpus_per_job: float = 0.0
    cpus_per_job: float = 1.0
    num_cpus: int | None = None  # CPUs of a local Ray instance (None: all)
    cache: str | Path | None = None  # the inversion cache (None: OUT/.cache)
    overwrite: bool = False  # a non-empty OUT is replaced whole (the new one is written aside)


def is_batch_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a run of ``handles batch`` (to resume): a ``batch.json`` written by it
    and, besides folders (jobs, the cache), only the runner's own files."""
    path = Path(path)
    try:
        state = json.loads((path / STATE_NAME).read_text())
        entries = list(path.iterdir())
    except (OSError, ValueError):
        return False
    if not (isinstance(state, dict) and isinstance(state.get("jobs"), list) and {"jobs_file", "ray"} <= set(state)):
        return False
    return all((e.is_dir() and not e.is_symlink()) or e.name in RUNNER_FILES or e.name.endswith(".tmp")
               for e in entries)


def _previous(out: Path) -> dict:
    try:
        return {r["id"]: r for r in json.loads((out / STATE_NAME).read_text())["jobs"] if isinstance(r, dict)}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _file_digest(path: str, memo: dict) -> str | None:
    """SHA-256 of a regular file's bytes (None: missing or not a regular file, e.g. a FIFO)."""
    if path not in memo:
        memo[path] = None
        if os.path.isfile(path):
            h = hashlib.sha256()
            with contextlib.suppress(OSError), open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
                memo[path] = h.hexdigest()
    return memo[path]


def _model_digest(model: str | None, memo: dict) -> str:
    """The model a job names: its id, or for a local folder (or file) the id with a digest of its
    files' names, sizes and modification times (the weights are not read)."""
    name = model or "default"
    key = ("model", name)
    if key not in memo:
        p = Path(name).expanduser()
        memo[key] = name
        with contextlib.suppress(OSError):
            if p.exists():
                files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
                h = hashlib.sha256()
                for f in files:
                    st = f.stat()
                    h.update(f"{f.relative_to(p) if p.is_dir() else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                memo[key] = f"{name}@{h.hexdigest()[:16]}"
    return memo[key]


def fingerprint(job: Job, memo: dict | None = None) -> dict:
    """What a finished job was made from: its resolved line (paths absolute), the SHA-256 of each
    input file (image, mask, depth, background depth) and its model (:func:`_model_digest`).
    ``memo`` shares the digests between the jobs of one run."""
    memo = {} if memo is None else memo
    spec = {k: v for k, v in job.spec.items() if k != "id"}
    files = {k: _file_digest(job.spec[k], memo) for k in PATH_KEYS if k in job.spec}
    return {"spec": spec, "files": files, "model": _model_digest(job.spec.get("model"), memo)}


def _changes(old, new: dict) -> list[str]:
    """What differs between two fingerprints, for the progress line (``translate``, ``image file``)."""
    if not isinstance(old, dict):
        return []
    o_spec, o_files = old.get("spec") or {}, old.get("files") or {}
    keys = sorted(set(o_spec) | set(new["spec"]))
    changed = [k for k in keys if o_spec.get(k) != new["spec"].get(k)]
    changed += [f"{k} file" for k in PATH_KEYS if k in new["files"] and o_files.get(k) != new["files"][k]]
    if old.get("model") != new["model"]:
        changed.append("model")
    return changed


@dataclass
class _Progress:
    """The state saved as ``batch.json``, with every job's record so far."""

    out: Path
    state: dict
    order: dict[str, int]  # job id -> its line in the job file
    records: dict[str, dict] = field(default_factory=dict)
    fingerprints: dict[str, dict] = field(default_factory=dict)  # job id -> what it is made from
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


def _reserve_names(jobs: list[Job], bad: list[BadLine]) -> tuple[list[Job], list[BadLine]]:
    """Jobs named like the runner's own files (``batch.json``, ``report.html``) become bad lines."""
    reserved = {n.lower() for n in (*RUNNER_FILES, CACHE_NAME)}
    keep = [j for j in jobs if j.id.lower() not in reserved]
    for j in jobs:
        if j.id.lower() in reserved:
            bad.append(BadLine(f"line-{j.line}", j.line, f"line {j.line}: id: expected a name other than the "
                                                         f"runner's own files ({', '.join(RUNNER_FILES)}), got {j.id!r}"))
    taken = {j.id.lower() for j in keep}
    for b in sorted(bad, key=lambda b: b.line):  # one record per line: ids unique among all of them
        if b.id.lower() in reserved or b.id.lower() in taken:
            b.id = f"line-{b.line}"
        while b.id.lower() in taken:
            b.id += "-bad"
        taken.add(b.id.lower())
    return keep, sorted(bad, key=lambda b: b.line)


def _why_again(old: dict, fp: dict) -> str | None:
    """Why a finished job must run again (None: it may be skipped): ``old`` is its record in the
    last ``batch.json``, ``fp`` its :func:`fingerprint` now."""
    if old.get("status") not in ("ok", "skipped"):
        return f"its last run {'failed' if old.get('status') == 'failed' else 'was not recorded in batch.json'}"
    if not isinstance(old.get("fingerprint"), dict):
        return "batch.json does not record what its last run was made from"
    changed = _changes(old["fingerprint"], fp)
    return f"inputs changed since the last run ({', '.join(changed)})" if changed else None


def _unfinished(jobs: list[Job], progress: _Progress, log: Callable[[str], None]) -> list[Job]:
    """The jobs still to run; those an earlier run finished from the same line, input files and
    model are recorded as ``skipped``, the others run (again) and the progress says why."""
    prev = _previous(progress.out)
    memo: dict = {}
    todo: list[Job] = []
    for j in jobs:
        fp = progress.fingerprints[j.id] = fingerprint(j, memo)
        if not (progress.out / j.id / "summary.json").is_file():
            todo.append(j)
            continue
        old = prev.get(j.id, {})
        why = _why_again(old, fp)
        if why is not None:
            log(f"handles batch: {j.id}: {why}, running again")
            todo.append(j)
            continue
        progress.records[j.id] = {"id": j.id, "line": j.line, "status": "skipped", "error": None,
                                  "seconds": old.get("seconds"), "cache_hit": old.get("cache_hit"),
                                  "host": old.get("host"), "note": "finished by an earlier run", "fingerprint": fp}
    return todo


def _run_on_ray(todo: list[Job], progress: _Progress, run_edit: EditRunner, cpus: float, gpus: float,
                log: Callable[[str], None]) -> None:
    """Submit the jobs as Ray tasks (a shared inversion's followers after its leader) and record
    each as it finishes."""
    import ray

    out, cache = str(progress.out), str(progress.state.get("cache") or progress.out / CACHE_NAME)
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
        if rec["status"] == "ok":
            rec["fingerprint"] = progress.fingerprints.get(job.id)
        progress.records[job.id] = rec
        done_n += 1
        if groups.get(g) and groups[g][0] is job:  # the leader is done: its followers may start
            for follower in groups.pop(g)[1:]:
                pending[task.remote(follower.spec, out, cache, run_edit)] = (follower, g)
        secs = f"{rec['seconds']:.1f} s" if rec.get("seconds") is not None else "-"
        what = "ok" if rec["status"] == "ok" else f"failed: {rec['error']}"
        log(f"handles batch: [{done_n}/{len(todo)}] {job.id} {what} ({secs})")
        progress.save()


def run_batch(jobs_file: str | Path, out: str | Path, *, run_edit: EditRunner, options: BatchOptions | None = None,
              log: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) every job of ``jobs_file`` into ``out``; returns the state saved as ``batch.json``.

    Each job runs as ``run_edit(argv)`` (see :data:`EditRunner`) in a Ray task. ``out/<id>/``
    holds each job's ``handles edit`` outputs, ``out/.cache`` the shared inversions (or
    ``options.cache``), ``out/batch.json`` every job's status (``ok``, ``skipped`` = finished by an
    earlier run from the same inputs, ``failed`` with its error; bad lines are ``failed`` with their
    line number) and each finished job's :func:`fingerprint`, and ``out/report.html`` one row per
    job. With ``options.overwrite`` a non-empty ``out`` is replaced whole once the batch is done.
    The caller checks ``out`` first (``handles batch``: :func:`~diffusion_handles.outputs.check_output_dir`).

    Raises:
        KeyboardInterrupt: Ctrl-C or SIGTERM; Ray is shut down and ``batch.json`` saved first
            (with ``overwrite``, nothing is written).
    """
    opts = options or BatchOptions()
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    _check_per_job(opts.gpus_per_job, opts.cpus_per_job)
    jobs, bad = _reserve_names(*parse_jobs(jobs_file))
    out = Path(os.path.abspath(Path(out).expanduser()))
    if out.exists() and not out.is_dir():
        raise HandlesError(f"--out: expected a folder, got the file {str(out)!r}")
    state = {"jobs_file": str(Path(jobs_file).resolve()), "out": str(out.resolve() if out.exists() else out),
             "ray": opts.ray_address, "gpus_per_job": opts.gpus_per_job, "cpus_per_job": opts.cpus_per_job,
             "cache": None if opts.cache is None else os.path.abspath(Path(opts.cache).expanduser()),
             "cluster": None, "wall_s": None, "jobs": []}
    if opts.overwrite and out.is_dir() and any(out.iterdir()):
        with atomic_output_dir(out) as staged:  # a fresh run, swapped in whole when done
            return _run_into(staged, state, (jobs, bad), run_edit, opts, log)
    out.mkdir(parents=True, exist_ok=True)
    return _run_into(out, state, (jobs, bad), run_edit, opts, log)


def _run_into(out: Path, state: dict, parsed: tuple[list[Job], list[BadLine]], run_edit: EditRunner,
              opts: BatchOptions, log: Callable[[str], None]) -> dict:
    """The batch, written into the folder ``out`` (the output folder or its staged replacement)."""
    from diffusion_handles.batch.report import write_report

    jobs, bad = parsed
    progress = _Progress(out, state, {**{b.id: b.line for b in bad}, **{j.id: j.line for j in jobs}})
    for b in bad:
        progress.records[b.id] = _bad_record(b)
        log(f"handles batch: {b.id} failed: {b.error}")
    todo = _unfinished(jobs, progress, log)
    progress.save()
    with terminate_as_interrupt(force=True) as sigterm:
        try:
            if todo:
                with ray_session(opts.ray_address, opts.num_cpus) as where:
                    sigterm.install()  # again: ray.init installed its own (a crash dump and exit 134)
                    state["cluster"] = where
                    log(f"handles batch: {len(todo)} job(s) to run on {where} "
                        f"({len(jobs) - len(todo)} finished earlier, {len(bad)} bad line(s))")
                    check_resources(opts.cpus_per_job, opts.gpus_per_job)
                    _run_on_ray(todo, progress, run_edit, opts.cpus_per_job, opts.gpus_per_job, log)
        except KeyboardInterrupt:
            if sigterm.received:  # ray.wait re-raises a bare KeyboardInterrupt
                raise KeyboardInterrupt("SIGTERM") from None
            raise
        finally:  # interrupted too: what has finished is saved (Ray was shut down first)
            progress.save()
            write_report(state, out)
    return state


def _bad_record(b: BadLine) -> dict:
    return {"id": b.id, "line": b.line, "status": "failed", "error": b.error, "seconds": None}


__all__ = ["BatchOptions", "EditRunner", "fingerprint", "is_batch_folder", "run_batch", "run_job", "ray_session",
           "check_resources", "one_line"]
