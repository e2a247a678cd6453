"""Deterministic DDIM steps (eta = 0) in both directions, on a diffusers scheduler's schedule.

The sampler the paper uses is DDIM (Sec. 4, "Inference"; supplemental). The scheduler object
(diffusers ``DDIMScheduler`` built from the model's scheduler config) supplies the timesteps
and ``alphas_cumprod``; the update itself is the closed form below, written once so that the
inversion, the null-text loss and the guided sampler share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Schedule:
    """A ``num_steps`` DDIM schedule.

    ``timesteps[i]`` is the UNet timestep of generation step ``i`` (descending);
    ``alpha[i]`` is ``alphas_cumprod`` at ``timesteps[i]`` and ``alpha_prev[i]`` the one the
    step lands on (the next timestep, or the scheduler's final alpha after the last step).
    """

    timesteps: list[int]
    alpha: list[float]
    alpha_prev: list[float]
    prediction_type: str = "epsilon"

    def __len__(self) -> int:
        return len(self.timesteps)


def make_schedule(scheduler, num_steps: int) -> Schedule:
    """Timesteps and cumulative alphas of ``num_steps`` DDIM steps from a diffusers scheduler."""
    scheduler.set_timesteps(num_steps)
    ac = scheduler.alphas_cumprod
    # a schedule of as many steps as training timesteps with a steps_offset would reach one past
    # the last; that step becomes a repeat of the last (a DDIM step of zero length)
    ts = [min(int(t), len(ac) - 1) for t in scheduler.timesteps]
    final = float(getattr(scheduler, "final_alpha_cumprod", ac[0]))
    alpha = [float(ac[t]) for t in ts]
    alpha_prev = [float(ac[t]) for t in ts[1:]] + [final]
    pred = getattr(scheduler.config, "prediction_type", "epsilon")
    if pred not in ("epsilon", "v_prediction"):
        raise ValueError(f"scheduler prediction_type: expected epsilon or v_prediction, got {pred!r}")
    return Schedule(ts, alpha, alpha_prev, pred)


def to_eps_x0(model_out: torch.Tensor, x: torch.Tensor, alpha: float, prediction_type: str):
    """UNet output to ``(eps, x0)`` for latent ``x`` at noise level ``alpha`` (Eq. 1)."""
    a, s = alpha**0.5, (1.0 - alpha) ** 0.5
    if prediction_type == "v_prediction":
        eps = a * model_out + s * x
        x0 = a * x - s * model_out
    else:
        eps = model_out
        x0 = (x - s * eps) / a
    return eps, x0


def ddim_step(eps: torch.Tensor, x: torch.Tensor, alpha: float, alpha_next: float) -> torch.Tensor:
    """Move latent ``x`` from level ``alpha`` to ``alpha_next`` along noise ``eps`` (eta = 0).

    ``x0 = (x - sqrt(1-a) eps) / sqrt(a)``; result ``sqrt(a') x0 + sqrt(1-a') eps``. Used for
    generation (``alpha_next > alpha``) and inversion (``alpha_next < alpha``).
    """
    x0 = (x - (1.0 - alpha) ** 0.5 * eps) / alpha**0.5
    return alpha_next**0.5 * x0 + (1.0 - alpha_next) ** 0.5 * eps
