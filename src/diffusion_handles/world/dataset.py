"""Rendering a TinyWorld training set into one compact ``.npz`` file.

Arrays (N scenes, H x W images), stored compressed (``np.savez_compressed``, about 30 MB for
1000 scenes at 128x128: small enough to carry to a GPU machine with the working tree):

* ``rgb`` ``(N, H, W, 3)`` uint8 sRGB; depth as inverse z-depth quantised linearly to uint16
  between ``inv_depth_range`` ``(2,)`` float64 (relative error below 1e-4 for TinyWorld's
  depths), stored as ``inv_depth_delta`` ``(N, H, W)`` uint16: the differences down the rows of
  the differences along them (modulo 2^16, so exactly invertible), which compress better than
  the values on these smooth depth maps (a JPEG pack of 2500 scenes at 128 px: 28.7 instead of 33.4 MiB);
  :func:`load_dataset` returns ``depth`` float32 z-depth. Older files with ``inv_depth`` (the
  values) or a float16 ``depth`` array load too;
* ``ids`` ``(N, H, W)`` uint8 object index per pixel (255 = floor / wall);
* or, in a JPEG pack (``handles world pack --jpeg-quality Q``, about half the size), ``rgb_jpeg``
  ``(bytes,)`` uint8 (the JPEG files one after another), ``rgb_jpeg_offsets`` ``(N + 1,)`` int64
  and ``rgb_jpeg_quality`` ``()``: lossy (quality 95 measured 40.5 dB mean PSNR against the
  render, 38.2 at the lowest, on seeds 0-2499; ``handles world pack`` prints the figure), so only
  for the UNet stage (the latents the frozen encoder makes of it);
  :func:`load_dataset` decodes it into ``rgb`` and keeps ``rgb_jpeg_quality`` as a marker (also through a
  lossless re-pack: the images stay JPEG-decoded);
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
    return {"rgb": r.rgb, "depth": r.depth.astype(np.float32), "ids": ids, "caption": r.caption,
            "caption_mirrored": scene.caption(mirrored=True), "seed": seed, "scene": scene.to_json()}


def captions_of(data: dict) -> tuple[list[str], list[str]]:
    """The captions of a loaded training set and of its mirrored images, ``(N,)`` each.

    Written afresh from the scene records when the file has them, so a training set rendered
    before a change of the world's caption (such as the light's side, added in model version
    2.8) trains on the captions the world writes now; otherwise the stored ones.
    """
    from diffusion_handles.world.scene import Scene

    if "scene" in data:
        scenes = [Scene.from_json(str(s)) for s in data["scene"]]
        return [s.caption() for s in scenes], [s.caption(mirrored=True) for s in scenes]
    return [str(c) for c in data["caption"]], [str(c) for c in data["caption_mirrored"]]


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
    data = {
        "rgb": np.stack([r["rgb"] for r in rows]), "depth": np.stack([r["depth"] for r in rows]).astype(np.float32),
        "ids": np.stack([r["ids"] for r in rows]), "caption": np.array([r["caption"] for r in rows]),
        "caption_mirrored": np.array([r["caption_mirrored"] for r in rows]),
        "seed": np.array([r["seed"] for r in rows], np.int64), "scene": np.array([r["scene"] for r in rows]),
    }
    return save_dataset(out, data)


def save_dataset(out: str | Path, data: dict[str, np.ndarray], jpeg_quality: int | None = None) -> Path:
    """Write ``data`` (as :func:`load_dataset` returns it) compressed, depth as 16-bit inverse
    depth; with ``jpeg_quality`` (1-100) the images as JPEG files (lossy, see the module doc)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: v for k, v in data.items() if k != "depth"}  # a decoded JPEG pack keeps its marker
    if jpeg_quality is not None:
        if not 1 <= int(jpeg_quality) <= 100:
            raise ValueError(f"jpeg_quality: expected an integer in [1, 100], got {jpeg_quality!r}")
        arrays.update(_jpeg_pack(arrays.pop("rgb"), int(jpeg_quality)))
    inv = 1.0 / np.asarray(data["depth"], np.float64)
    lo, hi = float(inv.min()), float(inv.max())
    q = np.round((inv - lo) / max(hi - lo, 1e-12) * 65535.0).astype(np.uint16)  # (N, H, W)
    along = np.diff(q, axis=2, prepend=np.uint16(0))  # uint16 arithmetic wraps modulo 2^16
    arrays["inv_depth_delta"] = np.diff(along, axis=1, prepend=np.uint16(0))
    arrays["inv_depth_range"] = np.array([lo, hi], np.float64)
    tmp = out.with_name(out.name + ".partial.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(out)
    return out


def lossy_psnr(path: str | Path, data: dict[str, np.ndarray]) -> tuple[float, float]:
    """What a lossy pack cost: PSNR (dB, mean and lowest over the images) of the images stored in
    ``path`` against ``data["rgb"]`` ``(N, H, W, 3)`` uint8, measured on the file as written."""
    err = load_dataset(path)["rgb"].astype(np.float32) - data["rgb"].astype(np.float32)
    mse = np.mean(err.reshape(len(err), -1) ** 2, axis=1)
    psnr = 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12))
    return float(psnr.mean()), float(psnr.min())


