"""How far a generator can get on TinyWorld's generation figures if the caption named the light.

``handles world eval`` scores a ``relit`` reference: each held-out scene rendered under a sun and
sky drawn afresh from the world's range (:func:`diffusion_handles.world.scene.relight`), what a
perfect generator scores when the inputs do not fix the light. This script scores the same
reference when the sun's azimuth is known to lie in one of ``K`` equal sectors (``--sectors``),
as it would be if each caption named that sector ("lit from the left", ...): the bound such a
caption would raise the targets' reach to. ``K = 1`` is the eval's ``relit`` (the same light
draws and render seeds, so its figures equal ``relit_*``).

Usage::

    python benchmarks/light_bound.py --n 32 --sectors 1 2 3 6 --out benchmarks/results/light_bound_32.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> dict:
    from diffusion_handles.world.dataset import HELDOUT_SEED0, render_seed
    from diffusion_handles.world.evaluate import RELIGHT_SEED, image_metrics, object_count
    from diffusion_handles.world.render import DEFAULT_SPP, render, scene_for_seed
    from diffusion_handles.world.scene import DEFAULT_SIZE, relight

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--first-seed", type=int, default=HELDOUT_SEED0)
    ap.add_argument("--sectors", type=int, nargs="+", default=[1, 2, 3, 6])
    ap.add_argument("--out", default="runs/light_bound.json")
    args = ap.parse_args(argv)
    size = DEFAULT_SIZE
    rows = []
    for j in range(args.n):
        s = args.first_seed + j
        r = render_seed((s, size, DEFAULT_SPP))
        ref = r["rgb"].astype(np.float32) / 255.0
        n_obj = object_count(r["ids"])
        scene = scene_for_seed(s, size, size)
        row = {"seed": s}
        for k in args.sectors:
            img = render(relight(scene, s + RELIGHT_SEED, k), spp=DEFAULT_SPP, seed=s + 12345).rgb.astype(np.float32) / 255.0
            row[str(k)] = image_metrics(img, ref, r["ids"], n_obj)
        rows.append(row)
        print(s, "  ".join(f"K={k}: {row[str(k)]['psnr']:.2f} dB" for k in args.sectors), flush=True)
    summary = {str(k): {m: float(np.nanmean([r[str(k)][m] for r in rows])) for m in rows[0][str(k)]} for k in args.sectors}
    for k, m in summary.items():
        print(f"K={k}: psnr {m['psnr']:.2f}  iou_obj {m['iou_obj']:.3f}  colour_err {m['colour_err']:.1f}")
    result = {"n": args.n, "first_seed": args.first_seed, "sectors": args.sectors, "summary": summary, "scenes": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
