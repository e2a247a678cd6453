"""Pool the leak prior's paired differences over several ``benchmarks/signal_leak.py`` runs.

Each run holds, per scene, a figure of the plain generation (``psnr``, ``iou_obj``,
``colour_err``) and of the generation with the model's leak prior (``*_prior``) from the same
noise. Scenes of different seed ranges are independent, so their differences pool into one mean
with one 95 % percentile-bootstrap interval (:func:`diffusion_handles.bench.metrics.bootstrap_ci`).
A scene that appears in two runs counts once.

Usage::

    python benchmarks/pool_paired.py benchmarks/results/signal_leak_shipped_32.json \\
        benchmarks/results/signal_leak_shipped_far16.json benchmarks/results/signal_leak_shipped_2M_64.json
"""

from __future__ import annotations

import argparse
import json
import math

KEYS = (("psnr", True), ("iou_obj", True), ("colour_err", False))  # (figure, higher is better)


def pool(runs: list[dict]) -> dict:
    """``{figure: {mean, lo, hi, n, n_better}}`` of ``prior - plain`` over the scenes of ``runs``."""
    from diffusion_handles.bench.metrics import bootstrap_ci

    scenes = {s["seed"]: s for run in runs for s in run["scenes"]}
    out = {}
    for key, higher in KEYS:
        d = [s[f"{key}_prior"] - s[key] for s in scenes.values() if f"{key}_prior" in s]
        d = [v for v in d if math.isfinite(v)]
        ci = bootstrap_ci(d, n_resamples=2000, seed=0)
        out[key] = {**ci, "n_better": sum((v > 0) if higher else (v < 0) for v in d), "higher_is_better": higher}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="signal_leak.py JSON files of a model with a leak prior")
    args = ap.parse_args(argv)
    runs = [json.loads(open(f).read()) for f in args.runs]
    missing = [f for f, r in zip(args.runs, runs, strict=True) if not r["scenes"] or "psnr_prior" not in r["scenes"][0]]
    if missing:
        raise SystemExit(f"runs: expected signal_leak.py results of a model with a leak prior, got {missing}")
    res = pool(runs)
    for key, r in res.items():
        print(f"{key}: prior - plain {r['mean']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}], "
              f"better on {r['n_better']} of {r['n']} scenes")
    return res


if __name__ == "__main__":
    main()
