"""Does a TinyWorld model follow the light its caption names?

For each held-out scene the sun is set to the middle of each of the caption's six sides
(:data:`diffusion_handles.world.scene.LIGHT_SIDES`, elevation 50 degrees, the scene's own
strength and sky), and the model generates from the true depth and each of the six captions on
the same noise (the leak prior's start when the model has one; each object's words bound to its
region, ``world.binding``, unless ``--no-binding``). The same scene is rendered under
each of those suns: what the caption asks for. Per image, two measures of where the light is:

* ``asym``: mean luminance of the left half minus the right half (sRGB in [0, 1]); a sun on
  the left lights the floor's and the objects' left sides and casts shadows to the right;
* ``luma``: mean luminance; a sun behind the camera ("front") lights the back wall, one
  behind the wall ("back") leaves it in shadow.

``summary``: per side, the mean of each measure over the scenes, generated and rendered; and
over all (scene, side) pairs the correlation between generated and rendered ``asym`` and
``luma`` after removing each scene's mean (so it measures only what the light words change).
A model that ignores the light words scores 0; one that follows them as the renderer does, 1.

    python benchmarks/light_words.py --model tinyworld --n 16 --out benchmarks/results/light_words_16.json \
        --strip docs/images/tinyworld_light_words.png
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch

LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)
STEPS = 25
ELEVATION_DEG = 50.0


def _measures(img: np.ndarray) -> tuple[float, float]:
    """``(asym, luma)`` of an ``(H, W, 3)`` image in [0, 1]."""
    y = img @ LUMA
    w = y.shape[1] // 2
    return float(y[:, :w].mean() - y[:, -w:].mean()), float(y.mean())


def _centred_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of ``(scenes, sides)`` arrays after removing each scene's mean."""
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def main(argv: list[str] | None = None) -> dict:
    from PIL import Image

    from diffusion_handles.diffusion.backbone import Backbone, model_folder
    from diffusion_handles.world import leak_prior as lp
    from diffusion_handles.world.binding import Binding
    from diffusion_handles.world.dataset import HELDOUT_SEED0
    from diffusion_handles.world.evaluate import generate
    from diffusion_handles.world.render import DEFAULT_SPP, render, scene_for_seed
    from diffusion_handles.world.scene import LIGHT_SIDES, SUN_AZIMUTH_DEG, sun_direction

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tinyworld")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--first-seed", type=int, default=HELDOUT_SEED0)
    ap.add_argument("--out", default="runs/light_words.json")
    ap.add_argument("--strip", default=None, help="PNG: per scene, a row generated and a row rendered, one column per side")
    ap.add_argument("--strip-n", type=int, default=4)
    ap.add_argument("--no-binding", action="store_true", help="generate without the layout-bound cross-attention")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    bb = Backbone.from_pretrained(args.model)
    folder = model_folder(args.model)
    prior = lp.load(folder, bb) if folder is not None else None
    size = bb.default_size
    lo, hi = SUN_AZIMUTH_DEG
    width = (hi - lo) / len(LIGHT_SIDES)
    centres = [lo + (k + 0.5) * width for k in range(len(LIGHT_SIDES))]
    gen_m, ren_m, rows, tiles = [], [], [], []
    for j in range(args.n):
        s = args.first_seed + j
        base = scene_for_seed(s, size, size)
        g_row, r_row, g_imgs, r_imgs, captions = [], [], [], [], []
        for az in centres:
            scene = copy.deepcopy(base)
            scene.sun_direction = sun_direction(az, ELEVATION_DEG)
            r = render(scene, spp=DEFAULT_SPP, seed=s)
            depth = torch.from_numpy(r.depth.astype(np.float32))[None, None]
            gen = generate(bb, r.caption, depth, seed=j, steps=STEPS, prior=prior,  # the same noise for every side
                           binding=None if args.no_binding else Binding())
            gen = bb.resize_to_work(gen.float().cpu(), (size, size))[0].permute(1, 2, 0).numpy()
            ref = r.rgb.astype(np.float32) / 255.0
            g_row.append(_measures(gen))
            r_row.append(_measures(ref))
            g_imgs.append(gen)
            r_imgs.append(ref)
            captions.append(r.caption)
        gen_m.append(g_row)
        ren_m.append(r_row)
        rows.append({"seed": s, "captions": captions, "generated": g_row, "rendered": r_row})
        if j < args.strip_n:
            tiles.append(np.concatenate([np.concatenate(g_imgs, 1), np.concatenate(r_imgs, 1)], 0))
        print(s, " ".join(f"{a:+.3f}/{b:+.3f}" for (a, _), (b, _) in zip(g_row, r_row, strict=True)), flush=True)
    g, r = np.array(gen_m), np.array(ren_m)  # (n, sides, 2)
    summary = {
        "asym_corr": _centred_corr(g[..., 0], r[..., 0]), "luma_corr": _centred_corr(g[..., 1], r[..., 1]),
        "per_side": {side: {"asym_generated": float(g[:, k, 0].mean()), "asym_rendered": float(r[:, k, 0].mean()),
                            "luma_generated": float(g[:, k, 1].mean()), "luma_rendered": float(r[:, k, 1].mean())}
                     for k, side in enumerate(LIGHT_SIDES)},
        "leak_prior": prior is not None, "binding": not args.no_binding,
    }
    print(f"asym corr {summary['asym_corr']:.3f}  luma corr {summary['luma_corr']:.3f}")
    for side, m in summary["per_side"].items():
        print(f"{side:12s} asym {m['asym_generated']:+.3f} (rendered {m['asym_rendered']:+.3f})  "
              f"luma {m['luma_generated']:.3f} (rendered {m['luma_rendered']:.3f})")
    result = {"model": args.model, "n": args.n, "first_seed": args.first_seed, "elevation_deg": ELEVATION_DEG,
              "sides": list(LIGHT_SIDES), "summary": summary, "scenes": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    if args.strip and tiles:
        img = (np.clip(np.concatenate(tiles, 0), 0, 1) * 255 + 0.5).astype(np.uint8)
        scale = max(1, 256 // size)
        Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST).save(args.strip)
    return result


if __name__ == "__main__":
    main()
