"""Quality of the miniature model against ground-truth renders on held-out seeds.

For every held-out scene the model generates an image from the *true* z-depth and caption
(DDIM, classifier-free guidance, fixed noise seed; the starting latent given the leak its
:mod:`~diffusion_handles.world.leak_prior` predicts when the model folder has one, unless
``leak_prior=False``; each object's words bound to the region the depth gives it,
:mod:`~diffusion_handles.world.binding`, unless ``binding=False``). Figures, each averaged over scenes:

* ``psnr`` / ``ssim``: generated vs rendered image (sRGB in [0, 1]).
* ``iou_fg`` / ``iou_obj``: silhouette IoU. Each generated pixel is labelled (object k or
  background) by its 5 nearest colours among the rendered image's labelled pixels; IoU against
  the true masks, for the union of objects (``iou_fg``) and per object (``iou_obj``). The same
  labelling applied to an independent re-render of the scene (another sampler seed) gives the
  metric's ceiling (``ceiling_*``).
* ``colour_err``: per object, distance in sRGB 0-255 between the mean generated and the mean
  rendered colour inside the true mask.

Baselines in the same table: ``vae`` (the rendered image through the VAE, the model's ceiling),
``other`` (the render of a different held-out scene: what "ignores the input" scores) and
``relit`` (the same scene rendered under a sun and sky drawn afresh from the world's range, the
sun kept on the side the caption names, :func:`~diffusion_handles.world.scene.relight` with
``len(LIGHT_SIDES)`` sectors). The caption names the sun's side to within 50 degrees and nothing
else of the light (its elevation, strength, the sky), so ``relit`` is what a perfect generator
scores when it draws the rest of the light as the world does. A model that hedges towards an
average light can score somewhat better on PSNR and colour error.

``metrics.json`` also carries ``figures``, stable keys for the model's headline numbers:
``vae_psnr`` (the round trip the pipeline starts from: the encoder, then the model's own
``encode_refine_steps`` of latent refinement; ``vae_psnr_min`` its worst scene,
``vae_psnr_encoder`` the encoder's latent alone), ``reconstruction_psnr`` (null-text inversion at 50 steps, an identity edit, vs the
input; over the first ``recon_n`` scenes), ``generation_psnr``, ``generation_ssim``,
``generation_iou_obj``, ``generation_iou_fg``, ``generation_colour_err`` and ``object_cells``
(mean number of cells an object covers on the finest guided feature map, the latent grid),
``relit_psnr``, ``relit_iou_obj`` and ``relit_colour_err`` (the ``relit`` reference),
``leak_prior`` (whether generation used one), ``binding`` (whether it bound each object's
words to its region, :mod:`~diffusion_handles.world.binding`), ``denoise_loss_heldout`` and, given training data, ``denoise_loss_train``: the UNet's
epsilon-prediction error (:func:`denoising_loss`) on the held-out scenes and on as many training
scenes. A train figure well below the held-out one means the model memorised its training set
(more data helps more than more steps).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class GenerateConfig:
    """How :func:`generate` samples: the noise ``seed``, DDIM ``steps``, classifier-free ``guidance``,
    the leak ``prior`` (a :class:`~diffusion_handles.world.leak_prior.LeakPrior`, or None) and the
    ``binding`` (a :class:`~diffusion_handles.world.binding.Binding`, or None: unbound)."""

    seed: int = 0
    steps: int = 25
    guidance: float = 4.0
    prior: Any = None
    binding: Any = None


@torch.no_grad()
def generate(backbone, caption: str, depth: torch.Tensor, config: GenerateConfig | None = None, *,
             init: torch.Tensor | None = None, **settings) -> torch.Tensor:
    """Image ``(1, 3, H, W)`` in [0, 1] from z-depth ``(1, 1, H, W)`` (scene units) and a caption.

    ``config`` (default :class:`GenerateConfig`), with any of its fields given as keywords
    (``seed=``, ``steps=``, ``guidance=``, ``prior=``, ``binding=``) taking precedence.
    ``init``: the starting latent x_T ``(1, C, h, w)``; default N(0, 1) drawn from ``seed``, given
    the leak ``prior`` predicts, if any. ``binding``: bind each object's words
    to the region the depth gives it (:mod:`~diffusion_handles.world.binding`); generation is
    unbound when the caption names no object or the depth shows fewer objects than it names.
    """
    from diffusion_handles.diffusion.conditioning import depth_to_condition
    from diffusion_handles.world import binding as bd

    cfg = dataclasses.replace(config or GenerateConfig(), **settings)
    h, w = backbone.latent_hw(tuple(depth.shape[-2:]))
    cond = depth_to_condition(depth.float(), (h, w)).to(backbone.device)
    text = torch.cat([backbone.encode_prompt(""), backbone.encode_prompt(caption)])  # (2, L, D)
    g = torch.Generator().manual_seed(cfg.seed)
    c = int(backbone.vae.config.latent_channels)
    sched = backbone.schedule(cfg.steps)
    if init is None:
        init = torch.randn((1, c, h, w), generator=g)
        if cfg.prior is not None:
            init = cfg.prior.start(backbone, caption, depth, init, float(sched.alpha[0]))
    x = init.to(backbone.device)
    tokens = bd.phrase_tokens(caption, backbone.tokenizer) if cfg.binding is not None else []
    regions = bd.object_regions(depth[0, 0].cpu().numpy(), len(tokens)) if tokens else None
    with (bd.bound(backbone.unet, torch.from_numpy(regions), tokens, (h, w), rows=[1], binding=cfg.binding)
          if regions is not None else contextlib.nullcontext()):
        x = _sample(backbone, x, sched, text, cond, cfg.guidance)
    return backbone.decode(x)


def _sample(backbone, x: torch.Tensor, sched, text: torch.Tensor, cond: torch.Tensor, guidance: float) -> torch.Tensor:
    """DDIM with classifier-free guidance from ``x = x_T``; ``text (2, L, D)`` is [unconditional, caption]."""
    from diffusion_handles.diffusion.ddim import ddim_step, to_eps_x0

    for i, t in enumerate(sched.timesteps):
        out = backbone.unet_eval(torch.cat([x, x]), t, text, cond)
        eps_u, eps_c = to_eps_x0(out, torch.cat([x, x]), sched.alpha[i], sched.prediction_type)[0].chunk(2)
        eps = eps_u + guidance * (eps_c - eps_u)
        x = ddim_step(eps, x, sched.alpha[i], sched.alpha_prev[i])
    return x


def knn_labels(image: np.ndarray, reference: np.ndarray, ref_labels: np.ndarray, k: int = 5) -> np.ndarray:
    """Label each pixel of ``image (H, W, 3)`` by majority of its ``k`` nearest reference colours.

    ``reference (H, W, 3)`` float, ``ref_labels (H, W)`` int in ``[0, n)``. Returns ``(H, W)``;
    a tied vote goes to the lowest label. The neighbours are exact (a k-d tree over the reference
    colours, distances in float64): 25 times faster than all pairwise distances at 128x128, which
    in float32 also rounded near-equal distances either way.
    """
    from scipy.spatial import cKDTree

    tree = cKDTree(reference.reshape(-1, 3).astype(np.float64))
    _, nn = tree.query(image.reshape(-1, 3).astype(np.float64), k=k)  # (HW, k) reference indices
    lab = ref_labels.reshape(-1).astype(np.int64)
    votes = np.eye(int(lab.max()) + 1, dtype=np.int64)[lab[nn.reshape(len(nn), -1)]].sum(1)  # (HW, n)
    return votes.argmax(1).reshape(image.shape[:2])


def object_count(ids: np.ndarray) -> int:
    """Objects in an id map ``(H, W)`` uint8 (``k`` for object k, 255 for the background)."""
    fg = ids[ids != 255]
    return int(fg.max()) + 1 if fg.size else 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / u) if u else 1.0


def image_metrics(gen: np.ndarray, ref: np.ndarray, ids: np.ndarray, n_obj: int) -> dict:
    """Metrics of ``gen`` vs ``ref`` (both ``(H, W, 3)`` float in [0, 1]); ``ids`` 255 = background."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    labels = np.where(ids == 255, n_obj, ids).astype(np.int64)
    pred = knn_labels(gen, ref, labels)
    ious = [_iou(pred == k, labels == k) for k in range(n_obj)]
    cerr = [float(np.linalg.norm((gen[labels == k].mean(0) - ref[labels == k].mean(0)) * 255.0))
            for k in range(n_obj) if (labels == k).any()]
    return {
        "psnr": float(peak_signal_noise_ratio(ref, gen, data_range=1.0)),
        "ssim": float(structural_similarity(ref, gen, channel_axis=-1, data_range=1.0)),
        "iou_fg": _iou(pred < n_obj, labels < n_obj),
        "iou_obj": float(np.mean(ious)) if ious else float("nan"),
        "colour_err": float(np.mean(cerr)) if cerr else float("nan"),
    }


