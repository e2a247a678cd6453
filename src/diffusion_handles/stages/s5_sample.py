"""Stage 5 of an edit: the guided generation (Eq. 3) conditioned on the edited depth ``d'``.

The sampler itself is :func:`diffusion_handles.diffusion.sampler.sample`, a plain function of
(denoiser, starting latent, plan, callback); this stage builds the denoiser for the edit (the
inversion's prompt and null-text embeddings, ``d'`` as the depth condition) and counts the UNet
evaluations under the stage ``"edit"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from diffusion_handles.diffusion.backbone import Backbone
from diffusion_handles.diffusion.conditioning import depth_to_condition
from diffusion_handles.diffusion.sampler import Denoiser
from diffusion_handles.diffusion.sampler import sample as run_sampler
from diffusion_handles.errors import HandlesError
from diffusion_handles.stages.s1_prepare import Prepared
from diffusion_handles.stages.s2_geometry import Geometry
from diffusion_handles.stages.s4_targets import Targets


@dataclass
class Sampled:
    """Stage 5's output.

    Attributes:
        latent: ``(1, c, h, w)`` the generated clean latent (finite).
        energies: ``{step: [energy parts per gradient step]}``; monitor: ``{step: parts}`` the
            energies of the latent each step starts from.
        unet_evals: ``{stage: {"forward": n, "backward": n}}`` of this edit.
    """

    latent: torch.Tensor
    energies: dict = field(default_factory=dict)
    monitor: dict = field(default_factory=dict)
    unet_evals: dict = field(default_factory=dict)


def sample(backbone: Backbone, prep: Prepared, geo: Geometry, tg: Targets, *, progress: bool = True,
           callback: Callable[[dict], None] | None = None) -> Sampled:
    """Stage 5: DDIM from ``tg.x_T`` with classifier-free guidance and the plan's guidance;
    ``callback`` receives ``{"step", "total", "x", "energies"}`` after each step."""
    inv = prep.inverted
    counter = backbone.counter
    dcond = depth_to_condition(geo.edited_depth.to(backbone.device), inv.x_T.shape[-2:])
    text, null = generation_text(backbone, prep)
    den = Denoiser(backbone, text, null, dcond, backbone.schedule(inv.config.num_steps), inv.config.guidance_scale)
    with counter.in_stage("edit"):
        res = run_sampler(den, tg.x_T, plan=tg.plan, progress=progress, desc=tg.desc, callback=callback)
    if not bool(torch.isfinite(res.latent).all()):
        raise HandlesError("guided generation: the model produced non-finite values (NaN or inf); "
                           "try float32 (--dtype), fewer guidance steps or a smaller transform")
    evals = {k: dict(v) for k, v in counter.counts.items()}
    return Sampled(res.latent, res.energies, res.monitor, evals)


def generation_text(backbone: Backbone, prep: Prepared) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(text (1, L, D), null embeddings (N, L, D) or None)`` of the generation: the inversion's,
    or under a restyle (``prep.prompt`` differs from the inversion's prompt) the new prompt's
    embedding with the inversion's null-text embeddings kept. A negative-prompt inversion has no
    null embeddings (its negative *is* the prompt, so CFG reduces to one branch); a restyle keeps
    that negative, the old prompt's embedding, as the unconditional branch of every step."""
    inv = prep.inverted
    if prep.request.restyle is None or prep.prompt is None:
        return inv.text_embedding, inv.null_embeddings
    with torch.no_grad():
        text = backbone.encode_prompt(prep.prompt).to(inv.text_embedding)
    null = inv.null_embeddings
    if null is None:
        null = inv.text_embedding.expand(inv.config.num_steps, *inv.text_embedding.shape[1:])
    return text, null
