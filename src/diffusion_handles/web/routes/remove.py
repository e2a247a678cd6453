"""Object removal: the selected object removed and its region (grown for its shadow)
regenerated over the background depth, as a job shown like a render."""

from __future__ import annotations

import json

from fastapi import APIRouter

from diffusion_handles.web import modes
from diffusion_handles.web.context import ERRORS, ApiError, WebContext
from diffusion_handles.web.jobs import Job
from diffusion_handles.web.render import (
    RenderOptions,
    check_background,
    geometry_errors,
    write_results,
)
from diffusion_handles.web.schemas import JobStatus, RemoveRequest, Transform


def router(ctx: WebContext) -> APIRouter:
    r = APIRouter(tags=["render"], responses=ERRORS)

    @r.post("/api/sessions/{sid}/remove", response_model=JobStatus, status_code=202)
    def remove(sid: str, req: RemoveRequest) -> JobStatus:
        """Queue the removal of the selected object (``DiffusionHandles.remove``): the image is
        inverted with the object's mask (the same inversion as a render of that object with the
        same prompt, steps and seed, reused from the cache), the region is regenerated from
        fresh noise over the background depth. ``prompt`` should describe the scene without the
        object. Results as a render's (``edited`` is the image without the object, ``preview``
        the region in magenta, ``edited_depth`` the background depth) plus ``region``."""
        reason = ctx.renderer.available()
        if reason:
            raise ApiError(422, f"remove: {reason}")
        s = ctx.sessions.get(sid)
        text = (req.prompt if req.prompt is not None else s.prompt).strip()
        with s.lock:
            target = modes.resolve(s, modes.EditRequest(transform=Transform()))
            inp = modes.render_input(s, target, text, ctx.cfg.model)
        h, w = s.size_hw
        with geometry_errors("remove", h, w):
            check_background(inp.mask)  # the background depth is filled in from outside the object
        ctx.renderer.check(inp, None)
        opts = RenderOptions(num_steps=req.num_steps or ctx.cfg.default_steps, seed=req.seed)

        def task(job: Job) -> dict[str, str]:
            result = ctx.renderer.remove(inp, opts, job.report, cancel=job.cancel_event)
            result.update(kind="remove", meta={"mode": "remove", "objects": 1})
            files = write_results(job.folder, inp, result)
            job.info = json.loads((job.folder / "info.json").read_text())
            return files

        return ctx.job_status(ctx.jobs.submit(task))

    return r
