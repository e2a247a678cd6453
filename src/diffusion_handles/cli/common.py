"""Argument groups and parsing shared by several sub-commands."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from diffusion_handles import limits
from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry.camera import DEFAULT_FOV_DEG
from diffusion_handles.geometry.transform import HandleEdit

# Aliases of diffusion_handles.limits (the one table), kept for the modules that import them.
SCALE_RANGE = limits.SCALE  # uniform scale about the object's centroid: outside it, a typo
SEED_MAX = limits.SEED[1]  # non-negative 63-bit seeds: every consumer (signed 64-bit ones too) is exact
# torch CPU threads (--threads): not in limits.py (a machine's count, not a work size); beyond it, a typo
MAX_THREADS = limits.THREADS[1]
# Below this UNet size, one CPU thread is faster: the convolutions are too small to split, and on a
# shared 2-core machine OpenMP threads spin against other processes (measured here: a 1.4 M-param
# UNet forward at 32x32 latents took 0.08 s on 1 thread, 4.6 s on 2 threads under load).
SMALL_UNET_PARAMS = 20_000_000


def add_out_args(parser: argparse.ArgumentParser, *, required: bool = True, default: str | None = None,
                 help: str = "output folder", overwrite: bool = True) -> None:
    """``--out DIR`` (a new or empty folder) and, with ``overwrite``, ``--overwrite``."""
    rule = "must not exist or be empty" + ("; --overwrite replaces a non-empty one whole" if overwrite else "")
    text = f"{help} ({rule})" if default is None else f"{help} (default {default}; {rule})"
    parser.add_argument("--out", required=required, default=default, metavar="DIR", help=text)
    if overwrite:
        parser.add_argument("--overwrite", action="store_true",
                            help="replace an existing non-empty --out folder (the new one is written aside "
                                 "and swapped in; the old one is deleted only after success)")


def check_out(args: argparse.Namespace, **kwargs):
    """:func:`~diffusion_handles.outputs.check_output_dir` on ``args.out`` / ``args.overwrite``, then
    :func:`~diffusion_handles.outputs.check_cache_dir` on ``args.cache`` for the commands that have one."""
    from diffusion_handles.outputs import check_cache_dir, check_output_dir

    out = check_output_dir(args.out, getattr(args, "overwrite", None), **kwargs)
    check_cache_dir(getattr(args, "cache", None), out)
    return out


def parse_seed(value, arg: str = "--seed", maximum: int = SEED_MAX) -> int:
    """A seed: an integer in ``[0, maximum]`` (:data:`~diffusion_handles.limits.SEED`)."""
    return parse_int(value, arg, limits.SEED[0], maximum)


def parse_int(value: str, arg: str, minimum: int, maximum: int | None = None) -> int:
    """An integer flag in ``[minimum, maximum]`` (``>= minimum`` when ``maximum`` is ``None``)."""
    text = str(value)
    shown = text if len(text) <= 40 else text[:40] + "..."
    want = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
    try:
        v = int(text)
    except (TypeError, ValueError):  # ValueError also for integers of more than 4300 digits
        raise HandlesError(f"{arg}: expected {want}, got {shown!r}") from None
    if v < minimum or (maximum is not None and v > maximum):
        raise HandlesError(f"{arg}: expected {want}, got {shown}")
    return v


def parse_steps(value: str, arg: str = "--steps") -> int:
    """DDIM steps: an integer in :data:`~diffusion_handles.limits.STEPS`."""
    return parse_int(value, arg, *limits.STEPS)


def set_threads(handles, threads: int | None) -> None:
    """torch's CPU threads for a loaded :class:`~diffusion_handles.pipeline.DiffusionHandles`:
    ``threads``, or when ``None`` 1 for a small UNet (where intra-op threads only contend)."""
    import torch

    if threads is None and sum(p.numel() for p in handles.backbone.unet.parameters()) < SMALL_UNET_PARAMS:
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)


def small_model_threads(model: str) -> int | None:
    """The auto thread count of :func:`set_threads`, decided before the model loads: 1 when
    ``model`` (``"tinyworld"`` or a local folder) has a UNet of fewer than
    :data:`SMALL_UNET_PARAMS` parameters (counted from its safetensors header), else ``None``."""
    import json

    from diffusion_handles.diffusion.backbone import model_folder

    try:
        folder = model_folder(model)
    except HandlesError:
        return None  # the loader says why
    files = sorted((folder / "unet").glob("*.safetensors")) if folder is not None else []
    params = 0
    for f in files:
        try:
            with open(f, "rb") as fh:
                header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        except (OSError, ValueError):
            return None
        for name, t in header.items():
            if name != "__metadata__":
                n = 1
                for d in t.get("shape", []):
                    n *= int(d)
                params += n
    return 1 if files and params < SMALL_UNET_PARAMS else None


def check_model(model: str, option: str = "--model") -> None:
    """The depth-to-image model, checked before any heavy import (transformers, diffusers): a hub
    id that is neither in the local cache nor downloadable (``HF_HUB_OFFLINE`` set, the hub
    unreachable) is refused at once with the loader's one line. ``"tinyworld"`` and folders
    (existing or not: the loader names what is wrong with them) pass."""
    from pathlib import Path

    from diffusion_handles.hub import check_available, looks_like_path

    name = str(model)
    if name == "tinyworld" or looks_like_path(name) or Path(name).exists():
        return
    check_available(name, what="depth-to-image", option=option,
                    bypass="use --model tinyworld (the embedded offline model)")


def started(args: argparse.Namespace) -> float:
    """When the command started (``time.perf_counter()``): as :func:`~diffusion_handles.cli.main`
    recorded it before building the parser, else now (a command called in-process)."""
    t = getattr(args, "started_at", None)
    if not isinstance(t, float):
        t = time.perf_counter()
        args.started_at = t
    return t


def check_device(name: str, arg: str = "--device") -> str:
    """Refuse a torch device that does not exist here, before any model loads."""
    import torch

    shown = repr(name if len(str(name)) <= 40 else str(name)[:40] + "...")
    try:
        dev = torch.device(str(name))
    except (RuntimeError, TypeError, ValueError):
        raise HandlesError(f"{arg}: expected cpu, cuda or cuda:N, got {shown}") from None
    if dev.type == "cpu":
        return str(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise HandlesError(f"{arg}: expected an available device, got {shown} (torch sees no CUDA GPU; use cpu)")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise HandlesError(f"{arg}: expected cuda:0..cuda:{n - 1} ({n} CUDA GPU{'s' if n != 1 else ''}), got {shown}")
        return str(name)
    if dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise HandlesError(f"{arg}: expected an available device, got {shown} (torch sees no MPS device)")
        return str(name)
    raise HandlesError(f"{arg}: expected cpu, cuda or cuda:N, got {shown}")


# (library module, is-enabled check, enable, disable) of every weight-loading / download bar
_BAR_SWITCHES = (
    ("huggingface_hub.utils", lambda m: not m.are_progress_bars_disabled(), "enable_progress_bars", "disable_progress_bars"),
    ("transformers.utils.logging", lambda m: m.is_progress_bar_enabled(), "enable_progress_bar", "disable_progress_bar"),
    ("diffusers.utils.logging", lambda m: m.is_progress_bar_enabled(), "enable_progress_bar", "disable_progress_bar"),
)
_BARS_TO_RESTORE: list = []


def silence_progress_bars() -> None:
    """``--quiet``: no weight-loading or download bars from huggingface_hub, transformers, diffusers.

    Lasts until :func:`restore_progress_bars` (the commands call it when they return, so that
    ``main()`` called in-process leaves the libraries as it found them).
    """
    import contextlib
    import importlib
    import os
    import warnings

    saved = {"env": os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"), "on": []}
    switches = []
    for module, enabled, enable, disable in _BAR_SWITCHES:  # every state first: some follow huggingface_hub's
        with contextlib.suppress(Exception):  # not installed: no bars to hide
            mod = importlib.import_module(module)
            switches.append((mod, disable))
            if enabled(mod):
                saved["on"].append((mod, enable))
    for mod, disable in switches:
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            getattr(mod, disable)()
    # after the imports (they read it once): subprocesses and libraries imported later see it too
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    _BARS_TO_RESTORE.append(saved)


def restore_progress_bars() -> None:
    """Undo :func:`silence_progress_bars` (no-op when it was not called)."""
    import contextlib
    import os
    import warnings

    while _BARS_TO_RESTORE:
        saved = _BARS_TO_RESTORE.pop()
        for mod, enable in saved["on"]:
            with contextlib.suppress(Exception), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                getattr(mod, enable)()
        if saved["env"] is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = saved["env"]


def add_transform_args(parser: argparse.ArgumentParser) -> None:
    """``--translate X Y Z --rotate-axis X Y Z --rotate-deg A --scale S --fov DEG``."""
    g = parser.add_argument_group("3D transform (camera axes: x right, y down, z forward; scene units)")
    g.add_argument("--translate", nargs=3, metavar=("X", "Y", "Z"), default=["0", "0", "0"],
                   help=f"translation in scene units, each within +-{limits.TRANSLATE:g} (default 0 0 0)")
    g.add_argument("--rotate-axis", nargs=3, metavar=("X", "Y", "Z"), default=["0", "1", "0"],
                   help="rotation axis through the object's centroid (default 0 1 0, vertical)")
    g.add_argument("--rotate-deg", metavar="A", default="0",
                   help=f"rotation angle in degrees, within +-{limits.ROTATE_DEG:g} (default 0)")
    g.add_argument("--scale", metavar="S", default="1",
                   help=f"uniform scale about the centroid, in [{SCALE_RANGE[0]:g}, {SCALE_RANGE[1]:g}] (default 1)")
    g.add_argument("--fov", metavar="DEG", default=str(DEFAULT_FOV_DEG),
                   help=f"horizontal field of view in degrees (default {DEFAULT_FOV_DEG:g}, Sec. 5.1)")


def _floats(values, arg: str) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise HandlesError(f"{arg}: expected numbers, got {' '.join(map(str, values))!r}") from None
    if not all(abs(v) < float("inf") and v == v for v in out):
        raise HandlesError(f"{arg}: expected finite numbers, got {' '.join(map(str, values))!r}")
    return out


def edit_from_args(args: argparse.Namespace) -> HandleEdit:
    """The :class:`HandleEdit` given by :func:`add_transform_args` flags, validated."""
    translate = _floats(args.translate, "--translate")
    axis = _floats(args.rotate_axis, "--rotate-axis")
    (deg,) = _floats([args.rotate_deg], "--rotate-deg")
    (scale,) = _floats([args.scale], "--scale")
    if scale <= 0:
        raise HandlesError(f"--scale: expected a positive number, got {args.scale}")
    names = {"translate": "--translate", "rotate_axis": "--rotate-axis", "rotate_deg": "--rotate-deg", "scale": "--scale"}
    return checked_edit(translate, axis, deg, scale, names)


def checked_edit(translate, axis, deg: float, scale: float, names: dict[str, str]) -> HandleEdit:
    """A :class:`HandleEdit` within :mod:`~diffusion_handles.limits` (``TRANSLATE``, ``ROTATE_DEG``,
    ``SCALE``) whose rotation has an axis; ``names``: how the user gave each of ``translate``,
    ``rotate_axis``, ``rotate_deg`` and ``scale`` (``--scale``, ``--edits: [0].scale``, ...)."""
    from diffusion_handles.animation import edit_from_values

    return edit_from_values(translate, axis, deg, scale, names)


def fov_from_args(args: argparse.Namespace) -> float:
    (fov,) = _floats([args.fov], "--fov")
    lo, hi = limits.FOV_DEG
    if not lo < fov < hi:
        raise HandlesError(f"--fov: expected degrees in ({lo:g}, {hi:g}), got {args.fov}")
    return fov


# ---------------------------------------------------------------------- progress, Ctrl-C, cost
class ProgressPrinter:
    """Prints a command's :class:`~diffusion_handles.progress.ProgressEvent` s on stderr:
    ``handles edit: inversion 12/50, 3.1 s elapsed, about 9 s left``.

    On a terminal one line is rewritten in place (a new line per stage); elsewhere (a log, a
    pipe) a line is printed at each stage's first and last step and at most every ``every``
    seconds between them.
    """

    def __init__(self, command: str, *, every: float = 2.0, stream=None) -> None:
        import sys

        self.command = command
        self.every = every
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.open = False  # a rewritten line is waiting for its newline
        self._stage = None
        self._printed = 0.0

    def __call__(self, ev) -> None:
        now = time.perf_counter()
        first, last = ev.stage != self._stage, ev.step >= ev.steps
        if first and self.open:
            self.end_line()
        self._stage = ev.stage
        line = f"handles {self.command}: {ev.text()}"
        if self.tty:
            self.stream.write(f"\r\x1b[K{line}")
            self.open = True
            if last:
                self.end_line()
            self.stream.flush()
        elif first or last or now - self._printed >= self.every:
            print(line, file=self.stream, flush=True)
            self._printed = now

    def note(self, text: str) -> None:
        """A line of its own (``handles animate: ...``), after any line being rewritten."""
        self.end_line()
        print(f"handles {self.command}: {text}", file=self.stream, flush=True)

    def end_line(self) -> None:
        if self.open:
            self.stream.write("\n")
            self.stream.flush()
            self.open = False


def command_progress(args: argparse.Namespace, plan) -> Any:
    """A :class:`~diffusion_handles.progress.Progress` over ``plan`` that prints on stderr
    (nothing with ``--quiet``), kept on ``args`` so that an interrupt can say where it stopped
    (:func:`interrupted_line`)."""
    from diffusion_handles.progress import Progress

    printer = None if getattr(args, "quiet", False) else ProgressPrinter(args.command)
    prog = Progress(plan, report=printer)
    prog.printer = printer
    args.progress = prog
    return prog


def interrupted_line(args: argparse.Namespace) -> str:
    """The one line printed when Ctrl-C (or a cancel) stops a command: where it stopped, and for
    the commands that write their ``--out`` whole at the end, that nothing was written."""
    prog = getattr(args, "progress", None)
    if prog is None:
        return f"handles {args.command}: interrupted"
    if prog.printer is not None:
        prog.printer.end_line()
    ev = prog.event
    where = f" during {ev.stage} {ev.step}/{ev.steps} after {ev.elapsed_s:.1f} s" if ev is not None else ""
    out = getattr(args, "out", None)
    kept = "; nothing written"
    if out:
        kept += f" ({out} left as it was)" if Path(out).exists() else f" ({out} not created)"
    return f"handles {args.command}: interrupted{where}{kept}"


def cost_summary(inv, outs: list, inversion_seconds: float) -> dict:
    """The ``cost`` block of a ``summary.json``: UNet forward-equivalents (a backward counts 2)
    and seconds per stage, of the inversion (zero when it came from the cache) and of the
    edits ``outs`` (``EditOutput`` s: one, or one per frame)."""
    from diffusion_handles.progress import forward_equivalents

    inv_fwd = 0 if inv.cache_hit else forward_equivalents(inv.unet_evals)
    edit_fwd = sum(forward_equivalents(o.unet_evals) for o in outs)
    edit_s: dict[str, float] = {}
    for o in outs:
        for k, v in o.timings.items():
            edit_s[k] = edit_s.get(k, 0.0) + float(v)
    inv_s = {} if inv.cache_hit else {k: float(v) for k, v in inv.timings.items()}
    return {
        "counting": "UNet forward-equivalents: forward evaluations + 2 x backward passes",
        "fwd_eq": {"inversion": inv_fwd, "edit": edit_fwd, "total": inv_fwd + edit_fwd},
        "seconds": {"inversion": inversion_seconds if not inv.cache_hit else 0.0,
                    "inversion_stages": inv_s, "edit": sum(edit_s.values()), "edit_stages": edit_s},
    }


def effects_summary(out) -> dict:
    """What the effects stage found: the light's direction (camera axes: x right, y down, z
    forward; the way the light travels) or ``None``, and the effects region's size in pixels."""
    light = None if out.light is None else [round(float(v), 4) for v in out.light]
    return {"light_direction": light, "region_pixels": int((out.effects > 0.5).sum()),
            "file": "effects_region.png"}


def windowed(dh, inversion, depth, mask, *targets, fov_deg: float):
    """``inversion`` with the edit window ``dh.edit_window`` chooses for ``targets`` (none: a
    removal; several: the frames of an animation), or unchanged when the whole photo is used."""
    import dataclasses

    window = dh.edit_window(depth, mask, *targets, fov_deg=fov_deg)
    return inversion if window is None else dataclasses.replace(inversion, window=window)
