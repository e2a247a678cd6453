"""What the routers of one app instance share: its settings, stores, queues and helpers."""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from diffusion_handles.web.config import WebConfig
from diffusion_handles.web.jobs import DONE, Job, JobQueue
from diffusion_handles.web.perception import Perception
from diffusion_handles.web.render import RenderService
from diffusion_handles.web.scenes import SceneCatalog
from diffusion_handles.web.schemas import Error, JobStatus, MaskInfo, SessionInfo
from diffusion_handles.web.sessions import Session, SessionStore
from diffusion_handles.web.tools import ToolAvailability

ERRORS = {code: {"model": Error} for code in (404, 413, 415, 422, 429)}


class ApiError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail



class PreviewQueue:
    """Previews run one at a time on one thread, in arrival order; at most ``max_waiting`` may be
    queued or running (more get 429), so a burst cannot starve the machine or hold server threads."""

    def __init__(self, max_waiting: int):
        self.max_waiting = max_waiting
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="handles-preview")
        self._lock = threading.Lock()
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Previews queued or running."""
        with self._lock:
            return self._waiting

    def submit(self, fn, *args) -> Future:
        with self._lock:
            if self._waiting >= self.max_waiting:
                raise ApiError(429, f"preview: {self._waiting} previews are already waiting; slow down")
            self._waiting += 1

        def done(_):
            with self._lock:
                self._waiting -= 1

        fut = self.pool.submit(fn, *args)
        fut.add_done_callback(done)
        return fut

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# uploads decoded at the same time: each holds a decoded image of up to 4096x4096 pixels (50 MB as
# 8-bit RGB, several times that for 16-bit or float decodes) and keeps a CPU core busy
DECODE_WORKERS = 2


class DecodePool:
    """Uploads are decoded (and scaled to the working size) on at most ``workers`` threads, never
    on the event loop: while they decode, the server keeps answering (``/api/info``, progress,
    previews). More uploads wait their turn, holding only their bytes."""

    def __init__(self, workers: int = DECODE_WORKERS):
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="handles-decode")

    async def run(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` on a decode thread; its exception, if any, raised here."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def png(arr_or_tensor) -> bytes:
    """PNG bytes of ``(H, W, 3)`` uint8, ``(H, W)`` bool/uint8, or a ``(1, C, H, W)`` [0, 1] tensor."""
    if isinstance(arr_or_tensor, torch.Tensor):
        t = arr_or_tensor.detach().float().cpu()[0].clamp(0, 1)
        arr = (t.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        if arr.shape[2] == 1:
            arr = arr[..., 0]
    else:
        arr = arr_or_tensor
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def b64(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode()



@dataclass
class WebContext:
    """One app instance's state, handed to every router."""

    cfg: WebConfig
    sessions: SessionStore
    catalog: SceneCatalog
    renderer: RenderService
    perception: Perception
    tools: ToolAvailability
    jobs: JobQueue
    previews: PreviewQueue
    hide_paths: Callable[[str], str]
    decoder: DecodePool = field(default_factory=DecodePool)

    def session_info(self, s: Session) -> SessionInfo:
        base = f"/api/sessions/{s.id}"
        return SessionInfo(
            id=s.id, width=s.size_hw[1], height=s.size_hw[0], prompt=s.prompt, fov_deg=s.fov_deg, source=s.source,
            masks=[MaskInfo(index=i, name=n, pixels=int(m.sum())) for i, (n, m) in enumerate(s.masks)],
            selected=s.selected, image_url=f"{base}/image.png", depth_url=f"{base}/depth.png",
            points_url=f"{base}/points", mask_url=f"{base}/mask.png?v={s.selected}" if s.selected is not None else None,
        )

    def job_status(self, job: Job) -> JobStatus:
        snap = job.snapshot()
        if job.state == DONE:
            frac = 1.0
        elif job.total > 0:
            frac = min(0.99, job.done / job.total)
        else:
            frac = 0.0
        return JobStatus(
            id=job.id, state=job.state, stage=job.stage, step=job.step, steps=job.steps, done=job.done,
            total=job.total, elapsed_s=snap["elapsed_s"], eta_s=snap["eta_s"],
            cancel_requested=snap["cancel_requested"], fraction=frac,
            queue_position=self.jobs.position(job), message=job.message, error=job.error,
            results={k: f"/api/jobs/{job.id}/results/{k}" for k in snap["results"]}, info=snap["info"],
            created=job.created, started=job.started, finished=job.finished,
        )
