"""The edit window's margin: which one scores best on tuning edits of 512-px TinyWorld scenes.

A 512-px scene is larger than TinyWorld's 128 px, so ``handles bench --size 512`` edits it in a
window (``DiffusionHandles.edit_window``): a square around the object where it is and where it
lands, grown by ``margin`` of that box's longer side on every side. A small margin gives the
object more of the model's pixels and less context (the shadow, the floor around it); a large one
the other way round, and past a point the window covers most of the image and the whole image is
used instead. For each ``--margins`` value this runs the benchmark's ``ours`` on the same
``--scenes`` edits from ``--seed`` (tuning seeds: not the held-out seeds the benchmark reports),
each value in its own folder under ``--out`` (``margin_<m>/``), and prints the means and the
paired differences against the first margin.

Usage::

    python benchmarks/window_margin.py --seed 1003100 --scenes 8 --margins 0.5 0.25 1.0 \\
        --out runs/window-margin --json benchmarks/results/window_margin_1003100_8.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KEYS = ("psnr_full", "psnr_obj", "psnr_bg", "psnr_disocc", "psnr_effects", "sharpness_edit")


def run_margin(margin: float, args: argparse.Namespace) -> dict:
    """``handles bench`` (``ours`` only, ``--size``) with the edit window's margin set to ``margin``."""
    from diffusion_handles.bench.runner import BenchConfig, run_benchmark
    from diffusion_handles.pipeline import DiffusionHandles

    chosen = DiffusionHandles.edit_window

    def edit_window(self, *targets, **kw):
        return chosen(self, *targets, **{**kw, "margin": margin})

    DiffusionHandles.edit_window = edit_window
    try:
        cfg = BenchConfig(model="tinyworld", scenes=args.scenes, seed=args.seed, methods=["ours"], size=args.size,
                          cycle=False, threads=args.threads)
        return run_benchmark(cfg, Path(args.out) / f"margin_{margin:g}", progress=False, log=lambda *a: None)
    finally:
        DiffusionHandles.edit_window = chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1003100)
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--margins", type=float, nargs="+", default=[0.5, 0.25, 1.0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import shutil

    import numpy as np

    from diffusion_handles.bench.metrics import bootstrap_ci

    per: dict[float, dict[str, dict]] = {}
    for i, m in enumerate(args.margins):
        if i:  # the same rendered cases for every margin (a 512-px render is most of a scene's time)
            shutil.copytree(Path(args.out) / f"margin_{args.margins[0]:g}" / "cases",
                            Path(args.out) / f"margin_{m:g}" / "cases", dirs_exist_ok=True)
        res = run_margin(m, args)
        per[m] = {e["case_id"]: e["methods"]["ours"] for e in res["edits"]
                  if not e.get("error") and not e["methods"]["ours"].get("error")}
        windowed = sum(1 for v in per[m].values() if (v.get("inversion") or {}).get("window"))
        print(f"margin {m:g}: {len(per[m])} edits, {windowed} in a window", flush=True)
    base = args.margins[0]
    summary = {}
    for m in args.margins:
        row = {}
        for k in KEYS:
            vals = [v[k] for v in per[m].values() if isinstance(v.get(k), (int, float))]
            both = [(per[m][c][k], per[base][c][k]) for c in per[m] if c in per[base]
                    and isinstance(per[m][c].get(k), (int, float)) and isinstance(per[base][c].get(k), (int, float))]
            diff = bootstrap_ci(np.array([a - b for a, b in both])) if both and m != base else None
            row[k] = {"mean": float(np.mean(vals)) if vals else None, f"minus_{base:g}": diff}
        summary[f"{m:g}"] = row
    print("| margin | " + " | ".join(KEYS) + " |\n|---|" + "---|" * len(KEYS))
    for m, row in summary.items():
        cells = []
        for k in KEYS:
            mean, d = row[k]["mean"], row[k][f"minus_{base:g}"]
            cell = "n/a" if mean is None else f"{mean:.2f}"
            if d is not None and d.get("n"):
                cell += f" ({d['mean']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}])"
            cells.append(cell)
        print(f"| {m} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "summary": summary,
                                               "edits": {f"{m:g}": per[m] for m in args.margins}}, indent=1))


if __name__ == "__main__":
    main()
