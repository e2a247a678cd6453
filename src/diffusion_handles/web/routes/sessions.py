"""Sessions: open a scene or upload an image (with depth and mask), select the object, and read
the session's image, depth, mask and lifted point cloud."""

from __future__ import annotations

import asyncio
import math
from contextlib import contextmanager

import numpy as np
import torch
from fastapi import APIRouter, File, Form, Response, UploadFile

from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry import Camera, lift, object_centroid
from diffusion_handles.geometry.camera import DEFAULT_FOV_DEG
from diffusion_handles.web.context import ERRORS, ApiError, WebContext, b64, png
from diffusion_handles.web.schemas import PointCloud, SceneRequest, SelectRequest, SessionInfo
from diffusion_handles.web.sessions import make_session
from diffusion_handles.web.uploads import (
    UploadError,
    UploadLimits,
    read_depth,
    read_image,
    read_mask,
)


def router(ctx: WebContext) -> APIRouter:
    r = APIRouter(tags=["sessions"], responses=ERRORS)
    cfg, sessions, perception = ctx.cfg, ctx.sessions, ctx.perception

    @r.post("/api/sessions/scene", response_model=SessionInfo, status_code=201)
    def open_scene(req: SceneRequest) -> SessionInfo:
        """Open a built-in scene (demo or TinyWorld) with its depth, object masks and caption."""
        sc = ctx.catalog.get(req.scene)
        s = make_session(sc.image, sc.depth, sc.caption, sc.fov_deg, req.scene, cfg.work_side)
        for name, m in sc.masks:
            s.add_mask(name, m)
        s.selected = 0 if s.masks else None
        return ctx.session_info(sessions.add(s))

    @r.post("/api/sessions", response_model=SessionInfo, status_code=201)
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
        return ctx.session_info(sessions.add(s))

    @r.get("/api/sessions/{sid}", response_model=SessionInfo)
    def get_session(sid: str) -> SessionInfo:
        return ctx.session_info(sessions.get(sid))

    @r.post("/api/sessions/{sid}/mask", response_model=SessionInfo)
    async def upload_mask(sid: str, mask: UploadFile = File(..., description="object mask PNG")) -> SessionInfo:
        """Add an uploaded object mask and select it (resized to the session's image)."""
        s = sessions.get(sid)
        m = read_mask(await _read(mask, cfg.limits, "mask"), mask.content_type, "mask", cfg.limits)
        _check_aspect(m, s.image, "mask")
        with s.lock:
            s.add_mask("uploaded mask", m)
        return ctx.session_info(s)

    @r.post("/api/sessions/{sid}/select", response_model=SessionInfo)
    def select(sid: str, req: SelectRequest) -> SessionInfo:
        """Select the object: one of the session's masks, or a click / text query (segmenter)."""
        s = sessions.get(sid)
        if req.mode == "mask":
            if req.index is None or req.index >= len(s.masks):
                raise ApiError(422, f"index: expected a mask index in [0, {len(s.masks)}), got {req.index}")
            with s.lock:
                s.selected = req.index
            return ctx.session_info(s)
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
        return ctx.session_info(s)

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
            count=gh * gw, stride=stride, grid_width=gw, grid_height=gh, positions=b64(xyz.astype(np.float32)),
            colors=b64(rgb.astype(np.uint8)), object=b64(obj), pivot=pivot3, pivot_camera=pivot,
            vertical_fov_deg=vfov, aspect=w / h, point_size=stride / cam.fx,
        )

    return r


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


def _check_aspect(mask: np.ndarray, image: np.ndarray, field: str) -> None:
    mh, mw = mask.shape
    ih, iw = image.shape[:2]
    if abs(mh / mw - ih / iw) > 0.02:
        raise HandlesError(f"{field}: expected the image's aspect ratio ({iw}x{ih}), got {mw}x{mh}")
