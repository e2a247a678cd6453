"""``handles edit``: the full method on one image: invert (or reuse the cache), 3D-edit, generate."""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from diffusion_handles import limits
from diffusion_handles.cli.common import (
    MAX_THREADS,
    SEED_MAX,
    add_out_args,
    add_transform_args,
    check_device,
    check_out,
    command_progress,
    cost_summary,
    edit_from_args,
    effects_summary,
    fov_from_args,
    parse_int,
    parse_seed,
    parse_steps,
    restore_progress_bars,
    set_threads,
    silence_progress_bars,
    started,
    windowed,
)
from diffusion_handles.cli.edit_modes import (
    EditEntry,
    add_mode_args,
    check_mode_args,
    parse_edits_file,
)
from diffusion_handles.cli.inputs import (
    ModeInputs,
    add_edit_input_args,
    check_models,
    load_mode_inputs,
)
from diffusion_handles.errors import HandlesError

if TYPE_CHECKING:
    from diffusion_handles.diffusion.config import GuidanceConfig, InversionConfig
    from diffusion_handles.geometry.transform import HandleEdit

DEFAULT_MODEL = "stabilityai/stable-diffusion-2-depth"  # same as diffusion.backbone.DEFAULT_MODEL


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "edit",
        help="3D-edit an object with Diffusion Handles (inversion + guided generation)",
        description="Invert IMAGE into a depth-conditioned diffusion model, move the masked object in 3D and "
        "generate the edited image guided by the 3D-transformed activations (Sec. 5 of the paper). "
        "--camera moves the camera instead; --edits FILE.json moves several objects in one pass.",
    )
    add_edit_input_args(p, prompt_help="text prompt describing the image",
                        mask_help="object mask PNG (pixels >= 128 are the object), same size as IMAGE "
                                  "(or --object TEXT / --click X,Y)",
                        background_help="optional z-depth of the scene without the object (d'_b); default: harmonic "
                                        "fill of the object region")
    add_transform_args(p)
    add_mode_args(p)
    p.add_argument("--restyle", default=None, metavar="TEXT",
                   help="the object's new look, e.g. 'a red striped sphere': the words of --prompt that name the "
                        "object are replaced by TEXT for the generation (the inversion keeps --prompt), and the new "
                        "look follows the 3D edit; one object (not with --camera or --edits)")
    p.add_argument("--restyle-words", default=None, metavar="WORDS",
                   help="with --restyle: the words of --prompt that name the object, e.g. 'orange cylinder' "
                        "(default: the one object the prompt names, the part before ' on ', or the whole prompt "
                        "when it has no ' on '; needed when it names several)")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="ID_OR_DIR",
                   help=f"hub id, local diffusers folder, or 'tinyworld' (default {DEFAULT_MODEL})")
    p.add_argument("--preset", default="default", choices=list(limits.PRESETS),
                   help="default: null-text inversion, normalized guidance, input kept outside the edit region; "
                        "paper: the paper's settings exactly; fast: negative-prompt inversion, 20 steps, one gradient "
                        "step (65 UNet forward-equivalents per edit); draft: the same on 10 steps, a tenth of the "
                        "default's work (34 per edit, 20 to invert)")
    p.add_argument("--guidance-mode", default=None, choices=["normalized", "paper"],
                   help="gradient-step rule (default: the preset's): normalized (scale-free energies, steps relative "
                        "to the noise level) or paper (raw energies, step 0.1 on the latent)")
    p.add_argument("--composite", default=None, choices=["on", "off"],
                   help="keep the input's pixels outside the edit region, feathered seam (default: the preset's)")
    p.add_argument("--complete-back", action="store_true",
                   help="one-object edits: give the side a rotation uncovers the depth of the object's back, mirrored "
                        "from its front, instead of the background's (not in the paper)")
    p.add_argument("--blend-latents", action="store_true",
                   help="replace the latent outside the edit region by the inversion's during guidance")
    p.add_argument("--identity-transfer", default=None, metavar="F",
                   help="after this fraction of the steps, set the object's latents to the inversion's warped by the "
                        "3D flow, or 'off' (default: the preset's, 0.7; paper: off)")
    p.add_argument("--transfer-source", default=None, choices=["latent", "pixels"],
                   help="what the identity transfer warps: the inversion's latent, or its clean part re-encoded from "
                        "the image warped in pixels, sharper (default: the preset's, pixels)")
    p.add_argument("--steps", default=None, metavar="N",
                   help=f"DDIM steps, in [{limits.STEPS[0]}, {limits.STEPS[1]}] (default: the preset's, 50 (Sec. 5); "
                        "fast: 20)")
    p.add_argument("--guidance-steps", default=None, metavar="N",
                   help="guide steps 0..N-1, N at most --steps (default 38 of 50, scaled to --steps; Sec. 5.2)")
    p.add_argument("--grad-steps", default=None, metavar="K",
                   help=f"gradient steps on the latent per guided step, in [{limits.GRAD_STEPS[0]}, "
                        f"{limits.GRAD_STEPS[1]}] (default: the preset's, 3; fast: 1)")
    p.add_argument("--inversion", default=None, choices=["null-text", "ddim", "negative-prompt"],
                   help="inversion method (default: the preset's, null-text as the paper; fast: negative-prompt)")
    p.add_argument("--seed", default="0", metavar="S",
                   help=f"seed of the VAE posterior sample, an integer in [0, {SEED_MAX}] (default 0)")
    p.add_argument("--device", default="cpu", metavar="cpu|cuda|cuda:N",
                   help="torch device of every model (default cpu); checked before any model loads")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="model precision (default float32; half precision needs cuda)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="cache folder for inverted images: a second edit of the same inputs skips inversion")
    p.add_argument("--threads", default="auto", metavar="N",
                   help=f"CPU threads for torch, in [1, {MAX_THREADS}] (default auto: 1 for small models, where intra-op "
                        "threads only contend, else torch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (weight loading included)")
    add_out_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    finally:
        restore_progress_bars()  # --quiet lasts for this command only (main() may run in-process)