def reconstruct(handles, image: torch.Tensor, caption: str, depth: torch.Tensor, mask: torch.Tensor,
                steps: int = 50) -> torch.Tensor:
    """The identity edit: null-text inversion at ``steps`` (Sec. 5) and its reconstruction.

    ``image (1, 3, H, W)`` in [0, 1], ``depth (1, 1, H, W)`` z-depth, ``mask (1, 1, H, W)``.
    Returns the reconstruction ``(1, 3, H, W)`` in [0, 1] at the input's size.
    """
    from diffusion_handles.diffusion.config import GuidanceConfig, InversionConfig

    inv = handles.invert(image, caption, depth, mask, inversion=InversionConfig(num_steps=steps),
                         guidance=GuidanceConfig(grad_steps=0))
    return handles.backbone.resize_to_work(inv.reconstruction.float().cpu(), tuple(image.shape[-2:]))


RELIGHT_SEED = 777  # the relit reference's light is drawn from seed + RELIGHT_SEED
DENOISE_TIMESTEPS = (50, 200, 400, 600, 800)  # spread over SD's 1000-step schedule


@torch.no_grad()
def denoising_loss(backbone, z0: torch.Tensor, depth: torch.Tensor, caption: str, *, seed: int = 0,
                   timesteps: tuple[int, ...] = DENOISE_TIMESTEPS) -> float:
    """The training objective on one image: mean squared error of the predicted noise.

    Args:
        backbone: a :class:`~diffusion_handles.diffusion.backbone.Backbone`.
        z0: ``(1, c, h, w)`` the image's scaled latent (``backbone.encode_image``).
        depth: ``(1, 1, H, W)`` z-depth, scene units.
        caption: the image's caption.
        seed: seeds the noise (one draw per timestep, shared by every image with this seed).
        timesteps: noise levels ``t`` of the 1000-step schedule, one batched UNet pass.

    Returns:
        ``mean_t |eps_theta(sqrt(a_t) z0 + sqrt(1 - a_t) eps, t, depth, caption) - eps|^2``.
    """
    from diffusion_handles.diffusion.conditioning import depth_to_condition

    ts = torch.tensor(timesteps, device=z0.device)
    eps = torch.randn((len(ts), *z0.shape[1:]), generator=torch.Generator().manual_seed(seed)).to(z0.device)
    zt = backbone.scheduler.add_noise(z0.expand(len(ts), -1, -1, -1), eps, ts)  # sqrt(a_t) z0 + sqrt(1 - a_t) eps
    cond = depth_to_condition(depth.to(z0.device), tuple(z0.shape[-2:]))
    text = backbone.encode_prompt(caption).expand(len(ts), -1, -1)
    pred = backbone.unet_eval(zt, ts, text, cond)
    return float((pred.float() - eps).pow(2).mean())


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(float(np.mean((a - b) ** 2)), 1e-12)))


