"""Rendering a TinyWorld training set into one compact ``.npz`` file.

Arrays (N scenes, H x W images):

* ``rgb`` ``(N, H, W, 3)`` uint8 sRGB; ``depth`` ``(N, H, W)`` float16 z-depth (scene units);
* ``ids`` ``(N, H, W)`` uint8 object index per pixel (255 = floor / wall);
* ``caption`` / ``caption_mirrored`` ``(N,)`` str (the latter describes the left-right flipped
  image, used for flip augmentation); ``seed`` ``(N,)`` int64; ``scene`` ``(N,)`` JSON str.

Training seeds are ``0 .. N-1``; held-out evaluation seeds start at :data:`HELDOUT_SEED0`
and are never rendered into a training set.
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np

from diffusion_handles.world.render import DEFAULT_SPP
from diffusion_handles.world.scene import DEFAULT_SIZE

HELDOUT_SEED0 = 1_000_000  # evaluation seeds: HELDOUT_SEED0, HELDOUT_SEED0 + 1, ...


def render_seed(args: tuple[int, int, int]) -> dict:
    """Render the canonical scene of one seed (worker function)."""
    from diffusion_handles.world.render import render, scene_for_seed

    seed, size, spp = args
    scene = scene_for_seed(seed, size, size)
    r = render(scene, spp=spp, seed=seed)
    ids = np.full(r.depth.shape, 255, np.uint8)
    for k, m in enumerate(r.masks):
        ids[m] = k
    return {"rgb": r.rgb, "depth": r.depth.astype(np.float16), "ids": ids, "caption": r.caption,
            "caption_mirrored": scene.caption(mirrored=True), "seed": seed, "scene": scene.to_json()}


def build_dataset(out: str | Path, seeds, size: int = DEFAULT_SIZE, spp: int = DEFAULT_SPP, workers: int = 2) -> Path:
    """Render ``seeds`` into ``out`` (.npz). At most ``workers`` processes (default 2)."""
    from tqdm import tqdm

    seeds = [int(s) for s in seeds]
    jobs = [(s, size, spp) for s in seeds]
    rows: list[dict] = []
    if workers <= 1:
        for j in tqdm(jobs, desc="render", unit="scene"):
            rows.append(render_seed(j))
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            for row in tqdm(pool.imap(render_seed, jobs, chunksize=8), total=len(jobs), desc="render", unit="scene"):
                rows.append(row)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial.npz")
    np.savez(
        tmp,
        rgb=np.stack([r["rgb"] for r in rows]), depth=np.stack([r["depth"] for r in rows]),
        ids=np.stack([r["ids"] for r in rows]), caption=np.array([r["caption"] for r in rows]),
        caption_mirrored=np.array([r["caption_mirrored"] for r in rows]),
        seed=np.array([r["seed"] for r in rows], np.int64), scene=np.array([r["scene"] for r in rows]),
    )
    tmp.replace(out)
    return out


def load_dataset(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
