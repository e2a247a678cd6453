"""Render jobs: a bounded queue served by ONE worker thread, so concurrent renders wait their
turn instead of loading several models or running several generations at once.

A job's progress (stage, step i of n) is updated by the running task through
:meth:`Job.report`; readers poll :meth:`Job.snapshot` (its ``version`` grows on every change,
which the Server-Sent Events stream watches). Results are files in a per-job folder inside the
queue's server-owned temporary directory.
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

from diffusion_handles.errors import HandlesError
from diffusion_handles.web.sessions import NotFound, new_id

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "error"


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
    step: int = 0
    total: int = 0
    message: str = ""
    error: str | None = None
    results: dict[str, str] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    version: int = 0

    def _bump(self) -> None:
        self.version += 1

    def report(self, stage: str, step: int, total: int, message: str = "") -> None:
        """Progress from the running task: ``step`` of ``total`` in ``stage``."""
        self.stage, self.step, self.total, self.message = stage, int(step), int(total), message
        self._bump()

    def snapshot(self) -> dict:
        return {
            "id": self.id, "state": self.state, "stage": self.stage, "step": self.step,
            "total": self.total, "message": self.message, "error": self.error,
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

    def close(self) -> None:
        self._q.put(None)
        self._worker.join(timeout=5)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ worker
    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.state in (DONE, FAILED)]
        for j in finished[: max(0, len(finished) - self.keep)]:
            self._jobs.pop(j.id, None)
            shutil.rmtree(j.folder, ignore_errors=True)

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            job.state, job.stage, job.started = RUNNING, "starting", time.time()
            job._bump()
            try:
                job.results = job.task(job)
                job.state, job.stage, job.step, job.message = DONE, "done", job.total, "done"
            except Exception as e:  # keep the worker alive; report one line, log one line (never a traceback)
                self._failed(job, e)
            job.finished = time.time()
            job._bump()

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
        where = job.stage + (f", step {job.step} of {job.total}" if job.total else "")
        job.error = self._scrub(error or "render failed")[:500]
        job.state, job.stage, job.message = FAILED, "failed", f"failed during {where}"