def _train_denoise_loss(bb, path: str | Path, n: int, seed: int) -> float:
    """:func:`denoising_loss` averaged over the first ``n`` scenes of a training set."""
    from diffusion_handles.world.dataset import load_dataset

    data = load_dataset(path)
    losses = []
    for j in range(min(n, len(data["rgb"]))):
        x = torch.from_numpy(data["rgb"][j]).permute(2, 0, 1)[None].float() / 255.0
        hw = tuple(x.shape[-2:])
        depth = torch.from_numpy(data["depth"][j].astype(np.float32))[None, None]
        z0 = bb.encode_image(bb.resize_to_work(x, bb.work_size(hw)), refine_steps=0)  # the latents it trained on
        losses.append(denoising_loss(bb, z0, depth, str(data["caption"][j]), seed=seed))
    return float(np.mean(losses))


@dataclass(frozen=True)
class EvalConfig:
    """What :func:`evaluate` measures: ``n`` held-out scenes from ``first_seed`` (None: the first
    held-out seed), generated with ``steps`` DDIM steps at ``guidance`` from noise seeds ``seed + j``;
    ``recon_n`` of them (the first ones) also reconstructed; rendered at ``size`` (None: the model's
    native size); ``train_data`` (a training set) adds ``denoise_loss_train``; ``leak_prior`` /
    ``binding``: generate with the model folder's leak prior / with layout-bound cross-attention."""

    n: int = 32
    steps: int = 25
    guidance: float = 4.0
    seed: int = 0
    first_seed: int | None = None
    recon_n: int = 8
    size: int | None = None
    train_data: str | Path | None = None
    leak_prior: bool = True
    binding: bool = True


