"""The instant geometric preview (no diffusion), run one at a time on the preview thread."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future

from fastapi import APIRouter

from diffusion_handles.web.context import ERRORS, WebContext, data_url, png
from diffusion_handles.web.modes import preview_target, resolve, session_tensors
from diffusion_handles.web.render import geometry_errors
from diffusion_handles.web.schemas import PreviewRequest, PreviewResponse
from diffusion_handles.web.sessions import Session


def compute_preview(s: Session, req: PreviewRequest, t0: float) -> PreviewResponse:
    """The preview and its PNG encoding (runs on the single preview thread): the selected
    object, several objects (``req.objects``) or the camera (``req.mode``)."""
    from diffusion_handles.viz import colorize_depth

    with s.lock:
        target = resolve(s, req)
        image, depth, mask, per_object = session_tensors(s, target)
    h, w = s.size_hw
    with geometry_errors("preview", h, w):
        res = preview_target(image, depth, mask, per_object, target, s.fov_deg, req.with_depth)
    image_png = png(res.preview)
    depth_url = data_url(png(colorize_depth(res.edited_depth))) if req.with_depth else None
    timings = {**res.timings_ms, "server_total": (time.perf_counter() - t0) * 1e3}
    return PreviewResponse(
        image=data_url(image_png), depth=depth_url, width=s.size_hw[1], height=s.size_hw[0],
        object_pixels=int((res.edited_mask > 0.5).sum()), hole_pixels=int((res.valid < 0.5).sum()),
        timings_ms=timings,
    )


def submit_preview(ctx: WebContext, s: Session, req: PreviewRequest) -> Future:
    """Queue a preview on the preview thread; refuse (429) beyond ``max_waiting_previews``.

    Waiting requests hold no server thread, so a burst cannot starve other endpoints."""
    return ctx.previews.submit(compute_preview, s, req, time.perf_counter())


def router(ctx: WebContext) -> APIRouter:
    r = APIRouter(tags=["edit"], responses=ERRORS)

    @r.post("/api/sessions/{sid}/preview", response_model=PreviewResponse)
    async def preview(sid: str, req: PreviewRequest) -> PreviewResponse:
        """Instant geometric preview of the transform (no diffusion): the re-rendered image,
        holes (disocclusions) in magenta. ``mode`` "camera" moves the camera (no mask needed);
        ``objects`` moves other objects too (one z-buffer). Impossible edits (behind the camera, out of frame)
        answer 422 with the reason. Previews run one at a time in arrival order."""
        return await asyncio.wrap_future(submit_preview(ctx, ctx.sessions.get(sid), req))

    return r
