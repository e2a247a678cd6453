"""Render jobs: a bounded queue served by ONE worker thread, so concurrent renders wait their
turn instead of loading several models or running several generations at once.

A job's progress (its stage and that stage's own step i of n, the steps of all stages done of
planned, the time elapsed and an estimate of the time left) is updated by the running task
through :meth:`Job.report`; readers poll :meth:`Job.snapshot` (its ``version`` grows on every
change, which the Server-Sent Events stream watches). Results are files in a per-job folder
inside the queue's server-owned temporary directory.

:meth:`JobQueue.cancel` stops a job: a waiting one at once, a running one at the end of its
current step (the task checks ``job.cancel_event`` once per step and raises
:class:`~diffusion_handles.errors.Cancelled`); either way it ends in the ``cancelled`` state
with no results.
"""

from __future__ import annotations

import logging
import queue
import shutil
import tempfile
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from diffusion_handles.errors import Cancelled, HandlesError
from diffusion_handles.web.sessions import NotFound, new_id

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "error", "cancelled"
ENDED = (DONE, FAILED, CANCELLED)


class QueueFull(Exception):
    """Too many jobs waiting (answered with HTTP 429)."""


@dataclass
class Job:
    """One render. ``task(job)`` runs in the worker; it writes files into ``job.folder`` and
    returns ``{result_name: file_name}`` plus optional ``job.info``."""

    id: str
    task: Callable[[Job], dict[str, str]]
    folder: Path
    state: str = QUEUED
    stage: str = "queued"
    step: int = 0  # of the stage
    steps: int = 0  # of the stage
    done: int = 0  # steps of all stages done
    total: int = 0  # steps of all stages planned
    eta_s: float | None = None  # estimated seconds left, as of eta_at
    eta_at: float | None = None
    message: str = ""
    error: str | None = None
    results: dict[str, str] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    version: int = 0
    cancel_event: threading.Event = field(default_factory=threading.Event)

    def _bump(self) -> None:
        self.version += 1

    def report(self, stage: str, step: int, steps: int, message: str = "", *, done: int | None = None,
               total: int | None = None, eta_s: float | None = None) -> None:
        """Progress from the running task: ``step`` of ``steps`` in ``stage``; ``done`` of
        ``total`` steps over all stages (default: the stage's own); ``eta_s`` seconds left."""
        self.stage, self.step, self.steps, self.message = stage, int(step), int(steps), message
        self.done = int(step if done is None else done)
        self.total = int(steps if total is None else total)
        self.eta_s, self.eta_at = (None, None) if eta_s is None else (float(eta_s), time.time())
        self._bump()

    def progress(self, ev) -> None:
        """:meth:`report` of a :class:`~diffusion_handles.progress.ProgressEvent`."""
        self.report(ev.stage, ev.step, ev.steps, ev.text(), done=ev.done, total=ev.total, eta_s=ev.eta_s)

    @property
    def cancel_requested(self) -> bool:
        return self.cancel_event.is_set()

    def elapsed_s(self) -> float | None:
        """Seconds since the job started (to when it ended); ``None`` while it waits."""
        if self.started is None:
            return None
        return max(0.0, (self.finished or time.time()) - self.started)

    def eta_left_s(self) -> float | None:
        """Seconds left: the last estimate less the time since it was made (0 once ended)."""
        if self.state in ENDED:
            return 0.0 if self.state == DONE else None
        if self.eta_s is None or self.eta_at is None:
            return None
        return max(0.0, self.eta_s - (time.time() - self.eta_at))

    def snapshot(self) -> dict:
        return {
            "id": self.id, "state": self.state, "stage": self.stage, "step": self.step, "steps": self.steps,
            "done": self.done, "total": self.total, "elapsed_s": self.elapsed_s(), "eta_s": self.eta_left_s(),
            "cancel_requested": self.cancel_requested, "message": self.message, "error": self.error,
            "results": dict(self.results), "info": dict(self.info), "version": self.version,
            "created": self.created, "started": self.started, "finished": self.finished,
        }


