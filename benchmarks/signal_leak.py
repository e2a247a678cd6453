"""How much of the generation error is the signal leak at the first sampling step.

Stable Diffusion's schedule (``scaled_linear``, 1000 steps) leaves ``sqrt(a_t) ~ 0.085`` of the
latent in x_t at the first of 25 DDIM steps (t = 961). A UNet trained on it learns to read each
image's mean colour from that leak; sampling starts from pure noise, whose mean carries nothing,
so the generated brightness follows the noise and not the caption (Lin et al., "Common Diffusion
Noise Schedules and Sample Steps Are Flawed", WACV 2024; Everaert et al., "Exploiting the
Signal-Leak Bias in Diffusion Models", WACV 2024).

For each held-out scene (rendered as ``handles world eval`` renders it; the same noise seed and
sampler as its generation figures) this measures:

* ``psnr``: the generated image against the render (``generation_psnr`` of ``handles world eval``);
* ``psnr_gain_matched``: the same after scaling each colour channel of the generated image to the
  render's mean (what a right mean brightness alone would give);
* ``psnr_true_leak``: generated from ``x_T = noise + sqrt(a_T) * mean(z_0)``, the render's own
  per-channel latent mean leaked into the start (a diagnostic that uses the answer, not a method);
* ``psnr_prior``, when the model folder has a leak prior (``handles world leak-prior``):
  generated from the start that prior predicts from caption and depth (what ``handles world
  eval`` generates; a method, it does not see the render);
* ``iou_obj`` and ``colour_err`` (``handles world eval``'s per-object silhouette IoU and colour
  error) of the plain generation and, with a prior, of the prior's (``*_prior``), on the same noise;
* with a prior, ``prior_minus_plain``: the paired differences of those three figures (mean and
  95 % bootstrap interval);
* the mean luminance of generated and rendered images across scenes: their correlation and the
  ratio of their spreads (1 and 1 when the brightness follows the scene; 0 and small when it
  follows the noise), also for the generation with the prior (``*_prior``);
* the size of the leak against the noise: ``sqrt(a_T)`` at the first step, the spread across
  scenes of each channel's spatial mean latent (``latent_mean_spread``), and the noise's own
  spread of a channel mean, ``1 / sqrt(h w)`` (``noise_mean_spread``).

It writes a JSON file and, with ``--strip``, ``truth | generated | [generated with the leak prior |]
generated from the true leak`` for the first scenes, upscaled 2x (nearest neighbour).

Usage::

    python benchmarks/signal_leak.py --model tinyworld --n 16 --out benchmarks/results/signal_leak_shipped.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

STEPS = 25  # DDIM steps, as handles world eval generates
LUMA = np.array([0.2126, 0.7152, 0.0722])  # Rec. 709 weights (sRGB values, an approximation)


def main(argv: list[str] | None = None) -> dict:
    from diffusion_handles.diffusion.backbone import Backbone, model_folder
    from diffusion_handles.world import leak_prior as lp
    from diffusion_handles.world.dataset import HELDOUT_SEED0, render_seed
    from diffusion_handles.world.evaluate import _psnr, generate, image_metrics, object_count
    from diffusion_handles.world.render import DEFAULT_SPP

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tinyworld")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--first-seed", type=int, default=HELDOUT_SEED0)
    ap.add_argument("--out", default="runs/signal_leak.json")
    ap.add_argument("--strip", default=None, help="PNG: truth | generated | [with the leak prior |] from the true leak, first --strip-n scenes")
    ap.add_argument("--strip-n", type=int, default=6)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    bb = Backbone.from_pretrained(args.model)
    folder = model_folder(args.model)
    prior = lp.load(folder, bb) if folder is not None else None
    size = bb.default_size
    rows, tiles, means = [], [], []
    a0 = float(bb.schedule(STEPS).alpha[0])  # a_t at the first sampling step
    for j in range(args.n):
        s = args.first_seed + j
        r = render_seed((s, size, DEFAULT_SPP))
        ref = r["rgb"].astype(np.float32) / 255.0
        depth = torch.from_numpy(r["depth"].astype(np.float32))[None, None]
        x = torch.from_numpy(ref).permute(2, 0, 1)[None]
        z0 = bb.encode_image(bb.resize_to_work(x, bb.work_size((size, size))), refine_steps=0)  # (1, C, h, w)
        means.append(z0.mean((2, 3))[0])  # (C,)
        noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(j))  # seed j: as handles world eval --seed 0
        gen = generate(bb, r["caption"], depth, steps=STEPS, init=noise)
        leak = generate(bb, r["caption"], depth, steps=STEPS, init=noise + a0 ** 0.5 * z0.mean((2, 3), keepdim=True))
        gen, leak = (bb.resize_to_work(g.float().cpu(), (size, size))[0].permute(1, 2, 0).numpy() for g in (gen, leak))
        if prior is not None:
            pg = generate(bb, r["caption"], depth, steps=STEPS, init=prior.start(bb, r["caption"], depth, noise, a0))
            pg = bb.resize_to_work(pg.float().cpu(), (size, size))[0].permute(1, 2, 0).numpy()
        gm, rm = gen.mean((0, 1)), ref.mean((0, 1))
        rows.append({"seed": s, "caption": r["caption"], "psnr": _psnr(gen, ref),
                     "psnr_gain_matched": _psnr(np.clip(gen * rm / np.maximum(gm, 1e-4), 0, 1), ref),
                     "psnr_true_leak": _psnr(leak, ref), "luma_generated": float(gm @ LUMA), "luma_true": float(rm @ LUMA)})
        n_obj = object_count(r["ids"])
        m = image_metrics(gen, ref, r["ids"], n_obj)
        rows[-1].update(iou_obj=m["iou_obj"], colour_err=m["colour_err"])
        if prior is not None:
            m = image_metrics(pg, ref, r["ids"], n_obj)
            rows[-1].update(psnr_prior=_psnr(pg, ref), luma_prior=float(pg.mean((0, 1)) @ LUMA),
                            iou_obj_prior=m["iou_obj"], colour_err_prior=m["colour_err"])
        print(f"{s}: psnr {rows[-1]['psnr']:.2f}  gain-matched {rows[-1]['psnr_gain_matched']:.2f}  "
              f"true leak {rows[-1]['psnr_true_leak']:.2f}  luma {rows[-1]['luma_generated']:.3f} vs {rows[-1]['luma_true']:.3f}",
              flush=True)
        if j < args.strip_n:
            tiles.append(np.concatenate([ref, gen] + ([pg] if prior is not None else []) + [leak], 1))
    lg, lt = np.array([r["luma_generated"] for r in rows]), np.array([r["luma_true"] for r in rows])
    summary = {k: float(np.nanmean([r[k] for r in rows]))
               for k in ("psnr", "psnr_gain_matched", "psnr_true_leak", "psnr_prior", "iou_obj", "iou_obj_prior",
                         "colour_err", "colour_err_prior") if k in rows[0]}
    summary.update(luma_corr=float(np.corrcoef(lg, lt)[0, 1]), luma_spread_ratio=float(lg.std() / lt.std()),
                   luma_mean_abs_err=float(np.abs(lg - lt).mean()), sqrt_alpha_first=a0 ** 0.5,
                   latent_mean_spread=torch.stack(means).std(0).tolist(),
                   noise_mean_spread=float(z0.shape[-2] * z0.shape[-1]) ** -0.5)
    if prior is not None:
        from diffusion_handles.bench.metrics import bootstrap_ci

        pairs = {k: [r[f"{k}_prior"] - r[k] for r in rows if np.isfinite(r[f"{k}_prior"] - r[k])]
                 for k in ("psnr", "iou_obj", "colour_err")}  # same scenes, same noise: paired
        summary["prior_minus_plain"] = {k: bootstrap_ci(v, n_resamples=2000, seed=0) for k, v in pairs.items()}
        lpr = np.array([r["luma_prior"] for r in rows])
        summary.update(luma_corr_prior=float(np.corrcoef(lpr, lt)[0, 1]), luma_spread_ratio_prior=float(lpr.std() / lt.std()),
                       luma_mean_abs_err_prior=float(np.abs(lpr - lt).mean()))
    result = {"model": args.model, "n": args.n, "first_seed": args.first_seed, "summary": summary, "scenes": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(summary, indent=1))
    if args.strip and tiles:
        from PIL import Image

        g = (np.clip(np.concatenate(tiles, 0), 0, 1) * 255 + 0.5).astype(np.uint8)
        Image.fromarray(g).resize((g.shape[1] * 2, g.shape[0] * 2), Image.NEAREST).save(args.strip)
    return result


if __name__ == "__main__":
    main()
