"""Two ``handles bench`` runs of the same edits compared edit by edit (e.g. a new model against
the shipped one): for each method and metric, the mean of the paired differences B - A and its
95 % bootstrap interval (``bench.metrics.bootstrap_ci``), on the edits both ran without error.
With ``--against M`` every method of B is compared with method M of A (A and B may be the same
file: two methods of one run).

    python benchmarks/bench_paired.py benchmarks/results/bench_tinyworld_v2e_exact_20.json \
        runs/bench/v2f-exact/results.json --methods ours reconstruction
    python benchmarks/bench_paired.py R.json R.json --methods ours --against ours_latent_transfer

A ``handles bench --kinds`` run's ``kinds_results.json`` is read the same way; ``--kind K``
keeps the cases of kind ``K`` (default metrics: the kind's, e.g. for ``restyle`` the object
scores of ``bench.restyle``). The restyle kind's "ours against each baseline":

    K=runs/restyle/kinds_results.json
    python benchmarks/bench_paired.py $K $K --kind restyle --methods ours --against warp_only
"""

from __future__ import annotations

import argparse
import json

from diffusion_handles.bench.metrics import bootstrap_ci

METRICS = ("psnr_obj", "psnr_full", "psnr_bg", "psnr_disocc", "iou", "g_o_end")
KIND_METRICS = {"restyle": ("psnr_obj", "ssim_obj", "colour_err_obj", "pattern_obj", "iou_obj", "psnr"),
                "camera": ("psnr", "psnr_changed", "ssim"), "remove": ("psnr", "psnr_changed", "ssim"),
                "multi": ("psnr", "psnr_changed", "ssim")}


def paired(a: dict, b: dict, method: str, metric: str, method_a: str | None = None, kind: str | None = None) -> dict:
    """``bootstrap_ci`` of ``b - a`` over the edits (by case id) where both have ``metric``
    (``method`` of ``b`` against ``method_a`` of ``a``, default the same method; ``kind``: only
    the edits of that kind, a ``--kinds`` run's ``kinds_results.json``)."""
    def values(res, method):
        out = {}
        for e in res["edits"]:
            if kind is not None and e.get("kind") != kind:
                continue
            m = e.get("methods", {}).get(method) or {}
            if not e.get("error") and not m.get("error") and isinstance(m.get(metric), (int, float)):
                out[e["case_id"]] = float(m[metric])
        return out

    va, vb = values(a, method_a or method), values(b, method)
    return bootstrap_ci([vb[k] - va[k] for k in sorted(va.keys() & vb.keys())])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="results.json of the reference run")
    p.add_argument("b", help="results.json of the run to compare with it")
    p.add_argument("--methods", nargs="+", default=["ours"])
    p.add_argument("--metrics", nargs="+", default=None,
                   help=f"default: {' '.join(METRICS)}; with --kind K the kind's (restyle: {' '.join(KIND_METRICS['restyle'])})")
    p.add_argument("--kind", default=None, choices=sorted(KIND_METRICS),
                   help="a kinds_results.json (handles bench --kinds): compare the cases of this kind only")
    p.add_argument("--against", default=None, metavar="METHOD", help="compare every method of B with this method of A")
    args = p.parse_args()
    a, b = (json.loads(open(f).read()) for f in (args.a, args.b))
    if args.metrics is None:
        args.metrics = list(KIND_METRICS[args.kind] if args.kind else METRICS)
    against = f" (method {args.against})" if args.against else ""
    only = f", kind {args.kind} only" if args.kind else ""
    print(f"paired differences B - A, mean [95% bootstrap CI] (n edits{only})\nA = {args.a}{against}\nB = {args.b}\n")
    print("| method | " + " | ".join(args.metrics) + " |\n|---|" + "---|" * len(args.metrics))
    for method in args.methods:
        cells = []
        for metric in args.metrics:
            ci = paired(a, b, method, metric, args.against, args.kind)
            cells.append("n/a" if not ci["n"] else f"{ci['mean']:+.3f} [{ci['lo']:+.3f}, {ci['hi']:+.3f}] ({ci['n']})")
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
