"""Sweep of the guidance's step rule and weights on held-out TinyWorld edits.

For each benchmark case (rendered ground truth), the image is inverted once and edited with
every configuration of the sweep; printed per configuration (mean over cases):

* ``G_o end``: G_o / activation variance at the last guided step (step 38 of 50 scaled), the
  energy the generation reaches (``depth_only``: the same quantity with no guidance);
* ``obj``, ``full``, ``effects``: PSNR against the ground truth in the object mask, the whole
  image and the effects region (:mod:`diffusion_handles.bench.metrics`);
* ``diverged``: edits with a non-finite output or ``G_o end`` above 10x ``depth_only``'s.

``--transfers F ...`` sweeps the identity transfer instead (the default configuration, pixel
composite included, with the transfer at each fraction F of the steps, or ``off``, for each of
``--transfer-sources``, and with and without the object's mirrored back, ``--backs off on``).
Tune on cases away from the benchmark's 20 (``--seed 1000700``); ``--kinds`` keeps only some edit
kinds. With more than one configuration besides ``depth_only``, the paired differences against
the first are printed with 95 % bootstrap intervals.

    python benchmarks/guidance_sweep.py --cases 8 --steps 50 --inversion null-text \\
        --relative-steps 0.1 0.3 0.6 1.0 --grad-steps 3 --json out/sweep.json
    python benchmarks/guidance_sweep.py --cases 8 --seed 1000700 --transfers 0.5 0.6 0.7 \\
        --transfer-sources latent pixels --json out/transfer.json
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tinyworld")
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1_000_500)
    ap.add_argument("--size", type=int, default=None, help="image side (default: the model's native size)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--inversion", default="null-text")
    ap.add_argument("--relative-steps", type=float, nargs="+", default=[0.1, 0.3, 0.6, 1.0])
    ap.add_argument("--grad-steps", type=int, nargs="+", default=[3])
    ap.add_argument("--weight-scales", type=float, nargs="+", default=[1.0],
                    help="multiply w_o and w_b by these (normalized mode: only their ratio matters)")
    ap.add_argument("--paper-steps", type=float, nargs="+", default=[0.1], help="step sizes of the paper mode")
    ap.add_argument("--transfers", nargs="+", default=None, metavar="F",
                    help="sweep the identity transfer step (fractions of the steps, or 'off') instead of the step rule")
    ap.add_argument("--transfer-sources", nargs="+", default=["latent", "pixels"], choices=["latent", "pixels"])
    ap.add_argument("--backs", nargs="+", default=["off"], choices=["off", "on"],
                    help="with --transfers: also sweep GuidanceConfig.complete_back (the object's mirrored back)")
    ap.add_argument("--kinds", nargs="+", default=None, help="only cases of these edit kinds (e.g. rotate_vertical)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from diffusion_handles.bench.cases import bench_seeds, make_case
    from diffusion_handles.bench.metrics import edit_metrics
    from diffusion_handles.bench.runner import _to_uint8
    from diffusion_handles.diffusion.config import GuidanceConfig, InversionConfig
    from diffusion_handles.pipeline import DiffusionHandles

    pipe = DiffusionHandles.from_pretrained(args.model)
    size = args.size or pipe.backbone.default_size
    configs: dict[str, GuidanceConfig] = {"depth_only": GuidanceConfig(grad_steps=0, composite=False)}
    for f in args.transfers or []:
        for src in args.transfer_sources:
            for back in args.backs:
                frac = None if f == "off" else float(f)
                name = f"transfer {f} {src}" + (" back" if back == "on" else "")
                configs[name] = GuidanceConfig(identity_transfer=frac, transfer_source=src, complete_back=back == "on")
    for st in [] if args.transfers else args.paper_steps:
        configs[f"paper step {st}"] = GuidanceConfig(mode="paper", step_size=st, composite=False)
    for k in [] if args.transfers else args.grad_steps:
        for r in args.relative_steps:
            for ws in args.weight_scales:
                configs[f"normalized K={k} rel={r} w x{ws}"] = GuidanceConfig(
                    grad_steps=k, relative_step=r, composite=False, w_object=45.0 * ws, w_background=37.5 * ws)
    rows: dict[str, list[dict]] = {name: [] for name in configs}
    record = GuidanceConfig(layer_cycle=((0, 1),), guide_until=args.steps)
    done = 0
    t0 = time.perf_counter()
    for seed in bench_seeds(args.cases * 4, args.seed):
        if done >= args.cases:
            break
        try:
            case = make_case(seed, size=size)
        except Exception:
            continue
        if args.kinds and case.kind not in args.kinds:
            continue
        done += 1
        img = torch.from_numpy(case.image.astype(np.float32) / 255).permute(2, 0, 1)[None]
        depth = torch.from_numpy(case.depth)[None, None]
        mask = torch.from_numpy(case.mask_src.astype(np.float32))[None, None]
        clean = torch.from_numpy(case.clean_depth)[None, None]
        inv = pipe.invert(img, case.caption, depth, mask, inversion=InversionConfig(method=args.inversion, num_steps=args.steps),
                          guidance=record)
        examples = [(case.gt, case.mask_gt), (case.image, case.mask_src), (case.clean, np.zeros_like(case.mask_src))]
        for name, cfg in configs.items():
            out = pipe.edit(inv, case.edit, guidance=cfg, background_depth=clean, fov_deg=case.fov_deg)
            end = cfg.resolved_guide_until(args.steps) - 1
            finite = bool(torch.isfinite(out.edited).all())
            m = edit_metrics(_to_uint8(out.edited.nan_to_num()), case.gt, case.mask_gt, case.mask_src, examples) if finite else {}
            rows[name].append({"case": case.case_id, "g_o_end": out.monitor.get(end, {}).get("G_o_rel", math.nan),
                               "finite": finite, **{k: m.get(k) for k in ("psnr_obj", "psnr_full", "psnr_effects", "psnr_bg")}})
        print(f"case {done}/{args.cases} ({case.case_id}, {case.kind}) done, {time.perf_counter() - t0:.0f} s", flush=True)

    def mean(v):
        v = [x for x in v if x is not None and np.isfinite(x)]
        return float(np.mean(v)) if v else float("nan")

    base = {r["case"]: r["g_o_end"] for r in rows["depth_only"]}
    print(f"\n{done} cases, {args.steps} steps, {args.inversion} inversion, model {args.model} ({size} px)")
    print("| configuration | G_o end | obj PSNR | full PSNR | effects PSNR | bg PSNR | diverged |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for name, rs in rows.items():
        div = sum(1 for r in rs if not r["finite"] or r["g_o_end"] > 10 * base.get(r["case"], math.inf))
        s = {k: mean([r[k] for r in rs]) for k in ("g_o_end", "psnr_obj", "psnr_full", "psnr_effects", "psnr_bg")}
        s["diverged"] = div
        summary[name] = s
        print(f"| {name} | {s['g_o_end']:.3f} | {s['psnr_obj']:.2f} | {s['psnr_full']:.2f} | {s['psnr_effects']:.2f} | "
              f"{s['psnr_bg']:.2f} | {div}/{len(rs)} |")
    if len(configs) > 2:  # paired differences against the second configuration (the first is depth_only)
        from diffusion_handles.bench.metrics import bootstrap_ci

        ref = list(configs)[1]
        print(f"\npaired differences against '{ref}', mean [95% bootstrap CI]")
        print("| configuration | obj PSNR | full PSNR | effects PSNR | bg PSNR |\n|---|---|---|---|---|")
        for name in list(configs)[2:]:
            cells = []
            for k in ("psnr_obj", "psnr_full", "psnr_effects", "psnr_bg"):
                pairs = [(a[k], b[k]) for a, b in zip(rows[ref], rows[name], strict=True)
                         if a[k] is not None and b[k] is not None and np.isfinite(a[k]) and np.isfinite(b[k])]
                ci = bootstrap_ci([b - a for a, b in pairs])
                cells.append(f"{ci['mean']:+.2f} [{ci['lo']:+.2f}, {ci['hi']:+.2f}]" if ci["n"] else "n/a")
            print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        from pathlib import Path

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
