"""Seconds of one inversion and of repeated edits of it on the shipped TinyWorld model, per stage.

    python benchmarks/edit_repeat.py [--edits 3] [--steps 20] [--threads 1]

A trajectory, an animation or a user trying several moves edits one inversion many times; this
times the inversion, then each edit (the same move), and prints the last edit's per-stage timings
(``EditOutput.timings``). Run it from two checkouts (``PYTHONPATH=OTHER/src``) to compare them on
one machine.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edits", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1000, help="TinyWorld scene seed (object 0 moves)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from diffusion_handles.diffusion.config import InversionConfig
    from diffusion_handles.geometry.transform import HandleEdit
    from diffusion_handles.pipeline import DiffusionHandles
    from diffusion_handles.world.render import render, scene_for_seed

    dh = DiffusionHandles.from_pretrained("tinyworld")
    quiet = {}  # progress bars off; releases before 2026-12-07 took progress= per call
    if hasattr(dh, "set_progress_bar_config"):
        dh.set_progress_bar_config(disable=True)
    else:
        quiet = {"progress": False}
    scene = scene_for_seed(args.seed, 128, 128)
    src = render(scene, seed=scene.seed)
    image = torch.from_numpy(src.rgb).permute(2, 0, 1)[None].float() / 255.0
    depth = torch.from_numpy(src.depth)[None, None]
    mask = torch.from_numpy(src.masks[0].astype(np.float32))[None, None]
    t = time.perf_counter()
    inv = dh.invert(image, src.caption, depth, mask, inversion=InversionConfig(num_steps=args.steps), **quiet)
    invert_s = time.perf_counter() - t
    edits_s = []
    for _ in range(args.edits):
        t = time.perf_counter()
        out = dh.edit(inv, HandleEdit(translate=(0.3, 0.0, 0.0)), fov_deg=scene.fov_deg, **quiet)
        edits_s.append(time.perf_counter() - t)
    print(json.dumps({"threads": args.threads, "steps": args.steps, "invert_s": round(invert_s, 2),
                      "edits_s": [round(x, 2) for x in edits_s],
                      "last_edit_stages_s": {k: round(v, 2) for k, v in out.timings.items()}}))


if __name__ == "__main__":
    main()
