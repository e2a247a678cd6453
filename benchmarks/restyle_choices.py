"""Which restyle choices of ``GuidanceConfig`` give the best restyle: a sweep on tuning cases.

A restyle (``DiffusionHandles.edit(..., restyle=...)``) makes three choices of its own
(``GuidanceConfig.restyle_energy``, ``restyle_transfer``, ``restyle_finish``). This script draws
``--cases`` cases of the benchmark's ``restyle`` kind (:mod:`diffusion_handles.bench.restyle`;
seeds from ``--seed``, which must not overlap the held-out seeds the benchmark reports), inverts
each input once, runs one edit per variant from that inversion, and scores each output with the
kind's metrics (:func:`~diffusion_handles.bench.restyle.restyle_metrics`). Writes a JSON of every
case and the means per variant, and prints the table.

Usage::

    python benchmarks/restyle_choices.py --seed 1300100 --cases 8 --threads 1 \\
        --out benchmarks/results/restyle_choices_1300100_8.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np

# variant name -> (restyle_energy, restyle_transfer, restyle_finish[, hole_noise])
VARIANTS = {
    "appearance_off_generate": ("appearance", "off", "generate"),
    "plain_off_generate": ("plain", "off", "generate"),
    "appearance_keep_generate": ("appearance", "keep", "generate"),
    "appearance_off_detail": ("appearance", "off", "detail"),
    "plain_keep_warp": ("plain", "keep", "warp"),  # every choice as for an edit without restyle
    "appearance_off_generate_hole_noise": ("appearance", "off", "generate", True),  # GuidanceConfig.hole_noise
}
KEYS = ("psnr", "psnr_obj", "ssim_obj", "colour_err_obj", "pattern_obj", "iou_obj")


def _cases(seed: int, n: int, size: int):
    """The first ``n`` acceptable restyle cases from ``seed`` on (seeds without one are skipped)."""
    from diffusion_handles.bench.cases import NoEditFound
    from diffusion_handles.bench.new_kinds import make_kind_case

    s = seed
    while n > 0:
        try:
            yield make_kind_case("restyle", s, size=size)
            n -= 1
        except NoEditFound:
            pass
        s += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1300100)
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch

    from diffusion_handles.bench.restyle import restyle_metrics
    from diffusion_handles.bench.runner import _tensors, _to_uint8
    from diffusion_handles.diffusion.config import preset
    from diffusion_handles.pipeline import DiffusionHandles

    torch.set_num_threads(args.threads)
    inversion, guidance = preset("default", args.steps)
    pipe = DiffusionHandles.from_pretrained("tinyworld")
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for case in _cases(args.seed, args.cases, args.size):
        image, depth, mask = _tensors(case.image, case.depth, case.masks[0])
        clean = torch.from_numpy(case.clean_depth.astype(np.float32))[None, None]
        inv = pipe.invert(image, case.prompt, depth, mask, inversion=inversion, guidance=guidance, seed=0)
        row = {"case_id": case.case_id, "restyle": case.restyle, "restyle_words": case.restyle_words, "variants": {}}
        for name in args.variants:
            energy, transfer, finish, *holes = VARIANTS[name]
            g = dataclasses.replace(guidance, restyle_energy=energy, restyle_transfer=transfer, restyle_finish=finish,
                                    hole_noise=bool(holes and holes[0]))
            t0 = time.perf_counter()
            res = pipe.edit(inv, case.edit, guidance=g, background_depth=clean, fov_deg=case.fov_deg,
                            source_image=image, source_depth=depth, source_mask=mask,
                            restyle=case.restyle, restyle_words=case.restyle_words)
            scores = restyle_metrics(_to_uint8(res.edited), case, (res.edited_mask[0, 0] > 0.5).numpy())
            row["variants"][name] = {**scores, "seconds": time.perf_counter() - t0}
        rows.append(row)
        print(case.case_id, {n: round(v["psnr_obj"], 2) for n, v in row["variants"].items()}, flush=True)
    means = {n: {k: float(np.mean([r["variants"][n][k] for r in rows if r["variants"][n][k] is not None]))
                 for k in KEYS} for n in args.variants}
    with open(args.out, "w") as f:
        json.dump({"settings": vars(args), "variants": {n: VARIANTS[n] for n in args.variants}, "mean": means,
                   "cases": rows}, f, indent=1)
    print(f"{'variant':36s} " + " ".join(f"{k:>14s}" for k in KEYS))
    for n, m in means.items():
        print(f"{n:36s} " + " ".join(f"{m[k]:14.3f}" for k in KEYS))


if __name__ == "__main__":
    main()
