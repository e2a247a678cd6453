"""The DDIM sampler with classifier-free guidance and the guidance energy (Eq. 3, Sec. 5.2).

One function, :func:`generate`, serves the reconstruction pass (recording ``Psi_{i,t}``) and the
guided generation of the edited image:

    eps^G = (1 + mu) eps(x_t; t, y, d) - mu eps(x_t; t, null'_t, d) + lambda grad_x G     (Eq. 3)

At every guided step the latent first takes ``grad_steps`` gradient steps
``x_t <- x_t - step_size * grad_x G(x_t)`` (each one a forward *with* gradient through the
text-conditioned branch, hooks reading the guided layers, and one backward), as the authors'
release does; ``lambda`` (``noise_guidance_scale``) additionally adds the last gradient to the
noise estimate literally as Eq. 3 writes it. For a DDIM step the two forms differ only by a
per-step factor: ``x_{t-1}`` is affine in both ``x_t`` and ``eps``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from diffusion_handles.diffusion.ddim import Schedule, ddim_step, to_eps_x0
from diffusion_handles.diffusion.energies import guidance_energy
from diffusion_handles.diffusion.hooks import capture_activations


@dataclass
class GuidanceTargets:
    """What G compares against (Sec. 5.2), all on the model's device.

    ``edited[(layer, step)]``: ``Psi'_{i,t}`` ``(1, C_i, h_i, w_i)`` (Eq. 6);
    ``mask_object[layer]``: ``M'_o`` ``(1, 1, h_i, w_i)``; ``mask_background[layer]``: ``M'_b``.
    """

    edited: dict[tuple[int, int], torch.Tensor]
    mask_object: dict[int, torch.Tensor]
    mask_background: dict[int, torch.Tensor]


@dataclass
class SampleResult:
    """Output of :func:`generate`: final latent ``x_0`` ``(1, c, h, w)``, recorded activations
    ``{(layer, step): (1, C, h_l, w_l)}``, and per guided step the list of energy dicts (one per
    gradient step, evaluated *before* that step)."""

    latent: torch.Tensor
    activations: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    energies: dict[int, list[dict[str, float]]] = field(default_factory=dict)


def generate(
    backbone,
    x_T: torch.Tensor,
    text: torch.Tensor,
    null_embeddings: torch.Tensor | None,
    depth_cond: torch.Tensor,
    schedule: Schedule,
    *,
    guidance_scale: float,
    record: Mapping[int, Sequence[int]] | None = None,
    record_dtype: torch.dtype = torch.float32,
    guide: Sequence[Sequence[int]] | None = None,
    targets: GuidanceTargets | None = None,
    w_object: float = 0.0,
    w_background: float = 0.0,
    grad_steps: int = 0,
    step_size: float = 0.0,
    noise_guidance_scale: float = 0.0,
    object_guidance: str = "local",
    progress: bool = True,
    desc: str = "sampling",
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> SampleResult:
    """Deterministic DDIM from ``x_T`` to ``x_0`` (Sec. 4) with CFG and optional guidance.

    Args:
        backbone: a :class:`~diffusion_handles.diffusion.backbone.Backbone`.
        x_T: ``(1, c, h, w)`` initial noise latent.
        text: ``(1, L, D)`` prompt embedding ``y``.
        null_embeddings: ``(N, L, D)`` per-step null embeddings ``null'_t`` (from inversion), or
            ``None`` when the null text *is* the prompt (negative-prompt inversion): then CFG
            reduces to the conditional estimate and one UNet evaluation per step is made.
        depth_cond: ``(1, 1, h, w)`` conditioning in ``[-1, 1]`` (``depth_to_condition``).
        schedule: the DDIM schedule (``backbone.schedule(N)``).
        guidance_scale: ``1 + mu`` of Eq. 3.
        record: ``{step: up-block indices}`` to record from the conditional branch.
        guide: per step, up-block indices to guide (empty = unguided); needs ``targets``.
        w_object, w_background, grad_steps, step_size, noise_guidance_scale, object_guidance: see
            :class:`~diffusion_handles.diffusion.config.GuidanceConfig`.
        callback: called as ``callback(step, x_prev)`` after each step.
    """
    n = len(schedule)
    if null_embeddings is not None and null_embeddings.shape[0] != n:
        raise ValueError(f"null_embeddings: expected {n} per-step embeddings, got {null_embeddings.shape[0]}")
    record = record or {}
    guide = guide or [()] * n
    if any(guide) and targets is None:
        raise ValueError("generate: guidance layers given without targets")
    counter = backbone.counter
    unet = backbone.unet
    result = SampleResult(latent=x_T)
    x = x_T.detach()
    for i in tqdm(range(n), desc=desc, disable=not progress, leave=False):
        t, a, a_prev = schedule.timesteps[i], schedule.alpha[i], schedule.alpha_prev[i]
        grad = None
        layers = tuple(guide[i])
        if layers:
            edited = {lay: targets.edited[(lay, i)] for lay in layers}
            history = []
            for _ in range(grad_steps):
                x = x.detach().requires_grad_(True)
                with torch.enable_grad(), capture_activations(unet, layers) as cap:
                    backbone.unet_eval(x, t, text, depth_cond)  # activations leave through hooks
                    energy, parts = guidance_energy(cap.outputs, edited, targets.mask_object,
                                                    targets.mask_background, layers, w_object, w_background,
                                                    object_guidance)
                    (grad,) = torch.autograd.grad(energy, x)
                counter.add_backward(1)
                history.append(parts)
                x = (x - step_size * grad).detach()
            result.energies[i] = history
        rec_layers = tuple(record.get(i, ()))
        with torch.no_grad():
            # The conditional and unconditional branches run as two batch-1 calls rather than
            # one batch of 2: bit-identical to the null-text optimisation's passes, so an
            # identity edit reproduces the reconstruction exactly (batched kernels differ in
            # the last bits, and CFG at 7.5 amplifies such differences over the steps).
            with capture_activations(unet, rec_layers, detach=True) as cap:
                out_c = backbone.unet_eval(x, t, text, depth_cond)
            if null_embeddings is None:
                model_out = out_c
            else:
                out_u = backbone.unet_eval(x, t, null_embeddings[i : i + 1].to(text.dtype), depth_cond)
                model_out = out_u + guidance_scale * (out_c - out_u)  # (1 + mu) c - mu u, mu = s - 1
            for lay in rec_layers:
                result.activations[(lay, i)] = cap.outputs[lay].to(record_dtype).clone()
            eps, _ = to_eps_x0(model_out.float(), x.float(), a, schedule.prediction_type)
            if grad is not None and noise_guidance_scale:
                eps = eps + noise_guidance_scale * grad.float()  # Eq. 3's lambda * grad G
            x = ddim_step(eps, x.float(), a, a_prev).to(x_T.dtype)
        if callback is not None:
            callback(i, x)
    result.latent = x
    return result
