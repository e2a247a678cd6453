"""Stage 5 of an edit: decode, back to the input's frame, composite.

The generated latent is decoded at the work size; every output is resized back to the input's
size ``H x W``; with ``GuidanceConfig.composite`` the input's pixels are kept outside the soft
edit region (a feathered seam, not in the paper), or for a camera move the input warped to the
new view.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from diffusion_handles.diffusion.backbone import Backbone
from diffusion_handles.diffusion.config import GuidanceConfig
from diffusion_handles.errors import HandlesError
from diffusion_handles.stages.s1_prepare import Prepared
from diffusion_handles.stages.s2_geometry import Geometry
from diffusion_handles.stages.s4_sample import Sampled


@dataclass
class EditOutput:
    """Result of an edit (:meth:`DiffusionHandles.edit`, :meth:`DiffusionHandles.remove`), at the
    input image's size ``H x W``.

    Attributes:
        edited: ``(1, 3, H, W)`` the edited image x'_0 in [0, 1].
        reconstruction: ``(1, 3, H, W)`` the inversion's reconstruction in [0, 1].
        preview: ``(1, 3, H, W)`` the input warped by the 3D flow (holes magenta; a removal: its
            region magenta).
        edited_depth: ``(1, 1, H, W)`` d', z-depth in scene units.
        edited_mask: ``(1, 1, H, W)`` M'_o in [0, 1]; valid_mask: ``(1, 1, H, W)`` M_v.
        region: ``(1, 1, H, W)`` the soft edit region (1 = generated, 0 = input), whether or
            not the composite was applied (:func:`diffusion_handles.geometry.region.edit_region`).
        generated: ``(1, 3, H, W)`` the decoded generation before any composite.
        timings: seconds per stage of this edit; unet_evals: UNet evaluations of this edit.
        energies: ``{step: [ {"G": ..., "G_o[i]": ..., ...} per gradient step ]}``.
        monitor: ``{step: {"G": ..., "G_o[i]": ...}}`` the energies of the latent each step
            starts from, for every recorded (layer, step), guided or not.
        config: the resolved guidance configuration (layers, guide_until filled in).
    """

    edited: torch.Tensor
    reconstruction: torch.Tensor
    preview: torch.Tensor
    edited_depth: torch.Tensor
    edited_mask: torch.Tensor
    valid_mask: torch.Tensor
    region: torch.Tensor | None = None
    generated: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)
    unet_evals: dict[str, dict[str, int]] = field(default_factory=dict)
    energies: dict[int, list[dict[str, float]]] = field(default_factory=dict)
    monitor: dict[int, dict[str, float]] = field(default_factory=dict)
    config: dict = field(default_factory=dict)


def finish(backbone: Backbone, prep: Prepared, geo: Geometry, sampled: Sampled,
           guidance: GuidanceConfig) -> EditOutput:
    """Stage 5: decode ``sampled.latent``, resize every output to the input's size and composite."""
    inv = prep.inverted

    def back(x: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        return backbone.resize_to_work(x.float().cpu(), inv.input_hw, mode)

    region = back(geo.region).clamp(0, 1)
    generated = back(backbone.decode(sampled.latent))
    edited = composite(generated, region, _kept(prep, geo, back)) if guidance.composite else generated
    n = inv.config.num_steps
    resolved = guidance.to_dict()
    resolved["layers"] = list(guidance.resolved_layers(backbone.num_up_blocks))
    resolved["guide_until"] = guidance.resolved_guide_until(n)
    return EditOutput(
        edited=edited, reconstruction=back(inv.reconstruction), preview=back(geo.preview),
        edited_depth=back(geo.edited_depth), edited_mask=back(geo.edited_mask), valid_mask=back(geo.valid, "nearest"),
        region=region, generated=generated, unet_evals=sampled.unet_evals, energies=sampled.energies,
        monitor=sampled.monitor, config=resolved,
    )


def composite(generated: torch.Tensor, region: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``region * generated + (1 - region) * kept``: all ``(1, C, H, W)``, region in [0, 1]."""
    return region * generated + (1.0 - region) * kept


def _kept(prep: Prepared, geo: Geometry, back) -> torch.Tensor:
    """The image kept outside the region, at the input size: the camera's warped input, else the
    caller's source image (or the work-size input resized back)."""
    inv = prep.inverted
    given = prep.request.source_image
    if geo.keep_image is not None:
        src = back(geo.keep_image)
    else:
        src = back(inv.image) if given is None else given.float().cpu()
    if tuple(src.shape[-2:]) != tuple(inv.input_hw):
        raise HandlesError(f"source_image: expected size {inv.input_hw[1]}x{inv.input_hw[0]} (W x H), "
                           f"got {src.shape[-1]}x{src.shape[-2]}")
    return src