@dataclass
class _Eval:
    """An evaluation under way: its settings, the loaded pipeline and what generation uses."""

    cfg: EvalConfig
    handles: Any
    first: int
    size: int
    prior: Any


def evaluate(model: str = "tinyworld", out: str | Path = "runs/world/eval", config: EvalConfig | None = None,
             **settings) -> dict:
    """Evaluate on held-out seeds ``first_seed .. first_seed + n - 1``; writes ``metrics.json``, ``grid.png``
    and ``recon_grid.png`` (input | reconstruction) into ``out``.

    ``config`` (default :class:`EvalConfig`), with any of its fields given as keywords taking
    precedence. ``recon_n`` scenes (the first ones) also get the null-text reconstruction figure
    (0: none). ``size`` renders at another size than the model's native one (the images are
    processed at the size the model accepts). ``train_data`` (a training set, ``handles world
    dataset``) adds ``denoise_loss_train`` on its first ``n`` scenes. ``leak_prior=False``
    generates from plain noise even when the model folder has a leak prior; ``binding=False``
    without the layout-bound cross-attention (:mod:`~diffusion_handles.world.binding`).
    """
    from tqdm import tqdm

    cfg = dataclasses.replace(config or EvalConfig(), **settings)
    ev = _start(model, cfg)
    rows, grid, rgrid, cells = [], [], [], []
    for j in tqdm(range(cfg.n), desc="eval"):
        row, obj_cells, tile, recon_tile = _eval_scene(ev, j)
        rows.append(row)
        cells += obj_cells
        if tile is not None:
            grid.append(tile)
        if recon_tile is not None:
            rgrid.append(recon_tile)
    recon = [r["reconstruction_psnr"] for r in rows if "reconstruction_psnr" in r]
    summary = {name: {m: float(np.nanmean([r[name][m] for r in rows])) for m in rows[0]["model"]}
               for name in ("model", "ceiling", "vae", "other", "relit")}
    figures = _figures(ev, rows, summary, cells, recon)
    if cfg.train_data is not None:
        figures["denoise_loss_train"] = _train_denoise_loss(ev.handles.backbone, cfg.train_data, cfg.n, cfg.seed)
    result = {"model": model, "n": cfg.n, "steps": cfg.steps, "guidance": cfg.guidance, "first_seed": ev.first,
              "size": ev.size, "recon_n": len(recon), "figures": figures, "summary": summary, "scenes": rows}
    _write_eval(Path(out), result, (grid, rgrid), ev.size)
    return result


def _start(model: str, cfg: EvalConfig) -> _Eval:
    """Seed torch, load the pipeline (and the model folder's leak prior, when wanted)."""
    from diffusion_handles.diffusion.backbone import model_folder
    from diffusion_handles.pipeline import DiffusionHandles
    from diffusion_handles.world import leak_prior as lp
    from diffusion_handles.world.dataset import HELDOUT_SEED0

    first = HELDOUT_SEED0 if cfg.first_seed is None else int(cfg.first_seed)
    torch.manual_seed(cfg.seed)
    handles = DiffusionHandles.from_pretrained(model).set_progress_bar_config(disable=True)
    bb = handles.backbone
    folder = model_folder(model)
    prior = lp.load(folder, bb) if cfg.leak_prior and folder is not None else None
    return _Eval(cfg, handles, first, cfg.size or bb.default_size, prior)


