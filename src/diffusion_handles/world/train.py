"""Training the miniature model on a rendered TinyWorld set (seeded, resumable, CPU or GPU).

Two stages, each resumable from its checkpoint in ``run_dir``:

1. **VAE** (``vae.pt``): random ``vae_crop`` crops (the VAE is convolutional), L1 + L2
   reconstruction plus a small KL term. Afterwards the whole set (and its mirror images) is encoded once
   (posterior mean) into ``latents.pt`` and ``scaling_factor = 1 / std(latents)`` is stored
   in the VAE config, as SD's VAEs carry theirs.
2. **UNet + text encoder** (``unet.pt``): epsilon prediction on the cached latents with the
   depth channel from :func:`diffusion_handles.diffusion.conditioning.depth_to_condition`,
   min-SNR-5 loss weighting, 10 % empty captions (for classifier-free guidance and null-text
   inversion), left-right flip augmentation (image, depth and the mirrored caption), an EMA of
   the weights (exported).

3. **Decoder** (``decoder.pt``): the decoder alone on full images, the encoder frozen.

Between 1 and 2, an optional **encoder** stage (``encoder.pt``, ``encoder_steps > 0``): the
encoder alone against the frozen decoder, its latents anchored to those it started from (the
UNet's). ``encoder_width 2`` first widens a narrower warm-started encoder without changing its
output (:func:`diffusion_handles.world.model.widen_encoder`).

``export`` writes the diffusers folder (:func:`diffusion_handles.world.model.save_model`).
Every stage logs ``step, loss, seconds`` lines to ``run_dir/train.log``.

Training accumulates over runs: a stage resumes from its checkpoint in ``run_dir``; when a
run folder has no checkpoint yet, every weight whose name and shape match is taken from
``init_from`` (by default the shipped model), with a fresh optimizer. Checkpoints hold tensors
and numbers only and are read with ``torch.load(weights_only=True)`` (no pickled code).
The cumulative steps and seconds of every run are carried into the exported
``training.json`` (``history``).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffusion_handles.world.dataset import captions_of, jpeg_quality_of, load_dataset
from diffusion_handles.world.model import (
    build_components,
    build_tokenizer_files,
    cumulative_hours,
    load_tokenizer,
    remap_token_embedding,
    save_model,
    token_embedding_key,
)


@dataclass
class TrainConfig:
    """Training settings (defaults: the CPU recipe of TinyWorld v2.0; see docs/releases/tinyworld-v2.0.md)."""

    data: str = "runs/world/train.npz"
    run_dir: str = "runs/world/train"
    seed: int = 0
    device: str = "cpu"
    threads: int = 1  # one thread: on a shared, oversubscribed CPU this was ~10x faster than two
    init_from: str = "tinyworld"  # warm start of a new run: a model folder, "tinyworld" (shipped) or "" (random)
    image_size: int = 128  # native image side; latents are image_size / 4
    unet_channels: tuple[int, int, int] = (48, 96, 96)
    unet_dropout: float = 0.0  # dropout in the UNet's residual blocks (a regulariser against memorising scenes)
    vae_steps: int = 1500
    vae_batch: int = 16
    vae_crop: int = 64
    vae_lr: float = 1e-3
    vae_kl: float = 1e-6
    unet_steps: int = 3000
    unet_batch: int = 16
    unet_lr: float = 5e-4
    warmup: int = 100
    ema: float = 0.995
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    # Token grounding (world.grounding, TokenCompose's token loss): weight of the term that puts
    # each object's words' cross-attention inside its mask; 0 = off (the shipped recipe).
    ground_weight: float = 0.0
    # ... applied in the run's first ground_steps UNet steps only (0: every step), so that the
    # last steps train on the denoising loss alone.
    ground_steps: int = 0
    # Offset noise (Guttenberg 2023): the training noise gets a per-(sample, channel) constant of
    # this standard deviation on top of the Gaussian (noise_for_training). 0 = off.
    offset_noise: float = 0.0
    ckpt_every: int = 50
    log_every: int = 10
    max_minutes: float = 0.0  # stop (with a checkpoint) after this wall time per call; 0 = no limit
    decoder_steps: int = 300  # stage 3: decoder-only fine-tuning (encoder frozen, so latents stay valid)
    decoder_batch: int = 8
    decoder_lr: float = 5e-4
    stage: str = "all"  # "all" (vae, encoder, unet, decoder), "decoder" or "encoder" (that stage alone, e.g. beside a unet run)
    # The encoder stage: the VAE's round-trip error on held-out scenes is the encoder's, not the
    # decoder's (benchmarks/vae_gap.py: latents optimised through the unchanged decoder gain 3.5-4.3 dB
    # on the worst scenes; a decoder of twice the width, or depth, did not move).
    encoder_width: int = 0  # encoder channels / decoder channels (1: AutoencoderKL, 2: twice as wide); 0: the warm start's
    encoder_steps: int = 0
    encoder_batch: int = 8
    encoder_lr: float = 2e-4
    encoder_anchor: float = 0.05  # weight of the latent drift: mean squared change of the mean latent / its variance
    stage_minutes: dict = field(default_factory=dict)  # {"vae": m, ...}: a stage ends (as done) after m minutes


# Named settings for ``handles world train --preset``; each overrides TrainConfig fields.
PRESETS: dict[str, dict] = {
    # The CPU recipe (TrainConfig's defaults).
    "cpu": {},
    # One H100/H200 with 16 cores, in at most ~7.5 minutes (the caller exports afterwards). It
    # continues the shipped model (same architecture, so every weight is warm-started and the
    # encoder, hence the latents, stay the same): no VAE stage, the UNet + text encoder at 8x the
    # CPU batch (bf16 autocast on the GPU) for the whole time. No decoder stage: in the first GPU
    # run (model version 2.2) its loss stayed flat over 4000 steps at batch 32 (docs/releases/tinyworld-v2.2.md), and a JPEG pack
    # (twice the scenes per carried MiB) trains the UNet only. With ``--stage encoder
    # --encoder-steps N [--encoder-width 2]`` it trains the encoder alone instead (a second run
    # beside the UNet run on the same GPU).
    "gpu": {"device": "cuda", "threads": 8, "init_from": "tinyworld", "vae_steps": 0,
            "unet_steps": 40000, "unet_batch": 128, "unet_lr": 2e-4, "ema": 0.999,
            "decoder_steps": 0, "decoder_batch": 32, "decoder_lr": 1e-4, "encoder_batch": 32, "ckpt_every": 500,
            "log_every": 100, "max_minutes": 7.0},
    # A few steps of everything (tests, smoke runs).
    "tiny": {"init_from": "", "image_size": 32, "unet_channels": (16, 32, 32), "vae_steps": 2, "vae_batch": 2, "vae_crop": 32, "unet_steps": 2,
             "unet_batch": 2, "decoder_steps": 1, "decoder_batch": 1, "ckpt_every": 1, "log_every": 1},
}


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


def _load(path: Path, dev) -> dict:
    """A checkpoint of this module: tensors, numbers, lists and dicts only (no pickled code)."""
    return torch.load(path, map_location=dev, weights_only=True)


def _resume(ckpt: Path, dev, parts: dict, opt, log, stage: str) -> tuple[int, float, bool]:
    """Load a stage checkpoint into ``parts`` (``{key: module}``) and ``opt`` if it exists;
    returns ``(step, seconds, done)`` (``(0, 0.0, False)`` for a fresh stage)."""
    if not ckpt.exists():
        return 0, 0.0, False
    st = _load(ckpt, dev)
    for key, module in parts.items():
        module.load_state_dict(st[key])
    opt.load_state_dict(st["opt"])
    log(f"{stage}: resumed at step {st['step']}")
    return int(st["step"]), float(st.get("seconds", 0.0)), bool(st.get("done", False))


def _checkpoint(ckpt: Path, parts: dict, opt, step: int, seconds: float, done: bool) -> None:
    """Write a stage checkpoint: the state dicts of ``parts``, the optimiser, step, seconds, done."""
    _save({**{k: m.state_dict() for k, m in parts.items()}, "opt": opt.state_dict(), "step": step,
           "seconds": seconds, "done": done}, ckpt)


@dataclass(frozen=True)
class _Run:
    """One call of :func:`train`: its settings, run folder, log, and the two time limits
    (``out_of_time()``: the call's; ``stage_over(name, t0)``: a stage's, :func:`_stage_clock`)."""

    cfg: TrainConfig
    run: Path
    log: Callable[[str], None]
    out_of_time: Callable[[], bool]
    stage_over: Callable[[str, float], bool]


class _Progress:
    """What every training loop does around its steps: a progress bar over ``step..steps``, a
    log line every ``log_every`` steps (``"<name> step <i> <figure> <value> ... t <seconds>s"``), a
    checkpoint of ``parts`` and ``opt`` every ``ckpt_every`` steps, at the last step and when a
    time limit of the ``call`` (a :class:`_Run`) ends the call or the stage."""

    def __init__(self, name: str, call: _Run, ckpt: Path, parts: dict, opt, step: int, steps: int,
                 secs: float):
        from tqdm import tqdm

        self.name, self.cfg, self.ckpt, self.parts, self.opt, self.steps = name, call.cfg, ckpt, parts, opt, steps
        self.secs, self.log, self.out_of_time, self.stage_over = secs, call.log, call.out_of_time, call.stage_over
        self.t0 = time.time()
        self.bar = tqdm(range(step, steps), desc=name, initial=step, total=steps)

    def __iter__(self):
        return iter(self.bar)

    def end_step(self, step: int, figures: dict) -> bool:
        """Book step ``step`` (1-based) with ``figures`` (``{name: number or tensor}``); True: stop now."""
        stage_done = self.stage_over(self.name, self.t0)  # its time is up: the stage counts as finished
        over = stage_done or self.out_of_time()
        elapsed = self.secs + time.time() - self.t0
        if step % self.cfg.log_every == 0:
            shown = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in figures.items()}
            self.log(f"{self.name} step {step} " + " ".join(f"{k} {v:.5f}" for k, v in shown.items()) + f" t {elapsed:.0f}s")
            self.bar.set_postfix({k: f"{v:.5f}" for k, v in shown.items()})
        if step % self.cfg.ckpt_every == 0 or step == self.steps or over:
            _checkpoint(self.ckpt, self.parts, self.opt, step, elapsed, stage_done)
        if over:
            self.log(f"{self.name}: stopping at step {step} (time limit)")
        return over

    def close(self) -> None:
        self.bar.close()


def _lr(step: int, base: float, warmup: int) -> float:
    return base * min(1.0, (step + 1) / max(1, warmup))


def config_from_preset(preset: str = "cpu", **overrides) -> TrainConfig:
    """``TrainConfig`` with a named preset (:data:`PRESETS`) applied, then ``overrides``."""
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {', '.join(PRESETS)}, got {preset!r}")
    cfg = TrainConfig(**{**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}})
    cfg.unet_channels = tuple(int(c) for c in cfg.unet_channels)
    if cfg.stage not in ("all", "decoder", "encoder"):
        raise ValueError(f"stage: expected all, decoder or encoder, got {cfg.stage!r}")
    if cfg.encoder_width < 0:
        raise ValueError(f"encoder_width: expected 0 (the warm start's) or a positive integer, got {cfg.encoder_width}")
    return cfg


def encoder_width_of(folder: str | Path) -> int:
    """The encoder/decoder channel ratio of the VAE in a model folder (1 for an ``AutoencoderKL``)."""
    c = json.loads((Path(folder) / "vae" / "config.json").read_text())
    down = c.get("down_block_out_channels") or c["block_out_channels"]
    up = c.get("up_block_out_channels") or c["block_out_channels"]
    return max(1, int(down[0]) // int(up[0]))


def init_folder(cfg: TrainConfig) -> Path | None:
    """The model folder a new run warm-starts from (``None`` for a random start)."""
    from diffusion_handles.world import MODEL_NAME, model_path

    if not cfg.init_from:
        return None
    return model_path() if cfg.init_from == MODEL_NAME else Path(cfg.init_from)


def load_matching(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> tuple[int, int]:
    """Copy every tensor of ``state`` whose name and shape match ``module``'s.

    Returns ``(copied, total)`` parameter/buffer counts of ``module``. Used to warm-start a new
    architecture (other latent channels, image size) from an earlier model.
    """
    own = module.state_dict()
    keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    module.load_state_dict(keep, strict=False)
    return len(keep), len(own)


def _init_from(cfg: TrainConfig, comps: dict, log, tokenizer=None) -> dict:
    """Warm-start ``comps`` from ``cfg.init_from`` (matching tensors; the text encoder's word
    embeddings by token string when ``tokenizer``'s vocabulary differs from the warm start's);
    returns its history."""
    folder = init_folder(cfg)
    if folder is None:
        return {"history": []}
    from diffusion_handles.world.model import component_tensors

    have = encoder_width_of(folder)
    if cfg.encoder_width < have or cfg.encoder_width % have:
        raise ValueError(f"encoder_width: expected a multiple of the warm start's ({have}, {folder}), got {cfg.encoder_width}")
    ratio = cfg.encoder_width // have
    for name in ("vae", "unet", "text_encoder"):
        state = component_tensors(folder, name)
        if name == "vae" and ratio > 1:  # a wider encoder: widen the warm start's, keeping its latents
            from diffusers import AutoModel

            from diffusion_handles.world.model import widen_encoder

            state = widen_encoder(AutoModel.from_pretrained(str(folder), subfolder="vae"), ratio, seed=cfg.seed).state_dict()
            log(f"init vae: encoder widened {ratio}x (the same latents)")
        if name == "text_encoder" and tokenizer is not None and (folder / "tokenizer").is_dir():
            old_vocab, new_vocab = load_tokenizer(folder / "tokenizer").get_vocab(), tokenizer.get_vocab()
            if old_vocab != new_vocab:
                own = comps[name].state_dict()
                fresh = own[token_embedding_key(own)]
                state, copied = remap_token_embedding(state, old_vocab, new_vocab, fresh)
                log(f"init text_encoder: {copied} of {len(new_vocab)} word embeddings copied by token, "
                    f"{len(new_vocab) - copied} new")
        got, total = load_matching(comps[name], state)
        log(f"init {name} from {folder}: {got}/{total} tensors match")
    vae_cfg = folder / "vae" / "config.json"
    scale = json.loads(vae_cfg.read_text()).get("scaling_factor") if vae_cfg.is_file() else None
    info = json.loads((folder / "training.json").read_text()) if (folder / "training.json").is_file() else {}
    if "history" not in info and "unet_steps" in info:  # v1 recorded no history: one entry for it
        info["history"] = [{"model": str(folder), "stages": {"unet": {"steps": info["unet_steps"]}},
                            "hours": None, "note": "v1, trained before histories were recorded (MODEL_CARD.md)"}]
    return {"history": info.get("history", []), "scaling_factor": scale}


def _stage_clock(cfg: TrainConfig, t_start: float):
    """``(out_of_time(), stage_over(name, t0))``: the call's and a stage's time limits."""
    def out_of_time() -> bool:
        return cfg.max_minutes > 0 and (time.time() - t_start) > cfg.max_minutes * 60

    def stage_over(name: str, t0: float) -> bool:
        m = cfg.stage_minutes.get(name, 0)
        return m > 0 and (time.time() - t0) > m * 60

    return out_of_time, stage_over


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) the three stages; returns ``run_dir``. Uses ``cfg.threads`` torch
    threads while it runs (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg)
    finally:
        torch.set_num_threads(before)


def _train(cfg: TrainConfig) -> Path:
    # The encoder stage may use a JPEG pack: its decoder is frozen, so it cannot learn their
    # artefacts, and quality 95 is 40.5 dB from the renders, 10 dB above the errors it reduces.
    if jpeg_quality_of(cfg.data) is not None and (cfg.vae_steps > 0 or cfg.decoder_steps > 0):
        raise ValueError(f"data: {cfg.data} holds JPEG (lossy) images, which would teach the VAE their artefacts: "
                         f"expected vae_steps 0 and decoder_steps 0, got {cfg.vae_steps} and {cfg.decoder_steps}")
    if cfg.encoder_width == 0:  # follow the warm start (or the plain VAE of a random start)
        folder = init_folder(cfg)
        cfg.encoder_width = encoder_width_of(folder) if folder is not None else 1
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    log = _Log(run / "train.log")
    (run / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    t_start = time.time()
    out_of_time, stage_over = _stage_clock(cfg, t_start)

    dev = torch.device(cfg.device)
    if dev.type == "cuda":  # TF32 matrix products and convolutions (fp32 storage)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    tok_dir = run / "tokenizer_files"
    if not (tok_dir / "vocab.json").exists():
        build_tokenizer_files(tok_dir)
    tokenizer = load_tokenizer(tok_dir)
    comps = build_components(tokenizer, seed=cfg.seed, image_size=cfg.image_size, unet_channels=cfg.unet_channels,
                             unet_dropout=cfg.unet_dropout, encoder_width=cfg.encoder_width)
    if not any((run / f).exists() for f in ("vae.pt", "unet.pt", "decoder.pt", "encoder.pt", "init.json")):
        (run / "init.json").write_text(json.dumps(_init_from(cfg, comps, log, tokenizer), indent=1))
        for name in ("vae", "unet", "text_encoder"):  # the warm start is step 0 of this run
            _save({"model": comps[name].state_dict()}, run / f"init_{name}.pt")
    else:
        for name in ("vae", "unet", "text_encoder"):
            if (run / f"init_{name}.pt").exists():
                comps[name].load_state_dict(_load(run / f"init_{name}.pt", "cpu")["model"])
    for name in ("vae", "unet", "text_encoder"):
        comps[name].to(dev)
    vae = comps["vae"]
    data = load_dataset(cfg.data)
    n = len(data["rgb"])
    log(f"data {cfg.data}: {n} scenes, {data['rgb'].shape[1]}x{data['rgb'].shape[2]}")
    if data["rgb"].shape[1] != cfg.image_size:
        raise ValueError(f"data: expected {cfg.image_size}x{cfg.image_size} images (image_size), got {data['rgb'].shape[1]}")
    rgb = torch.from_numpy(data["rgb"]).permute(0, 3, 1, 2)  # (N, 3, H, W) uint8

    train_vae(cfg, vae, rgb, run, log, out_of_time, stage_over)
    if out_of_time():
        return run
    if cfg.stage in ("all", "encoder"):
        train_encoder(cfg, vae, rgb, run, log, out_of_time, stage_over)
    if out_of_time() or cfg.stage == "encoder":
        return run
    vae.eval().requires_grad_(False)
    batches = _unet_data(cfg, vae, rgb, data, tokenizer, run, log)
    if cfg.stage != "decoder":
        train_unet(cfg, comps, batches, run, log, out_of_time, stage_over)
    if not out_of_time():
        finetune_decoder(cfg, vae, rgb, run, log, out_of_time, stage_over)
    return run


def train_vae(cfg: TrainConfig, vae, rgb: torch.Tensor, run: Path, log, out_of_time, stage_over) -> None:
    """Stage 1: the VAE on random crops, L1 + L2 + ``vae_kl`` * KL; checkpoint ``vae.pt``.

    A new run with ``stage`` ``encoder`` or ``decoder`` keeps the warm start's VAE whatever
    ``vae_steps`` says: a VAE stage before them would change the latents the UNet learned (and,
    for the encoder stage, the decoder it must leave as it is). In a run folder whose VAE stage is
    under way it resumes that stage, as before."""
    dev = next(vae.parameters()).device
    ckpt = run / "vae.pt"
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    parts = {"model": vae}
    step, secs, done = _resume(ckpt, dev, parts, opt, log, "vae")
    if not ckpt.exists() and (cfg.vae_steps == 0 or cfg.stage != "all"):  # the warm-started VAE is the result
        _checkpoint(ckpt, parts, opt, 0, 0.0, True)
        why = "vae_steps 0" if cfg.vae_steps == 0 else f"stage {cfg.stage} trains that stage alone"
        log(f"vae: no steps ({why}): keeping the warm-started VAE")
        return
    if done or step >= cfg.vae_steps:
        return
    n, cs = len(rgb), min(cfg.vae_crop, rgb.shape[2])
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + step)
    vae.train()
    call = _Run(cfg, run, log, out_of_time, stage_over)
    progress = _Progress("vae", call, ckpt, parts, opt, step, cfg.vae_steps, secs)
    for i in progress:
        idx = torch.randint(0, n, (cfg.vae_batch,), generator=gen)
        oy, ox = (torch.randint(0, rgb.shape[2] - cs + 1, (2,), generator=gen)).tolist()
        x = rgb[idx, :, oy:oy + cs, ox:ox + cs].float().div(127.5).sub(1.0).to(dev)  # (B, 3, cs, cs) in [-1, 1]
        if torch.rand((), generator=gen) < 0.5:
            x = x.flip(-1)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=None)).sample
        l1 = (rec - x).abs().mean()
        loss = l1 + (rec - x).pow(2).mean() + cfg.vae_kl * post.kl().mean()
        for g in opt.param_groups:
            g["lr"] = _lr(i, cfg.vae_lr, cfg.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress.end_step(i + 1, {"l1": l1, "loss": loss}):
            break
    progress.close()


def train_encoder(cfg: TrainConfig, vae, rgb: torch.Tensor, run: Path, log, out_of_time, stage_over) -> None:
    """The encoder stage: ``encoder`` + ``quant_conv`` against the frozen decoder; ``encoder.pt``.

    Loss on full images (mirrored half the time): the mean squared error of the decoded posterior
    mean ``mu`` (the latent every figure and the pipeline take), plus ``encoder_anchor`` *
    (mean((mu - mu0)^2) / var(mu0) + mean((logvar - logvar0)^2)), where ``mu0`` and ``logvar0``
    are the posterior of the encoder this stage started from: the UNet was trained on those
    latents, so they may move only as far as the reconstruction gains, and the posterior's
    spread (sampled when an edit is seeded) stays what it was. That
    is the objective of ``benchmarks/vae_gap.py --anchor`` (per image there: at 0.05 the latents
    moved 5 % RMS and both scenes below 30 dB of the first 8 held-out ones rose above it),
    learned by the encoder for every image at once. Learning rate warmed up over ``warmup``
    steps, then constant.
    """
    if cfg.encoder_steps <= 0:
        return
    start = copy.deepcopy(vae.encoder).eval().requires_grad_(False)  # mu0 (on resume: the run's warm start)
    start_quant = copy.deepcopy(vae.quant_conv).eval().requires_grad_(False)
    fixed = {}

    def loss_fn(x: torch.Tensor, gen) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            mu0, logvar0 = start_quant(start(x)).chunk(2, dim=1)  # (B, c, h, w) each: the posterior's moments
            var = fixed.setdefault("var", mu0.var())  # fixed after the first batch
        post = vae.encode(x).latent_dist
        mse = (vae.decode(post.mean).sample - x).pow(2).mean()
        drift = (post.mean - mu0).pow(2).mean() / var
        loss = mse + cfg.encoder_anchor * (drift + (post.logvar - logvar0.clamp(-30.0, 20.0)).pow(2).mean())
        return loss, {"mse": mse, "drift": drift}

    stage = _ImageStage("encoder", parts={"encoder": vae.encoder, "quant_conv": vae.quant_conv}, steps=cfg.encoder_steps,
                        batch=cfg.encoder_batch, lr_at=lambda i: _lr(i, cfg.encoder_lr, cfg.warmup), loss_fn=loss_fn,
                        seed=17)
    _image_stage(stage, _Run(cfg, run, log, out_of_time, stage_over), vae, rgb)


@dataclass(frozen=True)
class _ImageStage:
    """One of the two full-image VAE stages (encoder, decoder): checkpoint ``run/<name>.pt``, the
    modules it trains (``parts``, ``{key: module}``; the rest of the VAE frozen), ``steps``,
    ``batch`` images a step, the learning rate ``lr_at(step)``, ``loss_fn(x, gen) -> (loss,
    {name: value to log})`` and the offset ``seed`` of its random stream."""

    name: str
    parts: dict
    steps: int
    batch: int
    lr_at: Callable[[int], float]
    loss_fn: Callable
    seed: int


def _image_stage(stage: _ImageStage, call: _Run, vae, rgb: torch.Tensor) -> None:
    """The loop of a full-image VAE stage: resumable from its checkpoint, AdamW on the parameters
    of ``stage.parts``, ``stage.batch`` images of ``rgb`` ``(N, 3, H, W)`` uint8 a step (mirrored
    half the time) in [-1, 1]."""
    name, parts, steps, batch, lr_at, loss_fn = stage.name, stage.parts, stage.steps, stage.batch, stage.lr_at, stage.loss_fn
    dev = next(vae.parameters()).device
    ckpt = call.run / f"{name}.pt"
    params = [p for m in parts.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=lr_at(0), weight_decay=0.0)
    step, secs, done = _resume(ckpt, dev, parts, opt, call.log, name)
    if done or step >= steps:
        return
    gen = torch.Generator().manual_seed(call.cfg.seed * 1000 + stage.seed + step)
    vae.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    for m in parts.values():
        m.train()
    rgb = rgb.to(dev)  # uint8; on a GPU the whole set lives there (~50 MB for 1000 scenes)
    n = len(rgb)
    progress = _Progress(name, call, ckpt, parts, opt, step, steps, secs)
    for i in progress:
        idx = torch.randint(0, n, (batch,), generator=gen).to(dev)
        x = rgb[idx].float().div(127.5).sub(1.0)  # (B, 3, H, W) in [-1, 1]
        if torch.rand((), generator=gen) < 0.5:
            x = x.flip(-1)
        loss, shown = loss_fn(x, gen)
        for g in opt.param_groups:
            g["lr"] = lr_at(i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress.end_step(i + 1, {**shown, "loss": loss}):
            break
    progress.close()
    vae.eval().requires_grad_(False)


def _unet_data(cfg: TrainConfig, vae, rgb: torch.Tensor, data: dict, tokenizer, run: Path, log) -> dict:
    """Encode every image and its mirror once (posterior mean): latents, depth conditions, tokens.

    Stores ``scaling_factor = 1 / std(latents)`` in the VAE config (as SD's VAEs carry theirs).
    """
    from tqdm import tqdm

    from diffusion_handles.diffusion.conditioning import depth_to_condition

    dev = next(vae.parameters()).device
    n = len(rgb)
    lat_path = run / "latents.pt"
    if not lat_path.exists():
        lats = []
        with torch.no_grad():
            for i in tqdm(range(0, n, 32), desc="encode"):
                x = rgb[i:i + 32].float().div(127.5).sub(1.0).to(dev)
                both = torch.cat([x, x.flip(-1)])  # original + mirror
                m = vae.encode(both).latent_dist.mean  # (2b, C, h, w)
                lats.append(torch.stack([m[: len(x)], m[len(x):]], 1).cpu())  # (b, 2, C, h, w)
        lat = torch.cat(lats)
        scale = float(1.0 / lat.float().std())
        init = json.loads((run / "init.json").read_text()) if (run / "init.json").is_file() else {}
        if cfg.vae_steps == 0 and init.get("scaling_factor"):  # the warm-started encoder: keep its UNet's scale
            scale = float(init["scaling_factor"])
        _save({"latents": lat.half(), "scaling_factor": scale}, lat_path)
        log(f"latents cached: {tuple(lat.shape)}, scaling_factor {scale:.4f}")
    cache = _load(lat_path, "cpu")
    scale = float(cache["scaling_factor"])
    vae.register_to_config(scaling_factor=scale)
    latents = cache["latents"]  # (N, 2, C, h, w) float16, unscaled
    lh, lw = latents.shape[-2:]
    depth = torch.from_numpy(data["depth"].astype(np.float32))[:, None]  # (N, 1, H, W) z-depth
    dcond = torch.cat([depth_to_condition(depth[i:i + 256], (lh, lw)) for i in range(0, n, 256)])  # (N, 1, h, w)
    dcond = torch.stack([dcond, dcond.flip(-1)], 1)  # (N, 2, 1, h, w)
    caps = list(captions_of(data))
    ids = [tokenizer(c, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids for c in caps]
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids[0]
    out = {"latents": latents, "scale": scale, "dcond": dcond, "ids": torch.stack(ids, 1), "empty": empty}
    if cfg.ground_weight > 0:
        out.update(_grounding_data(data, tokenizer, lh // 2))
        log(f"grounding: object masks {tuple(out['obj_masks'].shape)}, word positions {tuple(out['obj_tokens'].shape)}")
    return out


def _grounding_data(data: dict, tokenizer, side: int) -> dict:
    """Each scene's object masks at ``side`` (``(N, K, side, side)``; the mirror is their flip) and
    each object's word positions in its caption and in the mirrored caption (``(N, 2, K, T)``)."""
    from diffusion_handles.errors import HandlesError
    from diffusion_handles.world.grounding import object_masks, object_token_positions

    if "ids" not in data or "scene" not in data:
        raise HandlesError("--ground-weight: the training set has no object masks (ids) or scene records (scene); render it with handles world dataset")
    toks = [[object_token_positions(s, tokenizer, mirrored=m) for m in (False, True)] for s in data["scene"]]
    return {"obj_masks": object_masks(data["ids"], side), "obj_tokens": torch.from_numpy(np.array(toks))}


def noise_for_training(shape: tuple[int, ...], gen: torch.Generator, offset: float = 0.0) -> torch.Tensor:
    """The noise epsilon ``(B, C, h, w)`` the UNet learns to predict: N(0, 1) per element plus, when
    ``offset > 0``, a constant per sample and channel drawn from N(0, offset^2) (offset noise).

    Why: SD's schedule leaves sqrt(a_t) = 0.085 of the latent in x_t at the first of 25 DDIM
    steps (t = 961). With ``offset = 0`` the spatial mean of a channel of x_t has a noise std of
    only 1 / sqrt(h w) (0.031 on 32x32 latents) while the image's mean leaks in at 0.085 times its
    spread (0.006-0.072 per channel on 32 held-out scenes, benchmarks/signal_leak.py), so the UNet learns to read the
    image's mean colour from x_t, and sampling from pure noise takes it from the noise, not from
    the caption (benchmarks/signal_leak.py). The offset drowns that leak, so the mean must come
    from the caption and depth. Draws from ``gen`` (CPU) only what it needs: ``offset = 0`` keeps the
    random stream of the runs before this option.
    """
    noise = torch.randn(shape, generator=gen)
    if offset > 0:
        noise = noise + offset * torch.randn((*shape[:2], 1, 1), generator=gen)
    return noise


def train_unet(cfg: TrainConfig, comps: dict, batches: dict, run: Path, log, out_of_time, stage_over) -> None:
    """Stage 2: UNet + text encoder, epsilon prediction, min-SNR weighting, EMA; ``unet.pt``."""
    unet, text_encoder, sched = comps["unet"], comps["text_encoder"], comps["scheduler"]
    dev = next(unet.parameters()).device
    scale = batches["scale"]
    # On a GPU the whole set lives there (a few tens of MB); indices are drawn on the CPU (seeded).
    latents, dcond, ids, empty = (batches[k].to(dev) for k in ("latents", "dcond", "ids", "empty"))
    n = len(latents)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")
    acp = sched.alphas_cumprod.to(dev)  # (1000,)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-4)
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    ckpt = run / "unet.pt"
    parts = {"unet": unet, "text": text_encoder, "ema_unet": ema_unet, "ema_text": ema_text}
    step, secs, done = _resume(ckpt, dev, parts, opt, log, "unet")
    if done or step >= cfg.unet_steps:
        return
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + 7 + step)
    unet.train()
    text_encoder.train()
    pairs = [(e, p) for m, em in ((unet, ema_unet), (text_encoder, ema_text))
             for e, p in zip(em.parameters(), m.parameters(), strict=True)]
    ema_params, live_params = [e for e, _ in pairs], [p for _, p in pairs]
    recorder = None
    if cfg.ground_weight > 0:  # after the EMA copies, which keep diffusers' own processors
        from diffusion_handles.world.grounding import AttentionRecorder, token_loss

        obj_masks, obj_tokens = batches["obj_masks"].to(dev), batches["obj_tokens"].to(dev)
        recorder = AttentionRecorder()
        recorder.install(unet)
    call = _Run(cfg, run, log, out_of_time, stage_over)
    progress = _Progress("unet", call, ckpt, parts, opt, step, cfg.unet_steps, secs)
    run_loss = None
    for i in progress:
        b = cfg.unet_batch
        idx = torch.randint(0, n, (b,), generator=gen).to(dev)
        flip = torch.randint(0, 2, (b,), generator=gen).to(dev)
        x0 = latents[idx, flip].float() * scale  # (B, C, h, w)
        d = dcond[idx, flip]  # (B, 1, h, w)
        tok = ids[idx, flip]  # (B, L)
        drop = (torch.rand(b, generator=gen) < cfg.caption_dropout).to(dev)
        tok = torch.where(drop[:, None], empty[None], tok)
        t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=gen).to(dev)
        noise = noise_for_training(tuple(x0.shape), gen, cfg.offset_noise).to(dev)
        a = acp[t].view(-1, 1, 1, 1)
        xt = sched.add_noise(x0, noise, t)  # sqrt(a_t) x0 + sqrt(1 - a_t) eps
        with amp:
            text = text_encoder(tok)[0]  # (B, L, D)
            pred = unet(torch.cat([xt, d], 1), t, encoder_hidden_states=text).sample.float()
        snr = a.view(-1) / (1 - a.view(-1))
        w = torch.clamp(snr, max=cfg.min_snr_gamma) / snr  # min-SNR weighting for epsilon targets
        loss = (w * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        figures, total = {}, loss  # the logged loss stays the denoising loss
        if recorder is not None and 0 < cfg.ground_steps <= i:  # the grounded phase is over
            recorder.uninstall(unet)
            recorder = None
        if recorder is not None:
            masks = obj_masks[idx].float()
            masks = torch.where(flip.view(-1, 1, 1, 1).bool(), masks.flip(-1), masks)  # (B, K, s, s)
            toks = torch.where(drop.view(-1, 1, 1), -1, obj_tokens[idx, flip])  # (B, K, T); none for empty captions
            g_loss = token_loss([m.float() for m in recorder.maps], masks, toks)
            recorder.maps.clear()
            figures["ground"] = g_loss
            total = loss + cfg.ground_weight * g_loss
        for g in opt.param_groups:
            g["lr"] = _lr(i, cfg.unet_lr, cfg.warmup)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema, (1 + i) / (10 + i))
            torch._foreach_lerp_(ema_params, live_params, 1 - decay)
        run_loss = loss.item() if run_loss is None else 0.98 * run_loss + 0.02 * loss.item()
        if progress.end_step(i + 1, {"loss": loss, "avg": run_loss, **figures}):
            break
    progress.close()


