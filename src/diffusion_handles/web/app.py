"""The FastAPI application: page, JSON API (OpenAPI at ``/openapi.json``), render queue.

Build it with :func:`create_app`; ``handles serve`` runs it with uvicorn. All state (sessions,
jobs, result files in a server-owned temporary folder) belongs to the app instance. The
endpoints live in one router per concern (:mod:`diffusion_handles.web.routes`: info, sessions,
preview, jobs, animate, remove); this module builds the app around them: settings, middleware, error
answers, the page and its static files.

The app answers only requests addressed to it (the ``Host`` header names one of
:attr:`WebConfig.allowed_hosts`: no DNS rebinding) and refuses writes from other origins (an
``Origin`` header other than the page's own); it loads nothing from outside (no CDN: the
interactive ``/docs`` pages are off, the JSON document ``/openapi.json`` is served).
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from diffusion_handles import __version__
from diffusion_handles.errors import HandlesError
from diffusion_handles.web.config import WebConfig
from diffusion_handles.web.context import ApiError, PreviewQueue, WebContext
from diffusion_handles.web.jobs import JobQueue, QueueFull
from diffusion_handles.web.middleware import BodyLimit, HostGuard, parse_allowed_hosts
from diffusion_handles.web.perception import Perception
from diffusion_handles.web.render import RenderService, model_name
from diffusion_handles.web.routes import animate, info, jobs, preview, remove, sessions
from diffusion_handles.web.scenes import SceneCatalog
from diffusion_handles.web.sessions import NotFound, SessionStore
from diffusion_handles.web.tools import ToolAvailability, looks_like_folder
from diffusion_handles.web.uploads import UploadError

__all__ = ["STATIC", "WebConfig", "create_app"]

STATIC = Path(__file__).parent / "static"


def create_app(config: WebConfig | None = None) -> FastAPI:
    """The web app with its own session store, render queue and result folder."""
    cfg = config or WebConfig()
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(cfg.dtype)
    if dtype is None:
        raise HandlesError(f"--dtype: expected float32, float16 or bfloat16, got {cfg.dtype!r}")
    allowed_hosts = parse_allowed_hosts(cfg.allowed_hosts)
    renderer = RenderService(cfg.model, cfg.device, dtype, cache_size=cfg.inversion_cache)
    perception = Perception(dict(cfg.perception_models))
    folders = {}  # configured folders -> the name shown instead (answers never show a path)
    for src in (cfg.model, *(v for _, v in cfg.perception_models)):
        if looks_like_folder(src):
            folder = Path(src).expanduser()
            folders.update(dict.fromkeys({src, str(folder), str(folder.resolve())}, model_name(src)))

    def hide_paths(text: str) -> str:
        for path in sorted(folders, key=len, reverse=True):
            text = text.replace(path, folders[path])
        return renderer.hide_paths(text)

    ctx = WebContext(
        cfg=cfg, sessions=SessionStore(), catalog=SceneCatalog(size=cfg.scene_size), renderer=renderer,
        perception=perception, tools=ToolAvailability(perception),
        jobs=JobQueue(cfg.results_dir, max_waiting=cfg.max_waiting_jobs, scrub=hide_paths),
        previews=PreviewQueue(cfg.max_waiting_previews), hide_paths=hide_paths,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        ctx.previews.close()
        ctx.decoder.close()
        ctx.jobs.close()

    app = FastAPI(
        title="Diffusion Handles",
        version=__version__,
        description="3D object edits on images: instant geometric preview and full diffusion renders. "
        "Camera axes: x right, y down, z forward; scene units are the depth map's units.",
        lifespan=lifespan,
        docs_url=None,  # the Swagger / ReDoc pages load their scripts from a CDN: the app works offline
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.state.jobs = ctx.jobs
    app.state.sessions = ctx.sessions
    app.state.renderer = renderer
    app.state.previews = ctx.previews
    # the biggest legitimate request: image + depth + mask uploads plus form fields
    app.add_middleware(BodyLimit, max_bytes=3 * cfg.limits.max_bytes + 64 * 1024)
    app.add_middleware(HostGuard, allowed=allowed_hosts)  # added last: runs first
    add_error_handlers(app, hide_paths)

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for module in (info, sessions, preview, jobs, animate, remove):
        app.include_router(module.router(ctx))
    return app


def add_error_handlers(app: FastAPI, hide_paths) -> None:
    """Every error is answered as JSON with a one-line ``detail`` (never a traceback)."""

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        detail = exc.detail
        if exc.status_code == 400 and detail == "There was an error parsing the body":  # FastAPI's own words
            detail = "body: expected a JSON object (UTF-8 text), got bytes that do not parse as JSON"
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

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


def jsonable_errors(exc: RequestValidationError) -> list[dict]:
    out = []
    for e in exc.errors():
        out.append({"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))})
    return out
