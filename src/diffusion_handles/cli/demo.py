"""``handles demo``: the whole method, offline, on the embedded TinyWorld model and a built-in scene.

Renders a held-out TinyWorld scene (never trained on), inverts it into the ``tinyworld`` model,
moves one object in 3D (translate + rotate about its centroid), generates the edited image with
Diffusion Handles' guidance, and re-renders the edited scene as the ground truth.
"""

from __future__ import annotations

import argparse

from diffusion_handles.cli.common import (
    add_out_args,
    check_out,
    restore_progress_bars,
    silence_progress_bars,
)

# The built-in scene: a held-out seed (training seeds are 0..999, held-out ones >= 1000000),
# the object to move (index as in mask_K.png) and the 3D edit (camera axes, scene units).
DEMO_SEED = 1_000_024  # "an orange dotted cube and a green checkered sphere on a grey floor by a teal wall"
DEMO_OBJECT = 1  # the green checkered sphere: moved back, uncovering the cube, and turned 45 degrees
DEMO_TRANSLATE = (-0.1, 0.0, 0.7)
DEMO_ROTATE_DEG = 45.0
MAX_STEPS = 1000  # the scheduler's training timesteps: more DDIM steps than this do not exist


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the whole method offline on the embedded miniature world",
                              description=__doc__)
    add_out_args(p, required=False, default="out/demo")
    p.add_argument("--steps", type=int, default=50,
                   help=f"DDIM steps in [2, {MAX_STEPS}] (default 50, Sec. 5)")
    p.add_argument("--complete-back", action="store_true",
                   help="give the side the turn uncovers the depth of the sphere's mirrored back (handles edit --complete-back)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (weight loading included)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    finally:
        restore_progress_bars()  # --quiet lasts for this command only (main() may run in-process)


def _run(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    import numpy as np
    import torch
    import torch.nn.functional as F

    from diffusion_handles.diffusion.config import GuidanceConfig, InversionConfig
    from diffusion_handles.errors import HandlesError
    from diffusion_handles.geometry.transform import HandleEdit
    from diffusion_handles.io import save_image
    from diffusion_handles.outputs import atomic_output_dir
    from diffusion_handles.pipeline import DiffusionHandles
    from diffusion_handles.viz import colorize_depth, side_by_side
    from diffusion_handles.world.render import object_pivot, render, scene_for_seed

    check_out(args)
    if not 2 <= args.steps <= MAX_STEPS:
        raise HandlesError(f"--steps: expected an integer in [2, {MAX_STEPS}], got {args.steps}")
    if args.quiet:
        silence_progress_bars()
    t_all = time.perf_counter()
    torch.manual_seed(0)
    handles = DiffusionHandles.from_pretrained("tinyworld")
    size = handles.backbone.default_size
    scene = scene_for_seed(DEMO_SEED, size, size)
    src = render(scene, seed=scene.seed)
    edit = HandleEdit(translate=DEMO_TRANSLATE, rotate_axis=(0.0, 1.0, 0.0), rotate_deg=DEMO_ROTATE_DEG)
    pivot = object_pivot(src.depth, src.masks[DEMO_OBJECT], scene)  # centroid of lifted mask pixels
    gt = render(scene.with_object_edit(DEMO_OBJECT, edit, pivot), seed=scene.seed)

    image = torch.from_numpy(src.rgb).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, H, W)
    depth = torch.from_numpy(src.depth)[None, None]  # (1, 1, H, W) z-depth, scene units
    mask = torch.from_numpy(src.masks[DEMO_OBJECT].astype(np.float32))[None, None]
    inverted = handles.invert(image, src.caption, depth, mask, inversion=InversionConfig(num_steps=args.steps),
                              progress=not args.quiet)
    result = handles.edit(inverted, edit, fov_deg=scene.fov_deg, source_image=image, progress=not args.quiet,
                          guidance=GuidanceConfig(complete_back=args.complete_back))

    gt_img = torch.from_numpy(gt.rgb).permute(2, 0, 1)[None].float() / 255.0
    gt_depth = torch.from_numpy(gt.depth)[None, None]

    def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(10 * torch.log10(1.0 / F.mse_loss(a.clamp(0, 1), b.clamp(0, 1)).clamp(min=1e-10)))

    metrics = {
        "psnr_edited_vs_ground_truth": psnr(result.edited, gt_img),
        "psnr_input_vs_ground_truth": psnr(image, gt_img),
        "psnr_reconstruction_vs_input": psnr(result.reconstruction, image),
    }

    def big(t: torch.Tensor) -> torch.Tensor:  # nearest-neighbour, panels at least 256 px
        return F.interpolate(t.float(), scale_factor=max(1, -(-256 // size)), mode="nearest")

    strip = side_by_side([
        ("input", big(image)), ("reconstruction", big(result.reconstruction)),
        ("input depth", big(colorize_depth(depth))),
        ("3D preview", big(result.preview)), ("edited", big(result.edited)),
        ("ground truth", big(gt_img)), ("edited depth", big(colorize_depth(result.edited_depth))),
        ("true depth", big(colorize_depth(gt_depth))),
    ])
    with atomic_output_dir(args.out) as tmp:
        save_image(tmp / "input.png", image)
        save_image(tmp / "reconstruction.png", result.reconstruction)
        save_image(tmp / "preview.png", result.preview)
        save_image(tmp / "edited.png", result.edited)
        save_image(tmp / "ground_truth.png", gt_img)
        save_image(tmp / "mask.png", mask)
        np.save(tmp / "input_depth.npy", src.depth.astype(np.float32))
        np.save(tmp / "edited_depth.npy", result.edited_depth[0, 0].numpy().astype(np.float32))
        np.save(tmp / "ground_truth_depth.npy", gt.depth.astype(np.float32))
        save_image(tmp / "comparison.png", strip)
        (tmp / "scene.json").write_text(scene.to_json())
        (tmp / "demo.json").write_text(json.dumps({
            "seed": DEMO_SEED, "object": DEMO_OBJECT, "caption": src.caption, "edit": edit.to_dict(),
            "complete_back": args.complete_back,
            "pivot_camera": pivot.tolist(), "metrics": metrics, "timings": {**inverted.timings, **result.timings},
            "total_seconds": time.perf_counter() - t_all}, indent=1))
    out = Path(args.out)
    print(f"caption: {src.caption}")
    print(f"edit: object {DEMO_OBJECT}, translate {DEMO_TRANSLATE}, rotate {DEMO_ROTATE_DEG:g} deg about y")
    print("PSNR vs ground truth: edited {:.2f} dB, unedited input {:.2f} dB; reconstruction vs input {:.2f} dB".format(
        metrics["psnr_edited_vs_ground_truth"], metrics["psnr_input_vs_ground_truth"],
        metrics["psnr_reconstruction_vs_input"]))
    for name in ("comparison.png", "input.png", "reconstruction.png", "edited.png", "ground_truth.png", "input_depth.npy",
                 "edited_depth.npy", "ground_truth_depth.npy"):
        print(f"wrote {out / name}")
    print(f"done in {time.perf_counter() - t_all:.1f} s")
    return 0
