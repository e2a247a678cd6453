"""The facade: ``DiffusionHandles.from_pretrained(model).invert(...)`` once, ``.edit(...)`` many times.

Stages, as in Fig. 2 of the paper:

1. ``invert`` (Sec. 5, step (i)): encode the image, DDIM-invert it with the depth condition,
   (null-text) optimise, record the guided activations ``Psi_{i,t}`` on the reconstruction pass.
   The result is an :class:`~diffusion_handles.diffusion.inverted.InvertedImage`, optionally
   cached on disk by a hash of its inputs.
2. ``edit`` (Sec. 5.1-5.2), in numbered stages: (1) the 3D edit's flow, masks and edited depth
   (``geometry``); (2) the guidance targets: edited activations ``Psi' = W[rho(Psi), F]`` (Eq. 6)
   and masks per layer (:func:`guidance_targets`); (3) the guided generation (Eqs. 3, 8, 9)
   conditioned on the edited depth ``d'``; (4) decoding and, optionally, the pixel composite that
   keeps the input outside the edit region.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffusion_handles.diffusion.backbone import DEFAULT_MODEL, Backbone
from diffusion_handles.diffusion.conditioning import depth_to_condition
from diffusion_handles.diffusion.config import GuidanceConfig, InversionConfig
from diffusion_handles.diffusion.energies import activation_scale
from diffusion_handles.diffusion.guidance import GuidePlan
from diffusion_handles.diffusion.inversion import invert as run_inversion
from diffusion_handles.diffusion.inverted import CacheEntryError, InvertedImage, inversion_key
from diffusion_handles.diffusion.sampler import Denoiser, sample
from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry import (
    DEFAULT_FOV_DEG,
    Camera,
    EditGeometry,
    HandleEdit,
    Similarity,
    background_depth_fill,
    compute_edit,
    edit_region,
    edited_depth,
    latent_region,
    render_preview,
    warp,
)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class EditOutput:
    """Result of :meth:`DiffusionHandles.edit`, at the input image's size ``H x W``.

    Attributes:
        edited: ``(1, 3, H, W)`` the edited image x'_0 in [0, 1].
        reconstruction: ``(1, 3, H, W)`` the inversion's reconstruction in [0, 1].
        preview: ``(1, 3, H, W)`` the input warped by the 3D flow (holes magenta).
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


def _cached(folder: Path, key: str, bb) -> InvertedImage | None:
    """The verified cache entry ``folder``, or ``None`` when there is none; an entry that fails
    verification is reported in one line on stderr and deleted, so the caller rebuilds it."""
    if not (folder.exists() or folder.is_symlink()):
        return None
    try:
        inv = InvertedImage.load(folder, device=bb.device, key=key, weights_digest=bb.weights_digest)
    except CacheEntryError as e:
        print(f"handles: inversion cache: discarding a bad entry and inverting again: {e}", file=sys.stderr)
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
        else:
            folder.unlink(missing_ok=True)
        return None
    inv.cache_hit = True
    return inv


