"""``handles depth IMAGE --out DIR``: monocular depth estimation on its own."""

from __future__ import annotations

import argparse

from diffusion_handles.cli.common import add_out_args, check_out
from diffusion_handles.cli.perception_args import add_perception_args, perception_config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "depth",
        help="estimate z-depth of an image (ZoeDepth / Depth Anything / DPT)",
        description="Estimate the z-depth of IMAGE with a transformers depth model and write depth.npy "
        "(float32 z-depth in scene units), depth16.png (16-bit, millimetres: usable as --depth), "
        "depth.png (colour map, near = bright) and summary.json.",
    )
    p.add_argument("image", metavar="IMAGE", help="input image (PNG/JPEG)")
    add_out_args(p)
    add_perception_args(p, depth=True, segment=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import time

    import numpy as np

    from diffusion_handles.io import load_image, save_depth_png16, save_image
    from diffusion_handles.outputs import atomic_output_dir
    from diffusion_handles.perception.depth import DepthEstimator
    from diffusion_handles.viz import colorize_depth

    check_out(args)
    cfg = perception_config_from_args(args)
    image = load_image(args.image)
    t0 = time.perf_counter()
    estimator = DepthEstimator.load(cfg.depth, bypass=None)
    t1 = time.perf_counter()
    est = estimator.estimate(image)
    t2 = time.perf_counter()
    z = est.depth[0, 0].numpy().astype(np.float32)  # (H, W) z-depth, scene units
    with atomic_output_dir(args.out) as out:
        np.save(out / "depth.npy", z)
        np.save(out / "raw.npy", est.raw[0, 0].numpy().astype(np.float32))
        save_depth_png16(out / "depth16.png", est.depth)
        save_image(out / "depth.png", colorize_depth(est.depth))
        summary = {
            "image": str(args.image),
            "size": {"width": int(z.shape[1]), "height": int(z.shape[0])},
            "model": est.model,
            "kind": est.kind,
            "units": "metres (metric estimate)" if est.kind == "metric-depth"
            else f"scene units (relative estimate mapped to [{cfg.depth.near:g}, {cfg.depth.far:g}])",
            "depth": {"min": float(z.min()), "median": float(np.median(z)), "max": float(z.max())},
            "files": {"depth.npy": "float32 (H, W) z-depth", "depth16.png": "uint16 z-depth in millimetres (--depth)",
                      "depth.png": "colour map of inverse depth (near = bright)", "raw.npy": "model output before conversion"},
            "config": cfg.to_json()["depth"],
            "seconds": {"load": round(t1 - t0, 3), "estimate": round(t2 - t1, 3)},
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"depth written to {args.out} ({est.kind}, {z.min():.3g}..{z.max():.3g}): depth.png, depth.npy, "
          f"depth16.png, raw.npy, summary.json")
    return 0
