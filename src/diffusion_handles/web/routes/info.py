"""Server information: version, model, selection tools, scenes and limits."""

from __future__ import annotations

from fastapi import APIRouter

from diffusion_handles import __version__
from diffusion_handles.geometry.camera import DEFAULT_FOV_DEG
from diffusion_handles.web.context import WebContext
from diffusion_handles.web.schemas import Info, Limits, SceneInfo


def router(ctx: WebContext) -> APIRouter:
    r = APIRouter(tags=["info"])
    cfg = ctx.cfg

    @r.get("/api/info", response_model=Info)
    def info() -> Info:
        caps = ctx.tools.capabilities()
        modes = ["mask", "upload"] + [m for m in ("click", "text") if caps.get(m)]
        return Info(
            version=__version__, model=ctx.renderer.name, render_unavailable=ctx.renderer.available(),
            selection_modes=modes, depth_estimation=bool(caps.get("depth")),
            scenes=[SceneInfo(**s) for s in ctx.catalog.list()],
            limits=Limits(max_upload_mb=cfg.limits.max_bytes / (1024 * 1024), max_side=cfg.limits.max_side,
                          work_side=cfg.work_side),
            default_fov_deg=DEFAULT_FOV_DEG,
        )

    @r.get("/api/scenes", response_model=list[SceneInfo])
    def scenes() -> list[SceneInfo]:
        return [SceneInfo(**s) for s in ctx.catalog.list()]

    return r
