"""Typed configuration of inversion and guided generation, defaults from the paper.

Sources cited per field: the paper's sections/equations, and the figures reported for the
authors' release in ``DESIGN.md`` ("release"). Null-text inversion constants are those of
Mokady et al. 2023 (NTI), which the paper uses (Sec. 5, "Inverting the Input Image").
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from diffusion_handles.limits import PRESETS as _PRESETS

INVERSION_METHODS = ("null-text", "ddim", "negative-prompt")
# The options of a restyle's three choices (GuidanceConfig.restyle_*), the default first.
RESTYLE_CHOICES = {"restyle_energy": ("appearance", "plain"), "restyle_transfer": ("off", "keep"),
                   "restyle_finish": ("generate", "detail", "warp")}


@dataclass(frozen=True)
class InversionConfig:
    """How an image is inverted into the depth-conditioned model (Sec. 5, first paragraph).

    Attributes:
        method: ``"null-text"`` (the paper's choice, Sec. 5: Null-Text Inversion [31]);
            ``"ddim"`` (plain DDIM inversion, the baseline NTI improves on); or
            ``"negative-prompt"`` (Miyake et al. 2023: use the prompt embedding as the null
            text, no optimisation, one UNet evaluation per step).
        num_steps: DDIM steps (Sec. 5 / release: 50).
        guidance_scale: classifier-free guidance scale ``1 + mu`` of Eq. 3 (release: 7.5).
        null_inner_steps: at most this many Adam steps on the null embedding per timestep
            (release: up to 5).
        null_lr: Adam learning rate, decayed linearly as ``lr * (1 - i / 100)`` (NTI's 1e-2,
            tuned for SD; on TinyWorld 5e-2 reconstructs better but edits worse, docs/releases/tinyworld-v2.2.md).
        null_early_stop: stop the inner loop when the latent loss drops below
            ``null_early_stop + i * 2e-5`` (NTI, epsilon = 1e-5).
        encode_refine_steps: steps of latent refinement after the VAE encoder
            (``diffusion.backbone.refine_latent``); ``None``: the model's own setting (0 for
            Stable Diffusion, whose pipelines take the encoder's latent as it is).
        window: ``(x0, y0, x1, y1)`` pixels (half-open) of the photo that the model inverts and
            edits, scaled to its native size (:mod:`diffusion_handles.geometry.window`); ``None``:
            the whole photo, scaled down to the native size if it is larger. Edits of such an
            inversion come back at the whole photo's size, the input's pixels outside the window.
    """

    method: str = "null-text"
    num_steps: int = 50
    guidance_scale: float = 7.5
    null_inner_steps: int = 5
    null_lr: float = 1e-2
    null_early_stop: float = 1e-5
    encode_refine_steps: int | None = None
    window: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.window is not None:
            box = tuple(int(v) for v in self.window)
            if len(box) != 4 or not (0 <= box[0] < box[2] and 0 <= box[1] < box[3]):
                raise ValueError(f"window: expected (x0, y0, x1, y1) with x0 < x1 and y0 < y1, got {self.window}")
            object.__setattr__(self, "window", box)
        if self.method not in INVERSION_METHODS:
            raise ValueError(f"inversion method: expected one of {', '.join(INVERSION_METHODS)}, got {self.method!r}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps: expected >= 1, got {self.num_steps}")
        if self.null_inner_steps < 0:
            raise ValueError(f"null_inner_steps: expected >= 0, got {self.null_inner_steps}")
        if not (math.isfinite(self.null_lr) and self.null_lr > 0):
            raise ValueError(f"null_lr: expected a positive learning rate, got {self.null_lr}")
        if self.encode_refine_steps is not None and not 0 <= self.encode_refine_steps <= 1000:
            raise ValueError(f"encode_refine_steps: expected an integer in [0, 1000] or None, got {self.encode_refine_steps}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["window"] is None:  # the whole photo: the same dictionary (and cache key) as before windows
            del d["window"]
        else:
            d["window"] = list(d["window"])
        return d


@dataclass(frozen=True)
class GuidanceConfig:
    """Guided generation of the edited image (Sec. 5.2, Eqs. 3, 8, 9).

    Attributes:
        layers: indices into ``unet.up_blocks`` whose *outputs* are the activations ``Psi_i``.
            ``None`` means the last two decoder blocks: the paper's "layers 2 and 3" of SD2-depth's
            decoder (Sec. 5), i.e. ``up_blocks[2]`` and ``up_blocks[3]``.
        layer_cycle: per guided step, positions into ``layers`` to guide, cycled (Sec. 5.2
            schedule (ii): layer 3, then layer 2, then both, repeat).
        guide_until: guide steps ``0 .. guide_until-1`` of ``num_steps`` and none after
            (Sec. 5.2 schedule (i): "up until time step 38/50"). ``None`` scales 38/50 to
            ``num_steps``.
        w_object: weight ``w^o`` of G_o, Eq. 8 (release: 1.5 x 30).
        w_background: weight ``w^b`` of G_b, Eq. 9 (release: 1.25 x 30).
        grad_steps: gradient steps on the latent per guided timestep (release: 3).
        step_size: size of each gradient step on the latent (release: 0.1).
        noise_guidance_scale: ``lambda`` of Eq. 3, adding ``lambda * grad G`` to the noise
            estimate. 0 by default because the release applies the gradient as the latent steps
            above (for a DDIM step the two differ only by a per-step factor). The CFG scale
            ``1 + mu`` is the inversion's (``InversionConfig.guidance_scale``): the null text
            was optimised for it.
        record_dtype: dtype name of the recorded activations ("float32" or "float16").
        object_guidance: ``"local"`` (Eq. 8, the paper's) or ``"averaged"`` (masked means over
            M'_o, the global alternative the paper's local term improves on, Sec. 6).
        mode: ``"normalized"`` (ours: energies divided by each layer's activation variance,
            gradient steps of ``relative_step`` times the noise level along the normalised
            gradient, backtracking when G rises) or ``"paper"`` (the energies as written and
            ``step_size`` steps on the raw gradient, the release's form);
            :mod:`diffusion_handles.diffusion.guidance`.
        relative_step: normalized mode: each gradient step moves no latent element by more than
            this fraction of the noise level ``sqrt(1 - alpha_t)``; ignored by ``paper``. 0.2 had
            the best object PSNR of 0.1 / 0.2 / 0.3 / 0.5 / 1.0 / 2.0 on held-out TinyWorld edits
            (``benchmarks/guidance_sweep.py``); values up to 2 are safe (nothing diverged).
        composite: after decoding, keep the input's pixels outside the edit region (source and
            target object, holes, a margin for contact shadows) with a feathered seam
            (:func:`diffusion_handles.geometry.region.edit_region`). Not in the paper.
        blend_latents: during the guided steps, replace the latent outside the edit region by
            the inversion's trajectory (latent blending). Not in the paper.
        identity_transfer: after this fraction of the steps (step ``round(f * N)``), set the
            object's latents (inside M'_o) to the inversion's latents of that step warped by the
            3D flow; ``None``: off. Not in the paper. With the latent-grid warp, 0.6 (step 30 of
            50) raised object PSNR by ~2 dB over no transfer on held-out TinyWorld edits, effects
            and disocclusion unchanged (step 10: +1.3 dB; 40: +2.7 dB). With the pixel warp
            (``transfer_source``), 0.7 is the default: on 16 tuning edits away from the
            benchmark's (``benchmarks/guidance_sweep.py --seed 1000700`` and ``1000800
            --transfers 0.5 0.6 0.7 0.8``) it beat 0.6 on object, full-image, effects and
            background PSNR alike; 0.8 gains more on the object but loses effects on one half,
            and the later the transfer, the less of the guided relighting the object keeps.
            The benchmark's ``ours_no_transfer`` row measures it.
        transfer_source: what the identity transfer warps. ``"pixels"`` (default): the
            inversion's latent with its clean part re-encoded from the *image* warped at full
            resolution (:func:`diffusion_handles.pipeline.pixel_transfer`). ``"latent"``: the
            latent itself, warped bilinearly in the latent grid (8x coarser than the pixels on
            SD2, 4x on TinyWorld), which smears stripes and dots. On the 20 benchmark edits of
            TinyWorld, pixels against latent at step 35: object PSNR +1.25 dB [+0.66, +1.95],
            full image +0.78 [+0.37, +1.28], silhouettes and disocclusions unchanged (``handles
            bench --methods ours ours_latent_transfer``, then ``benchmarks/bench_paired.py R R
            --methods ours --against ours_latent_transfer``). Not in the paper.
        complete_back: in a one-object edit, give the side a rotation uncovers (in the object's
            old place) the depth of the object's back, mirrored from its front
            (:mod:`diffusion_handles.geometry.shell`), instead of the background's, so that d'
            shows the whole object. Off by default: on 20 rotation edits away from the
            benchmark's it changed nothing measurable (object PSNR +0.01 [-0.06, +0.07] and
            +0.00 [-0.02, +0.02], full image +0.01 and -0.10 on the two halves, ``python
            benchmarks/guidance_sweep.py --seed 1000900 --kinds rotate_vertical rotate_tilted
            --transfers 0.7 --transfer-sources pixels --backs off on``, and ``--seed 1001200``),
            while the demo's 45-degree turn of a sphere stays round and gains 0.7 dB (``handles
            demo --complete-back``: 24.27 dB against 23.54). Not in the paper.
        effects: find the object's shadow in the input and where the moved object's shadow
            falls (:mod:`diffusion_handles.stages.s3_effects`: a sun direction estimated from the
            image and the depth, shadows cast from the depth), leave both out of the background
            energy, lift the old shadow and cast the new one in the kept image. Not in the paper.
        light_check: with ``effects``, keep a found light only when no direction more than 40
            degrees from it explains the dark pixels nearly as well
            (:data:`diffusion_handles.geometry.shadow.MAX_RIVAL`): a light found for dark texture
            or another object's dark side would lift and cast shadows in the wrong places. Not
            in the paper.
        keep_detail: with ``composite``, keep the input warped by the 3D flow (its shadows moved)
            inside the edit region too, wherever the warp has a pixel, and take the generation only
            in the holes (:func:`diffusion_handles.stages.s6_finish.keep_weight`), so the result is
            as sharp as the instant preview. On 20 held-out edits (``handles bench --seed 1006100
            --scenes 20 --methods ours ours_plain_finish``), against the generation over the whole
            region and no effects stage: full-image PSNR +2.16 dB [+0.90, +3.32], object
            +2.91 [+1.87, +3.91], background +4.56 [+2.60, +6.41], sharpness of the edit region
            0.86 against 0.78 (docs/benchmark.md). Keeping the warp only where the generation
            agreed with it within twice the model's reconstruction error kept too little on the
            tuning edits (the guided generation drifts in colour around the object).
            Not in the paper.
        silhouette_rims: with ``keep_detail``, refill the object's old footprint and the 1-px rim
            just outside its old silhouette wherever the moved object does not land (a mask
            leaves the anti-aliased edge outside it, which the warp would keep as a faint outline
            where the object was; an occluder's edge in front of the object stays)
            (:func:`diffusion_handles.stages.s6_finish.old_rim`). Not in the paper.
        hole_noise: an edit that moves something (not a removal) starts from fresh noise
            (seeded 0) in the latent cells of its holes, the pixels the move uncovers, away from
            where the moved object lands: the inverted noise there encodes what used to be
            there, and the model tends to draw the object back where it left. The removal
            already does this for its region. Not in the paper.
        restyle_energy, restyle_transfer, restyle_finish: how an edit with a restyle
            (``DiffusionHandles.edit(..., restyle=...)``) treats the moved object, which must
            take its new look, not its old colour; unused by every other edit. Not in the paper.
            See :data:`RESTYLE_CHOICES`; measured in ``docs/method.md`` (restyle).

            * ``restyle_energy``: ``"appearance"``: the object term of Eq. 8 on activations
              normalized per channel over ``M'_o`` in both the generation and the target
              (:func:`~diffusion_handles.diffusion.energies.appearance_energy`), so it carries
              shape, pose, shading and the pattern's layout but not the old colour;
              ``"plain"``: Eq. 8 as for any edit (``object_guidance``).
            * ``restyle_transfer``: ``"off"``: the identity transfer leaves the object's cells
              out (the shadows' cells keep it); ``"keep"``: as for any edit (it pastes the old
              object's encoded pixels into the latent).
            * ``restyle_finish``: with ``keep_detail``, inside the moved object ``M'_o``
              (:func:`~diffusion_handles.stages.s6_finish.restyle_inside`): ``"generate"``: the
              generation; ``"detail"``: the generation's low frequencies with the warped input's
              high-frequency luminance; ``"warp"``: the warped input as for any edit (the old
              look).
    """

    layers: tuple[int, ...] | None = None
    layer_cycle: tuple[tuple[int, ...], ...] = ((1,), (0,), (0, 1))
    guide_until: int | None = None
    w_object: float = 1.5 * 30
    w_background: float = 1.25 * 30
    grad_steps: int = 3
    step_size: float = 0.1
    noise_guidance_scale: float = 0.0
    record_dtype: str = "float32"
    object_guidance: str = "local"
    mode: str = "normalized"
    relative_step: float = 0.2
    composite: bool = True
    blend_latents: bool = False
    identity_transfer: float | None = 0.7
    transfer_source: str = "pixels"
    complete_back: bool = False
    effects: bool = True
    light_check: bool = True
    keep_detail: bool = True
    silhouette_rims: bool = True
    hole_noise: bool = False
    restyle_energy: str = "appearance"
    restyle_transfer: str = "off"
    restyle_finish: str = "generate"

    def __post_init__(self) -> None:
        for name, options in RESTYLE_CHOICES.items():
            if getattr(self, name) not in options:
                raise ValueError(f"{name}: expected one of {', '.join(options)}, got {getattr(self, name)!r}")
        if self.mode not in ("normalized", "paper"):
            raise ValueError(f"mode: expected 'normalized' or 'paper', got {self.mode!r}")
        if not 0.0 <= self.relative_step <= 2.0:
            raise ValueError(f"relative_step: expected a value in [0, 2], got {self.relative_step}")
        if self.step_size < 0:
            raise ValueError(f"step_size: expected >= 0, got {self.step_size}")
        if self.identity_transfer is not None and not 0.0 <= self.identity_transfer < 1.0:
            raise ValueError(f"identity_transfer: expected a fraction of the steps in [0, 1) or None, got {self.identity_transfer}")
        if self.transfer_source not in ("latent", "pixels"):
            raise ValueError(f"transfer_source: expected 'latent' or 'pixels', got {self.transfer_source!r}")
        if self.object_guidance not in ("local", "averaged"):
            raise ValueError(f"object_guidance: expected 'local' or 'averaged', got {self.object_guidance!r}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(v) for v in self.layers))
            if len(self.layers) == 0:
                raise ValueError("layers: expected at least one up-block index, got none")
        object.__setattr__(self, "layer_cycle", tuple(tuple(int(v) for v in c) for c in self.layer_cycle))
        if not self.layer_cycle or any(len(c) == 0 for c in self.layer_cycle):
            raise ValueError(f"layer_cycle: expected non-empty groups, got {self.layer_cycle}")
        if self.grad_steps < 0:
            raise ValueError(f"grad_steps: expected >= 0, got {self.grad_steps}")
        if self.guide_until is not None and self.guide_until < 0:
            raise ValueError(f"guide_until: expected >= 0, got {self.guide_until}")
        if self.record_dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"record_dtype: expected float32, float16 or bfloat16, got {self.record_dtype!r}")

    def resolved_guide_until(self, num_steps: int) -> int:
        """Number of guided steps for a ``num_steps`` schedule (38 of 50 scaled, Sec. 5.2)."""
        if self.guide_until is None:
            return int(round(38 * num_steps / 50))
        return min(self.guide_until, num_steps)

    def resolved_transfer_step(self, num_steps: int) -> int | None:
        """The step of the identity transfer in a ``num_steps`` schedule (``None``: off)."""
        if self.identity_transfer is None:
            return None
        return min(int(round(self.identity_transfer * num_steps)), num_steps - 1)

    def resolved_layers(self, num_up_blocks: int) -> tuple[int, ...]:
        layers = self.layers if self.layers is not None else (num_up_blocks - 2, num_up_blocks - 1)
        layers = tuple(i if i >= 0 else num_up_blocks + i for i in layers)
        bad = [i for i in layers if not 0 <= i < num_up_blocks]
        if bad:
            raise ValueError(f"layers: expected up-block indices in [0, {num_up_blocks}), got {list(self.layers or ())}")
        for c in self.layer_cycle:
            if any(not 0 <= p < len(layers) for p in c):
                raise ValueError(f"layer_cycle: positions must index layers {layers}, got {self.layer_cycle}")
        return layers

    def schedule(self, num_steps: int, num_up_blocks: int) -> list[tuple[int, ...]]:
        """Up-block indices guided at each step ``0..num_steps-1`` (empty = unguided), Sec. 5.2."""
        layers = self.resolved_layers(num_up_blocks)
        until = self.resolved_guide_until(num_steps)
        out: list[tuple[int, ...]] = []
        for i in range(num_steps):
            if i < until and self.grad_steps > 0:
                out.append(tuple(layers[p] for p in self.layer_cycle[i % len(self.layer_cycle)]))
            else:
                out.append(())
        return out

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers) if self.layers is not None else None
        d["layer_cycle"] = [list(c) for c in self.layer_cycle]
        return d

    @staticmethod
    def from_dict(d: dict) -> GuidanceConfig:
        d = dict(d)
        if d.get("layers") is not None:
            d["layers"] = tuple(d["layers"])
        if "layer_cycle" in d:
            d["layer_cycle"] = tuple(tuple(c) for c in d["layer_cycle"])
        return GuidanceConfig(**d)


def paper_guidance(**overrides) -> GuidanceConfig:
    """The paper's guidance exactly (Sec. 5.2, release values): raw energies, ``step_size``
    steps, no preservation beyond the paper."""
    return GuidanceConfig(**{"mode": "paper", "composite": False, "blend_latents": False,
                             "identity_transfer": None, "effects": False, "keep_detail": False, **overrides})


# Named settings of inversion + guidance (``handles edit --preset``): ``limits.PRESETS``, which the
# CLI reads without importing this layer.
PRESETS = _PRESETS
DRAFT_STEPS = 10  # the draft preset's DDIM steps (of the paper's 50)


def draft_steps(num_steps: int = 50) -> int:
    """The draft's steps for a schedule of ``num_steps``: :data:`DRAFT_STEPS` of 50, scaled
    (at least 1, at most ``num_steps``)."""
    return max(1, min(int(num_steps), int(round(DRAFT_STEPS * num_steps / 50))))


def preset(name: str, num_steps: int | None = None) -> tuple[InversionConfig, GuidanceConfig]:
    """``(InversionConfig, GuidanceConfig)`` of a named preset.

    * ``default``: null-text inversion, 50 steps, the normalized guidance, pixel composite.
    * ``paper``: the paper's settings exactly (:func:`paper_guidance`).
    * ``fast``: negative-prompt inversion (one UNet call per step, no null-text optimisation),
      20 steps, one gradient step per guided step: 20 + 15 x 3 = 65 UNet forward-equivalents
      per edit (a backward counts 2) and 40 for the inversion.
    * ``draft``: a render while the user is still deciding: negative-prompt inversion on
      :data:`DRAFT_STEPS` (10) steps with the encoder's latent as it is (``encode_refine_steps``
      0: on TinyWorld the refinement's 20 decoder passes per encode were 6-10 s of a 12 s draft
      edit, in the identity transfer), the normalized guidance with one gradient step per
      guided step, the identity transfer, composite, effects and detail finish as ``default``
      (none of them costs a UNet evaluation): 10 + 8 x 3 = 34 UNet forward-equivalents per edit
      (1/13 of the default's 442) and 20 for the inversion (docs/method.md: its measured quality).
    """
    if name == "default":
        return InversionConfig(num_steps=num_steps or 50), GuidanceConfig()
    if name == "paper":
        return InversionConfig(num_steps=num_steps or 50), paper_guidance()
    if name == "fast":
        return (InversionConfig(method="negative-prompt", num_steps=num_steps or 20),
                GuidanceConfig(grad_steps=1, relative_step=0.3))
    if name == "draft":
        return (InversionConfig(method="negative-prompt", num_steps=num_steps or DRAFT_STEPS, encode_refine_steps=0),
                GuidanceConfig(grad_steps=1, relative_step=0.3))
    raise ValueError(f"preset: expected one of {', '.join(PRESETS)}, got {name!r}")
