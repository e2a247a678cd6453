"""Latent refinement's anchor: the VAE round trip against the null-text reconstruction.

For each held-out TinyWorld scene and each anchor weight, the encoder's latent is refined
(``diffusion.backbone.refine_latent``, ``--steps`` steps) and the script reports the round trip
PSNR (the posterior mode, decoded) and the PSNR of the null-text reconstruction at 50 steps (an
identity edit, as ``handles world eval``) started from the refined latent. A weaker anchor lets the
decoder draw the image better, but moves the latent further from those the UNet learned.

Usage::

    python benchmarks/refine_anchor.py --seeds 1000019 1000009 1000005 1000000 --anchors 0.05 0.02 0.01 0
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tinyworld")
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--anchors", type=float, nargs="+", default=[0.05, 0.02, 0.01, 0.0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--out", default="runs/refine_anchor.json")
    a = p.parse_args()
    torch.set_num_threads(1)

    import diffusion_handles.diffusion.backbone as backbone
    from diffusion_handles.pipeline import DiffusionHandles
    from diffusion_handles.world.dataset import render_seed
    from diffusion_handles.world.evaluate import _psnr, reconstruct
    from diffusion_handles.world.render import DEFAULT_SPP

    handles = DiffusionHandles.from_pretrained(a.model)
    bb = handles.backbone
    refine = backbone.refine_latent
    rows = []
    for seed in a.seeds:
        r = render_seed((seed, bb.default_size, DEFAULT_SPP))
        ref = r["rgb"].astype(np.float32) / 255.0
        x = torch.from_numpy(ref).permute(2, 0, 1)[None]
        depth = torch.from_numpy(r["depth"].astype(np.float32))[None, None]
        mask = torch.from_numpy((r["ids"] == 0).astype(np.float32))[None, None]
        for steps, anchor in [(0, None)] + [(a.steps, w) for w in a.anchors]:
            if anchor is not None:  # encode_image looks the function up in its module
                backbone.refine_latent = functools.partial(refine, anchor=anchor)
            bb.encode_refine_steps = steps
            vae = _psnr(bb.decode(bb.encode_image(x))[0].permute(1, 2, 0).numpy(), ref)
            rec = reconstruct(handles, x, r["caption"], depth, mask)[0].permute(1, 2, 0).numpy()
            rows.append({"seed": seed, "steps": steps, "anchor": anchor, "vae_psnr": vae, "reconstruction_psnr": _psnr(rec, ref)})
            print(json.dumps(rows[-1]), flush=True)
    backbone.refine_latent = refine
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"model": a.model, "steps": a.steps, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
