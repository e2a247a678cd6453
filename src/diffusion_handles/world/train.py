"""Training the miniature model on a rendered TinyWorld set (seeded, resumable, CPU or GPU).

Two stages, each resumable from its checkpoint in ``run_dir``:

1. **VAE** (``vae.pt``): random 64x64 crops (the VAE is convolutional), L1 reconstruction plus
   a small KL term. Afterwards the whole set (and its mirror images) is encoded once
   (posterior mean) into ``latents.pt`` and ``scaling_factor = 1 / std(latents)`` is stored
   in the VAE config, as SD's VAEs carry theirs.
2. **UNet + text encoder** (``unet.pt``): epsilon prediction on the cached latents with the
   depth channel from :func:`diffusion_handles.diffusion.conditioning.depth_to_condition`,
   min-SNR-5 loss weighting, 10 % empty captions (for classifier-free guidance and null-text
   inversion), left-right flip augmentation (image, depth and the mirrored caption), an EMA of
   the weights (exported).

``export`` writes the diffusers folder (:func:`diffusion_handles.world.model.save_model`).
Every stage logs ``step, loss, seconds`` lines to ``run_dir/train.log``.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffusion_handles.world.model import (
    build_components,
    build_tokenizer_files,
    load_tokenizer,
    save_model,
)


@dataclass
class TrainConfig:
    """Training settings (defaults: what the shipped model used; see MODEL_CARD.md)."""

    data: str = "runs/world/train.npz"
    run_dir: str = "runs/world/train"
    seed: int = 0
    device: str = "cpu"
    threads: int = 1  # one thread: on a shared, oversubscribed CPU this was ~10x faster than two
    vae_steps: int = 700
    vae_batch: int = 24
    vae_crop: int = 32
    vae_lr: float = 1e-3
    vae_kl: float = 1e-6
    unet_steps: int = 6479
    unet_batch: int = 32
    unet_lr: float = 5e-4
    warmup: int = 100
    ema: float = 0.995
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    ckpt_every: int = 50
    log_every: int = 10
    max_minutes: float = 0.0  # stop (with a checkpoint) after this wall time per call; 0 = no limit
    decoder_steps: int = 200  # stage 3: decoder-only fine-tuning (encoder frozen, so latents stay valid)
    decoder_batch: int = 16
    decoder_lr: float = 5e-4
    stage: str = "all"  # "all" (vae, unet, decoder) or "decoder" (stage 3 alone, e.g. beside a unet run)


class _Log:
    def __init__(self, path: Path):
        self.path = path

    def __call__(self, msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


def _save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _lr(step: int, base: float, warmup: int) -> float:
    return base * min(1.0, (step + 1) / max(1, warmup))


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) both stages; returns ``run_dir``."""
    from tqdm import tqdm

    from diffusion_handles.diffusion.conditioning import depth_to_condition
    from diffusion_handles.world.dataset import load_dataset

    torch.set_num_threads(cfg.threads)
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    log = _Log(run / "train.log")
    (run / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    t_start = time.time()

    def out_of_time() -> bool:
        return cfg.max_minutes > 0 and (time.time() - t_start) > cfg.max_minutes * 60

    dev = torch.device(cfg.device)
    tok_dir = run / "tokenizer_files"
    if not (tok_dir / "vocab.json").exists():
        build_tokenizer_files(tok_dir)
    tokenizer = load_tokenizer(tok_dir)
    comps = build_components(tokenizer, seed=cfg.seed)
    vae, unet, text_encoder = comps["vae"].to(dev), comps["unet"].to(dev), comps["text_encoder"].to(dev)
    data = load_dataset(cfg.data)
    n = len(data["rgb"])
    log(f"data {cfg.data}: {n} scenes, {data['rgb'].shape[1]}x{data['rgb'].shape[2]}")

    # ------------------------------------------------------------------ stage 1: VAE
    vae_ckpt = run / "vae.pt"
    vopt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    vstep = 0
    if vae_ckpt.exists():
        st = torch.load(vae_ckpt, map_location=dev, weights_only=False)
        vae.load_state_dict(st["model"])
        vopt.load_state_dict(st["opt"])
        vstep = st["step"]
        log(f"vae: resumed at step {vstep}")
    rgb = torch.from_numpy(data["rgb"]).permute(0, 3, 1, 2)  # (N, 3, H, W) uint8
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + vstep)
    if vstep < cfg.vae_steps:
        vae.train()
        bar = tqdm(range(vstep, cfg.vae_steps), desc="vae", initial=vstep, total=cfg.vae_steps)
        for step in bar:
            idx = torch.randint(0, n, (cfg.vae_batch,), generator=gen)
            cs = cfg.vae_crop
            oy, ox = (torch.randint(0, rgb.shape[2] - cs + 1, (2,), generator=gen)).tolist()
            x = rgb[idx, :, oy:oy + cs, ox:ox + cs].float().div(127.5).sub(1.0).to(dev)  # (B, 3, cs, cs) in [-1, 1]
            if torch.rand((), generator=gen) < 0.5:
                x = x.flip(-1)
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample(generator=None)).sample
            l1 = (rec - x).abs().mean()
            loss = l1 + cfg.vae_kl * post.kl().mean()
            for g in vopt.param_groups:
                g["lr"] = _lr(step, cfg.vae_lr, cfg.warmup)
            vopt.zero_grad(set_to_none=True)
            loss.backward()
            vopt.step()
            vstep = step + 1
            if vstep % cfg.log_every == 0:
                log(f"vae step {vstep} l1 {l1.item():.4f} loss {loss.item():.4f} t {time.time() - t_start:.0f}s")
                bar.set_postfix(l1=f"{l1.item():.4f}")
            if vstep % cfg.ckpt_every == 0 or vstep == cfg.vae_steps or out_of_time():
                _save({"model": vae.state_dict(), "opt": vopt.state_dict(), "step": vstep}, vae_ckpt)
            if out_of_time():
                log(f"vae: stopping at step {vstep} (time limit); resume with the same command")
                return run
        bar.close()
    vae.eval().requires_grad_(False)

    # ------------------------------------------------------------------ cache latents
    lat_path = run / "latents.pt"
    if not lat_path.exists():
        lats = []
        with torch.no_grad():
            for i in tqdm(range(0, n, 32), desc="encode"):
                x = rgb[i:i + 32].float().div(127.5).sub(1.0).to(dev)
                both = torch.cat([x, x.flip(-1)])  # original + mirror
                m = vae.encode(both).latent_dist.mean  # (2b, 4, h, w)
                lats.append(torch.stack([m[: len(x)], m[len(x):]], 1).cpu())  # (b, 2, 4, h, w)
        lat = torch.cat(lats)
        scale = float(1.0 / lat.float().std())
        _save({"latents": lat.half(), "scaling_factor": scale}, lat_path)
        log(f"latents cached: {tuple(lat.shape)}, scaling_factor {scale:.4f}")
    cache = torch.load(lat_path, weights_only=False)
    scale = cache["scaling_factor"]
    vae.register_to_config(scaling_factor=scale)
    latents = cache["latents"]  # (N, 2, 4, h, w) float16, unscaled
    lh, lw = latents.shape[-2:]
    depth = torch.from_numpy(data["depth"].astype(np.float32))[:, None]  # (N, 1, H, W) z-depth
    dcond = torch.cat([depth_to_condition(depth[i:i + 256], (lh, lw)) for i in range(0, n, 256)])  # (N, 1, h, w)
    dcond = torch.stack([dcond, dcond.flip(-1)], 1)  # (N, 2, 1, h, w)
    caps = [list(data["caption"]), list(data["caption_mirrored"])]
    ids = [tokenizer(c, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids for c in caps]
    ids = torch.stack(ids, 1)  # (N, 2, L)
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids[0]

    if cfg.stage == "decoder":
        finetune_decoder(cfg, vae, rgb, run, log, out_of_time)
        return run

    # ------------------------------------------------------------------ stage 2: UNet + text
    sched = comps["scheduler"]
    acp = sched.alphas_cumprod.to(dev)  # (1000,)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-4)
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    ustep = 0
    unet_ckpt = run / "unet.pt"
    if unet_ckpt.exists():
        st = torch.load(unet_ckpt, map_location=dev, weights_only=False)
        unet.load_state_dict(st["unet"])
        text_encoder.load_state_dict(st["text"])
        ema_unet.load_state_dict(st["ema_unet"])
        ema_text.load_state_dict(st["ema_text"])
        opt.load_state_dict(st["opt"])
        ustep = st["step"]
        log(f"unet: resumed at step {ustep}")
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + 7 + ustep)
    unet.train()
    text_encoder.train()
    ema_pairs = [(e, p) for m, em in ((unet, ema_unet), (text_encoder, ema_text))
                 for e, p in zip(em.parameters(), m.parameters(), strict=True)]
    bar = tqdm(range(ustep, cfg.unet_steps), desc="unet", initial=ustep, total=cfg.unet_steps)
    run_loss = None
    for step in bar:
        b = cfg.unet_batch
        idx = torch.randint(0, n, (b,), generator=gen)
        flip = torch.randint(0, 2, (b,), generator=gen)
        x0 = latents[idx, flip].float().to(dev) * scale  # (B, 4, h, w)
        d = dcond[idx, flip].to(dev)  # (B, 1, h, w)
        tok = ids[idx, flip]  # (B, L)
        drop = torch.rand(b, generator=gen) < cfg.caption_dropout
        tok = torch.where(drop[:, None], empty[None], tok).to(dev)
        t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=gen).to(dev)
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        text = text_encoder(tok)[0]  # (B, L, D)
        pred = unet(torch.cat([xt, d], 1), t, encoder_hidden_states=text).sample
        snr = a.view(-1) / (1 - a.view(-1))
        w = torch.clamp(snr, max=cfg.min_snr_gamma) / snr  # min-SNR weighting for epsilon targets
        loss = (w * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg.unet_lr, cfg.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema, (1 + step) / (10 + step))
            for e, p in ema_pairs:
                e.lerp_(p, 1 - decay)
        ustep = step + 1
        run_loss = loss.item() if run_loss is None else 0.98 * run_loss + 0.02 * loss.item()
        if ustep % cfg.log_every == 0:
            log(f"unet step {ustep} loss {loss.item():.4f} avg {run_loss:.4f} t {time.time() - t_start:.0f}s")
            bar.set_postfix(loss=f"{run_loss:.4f}")
        if ustep % cfg.ckpt_every == 0 or ustep == cfg.unet_steps or out_of_time():
            _save({"unet": unet.state_dict(), "text": text_encoder.state_dict(), "ema_unet": ema_unet.state_dict(),
                   "ema_text": ema_text.state_dict(), "opt": opt.state_dict(), "step": ustep}, unet_ckpt)
        if out_of_time():
            log(f"unet: stopping at step {ustep} (time limit); resume with the same command")
            break
    bar.close()
    if not out_of_time():
        finetune_decoder(cfg, vae, rgb, run, log, out_of_time)
    return run


