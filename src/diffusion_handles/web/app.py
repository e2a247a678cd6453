"""The FastAPI application: page, JSON API (OpenAPI at ``/openapi.json``), render queue.

Build it with :func:`create_app`; ``handles serve`` runs it with uvicorn. All state (sessions,
jobs, result files in a server-owned temporary folder) belongs to the app instance.

The app answers only requests addressed to it (the ``Host`` header names one of
:attr:`WebConfig.allowed_hosts`: no DNS rebinding) and refuses writes from other origins (an
``Origin`` header other than the page's own); it loads nothing from outside (no CDN: the
interactive ``/docs`` pages are off, the JSON document ``/openapi.json`` is served).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image

from diffusion_handles import __version__
from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry import Camera, lift, object_centroid
from diffusion_handles.geometry.camera import DEFAULT_FOV_DEG
from diffusion_handles.web.jobs import DONE, FAILED, Job, JobQueue, QueueFull
from diffusion_handles.web.perception import Perception
from diffusion_handles.web.render import (
    RenderInput,
    RenderOptions,
    RenderService,
    check_background,
    geometry_errors,
    model_name,
    write_results,
)
from diffusion_handles.web.scenes import SceneCatalog
from diffusion_handles.web.schemas import (
    Error,
    Info,
    JobStatus,
    Limits,
    MaskInfo,
    PointCloud,
    PreviewRequest,
    PreviewResponse,
    RenderRequest,
    SceneInfo,
    SceneRequest,
    SelectRequest,
    SessionInfo,
)
from diffusion_handles.web.sessions import NotFound, Session, SessionStore, make_session
from diffusion_handles.web.uploads import (
    UploadError,
    UploadLimits,
    read_depth,
    read_image,
    read_mask,
)

STATIC = Path(__file__).parent / "static"
ERRORS = {code: {"model": Error} for code in (404, 413, 415, 422, 429)}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


@dataclass(frozen=True)
class WebConfig:
    """Settings of one app instance.

    Attributes:
        model: diffusion model for renders (hub id, diffusers folder or ``tinyworld``).
        device, dtype: where renders run.
        limits: upload limits (10 MB per file, sides up to 4096 px).
        work_side: images are scaled down so the longer side is at most this (keeps the
            preview interactive and renders bounded).
        max_points: the 3D view's point cloud is sub-sampled to about this many points.
        max_waiting_jobs: renders allowed to wait in the queue (more get HTTP 429).
        max_waiting_previews: preview requests allowed in the preview queue (more get HTTP 429;
            previews run one at a time on one thread, so a burst cannot starve the machine).
        default_steps: DDIM steps of a render when the request gives none (None: the model's).
        results_dir: parent folder for job results (None: a fresh temporary folder).
        scene_size: ``(height, width)`` of the built-in and TinyWorld scenes.
        inversion_cache: inverted images kept in memory so a second render of the same image
            skips the inversion (each can take hundreds of MB for SD2-depth).
        perception_models: overrides of the perception models, keys ``sam_model``,
            ``detector_model``, ``depth_model`` (hub ids or local folders).
        allowed_hosts: the ``Host`` header values the app answers (anything else gets 400):
            ``name`` (any port) or ``name:port``; IPv6 addresses in brackets (``[::1]:7860``).
            The default, the loopback names on any port, suits an app on 127.0.0.1; ``handles
            serve`` passes the exact ``host:port`` it serves. Writes (POST, PUT, PATCH, DELETE)
            carrying an ``Origin`` header are answered only when that origin is the request's
            own host (the app's page), else 403.
    """

    model: str = "tinyworld"
    device: str = "cpu"
    dtype: str = "float32"
    limits: UploadLimits = UploadLimits()
    work_side: int = 512
    max_points: int = 60000
    max_waiting_jobs: int = 8
    max_waiting_previews: int = 64
    default_steps: int | None = None
    results_dir: Path | None = None
    scene_size: tuple[int, int] = (192, 256)
    inversion_cache: int = 2
    perception_models: tuple[tuple[str, str], ...] = ()
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS


class ApiError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413, whether announced
    by Content-Length or streamed."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        msg = f"request: expected a body of at most {self.max_bytes // (1024 * 1024)} MB in total"
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _send_json(send, 413, msg + f", got {int(length) / 1e6:.1f} MB")
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(msg)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_json(send, 413, msg)


def split_host(value: str) -> tuple[str, int | None] | None:
    """``"name:port"`` -> ``("name", port)``, ``"name"`` -> ``("name", None)``, IPv6 in brackets
    (``"[::1]:80"``); lower-cased; None when malformed."""
    v = value.strip().lower()
    if v.startswith("["):
        end = v.find("]")
        if end < 0:
            return None
        name, rest = v[: end + 1], v[end + 1:]
    else:
        name, sep, port = v.partition(":")
        rest = sep + port
    if not name or any(c in name for c in "/@?#\\ "):
        return None
    if not rest:
        return name, None
    if rest[0] != ":" or not rest[1:].isdigit() or not 0 < int(rest[1:]) < 65536:
        return None
    return name, int(rest[1:])


def parse_allowed_hosts(hosts: tuple[str, ...]) -> tuple[tuple[str, int | None], ...]:
    out = []
    for h in hosts:
        parsed = split_host(h) if isinstance(h, str) else None
        if parsed is None:
            raise HandlesError(f"allowed_hosts: expected entries like 'localhost', '127.0.0.1:7860' or '[::1]:7860', got {h!r}")
        out.append(parsed)
    if not out:
        raise HandlesError("allowed_hosts: expected at least one host name, got none")
    return tuple(out)


class HostGuard:
    """ASGI middleware: answer only requests addressed to this server, and refuse cross-origin writes.

    * ``Host`` must match one of ``allowed`` (a DNS-rebinding page reaches a loopback server
      under its own name: refused with 400).
    * A write (POST, PUT, PATCH, DELETE) carrying ``Origin`` must come from the request's own
      origin (``scheme://host``), i.e. the app's page; another site's form or fetch (including
      multipart uploads) is refused with 403. Requests without ``Origin`` (curl, scripts)
      pass: browsers always send it on cross-origin writes.
    """

    def __init__(self, app, allowed: tuple[tuple[str, int | None], ...]):
        self.app = app
        self.allowed = allowed

    def host_ok(self, host: str) -> bool:
        parsed = split_host(host)
        if parsed is None:
            return False
        name, port = parsed
        return any(name == an and (ap is None or ap == port) for an, ap in self.allowed)

    def expected(self) -> str:
        return ", ".join(n if p is None else f"{n}:{p}" for n, p in self.allowed)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":  # the app has no websocket routes: none is accepted
            return await send({"type": "websocket.close", "code": 1008})
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {}
        for k, v in scope.get("headers") or []:
            headers.setdefault(k.lower(), v.decode("latin-1"))
        host = headers.get(b"host")
        if host is None or not self.host_ok(host):
            got = "no Host header" if host is None else json.dumps(host[:100])
            return await _send_json(send, 400, f"Host: expected this server's address ({self.expected()}), got {got}; "
                                               "open the page at the address the server printed")
        origin = headers.get(b"origin")
        if scope.get("method", "GET").upper() in WRITE_METHODS and origin is not None:
            parts = urlsplit(origin.strip()) if origin.strip().lower() != "null" else None
            same = (parts is not None and parts.scheme in ("http", "https") and not parts.path.strip("/")
                    and parts.netloc.lower() == host.strip().lower())
            if not same:
                return await _send_json(send, 403, f"Origin: expected a request from this server's own page "
                                                   f"(http://{host.strip()[:100]}), got a cross-origin {scope.get('method')} "
                                                   f"from {json.dumps(origin[:100])}; refused")
        return await self.app(scope, receive, send)


class _TooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit; an HTTPException, so
    FastAPI's body parsing lets it through and it is answered as 413 JSON."""

    def __init__(self, detail: str):
        super().__init__(status_code=413, detail=detail)


async def _send_json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


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


def _png(arr_or_tensor) -> bytes:
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


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _b64(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode()


def create_app(config: WebConfig | None = None) -> FastAPI:
    """The web app with its own session store, render queue and result folder."""
    cfg = config or WebConfig()
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(cfg.dtype)
    if dtype is None:
        raise HandlesError(f"--dtype: expected float32, float16 or bfloat16, got {cfg.dtype!r}")
    allowed_hosts = parse_allowed_hosts(cfg.allowed_hosts)
    sessions = SessionStore()
    catalog = SceneCatalog(size=cfg.scene_size)
    renderer = RenderService(cfg.model, cfg.device, dtype, cache_size=cfg.inversion_cache)
    perception = Perception(dict(cfg.perception_models))
    tools = ToolAvailability(perception)
    folders = {}  # configured folders -> the name shown instead (answers never show a path)
    for src in (cfg.model, *(v for _, v in cfg.perception_models)):
        if _looks_like_folder(src):
            folder = Path(src).expanduser()
            folders.update(dict.fromkeys({src, str(folder), str(folder.resolve())}, model_name(src)))

    def hide_paths(text: str) -> str:
        for path in sorted(folders, key=len, reverse=True):
            text = text.replace(path, folders[path])
        return renderer.hide_paths(text)

    jobs = JobQueue(cfg.results_dir, max_waiting=cfg.max_waiting_jobs, scrub=hide_paths)
    previews = PreviewQueue(cfg.max_waiting_previews)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        previews.close()
        jobs.close()

    app = FastAPI(
        title="Diffusion Handles",
        version=__version__,
        description="3D object edits on images: instant geometric preview and full diffusion renders. "
        "Camera axes: x right, y down, z forward; scene units are the depth map's units.",
        lifespan=lifespan,
        docs_url=None,  # the Swagger / ReDoc pages load their scripts from a CDN: the app works offline
        redoc_url=None,
    )
    app.state.jobs = jobs
    app.state.sessions = sessions
    app.state.renderer = renderer
    app.state.previews = previews
    # the biggest legitimate request: image + depth + mask uploads plus form fields
    app.add_middleware(BodyLimit, max_bytes=3 * cfg.limits.max_bytes + 64 * 1024)
    app.add_middleware(HostGuard, allowed=allowed_hosts)  # added last: runs first

    # ------------------------------------------------------------------ errors
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(HandlesError)
    async def _handles_error(request: Request, exc: HandlesError):
        return JSONResponse({"detail": hide_paths(str(exc))}, status_code=422)

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError):
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound):
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(QueueFull)
    async def _queue_full(request: Request, exc: QueueFull):
        return JSONResponse({"detail": str(exc)}, status_code=429)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return JSONResponse({"detail": hide_paths(f"internal error: {type(exc).__name__}: {first}")[:300]}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path", "form"))
            msg = e.get("msg", "invalid").removeprefix("Value error, ")
            got = e.get("input")
            got_s = json.dumps(got)[:80] if isinstance(got, int | float | str | list | dict | None) else type(got).__name__
            parts.append(f"{loc or 'body'}: {msg} (got {got_s})")
        return JSONResponse({"detail": "; ".join(parts) or "invalid request", "errors": jsonable_errors(exc)},
                            status_code=422)

    # ------------------------------------------------------------------ helpers
    def session_info(s: Session) -> SessionInfo:
        base = f"/api/sessions/{s.id}"
        return SessionInfo(
            id=s.id, width=s.size_hw[1], height=s.size_hw[0], prompt=s.prompt, fov_deg=s.fov_deg, source=s.source,
            masks=[MaskInfo(index=i, name=n, pixels=int(m.sum())) for i, (n, m) in enumerate(s.masks)],
            selected=s.selected, image_url=f"{base}/image.png", depth_url=f"{base}/depth.png",
            points_url=f"{base}/points", mask_url=f"{base}/mask.png?v={s.selected}" if s.selected is not None else None,
        )

    def job_status(job: Job) -> JobStatus:
        snap = job.snapshot()
        if job.state == DONE:
            frac = 1.0
        elif job.total > 0:
            frac = min(0.99, job.step / job.total)
        else:
            frac = 0.0
        return JobStatus(
            id=job.id, state=job.state, stage=job.stage, step=job.step, total=job.total, fraction=frac,
            queue_position=jobs.position(job), message=job.message, error=job.error,
            results={k: f"/api/jobs/{job.id}/results/{k}" for k in snap["results"]}, info=snap["info"],
            created=job.created, started=job.started, finished=job.finished,
        )

    # ------------------------------------------------------------------ page
    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # ------------------------------------------------------------------ info
    @app.get("/api/info", response_model=Info, tags=["info"])
    def info() -> Info:
        caps = tools.capabilities()
        modes = ["mask", "upload"] + [m for m in ("click", "text") if caps.get(m)]
        return Info(
            version=__version__, model=renderer.name, render_unavailable=renderer.available(),
            selection_modes=modes, depth_estimation=bool(caps.get("depth")),
            scenes=[SceneInfo(**s) for s in catalog.list()],
            limits=Limits(max_upload_mb=cfg.limits.max_bytes / (1024 * 1024), max_side=cfg.limits.max_side,
                          work_side=cfg.work_side),
            default_fov_deg=DEFAULT_FOV_DEG,
        )

    @app.get("/api/scenes", response_model=list[SceneInfo], tags=["info"])
    def scenes() -> list[SceneInfo]:
        return [SceneInfo(**s) for s in catalog.list()]

    # ------------------------------------------------------------------ sessions
    @app.post("/api/sessions/scene", response_model=SessionInfo, status_code=201, responses=ERRORS, tags=["sessions"])
    def open_scene(req: SceneRequest) -> SessionInfo:
        """Open a built-in scene (demo or TinyWorld) with its depth, object masks and caption."""
        sc = catalog.get(req.scene)
        s = make_session(sc.image, sc.depth, sc.caption, sc.fov_deg, req.scene, cfg.work_side)
        for name, m in sc.masks:
            s.add_mask(name, m)
        s.selected = 0 if s.masks else None
        return session_info(sessions.add(s))

    @app.post("/api/sessions", response_model=SessionInfo, status_code=201, responses=ERRORS, tags=["sessions"])
    async def upload_session(
        image: UploadFile = File(..., description="PNG, JPEG or WebP, at most 10 MB"),
        depth: UploadFile | None = File(None, description=".npy z-depth (scene units) or 16-bit PNG (millimetres)"),
        mask: UploadFile | None = File(None, description="object mask PNG, same aspect as the image"),
        prompt: str = Form("", max_length=500),
        fov_deg: float = Form(DEFAULT_FOV_DEG, description="horizontal field of view, degrees in (0, 180)"),
    ) -> SessionInfo:
        """Upload an image (with its depth, unless a depth estimator is installed) and optionally a mask."""
        check_fov(fov_deg)
        lim = cfg.limits
        img = read_image(await _read(image, lim, "image"), image.content_type, "image", lim)
        if depth is not None and depth.filename:
            d = read_depth(await _read(depth, lim, "depth"), depth.content_type, "depth", lim)
        else:
            d = await asyncio.to_thread(perception.estimate_depth, img)
        s = make_session(img, d, prompt.strip(), fov_deg, "upload", cfg.work_side)
        if mask is not None and mask.filename:
            m = read_mask(await _read(mask, lim, "mask"), mask.content_type, "mask", lim)
            _check_aspect(m, img, "mask")
            s.add_mask("uploaded mask", m)
        return session_info(sessions.add(s))

    @app.get("/api/sessions/{sid}", response_model=SessionInfo, responses=ERRORS, tags=["sessions"])
    def get_session(sid: str) -> SessionInfo:
        return session_info(sessions.get(sid))

    @app.post("/api/sessions/{sid}/mask", response_model=SessionInfo, responses=ERRORS, tags=["sessions"])
    async def upload_mask(sid: str, mask: UploadFile = File(..., description="object mask PNG")) -> SessionInfo:
        """Add an uploaded object mask and select it (resized to the session's image)."""
        s = sessions.get(sid)
        m = read_mask(await _read(mask, cfg.limits, "mask"), mask.content_type, "mask", cfg.limits)
        _check_aspect(m, s.image, "mask")
        with s.lock:
            s.add_mask("uploaded mask", m)
        return session_info(s)

    @app.post("/api/sessions/{sid}/select", response_model=SessionInfo, responses=ERRORS, tags=["sessions"])
    def select(sid: str, req: SelectRequest) -> SessionInfo:
        """Select the object: one of the session's masks, or a click / text query (segmenter)."""
        s = sessions.get(sid)
        if req.mode == "mask":
            if req.index is None or req.index >= len(s.masks):
                raise ApiError(422, f"index: expected a mask index in [0, {len(s.masks)}), got {req.index}")
            with s.lock:
                s.selected = req.index
            return session_info(s)
        if req.mode == "click":
            if req.x is None or req.y is None:
                raise ApiError(422, "x, y: expected the clicked pixel's coordinates, got none")
            h, w = s.size_hw
            if not (0 <= req.x < w and 0 <= req.y < h):
                raise ApiError(422, f"x, y: expected a pixel inside the {w}x{h} image, got ({req.x}, {req.y})")
            with _way_round():
                m = perception.segment_click(s.image, req.x, req.y)
            name = f"click ({req.x:.0f}, {req.y:.0f})"
        else:
            if not req.query or not req.query.strip():
                raise ApiError(422, "query: expected a text query such as 'the red cube', got nothing")
            with _way_round():
                m = perception.segment_text(s.image, req.query.strip())
            name = f"text: {req.query.strip()[:40]}"
        with s.lock:
            s.add_mask(name, m)
        return session_info(s)

    @app.get("/api/sessions/{sid}/image.png", responses=ERRORS, tags=["sessions"], response_class=Response)
    def session_image(sid: str):
        return Response(_png(sessions.get(sid).image), media_type="image/png")

    @app.get("/api/sessions/{sid}/depth.png", responses=ERRORS, tags=["sessions"], response_class=Response)
    def session_depth(sid: str):
        from diffusion_handles.viz import colorize_depth

        s = sessions.get(sid)
        return Response(_png(colorize_depth(torch.from_numpy(s.depth))), media_type="image/png")

    @app.get("/api/sessions/{sid}/mask.png", responses=ERRORS, tags=["sessions"], response_class=Response)
    def session_mask(sid: str):
        s = sessions.get(sid)
        return Response(_png(s.require_mask()), media_type="image/png")

    @app.get("/api/sessions/{sid}/points", response_model=PointCloud, responses=ERRORS, tags=["sessions"])
    def points(sid: str) -> PointCloud:
        """The depth as a coloured point cloud (three.js axes) with the selected object flagged."""
        s = sessions.get(sid)
        h, w = s.size_hw
        cam = Camera(h, w, s.fov_deg)
        depth = torch.from_numpy(s.depth)[None, None].double()
        pts = lift(depth, cam)  # (1, 3, H, W) camera axes
        stride = max(1, math.ceil(math.sqrt(h * w / cfg.max_points)))
        sub = pts[0, :, ::stride, ::stride]  # (3, h', w')
        gh, gw = sub.shape[1:]
        xyz = sub.reshape(3, -1).T.numpy() * np.array([1.0, -1.0, -1.0])  # three.js axes
        rgb = s.image[::stride, ::stride].reshape(-1, 3)
        mask = s.mask
        obj = (mask[::stride, ::stride].reshape(-1) if mask is not None else np.zeros(gh * gw, bool)).astype(np.uint8)
        pivot = pivot3 = None
        if mask is not None and mask.any():
            c = object_centroid(pts, torch.from_numpy(mask)[None, None])[0].tolist()
            pivot = (c[0], c[1], c[2])
            pivot3 = (c[0], -c[1], -c[2])
        vfov = 2 * math.degrees(math.atan(math.tan(math.radians(s.fov_deg) / 2) * h / w))
        return PointCloud(
            count=gh * gw, stride=stride, grid_width=gw, grid_height=gh, positions=_b64(xyz.astype(np.float32)),
            colors=_b64(rgb.astype(np.uint8)), object=_b64(obj), pivot=pivot3, pivot_camera=pivot,
            vertical_fov_deg=vfov, aspect=w / h, point_size=stride / cam.fx,
        )

    # ------------------------------------------------------------------ preview
    def compute_preview(s: Session, req: PreviewRequest, t0: float) -> PreviewResponse:
        """The preview and its PNG encoding (runs on the single preview thread)."""
        from diffusion_handles.preview import preview_edit
        from diffusion_handles.viz import colorize_depth

        with s.lock:
            image, depth, mask = s.tensors()
        h, w = s.size_hw
        with geometry_errors("preview", h, w):
            check_background(mask)  # the render fills the background from it: refuse now, not after minutes
            res = preview_edit(image, depth, mask, req.transform.to_edit(), s.fov_deg, with_depth=req.with_depth)
        png = _png(res.preview)
        depth_url = _data_url(_png(colorize_depth(res.edited_depth))) if req.with_depth else None
        timings = {**res.timings_ms, "server_total": (time.perf_counter() - t0) * 1e3}
        return PreviewResponse(
            image=_data_url(png), depth=depth_url, width=s.size_hw[1], height=s.size_hw[0],
            object_pixels=int((res.edited_mask > 0.5).sum()), hole_pixels=int((res.valid < 0.5).sum()),
            timings_ms=timings,
        )

    def submit_preview(s: Session, req: PreviewRequest) -> Future:
        """Queue a preview on the preview thread; refuse (429) beyond ``max_waiting_previews``.

        Waiting requests hold no server thread, so a burst cannot starve other endpoints."""
        return previews.submit(compute_preview, s, req, time.perf_counter())

    @app.post("/api/sessions/{sid}/preview", response_model=PreviewResponse, responses=ERRORS, tags=["edit"])
    async def preview(sid: str, req: PreviewRequest) -> PreviewResponse:
        """Instant geometric preview of the transform (no diffusion): the re-rendered image,
        holes (disocclusions) in magenta. Impossible edits (behind the camera, out of frame)
        answer 422 with the reason. Previews run one at a time in arrival order."""
        return await asyncio.wrap_future(submit_preview(sessions.get(sid), req))

    # ------------------------------------------------------------------ render jobs
    @app.post("/api/jobs", response_model=JobStatus, status_code=202, responses=ERRORS, tags=["render"])
    def submit(req: RenderRequest) -> JobStatus:
        """Queue a full render (inversion, cached per image, then the guided edit). One worker
        runs renders in order; watch progress with GET /api/jobs/{id} or its /events stream."""
        s = sessions.get(req.session_id)
        reason = renderer.available()
        if reason:
            raise ApiError(422, f"render: {reason}")
        edit = req.transform.to_edit()
        prompt = (req.prompt if req.prompt is not None else s.prompt).strip()
        with s.lock:
            image, depth, mask = s.tensors()
            key = s.content_key(prompt, cfg.model)
        fov = s.fov_deg
        # the preview's checks, with the depth composite the render computes: an edit that cannot
        # be rendered answers 422 now instead of being accepted (202) and failing later
        submit_preview(s, PreviewRequest(transform=req.transform, with_depth=True)).result()
        inp = RenderInput(image, depth, mask, prompt, fov, key)
        renderer.check(inp, edit)  # at the model's render size, once the model is loaded
        opts = RenderOptions(num_steps=req.num_steps or cfg.default_steps, seed=req.seed)

        def task(job: Job) -> dict[str, str]:
            result = renderer.run(inp, edit, opts, job.report)
            files = write_results(job.folder, inp, result)
            job.info = json.loads((job.folder / "info.json").read_text())
            return files

        job = jobs.submit(task)
        return job_status(job)

    @app.get("/api/jobs/{jid}", response_model=JobStatus, responses=ERRORS, tags=["render"])
    def get_job(jid: str) -> JobStatus:
        return job_status(jobs.get(jid))

    @app.get("/api/jobs/{jid}/events", responses={**ERRORS, 200: {"content": {"text/event-stream": {}}}}, tags=["render"])
    async def job_events(jid: str, request: Request):
        """Server-Sent Events: one ``data:`` JobStatus JSON per change until the job ends."""
        job = jobs.get(jid)

        async def stream():
            last, idle = -1, 0.0
            while True:
                if job.version != last:
                    last = job.version
                    yield f"data: {job_status(job).model_dump_json()}\n\n"
                    idle = 0.0
                    if job.state in (DONE, FAILED):
                        return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.1)
                idle += 0.1
                if idle >= 15:
                    idle = 0.0
                    yield ": keep-alive\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/api/jobs/{jid}/results/{name}", responses=ERRORS, tags=["render"], response_class=FileResponse)
    def job_result(jid: str, name: str):
        """A result file of a finished job (``name`` from the job's ``results``)."""
        job = jobs.get(jid)
        fname = job.results.get(name)
        if fname is None:
            raise ApiError(404, f"result: job {jid} has no result {name!r}; available: {', '.join(job.results) or 'none yet'}")
        media = "image/png" if fname.endswith(".png") else "application/octet-stream"
        return FileResponse(job.folder / fname, media_type=media, filename=f"{name}-{jid[:8]}{Path(fname).suffix}")

    return app


