"""The render job: run the Diffusion Handles facade on a session's image, with progress.

This is the only module of the web app that talks to :mod:`diffusion_handles.pipeline`; it
loads the model lazily (once), caches inverted images by content (image, depth, mask, prompt,
model), and writes PNG results into the job's folder.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry import HandleEdit


@dataclass(frozen=True)
class RenderOptions:
    """Per-render settings chosen in the page.

    Attributes:
        num_steps: DDIM steps for inversion and generation (None: the facade's default, 50 as
            in Sec. 5).
        seed: seed of any randomness in the edit.
    """

    num_steps: int | None = None
    seed: int = 0  # seeds the VAE posterior sample of the inversion


@dataclass
class RenderInput:
    """A frozen copy of what a render needs, taken from the session at submit time."""

    image: torch.Tensor  # (1, 3, H, W) in [0, 1]
    depth: torch.Tensor  # (1, 1, H, W) z-depth, scene units
    mask: torch.Tensor  # (1, 1, H, W) in {0, 1}
    prompt: str
    fov_deg: float
    key: str  # inversion cache key (content hash)


Progress = Callable[[str, int, int, str], None]


class StepProgress:
    """Job progress from the facade's step callbacks (no polling of progress bars).

    An inversion reports two passes of ``n`` steps (DDIM inversion, then null-text optimisation
    or the reconstruction), an edit one pass (guided generation); each callback carries
    ``{"stage", "step", "total"}``. Overall progress is the number of steps done of
    ``expected`` (extended if a pass reports more steps than expected).
    """

    LABELS = {"ddim_inversion": "DDIM inversion", "null_text": "null-text inversion",
              "reconstruction": "reconstruction", "guided_generation": "guided generation"}

    def __init__(self, report: Progress, expected_total: int):
        self.report = report
        self.expected = expected_total
        self.done = 0  # steps of passes that have finished
        self._stage: str | None = None
        self._stage_total = 0

    def __call__(self, info: dict) -> None:
        stage, step, total = str(info.get("stage", "working")), int(info["step"]), int(info["total"])
        if stage != self._stage:
            if self._stage is not None:
                self.done += self._stage_total
            self._stage, self._stage_total = stage, total
        current = self.done + step + 1
        self.expected = max(self.expected, self.done + total)
        label = self.LABELS.get(stage, stage)
        self.report(label, current, self.expected, f"{label}: {step + 1} of {total}")


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
        self.device = device
        self.dtype = dtype
        self.cache_size = cache_size
        self._pipe = None
        self._cache: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def available(self) -> str | None:
        """``None`` when renders can run here, else why not (facade missing, model not found).

        Hub ids are assumed available (checked when the model loads, on the first render)."""
        try:
            from diffusion_handles.pipeline import DiffusionHandles  # noqa: F401
        except Exception as e:
            return f"the diffusion pipeline is not available in this installation ({type(e).__name__}: {e})"
        if self.model == "tinyworld":
            try:
                from diffusion_handles.world import model_path

                model_path()
            except Exception as e:
                return f"the embedded TinyWorld model is not available ({e}); start with --model FOLDER_OR_HUB_ID"
        elif self.model.startswith((".", "/", "~")) and not Path(self.model).expanduser().is_dir():
            return f"--model: no model folder at {self.model}"
        return None

    def pipeline(self, report: Progress):
        if self._pipe is None:
            reason = self.available()
            if reason:
                raise HandlesError(f"render: {reason}")
            from diffusion_handles.pipeline import DiffusionHandles

            report("loading model", 0, 0, self.model)
            self._pipe = DiffusionHandles.from_pretrained(self.model, device=self.device, dtype=self.dtype)
        return self._pipe

    def run(self, inp: RenderInput, edit: HandleEdit, opts: RenderOptions, report: Progress) -> dict:
        """Invert (or reuse the cached inversion) and edit; returns the facade's output and info."""
        from diffusion_handles.diffusion.config import InversionConfig

        with self._lock:
            pipe = self.pipeline(report)
            inp = fit_to_model(inp, int(pipe.backbone.default_size))
            inv_cfg = InversionConfig() if opts.num_steps is None else InversionConfig(num_steps=opts.num_steps)
            n = inv_cfg.num_steps
            key = f"{inp.key}:{inv_cfg.to_dict()}:{opts.seed}"
            timings: dict[str, float] = {}
            inverted = self._cache.get(key)
            reused = inverted is not None
            # an inversion reports two passes of n steps (DDIM + null-text or reconstruction), the edit one
            progress = StepProgress(report, n if reused else 3 * n)
            if inverted is None:
                t0 = time.perf_counter()
                report("inversion", 0, 3 * n, "starting the inversion")
                inverted = pipe.invert(inp.image, inp.prompt, inp.depth, inp.mask, inversion=inv_cfg,
                                       seed=opts.seed, progress=False, callback=progress)
                timings["invert_s"] = time.perf_counter() - t0
                self._cache[key] = inverted
                while self._cache and len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(key)
                report("editing", 0, n, "inversion reused from the cache")
            t1 = time.perf_counter()
            out = pipe.edit(inverted, edit, fov_deg=inp.fov_deg, progress=False,
                            callback=lambda info: progress({"stage": "guided_generation", **info}))
            timings["edit_s"] = time.perf_counter() - t1
        return {"output": out, "input": inp, "reused_inversion": reused, "timings": timings}


def fit_to_model(inp: RenderInput, side: int) -> RenderInput:
    """``inp`` scaled down so its longer side is at most ``side`` (the model's native size:
    512 for SD2-depth, 128 for TinyWorld); image area-averaged, depth and mask nearest."""
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
    )


def write_results(folder: Path, inp: RenderInput, result: dict) -> dict[str, str]:
    """Save the render's pictures into ``folder``; return ``{result name: file name}``.

    Files: ``edited.png`` (x'_0), ``input.png``, ``reconstruction.png`` (the inversion's),
    ``preview.png`` (the geometric preview, holes magenta), ``edited_depth.png`` (colour-mapped
    d') and ``edited_depth.npy`` (z-depth, scene units), ``info.json``.
    """
    from diffusion_handles.io import save_image
    from diffusion_handles.viz import colorize_depth

    out = result["output"]  # diffusion_handles.pipeline.EditOutput
    inp = result.get("input", inp)  # what was rendered (scaled to the model's size)
    files = {"edited": "edited.png", "input": "input.png", "reconstruction": "reconstruction.png",
             "preview": "preview.png", "edited_depth": "edited_depth.png", "edited_depth_npy": "edited_depth.npy"}
    save_image(folder / files["edited"], out.edited)
    save_image(folder / files["input"], inp.image)
    save_image(folder / files["reconstruction"], out.reconstruction)
    save_image(folder / files["preview"], out.preview)
    save_image(folder / files["edited_depth"], colorize_depth(out.edited_depth))
    np.save(folder / files["edited_depth_npy"], out.edited_depth.detach().float().cpu()[0, 0].numpy())
    timings = dict(result.get("timings", {}))
    timings.update({f"pipeline_{k}_s": float(v) for k, v in out.timings.items()})
    info = {"reused_inversion": result["reused_inversion"], "render_size_hw": list(out.edited.shape[-2:]),
            "timings": timings, "unet_evals": out.unet_evals}
    (folder / "info.json").write_text(json.dumps(info, indent=2))
    return files
