"""What the guided sampler follows (Sec. 5.2) and how a guided step moves the latent.

* :class:`GuidePlan`: per step the guided up-blocks, the targets ``Psi' = W[rho(Psi), F]``
  (Eq. 6), the masks ``M'_o`` / ``M'_b`` per layer, the energy weights and the step rule; plus
  the optional latent preservation (blending with the inversion's trajectory outside the edit
  region, identity transfer of the object's latents at one step). Built by
  :func:`diffusion_handles.stages.s4_targets.guidance_targets`.
* :func:`guided_update`: the ``grad_steps`` gradient steps of one guided timestep.
* :func:`latent_update`: the two step rules (``GuidanceConfig.mode``):

  - ``"paper"``: ``x <- x - step_size * grad G`` with the energies as written (Eqs. 8, 9), the
    authors' release form. Its effect depends on each model's activation scale and resolution.
  - ``"normalized"``: scale-free. Each layer's energies are divided by that layer's recorded
    activation variance (so ``w_o``, ``w_b`` mean the same on any backbone, width and
    resolution), and the step is bounded relative to the noise level:
    ``x <- x - min(relative_step * sqrt(1 - alpha_t) / max|g|, G / |g|^2) * g``. The first bound
    moves no latent element by more than ``relative_step`` times the noise level, and keeps the
    gradient's spatial shape (the object, where G's gradient lives, moves most; normalising by
    the RMS instead pushed the background as hard and lost 2 dB of full-image PSNR on TinyWorld,
    ``benchmarks/guidance_sweep.py``); the second (a Polyak step) never goes past the zero of G's
    linearisation, so an edit that already matches (G ~ 0, e.g. the identity) is not moved. A
    sub-step that *raised* G is undone and retaken at half the size (read off the next
    sub-step's forward, no extra UNet call), so no setting can diverge.
* :func:`scaled_grad`: gradients through a half-precision UNet with loss scaling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from diffusion_handles.diffusion.energies import guidance_energy
from diffusion_handles.diffusion.hooks import capture_activations

GUIDANCE_MODES = ("normalized", "paper")


@dataclass
class GuidePlan:
    """Everything the sampler needs to guide one edit (all tensors on the model's device).

    Attributes:
        layers: per step ``0..N-1``, the up-block indices guided at that step (empty = none).
        edited: ``{(layer, step): Psi'}`` ``(1, C, h, w)`` targets (Eq. 6); may hold more pairs
            than are guided (those are only monitored).
        mask_object: ``{layer: M'_o (1, 1, h, w)}``; mask_background: ``{layer: M'_b}``.
        scale: ``{(layer, step): s}`` energy divisor per target (activation variance in the
            normalized mode, 1 in the paper's).
        norm: ``{(layer, step): variance}`` the activation variance whatever the mode: the
            monitor reports ``G_o_rel`` = G_o / variance, comparable across modes and models.
        w_object, w_background, object_guidance, mode, grad_steps, step_size, relative_step,
        noise_guidance_scale: see :class:`~diffusion_handles.diffusion.config.GuidanceConfig`;
            ``object_guidance`` may also be ``"appearance"`` (a restyle: Eq. 8 on activations
            normalized per channel over ``M'_o``, in units of ``norm``,
            :func:`~diffusion_handles.diffusion.energies.appearance_energy`).
        blend_mask: ``(1, 1, h, w)`` at latent size, 1 where generation is free, 0 where the
            latent is replaced by the inversion's (``blend_trajectory[i]``, the latent after
            step ``i`` of the reconstruction) for steps ``< blend_until``; ``None``: off.
        transfer: ``(1, c, h, w)`` the inversion's latent at ``transfer_step`` warped by the
            3D flow; ``transfer_mask`` ``(1, 1, h, w)`` where it replaces the latent.
    """

    layers: list[tuple[int, ...]]
    edited: dict[tuple[int, int], torch.Tensor]
    mask_object: dict[int, torch.Tensor]
    mask_background: dict[int, torch.Tensor]
    scale: dict[tuple[int, int], float] = field(default_factory=dict)
    norm: dict[tuple[int, int], float] = field(default_factory=dict)
    w_object: float = 45.0
    w_background: float = 37.5
    object_guidance: str = "local"
    mode: str = "normalized"
    grad_steps: int = 3
    step_size: float = 0.1
    relative_step: float = 0.2
    noise_guidance_scale: float = 0.0
    blend_mask: torch.Tensor | None = None
    blend_trajectory: list[torch.Tensor] | None = None
    blend_until: int = 0
    transfer: torch.Tensor | None = None
    transfer_mask: torch.Tensor | None = None
    transfer_step: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in GUIDANCE_MODES:
            raise ValueError(f"mode: expected one of {', '.join(GUIDANCE_MODES)}, got {self.mode!r}")

    def energy(self, acts: Mapping[int, torch.Tensor], step: int, layers: Sequence[int]):
        """``(G, parts)`` of the activations ``acts`` at ``step`` over ``layers``."""
        units = {lay: self.norm.get((lay, step), 1.0) for lay in layers} if self.object_guidance == "appearance" else None
        return guidance_energy(acts, {lay: self.edited[(lay, step)] for lay in layers},
                               (self.mask_object, self.mask_background), layers, (self.w_object, self.w_background),
                               self.object_guidance, {lay: self.scale.get((lay, step), 1.0) for lay in layers}, units)

    def monitor_layers(self, step: int) -> tuple[int, ...]:
        """Layers with a target at ``step`` (guided or not): their energies are logged."""
        return tuple(sorted(lay for (lay, s) in self.edited if s == step))

    def energy_parts(self, acts: Mapping[int, torch.Tensor], step: int, layers: Sequence[int]) -> dict[str, float]:
        """The energy parts, plus ``G_o_rel``: the mean over ``layers`` of G_o / activation variance."""
        parts = self.energy(acts, step, layers)[1]
        rel = [parts[f"G_o[{lay}]"] * self.scale.get((lay, step), 1.0) / self.norm.get((lay, step), 1.0)
               for lay in layers]
        parts["G_o_rel"] = float(sum(rel) / len(rel)) if rel else 0.0
        return parts

    def blend(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """Latent blending after step ``step``: keep the inversion's latent outside the edit region."""
        if self.blend_mask is None or self.blend_trajectory is None or step >= self.blend_until:
            return x
        m = self.blend_mask.to(x.dtype)
        return m * x + (1.0 - m) * self.blend_trajectory[step].to(x.dtype)

    def transfer_identity(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """Identity transfer at ``transfer_step``: the object's latents from the warped inversion."""
        m = self.transfer_mask.to(x.dtype)
        return m * self.transfer.to(x.dtype) + (1.0 - m) * x


def scaled_grad(energy: torch.Tensor, wrt: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``d energy / d wrt`` when the graph runs in ``dtype``.

    float16 has a narrow range: small gradients flush to zero in its backward pass. The energy
    is multiplied by a loss scale (2^12, divided by 16 while the result overflows) and the
    gradient divided by it, as mixed-precision training does. float32 and bfloat16 (float32's
    range) need no scaling.
    """
    if dtype != torch.float16:
        return torch.autograd.grad(energy, wrt)[0]
    scale = 2.0**12
    for attempt in range(5):
        (g,) = torch.autograd.grad(energy * scale, wrt, retain_graph=attempt < 4)
        if bool(torch.isfinite(g).all()):
            return g / scale
        scale /= 16.0
    return torch.nan_to_num(g / scale, nan=0.0, posinf=0.0, neginf=0.0)


def latent_update(x: torch.Tensor, grad: torch.Tensor, energy: float, plan: GuidePlan, alpha: float,
                  shrink: float = 1.0) -> torch.Tensor:
    """One gradient step on the latent ``x`` ``(1, c, h, w)`` under the plan's rule.

    ``paper``: ``x - step_size * grad``. ``normalized``:
    ``x - shrink * min(relative_step * sqrt(1 - alpha) / max|grad|, energy / |grad|^2) * grad``
    (``energy`` is G at ``x``; ``shrink`` halves with each backtrack).
    """
    if plan.mode == "paper":
        return x - plan.step_size * grad
    g2 = grad.float().pow(2)
    if float(g2.sum()) <= 0.0:
        return x
    noise_bound = plan.relative_step * (1.0 - alpha) ** 0.5 / float(grad.abs().max())
    polyak = max(float(energy), 0.0) / float(g2.sum())
    return x - shrink * min(noise_bound, polyak) * grad


def guided_update(denoiser, x: torch.Tensor, step: int, plan: GuidePlan):
    """The ``grad_steps`` gradient steps of guided timestep ``step``.

    Returns ``(x, history, grad)``: the moved latent, the energy parts evaluated before each
    sub-step, and the last gradient (for Eq. 3's ``lambda`` term). In the normalized mode a
    sub-step that raised G is undone and retaken at half the size.
    """
    bb = denoiser.backbone
    layers = plan.layers[step]
    alpha = denoiser.schedule.alpha[step]
    shrink = 1.0
    history: list[dict[str, float]] = []
    grad = None
    prev = None  # (x, grad, G) before the last sub-step
    for _ in range(plan.grad_steps):
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad(), capture_activations(bb.unet, layers) as cap:
            denoiser.conditional(xr.to(bb.dtype), step)  # activations leave through the hooks
            energy, parts = plan.energy(cap.outputs, step, layers)
            g = scaled_grad(energy, xr, bb.dtype).float()
        bb.counter.add_backward(1)
        history.append(parts)
        if plan.mode == "normalized" and prev is not None and parts["G"] > prev[2]:
            shrink *= 0.5  # overshoot: back to the previous latent, half the step along its gradient
            x = latent_update(prev[0], prev[1], prev[2], plan, alpha, shrink).detach()
            continue
        prev = (x.detach(), g, parts["G"])
        grad = g
        x = latent_update(x.detach(), g, parts["G"], plan, alpha, shrink).detach()
    return x, history, grad
