"""``handles remove``: remove an object and regenerate its region (and its shadow) over the background."""

from __future__ import annotations

import argparse

from diffusion_handles import limits
from diffusion_handles.cli.common import SEED_MAX, add_out_args, effects_summary, windowed
from diffusion_handles.cli.inputs import add_edit_input_args

DEFAULT_MODEL = "stabilityai/stable-diffusion-2-depth"
# --margin: not a number of its own in limits.py: a margin wider than the largest image side
# (limits.IMAGE_SIDE) covers any image whole, so more is a typo
MAX_MARGIN = limits.MARGIN[1]  # --margin, work-size pixels


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "remove",
        help="remove an object: its region (and shadow) regenerated over the background depth",
        description="Invert IMAGE into the depth-conditioned model, then generate the masked object's region, grown "
        "generously and extended downwards for its shadow, conditioned on the depth of the scene without the object "
        "(d'_b) while the activations outside the region follow the input's; the input is kept outside the region. "
        "--prompt should describe the scene WITHOUT the object.",
    )
    add_edit_input_args(p, prompt_help="text describing the scene without the object (it conditions the regenerated region)",
                        mask_help="mask PNG of the object to remove (pixels >= 128), or --object / --click",
                        background_help="z-depth of the scene without the object (d'_b); default: harmonic fill with "
                                        "a given --depth, inpainting + depth estimation with an estimated one")
    p.add_argument("--margin", default=None, metavar="PX",
                   help=f"how far the regenerated region extends around the object, in pixels of the model's work "
                        f"size, in [1, {MAX_MARGIN}] (default: a quarter of the square root of the object's area, at least 3; twice that further "
                        "down, for the shadow)")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="ID_OR_DIR",
                   help=f"hub id, local diffusers folder, or 'tinyworld' (default {DEFAULT_MODEL})")
    p.add_argument("--preset", default="default", choices=list(limits.PRESETS),
                   help="inversion and guidance settings as in handles edit (fast: 20 steps, one gradient step)")
    p.add_argument("--steps", default=None, metavar="N",
                   help=f"DDIM steps, in [{limits.STEPS[0]}, {limits.STEPS[1]}] (default: the preset's)")
    p.add_argument("--inversion", default=None, choices=["null-text", "ddim", "negative-prompt"],
                   help="inversion method (default: the preset's)")
    p.add_argument("--keep-noise", action="store_true",
                   help="start the region from the inverted noise (default: fresh noise there; the inverted noise "
                        "still encodes the object)")
    p.add_argument("--seed", default="0", metavar="S",
                   help=f"seed of the VAE posterior sample and the region's fresh noise, in [0, {SEED_MAX}] (default 0)")
    p.add_argument("--device", default="cpu", metavar="cpu|cuda|cuda:N", help="torch device of every model (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="model precision (default float32; half precision needs cuda)")
    p.add_argument("--cache", default=None, metavar="DIR", help="cache folder for inverted images")
    p.add_argument("--quiet", action="store_true", help="no progress bars (weight loading included)")
    add_out_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from diffusion_handles.cli.common import restore_progress_bars

    try:
        return _run(args)
    finally:
        restore_progress_bars()


def _configs_from_args(args: argparse.Namespace) -> tuple:
    """``(inversion, guidance, seed, margin)`` from ``--preset``, ``--steps``, ``--inversion``,
    ``--seed`` and ``--margin``, validated."""
    import dataclasses

    from diffusion_handles.cli.common import parse_int, parse_seed, parse_steps
    from diffusion_handles.diffusion.config import preset

    steps = None if args.steps is None else parse_steps(args.steps)
    inversion, guidance = preset(args.preset, steps)
    if args.inversion is not None:
        inversion = dataclasses.replace(inversion, method=args.inversion)
    guidance = dataclasses.replace(guidance, identity_transfer=None)  # nothing to transfer: the object is gone
    seed = parse_seed(args.seed)
    margin = None if args.margin is None else parse_int(args.margin, "--margin", limits.MARGIN[0], MAX_MARGIN)
    return inversion, guidance, seed, margin


def _run(args: argparse.Namespace) -> int:
    import time

    from diffusion_handles.cli.common import (
        check_device,
        check_out,
        command_progress,
        set_threads,
        silence_progress_bars,
        started,
    )
    from diffusion_handles.cli.inputs import check_models, load_edit_inputs
    from diffusion_handles.errors import HandlesError

    t_start = started(args)
    check_out(args)  # before any work
    if not args.prompt.strip():
        raise HandlesError("--prompt: expected a text describing the scene without the object, got an empty string")
    inversion, guidance, seed, margin = _configs_from_args(args)
    check_device(args.device)
    check_models(args, "object")  # before transformers/diffusers are imported (perception or the backbone)
    if args.quiet:
        silence_progress_bars()
    image, depth, mask, background, prepared = load_edit_inputs(args, "remove")
    t_load = time.perf_counter() - t_start

    from diffusion_handles.pipeline import DiffusionHandles

    t0 = time.perf_counter()
    dh = DiffusionHandles.from_pretrained(args.model, device=args.device, dtype=args.dtype, cache_dir=args.cache)
    dh.set_progress_bar_config(disable=True)  # progress lines instead (command_progress)
    t_model = time.perf_counter() - t0
    set_threads(dh, None)
    from diffusion_handles.progress import plan_for

    progress = command_progress(args, plan_for(inversion, guidance, edit_key="removal"))
    from diffusion_handles.geometry import DEFAULT_FOV_DEG

    inversion = windowed(dh, inversion, depth, mask, fov_deg=DEFAULT_FOV_DEG)  # the object's box: the field of view does not matter
    t0 = time.perf_counter()
    inv = dh.invert(image, args.prompt, depth, mask, inversion=inversion, guidance=guidance, seed=seed,
                    callback=progress)
    t_invert = time.perf_counter() - t0
    out = dh.remove(inv, guidance=guidance, background_depth=background, region_margin=margin,
                    noise_seed=None if args.keep_noise else seed, source_image=image,
                    callback=progress.callback("removal"))

    timings = {"load_inputs": t_load, "load_model": t_model, "inversion": 0.0 if inv.cache_hit else t_invert}
    settings = {"seed": seed, "margin_px": margin, "fresh_noise": not args.keep_noise}
    summary = _summary(args, dh.backbone, inv, out, mask, prepared, settings, timings)
    from diffusion_handles.cli.common import cost_summary

    summary["cost"] = cost_summary(inv, [out], t_invert)
    _write(args.out, image, mask, out, prepared, summary)
    files = ["removed.png", "reconstruction.png", "region.png", "effects_region.png", "mask.png", "background_depth.png",
             "background_depth.npy", "comparison.png", *(["depth.npy"] if prepared is not None else []), "summary.json"]
    state = "inversion loaded from cache" if inv.cache_hit else f"inverted ({inversion.method})"
    print(f"removal written to {args.out} in {time.perf_counter() - t_start:.1f} s ({state}; removal "
          f"{sum(out.timings.values()):.1f} s): {', '.join(files)}")
    return 0


def _summary(args: argparse.Namespace, bb, inv, out, mask, prepared, settings: dict, timings: dict) -> dict:
    """``summary.json``: inputs, model, settings, region sizes, timings and UNet evaluations."""
    region = out.region
    summary = {
        "command": "remove",
        "inputs": {"image": str(args.image), "depth": str(args.depth), "mask": str(args.mask),
                   "background_depth": args.background_depth, "prompt": args.prompt,
                   "size_hw": list(inv.input_hw), "work_size_hw": list(inv.image.shape[-2:])},
        "model": {"id": bb.model_id, "device": str(bb.device), "dtype": str(bb.dtype).replace("torch.", "")},
        "config": {"preset": args.preset, "inversion": inv.config.to_dict(), "guidance": out.config, **settings},
        "results": {"object_pixels": int((mask > 0.5).sum()), "region_pixels": int((region > 0.99).sum()),
                    "feathered_pixels": int(((region > 0) & (region <= 0.99)).sum())},
        "inversion": {"cache_hit": inv.cache_hit, "key": inv.key, "cache_dir": args.cache},
        "timings_s": {**timings, **{f"remove_{k}": v for k, v in out.timings.items()}},
        "unet_evals": {"inversion": {} if inv.cache_hit else inv.unet_evals, "remove": out.unet_evals},
        "effects": effects_summary(out),
    }
    if prepared is not None:
        summary["perception"] = {**prepared.info, "depth_kind": prepared.depth_kind, "candidates": prepared.candidates}
    return summary


def _write(out_dir: str, image, mask, out, prepared, summary: dict) -> None:
    """The removal's images, background depth and ``summary.json``, into ``out_dir`` whole or not at all."""
    import json

    import numpy as np

    from diffusion_handles.io import save_image
    from diffusion_handles.outputs import atomic_output_dir
    from diffusion_handles.viz import colorize_depth, side_by_side

    with atomic_output_dir(out_dir) as tmp:
        save_image(tmp / "removed.png", out.edited)
        save_image(tmp / "reconstruction.png", out.reconstruction)
        save_image(tmp / "region.png", out.region)
        save_image(tmp / "effects_region.png", out.effects)
        save_image(tmp / "mask.png", mask)
        depth_rgb = colorize_depth(out.edited_depth)
        save_image(tmp / "background_depth.png", depth_rgb)
        np.save(tmp / "background_depth.npy", out.edited_depth[0, 0].numpy().astype(np.float32))
        save_image(tmp / "comparison.png", side_by_side([
            ("input", image), ("region (magenta)", out.preview), ("removed", out.edited),
            ("background depth", depth_rgb),
        ]))
        if prepared is not None:
            np.save(tmp / "depth.npy", prepared.depth[0, 0].numpy().astype(np.float32))
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
