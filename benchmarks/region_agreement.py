"""How well :func:`~diffusion_handles.world.binding.object_regions` finds the objects in a depth map.

For every scene of a rendered set (``handles world dataset``), the regions taken from its z-depth
are matched to the rendered object masks in the caption's order (left to right, as
:meth:`~diffusion_handles.world.scene.Scene.left_to_right` orders them) and scored by IoU.
Printed per boundary threshold ``jump_rel``: the mean IoU over objects, and the scenes whose depth
showed fewer objects than the caption names (no regions: generation runs unbound there).

    python benchmarks/region_agreement.py --data runs/s12/all_5000_8200.npz --every 16 \\
        --jump 0.006 0.012 0.02 0.03 0.05
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def agreement(data: dict, every: int, jump_rel: float) -> dict:
    """Mean IoU of the regions against the masks, and how many scenes had none."""
    from diffusion_handles.world.binding import object_regions
    from diffusion_handles.world.scene import Scene

    ious, missing, scenes = [], 0, 0
    for j in range(0, len(data["rgb"]), every):
        scenes += 1
        order = Scene.from_json(str(data["scene"][j])).left_to_right()
        regions = object_regions(data["depth"][j].astype(np.float32), len(order), jump_rel=jump_rel)
        if regions is None:
            missing += 1
            continue
        for region, k in zip(regions, order, strict=True):
            mask = data["ids"][j] == k
            ious.append(float((region & mask).sum() / max((region | mask).sum(), 1)))
    return {"jump_rel": jump_rel, "scenes": scenes, "objects": len(ious), "missing": missing,
            "mean_iou": float(np.mean(ious)) if ious else float("nan")}


def main() -> None:
    from diffusion_handles.world.binding import JUMP_REL
    from diffusion_handles.world.dataset import load_dataset

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a rendered set (handles world dataset)")
    ap.add_argument("--every", type=int, default=1, help="every K-th scene (default: all)")
    ap.add_argument("--jump", type=float, nargs="+", default=[JUMP_REL], help="boundary thresholds to score")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    data = load_dataset(args.data)
    rows = [agreement(data, args.every, j) for j in args.jump]
    for r in rows:
        print(f"jump_rel {r['jump_rel']:.3f}: mean IoU {r['mean_iou']:.3f} over {r['objects']} objects, "
              f"{r['missing']} of {r['scenes']} scenes without regions")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"data": args.data, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