@dataclass
class _Request:
    """What the flags ask for, validated before any work."""

    mode: str  # "object", "camera" (--camera) or "multi" (--edits)
    entries: list[EditEntry] | None  # --edits
    edit: HandleEdit  # the transform flags
    fov: float
    inversion: InversionConfig
    guidance: GuidanceConfig
    seed: int
    threads: int | None  # None: auto
    restyle: str | None = None  # --restyle: the object's new look
    restyle_words: str | None = None  # --restyle-words: the prompt's words naming the object (None: the library finds them)


def _identity_transfer(value: str) -> float | None:
    """``--identity-transfer``: a fraction of the steps in [0, 1), or ``None`` for 'off'."""
    if value == "off":
        return None
    try:
        f = float(value)
    except ValueError:
        f = -1.0
    if not 0.0 <= f < 1.0:
        raise HandlesError(f"--identity-transfer: expected a fraction of the steps in [0, 1) or 'off', got {value!r}")
    return f


def _restyle_from_args(args: argparse.Namespace, mode: str) -> tuple[str | None, str | None]:
    """``(--restyle, --restyle-words)``, checked against ``--prompt`` by the library's own rule
    (:func:`~diffusion_handles.diffusion.prompts.restyle_prompt`) before any work."""
    text, words = args.restyle, args.restyle_words
    if text is None:
        if words is not None:
            raise HandlesError("--restyle-words: expected --restyle with it (the object's new look), got "
                               "--restyle-words alone")
        return None, None
    if mode != "object":
        other = "--camera (a camera move restyles no object)" if mode == "camera" else "--edits (one object at a time)"
        raise HandlesError(f"--restyle: expected a one-object edit, got {other}")
    from diffusion_handles.diffusion.prompts import restyle_prompt

    try:
        restyle_prompt(args.prompt, text, words)
    except HandlesError as e:  # the library names its parameters; the user gave flags
        raise HandlesError(restyle_flags(str(e))) from None
    return text, words


