"""``handles edit``: the full method on one image: invert (or reuse the cache), 3D-edit, generate."""

from __future__ import annotations

import argparse

from diffusion_handles.cli.common import (
    SEED_MAX,
    add_out_args,
    add_transform_args,
    check_device,
    check_out,
    edit_from_args,
    fov_from_args,
    parse_seed,
    restore_progress_bars,
    silence_progress_bars,
)
from diffusion_handles.cli.edit_modes import add_mode_args
from diffusion_handles.cli.perception_args import (
    add_object_args,
    add_perception_args,
    check_one_object_source,
    clicks_from_args,
    perception_config_from_args,
)

DEFAULT_MODEL = "stabilityai/stable-diffusion-2-depth"  # same as diffusion.backbone.DEFAULT_MODEL
# Below this UNet size, one CPU thread is faster: the convolutions are too small to split, and on a
# shared 2-core machine OpenMP threads spin against other processes (measured here: a 1.4 M-param
# UNet forward at 32x32 latents took 0.08 s on 1 thread, 4.6 s on 2 threads under load).
SMALL_UNET_PARAMS = 20_000_000


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
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="ID_OR_DIR",
                   help=f"hub id, local diffusers folder, or 'tinyworld' (default {DEFAULT_MODEL})")
    p.add_argument("--preset", default="default", choices=["default", "paper", "fast"],
                   help="default: null-text inversion, normalized guidance, input kept outside the edit region; "
                        "paper: the paper's settings exactly; fast: negative-prompt inversion, 20 steps, one gradient "
                        "step (65 UNet forward-equivalents per edit)")
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
    p.add_argument("--steps", default=None, metavar="N", help="DDIM steps (default: the preset's, 50 (Sec. 5); fast: 20)")
    p.add_argument("--guidance-steps", default=None, metavar="N",
                   help="guide steps 0..N-1 (default 38 of 50, scaled to --steps; Sec. 5.2)")
    p.add_argument("--grad-steps", default=None, metavar="K",
                   help="gradient steps on the latent per guided step (default: the preset's, 3; fast: 1)")
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
                   help="CPU threads for torch (default auto: 1 for small models, where intra-op "
                        "threads only contend, else torch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (weight loading included)")
    add_out_args(p)
    p.set_defaults(func=run)


def _int(value: str, arg: str, minimum: int) -> int:
    from diffusion_handles.errors import HandlesError

    try:
        v = int(value)
    except (TypeError, ValueError):
        raise HandlesError(f"{arg}: expected an integer, got {value!r}") from None
    if v < minimum:
        raise HandlesError(f"{arg}: expected an integer >= {minimum}, got {v}")
    return v


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    finally:
        restore_progress_bars()  # --quiet lasts for this command only (main() may run in-process)


