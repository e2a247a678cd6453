"""Animations: after a render, what it moved (an object, several, or the camera) taken from its
place to the transform over N frames, as a job (progress frame i of N) whose results are a GIF,
an MP4 and the frames."""

from __future__ import annotations

import json

from fastapi import APIRouter

from diffusion_handles.animation import interpolate_keyframes
from diffusion_handles.geometry import HandleEdit
from diffusion_handles.web.context import ERRORS, WebContext
from diffusion_handles.web.jobs import Job
from diffusion_handles.web.render import RenderOptions, write_animation
from diffusion_handles.web.routes.jobs import render_input
from diffusion_handles.web.schemas import AnimateRequest, JobStatus


def router(ctx: WebContext) -> APIRouter:
    r = APIRouter(tags=["render"], responses=ERRORS)

    @r.post("/api/sessions/{sid}/animate", response_model=JobStatus, status_code=202)
    def animate(sid: str, req: AnimateRequest) -> JobStatus:
        """Queue an animation of what the render of the same request moves (the selected object,
        several objects, or the camera), each from the identity to its transform in ``frames``
        frames (one inversion, reused from that render; one guided generation per frame). Watch it
        with GET /api/jobs/{id} or its /events stream; the results are ``gif``, ``mp4``, ``input``
        and ``frame_0000`` ...."""
        s = ctx.sessions.get(sid)
        inp, target = render_input(ctx, s, req.transform, req.prompt, "animate", req.mode, req.objects)
        tracks = [interpolate_keyframes([HandleEdit(), e], req.frames) for e in target.edits]
        edits = [list(frame) for frame in zip(*tracks, strict=True)] if target.multi else tracks[0]
        opts = RenderOptions(num_steps=req.num_steps or ctx.cfg.default_steps, seed=req.seed)

        def task(job: Job) -> dict[str, str]:
            result = ctx.renderer.animate(inp, edits, opts, job.report, cancel=job.cancel_event)
            job.report("writing the GIF and MP4", 0, 0, f"{len(edits)} frames", done=job.done, total=job.total)
            files = write_animation(job.folder, result, req.fps)
            job.info = json.loads((job.folder / "info.json").read_text())
            return files

        return ctx.job_status(ctx.jobs.submit(task))

    return r