def restyle_flags(message: str) -> str:
    """A restyle error of the library (``restyle: ...``, ``restyle_words: ...``) as the flags name it."""
    for name, flag in (("restyle_words", "--restyle-words"), ("restyle", "--restyle")):
        if message.startswith(f"{name}:"):
            message = flag + message[len(name):]
            break
    return message.replace("pass restyle_words", "pass --restyle-words")


def _guidance_overrides(args: argparse.Namespace, mode: str, guide_until: int | None) -> dict:
    """The guidance fields the flags set over the preset's."""
    over: dict = {} if guide_until is None else {"guide_until": guide_until}  # None: the preset's
    if args.grad_steps is not None:
        over["grad_steps"] = parse_int(args.grad_steps, "--grad-steps", *limits.GRAD_STEPS)
    if args.guidance_mode is not None:
        over["mode"] = args.guidance_mode
    if args.composite is not None:
        over["composite"] = args.composite == "on"
    if args.blend_latents:
        over["blend_latents"] = True
    if args.complete_back:
        if mode != "object":
            raise HandlesError("--complete-back: applies to one-object edits, not to --camera or --edits")
        over["complete_back"] = True
    if args.transfer_source is not None:
        over["transfer_source"] = args.transfer_source
    if args.identity_transfer is not None:
        over["identity_transfer"] = _identity_transfer(args.identity_transfer)
    return over


def _configs_from_args(args: argparse.Namespace, mode: str) -> tuple[InversionConfig, GuidanceConfig, int]:
    """``--preset`` with ``--steps``, ``--inversion`` and the guidance flags over it, and ``--seed``."""

    from diffusion_handles.diffusion.config import preset

    steps = None if args.steps is None else parse_steps(args.steps)
    inversion, guidance = preset(args.preset, steps)
    steps = inversion.num_steps
    seed = parse_seed(args.seed)
    guide_until = (None if args.guidance_steps is None
                   else parse_int(args.guidance_steps, "--guidance-steps", 0, limits.STEPS[1]))
    if guide_until is not None and guide_until > steps:
        raise HandlesError(f"--guidance-steps: expected at most --steps ({steps}), got {guide_until}")
    if not args.prompt.strip():
        raise HandlesError("--prompt: expected a text describing the image, got an empty string")
    if args.inversion is not None:
        inversion = dataclasses.replace(inversion, method=args.inversion)
    over = _guidance_overrides(args, mode, guide_until)
    try:
        guidance = dataclasses.replace(guidance, **over)
    except ValueError as e:
        raise HandlesError(f"guidance: {e}") from None
    return inversion, guidance, seed


def _request_from_args(args: argparse.Namespace) -> _Request:
    mode = check_mode_args(args)
    entries = parse_edits_file(args.edits) if mode == "multi" else None
    edit = edit_from_args(args)
    fov = fov_from_args(args)
    inversion, guidance, seed = _configs_from_args(args, mode)
    restyle, restyle_words = _restyle_from_args(args, mode)
    check_device(args.device)
    threads = None if args.threads == "auto" else parse_int(args.threads, "--threads", 1, MAX_THREADS)
    return _Request(mode, entries, edit, fov, inversion, guidance, seed, threads, restyle, restyle_words)