def _eval_scene(ev: _Eval, j: int) -> tuple[dict, list[float], np.ndarray | None, np.ndarray | None]:
    """Scene ``j``: ``(row, each object's latent cells, grid tile, reconstruction tile)`` (tiles
    for the first 8 scenes only, else None)."""
    from diffusion_handles.world.binding import Binding
    from diffusion_handles.world.dataset import render_seed
    from diffusion_handles.world.render import DEFAULT_SPP, render, scene_for_seed
    from diffusion_handles.world.scene import LIGHT_SIDES, relight

    cfg, bb, size, s = ev.cfg, ev.handles.backbone, ev.size, ev.first + j
    r = render_seed((s, size, DEFAULT_SPP))
    ref = r["rgb"].astype(np.float32) / 255.0
    depth = torch.from_numpy(r["depth"].astype(np.float32))[None, None]
    n_obj = object_count(r["ids"])
    gen = generate(bb, r["caption"], depth, seed=cfg.seed + j, steps=cfg.steps, guidance=cfg.guidance, prior=ev.prior,
                   binding=Binding() if cfg.binding else None)
    gen = bb.resize_to_work(gen.float().cpu(), (size, size))[0].permute(1, 2, 0).numpy()
    scene = scene_for_seed(s, size, size)
    rerender, relit = (render(sc, spp=DEFAULT_SPP, seed=s + 12345).rgb.astype(np.float32) / 255.0
                       for sc in (scene, relight(scene, s + RELIGHT_SEED, len(LIGHT_SIDES))))
    x = torch.from_numpy(ref).permute(2, 0, 1)[None]
    xw = bb.resize_to_work(x, bb.work_size((size, size)))
    z_enc = bb.encode_image(xw, refine_steps=0)  # (1, c, h, w), scaled: the encoder's latent
    z0 = bb.encode_image(xw) if bb.encode_refine_steps else z_enc  # what the pipeline starts from
    vae, vae_enc = (bb.resize_to_work(bb.decode(z).float().cpu(), (size, size))[0].permute(1, 2, 0).numpy()
                    for z in (z0, z_enc))
    other = render_seed((ev.first + (j + 1) % max(cfg.n, 2), size, 16))["rgb"].astype(np.float32) / 255.0
    row = {"seed": s, "caption": r["caption"], "model": image_metrics(gen, ref, r["ids"], n_obj),
           "ceiling": image_metrics(rerender, ref, r["ids"], n_obj), "vae": image_metrics(vae, ref, r["ids"], n_obj),
           "other": image_metrics(other, ref, r["ids"], n_obj), "relit": image_metrics(relit, ref, r["ids"], n_obj)}
    row["vae_encoder_psnr"] = _psnr(vae_enc, ref)
    row["denoise_loss"] = denoising_loss(bb, z_enc, depth, r["caption"], seed=cfg.seed)
    lh, lw = bb.latent_hw((size, size))
    cells = [float((r["ids"] == k).sum()) * lh * lw / (size * size) for k in range(n_obj)]
    recon_tile = None
    if j < cfg.recon_n and n_obj:
        mask = torch.from_numpy((r["ids"] == 0).astype(np.float32))[None, None]
        rec = reconstruct(ev.handles, x, r["caption"], depth, mask)[0].permute(1, 2, 0).numpy()
        row["reconstruction_psnr"] = _psnr(rec, ref)
        if j < 8:
            recon_tile = np.concatenate([ref, rec], 1)
    tile = None
    if j < 8:
        inv = 1.0 / r["depth"].astype(np.float32)
        dimg = np.repeat(((inv - inv.min()) / max(float(np.ptp(inv)), 1e-6))[..., None], 3, -1)
        tile = np.concatenate([dimg, gen, ref], 1)
    return row, cells, tile, recon_tile


def _figures(ev: _Eval, rows: list[dict], summary: dict, cells: list[float], recon: list[float]) -> dict:
    """The headline figures of ``metrics.json`` (module docstring); ``denoise_loss_train`` None."""
    bb, gm = ev.handles.backbone, summary["model"]
    return {"vae_psnr": summary["vae"]["psnr"], "vae_psnr_encoder": float(np.mean([r["vae_encoder_psnr"] for r in rows])),
            "vae_psnr_min": float(min(r["vae"]["psnr"] for r in rows)),
            "encode_refine_steps": bb.encode_refine_steps, "reconstruction_psnr": float(np.mean(recon)) if recon else None,
            "generation_psnr": gm["psnr"], "generation_ssim": gm["ssim"], "generation_iou_obj": gm["iou_obj"],
            "generation_iou_fg": gm["iou_fg"], "generation_colour_err": gm["colour_err"],
            "object_cells": float(np.mean(cells)) if cells else None, "relit_psnr": summary["relit"]["psnr"],
            "relit_iou_obj": summary["relit"]["iou_obj"], "relit_colour_err": summary["relit"]["colour_err"],
            "leak_prior": ev.prior is not None, "binding": bool(ev.cfg.binding),
            "denoise_loss_heldout": float(np.mean([r["denoise_loss"] for r in rows])), "denoise_loss_train": None}


def _write_eval(out: Path, result: dict, grids: tuple[list, list], size: int) -> None:
    """``metrics.json``, and ``grid.png`` / ``recon_grid.png`` from their tiles (when there are any)."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    for name, tiles in zip(("grid.png", "recon_grid.png"), grids, strict=True):
        if tiles:
            g = (np.clip(np.concatenate(tiles, 0), 0, 1) * 255 + 0.5).astype(np.uint8)
            scale = max(1, 256 // size)  # nearest-neighbour upscale so tiles are at least 256 px
            Image.fromarray(g).resize((g.shape[1] * scale, g.shape[0] * scale), Image.NEAREST).save(out / name)
