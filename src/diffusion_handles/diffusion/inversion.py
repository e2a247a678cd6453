"""Inverting an image into the depth-conditioned model (Sec. 5, "Inverting the Input Image").

Three methods (``InversionConfig.method``):

* ``"ddim"``: deterministic DDIM inversion with the prompt (no CFG); the reconstruction then
  runs with CFG and the empty prompt's embedding, which drifts at high guidance scale.
* ``"null-text"``: Null-Text Inversion (Mokady et al. 2023), the paper's choice: after DDIM
  inversion, optimise one null embedding per step so that the CFG trajectory follows the
  inversion trajectory. The reconstruction pass is a by-product (the activations are recorded
  during the optimisation's forward passes at the reconstruction latents).
* ``"negative-prompt"``: Negative-Prompt Inversion (Miyake et al. 2023): use the prompt
  embedding as the null text; CFG then reduces to the conditional estimate, so reconstruction
  costs one UNet evaluation per step and needs no optimisation.

All functions return :class:`InversionResult`; UNet evaluations are counted by the backbone's
counter in stages ``"ddim_inversion"``, ``"null_text"`` and ``"reconstruction"``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from diffusion_handles.diffusion.config import InversionConfig
from diffusion_handles.diffusion.ddim import Schedule, ddim_step, to_eps_x0
from diffusion_handles.diffusion.guidance import scaled_grad
from diffusion_handles.diffusion.hooks import capture_activations
from diffusion_handles.diffusion.sampler import Denoiser, Record, sample


@dataclass
class InversionResult:
    """``x_T (1, c, h, w)``; ``null_embeddings (N, L, D)`` or ``None`` (null = prompt);
    ``latent_0`` the reconstruction's final latent; ``trajectory`` the reconstruction's latent
    after every step (``N`` tensors, float32; the last is ``latent_0``); ``activations
    {(layer, step): tensor}``; ``null_losses`` per step, the null-text loss after optimisation
    (empty for other methods)."""

    x_T: torch.Tensor
    null_embeddings: torch.Tensor | None
    latent_0: torch.Tensor
    trajectory: list[torch.Tensor] = field(default_factory=list)
    activations: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    null_losses: list[float] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def ddim_inversion(backbone, z0: torch.Tensor, text: torch.Tensor, depth_cond: torch.Tensor,
                   schedule: Schedule, *, progress: bool = True,
                   callback: Callable[[dict], None] | None = None) -> list[torch.Tensor]:
    """DDIM inversion with the prompt (guidance 1): ``[z_0, ..., z_N]``.

    ``z_k`` is the latent at the *start* of generation step ``N - k`` (``z_N`` is ``x_T``,
    ``z_0`` the clean latent). Each step costs one forward evaluation.
    """
    n = len(schedule)
    traj = [z0]
    z = z0
    for k in tqdm(range(n), desc="DDIM inversion", disable=not progress, leave=False):
        i = n - 1 - k  # generation step this inversion step undoes
        out = backbone.unet_eval(z, schedule.timesteps[i], text, depth_cond)
        eps, _ = to_eps_x0(out.float(), z.float(), schedule.alpha_prev[i], schedule.prediction_type)
        z = ddim_step(eps, z.float(), schedule.alpha_prev[i], schedule.alpha[i]).to(z0.dtype)
        traj.append(z)
        if callback is not None:
            callback({"step": k, "total": n, "x": z})
    return traj


def null_text_lr(config: InversionConfig, step: int) -> float:
    """Adam learning rate of null-text optimisation at generation step ``step``:
    ``null_lr * (1 - step / 100)`` (Mokady et al. 2023, for 50 steps), held at 1 % of ``null_lr``
    from step 99 on, so schedules of more than 100 steps keep a positive rate."""
    return config.null_lr * max(1.0 - step / 100.0, 0.01)


def null_text_optimisation(denoiser: Denoiser, traj: Sequence[torch.Tensor], null: torch.Tensor,
                           config: InversionConfig, *, record: Record | None = None, progress: bool = True,
                           callback: Callable[[dict], None] | None = None) -> InversionResult:
    """Null-Text Inversion: per step, Adam on the null embedding so the CFG step lands on ``traj``.

    ``denoiser`` carries the prompt, depth, schedule and CFG scale (its null embeddings are
    unused). Per step: one conditional forward (no gradient; the activations to record are read
    here, at the reconstruction latent), up to ``null_inner_steps`` unconditional
    forward+backward passes, and one unconditional forward with the final embedding to take the
    step. The CFG mix and the DDIM step are the sampler's (:class:`Denoiser`).
    """
    bb = denoiser.backbone
    n = len(denoiser)
    record = record or Record()
    x = traj[n].detach().float()
    emb = null.detach().float().clone()  # (1, L, D), warm-started from the previous step
    embeddings, losses, acts, steps = [], [], {}, []
    for i in tqdm(range(n), desc="null-text inversion", disable=not progress, leave=False):
        target = traj[n - i - 1].float()
        rec_layers = tuple(record.layers.get(i, ()))
        with torch.no_grad(), capture_activations(bb.unet, rec_layers, detach=True) as cap:
            out_c = denoiser.conditional(x, i)
        for lay in rec_layers:
            acts[(lay, i)] = cap.outputs[lay].to(record.dtype).clone()
        emb = emb.detach().clone().requires_grad_(True)  # Adam updates it in place: never alias
        opt = torch.optim.Adam([emb], lr=null_text_lr(config, i))
        loss_value = float("nan")
        for _ in range(config.null_inner_steps):
            with torch.enable_grad():
                out_u = denoiser.conditional(x, i, emb)
                loss = F.mse_loss(denoiser.ddim(x, i, denoiser.cfg(out_u, out_c)), target)
                emb.grad = scaled_grad(loss, emb, bb.dtype)
            bb.counter.add_backward(1)
            opt.step()
            loss_value = float(loss.detach())
            if loss_value < config.null_early_stop + i * 2e-5:  # NTI's early stop
                break
        emb = emb.detach()
        with torch.no_grad():
            x = denoiser.ddim(x, i, denoiser.cfg(denoiser.conditional(x, i, emb), out_c))
            losses.append(float(F.mse_loss(x, target)))
        steps.append(x.clone())
        embeddings.append(emb.clone().to(denoiser.text.dtype))
        if callback is not None:
            callback({"step": i, "total": n, "x": x, "loss": loss_value})
    return InversionResult(x_T=traj[n], null_embeddings=torch.cat(embeddings), latent_0=x.to(traj[0].dtype),
                           trajectory=steps, activations=acts, null_losses=losses)


@dataclass(frozen=True)
class Conditions:
    """What an inversion is conditioned on: ``text`` the prompt's embedding and ``empty`` the
    empty prompt's, both ``(1, L, D)``; ``depth`` ``(1, 1, h, w)`` in [-1, 1] at the latent size
    (:func:`~diffusion_handles.diffusion.conditioning.depth_to_condition`)."""

    text: torch.Tensor
    empty: torch.Tensor
    depth: torch.Tensor


def invert(backbone, z0: torch.Tensor, cond: Conditions, config: InversionConfig, *, record: Record | None = None,
           progress: bool = True, callback: Callable[[dict], None] | None = None) -> InversionResult:
    """Invert latent ``z0`` (1, c, h, w) under ``cond``; keep the ``record`` activations of the
    reconstruction pass. ``callback`` receives ``{"stage", "step", "total", ...}`` after every
    step of every pass."""
    text, empty, depth_cond = cond.text, cond.empty, cond.depth
    schedule = backbone.schedule(config.num_steps)
    counter = backbone.counter

    def staged(stage: str):
        return None if callback is None else (lambda info: callback({"stage": stage, **info}))

    t0 = time.perf_counter()
    with counter.in_stage("ddim_inversion"):
        traj = ddim_inversion(backbone, z0, text, depth_cond, schedule, progress=progress,
                              callback=staged("ddim_inversion"))
    timings = {"ddim_inversion": time.perf_counter() - t0}
    t0 = time.perf_counter()
    if config.method == "null-text":
        den = Denoiser(backbone, text, None, depth_cond, schedule, config.guidance_scale)
        with counter.in_stage("null_text"):
            res = null_text_optimisation(den, traj, empty, config, record=record,
                                         progress=progress, callback=staged("null_text"))
        res.timings = {**timings, "null_text": time.perf_counter() - t0}
        return res
    nulls = None if config.method == "negative-prompt" else empty.expand(len(schedule), -1, -1).contiguous()
    den = Denoiser(backbone, text, nulls, depth_cond, schedule, config.guidance_scale)
    with counter.in_stage("reconstruction"):
        rec = sample(den, traj[-1], record=record, keep_trajectory=True,
                     progress=progress, desc="reconstruction", callback=staged("reconstruction"))
    timings["reconstruction"] = time.perf_counter() - t0
    return InversionResult(x_T=traj[-1], null_embeddings=nulls, latent_0=rec.latent, trajectory=rec.trajectory,
                           activations=rec.activations, timings=timings)