def _invert_and_edit(dh, args: argparse.Namespace, req: _Request, inputs: ModeInputs) -> tuple[Any, Any, float]:
    """Invert IMAGE (or load it from ``--cache``), then edit; returns ``(inv, out, inversion seconds)``."""
    from diffusion_handles.pipeline import edit_target
    from diffusion_handles.progress import plan_for

    image, depth, mask, background = inputs.image, inputs.depth, inputs.mask, inputs.background
    object_masks, mode, entries, edit, fov = inputs.object_masks, req.mode, req.entries, req.edit, req.fov
    inversion, guidance, seed = req.inversion, req.guidance, req.seed
    progress = command_progress(args, plan_for(inversion, guidance))
    target = edit_target([e.edit for e in entries] if mode == "multi" else edit, camera=mode == "camera",
                         object_masks=object_masks)
    inversion = windowed(dh, inversion, depth, mask, target, fov_deg=fov)  # photos larger than the model's size
    t0 = time.perf_counter()
    inv = dh.invert(image, args.prompt, depth, mask, inversion=inversion, guidance=guidance, seed=seed,
                    callback=progress)
    t_invert = time.perf_counter() - t0
    out = dh.edit(inv, target, guidance=guidance, background_depth=background, fov_deg=fov, source_image=image,
                  source_depth=depth, source_mask=mask, restyle=req.restyle, restyle_words=req.restyle_words, callback=progress.callback("guided_generation"))
    return inv, out, t_invert


def _run(args: argparse.Namespace) -> int:
    t_start = started(args)
    check_out(args)  # before any work: a bad --out is refused at once, not after the edit
    req = _request_from_args(args)
    check_models(args, req.mode)  # before transformers/diffusers are imported (perception or the backbone)
    if args.quiet:
        silence_progress_bars()
    inputs = load_mode_inputs(args, req.mode, req.entries, "edit")
    t_load = time.perf_counter() - t_start

    from diffusion_handles.pipeline import DiffusionHandles

    t0 = time.perf_counter()
    dh = DiffusionHandles.from_pretrained(args.model, device=args.device, dtype=args.dtype, cache_dir=args.cache)
    dh.set_progress_bar_config(disable=True)  # progress lines instead, per stage with the time left (command_progress)
    t_model = time.perf_counter() - t0
    set_threads(dh, req.threads)
    inv, out, t_invert = _invert_and_edit(dh, args, req, inputs)
    timings = {"load_inputs": t_load, "load_model": t_model, "invert": t_invert}
    _write(args.out, inputs, out, _summary(args, req, inputs, dh.backbone, inv, out, timings))
    state = "inversion loaded from cache" if inv.cache_hit else f"inverted ({req.inversion.method})"
    if req.restyle is not None:
        state += f"; restyled, generated with the prompt {out.prompt!r}"
    print(f"edit written to {args.out} in {time.perf_counter() - t_start:.1f} s ({state}; edit "
          f"{sum(out.timings.values()):.1f} s): {', '.join(_written(inputs))}")
    return 0


def _written(inputs: ModeInputs) -> list[str]:
    """The files :func:`_write` writes, in its order."""
    files = ["edited.png", "reconstruction.png", "edited_depth.png", "edited_depth.npy", "edited_mask.png",
             "region.png", "effects_region.png", "comparison.png"]
    if inputs.prepared is not None:
        files += ["depth.npy", "mask.png", "background_depth.npy"]
    return [*files, "summary.json"]


