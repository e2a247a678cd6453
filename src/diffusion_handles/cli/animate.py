"""``handles animate``: one inversion, one guided edit per frame along an interpolated trajectory."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from diffusion_handles import limits
from diffusion_handles.cli.common import SEED_MAX, add_out_args
from diffusion_handles.cli.edit_modes import EditEntry
from diffusion_handles.cli.inputs import ModeInputs, add_edit_input_args

if TYPE_CHECKING:
    from diffusion_handles.diffusion.config import GuidanceConfig, InversionConfig

DEFAULT_FRAMES = 12
DEFAULT_FPS = 8.0
MIN_FRAMES = max(2, limits.FRAMES[0])  # the first and last frames are the first and last keyframes


def register(sub: argparse._SubParsersAction) -> None:
    from diffusion_handles.animation import MAX_FRAMES, MAX_KEYFRAMES
    from diffusion_handles.geometry.camera import DEFAULT_FOV_DEG

    p = sub.add_parser(
        "animate",
        help="animate an object (or the camera) along a 3D trajectory (keyframes): frames, MP4 and GIF",
        description="Invert IMAGE once, then make one guided edit per frame along the transform interpolated "
        "between keyframes (translation linear, rotation by slerp, scale geometric). Writes frames/0000.png..., "
        "animation.mp4 (H.264; needs the 'video' extra, else the GIF only), animation.gif, comparison.png and "
        "summary.json.",
    )
    add_edit_input_args(p, prompt_help="text prompt describing the image",
                        mask_help="object mask PNG (pixels >= 128 are the object), or --object / --click")
    p.add_argument("--keyframes", default=None, metavar="FILE.json",
                   help=f"a JSON list of 1..{MAX_KEYFRAMES} transforms with the keys translate [x, y, z], rotate_axis "
                        "[x, y, z], rotate_deg, scale (a missing key is the identity), spread evenly over the frames")
    p.add_argument("--edits", default=None, metavar="FILE.json",
                   help='several objects, each on its own track (instead of --keyframes and --mask/--object/--click): '
                        'a JSON list of {"mask": PNG | "object": TEXT | "click": [X, Y], "keyframes": [transforms as '
                        "in --keyframes]} (relative paths relative to the file)")
    p.add_argument("--frames", default=str(DEFAULT_FRAMES), metavar="N",
                   help=f"number of frames, {MIN_FRAMES}..{MAX_FRAMES} (default {DEFAULT_FRAMES}); the first and last are the "
                        "first and last keyframes")
    p.add_argument("--camera", action="store_true",
                   help="the keyframes move the camera instead of an object (as handles edit --camera): no "
                        "--mask/--object/--click, the whole scene is lifted and the disocclusions generated")
    p.add_argument("--fps", default=str(DEFAULT_FPS), metavar="F", help=f"frames per second of the MP4 and GIF (default {DEFAULT_FPS:g})")
    p.add_argument("--fov", metavar="DEG", default=str(DEFAULT_FOV_DEG),
                   help=f"horizontal field of view in degrees (default {DEFAULT_FOV_DEG:g}, Sec. 5.1)")
    p.add_argument("--model", default="stabilityai/stable-diffusion-2-depth", metavar="ID_OR_DIR",
                   help="hub id, local diffusers folder, or 'tinyworld' (default stabilityai/stable-diffusion-2-depth)")
    p.add_argument("--preset", default="default", choices=list(limits.PRESETS),
                   help="method settings as in handles edit (default: default; fast: 20 steps, one gradient step)")
    p.add_argument("--steps", default=None, metavar="N",
                   help=f"DDIM steps, in [{limits.STEPS[0]}, {limits.STEPS[1]}] (default: the preset's)")
    p.add_argument("--seed", default="0", metavar="S", help=f"seed of the VAE posterior sample, in [0, {SEED_MAX}] (default 0)")
    p.add_argument("--device", default="cpu", metavar="cpu|cuda|cuda:N", help="torch device (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="model precision (default float32; half precision needs cuda)")
    p.add_argument("--cache", default=None, metavar="DIR", help="cache folder for the inverted image")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_out_args(p)
    p.set_defaults(func=run)


def _number(text: str, arg: str, lo: float, hi: float, integer: bool = False) -> float:
    from diffusion_handles.errors import HandlesError

    kind = "an integer" if integer else "a number"
    shown = str(text) if len(str(text)) <= 40 else str(text)[:40] + "..."
    try:
        v = int(text) if integer else float(text)
    except (TypeError, ValueError):
        raise HandlesError(f"{arg}: expected {kind} in [{lo:g}, {hi:g}], got {shown!r}") from None
    if not lo <= v <= hi:
        raise HandlesError(f"{arg}: expected {kind} in [{lo:g}, {hi:g}], got {shown}")
    return v


def _read_keyframes(path: str) -> object:
    """The parsed JSON of ``--keyframes`` (checked by :func:`~diffusion_handles.animation.keyframes_from_json`):
    at most ``limits.JSON_BYTES`` read, nested at most ``limits.JSON_DEPTH`` deep."""
    from diffusion_handles.io import read_json_file

    return read_json_file(path, "--keyframes", "a JSON list of transforms")


@dataclass
class _Request:
    """What the flags ask for, validated before any work."""

    mode: str  # "object", "camera" or "multi" (--edits)
    entries: list[EditEntry] | None  # --edits
    edits: list  # per frame: one HandleEdit, or with --edits one per object
    n_frames: int
    fps: float
    fov: float
    inversion: InversionConfig
    guidance: GuidanceConfig
    seed: int


def _frame_edits(args: argparse.Namespace, mode: str, n_frames: int) -> tuple[list[EditEntry] | None, list]:
    """``(entries of --edits or None, the edit of every frame)``, interpolated between the keyframes."""
    from diffusion_handles.animation import interpolate_keyframes, keyframes_from_json
    from diffusion_handles.cli.edit_modes import parse_edits_file

    if mode != "multi":
        return None, interpolate_keyframes(keyframes_from_json(_read_keyframes(args.keyframes)), n_frames)
    entries = parse_edits_file(args.edits, keyframes=True)
    tracks = [interpolate_keyframes(e.keyframes, n_frames, f"--edits: [{e.index}].keyframes") for e in entries]
    return entries, [[t[i] for t in tracks] for i in range(n_frames)]  # per frame, one edit per object


def _request_from_args(args: argparse.Namespace) -> _Request:
    from diffusion_handles.animation import MAX_FRAMES
    from diffusion_handles.cli.common import check_device, fov_from_args, parse_seed
    from diffusion_handles.cli.edit_modes import check_mode_args
    from diffusion_handles.diffusion.config import preset
    from diffusion_handles.errors import HandlesError

    n_frames = int(_number(args.frames, "--frames", MIN_FRAMES, MAX_FRAMES, integer=True))
    fps = _number(args.fps, "--fps", 0.5, 60)
    fov = fov_from_args(args)
    steps = None if args.steps is None else int(_number(args.steps, "--steps", *limits.STEPS, integer=True))
    inversion, guidance = preset(args.preset, steps)
    seed = parse_seed(args.seed)
    if not args.prompt.strip():
        raise HandlesError("--prompt: expected a text describing the image, got an empty string")
    if (args.keyframes is None) == (args.edits is None):
        raise HandlesError("--keyframes: expected either --keyframes (one object or the camera) or --edits (several "
                           f"objects), got {'both' if args.keyframes else 'neither'}")
    mode = check_mode_args(args)  # "object", "camera" or "multi" (--edits)
    entries, edits = _frame_edits(args, mode, n_frames)
    check_device(args.device)
    return _Request(mode, entries, edits, n_frames, fps, fov, inversion, guidance, seed)


def _invert(dh, args: argparse.Namespace, req: _Request, inputs: ModeInputs, progress=None):
    """Invert IMAGE, in the edit window that holds every frame's edit when the photo is larger
    than the model's size (``DiffusionHandles.edit_window``)."""
    from diffusion_handles.cli.common import windowed
    from diffusion_handles.pipeline import edit_target

    image, depth, mask = inputs.image, inputs.depth, inputs.mask
    guidance, seed = req.guidance, req.seed
    targets = [edit_target(e, camera=args.camera, object_masks=inputs.object_masks) for e in req.edits]
    inversion = windowed(dh, req.inversion, depth, mask, *targets, fov_deg=req.fov)
    return dh.invert(image, args.prompt, depth, mask, inversion=inversion, guidance=guidance, seed=seed,
                     callback=progress)