def finetune_decoder(cfg: TrainConfig, vae, rgb: torch.Tensor, run: Path, log, out_of_time, stage_over) -> None:
    """Stage 3: train only the VAE decoder (``post_quant_conv`` + ``decoder``) on full images.

    The encoder is frozen, so the cached latents the UNet learned stay exactly valid. Input:
    the posterior mean plus a little Gaussian noise (robustness to generated latents); loss
    L1 + L2 on full images, learning rate decayed (cosine) to a tenth. Checkpoint ``decoder.pt``;
    :func:`export` uses it if present.
    """
    def loss_fn(x: torch.Tensor, gen) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
            z = z + 0.05 * z.std() * torch.randn(z.shape, generator=gen).to(z.device)
        rec = vae.decode(z).sample
        l1 = (rec - x).abs().mean()
        return l1 + (rec - x).pow(2).mean(), {"l1": l1}

    def lr_at(i: int) -> float:  # cosine decay to a tenth over the stage
        return cfg.decoder_lr * (0.1 + 0.45 * (1.0 + math.cos(math.pi * i / max(1, cfg.decoder_steps))))

    stage = _ImageStage("decoder", parts={"post_quant_conv": vae.post_quant_conv, "decoder": vae.decoder},
                        steps=cfg.decoder_steps, batch=cfg.decoder_batch, lr_at=lr_at, loss_fn=loss_fn, seed=13)
    _image_stage(stage, _Run(cfg, run, log, out_of_time, stage_over), vae, rgb)


