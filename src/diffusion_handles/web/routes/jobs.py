"""Render jobs: submit a full render, watch its progress (JSON or Server-Sent Events), fetch
its result files."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, StreamingResponse

from diffusion_handles.web import modes
from diffusion_handles.web.context import ERRORS, ApiError, WebContext
from diffusion_handles.web.jobs import ENDED, Job
from diffusion_handles.web.modes import EditTarget, resolve
from diffusion_handles.web.render import RenderInput, RenderOptions, write_results
from diffusion_handles.web.routes.preview import submit_preview
from diffusion_handles.web.schemas import JobStatus, PreviewRequest, RenderRequest, Transform
from diffusion_handles.web.sessions import Session


def render_input(ctx: WebContext, s: Session, transform: Transform, prompt: str | None, what: str,
                 mode: str = "object", objects: list | None = None) -> tuple[RenderInput, EditTarget]:
    """A frozen copy of the session for a job, after the checks a render needs: renders are
    available, and the edit passes the preview's checks (with the depth composite the render
    computes) and, once the model is loaded, those at its render size. An edit that cannot be
    rendered answers 422 now instead of being accepted (202) and failing later."""
    reason = ctx.renderer.available()
    if reason:
        raise ApiError(422, f"{what}: {reason}")
    text = (prompt if prompt is not None else s.prompt).strip()
    req = PreviewRequest(transform=transform, with_depth=True, mode=mode, objects=objects or [])
    with s.lock:
        target = resolve(s, req)
        inp = modes.render_input(s, target, text, ctx.cfg.model)
    submit_preview(ctx, s, req).result()
    ctx.renderer.check(inp, target.edit)
    return inp, target


def restyle_of(req: RenderRequest, s: Session, prompt: str) -> tuple[str | None, str | None]:
    """A render's restyle ``(new look, words)``, ``(None, None)`` without one, checked against
    ``prompt`` by the library's rule (:func:`~diffusion_handles.diffusion.prompts.restyle_prompt`:
    a one-line 422 naming ``restyle`` or ``restyle_words``). The words are the request's, else the
    prompt's object phrase that names the selected object (:func:`object_words`), else None (the
    library's rule: the prompt's one object)."""
    if req.restyle is None:
        if req.restyle_words is not None:
            raise ApiError(422, "restyle_words: expected restyle with it (the object's new look), got restyle_words alone")
        return None, None
    if req.mode == "camera":
        raise ApiError(422, "restyle: expected a one-object edit, got mode 'camera' (a camera move restyles no object)")
    if req.objects:
        raise ApiError(422, f"restyle: expected a one-object edit, got {1 + len(req.objects)} objects (one object "
                            "at a time)")
    from diffusion_handles.diffusion.prompts import restyle_prompt

    with s.lock:
        name = s.masks[s.selected][0] if s.selected is not None and s.selected < len(s.masks) else None
    words = req.restyle_words if req.restyle_words is not None else object_words(prompt, name)
    restyle_prompt(prompt, req.restyle, words)  # HandlesError: the app answers 422 with its line
    return req.restyle, words


def object_words(prompt: str, name: str | None) -> str | None:
    """The words of ``prompt`` that name the object called ``name`` (a scene mask's name, such as
    TinyWorld's ``"orange cube"``): the object phrase ending with it, article included
    (``"an orange cube"`` in ``"an orange cube and a green sphere on ..."``), else ``name`` itself
    when the prompt contains it, else None."""
    from diffusion_handles.diffusion.prompts import object_phrases

    if not name:
        return None
    for phrase in object_phrases(prompt) or []:
        if phrase == name or phrase.endswith(f" {name}"):
            return phrase
    return name if name in prompt else None


def render_steps(req: RenderRequest, default_steps: int | None) -> int | None:
    """The sampling steps of a render: the request's or the server's, and for the ``draft``
    preset the draft of that many (a fifth, as 10 of 50)."""
    steps = req.num_steps or default_steps
    if req.preset == "draft" and steps:
        from diffusion_handles.diffusion.config import draft_steps  # lazy: the diffusion layer

        steps = draft_steps(steps)
    return steps


def router(ctx: WebContext) -> APIRouter:
    r = APIRouter(tags=["render"], responses=ERRORS)
    cfg, jobs, renderer = ctx.cfg, ctx.jobs, ctx.renderer

    @r.post("/api/jobs", response_model=JobStatus, status_code=202)
    def submit(req: RenderRequest) -> JobStatus:
        """Queue a full render (inversion, cached per image, then the guided edit): of the
        selected object, of several objects (``objects``: one z-buffer, one guided generation) or
        of a camera move (``mode`` "camera": the image inverted with an all-ones mask). One worker
        runs renders in order; watch progress with GET /api/jobs/{id} or its /events stream."""
        s = ctx.sessions.get(req.session_id)
        # checked before the preview's work, on the prompt render_input takes
        restyle, words = restyle_of(req, s, (req.prompt if req.prompt is not None else s.prompt).strip())
        inp, target = render_input(ctx, s, req.transform, req.prompt, "render", req.mode, req.objects)
        edit = target.edit
        opts = RenderOptions(num_steps=render_steps(req, cfg.default_steps), seed=req.seed, preset=req.preset,
                             restyle=restyle, restyle_words=words)

        def task(job: Job) -> dict[str, str]:
            result = renderer.run(inp, edit, opts, job.report, cancel=job.cancel_event)
            result["meta"] = {"mode": req.mode, "objects": 1 + len(req.objects) if req.mode == "object" else 0,
                              "preset": req.preset, "restyle": restyle, "restyle_words": words,
                              "generation_prompt": result["output"].prompt}
            files = write_results(job.folder, inp, result)
            job.info = json.loads((job.folder / "info.json").read_text())
            return files

        return ctx.job_status(jobs.submit(task))

    @r.get("/api/jobs/{jid}", response_model=JobStatus)
    def get_job(jid: str) -> JobStatus:
        return ctx.job_status(jobs.get(jid))

    @r.post("/api/jobs/{jid}/cancel", response_model=JobStatus)
    def cancel_job(jid: str) -> JobStatus:
        """Cancel a job (a render, removal or animation). A queued job is cancelled at once and
        never runs; a running one stops at the end of its current step (``cancel_requested`` is
        true until then) and ends in the ``cancelled`` state without results; a job that has
        already ended is answered unchanged. 404 for an unknown id."""
        return ctx.job_status(jobs.cancel(jid))

    @r.get("/api/jobs/{jid}/events", responses={200: {"content": {"text/event-stream": {}}}})
    async def job_events(jid: str, request: Request):
        """Server-Sent Events: one ``data:`` JobStatus JSON per change until the job ends."""
        job = jobs.get(jid)

        async def stream():
            last, idle = -1, 0.0
            while True:
                if job.version != last:
                    last = job.version
                    yield f"data: {ctx.job_status(job).model_dump_json()}\n\n"
                    idle = 0.0
                    if job.state in ENDED:
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

    @r.get("/api/jobs/{jid}/results/{name}", response_class=FileResponse)
    def job_result(jid: str, name: str):
        """A result file of a finished job (``name`` from the job's ``results``)."""
        job = jobs.get(jid)
        fname = job.results.get(name)
        if fname is None:
            raise ApiError(404, f"result: job {jid} has no result {name!r}; available: {', '.join(job.results) or 'none yet'}")
        media = MEDIA.get(Path(fname).suffix, "application/octet-stream")
        return FileResponse(job.folder / fname, media_type=media, filename=f"{name}-{jid[:8]}{Path(fname).suffix}")

    return r


MEDIA = {".png": "image/png", ".gif": "image/gif", ".mp4": "video/mp4", ".json": "application/json"}