def _estimate_note(progress, n_frames: int, steps: int, first_frame_s: float | None = None) -> str | None:
    """The animation's estimate, before its frames start (from the inversion's step times) or
    after the first frame (from its measured time)."""
    from diffusion_handles.progress import format_seconds

    frames = [s for s in progress.plan if s.key == "guided_generation"]
    if first_frame_s is None:
        est = progress.estimate(frames)
        if est is None:
            return None
        return (f"{n_frames} frames of {steps} steps, about {format_seconds(est)} "
                "(estimated from the inversion's step times)")
    est = progress.estimate(frames[1:])
    if n_frames < 2 or est is None:
        return None
    return (f"frame 1 took {format_seconds(first_frame_s)}; about {format_seconds(est)} for the other "
            f"{n_frames - 1} frames")


def _animate(dh, inv, args: argparse.Namespace, req: _Request, inputs: ModeInputs,
             progress) -> tuple[list, list[dict], list]:
    """One guided edit per frame from the one inversion: ``(frames (H, W, 3) uint8, per-frame
    records, per-frame costs)``; the estimate of the time they take is printed before they start
    and after the first one."""
    from types import SimpleNamespace

    import numpy as np

    from diffusion_handles.animation import run_frames
    from diffusion_handles.pipeline import edit_target
    from diffusion_handles.progress import forward_equivalents

    image, background, object_masks = inputs.image, inputs.background, inputs.object_masks
    depth, mask = inputs.depth, inputs.mask
    guidance, fov, mode = req.guidance, req.fov, req.mode
    records: list[dict] = []
    costs: list = []
    printer = progress.printer
    note = _estimate_note(progress, req.n_frames, req.inversion.num_steps)
    if printer is not None and note:
        printer.note(note)

    def frame(i: int, e) -> np.ndarray:
        t = time.perf_counter()
        target = edit_target(e, camera=args.camera, object_masks=object_masks)
        out = dh.edit(inv, target, guidance=guidance, background_depth=background, fov_deg=fov, source_image=image,
                      source_depth=depth, source_mask=mask,
                      callback=progress.callback("guided_generation", f"frame {i + 1}/{req.n_frames}"))
        done = {"edits": [x.to_dict() for x in e]} if mode == "multi" else {"edit": e.to_dict()}
        seconds = time.perf_counter() - t
        records.append({"frame": i, **done, "seconds": seconds, "fwd_eq": forward_equivalents(out.unet_evals),
                        "seconds_by_stage": dict(out.timings)})
        costs.append(SimpleNamespace(unet_evals=out.unet_evals, timings=out.timings))
        if i == 0 and printer is not None:
            later = _estimate_note(progress, req.n_frames, req.inversion.num_steps, seconds)
            if later:
                printer.note(later)
        return (out.edited[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()

    return run_frames(frame, req.edits), records, costs


def run(args: argparse.Namespace) -> int:
    from diffusion_handles.animation import mp4_available
    from diffusion_handles.cli.common import (
        check_out,
        command_progress,
        cost_summary,
        set_threads,
        silence_progress_bars,
        started,
    )
    from diffusion_handles.cli.inputs import check_models, load_mode_inputs

    t_start = started(args)
    check_out(args)
    req = _request_from_args(args)
    check_models(args, req.mode)  # before transformers/diffusers are imported (perception or the backbone)
    mp4 = mp4_available()  # without the 'video' extra: the GIF only, said in the closing line
    if args.quiet:
        silence_progress_bars()
    inputs = load_mode_inputs(args, req.mode, req.entries, "animate")
    from diffusion_handles.pipeline import DiffusionHandles

    dh = DiffusionHandles.from_pretrained(args.model, device=args.device, dtype=args.dtype, cache_dir=args.cache)
    dh.set_progress_bar_config(disable=True)  # progress lines instead, per stage and frame (command_progress)
    set_threads(dh, None)  # small models: one thread is fastest (see handles edit)
    t_load = time.perf_counter() - t_start
    from diffusion_handles.progress import plan_for

    progress = command_progress(args, plan_for(req.inversion, req.guidance, edits=req.n_frames, frames=True))
    t0 = time.perf_counter()
    inv = _invert(dh, args, req, inputs, progress)
    t_invert = time.perf_counter() - t0
    t0 = time.perf_counter()
    frames, records, costs = _animate(dh, inv, args, req, inputs, progress)
    t_frames = time.perf_counter() - t0
    timings = {"load": t_load, "inversion": t_invert, "frames": t_frames, "per_frame": t_frames / req.n_frames}
    summary = _summary(args, req, dh, inv, records, timings)
    summary["cost"] = cost_summary(inv, costs, t_invert)
    _write(args.out, inputs.image, frames, req.fps, summary, mp4=mp4)
    from diffusion_handles.hub import needs_extra

    files = f"frames/, {'animation.mp4, ' if mp4 else ''}animation.gif, comparison.png, summary.json"
    print(f"animation written to {args.out} in {time.perf_counter() - t_start:.1f} s: {req.n_frames} frames in "
          f"{t_frames:.1f} s ({t_frames / req.n_frames:.2f} s per frame, inversion {t_invert:.1f} s): {files}"
          + ("" if mp4 else f"; no animation.mp4 ({needs_extra('MP4', 'video')})"))
    return 0


def _summary(args: argparse.Namespace, req: _Request, dh, inv, records: list[dict], timings: dict) -> dict:
    """``summary.json``: inputs, model, settings, per-frame edits and timings."""
    mode = req.mode
    return {
        "command": "animate",
        "inputs": {"image": str(args.image), "depth": str(args.depth), "mask": str(args.mask),
                   "keyframes": str(args.keyframes), "edits": str(args.edits), "prompt": args.prompt,
                   "size_hw": list(inv.input_hw)},
        "model": {"id": dh.backbone.model_id, "device": str(dh.backbone.device)},
        "moves": {"camera": "camera", "multi": "objects", "object": "object"}[mode],
        "config": {"preset": args.preset, "inversion": inv.config.to_dict(), "guidance": req.guidance.to_dict(),
                   "seed": req.seed, "fov_deg": req.fov, "frames": req.n_frames, "fps": req.fps},
        "interpolation": "translation linear, rotation slerp (angle interpolated about a shared axis), scale geometric",
        **({"objects": [e.to_json() for e in req.entries]} if mode == "multi" else {}),
        "frames": records,
        "inversion": {"cache_hit": inv.cache_hit, "key": inv.key},
        "timings_s": timings,
    }


def _write(out_dir: str, image: Any, frames: list, fps: float, summary: dict, mp4: bool = True) -> None:
    """frames/NNNN.png, animation.mp4 (with ``mp4``), animation.gif, comparison.png (input and five
    frames) and summary.json, written into ``out_dir`` whole or not at all."""
    import json

    import torch
    from PIL import Image

    from diffusion_handles.animation import display_frames, write_gif, write_mp4
    from diffusion_handles.io import save_image
    from diffusion_handles.outputs import atomic_output_dir
    from diffusion_handles.viz import side_by_side

    n_frames = len(frames)
    shown = display_frames(frames)
    picks = sorted({round(i * (n_frames - 1) / 4) for i in range(5)})
    with atomic_output_dir(out_dir) as tmp:
        (tmp / "frames").mkdir()
        for i, f in enumerate(frames):
            Image.fromarray(f).save(tmp / "frames" / f"{i:04d}.png")
        if mp4:
            write_mp4(shown, tmp / "animation.mp4", fps)
        write_gif(shown, tmp / "animation.gif", fps)
        save_image(tmp / "comparison.png", side_by_side(
            [("input", image)] + [(f"frame {i}", torch.from_numpy(frames[i]).permute(2, 0, 1)[None].float() / 255)
                                  for i in picks]))
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