def export(run_dir: str | Path, out: str | Path, use_ema: bool = True, hardware: str | None = None) -> Path:
    """Write the diffusers folder from the checkpoints in ``run_dir``.

    ``training.json`` records this run's steps and seconds per stage, appended to the
    ``history`` of the model the run was warm-started from (cumulative training).
    """
    import platform

    run = Path(run_dir)
    cfg = json.loads((run / "config.json").read_text())
    tokenizer = load_tokenizer(run / "tokenizer_files")
    comps = build_components(tokenizer, image_size=int(cfg.get("image_size", 128)),
                             unet_channels=tuple(cfg.get("unet_channels", (48, 96, 96))),
                             unet_dropout=float(cfg.get("unet_dropout", 0.0)),
                             encoder_width=int(cfg.get("encoder_width") or 1))
    vae, unet, text_encoder = comps["vae"], comps["unet"], comps["text_encoder"]
    vst = _load(run / "vae.pt", "cpu")
    vae.load_state_dict(vst["model"])
    init = json.loads((run / "init.json").read_text()) if (run / "init.json").is_file() else {"history": []}
    # an encoder-only run caches no latents: it keeps the warm start's scale (its latents are anchored)
    scale = _load(run / "latents.pt", "cpu")["scaling_factor"] if (run / "latents.pt").exists() else init.get("scaling_factor")
    if scale is None:
        raise ValueError(f"run_dir: {run} has no latents.pt and its warm start no scaling_factor")
    vae.register_to_config(scaling_factor=float(scale))
    stages = {"vae": {"steps": vst["step"], "seconds": float(vst.get("seconds", 0.0))}}
    enc = run / "encoder.pt"
    if enc.exists():  # the encoder stage (decoder unchanged)
        st = _load(enc, "cpu")
        vae.encoder.load_state_dict(st["encoder"])
        vae.quant_conv.load_state_dict(st["quant_conv"])
        stages["encoder"] = {"steps": st["step"], "seconds": float(st.get("seconds", 0.0))}
    dec = run / "decoder.pt"
    if dec.exists():  # stage 3: fine-tuned decoder (encoder unchanged)
        st = _load(dec, "cpu")
        vae.post_quant_conv.load_state_dict(st["post_quant_conv"])
        vae.decoder.load_state_dict(st["decoder"])
        stages["decoder"] = {"steps": st["step"], "seconds": float(st.get("seconds", 0.0))}
    if (run / "unet.pt").exists():
        st = _load(run / "unet.pt", "cpu")
        unet.load_state_dict(st["ema_unet" if use_ema else "unet"])
        text_encoder.load_state_dict(st["ema_text" if use_ema else "text"])
        stages["unet"] = {"steps": st["step"], "seconds": float(st.get("seconds", 0.0))}
        unet_steps = st["step"]
    else:  # no UNet stage in this run (--stage encoder): the warm start's UNet and text encoder
        unet.load_state_dict(_load(run / "init_unet.pt", "cpu")["model"])
        text_encoder.load_state_dict(_load(run / "init_text_encoder.pt", "cpu")["model"])
        unet_steps = 0
    out = Path(out)
    save_model(out, vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=comps["scheduler"])
    if hardware is None:
        hardware = (torch.cuda.get_device_name(0) if cfg.get("device", "cpu").startswith("cuda") and torch.cuda.is_available()
                    else f"CPU ({platform.processor() or platform.machine()}), {cfg.get('threads', 1)} thread(s)")
    entry = {"date": time.strftime("%Y-%m-%d"), "hardware": hardware, "init_from": cfg.get("init_from", ""),
             "stages": stages, "hours": round(sum(s["seconds"] for s in stages.values()) / 3600, 3)}
    history = list(init.get("history", [])) + [entry]
    (out / "training.json").write_text(json.dumps({
        "unet_steps": unet_steps, "ema": use_ema, "config": cfg, "history": history,
        "cumulative_hours": cumulative_hours(history)}, indent=1))
    return out