class JobQueue:
    """A FIFO of jobs run one at a time by a single daemon worker thread.

    Args:
        root: parent of the per-job result folders (a fresh temporary folder if None; it is
            removed by :meth:`close`).
        max_waiting: jobs allowed to wait; more are refused with :class:`QueueFull`.
        keep: finished jobs kept (the oldest are forgotten and their files deleted).
        scrub: applied to a failed job's error message before it is shown (e.g. to hide paths).

    A job that ends leaves no running stage behind: a finished job reads stage ``done`` with
    message ``done``, a failed one stage ``failed`` with a message naming the stage it failed in.
    """

    def __init__(self, root: Path | None = None, max_waiting: int = 8, keep: int = 64,
                 scrub: Callable[[str], str] | None = None):
        self._scrub = scrub or (lambda text: text)
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="handles-web-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_waiting = max_waiting
        self.keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._q: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._run, name="handles-render-worker", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ public
    def submit(self, task: Callable[[Job], dict[str, str]]) -> Job:
        with self._lock:
            waiting = sum(1 for j in self._jobs.values() if j.state == QUEUED)
            if waiting >= self.max_waiting:
                raise QueueFull(f"render queue: {waiting} jobs are already waiting; try again when one finishes")
            jid = new_id()
            folder = self.root / jid
            folder.mkdir()
            job = Job(jid, task, folder)
            self._jobs[jid] = job
            self._forget_old()
        self._q.put(job)
        return job

    def __len__(self) -> int:
        """Jobs known (waiting, running or kept after they ended)."""
        with self._lock:
            return len(self._jobs)

    def get(self, jid: str) -> Job:
        with self._lock:
            job = self._jobs.get(jid)
        if job is None:
            raise NotFound(f"job: no job with id {jid!r}")
        return job

    def position(self, job: Job) -> int:
        """Jobs ahead of ``job`` in the queue (0 when it runs or has finished)."""
        if job.state != QUEUED:
            return 0
        with self._lock:
            ahead = [j for j in self._jobs.values() if j.state in (QUEUED, RUNNING) and j.created < job.created]
        return len(ahead)

    def cancel(self, jid: str) -> Job:
        """Ask job ``jid`` to stop: a waiting job is cancelled at once (it never runs); a running
        one stops at the end of its current step and then reads ``cancelled``; a job that has
        ended is left as it is. Returns the job."""
        job = self.get(jid)
        with self._lock:
            if job.state in ENDED:
                return job
            job.cancel_event.set()
            if job.state == QUEUED:
                self._mark_cancelled(job, "cancelled before it started")
                job.finished = time.time()
            job._bump()
        return job

    def close(self) -> None:
        self._q.put(None)
        self._worker.join(timeout=5)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ worker
    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.state in ENDED]
        for j in finished[: max(0, len(finished) - self.keep)]:
            self._jobs.pop(j.id, None)
            shutil.rmtree(j.folder, ignore_errors=True)

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            with self._lock:
                if job.state == CANCELLED:  # cancelled while it waited
                    continue
                job.state, job.stage, job.started = RUNNING, "starting", time.time()
                job._bump()
            try:
                results = job.task(job)
                with self._lock:  # a cancel asked after the last step still ends it cancelled, without results
                    cancelled = job.cancel_requested
                    if not cancelled:
                        job.results = results
                        job.state, job.stage, job.step, job.done, job.message = DONE, "done", job.steps, job.total, "done"
                if cancelled:
                    raise Cancelled(f"cancelled during {job.stage}")
            except Cancelled:
                self._cancelled(job)
            except Exception as e:  # keep the worker alive; report one line, log one line (never a traceback)
                self._failed(job, e)
            job.finished = time.time()
            job._bump()

    @staticmethod
    def _mark_cancelled(job: Job, message: str) -> None:
        job.state, job.stage, job.message, job.error, job.results = CANCELLED, "cancelled", message, None, {}

    def _cancelled(self, job: Job) -> None:
        """Mark ``job`` cancelled where it stopped; delete anything it wrote."""
        where = job.stage + (f" {job.step}/{job.steps}" if job.steps else "")
        self._mark_cancelled(job, f"cancelled during {where}")
        for entry in job.folder.iterdir() if job.folder.is_dir() else ():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def _failed(self, job: Job, e: Exception) -> None:
        """Mark ``job`` failed with a one-line error; an unexpected error (not a HandlesError) is
        logged in one line naming the job, its stage and where in the code it was raised."""
        try:
            text = str(e).strip()
        except Exception:  # an exception whose text cannot be made
            text = ""
        first = text.splitlines()[0] if text else ""
        if isinstance(e, HandlesError):
            error = first
        else:
            error = f"render failed: {type(e).__name__}: {first}"
            tb = traceback.extract_tb(e.__traceback__)
            at = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno} in {tb[-1].name})" if tb else ""
            log.error("render job %s failed during %s: %s%s", job.id, job.stage,
                      self._scrub(error)[:500], at)
        where = job.stage + (f", step {job.step} of {job.steps}" if job.steps else "")
        job.error = self._scrub(error or "render failed")[:500]
        job.state, job.stage, job.message = FAILED, "failed", f"failed during {where}"
