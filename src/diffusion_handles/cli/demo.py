"""``handles demo``: the whole method, offline, on the embedded TinyWorld model and a built-in scene.

Renders a held-out TinyWorld scene (never trained on), inverts it into the ``tinyworld`` model,
moves one object in 3D (translate + rotate about its centroid), generates the edited image with
Diffusion Handles' guidance, and re-renders the edited scene as the ground truth.
"""

from __future__ import annotations

import argparse

from diffusion_handles import limits
from diffusion_handles.cli.common import (
    MAX_THREADS,
    add_out_args,
    check_out,
    parse_int,
    restore_progress_bars,
    silence_progress_bars,
    small_model_threads,
    started,
)

MAX_STEPS = limits.STEPS[1]  # the scheduler's training timesteps: more DDIM steps than this do not exist
MIN_STEPS = max(2, limits.STEPS[0])  # the demo's edit needs at least two steps


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the whole method offline on the embedded miniature world",
                              description=__doc__)
    add_out_args(p, required=False, default="out/demo")
    p.add_argument("--steps", type=int, default=50,
                   help=f"DDIM steps in [{MIN_STEPS}, {MAX_STEPS}] (default 50, Sec. 5)")
    p.add_argument("--complete-back", action="store_true",
                   help="give the side the turn uncovers the depth of the sphere's mirrored back (handles edit --complete-back)")
    p.add_argument("--threads", default="auto", metavar="N",
                   help=f"CPU threads for torch, in [1, {MAX_THREADS}] (default auto: 1 for the miniature model, as "
                        "handles edit chooses for small models)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (weight loading included)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    finally:
        restore_progress_bars()  # --quiet lasts for this command only (main() may run in-process)


def _run(args: argparse.Namespace) -> int:
    """Check the flags, run :func:`~diffusion_handles.world.demo.run_demo`, write and print its results."""
    import time

    from diffusion_handles.errors import HandlesError

    t_all = started(args)
    check_out(args)
    if not MIN_STEPS <= args.steps <= MAX_STEPS:
        raise HandlesError(f"--steps: expected an integer in [{MIN_STEPS}, {MAX_STEPS}], got {args.steps}")
    threads = (small_model_threads("tinyworld") if args.threads == "auto"
               else parse_int(args.threads, "--threads", 1, MAX_THREADS))
    if args.quiet:
        silence_progress_bars()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    from diffusion_handles.world.demo import run_demo

    demo = run_demo(args.steps, complete_back=args.complete_back, progress=not args.quiet)
    _write(args.out, demo, args.complete_back, t_all)
    _print(args.out, demo)
    print(f"done in {time.perf_counter() - t_all:.1f} s")
    return 0


# every file _write writes, in its order
FILES = ("input.png", "reconstruction.png", "preview.png", "edited.png", "ground_truth.png", "mask.png",
         "input_depth.npy", "edited_depth.npy", "ground_truth_depth.npy", "comparison.png", "scene.json", "demo.json")


def _write(out_dir: str, demo, complete_back: bool, t_all: float) -> None:
    """Images, depths, the scene and demo.json (settings, metrics, timings) into ``out_dir``."""
    import json
    import time

    import numpy as np

    from diffusion_handles.io import save_image
    from diffusion_handles.outputs import atomic_output_dir
    from diffusion_handles.world.demo import DEMO_OBJECT, DEMO_SEED, comparison_strip

    result, inverted = demo.result, demo.inverted
    strip = comparison_strip(demo)
    with atomic_output_dir(out_dir) as tmp:
        save_image(tmp / "input.png", demo.image)
        save_image(tmp / "reconstruction.png", result.reconstruction)
        save_image(tmp / "preview.png", result.preview)
        save_image(tmp / "edited.png", result.edited)
        save_image(tmp / "ground_truth.png", demo.gt_image)
        save_image(tmp / "mask.png", demo.mask)
        np.save(tmp / "input_depth.npy", demo.source.depth.astype(np.float32))
        np.save(tmp / "edited_depth.npy", result.edited_depth[0, 0].numpy().astype(np.float32))
        np.save(tmp / "ground_truth_depth.npy", demo.ground_truth.depth.astype(np.float32))
        save_image(tmp / "comparison.png", strip)
        (tmp / "scene.json").write_text(demo.scene.to_json())
        (tmp / "demo.json").write_text(json.dumps({
            "seed": DEMO_SEED, "object": DEMO_OBJECT, "caption": demo.source.caption, "edit": demo.edit.to_dict(),
            "complete_back": complete_back,
            "pivot_camera": demo.pivot.tolist(), "metrics": demo.metrics,
            "timings": {**inverted.timings, **result.timings},
            "total_seconds": time.perf_counter() - t_all}, indent=1))


def _print(out_dir: str, demo) -> None:
    from pathlib import Path

    from diffusion_handles.world.demo import DEMO_OBJECT, DEMO_ROTATE_DEG, DEMO_TRANSLATE

    out = Path(out_dir)
    metrics = demo.metrics
    print(f"caption: {demo.source.caption}")
    print(f"edit: object {DEMO_OBJECT}, translate {DEMO_TRANSLATE}, rotate {DEMO_ROTATE_DEG:g} deg about y")
    print("PSNR vs ground truth: edited {:.2f} dB, unedited input {:.2f} dB; reconstruction vs input {:.2f} dB".format(
        metrics["psnr_edited_vs_ground_truth"], metrics["psnr_input_vs_ground_truth"],
        metrics["psnr_reconstruction_vs_input"]))
    for name in FILES:
        print(f"wrote {out / name}")