def _run(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    import time

    import numpy as np
    import torch

    from diffusion_handles.diffusion.config import preset
    from diffusion_handles.errors import HandlesError
    from diffusion_handles.io import save_image
    from diffusion_handles.outputs import atomic_output_dir
    from diffusion_handles.pipeline import DiffusionHandles
    from diffusion_handles.viz import colorize_depth, side_by_side

    t_start = time.perf_counter()
    check_out(args)  # before any work: a bad --out is refused at once, not after the edit
    from diffusion_handles.cli.edit_modes import check_mode_args, parse_edits_file

    mode = check_mode_args(args)  # "object", "camera" (--camera) or "multi" (--edits)
    entries = parse_edits_file(args.edits) if mode == "multi" else None
    edit = edit_from_args(args)
    fov = fov_from_args(args)
    steps = None if args.steps is None else _int(args.steps, "--steps", 1)
    inversion, guidance = preset(args.preset, steps)
    steps = inversion.num_steps
    seed = parse_seed(args.seed)
    guide_until = None if args.guidance_steps is None else _int(args.guidance_steps, "--guidance-steps", 0)
    if guide_until is not None and guide_until > steps:
        raise HandlesError(f"--guidance-steps: expected at most --steps ({steps}), got {guide_until}")
    if not args.prompt.strip():
        raise HandlesError("--prompt: expected a text describing the image, got an empty string")

    if args.inversion is not None:
        inversion = dataclasses.replace(inversion, method=args.inversion)
    over: dict = {"guide_until": guide_until}
    if args.grad_steps is not None:
        over["grad_steps"] = _int(args.grad_steps, "--grad-steps", 0)
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
        if args.identity_transfer == "off":
            over["identity_transfer"] = None
        else:
            try:
                f = float(args.identity_transfer)
            except ValueError:
                f = -1.0
            if not 0.0 <= f < 1.0:
                raise HandlesError(f"--identity-transfer: expected a fraction of the steps in [0, 1) or 'off', got {args.identity_transfer!r}")
            over["identity_transfer"] = f
    try:
        guidance = dataclasses.replace(guidance, **over)
    except ValueError as e:
        raise HandlesError(f"guidance: {e}") from None

    check_device(args.device)
    threads = None if args.threads == "auto" else _int(args.threads, "--threads", 1)
    if args.quiet:
        silence_progress_bars()
    object_masks = None
    perception_info = None
    if mode == "camera":
        from diffusion_handles.cli.edit_modes import load_camera_inputs

        image, depth, mask, perception_info = load_camera_inputs(args)
        background, prepared = None, None
    elif mode == "multi":
        from diffusion_handles.cli.edit_modes import load_multi_inputs

        image, depth, object_masks, mask, background, prepared = load_multi_inputs(args, entries, "edit")
    else:
        image, depth, mask, background, prepared = load_edit_inputs(args, "edit")
    t_load = time.perf_counter() - t_start

    t0 = time.perf_counter()
    dh = DiffusionHandles.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    t_model = time.perf_counter() - t0
    if threads is None and sum(p.numel() for p in dh.backbone.unet.parameters()) < SMALL_UNET_PARAMS:
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)

    t0 = time.perf_counter()
    inv = dh.invert(image, args.prompt, depth, mask, inversion=inversion, guidance=guidance, seed=seed,
                    cache_dir=args.cache, progress=not args.quiet)
    t_invert = time.perf_counter() - t0
    out = dh.edit(inv, [e.edit for e in entries] if mode == "multi" else edit, guidance=guidance,
                  background_depth=background, fov_deg=fov, source_image=image, camera=mode == "camera",
                  object_masks=object_masks, progress=not args.quiet)

    bb = dh.backbone
    summary = {
        "command": "edit",
        "inputs": {"image": str(args.image), "depth": str(args.depth), "mask": str(args.mask),
                   "background_depth": args.background_depth, "prompt": args.prompt,
                   "size_hw": list(inv.input_hw), "work_size_hw": list(inv.image.shape[-2:])},
        "model": {"id": bb.model_id, "device": str(bb.device), "dtype": str(bb.dtype).replace("torch.", ""),
                  "cpu_threads": torch.get_num_threads(),
                  "scaling_factor": bb.scaling_factor, "up_blocks": bb.num_up_blocks},
        "mode": mode,
        "transform": ({"edits": [e.to_json() for e in entries], "fov_deg": fov} if mode == "multi" else
                      {"edit": edit.to_dict(), "moves": "camera" if mode == "camera" else "object", "fov_deg": fov}),
        "config": {"preset": args.preset, "inversion": inv.config.to_dict(), "guidance": out.config, "seed": seed},
        "inversion": {
            "cache_hit": inv.cache_hit, "skipped": inv.cache_hit, "key": inv.key,
            "cache_dir": args.cache, "null_losses": inv.null_losses,
            "recorded_activations": len(inv.activations), "activation_bytes": inv.activation_bytes,
            "timings_s_when_computed": inv.timings,
        },
        "timings_s": {
            "load_inputs": t_load, "load_model": t_model,
            "inversion": 0.0 if inv.cache_hit else t_invert,
            "cache_load": t_invert if inv.cache_hit else 0.0,
            **{f"edit_{k}": v for k, v in out.timings.items()},
        },
        "unet_evals": {
            "counting": "forward = samples through the UNet (classifier-free guidance counts 2 per step, conditional and unconditional); backward = backward passes",
            "inversion": {} if inv.cache_hit else inv.unet_evals,
            "edit": out.unet_evals,
        },
        "energies": {str(k): v for k, v in out.energies.items()},
        "energy_monitor": {str(k): v for k, v in out.monitor.items()},
    }
    if mode == "multi":
        summary["inputs"]["edits"] = str(args.edits)
        summary["results"] = {"objects": len(entries), "object_pixels": [int(m.sum()) for m in object_masks],
                              "edited_object_pixels": int((out.edited_mask > 0.5).sum()),
                              "hole_pixels": int((out.valid_mask < 0.5).sum())}
    elif mode == "camera":
        summary["results"] = {"hole_pixels": int((out.valid_mask < 0.5).sum())}
    if perception_info is not None:
        summary["perception"] = perception_info
    if prepared is not None:
        summary["perception"] = {**prepared.info, "depth_kind": prepared.depth_kind, "candidates": prepared.candidates}
    with atomic_output_dir(args.out) as tmp:
        save_image(tmp / "edited.png", out.edited)
        save_image(tmp / "reconstruction.png", out.reconstruction)
        depth_rgb = colorize_depth(out.edited_depth)
        save_image(tmp / "edited_depth.png", depth_rgb)
        np.save(tmp / "edited_depth.npy", out.edited_depth[0, 0].numpy().astype(np.float32))
        save_image(tmp / "edited_mask.png", out.edited_mask)
        save_image(tmp / "comparison.png", side_by_side([
            ("input", image), ("3D preview", out.preview), ("edited", out.edited),
        ]))
        if prepared is not None:  # what the perception stages produced, reusable as --depth / --mask
            np.save(tmp / "depth.npy", prepared.depth[0, 0].numpy().astype(np.float32))
            save_image(tmp / "mask.png", prepared.mask)
            np.save(tmp / "background_depth.npy", prepared.background_depth[0, 0].numpy().astype(np.float32))
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    state = "inversion loaded from cache" if inv.cache_hit else f"inverted ({inversion.method})"
    print(f"edit written to {args.out} ({state}; edit {sum(out.timings.values()):.1f} s): edited.png, "
          "reconstruction.png, edited_depth.png, comparison.png, summary.json")
    return 0