def finetune_decoder(cfg: TrainConfig, vae, rgb: torch.Tensor, run: Path, log, out_of_time) -> None:
    """Stage 3: train only the VAE decoder (``post_quant_conv`` + ``decoder``) on full images.

    The encoder is frozen, so the cached latents the UNet learned stay exactly valid. Input:
    the posterior mean plus a little Gaussian noise (robustness to generated latents); loss
    L1 + L2 on full 64x64 images. Checkpoint ``decoder.pt``; :func:`export` uses it if present.
    """
    from tqdm import tqdm

    dev = torch.device(cfg.device)
    ckpt = run / "decoder.pt"
    params = list(vae.post_quant_conv.parameters()) + list(vae.decoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.decoder_lr, weight_decay=0.0)
    step = 0
    if ckpt.exists():
        st = torch.load(ckpt, map_location=dev, weights_only=False)
        vae.post_quant_conv.load_state_dict(st["post_quant_conv"])
        vae.decoder.load_state_dict(st["decoder"])
        opt.load_state_dict(st["opt"])
        step = st["step"]
        log(f"decoder: resumed at step {step}")
    if step >= cfg.decoder_steps:
        return
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + 13 + step)
    vae.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    vae.decoder.train()
    n = len(rgb)
    bar = tqdm(range(step, cfg.decoder_steps), desc="decoder", initial=step, total=cfg.decoder_steps)
    for i in bar:
        idx = torch.randint(0, n, (cfg.decoder_batch,), generator=gen)
        x = rgb[idx].float().div(127.5).sub(1.0).to(dev)  # (B, 3, H, W)
        if torch.rand((), generator=gen) < 0.5:
            x = x.flip(-1)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
            z = z + 0.05 * z.std() * torch.randn(z.shape, generator=gen).to(dev)
        rec = vae.decode(z).sample
        l1 = (rec - x).abs().mean()
        loss = l1 + (rec - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step = i + 1
        if step % cfg.log_every == 0:
            log(f"decoder step {step} l1 {l1.item():.4f} loss {loss.item():.4f}")
            bar.set_postfix(l1=f"{l1.item():.4f}")
        if step % cfg.ckpt_every == 0 or step == cfg.decoder_steps or out_of_time():
            _save({"post_quant_conv": vae.post_quant_conv.state_dict(), "decoder": vae.decoder.state_dict(),
                   "opt": opt.state_dict(), "step": step}, ckpt)
        if out_of_time():
            log(f"decoder: stopping at step {step} (time limit); resume with the same command")
            break
    bar.close()
    vae.eval().requires_grad_(False)


def export(run_dir: str | Path, out: str | Path, use_ema: bool = True) -> Path:
    """Write the diffusers folder from the checkpoints in ``run_dir``."""
    run = Path(run_dir)
    tokenizer = load_tokenizer(run / "tokenizer_files")
    comps = build_components(tokenizer)
    vae, unet, text_encoder = comps["vae"], comps["unet"], comps["text_encoder"]
    vae.load_state_dict(torch.load(run / "vae.pt", map_location="cpu", weights_only=False)["model"])
    vae.register_to_config(scaling_factor=torch.load(run / "latents.pt", weights_only=False)["scaling_factor"])
    dec = run / "decoder.pt"
    if dec.exists():  # stage 3: fine-tuned decoder (encoder unchanged)
        st = torch.load(dec, map_location="cpu", weights_only=False)
        vae.post_quant_conv.load_state_dict(st["post_quant_conv"])
        vae.decoder.load_state_dict(st["decoder"])
    st = torch.load(run / "unet.pt", map_location="cpu", weights_only=False)
    unet.load_state_dict(st["ema_unet" if use_ema else "unet"])
    text_encoder.load_state_dict(st["ema_text" if use_ema else "text"])
    out = Path(out)
    save_model(out, vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=comps["scheduler"])
    (out / "training.json").write_text(json.dumps({"unet_steps": st["step"], "ema": use_ema,
                                                   "config": json.loads((run / "config.json").read_text())}, indent=1))
    return out

