"""The guided DDIM sampler with classifier-free guidance (Eq. 3, Sec. 5.2), in one small signature.

    sample(denoiser, x_T, *, plan=None, record=None, callback=None, progress=True) -> SampleResult

* :class:`Denoiser` wraps the UNet with CFG on a DDIM schedule. Its two methods are the *one*
  step implementation that the reconstruction pass, null-text inversion and guided generation
  share: :meth:`Denoiser.cfg` (the CFG mix, always in float32) and :meth:`Denoiser.ddim`
  (a deterministic DDIM step from a model output).
* :class:`GuidePlan` says what to guide at which step (targets ``Psi'``, masks, weights and the
  gradient-step rule, :mod:`diffusion_handles.diffusion.guidance`) and, optionally, which latents
  to preserve (blending with the inversion's trajectory, identity transfer).
* ``callback(info)`` receives ``{"step", "total", "x", "energies"}`` after every step (progress,
  intermediates), as k-diffusion's samplers do.

At every guided step the latent first takes ``grad_steps`` gradient steps on G (each one a
forward *with* gradient through the text-conditioned branch and one backward; the rule is the
plan's mode, see :func:`diffusion_handles.diffusion.guidance.latent_update`); ``lambda``
(``noise_guidance_scale``) additionally adds the last gradient to the noise estimate literally as
Eq. 3 writes it. For a DDIM step the two forms differ only by a per-step factor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from diffusion_handles.diffusion.ddim import Schedule, ddim_step, to_eps_x0
from diffusion_handles.diffusion.guidance import GuidePlan, guided_update
from diffusion_handles.diffusion.hooks import capture_activations


@dataclass
class Denoiser:
    """``eps``/model output of the depth-conditioned UNet with classifier-free guidance.

    Attributes:
        backbone: a :class:`~diffusion_handles.diffusion.backbone.Backbone`.
        text: ``(1, L, D)`` prompt embedding ``y``.
        null_embeddings: ``(N, L, D)`` per-step null embeddings ``null'_t`` (inversion), or
            ``None`` when the null text *is* the prompt (negative-prompt inversion, or no CFG):
            then CFG reduces to the conditional estimate, one UNet evaluation per step.
        depth_cond: ``(1, 1, h, w)`` conditioning in ``[-1, 1]`` (``depth_to_condition``).
        schedule: the DDIM schedule (``backbone.schedule(N)``).
        guidance_scale: ``1 + mu`` of Eq. 3.
    """

    backbone: object
    text: torch.Tensor
    null_embeddings: torch.Tensor | None
    depth_cond: torch.Tensor
    schedule: Schedule
    guidance_scale: float

    def __post_init__(self) -> None:
        n = len(self.schedule)
        if self.null_embeddings is not None and self.null_embeddings.shape[0] != n:
            raise ValueError(f"null_embeddings: expected {n} per-step embeddings, got {self.null_embeddings.shape[0]}")

    def __len__(self) -> int:
        return len(self.schedule)

    def conditional(self, x: torch.Tensor, i: int, text: torch.Tensor | None = None) -> torch.Tensor:
        """The UNet output of branch ``text`` (default: the prompt) at step ``i``, float32."""
        t = self.schedule.timesteps[i]
        text = self.text if text is None else text
        return self.backbone.unet_eval(x, t, text.to(self.text.dtype), self.depth_cond).float()

    def cfg(self, out_u: torch.Tensor, out_c: torch.Tensor) -> torch.Tensor:
        """``(1 + mu) c - mu u`` with ``1 + mu = guidance_scale``, mixed in float32 (half-precision
        branches would otherwise amplify their rounding by the guidance scale)."""
        return out_u.float() + self.guidance_scale * (out_c.float() - out_u.float())

    def ddim(self, x: torch.Tensor, i: int, model_out: torch.Tensor, extra_eps: torch.Tensor | None = None) -> torch.Tensor:
        """The DDIM step of generation step ``i`` from a model output (float32 in and out);
        ``extra_eps`` is added to the noise estimate (Eq. 3's ``lambda grad G``)."""
        s = self.schedule
        eps, _ = to_eps_x0(model_out.float(), x.float(), s.alpha[i], s.prediction_type)
        if extra_eps is not None:
            eps = eps + extra_eps.float()
        return ddim_step(eps, x.float(), s.alpha[i], s.alpha_prev[i])

    def model_output(self, x: torch.Tensor, i: int, record: Sequence[int] = ()) -> tuple[torch.Tensor, dict]:
        """CFG model output at step ``i`` (float32) and the conditional branch's activations of
        ``record`` up-blocks.

        The two branches run as two batch-1 calls rather than one batch of 2: bit-identical to
        the null-text optimisation's passes, so an identity edit reproduces the reconstruction
        exactly (batched kernels differ in the last bits, and CFG at 7.5 amplifies that).
        """
        with capture_activations(self.backbone.unet, tuple(record), detach=True) as cap:
            out_c = self.conditional(x, i)
        acts = dict(cap.outputs)
        if self.null_embeddings is None:
            return out_c, acts
        out_u = self.conditional(x, i, self.null_embeddings[i : i + 1])
        return self.cfg(out_u, out_c), acts


@dataclass(frozen=True)
class Record:
    """Which activations a pass keeps: ``layers`` ``{step: up-block indices}`` read from the
    conditional branch, stored in ``dtype`` (float16 halves an SD2 inversion's memory)."""

    layers: Mapping[int, Sequence[int]] = field(default_factory=dict)
    dtype: torch.dtype = torch.float32


@dataclass
class SampleResult:
    """Output of :func:`sample`: final latent ``x_0`` ``(1, c, h, w)``; recorded activations
    ``{(layer, step): (1, C, h_l, w_l)}``; ``trajectory`` the latent after every step
    (``N`` tensors, float32, when asked for); per guided step the list of energy dicts (one per
    gradient step, evaluated *before* that step); ``monitor[step]`` the energies of the latent
    each step starts from, read off the step's own conditional pass (no extra UNet call)."""

    latent: torch.Tensor
    activations: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    trajectory: list[torch.Tensor] = field(default_factory=list)
    energies: dict[int, list[dict[str, float]]] = field(default_factory=dict)
    monitor: dict[int, dict[str, float]] = field(default_factory=dict)


def sample(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    *,
    plan: GuidePlan | None = None,
    record: Record | None = None,
    keep_trajectory: bool = False,
    callback: Callable[[dict], None] | None = None,
    progress: bool = True,
    desc: str = "sampling",
) -> SampleResult:
    """Deterministic DDIM from ``x_T`` ``(1, c, h, w)`` to ``x_0`` (Sec. 4) with CFG and,
    with a ``plan``, the guidance of Sec. 5.2 and the plan's latent preservation.

    Args:
        denoiser: the CFG-wrapped UNet on its schedule.
        x_T: initial noise latent.
        plan: guidance targets and rules (``None``: plain sampling, e.g. the reconstruction).
        record: the activations to record from the conditional branch (``None``: none).
        keep_trajectory: keep the latent after every step in ``result.trajectory``.
        callback: called with ``{"step": i, "total": N, "x": x_prev, "energies": [...]}``.
    """
    n = len(denoiser)
    record = record or Record()
    layers_at, record_dtype = record.layers, record.dtype
    result = SampleResult(latent=x_T)
    x = x_T.detach().float()
    for i in tqdm(range(n), desc=desc, disable=not progress, leave=False):
        if plan is not None and i == plan.transfer_step and plan.transfer is not None:
            x = plan.transfer_identity(x, i)
        layers = plan.layers[i] if plan is not None else ()
        extra_eps = None
        if layers:
            x, history, grad = guided_update(denoiser, x, i, plan)
            result.energies[i] = history
            if grad is not None and plan.noise_guidance_scale:
                extra_eps = plan.noise_guidance_scale * grad  # Eq. 3's lambda * grad G
        watch = plan.monitor_layers(i) if plan is not None else ()
        rec_layers = tuple(sorted(set(layers_at.get(i, ())) | set(watch)))
        with torch.no_grad():
            model_out, acts = denoiser.model_output(x.to(x_T.dtype), i, rec_layers)
            for lay in layers_at.get(i, ()):
                result.activations[(lay, i)] = acts[lay].to(record_dtype).clone()
            if watch:
                result.monitor[i] = plan.energy_parts(acts, i, watch)
            x = denoiser.ddim(x, i, model_out, extra_eps)
            if plan is not None:
                x = plan.blend(x, i)
        if keep_trajectory:
            result.trajectory.append(x.detach().clone())
        if callback is not None:
            callback({"step": i, "total": n, "x": x, "energies": result.energies.get(i, [])})
    result.latent = x.to(x_T.dtype)
    return result
