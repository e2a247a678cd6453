"""The render job: run the Diffusion Handles facade on a session's image, with progress.

This is the only module of the web app that talks to :mod:`diffusion_handles.pipeline`; it
loads the model lazily (once), caches inverted images by content (image, depth, mask, prompt,
model), and writes PNG results into the job's folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffusion_handles.errors import HandlesError, first_line
from diffusion_handles.geometry import (
    Camera,
    HandleEdit,
    background_depth_fill,
    camera_move,
    compute_camera_move,
    compute_edit,
    compute_multi_edit,
)
from diffusion_handles.geometry.poisson import check_mask_leaves_background

log = logging.getLogger(__name__)

# shortest image side at the model's render size: thinner renders have nothing to edit (and a 1-px
# side breaks the result's depth view); reached only through uploads allowed below the working size's
# minimum (UploadLimits.min_side < 16) or models whose native size is below the working size
MIN_RENDER_SIDE = 4


def check_background(mask: torch.Tensor) -> None:
    """Refuse a ``(1, 1, H, W)`` mask that leaves no background to fill the object's region from
    (the library's check, naming the request's field ``mask``)."""
    check_mask_leaves_background(mask, "mask")


@contextlib.contextmanager
def geometry_errors(what: str, h: int, w: int) -> Iterator[None]:
    """Turn a raw error of the geometry code into a one-line :class:`HandlesError`
    (a :class:`HandlesError` passes unchanged)."""
    try:
        yield
    except HandlesError:
        raise
    except (ValueError, RuntimeError, ArithmeticError, IndexError) as e:
        raise HandlesError(f"{what}: expected an edit that can be computed for this {w}x{h} image and its mask, "
                           f"got an error from the geometry ({type(e).__name__}: {first_line(e)})") from None


@contextlib.contextmanager
def object_names() -> Iterator[None]:
    """The library's ``edits[k]`` (over the selected object, then the listed ones) renamed as a
    request names them: ``transform`` (the selected object) and ``objects[k - 1]``."""
    def name(m: re.Match) -> str:
        k = int(m.group(1))
        return "transform (the selected object)" if k == 0 else f"objects[{k - 1}]"

    try:
        yield
    except HandlesError as e:
        raise HandlesError(re.sub(r"edits\[(\d+)\]", name, str(e))) from None


def model_name(model: str) -> str:
    """What the app shows of ``model``: a hub id or ``tinyworld`` as given, a local folder by
    its name only (never its path)."""
    p = Path(model).expanduser()
    if model.startswith((".", "/", "~")) or "\\" in model or model.count("/") > 1 or p.is_dir():
        return p.resolve().name or model.strip("/\\") or "model"
    return model


@dataclass(frozen=True)
class RenderOptions:
    """Per-render settings chosen in the page.

    Attributes:
        num_steps: DDIM steps for inversion and generation (None: the facade's default, 50 as
            in Sec. 5).
        seed: seed of any randomness in the edit.
        preset: the library's named settings of inversion and guidance
            (``diffusion_handles.diffusion.config.preset``): ``default``, ``paper``, ``fast`` or
            ``draft`` (the page's automatic renders while a handle pauses).
        restyle, restyle_words: the object's new look and the prompt's words that name it
            (``DiffusionHandles.edit``'s); None: no restyle. They change the generation only, not
            the inversion (nor its cache key).
    """

    num_steps: int | None = None
    seed: int = 0  # seeds the VAE posterior sample of the inversion
    preset: str = "default"
    restyle: str | None = None
    restyle_words: str | None = None

    def restyle_kwargs(self) -> dict:
        """``DiffusionHandles.edit``'s restyle arguments (none without a restyle)."""
        return {} if self.restyle is None else {"restyle": self.restyle, "restyle_words": self.restyle_words}

    def configs(self):
        """``(InversionConfig, GuidanceConfig)`` of the preset at ``num_steps`` (None: the preset's)."""
        from diffusion_handles.diffusion.config import preset

        return preset(self.preset, self.num_steps)


@dataclass
class RenderInput:
    """A frozen copy of what a render needs, taken from the session at submit time."""

    image: torch.Tensor  # (1, 3, H, W) in [0, 1]
    depth: torch.Tensor  # (1, 1, H, W) z-depth, scene units
    mask: torch.Tensor  # (1, 1, H, W) in {0, 1}: the inversion's (all ones for a camera move, the union for several objects)
    prompt: str
    fov_deg: float
    key: str  # inversion cache key (content hash)
    object_masks: tuple[torch.Tensor, ...] = ()  # several objects: one (1, 1, H, W) mask per object, selected first
    camera: bool = False  # the edit moves the camera


Progress = Callable[..., None]  # Job.report: (stage, step, steps, message="", *, done=, total=, eta_s=)


def step_progress(report: Progress, plan, cancel=None):
    """Job progress from the facade's step callbacks (no polling of progress bars): a
    :class:`diffusion_handles.progress.Progress` over ``plan`` (its stages, each reported with its
    own step, the steps of all stages done of planned, and the time left estimated from the
    measured step times) that sends every step to ``report`` and stops the run at the end of a
    step once ``cancel`` (a ``threading.Event``) is set."""
    from diffusion_handles.progress import Progress as Tracker

    def send(ev) -> None:
        report(ev.stage, ev.step, ev.steps, ev.text(), done=ev.done, total=ev.total, eta_s=ev.eta_s)

    return Tracker(plan, report=send, cancel=cancel)


class RenderService:
    """Loads ``DiffusionHandles`` once and runs renders (called from the single job worker).

    Args:
        model: hub id, diffusers folder or ``"tinyworld"``.
        device, dtype: where the model runs.
        cache_size: inverted images kept in memory (keyed by content, steps and seed). Each holds
            the recorded activations of the guided layers and steps: hundreds of MB for SD2-depth
            at 512 px, a few MB for TinyWorld. 0 disables the cache.
    """

    def __init__(self, model: str, device: str = "cpu", dtype: torch.dtype = torch.float32, cache_size: int = 2):
        self.model = model
        self.name = model_name(model)
        self.device = device
        self.dtype = dtype
        self.cache_size = cache_size
        self._pipe = None
        self._cache: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def hide_paths(self, text: str) -> str:
        """``text`` with the model's folder path replaced by its name (messages reach the page)."""
        paths = {self.model}
        p = Path(self.model).expanduser()
        paths |= {str(p), str(p.resolve())}
        if self.model == "tinyworld":
            with contextlib.suppress(Exception):
                from diffusion_handles.world import model_path

                paths |= {str(model_path()), str(model_path().resolve())}
        for path in sorted((q for q in paths if q and q != self.name), key=len, reverse=True):
            text = text.replace(path, self.name)
        return text

    def available(self) -> str | None:
        """``None`` when renders can run here, else why not (facade missing, model not found).

        Hub ids are assumed available (checked when the model loads, on the first render)."""
        try:
            from diffusion_handles.pipeline import DiffusionHandles  # noqa: F401
        except Exception as e:  # the message may name files: logged, not shown
            log.warning("the diffusion pipeline does not import: %s: %s", type(e).__name__, e)
            return f"the diffusion pipeline is not available in this installation ({type(e).__name__})"
        if self.model == "tinyworld":
            try:
                from diffusion_handles.world import model_path

                model_path()
            except Exception:
                return "the embedded TinyWorld model is missing from this installation; start with --model FOLDER_OR_HUB_ID"
        elif self.model.startswith((".", "/", "~")) and not Path(self.model).expanduser().is_dir():
            return f"--model: no model folder named {self.name!r}"
        return None

    def pipeline(self, report: Progress):
        if self._pipe is None:
            reason = self.available()
            if reason:
                raise HandlesError(f"render: {reason}")
            from diffusion_handles.pipeline import DiffusionHandles

            report("loading model", 0, 0, self.name)
            self._pipe = DiffusionHandles.from_pretrained(self.model, device=self.device, dtype=self.dtype)
            self._pipe.set_progress_bar_config(disable=True)  # the page shows progress through callbacks
        return self._pipe

    def check(self, inp: RenderInput, edit: HandleEdit | list[HandleEdit] | None) -> None:
        """Validate ``edit`` at the size the model renders ``inp`` at, as the facade will compute it
        (scaled to the model's size and snapped to its work size, mask nearest); a no-op until
        the model is loaded (the size is the model's). ``edit`` is a list for several objects,
        the camera's move when ``inp.camera``, None for a removal.

        Raises:
            HandlesError: the edit cannot be rendered (one line).
        """
        pipe = self._pipe
        if pipe is None:
            return
        bb = pipe.backbone
        fit = fit_to_model(inp, int(bb.default_size))
        fh, fw = (int(v) for v in fit.image.shape[-2:])
        if min(fh, fw) < MIN_RENDER_SIDE:
            raise HandlesError(f"render: expected the image's shorter side to be at least {MIN_RENDER_SIDE} px at the "
                               f"model's {fw}x{fh} render size, got {min(fh, fw)} px; use an image of a less extreme "
                               "aspect ratio")
        work = bb.work_size(tuple(int(v) for v in fit.image.shape[-2:]))
        depth = bb.resize_to_work(fit.depth.float(), work)
        h, w = work
        cam = Camera(h, w, inp.fov_deg)
        if inp.camera:
            with geometry_errors("render", h, w):
                compute_camera_move(depth, camera_move(edit), cam)
            return

        def at_work(m: torch.Tensor, what: str) -> torch.Tensor:
            m = (bb.resize_to_work((m > 0.5).float(), work, mode="nearest") > 0.5).float()
            if not bool(m.any()):
                raise HandlesError(f"{what}: expected an object that stays visible at the model's {w}x{h} render size, "
                                   f"got one that vanishes when the image is scaled down; select a larger object")
            return m

        mask = at_work(fit.mask, "mask")
        masks = [at_work(m, f"objects[{k - 1}]" if k else "mask") for k, m in enumerate(fit.object_masks)]
        with geometry_errors("render", h, w):
            check_background(mask)
            if masks:
                with object_names():
                    compute_multi_edit(depth, masks, list(edit), cam)
            elif edit is not None:
                compute_edit(depth, mask, edit, cam)
            background_depth_fill(depth, mask)

    def _inverted(self, pipe, inp: RenderInput, opts: RenderOptions, report: Progress, passes: int,
                  cancel=None, **plan_kw):
        """The inversion of ``inp`` (from the cache, or computed and cached) and the progress
        tracker for it and ``passes`` guided generations of ``n`` steps each after it
        (``plan_kw``: :func:`~diffusion_handles.progress.plan_for`'s ``guidance``, ``frames``,
        ``edit_key``). Stops at the end of a step once ``cancel`` is set (nothing is cached)."""
        from diffusion_handles.progress import check_cancel, plan_for

        inv_cfg, preset_guidance = opts.configs()
        n = inv_cfg.num_steps
        key = f"{inp.key}:{inv_cfg.to_dict()}:{opts.seed}:{opts.preset}"  # the preset's guidance decides what is recorded
        timings: dict[str, float] = {}
        inverted = self._cache.get(key)
        reused = inverted is not None
        guidance = plan_kw.pop("guidance", None) or preset_guidance
        plan = plan_for(None if reused else inv_cfg, guidance, edits=passes, steps=n, **plan_kw)
        progress = step_progress(report, plan, cancel)
        check_cancel(cancel, "loading the model")
        if inverted is None:
            t0 = time.perf_counter()
            report("inversion", 0, n, "starting the inversion", done=0, total=progress.total)
            inverted = pipe.invert(inp.image, inp.prompt, inp.depth, inp.mask, inversion=inv_cfg,
                                   guidance=preset_guidance, seed=opts.seed, callback=progress)
            timings["invert_s"] = time.perf_counter() - t0
            self._cache[key] = inverted
            while self._cache and len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
            report("editing", 0, 0, "inversion reused from the cache", done=0, total=progress.total)
        return inverted, reused, progress, timings

    def run(self, inp: RenderInput, edit: HandleEdit | list[HandleEdit], opts: RenderOptions, report: Progress,
            cancel=None) -> dict:
        """Invert (or reuse the cached inversion) and edit; returns the facade's output and info.
        A camera move when ``inp.camera``; several objects (``edit`` a list, one per mask of
        ``inp.object_masks``) in one z-buffer and one guided generation. Stops with
        :class:`~diffusion_handles.errors.Cancelled` at the end of a step once ``cancel`` is set."""
        with self._lock:
            pipe = self.pipeline(report)
            self.check(inp, edit)  # before the inversion: an impossible edit fails at once
            inverted, reused, progress, timings = self._inverted(pipe, inp, opts, report, 1, cancel)
            t1 = time.perf_counter()
            out = _edit(pipe, inverted, inp, edit, progress.callback("guided_generation"), opts.configs()[1],
                        opts.restyle_kwargs())
            timings["edit_s"] = time.perf_counter() - t1
        return {"output": out, "input": inp, "reused_inversion": reused, "timings": timings}

    def remove(self, inp: RenderInput, opts: RenderOptions, report: Progress, cancel=None) -> dict:
        """Remove ``inp``'s object: invert with its mask (the same inversion as a render of that
        object, reused from the cache), then regenerate its region over the background depth
        (``DiffusionHandles.remove``, fresh noise of ``opts.seed`` in the region). ``cancel`` as
        in :meth:`run`."""
        from diffusion_handles.diffusion.config import GuidanceConfig

        guidance = GuidanceConfig(identity_transfer=None)
        with self._lock:
            pipe = self.pipeline(report)
            self.check(inp, None)
            inverted, reused, progress, timings = self._inverted(pipe, inp, opts, report, 1, cancel,
                                                                 guidance=guidance, edit_key="removal")
            t1 = time.perf_counter()
            out = pipe.remove(inverted, guidance=guidance, noise_seed=opts.seed, source_image=inp.image,
                              callback=progress.callback("removal"))
            timings["remove_s"] = time.perf_counter() - t1
        return {"output": out, "input": inp, "reused_inversion": reused, "timings": timings}

    def animate(self, inp: RenderInput, edits: list, opts: RenderOptions, report: Progress, cancel=None) -> dict:
        """One inversion (the render's, reused from the cache when it is there), then one guided
        generation per frame; progress names the frame (``frame i/N: guided generation``) and
        estimates the time left for all frames from the step times measured so far. ``edits``:
        one per frame, each what :meth:`run` takes (an edit, a list for ``inp.object_masks``, or
        the camera's move when ``inp.camera``); ``cancel`` as in :meth:`run`. Returns the frames
        as ``(H, W, 3)`` uint8 arrays and info."""
        with self._lock:
            pipe = self.pipeline(report)
            self.check(inp, edits[-1])  # the full transform: an impossible edit fails before the inversion
            inverted, reused, progress, timings = self._inverted(pipe, inp, opts, report, len(edits), cancel,
                                                                 frames=True)
            t1 = time.perf_counter()
            frames = []
            for i, e in enumerate(edits):
                callback = progress.callback("guided_generation", f"frame {i + 1}/{len(edits)}")
                out = _edit(pipe, inverted, inp, e, callback)
                frames.append((out.edited[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().cpu().numpy())
            timings["frames_s"] = time.perf_counter() - t1
        return {"frames": frames, "edits": edits, "input": inp, "reused_inversion": reused, "timings": timings}


def _edit(pipe, inverted, inp: RenderInput, edit, callback, guidance=None, restyle: dict | None = None):
    """``pipe.edit`` of what ``inp`` moves: ``edit`` for the selected object, a list of edits for
    ``inp.object_masks``, or the camera's move when ``inp.camera`` (``guidance``: the preset's,
    None: the default; ``restyle``: :meth:`RenderOptions.restyle_kwargs`)."""
    from diffusion_handles.pipeline import CameraMove, ObjectMove

    if inp.object_masks:
        edit = [ObjectMove(m, e) for m, e in zip(inp.object_masks, edit, strict=True)]
    elif inp.camera:
        edit = CameraMove(edit)
    return pipe.edit(inverted, edit, guidance=guidance, fov_deg=inp.fov_deg, source_image=inp.image,
                     source_depth=inp.depth, source_mask=inp.mask, callback=callback,
                     **(restyle or {}))


def fit_to_model(inp: RenderInput, side: int) -> RenderInput:
    """``inp`` scaled down so its longer side is at most ``side`` (the model's native size:
    512 for SD2-depth, 128 for TinyWorld; what the library does itself,
    ``Backbone.model_size``); image area-averaged, depth and mask nearest. Used to check an edit
    at the size the model will see it; renders get the upload at its own size and come back at
    it."""
    import torch.nn.functional as F

    h, w = inp.image.shape[-2:]
    if max(h, w) <= side:
        return inp
    s = side / max(h, w)
    hw = (max(1, round(h * s)), max(1, round(w * s)))
    return RenderInput(
        image=F.interpolate(inp.image, size=hw, mode="area"),
        depth=F.interpolate(inp.depth, size=hw, mode="nearest"),
        mask=F.interpolate(inp.mask, size=hw, mode="nearest"),
        prompt=inp.prompt, fov_deg=inp.fov_deg, key=f"{inp.key}@{hw[0]}x{hw[1]}",
        object_masks=tuple(F.interpolate(m, size=hw, mode="nearest") for m in inp.object_masks), camera=inp.camera,
    )


def write_results(folder: Path, inp: RenderInput, result: dict) -> dict[str, str]:
    """Save the render's pictures into ``folder``; return ``{result name: file name}``.

    Files: ``edited.png`` (x'_0), ``input.png``, ``reconstruction.png`` (the inversion's),
    ``preview.png`` (the geometric preview, holes magenta), ``edited_depth.png`` (colour-mapped
    d') and ``edited_depth.npy`` (z-depth, scene units), ``effects_region.png`` (white where the
    object's old shadow was and its new one falls, the region regenerated for them; black when
    none was found), ``info.json``.
    """
    from diffusion_handles.io import save_image
    from diffusion_handles.viz import colorize_depth

    out = result["output"]  # diffusion_handles.pipeline.EditOutput
    inp = result.get("input", inp)  # what was rendered (scaled to the model's size)
    files = {"edited": "edited.png", "input": "input.png", "reconstruction": "reconstruction.png",
             "preview": "preview.png", "edited_depth": "edited_depth.png", "edited_depth_npy": "edited_depth.npy",
             "effects": "effects_region.png"}
    save_image(folder / files["edited"], out.edited)
    save_image(folder / files["effects"], out.effects)
    save_image(folder / files["input"], inp.image)
    save_image(folder / files["reconstruction"], out.reconstruction)
    save_image(folder / files["preview"], out.preview)
    save_image(folder / files["edited_depth"], colorize_depth(out.edited_depth))
    np.save(folder / files["edited_depth_npy"], out.edited_depth.detach().float().cpu()[0, 0].numpy())
    timings = dict(result.get("timings", {}))
    timings.update({f"pipeline_{k}_s": float(v) for k, v in out.timings.items()})
    if result.get("kind") == "remove":
        files["region"] = "region.png"
        save_image(folder / files["region"], out.region)
    from diffusion_handles.progress import forward_equivalents

    info = {"reused_inversion": result["reused_inversion"], "render_size_hw": list(out.edited.shape[-2:]),
            "timings": timings, "unet_evals": out.unet_evals, "fwd_eq": forward_equivalents(out.unet_evals),
            "light_direction": None if out.light is None else [float(v) for v in out.light],
            **result.get("meta", {})}
    (folder / "info.json").write_text(json.dumps(info, indent=2))
    return files


def write_animation(folder: Path, result: dict, fps: float) -> dict[str, str]:
    """Save an animation into ``folder``; return ``{result name: file name}``.

    Files: ``animation.gif`` and ``animation.mp4`` (H.264, when the ``video`` extra is installed;
    frames enlarged nearest-neighbour to at least 256 px, as ``handles animate`` writes them),
    ``frames/0000.png ...`` (the
    frames at the input's size, named ``frame_0000 ...``), ``input.png``, ``info.json``.
    """
    from PIL import Image

    from diffusion_handles.animation import display_frames, mp4_available, write_gif, write_mp4
    from diffusion_handles.io import save_image

    frames = result["frames"]
    (folder / "frames").mkdir()
    files = {"gif": "animation.gif", "input": "input.png"}
    if mp4_available():
        files["mp4"] = "animation.mp4"
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / "frames" / f"{i:04d}.png")
        files[f"frame_{i:04d}"] = f"frames/{i:04d}.png"
    shown = display_frames(frames)
    write_gif(shown, folder / files["gif"], fps)
    if "mp4" in files:
        write_mp4(shown, folder / files["mp4"], fps)
    save_image(folder / files["input"], result["input"].image)
    info = {"reused_inversion": result["reused_inversion"], "frames": len(frames), "fps": fps,
            "render_size_hw": list(frames[0].shape[:2]), "timings": dict(result.get("timings", {})),
            "edits": [[x.to_dict() for x in e] if isinstance(e, list) else e.to_dict() for e in result["edits"]]}
    (folder / "info.json").write_text(json.dumps(info, indent=2))
    return files