def _summary(args: argparse.Namespace, req: _Request, inputs: ModeInputs, bb, inv, out, timings: dict) -> dict:
    """``summary.json``: inputs, model, settings, timings, UNet evaluations and energies of the edit."""
    import torch

    mode, entries, fov = req.mode, req.entries, req.fov
    t_invert = timings["invert"]
    summary = {
        "command": "edit",
        "inputs": {"image": str(args.image), "depth": str(args.depth), "mask": str(args.mask),
                   "background_depth": args.background_depth, "prompt": args.prompt,
                   "restyle": req.restyle, "restyle_words": req.restyle_words,
                   "generation_prompt": out.prompt,
                   "size_hw": list(inv.input_hw), "work_size_hw": list(inv.image.shape[-2:])},
        "model": {"id": bb.model_id, "device": str(bb.device), "dtype": str(bb.dtype).replace("torch.", ""),
                  "cpu_threads": torch.get_num_threads(),
                  "scaling_factor": bb.scaling_factor, "up_blocks": bb.num_up_blocks},
        "mode": mode,
        "transform": ({"edits": [e.to_json() for e in entries], "fov_deg": fov} if mode == "multi" else
                      {"edit": req.edit.to_dict(), "moves": "camera" if mode == "camera" else "object", "fov_deg": fov}),
        "config": {"preset": args.preset, "inversion": inv.config.to_dict(), "guidance": out.config, "seed": req.seed},
        "inversion": {
            "cache_hit": inv.cache_hit, "skipped": inv.cache_hit, "key": inv.key,
            "cache_dir": args.cache, "null_losses": inv.null_losses,
            "recorded_activations": len(inv.activations), "activation_bytes": inv.activation_bytes,
            "timings_s_when_computed": inv.timings,
        },
        "timings_s": {
            "load_inputs": timings["load_inputs"], "load_model": timings["load_model"],
            "inversion": 0.0 if inv.cache_hit else t_invert,
            "cache_load": t_invert if inv.cache_hit else 0.0,
            **{f"edit_{k}": v for k, v in out.timings.items()},
        },
        "unet_evals": {
            "counting": "forward = samples through the UNet (classifier-free guidance counts 2 per step, conditional and unconditional); backward = backward passes",
            "inversion": {} if inv.cache_hit else inv.unet_evals,
            "edit": out.unet_evals,
        },
        "cost": cost_summary(inv, [out], t_invert),
        "effects": effects_summary(out),
        "energies": {str(k): v for k, v in out.energies.items()},
        "energy_monitor": {str(k): v for k, v in out.monitor.items()},
    }
    if mode == "multi":
        summary["inputs"]["edits"] = str(args.edits)
        summary["results"] = {"objects": len(entries), "object_pixels": [int(m.sum()) for m in inputs.object_masks],
                              "edited_object_pixels": int((out.edited_mask > 0.5).sum()),
                              "hole_pixels": int((out.valid_mask < 0.5).sum())}
    elif mode == "camera":
        summary["results"] = {"hole_pixels": int((out.valid_mask < 0.5).sum())}
    if inputs.perception_info is not None:
        summary["perception"] = inputs.perception_info
    prepared = inputs.prepared
    if prepared is not None:
        summary["perception"] = {**prepared.info, "depth_kind": prepared.depth_kind, "candidates": prepared.candidates}
    return summary


def _write(out_dir: str, inputs: ModeInputs, out, summary: dict) -> None:
    """Write the edit's images, depth and ``summary.json`` into ``out_dir`` (whole or not at all)."""
    import json

    import numpy as np

    from diffusion_handles.io import save_image
    from diffusion_handles.outputs import atomic_output_dir
    from diffusion_handles.viz import colorize_depth, side_by_side

    prepared = inputs.prepared
    with atomic_output_dir(out_dir) as tmp:
        save_image(tmp / "edited.png", out.edited)
        save_image(tmp / "reconstruction.png", out.reconstruction)
        depth_rgb = colorize_depth(out.edited_depth)
        save_image(tmp / "edited_depth.png", depth_rgb)
        np.save(tmp / "edited_depth.npy", out.edited_depth[0, 0].numpy().astype(np.float32))
        save_image(tmp / "edited_mask.png", out.edited_mask)
        save_image(tmp / "region.png", out.region)
        save_image(tmp / "effects_region.png", out.effects)
        save_image(tmp / "comparison.png", side_by_side([
            ("input", inputs.image), ("3D preview", out.preview), ("edited", out.edited),
        ]))
        if prepared is not None:  # what the perception stages produced, reusable as --depth / --mask
            np.save(tmp / "depth.npy", prepared.depth[0, 0].numpy().astype(np.float32))
            save_image(tmp / "mask.png", prepared.mask)
            np.save(tmp / "background_depth.npy", prepared.background_depth[0, 0].numpy().astype(np.float32))
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
