"""The methods a benchmark run compares, by name: ours, baselines and the Fig. 8 ablations.

Every diffusion method is *one* pipeline (:class:`~diffusion_handles.pipeline.DiffusionHandles`)
with a different :class:`~diffusion_handles.diffusion.config.GuidanceConfig`; the image is
inverted once per scene and per distinct inversion configuration: most methods share the run's
(``--inversion``, ``--steps``), a method that names its own (``ours_draft``: fewer steps,
negative-prompt inversion) gets its own, and each row is charged the inversion it used
(``fwd_eq_inversion``). Methods whose resolved configurations coincide (e.g. ``layers_cyclic``
and ``stop38`` are ``ours``) are computed once.

Step counts in names refer to the paper's 50-step schedule; with fewer steps they are scaled
(``stop20`` guides the first ``round(20 * N / 50)`` of ``N`` steps).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from diffusion_handles.errors import HandlesError


@dataclass(frozen=True)
class Method:
    """A benchmark method.

    Attributes:
        name: the name used on the command line and in the tables.
        kind: ``"diffusion"`` (the pipeline with :attr:`guidance`), ``"warp"`` (no diffusion) or
            ``"reconstruction"`` (the shared inversion's reconstruction, no edit: a reference).
        description: one line for the report.
        overrides: ``num_steps -> dict`` of GuidanceConfig fields that differ from the defaults
            (``num_steps``: the method's own, :meth:`inversion_config`).
        group: where it sits in the table ("main", "ablation: ...").
        inversion: ``None`` (the run's inversion, shared) or ``run's num_steps -> dict`` of
            InversionConfig fields that differ from the run's: the method inverts on its own.
        whole_image: run the model on the whole image scaled to its size even when the image is
            larger (no edit window, ``DiffusionHandles.edit_window``).
    """

    name: str
    kind: str
    description: str
    overrides: Callable[[int], dict] = lambda n: {}
    group: str = "main"
    inversion: Callable[[int], dict] | None = None
    whole_image: bool = False

    def inversion_config(self, base):
        """The :class:`InversionConfig` this method uses: the run's ``base``, or ``base`` with
        the method's own fields (:attr:`inversion`)."""
        if self.inversion is None:
            return base
        return dataclasses.replace(base, **self.inversion(base.num_steps))

    def guidance(self, num_steps: int):
        """The :class:`GuidanceConfig` of this method for a ``num_steps`` schedule.

        Raises:
            HandlesError: the method needs a configuration field this build does not have.
        """
        from diffusion_handles.diffusion.config import GuidanceConfig

        if self.kind != "diffusion":
            raise HandlesError(f"method {self.name}: is not a diffusion method, it has no guidance configuration")
        over = self.overrides(num_steps)
        known = {f.name for f in dataclasses.fields(GuidanceConfig)}
        missing = sorted(set(over) - known)
        if missing:
            raise HandlesError(f"method {self.name}: needs GuidanceConfig field(s) {missing}, which this build does not have")
        return GuidanceConfig(**over)


def _changed(config, default) -> dict:
    """The fields of dataclass ``config`` whose values differ from ``default``'s."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if getattr(config, f.name) != getattr(default, f.name)}


def _draft_inversion(n: int) -> dict:
    """The draft preset's inversion fields for a run of ``n`` steps (its steps scaled as ``n / 50``)."""
    from diffusion_handles.diffusion.config import InversionConfig, draft_steps, preset

    inversion = preset("draft", draft_steps(n))[0]
    return {**_changed(inversion, InversionConfig()), "num_steps": inversion.num_steps}


def _draft_guidance(n: int) -> dict:
    """The draft preset's guidance fields that differ from the defaults, for its ``n`` steps."""
    from diffusion_handles.diffusion.config import GuidanceConfig, preset

    return _changed(preset("draft", n)[1], GuidanceConfig())


def _stop(k: int) -> Callable[[int], dict]:
    return lambda n: {"guide_until": int(round(k * n / 50))}


_DEFAULT_WB = 1.25 * 30  # GuidanceConfig.w_background default (release value)

METHODS: dict[str, Method] = {m.name: m for m in [
    Method("ours", "diffusion", "the default: normalized guidance (scale-free energies, noise-relative steps), "
           "local G_o + G_b, cyclic layers 3/2/both until step 38/50, identity transfer at step 35/50 (warped in "
           "pixels), input kept outside the edit region"),
    Method("ours_whole_image", "diffusion", "ours on the whole image scaled down to the model's size, without the "
           "edit window (the same as ours when the image is no larger than the model's size)",
           whole_image=True, group="window"),
    Method("ours_draft", "diffusion", "the draft preset (--preset draft): its own negative-prompt inversion on a "
           "fifth of the steps (10 of 50), encoder latent unrefined, one gradient step per guided step; transfer, "
           "composite, effects and finish as ours",
           _draft_guidance, inversion=_draft_inversion),
    Method("paper", "diffusion", "the paper exactly: raw energies, 3 steps of 0.1 on the latent, no composite",
           lambda n: {"mode": "paper", "composite": False, "identity_transfer": None, "effects": False,
                      "keep_detail": False}),
    Method("ours_no_composite", "diffusion", "ours without the pixel composite (the generation everywhere)",
           lambda n: {"composite": False}, "preservation"),
    Method("ours_blend", "diffusion", "ours + latent blending with the inversion outside the edit region",
           lambda n: {"blend_latents": True}, "preservation"),
    Method("ours_no_transfer", "diffusion", "ours without the identity transfer",
           lambda n: {"identity_transfer": None}, "preservation"),
    Method("ours_latent_transfer", "diffusion", "ours with the identity transfer warped in the latent grid, not in pixels",
           lambda n: {"transfer_source": "latent"}, "preservation"),
    Method("ours_back", "diffusion", "ours with the object's mirrored back in the edited depth",
           lambda n: {"complete_back": True}, "preservation"),
    Method("ours_hole_noise", "diffusion", "ours with fresh noise in the latent cells the move uncovers "
           "(GuidanceConfig.hole_noise), away from the moved object",
           lambda n: {"hole_noise": True}, "preservation"),
    Method("ours_no_rims", "diffusion", "ours keeping the warp's pixels around the old silhouette: its footprint's "
           "blended rim not refilled (GuidanceConfig.silhouette_rims off)",
           lambda n: {"silhouette_rims": False}, "effects"),
    Method("ours_previous", "diffusion", "ours as released before the refilled old silhouette and the light's "
           "rival check (GuidanceConfig.silhouette_rims and light_check off)",
           lambda n: {"silhouette_rims": False, "light_check": False}, "effects"),
    Method("ours_no_effects", "diffusion", "ours without the effects stage (no shadows found, lifted or cast)",
           lambda n: {"effects": False}, "effects"),
    Method("ours_plain_finish", "diffusion", "ours before the effects stage and the detail finish: the generation "
           "fills the whole edit region (the previous default)",
           lambda n: {"effects": False, "keep_detail": False}, "effects"),
    Method("ours_normalized_only", "diffusion", "the normalized guidance alone: no transfer, no composite",
           lambda n: {"identity_transfer": None, "composite": False}, "preservation"),
    Method("warp_only", "warp", "the 3D preview (image warped by the 3D flow), holes filled by OpenCV Telea inpainting"),
    Method("reconstruction", "reconstruction",
           "no edit: the inversion's reconstruction of the input (what the model keeps of the image; "
           "its cycle error is the identity floor of every diffusion method)"),
    Method("depth_only", "diffusion", "regenerate from the inverted noise with the edited depth, no activation guidance",
           lambda n: {"grad_steps": 0, "composite": False, "identity_transfer": None, "effects": False}),
    Method("averaged_guidance", "diffusion", "G_o on masked means of the activations (stand-in for Diffusion Self-Guidance)",
           lambda n: {"object_guidance": "averaged"}),
    Method("layer2_only", "diffusion", "guide decoder layer 2 only, every guided step",
           lambda n: {"layer_cycle": ((0,),)}, "ablation: layers"),
    Method("layer3_only", "diffusion", "guide decoder layer 3 only, every guided step",
           lambda n: {"layer_cycle": ((1,),)}, "ablation: layers"),
    Method("layers_both", "diffusion", "guide layers 2 and 3 at every guided step",
           lambda n: {"layer_cycle": ((0, 1),)}, "ablation: layers"),
    Method("layers_cyclic", "diffusion", "cycle layer 3, layer 2, both (= ours)", lambda n: {}, "ablation: layers"),
    Method("stop20", "diffusion", "guide until step 20/50", _stop(20), "ablation: guidance stop"),
    Method("stop28", "diffusion", "guide until step 28/50", _stop(28), "ablation: guidance stop"),
    Method("stop38", "diffusion", "guide until step 38/50 (= ours)", _stop(38), "ablation: guidance stop"),
    Method("stop50", "diffusion", "guide every step", _stop(50), "ablation: guidance stop"),
    Method("wb_low", "diffusion", "background weight w_b / 4", lambda n: {"w_background": _DEFAULT_WB / 4},
           "ablation: background weight"),
    Method("wb_high", "diffusion", "background weight w_b x 4", lambda n: {"w_background": _DEFAULT_WB * 4},
           "ablation: background weight"),
]}

FAST_METHODS = ("ours", "warp_only")
MAIN_METHODS = ("ours", "paper", "warp_only", "depth_only", "reconstruction", "ours_no_composite", "ours_blend",
                "ours_no_transfer", "ours_latent_transfer", "ours_normalized_only")


def resolve_methods(names: list[str] | None) -> list[Method]:
    """Methods by name (``None`` or ``["all"]``: every method), in registry order."""
    if not names or names == ["all"]:
        return list(METHODS.values())
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise HandlesError(f"--methods: expected names from {', '.join(METHODS)} (or 'all'), got {', '.join(unknown)}")
    return [m for m in METHODS.values() if m.name in names]


def record_all_guidance(num_steps: int):
    """A GuidanceConfig whose recording plan covers every (layer, step) any method guides:
    both guided layers at every step. Used for the inversions of a scene (one per inversion
    configuration)."""
    from diffusion_handles.diffusion.config import GuidanceConfig

    return GuidanceConfig(layer_cycle=((0, 1),), guide_until=num_steps)
