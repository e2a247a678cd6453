"""Null-text inversion settings against the VAE's own round trip, on held-out TinyWorld scenes.

For each scene: the VAE round trip (the ceiling of any inversion) and the null-text
reconstruction at 50 DDIM steps (an identity edit) for each setting, PSNR against the render.
The learning-rate table of docs/releases/tinyworld-v2.2.md was made with::

    python benchmarks/null_lr_sweep.py --seeds 7000001 7000002 7000003

Settings (``name=value`` pairs of :class:`~diffusion_handles.diffusion.config.InversionConfig`):
``--configs "null_lr=0.01" "null_lr=0.05" "null_inner_steps=10,null_lr=0.01" "guidance_scale=4,null_lr=0.01"``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

DEFAULT_CONFIGS = ("null_lr=0.01", "null_lr=0.03", "null_lr=0.05", "null_lr=0.1", "null_lr=0.2",
                   "null_inner_steps=10,null_lr=0.01", "guidance_scale=4,null_lr=0.01")


def parse_config(text: str):
    """``"a=1,b=2"`` -> ``InversionConfig(a=1, b=2)`` (numbers only)."""
    from diffusion_handles.diffusion.config import InversionConfig

    kw = {}
    for part in text.split(","):
        k, v = part.split("=")
        kw[k.strip()] = int(v) if k.strip() == "null_inner_steps" else float(v)
    return InversionConfig(**kw)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / (a.float() - b.float()).pow(2).mean()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tinyworld")
    p.add_argument("--seeds", type=int, nargs="+", default=[7000001, 7000002, 7000003],
                   help="held-out scene seeds (>= 1000000)")
    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
    p.add_argument("--json", default=None, help="also write the table to this JSON file")
    args = p.parse_args()
    torch.set_num_threads(1)

    from diffusion_handles.diffusion.config import GuidanceConfig
    from diffusion_handles.pipeline import DiffusionHandles
    from diffusion_handles.world.dataset import render_seed
    from diffusion_handles.world.render import DEFAULT_SPP

    dh = DiffusionHandles.from_pretrained(args.model)
    bb = dh.backbone
    rows = []
    for seed in args.seeds:
        r = render_seed((seed, bb.default_size, DEFAULT_SPP))
        x = torch.from_numpy(np.array(r["rgb"])).permute(2, 0, 1)[None].float() / 255.0
        depth = torch.from_numpy(r["depth"].astype(np.float32))[None, None]
        mask = torch.from_numpy((r["ids"] == 0).astype(np.float32))[None, None]
        row = {"seed": seed, "vae": _psnr(bb.decode(bb.encode_image(x)), x)}
        for text in args.configs:
            inv = dh.invert(x, r["caption"], depth, mask, inversion=parse_config(text),
                            guidance=GuidanceConfig(grad_steps=0))
            row[text] = _psnr(inv.reconstruction, x)
        rows.append(row)
        print(seed, " | ".join(f"{k} {v:.2f}" for k, v in row.items() if k != "seed"), flush=True)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "seed"}
    print("mean", " | ".join(f"{k} {v:.2f}" for k, v in mean.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "rows": rows, "mean": mean}, f, indent=1)


if __name__ == "__main__":
    main()
