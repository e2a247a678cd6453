"""Sessions: open a scene or upload an image (with depth and mask), select the object, and read
the session's image, depth, mask and lifted point cloud."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import torch
from fastapi import APIRouter, File, Form, Response, UploadFile

from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry.camera import DEFAULT_FOV_DEG
from diffusion_handles.web.context import ERRORS, WebContext, png
from diffusion_handles.web.points import point_cloud
from diffusion_handles.web.scenes import scene_session
from diffusion_handles.web.schemas import PointCloud, SceneRequest, SelectRequest, SessionInfo
from diffusion_handles.web.selection import select_object
from diffusion_handles.web.sessions import Session, make_session
from diffusion_handles.web.uploads import (
    UploadError,
    UploadLimits,
    read_depth,
    read_image,
    read_mask,
)


def router(ctx: WebContext) -> APIRouter:
    r = APIRouter(tags=["sessions"], responses=ERRORS)
    _open_routes(r, ctx)
    _selection_routes(r, ctx)
    _view_routes(r, ctx)
    return r


def _open_routes(r: APIRouter, ctx: WebContext) -> None:
    """Open a session: a built-in scene, or an uploaded image (with depth and mask); read one back."""
    cfg, sessions = ctx.cfg, ctx.sessions

    @r.post("/api/sessions/scene", response_model=SessionInfo, status_code=201)
    def open_scene(req: SceneRequest) -> SessionInfo:
        """Open a built-in scene (demo or TinyWorld) with its depth, object masks and caption."""
        s = scene_session(ctx.catalog.get(req.scene), req.scene, cfg.work_side)
        return ctx.session_info(sessions.add(s))

    @r.post("/api/sessions", response_model=SessionInfo, status_code=201)
    async def upload_session(
        image: UploadFile = File(..., description="PNG, JPEG or WebP, at most 10 MB"),
        depth: UploadFile | None = File(None, description=".npy z-depth (scene units) or 16-bit PNG (millimetres)"),
        mask: UploadFile | None = File(None, description="object mask PNG, same aspect as the image"),
        prompt: str = Form("", max_length=500),
        fov_deg: float = Form(DEFAULT_FOV_DEG, description="horizontal field of view, degrees in (0, 180)"),
    ) -> SessionInfo:
        """Upload an image (with its depth, unless a depth estimator is installed) and optionally a mask.
        Sizes are checked from the files' headers; decoding runs on the decode threads."""
        check_fov(fov_deg)
        lim = cfg.limits
        img = await ctx.decoder.run(read_image, await _read(image, lim, "image"), image.content_type, "image", lim,
                                    work_side=cfg.work_side)
        if depth is not None and depth.filename:
            d = await ctx.decoder.run(read_depth, await _read(depth, lim, "depth"), depth.content_type, "depth", lim)
        else:
            d = await asyncio.to_thread(ctx.perception.estimate_depth, img)
        mask_bytes = await _read(mask, lim, "mask") if mask is not None and mask.filename else None
        s = await ctx.decoder.run(_new_session, img, d, mask_bytes, mask.content_type if mask is not None else None,
                                  prompt.strip(), fov_deg, cfg)
        return ctx.session_info(sessions.add(s))

    @r.get("/api/sessions/{sid}", response_model=SessionInfo)
    def get_session(sid: str) -> SessionInfo:
        return ctx.session_info(sessions.get(sid))


def _selection_routes(r: APIRouter, ctx: WebContext) -> None:
    """Choose the object: upload a mask, or select one (a mask, a click or a text query)."""
    cfg, sessions = ctx.cfg, ctx.sessions

    @r.post("/api/sessions/{sid}/mask", response_model=SessionInfo)
    async def upload_mask(sid: str, mask: UploadFile = File(..., description="object mask PNG")) -> SessionInfo:
        """Add an uploaded object mask and select it (resized to the session's image)."""
        s = sessions.get(sid)
        await ctx.decoder.run(_add_mask, s, await _read(mask, cfg.limits, "mask"), mask.content_type, cfg.limits)
        return ctx.session_info(s)

    @r.post("/api/sessions/{sid}/select", response_model=SessionInfo)
    def select(sid: str, req: SelectRequest) -> SessionInfo:
        """Select the object: one of the session's masks, or a click / text query (segmenter)."""
        s = sessions.get(sid)
        select_object(s, req, ctx.perception)
        return ctx.session_info(s)


def _view_routes(r: APIRouter, ctx: WebContext) -> None:
    """Read the session: its image, depth and mask as PNGs, and its lifted point cloud."""
    sessions = ctx.sessions

    @r.get("/api/sessions/{sid}/image.png", response_class=Response)
    def session_image(sid: str):
        return Response(png(sessions.get(sid).image), media_type="image/png")

    @r.get("/api/sessions/{sid}/depth.png", response_class=Response)
    def session_depth(sid: str):
        from diffusion_handles.viz import colorize_depth

        s = sessions.get(sid)
        return Response(png(colorize_depth(torch.from_numpy(s.depth))), media_type="image/png")

    @r.get("/api/sessions/{sid}/mask.png", response_class=Response)
    def session_mask(sid: str):
        s = sessions.get(sid)
        return Response(png(s.require_mask()), media_type="image/png")

    @r.get("/api/sessions/{sid}/points", response_model=PointCloud)
    def points(sid: str) -> PointCloud:
        """The depth as a coloured point cloud (three.js axes) with the selected object flagged."""
        return point_cloud(sessions.get(sid), ctx.cfg.max_points)


def _new_session(img: np.ndarray, d: np.ndarray, mask_bytes: bytes | None, mask_type: str | None, prompt: str,
                 fov_deg: float, cfg) -> Session:
    """The session at the working size, with the uploaded mask if any; on a decode thread."""
    s = make_session(img, d, prompt, fov_deg, "upload", cfg.work_side)
    if mask_bytes is not None:
        m = read_mask(mask_bytes, mask_type, "mask", cfg.limits)
        _check_aspect(m, img, "mask")
        s.add_mask("uploaded mask", m)
    return s


def _add_mask(s: Session, data: bytes, content_type: str | None, limits: UploadLimits) -> None:
    """Decode an uploaded mask and add it to ``s`` (resized to its image); on a decode thread."""
    m = read_mask(data, content_type, "mask", limits)
    _check_aspect(m, s.image, "mask")
    with s.lock:
        s.add_mask("uploaded mask", m)


async def _read(f: UploadFile, limits: UploadLimits, field: str) -> bytes:
    """Read an upload, refusing more than ``limits.max_bytes`` (413) without reading it all."""
    data = await f.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise UploadError(413, f"{field}: expected a file of at most {limits.max_bytes // (1024 * 1024)} MB, got more")
    return data


def check_fov(fov_deg: float) -> None:
    """The field of view of an upload: a finite number of degrees in (0, 180)."""
    if not (math.isfinite(fov_deg) and 0 < fov_deg < 180):
        raise HandlesError(f"fov_deg: expected a finite number of degrees in (0, 180), got {fov_deg}")


def _check_aspect(mask: np.ndarray, image: np.ndarray, field: str) -> None:
    mh, mw = mask.shape
    ih, iw = image.shape[:2]
    if abs(mh / mw - ih / iw) > 0.02:
        raise HandlesError(f"{field}: expected the image's aspect ratio ({iw}x{ih}), got {mw}x{mh}")