def add_edit_input_args(p: argparse.ArgumentParser, *, prompt_help: str, mask_help: str,
                        background_help: str | None = None) -> None:
    """IMAGE, ``--prompt``, ``--depth``, ``--depth-scale``, ``--mask`` / ``--object`` / ``--click``,
    the perception models and (with ``background_help``) ``--background-depth``: the inputs every
    edit-like command reads with :func:`load_edit_inputs`."""
    p.add_argument("image", metavar="IMAGE", help="input image (PNG/JPEG)")
    p.add_argument("--prompt", required=True, metavar="TEXT", help=prompt_help)
    p.add_argument("--depth", default=None, help="z-depth: .npy float (H, W) in scene units, or 16-bit PNG in millimetres "
                   "(default: estimated with --depth-model)")
    p.add_argument("--depth-scale", default="1000",
                   help="16-bit PNG depth: scene units = value / depth-scale (default 1000: millimetres -> metres)")
    p.add_argument("--mask", default=None, help=mask_help)
    add_object_args(p, mask=False)
    add_perception_args(p, depth=True, segment=True, inpaint=True, device=False)
    if background_help is not None:
        p.add_argument("--background-depth", default=None, help=background_help)


def depth_scale_from_args(args: argparse.Namespace) -> float:
    """``--depth-scale`` as a number (its range is checked where a 16-bit PNG depth is read)."""
    from diffusion_handles.errors import HandlesError

    try:
        return float(args.depth_scale)
    except ValueError:
        raise HandlesError(f"--depth-scale: expected a number, got {args.depth_scale!r}") from None


def load_edit_inputs(args: argparse.Namespace, command: str) -> tuple:
    """IMAGE, ``--depth``, ``--mask`` (or ``--object``/``--click``) and ``--background-depth`` of an
    edit-like command, validated; missing depth or mask come from the perception stages (Sec. 5).

    Checks ``--depth-scale`` and that exactly one object source is given first.

    Returns:
        ``(image (1,3,H,W), depth (1,1,H,W), mask (1,1,H,W), background (1,1,H,W) or None,
        prepared)``; ``prepared`` is the :func:`~diffusion_handles.perception.prepare_inputs`
        result when a perception stage ran, else ``None``.
    """
    import sys

    from diffusion_handles.io import (
        check_mask_not_empty,
        check_same_size,
        load_depth,
        load_image,
        load_mask,
    )
    from diffusion_handles.perception import prepare_inputs

    depth_scale = depth_scale_from_args(args)
    check_one_object_source(args)
    image = load_image(args.image, "IMAGE")
    depth = None if args.depth is None else load_depth(args.depth, "--depth", depth_scale)
    mask = None if args.mask is None else load_mask(args.mask, "--mask")
    if depth is not None:
        check_same_size("IMAGE", image, "--depth", depth)
    if mask is not None:
        check_same_size("IMAGE", image, "--mask", mask)
        check_mask_not_empty(mask)
    background = None
    if getattr(args, "background_depth", None) is not None:
        background = load_depth(args.background_depth, "--background-depth", depth_scale)
        check_same_size("IMAGE", image, "--background-depth", background)
    prepared = None
    if depth is None or mask is None:  # perception stages (Sec. 5): all models load before any runs
        prepared = prepare_inputs(image, depth=depth, mask=mask, object_text=args.object,
                                  clicks=clicks_from_args(args), models=perception_config_from_args(args),
                                  need_background=background is None)
        for note in prepared.info["notes"]:
            print(f"handles {command}: note: {note}", file=sys.stderr)
        depth, mask = prepared.depth, prepared.mask
        background = prepared.background_depth if background is None else background
    return image, depth, mask, background, prepared