def _check_inputs(image, depth, mask) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[:2] != (1, 3):
        raise HandlesError(f"image: expected a tensor (1, 3, H, W) in [0, 1], got {getattr(image, 'shape', type(image))}")
    h, w = image.shape[-2:]
    for name, t in (("depth", depth), ("mask", mask)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[:2] != (1, 1):
            raise HandlesError(f"{name}: expected a tensor (1, 1, H, W), got {getattr(t, 'shape', type(t))}")
        if tuple(t.shape[-2:]) != (h, w):
            raise HandlesError(f"{name}: expected size {w}x{h} (W x H, same as the image), got {t.shape[-1]}x{t.shape[-2]}")
    if not bool(torch.isfinite(depth).all()) or bool((depth <= 0).any()):
        raise HandlesError("depth: expected positive, finite z-depth everywhere")
    if not bool((mask > 0.5).any()):
        raise HandlesError("mask: expected at least one object pixel, got an empty mask")


def guidance_targets(inverted: InvertedImage, geom: EditGeometry, guidance: GuidanceConfig,
                     schedule_layers: list[tuple[int, ...]], latent_hw: tuple[int, int]) -> GuidePlan:
    """Stage 2 of an edit: what the guided generation follows (Sec. 5.1-5.2).

    For every recorded ``(layer, step)``: ``Psi' = W[rho(Psi), F]`` (Eq. 6, bilinear ``rho``, the
    flow evaluated at that layer's resolution); per layer ``M'_o = W[M_o, F] * M_v`` and
    ``M'_b = (1 - M'_o) * M_v`` (holes excluded from both energies); per target the energy divisor
    (the activation variance of ``Psi`` in the normalized mode, 1 in the paper's). Also the
    latent preservation the configuration asks for (blending mask and trajectory, identity
    transfer target).

    Args:
        inverted: the inverted image (activations, trajectory, work-size masks).
        geom: the edit's geometry at the work size (:func:`compute_edit`).
        guidance: the configuration; schedule_layers: per step, the up-blocks to guide.
        latent_hw: the latent grid ``(h, w)``.
    """
    edited, m_obj, m_bg, scale, norm, per_res = {}, {}, {}, {}, {}, {}
    for (lay, step), psi in inverted.activations.items():
        hw = tuple(psi.shape[-2:])
        if hw not in per_res:
            per_res[hw] = geom.at_resolution(*hw)
        fe = per_res[hw]
        edited[(lay, step)] = warp(psi.float(), fe.source.to(psi.device).float())
        m_obj[lay] = fe.edited_mask.float().to(psi.device)
        m_bg[lay] = ((1.0 - fe.edited_mask.float()) * fe.valid.float()).to(psi.device)  # M'_b, Sec. 5.1
        norm[(lay, step)] = activation_scale(psi)
        scale[(lay, step)] = norm[(lay, step)] if guidance.mode == "normalized" else 1.0
    plan = GuidePlan(
        layers=schedule_layers, edited=edited, mask_object=m_obj, mask_background=m_bg, scale=scale, norm=norm,
        w_object=guidance.w_object, w_background=guidance.w_background, object_guidance=guidance.object_guidance,
        mode=guidance.mode, grad_steps=guidance.grad_steps, step_size=guidance.step_size,
        relative_step=guidance.relative_step, noise_guidance_scale=guidance.noise_guidance_scale,
    )
    device = inverted.x_T.device
    traj = inverted.trajectory
    k = guidance.resolved_transfer_step(len(schedule_layers))
    if guidance.blend_latents or k is not None:
        if traj is None:
            raise HandlesError("guidance: latent blending and identity transfer need the inversion's trajectory; invert again")
    if guidance.blend_latents:
        hard, _ = edit_region(geom.object_mask, geom.edited_mask, geom.valid)
        plan.blend_mask = latent_region(hard, latent_hw).float().to(device)
        plan.blend_trajectory = [t[None].float() for t in traj.to(device)]
        plan.blend_until = len(schedule_layers)
    if k is not None:
        fe = geom.at_resolution(*latent_hw)
        start = inverted.x_T if k == 0 else traj[k - 1][None]  # the latent step k starts from
        plan.transfer = warp(start.float().to(device), fe.source.float().to(device))
        plan.transfer_mask = (fe.edited_mask.float() > 0.5).float().to(device)
        plan.transfer_step = k
    return plan


class DiffusionHandles:
    """3D object edits with a depth-conditioned diffusion model (the paper's method)."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone

    @classmethod
    def from_pretrained(cls, model: str | Path = DEFAULT_MODEL, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str = torch.float32, local_files_only: bool = False) -> DiffusionHandles:
        """Load the backbone from a hub id, a local diffusers folder, or ``"tinyworld"``."""
        if isinstance(dtype, str):
            if dtype not in _DTYPES:
                raise HandlesError(f"--dtype: expected one of {', '.join(_DTYPES)}, got {dtype!r}")
            dtype = _DTYPES[dtype]
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise HandlesError("--device: cuda was asked for but no CUDA GPU is available; use --device cpu")
        return cls(Backbone.from_pretrained(model, device=device, dtype=dtype, local_files_only=local_files_only))

    # ------------------------------------------------------------------------------------
    def record_plan(self, guidance: GuidanceConfig, num_steps: int) -> dict[int, tuple[int, ...]]:
        """``{step: up-block indices}`` that the guidance schedule will use (Sec. 5.2)."""
        try:
            sched = guidance.schedule(num_steps, self.backbone.num_up_blocks)
        except ValueError as e:
            raise HandlesError(str(e)) from None
        return {i: layers for i, layers in enumerate(sched) if layers}

    def invert(self, image: torch.Tensor, prompt: str, depth: torch.Tensor, mask: torch.Tensor, *,
               inversion: InversionConfig | None = None, guidance: GuidanceConfig | None = None,
               seed: int | None = 0, cache_dir: str | Path | None = None,
               progress: bool = True, callback=None) -> InvertedImage:
        """Invert ``image`` with ``prompt`` and z-depth ``depth`` (Sec. 5, step (i)).

        Args:
            image: ``(1, 3, H, W)`` in [0, 1]; depth: ``(1, 1, H, W)`` z-depth, scene units;
            mask: ``(1, 1, H, W)`` object mask M_o (> 0.5 = object).
            inversion: method and steps; guidance: decides which (layer, step) activations are
                recorded (only those the edit will guide).
            seed: seeds the VAE posterior sample (``None``: posterior mode).
            cache_dir: if given, look up / store the result under ``cache_dir/<input hash>``.
            callback: called with ``{"stage", "step", "total", ...}`` after every step of every
                pass (``ddim_inversion``, then ``null_text`` or ``reconstruction``).
        """
        inversion = inversion or InversionConfig()
        guidance = guidance or GuidanceConfig()
        if not isinstance(prompt, str):
            raise HandlesError(f"prompt: expected text, got {type(prompt).__name__}")
        _check_inputs(image, depth, mask)
        bb = self.backbone
        input_hw = tuple(int(v) for v in image.shape[-2:])
        work = bb.work_size(input_hw)
        image_w = bb.resize_to_work(image.float().clamp(0, 1), work)
        depth_w = bb.resize_to_work(depth.float(), work)
        mask_w = (bb.resize_to_work((mask > 0.5).float(), work, mode="nearest") > 0.5).float()
        plan = self.record_plan(guidance, inversion.num_steps)
        record_dtype = _DTYPES[guidance.record_dtype]
        key = inversion_key(image_w, depth_w, mask_w, prompt, bb.model_id, inversion, plan, bb.dtype, seed,
                            weights_digest=bb.weights_digest)
        if cache_dir is not None:
            inv = _cached(Path(cache_dir) / key, key, bb)
            if inv is not None:
                return inv

        timings: dict[str, float] = {}
        counter = bb.counter
        counter.counts.clear()
        t0 = time.perf_counter()
        gen = None if seed is None else torch.Generator().manual_seed(int(seed))
        z0 = bb.encode_image(image_w, gen)
        text = bb.encode_prompt(prompt)
        empty = bb.encode_prompt("")
        dcond = depth_to_condition(depth_w.to(bb.device), z0.shape[-2:])
        timings["encode"] = time.perf_counter() - t0
        res = run_inversion(bb, z0, text, empty, dcond, inversion, record=plan, record_dtype=record_dtype,
                            progress=progress, callback=callback)
        timings.update(res.timings)  # ddim_inversion, then null_text or reconstruction
        t0 = time.perf_counter()
        recon = bb.decode(res.latent_0)
        timings["decode"] = time.perf_counter() - t0
        evals = {k: dict(v) for k, v in counter.counts.items()}
        inv = InvertedImage(
            model_id=bb.model_id, prompt=prompt, config=inversion, record_plan=plan, input_hw=input_hw,
            image=image_w.to(bb.device), depth=depth_w.to(bb.device), mask=mask_w.to(bb.device),
            x_T=res.x_T, latent_0=z0, text_embedding=text, null_embeddings=res.null_embeddings,
            reconstruction=recon, activations=res.activations, key=key, timings=timings,
            unet_evals=evals, null_losses=res.null_losses, seed=seed,
            trajectory=torch.cat(res.trajectory) if res.trajectory else None, weights_digest=bb.weights_digest,
        )
        problem = inv.problem()
        if problem is not None:
            raise HandlesError(f"inversion: the model produced an unusable result ({problem}); "
                               "try float32 (--dtype) or another seed")
        if cache_dir is not None:
            inv.save(Path(cache_dir) / key)
        return inv

    # ------------------------------------------------------------------------------------
    def edit(self, inverted: InvertedImage, transform: HandleEdit | Similarity, *,
             guidance: GuidanceConfig | None = None, background_depth: torch.Tensor | None = None,
             fov_deg: float = DEFAULT_FOV_DEG, source_image: torch.Tensor | None = None,
             progress: bool = True, callback=None) -> EditOutput:
        """Generate the edited image for a 3D ``transform`` of the object (Sec. 5.1-5.2).

        Args:
            inverted: from :meth:`invert` (same model).
            transform: a :class:`HandleEdit` (about the object's centroid) or a :class:`Similarity`.
            guidance: the guidance schedule, weights, mode and preservation options; must guide
                only recorded (layer, step)s.
            background_depth: ``(1, 1, H, W)`` z-depth of the object-free scene d'_b (e.g. from
                an inpainter + depth estimator); default: a harmonic fill of the object region.
            fov_deg: horizontal field of view (Sec. 5.1: 55 degrees).
            source_image: ``(1, 3, H, W)`` the input at its own size, for the pixel composite
                (default: the work-size image resized back, exact when the sizes agree).
            callback: called with ``{"step", "total", "x", "energies"}`` after each step.
        """
        guidance = guidance or GuidanceConfig()
        bb = self.backbone
        if inverted.model_id != bb.model_id:
            raise HandlesError(f"inverted: was made with model {inverted.model_id!r}, this pipeline runs {bb.model_id!r}; invert again")
        if inverted.weights_digest and inverted.weights_digest != bb.weights_digest:
            raise HandlesError(f"inverted: was made with other weights of model {bb.model_id!r}; invert again")
        problem = inverted.problem()
        if problem is not None:
            raise HandlesError(f"inverted: unusable ({problem}); invert again")
        inverted = inverted.to(bb.device)
        n = inverted.config.num_steps
        try:
            schedule_layers = guidance.schedule(n, bb.num_up_blocks)
        except ValueError as e:
            raise HandlesError(str(e)) from None
        missing = sorted({(lay, i) for i, ls in enumerate(schedule_layers) for lay in ls} - set(inverted.activations))
        if missing:
            raise HandlesError(f"guidance: needs activations (layer, step) {missing[:3]}... that the inversion did not record; invert with the same guidance configuration")
        timings: dict[str, float] = {}
        counter = bb.counter
        counter.counts.clear()

        # 1. geometry of the 3D edit (Sec. 5.1) at the work size
        t0 = time.perf_counter()
        h, w = inverted.depth.shape[-2:]
        camera = Camera(h, w, fov_deg)
        depth = inverted.depth.float()
        geom = compute_edit(depth, inverted.mask, transform, camera)
        if background_depth is None:
            bg = background_depth_fill(depth, inverted.mask)
        else:
            if background_depth.dim() != 4 or background_depth.shape[:2] != (1, 1):
                raise HandlesError(f"background_depth: expected a tensor (1, 1, H, W), got {tuple(background_depth.shape)}")
            bg = bb.resize_to_work(background_depth.float().to(depth.device), (h, w))
        d_edit = edited_depth(geom, bg)  # (1, 1, H, W) z-depth d'
        # 2. guidance targets: Psi' = W[rho(Psi), F] (Eq. 6) and masks per layer resolution
        plan = guidance_targets(inverted, geom, guidance, schedule_layers, tuple(inverted.x_T.shape[-2:]))
        timings["geometry"] = time.perf_counter() - t0

        # 3. guided generation (Eq. 3) conditioned on the edited depth d'
        t0 = time.perf_counter()
        dcond = depth_to_condition(d_edit.to(bb.device), inverted.x_T.shape[-2:])
        den = Denoiser(bb, inverted.text_embedding, inverted.null_embeddings, dcond, bb.schedule(n),
                       inverted.config.guidance_scale)
        with counter.in_stage("edit"):
            res = sample(den, inverted.x_T, plan=plan, progress=progress, desc="guided generation", callback=callback)
        timings["guided_generation"] = time.perf_counter() - t0

        # 4. decode; keep the input's pixels outside the edit region (optional, not in the paper)
        t0 = time.perf_counter()
        image = bb.decode(res.latent)
        if not bool(torch.isfinite(res.latent).all()):
            raise HandlesError("guided generation: the model produced non-finite values (NaN or inf); "
                               "try float32 (--dtype), fewer guidance steps or a smaller transform")

        def back(x: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
            return bb.resize_to_work(x.float().cpu(), inverted.input_hw, mode)

        _, soft = edit_region(geom.object_mask, geom.edited_mask, geom.valid)
        region = back(soft).clamp(0, 1)
        generated = back(image)
        edited = generated
        if guidance.composite:
            src = back(inverted.image) if source_image is None else source_image.float().cpu()
            if tuple(src.shape[-2:]) != tuple(inverted.input_hw):
                raise HandlesError(f"source_image: expected size {inverted.input_hw[1]}x{inverted.input_hw[0]} (W x H), got {src.shape[-1]}x{src.shape[-2]}")
            edited = region * generated + (1.0 - region) * src
        timings["decode"] = time.perf_counter() - t0

        resolved = guidance.to_dict()
        resolved["layers"] = list(guidance.resolved_layers(bb.num_up_blocks))
        resolved["guide_until"] = guidance.resolved_guide_until(n)
        return EditOutput(
            edited=edited, reconstruction=back(inverted.reconstruction),
            preview=back(render_preview(inverted.image.float(), geom)), edited_depth=back(d_edit),
            edited_mask=back(geom.edited_mask), valid_mask=back(geom.valid, "nearest"), region=region,
            generated=generated, timings=timings, unet_evals={k: dict(v) for k, v in counter.counts.items()},
            energies=res.energies, monitor=res.monitor, config=resolved,
        )
