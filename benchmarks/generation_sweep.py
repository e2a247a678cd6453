"""Generation from depth and caption, swept over models and sampler settings, on a tuning set.

Settings are chosen here, on scenes rendered for the purpose (``handles world dataset --seeds
2000000:2000064``: a range no training set and neither reported held-out range uses), and only
then measured on the held-out ranges with ``handles world eval``. Every configuration generates
each scene from the same noise (seed ``j`` for scene ``j``, as ``handles world eval`` does) and
is scored with the eval's own :func:`~diffusion_handles.world.evaluate.image_metrics`; printed
per configuration (mean over scenes): PSNR, SSIM, per-object and all-object silhouette IoU,
colour error. ``--binding`` sweeps the layout-bound cross-attention (``world.binding``):
``default`` (what ``handles world eval`` uses), ``off``, or strengths ``BETA,ALPHA``.

    python benchmarks/generation_sweep.py --data runs/s12/tune_2000000.npz \\
        --models tinyworld runs/s12/prior8 --guidance 3 4 5 --binding default off 10,2 --json out.json

``--strip PNG`` writes, for the first ``--strip-n`` scenes, a labelled row each: the depth, every
configuration's generation in the order run, the truth (nearest-neighbour upscaled to 256 px).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the tuning set (handles world dataset)")
    ap.add_argument("--models", nargs="+", default=["tinyworld"], help="model folders (default: the embedded model)")
    ap.add_argument("--guidance", type=float, nargs="+", default=[4.0])
    ap.add_argument("--steps", type=int, nargs="+", default=[25])
    ap.add_argument("--no-prior", action="store_true", help="also score each model from plain noise")
    ap.add_argument("--binding", nargs="+", default=["default"], metavar="B",
                    help="layout-bound cross-attention settings: default, off or BETA,ALPHA (default: default)")
    ap.add_argument("--n", type=int, default=None, help="the first N scenes (default: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--strip", default=None, metavar="PNG", help="depth | each configuration | truth, per scene")
    ap.add_argument("--strip-n", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from diffusion_handles.diffusion.backbone import Backbone, model_folder
    from diffusion_handles.world import leak_prior as lp
    from diffusion_handles.world.dataset import captions_of, load_dataset
    from diffusion_handles.world.evaluate import generate, image_metrics, object_count

    bindings = {b: _binding(b) for b in args.binding}
    data = load_dataset(args.data)
    captions = captions_of(data)[0]
    n = len(captions) if args.n is None else min(args.n, len(captions))
    results, panels = [], [[] for _ in range(min(n, args.strip_n))]
    for model in args.models:
        bb = Backbone.from_pretrained(model)
        prior = lp.load(model_folder(model), bb)
        starts = [prior] + ([None] if args.no_prior and prior is not None else [])
        for pr in starts:
            for steps, g, (bname, bind) in itertools.product(args.steps, args.guidance, bindings.items()):
                t0, rows = time.time(), []
                for j in range(n):
                    ref = data["rgb"][j].astype(np.float32) / 255.0
                    depth = torch.from_numpy(data["depth"][j].astype(np.float32))[None, None]
                    size = ref.shape[0]
                    gen = generate(bb, captions[j], depth, seed=j, steps=steps, guidance=g, prior=pr, binding=bind)
                    gen = bb.resize_to_work(gen.float().cpu(), (size, size))[0].permute(1, 2, 0).numpy()
                    rows.append(image_metrics(gen, ref, data["ids"][j], object_count(data["ids"][j])))
                    if j < len(panels):
                        panels[j].append((f"{'noise' if pr is None else 'prior'} g{g:g} bind {bname}", gen))
                mean = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
                res = {"model": model, "start": "noise" if pr is None else "prior", "steps": steps, "guidance": g,
                       "binding": None if bind is None else [bind.beta, bind.alpha], "n": n,
                       "seconds": round(time.time() - t0, 1), "mean": mean, "scenes": rows}
                results.append(res)
                print(f"{model:32s} {res['start']:5s} steps {steps:3d} g {g:4.1f} bind {bname:8s}  psnr {mean['psnr']:6.2f}  "
                      f"ssim {mean['ssim']:.3f}  iou_obj {mean['iou_obj']:.3f}  iou_fg {mean['iou_fg']:.3f}  "
                      f"colour {mean['colour_err']:5.1f}  ({res['seconds']} s)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"data": args.data, "results": results}, f, indent=1)
    if args.strip and panels:
        _write_strip(args.strip, panels, data)


def _write_strip(path: str, panels: list[list[tuple[str, np.ndarray]]], data: dict) -> None:
    """One labelled row per scene: depth, the generations ``panels[j]`` (``(H, W, 3)`` in [0, 1]), truth."""
    from PIL import Image

    from diffusion_handles.viz import side_by_side

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1)[None]

    rows = []
    for j, gens in enumerate(panels):
        inv = 1.0 / data["depth"][j].astype(np.float32)
        depth = np.repeat(((inv - inv.min()) / max(float(np.ptp(inv)), 1e-6))[..., None], 3, -1)
        truth = data["rgb"][j].astype(np.float32) / 255.0
        strip = side_by_side([("depth", t(depth)), *[(label, t(g)) for label, g in gens], ("truth", t(truth))])
        rows.append((strip[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
    Image.fromarray(np.concatenate(rows, 0)).save(path)


def _binding(name: str):
    """``default`` -> ``Binding()``, ``off`` -> ``None``, ``BETA,ALPHA`` -> ``Binding(BETA, ALPHA)``."""
    from diffusion_handles.world.binding import Binding

    if name == "off":
        return None
    if name == "default":
        return Binding()
    try:
        beta, alpha = (float(v) for v in name.split(","))
    except ValueError:
        raise SystemExit(f"--binding: expected default, off or BETA,ALPHA, got {name!r}") from None
    return Binding(beta, alpha)


if __name__ == "__main__":
    main()
