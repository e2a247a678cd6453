"""Where a VAE's round-trip error comes from: the encoder or the decoder.

For each held-out TinyWorld scene (rendered as ``handles world eval`` renders it) this measures

* ``round_trip``: PSNR of ``decode(encode(x))`` (the posterior mode), the VAE figure of
  ``handles world eval``;
* ``optimised``: PSNR of ``decode(z*)``, where ``z*`` starts at the encoder's latent and is
  optimised (Adam, ``--steps`` steps, learning rate ``--lr``, the decoder frozen) to reproduce
  ``x``. This is what the *unchanged decoder* can show when it is given a better latent: if it
  is far above ``round_trip``, the encoder (the amortisation gap), not the decoder's capacity,
  limits the round trip;
* ``drift``: RMS of ``z* - z`` over the RMS of ``z`` (how far from the encoder's latents, hence
  from the latents the UNet was trained on, the better latent lies). ``--anchor A`` adds
  ``A * mean((z* - z)^2) / var(z)`` to the objective: what the decoder can show from latents
  held near the encoder's (the trade-off an encoder trained with that anchor faces).

It writes a JSON file and, for the four worst scenes, a strip ``input | round trip | optimised |
|error| x4 of each`` upscaled 3x (nearest neighbour).

Usage::

    python benchmarks/vae_gap.py --n 32 --out benchmarks/results/vae_gap_32.json --strip docs/images/vae_gap.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def optimise_latent(vae, x: torch.Tensor, z: torch.Tensor, steps: int, lr: float, anchor: float = 0.0) -> torch.Tensor:
    """``z*`` minimising ``mean((decode(z*) - x)^2) + anchor * mean((z* - z)^2) / var(z)`` from ``z``
    (``diffusion.backbone.refine_latent``, which the pipeline runs with the model's own steps).

    Args:
        vae: a diffusers VAE (frozen here).
        x: ``(1, 3, H, W)`` image in [-1, 1].
        z: ``(1, c, H/f, W/f)`` unscaled latent (the posterior mode).
    Returns ``(1, c, H/f, W/f)``.
    """
    from diffusion_handles.diffusion.backbone import refine_latent

    return refine_latent(vae, x, z, steps, lr=lr, anchor=anchor)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [-1, 1], on [0, 1] (``a`` clamped), as ``handles world eval``."""
    from diffusion_handles.world.evaluate import _psnr

    return _psnr(((a.clamp(-1, 1) + 1) / 2).numpy(), ((b + 1) / 2).numpy())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tinyworld")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--first-seed", type=int, default=None, help="first held-out seed (default 1,000,000)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=2e-2)
    p.add_argument("--anchor", type=float, default=0.0, help="weight of the drift term (default 0)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/vae_gap.json")
    p.add_argument("--strip", default=None, help="PNG of the four worst scenes")
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    from PIL import Image
    from tqdm import tqdm

    from diffusion_handles.diffusion.backbone import Backbone
    from diffusion_handles.world.dataset import HELDOUT_SEED0, render_seed
    from diffusion_handles.world.render import DEFAULT_SPP

    bb = Backbone.from_pretrained(a.model)
    vae = bb.vae.requires_grad_(False)
    size = bb.default_size
    first = HELDOUT_SEED0 if a.first_seed is None else a.first_seed
    rows, pics = [], []
    for j in tqdm(range(a.n), desc="vae gap"):
        r = render_seed((first + j, size, DEFAULT_SPP))
        x = torch.from_numpy(r["rgb"]).permute(2, 0, 1)[None].float() / 127.5 - 1.0  # (1, 3, H, W)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
            rt = vae.decode(z).sample
        zs = optimise_latent(vae, x, z, a.steps, a.lr, a.anchor)
        with torch.no_grad():
            opt = vae.decode(zs).sample
        rows.append({"seed": first + j, "round_trip": psnr(rt, x), "optimised": psnr(opt, x),
                     "drift": float((zs - z).pow(2).mean().sqrt() / z.pow(2).mean().sqrt())})
        pics.append((x, rt, opt))
    rt, op = np.array([r["round_trip"] for r in rows]), np.array([r["optimised"] for r in rows])
    summary = {"round_trip_mean": float(rt.mean()), "round_trip_min": float(rt.min()),
               "round_trip_below_30": int((rt < 30).sum()), "optimised_mean": float(op.mean()),
               "optimised_min": float(op.min()), "optimised_below_30": int((op < 30).sum()),
               "drift_mean": float(np.mean([r["drift"] for r in rows]))}
    out = {"model": a.model, "first_seed": first, "n": a.n, "steps": a.steps, "lr": a.lr, "anchor": a.anchor, "summary": summary, "scenes": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(summary, indent=1))
    if a.strip:
        lines = []
        for k in np.argsort(rt)[:4]:
            x, r1, r2 = (t[0].clamp(-1, 1).add(1).div(2) for t in pics[k])
            e1, e2 = ((r - x).abs().mean(0, keepdim=True).mul(4).clamp(0, 1).expand(3, -1, -1) for r in (r1, r2))
            lines.append(torch.cat([x, r1, r2, e1, e2], 2))
        im = (torch.cat(lines, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(im).resize((im.shape[1] * 3, im.shape[0] * 3), Image.NEAREST).save(a.strip)


if __name__ == "__main__":
    main()