def merge_datasets(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One training set of several (as :func:`load_dataset` returns them), scenes in order.

    Raises ``ValueError`` when the parts differ in image size or share a seed (a scene twice)."""
    if len(parts) == 1:
        return parts[0]
    sizes = {p["rgb"].shape[1:] for p in parts}
    if len(sizes) > 1:
        raise ValueError(f"expected training sets of one image size, got {sorted(sizes)}")
    seeds = np.concatenate([p["seed"] for p in parts])
    if len(np.unique(seeds)) < len(seeds):
        raise ValueError(f"expected disjoint seeds, got {len(seeds) - len(np.unique(seeds))} seed(s) in more than one set")
    quality = [int(p["rgb_jpeg_quality"]) for p in parts if "rgb_jpeg_quality" in p]
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "rgb_jpeg_quality"}
    if quality:  # any JPEG-decoded part makes the whole set lossy
        out["rgb_jpeg_quality"] = np.array(min(quality))
    return out


def jpeg_quality_of(path: str | Path) -> int | None:
    """The JPEG quality of a JPEG pack (lossy images), ``None`` for a lossless training set.
    Reads only the marker, not the images."""
    with np.load(path, allow_pickle=False) as z:
        return int(z["rgb_jpeg_quality"]) if "rgb_jpeg_quality" in z.files else None


def _jpeg_pack(rgb: np.ndarray, quality: int) -> dict[str, np.ndarray]:
    """``(N, H, W, 3)`` uint8 images as JPEG files (no chroma subsampling) in one byte array."""
    import io

    from PIL import Image

    files = []
    for im in rgb:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, "JPEG", quality=quality, subsampling=0)
        files.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in files])]).astype(np.int64)
    return {"rgb_jpeg": np.concatenate(files), "rgb_jpeg_offsets": offsets, "rgb_jpeg_quality": np.array(quality)}


def _jpeg_unpack(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The ``(N, H, W, 3)`` uint8 images of :func:`_jpeg_pack`'s byte array."""
    import io

    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(blob[a:b].tobytes())).convert("RGB"))
                     for a, b in zip(offsets[:-1], offsets[1:], strict=True)])


def load_dataset(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a training set; ``depth`` ``(N, H, W)`` float32 z-depth and ``rgb``
    ``(N, H, W, 3)`` uint8 whatever the stored form (a JPEG pack keeps ``rgb_jpeg_quality``)."""
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    if "rgb_jpeg" in data:
        data["rgb"] = _jpeg_unpack(data.pop("rgb_jpeg"), data.pop("rgb_jpeg_offsets"))
    if "inv_depth_delta" in data:  # undo the two differences (uint16 sums wrap like the differences did)
        d = data.pop("inv_depth_delta")
        data["inv_depth"] = np.cumsum(np.cumsum(d, axis=1, dtype=np.uint16), axis=2, dtype=np.uint16)
    if "inv_depth" in data:
        lo, hi = (float(v) for v in data.pop("inv_depth_range"))
        q = data.pop("inv_depth").astype(np.float64)
        data["depth"] = (1.0 / (lo + q / 65535.0 * (hi - lo))).astype(np.float32)
    return data
