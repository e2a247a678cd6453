"""Peak memory and time of one edit against the photo's size: the model's cost must not grow with it.

A synthetic photo (a textured wall, a box in front of it, exact depth) at each ``--sizes`` (W x H)
goes through what ``handles edit`` does: the edit window chosen for the move
(``DiffusionHandles.edit_window``), the inversion at the model's native size, the edit, and the
result at the photo's own size. Each size runs in its own child process, so its peak resident
memory (``ru_maxrss``) is its own. The model is Stable Diffusion 2 depth's architecture with
random weights (``--model sd2``, 1.3 B parameters, no download; time and memory do not depend on the
weight values) or the tiny random model (``--model tiny``, for a quick check of the code path).

Usage::

    python benchmarks/photo_size_cost.py --model sd2 --steps 2 --sizes 512x512 4032x3024
    python benchmarks/photo_size_cost.py --model tiny --steps 3 --sizes 512x512 4032x3024
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time


def _photo(w: int, h: int):
    import torch

    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, h, w, generator=g)
    depth = torch.full((1, 1, h, w), 5.0)
    mask = torch.zeros(1, 1, h, w)
    y0, x0, side = int(h * 0.45), int(w * 0.4), max(4, int(min(h, w) * 0.12))
    mask[..., y0:y0 + side, x0:x0 + side] = 1.0
    depth[mask > 0.5] = 3.5
    return image, depth, mask


def _one(model: str, steps: int, w: int, h: int, queue) -> None:
    import torch

    from diffusion_handles.diffusion.backbone import Backbone
    from diffusion_handles.diffusion.config import GuidanceConfig, InversionConfig
    from diffusion_handles.diffusion.random_models import (
        build_backbone_components,
        sd2_depth_configs,
        tiny_configs,
    )
    from diffusion_handles.geometry import HandleEdit
    from diffusion_handles.pipeline import DiffusionHandles

    torch.set_num_threads(1)
    configs = sd2_depth_configs() if model == "sd2" else tiny_configs()
    dh = DiffusionHandles(Backbone(build_backbone_components(configs, seed=0), model_id=model))
    dh.set_progress_bar_config(disable=True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    image, depth, mask = _photo(w, h)
    move = HandleEdit(translate=(0.3, 0.0, 0.2))
    t0 = time.perf_counter()
    window = dh.edit_window(depth, mask, move)
    inversion = InversionConfig(method="negative-prompt", num_steps=steps, window=window)
    guidance = GuidanceConfig(grad_steps=1)
    inv = dh.invert(image, "a box in front of a wall", depth, mask, inversion=inversion, guidance=guidance)
    t1 = time.perf_counter()
    out = dh.edit(inv, move, guidance=guidance, source_image=image)
    t2 = time.perf_counter()
    queue.put({"model": model, "size_wh": [w, h], "window": list(window) if window else None,
               "work_hw": list(inv.image.shape[-2:]), "output_hw": list(out.edited.shape[-2:]),
               "invert_s": t1 - t0, "edit_s": t2 - t1, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "model_rss_mb": base / 1024, "stages_s": out.timings})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["sd2", "tiny"], default="sd2")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--sizes", nargs="+", default=["512x512", "4032x3024"])
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    ctx = mp.get_context("spawn")
    rows = []
    for size in args.sizes:
        w, h = (int(v) for v in size.lower().split("x"))
        q = ctx.Queue()
        p = ctx.Process(target=_one, args=(args.model, args.steps, w, h, q))
        p.start()
        row = q.get()
        p.join()
        rows.append(row)
        print(f"{w}x{h}: window {row['window']}, model at {row['work_hw'][1]}x{row['work_hw'][0]}, result "
              f"{row['output_hw'][1]}x{row['output_hw'][0]}; invert {row['invert_s']:.1f} s, edit {row['edit_s']:.1f} s, "
              f"peak RSS {row['peak_rss_mb']:.0f} MB (model loaded: {row['model_rss_mb']:.0f} MB)", flush=True)
    if len(rows) >= 2:
        print(f"peak memory {rows[-1]['size_wh']} / {rows[0]['size_wh']}: {rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