def jsonable_errors(exc: RequestValidationError) -> list[dict]:
    out = []
    for e in exc.errors():
        out.append({"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))})
    return out


async def _read(f: UploadFile, limits: UploadLimits, field: str) -> bytes:
    """Read an upload, refusing more than ``limits.max_bytes`` (413) without reading it all."""
    data = await f.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise UploadError(413, f"{field}: expected a file of at most {limits.max_bytes // (1024 * 1024)} MB, got more")
    return data


@contextmanager
def _way_round():
    """A selection tool's failure (e.g. its weights are missing) says how to do without it."""
    try:
        yield
    except HandlesError as e:
        msg = str(e)
        if "mask" not in msg:
            msg += "; select a scene object or upload a mask instead"
        raise HandlesError(msg) from None


def check_fov(fov_deg: float) -> None:
    """The field of view of an upload: a finite number of degrees in (0, 180)."""
    if not (math.isfinite(fov_deg) and 0 < fov_deg < 180):
        raise HandlesError(f"fov_deg: expected a finite number of degrees in (0, 180), got {fov_deg}")


def _looks_like_folder(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source or Path(source).expanduser().exists()


def weights_present(source: str) -> bool:
    """Whether the weights of ``source`` (a local folder or a hub id) are on this machine: the
    folder, or the hub cache's snapshot, holds ``config.json`` and a non-empty weight file."""
    def has_weights(folder: Path) -> bool:
        return (folder / "config.json").is_file() and any(
            f.is_file() and f.stat().st_size > 0 for pat in ("*.safetensors", "*.bin") for f in folder.glob(pat))

    if _looks_like_folder(source):
        folder = Path(source).expanduser()
        return folder.is_dir() and has_weights(folder)
    try:
        from huggingface_hub import snapshot_download

        return has_weights(Path(snapshot_download(source, local_files_only=True)))
    except Exception:
        return False


class ToolAvailability:
    """Which perception tools the page may offer: the perception layer is installed and the
    model's weights are on this machine, or (a hub id) can be downloaded now: offline mode off
    and the hub reachable. The answer is kept for a minute (one hub probe a minute at most).

    ``click`` needs SAM; ``text`` needs SAM and the text detector; ``depth`` the depth estimator.
    """

    TTL_S = 60.0

    def __init__(self, perception: Perception):
        self.perception = perception
        self._lock = threading.Lock()
        self._cached: tuple[float, tuple[str, ...], dict[str, bool]] | None = None

    def capabilities(self) -> dict[str, bool]:
        from diffusion_handles.hub import hub_reachable, is_offline

        installed = self.perception.capabilities()
        if not any(installed.values()):
            return {"click": False, "text": False, "depth": False}
        env = tuple(os.environ.get(v, "") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HF_HOME"))
        with self._lock:
            if self._cached is not None and self._cached[1] == env and time.monotonic() - self._cached[0] < self.TTL_S:
                return dict(self._cached[2])
        from diffusion_handles import perception as p

        models = self.perception.models
        sources = {"sam": models.get("sam_model", p.DEFAULT_SAM_MODEL),
                   "detector": models.get("detector_model", p.DEFAULT_DETECTOR_MODEL),
                   "depth": models.get("depth_model", p.DEFAULT_DEPTH_MODEL)}
        ok = {k: weights_present(v) for k, v in sources.items()}
        missing_hub_ids = [k for k, v in ok.items() if not v and not _looks_like_folder(sources[k])]
        if missing_hub_ids and not is_offline() and hub_reachable(timeout_s=1.0):
            ok.update(dict.fromkeys(missing_hub_ids, True))
        caps = {"click": bool(installed.get("click")) and ok["sam"],
                "text": bool(installed.get("text")) and ok["sam"] and ok["detector"],
                "depth": bool(installed.get("depth")) and ok["depth"]}
        with self._lock:
            self._cached = (time.monotonic(), env, caps)
        return dict(caps)


def _check_aspect(mask: np.ndarray, image: np.ndarray, field: str) -> None:
    mh, mw = mask.shape
    ih, iw = image.shape[:2]
    if abs(mh / mw - ih / iw) > 0.02:
        raise HandlesError(f"{field}: expected the image's aspect ratio ({iw}x{ih}), got {mw}x{mh}")
