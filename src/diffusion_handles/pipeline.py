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

   The same stages serve three edits the paper does not make: a *camera move*
   (``edit(..., camera=True)``: the whole scene is lifted and moved, the object energy covers
   every valid pixel and there is no background energy), *several objects* in one pass
   (``edit(inverted, [T_1, ...], object_masks=[M_1, ...])``: one z-buffer, one object energy per
   object) and *object removal* (:meth:`DiffusionHandles.remove`: generate over the background
   depth, the input's activations kept outside the removed region).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

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
    MultiEditGeometry,
    Similarity,
    background_depth_fill,
    camera_move,
    camera_move_depth,
    compute_camera_move,
    compute_edit,
    compute_multi_edit,
    edit_region,
    edited_depth,
    hole_region,
    latent_region,
    removal_region,
    render_preview,
    warp,
)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# keep_loaded_models(): the last backbone loaded in this process, and whether to reuse it
_KEEP = contextvars.ContextVar("keep_loaded_models", default=False)
_KEPT: dict = {}


@contextlib.contextmanager
def keep_loaded_models() -> Iterator[None]:
    """Within it, :meth:`DiffusionHandles.from_pretrained` with the arguments of the previous
    load in this process returns a facade over that same backbone instead of loading again.

    For worker processes that run one job after another (a Ray worker runs many tasks, each
    ``handles edit`` or one benchmark case): loading Stable Diffusion 2 depth takes seconds to
    tens of seconds a job. Only the last backbone is kept. Outside the context nothing is
    reused, so separate calls (tests, notebooks) get separate models.
    """
    token = _KEEP.set(True)
    try:
        yield
    finally:
        _KEEP.reset(token)


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
        geom: the edit's geometry at the work size (:func:`compute_edit`; a
            :class:`MultiEditGeometry` gives ``M'_o`` one channel per object, so Eq. 8 is one
            term per object).
        guidance: the configuration; schedule_layers: per step, the up-blocks to guide.
        latent_hw: the latent grid ``(h, w)``.

    A camera move (``geom.whole_scene``, :func:`~diffusion_handles.geometry.compute_camera_move`)
    makes the whole scene the "object": ``M'_o = M_v`` (every valid pixel follows its warped
    activations, Eq. 8) and there is no background (Eq. 9) term.
    """
    camera = geom.whole_scene
    edited, m_obj, m_bg, scale, norm, per_res = {}, {}, {}, {}, {}, {}
    for (lay, step), psi in inverted.activations.items():
        hw = tuple(psi.shape[-2:])
        if hw not in per_res:
            per_res[hw] = geom.at_resolution(*hw)
        fe = per_res[hw]
        edited[(lay, step)] = warp(psi.float(), fe.source.to(psi.device).float())
        if camera:  # every valid pixel is guided by Eq. 8; nothing is "background"
            m_obj[lay] = fe.valid.float().to(psi.device)
            m_bg[lay] = torch.zeros_like(m_obj[lay])
        else:
            per_object = geom.object_masks_at(*hw) if isinstance(geom, MultiEditGeometry) else fe.edited_mask
            m_obj[lay] = per_object.float().to(psi.device)
            m_bg[lay] = ((1.0 - fe.edited_mask.float()) * fe.valid.float()).to(psi.device)  # M'_b, Sec. 5.1
        norm[(lay, step)] = activation_scale(psi)
        scale[(lay, step)] = norm[(lay, step)] if guidance.mode == "normalized" else 1.0
    plan = GuidePlan(
        layers=schedule_layers, edited=edited, mask_object=m_obj, mask_background=m_bg, scale=scale, norm=norm,
        w_object=guidance.w_object, w_background=0.0 if camera else guidance.w_background,
        object_guidance=guidance.object_guidance,
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
        moved = fe.valid if camera else fe.edited_mask  # a camera move transfers the whole valid view
        plan.transfer_mask = (moved.float() > 0.5).float().to(device)
        plan.transfer_step = k
    return plan


def pixel_transfer(bb: Backbone, inverted: InvertedImage, geom, plan: GuidePlan, alpha: float) -> torch.Tensor:
    """The identity-transfer latent with its clean part warped in pixels instead of latents.

    DDIM's latent at the transfer step is ``x_k = sqrt(a_k) x0 + sqrt(1 - a_k) eps`` (Song et al.
    2021, Eq. 12), so warping it in the latent grid (``plan.transfer = W[x_k]``) warps the clean
    image at the grid's resolution (1/8 of the pixels' on SD2, 1/4 on TinyWorld), which smears
    stripes and dots. This replaces that part by the encoding of the input warped in pixels:

        ``W[x_k] + sqrt(a_k) (E(W_px[I]) - W[E(I)])``

    with ``E`` the VAE encoder (mode, the inversion's latent refinement) and the holes of
    ``W_px[I]`` filled with ``D(W[E(I)])``, so they change little (by the round trip's error). An
    identity edit returns ``plan.transfer`` unchanged.

    Args:
        bb: the backbone (its VAE); inverted: the inversion (``image (1, 3, H, W)`` at the work size;
            its ``latent_0`` is ``E(I)`` when it was not a posterior sample, ``seed`` None).
        geom: the edit's geometry at the work size (``source (1, 2, H, W)``, ``valid (1, 1, H, W)``).
        plan: the guide plan with ``plan.transfer (1, c, h, w)`` set.
        alpha: ``alphas_cumprod`` at the transfer step's timestep.

    Returns:
        ``(1, c, h, w)`` float32, the corrected transfer latent.
    """
    device = plan.transfer.device
    steps = inverted.config.encode_refine_steps
    image = inverted.image.float().to(device)
    fe = geom.at_resolution(*plan.transfer.shape[-2:])
    z0 = inverted.latent_0 if inverted.seed is None else bb.encode_image(image, refine_steps=steps)  # E(I), the mode
    warped_z = warp(z0.float().to(device), fe.source.float().to(device))
    warped_px = warp(image, geom.source.float().to(device))
    valid = geom.valid.float().to(device)
    filled = warped_px * valid + bb.decode(warped_z).to(device) * (1.0 - valid)
    z = bb.encode_image(filled, refine_steps=steps).float().to(device)
    return plan.transfer + alpha ** 0.5 * (z - warped_z)


class DiffusionHandles:
    """3D object edits with a depth-conditioned diffusion model (the paper's method)."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self._fill: tuple = (None, None)  # (key of depth and mask, their harmonic fill d'_b): the last one

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
        key = (str(model), str(device), dtype, bool(local_files_only))
        if _KEEP.get() and _KEPT.get("key") == key:
            return cls(_KEPT["backbone"])
        backbone = Backbone.from_pretrained(model, device=device, dtype=dtype, local_files_only=local_files_only)
        if _KEEP.get():
            _KEPT.clear()
            _KEPT.update(key=key, backbone=backbone)
        return cls(backbone)

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
        if inversion.encode_refine_steps is None:  # the model's own, resolved before the cache key
            inversion = dataclasses.replace(inversion, encode_refine_steps=self.backbone.encode_refine_steps)
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
        digest = bb.weights_digest if cache_dir is not None else ""  # hashing every weight costs seconds on SD2
        key = inversion_key(image_w, depth_w, mask_w, prompt, bb.model_id, inversion, plan, bb.dtype, seed,
                            weights_digest=digest)
        if cache_dir is not None:
            inv = _cached(Path(cache_dir) / key, key, bb)
            if inv is not None:
                return inv

        timings: dict[str, float] = {}
        counter = bb.counter
        counter.counts.clear()
        t0 = time.perf_counter()
        gen = None if seed is None else torch.Generator().manual_seed(int(seed))
        z0 = bb.encode_image(image_w, gen, refine_steps=inversion.encode_refine_steps)
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
            trajectory=torch.cat(res.trajectory) if res.trajectory else None, weights_digest=digest,
        )
        problem = inv.problem()
        if problem is not None:
            raise HandlesError(f"inversion: the model produced an unusable result ({problem}); "
                               "try float32 (--dtype) or another seed")
        inv.verified = True
        if cache_dir is not None:
            inv.save(Path(cache_dir) / key)
        return inv

    # ------------------------------------------------------------------------------------
    def _check_inverted(self, inverted: InvertedImage, guidance: GuidanceConfig):
        """Refuse an inversion of another model or an unusable one; the guidance schedule."""
        bb = self.backbone
        if inverted.model_id != bb.model_id:
            raise HandlesError(f"inverted: was made with model {inverted.model_id!r}, this pipeline runs {bb.model_id!r}; invert again")
        if inverted.weights_digest and inverted.weights_digest != bb.weights_digest:
            raise HandlesError(f"inverted: was made with other weights of model {bb.model_id!r}; invert again")
        problem = None if inverted.verified else inverted.problem()
        if problem is not None:
            raise HandlesError(f"inverted: unusable ({problem}); invert again")
        n = inverted.config.num_steps
        try:
            schedule_layers = guidance.schedule(n, bb.num_up_blocks)
        except ValueError as e:
            raise HandlesError(str(e)) from None
        missing = sorted({(lay, i) for i, ls in enumerate(schedule_layers) for lay in ls} - set(inverted.activations))
        if missing:
            raise HandlesError(f"guidance: needs activations (layer, step) {missing[:3]}... that the inversion did not record; invert with the same guidance configuration")
        return schedule_layers

    def _background(self, background_depth: torch.Tensor | None, depth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """d'_b at the work size: the given one resized, or the harmonic fill of ``mask``."""
        if background_depth is None:
            key = (tuple(depth.shape), hash(depth.detach().cpu().numpy().tobytes()),
                   hash(mask.detach().cpu().numpy().tobytes()))
            if self._fill[0] != key:  # one Poisson solve per (depth, mask), not per frame
                self._fill = (key, background_depth_fill(depth, mask))
            return self._fill[1]
        if not isinstance(background_depth, torch.Tensor) or background_depth.dim() != 4 or background_depth.shape[:2] != (1, 1):
            raise HandlesError(f"background_depth: expected a tensor (1, 1, H, W), got {getattr(background_depth, 'shape', type(background_depth))}")
        return self.backbone.resize_to_work(background_depth.float().to(depth.device), tuple(depth.shape[-2:]))

    def _work_masks(self, inverted: InvertedImage, masks) -> list[torch.Tensor]:
        """Per-object masks at the input size -> work size (nearest), validated."""
        if isinstance(masks, torch.Tensor):
            masks = [masks]
        out = []
        for k, m in enumerate(masks):
            if not isinstance(m, torch.Tensor) or m.dim() != 4 or m.shape[:2] != (1, 1):
                raise HandlesError(f"object_masks[{k}]: expected a tensor (1, 1, H, W), got {getattr(m, 'shape', type(m))}")
            if tuple(m.shape[-2:]) != tuple(inverted.input_hw):
                raise HandlesError(f"object_masks[{k}]: expected size {inverted.input_hw[1]}x{inverted.input_hw[0]} "
                                   f"(W x H, the inverted image's), got {m.shape[-1]}x{m.shape[-2]}")
            work = tuple(inverted.depth.shape[-2:])
            mw = (self.backbone.resize_to_work((m > 0.5).float(), work, mode="nearest") > 0.5).float()
            out.append(mw.to(inverted.depth.device))
        return out

    # ------------------------------------------------------------------------------------
    def edit(self, inverted: InvertedImage, transform: HandleEdit | Similarity | Sequence[HandleEdit | Similarity], *,
             guidance: GuidanceConfig | None = None, background_depth: torch.Tensor | None = None,
             fov_deg: float = DEFAULT_FOV_DEG, source_image: torch.Tensor | None = None,
             camera: bool = False, object_masks: Sequence[torch.Tensor] | None = None,
             progress: bool = True, callback=None) -> EditOutput:
        """Generate the edited image for a 3D ``transform`` of the object (Sec. 5.1-5.2).

        Three kinds of edit share the stages:

        * one object (the paper): ``transform`` moves the inversion's masked object;
        * a camera move (``camera=True``): ``transform`` moves the *camera* (a
          :class:`HandleEdit`: translation in camera axes, rotation about the camera centre;
          a :class:`Similarity` is taken as the scene transform itself, see
          :func:`~diffusion_handles.geometry.camera_move`). Every scene point moves, the
          disocclusions are generated, Eq. 8 covers every valid pixel and Eq. 9 is off. Invert
          with an all-ones mask. The edited depth is the moved z-buffer with holes filled. The
          composite (if on) keeps the input warped to the new view outside the grown holes
          (:func:`~diffusion_handles.geometry.region.hole_region`);
        * several objects (``object_masks``, one ``(1, 1, H, W)`` mask per entry of the list
          ``transform``, at the input size): one z-buffer across the moved objects
          (:func:`~diffusion_handles.geometry.compute_multi_edit`), one Eq. 8 term per object,
          Eq. 9 outside all of them. Invert with the union of the masks.

        Args:
            inverted: from :meth:`invert` (same model).
            transform: a :class:`HandleEdit` (about the object's centroid) or a :class:`Similarity`;
                a list of them with ``object_masks``.
            guidance: the guidance schedule, weights, mode and preservation options; must guide
                only recorded (layer, step)s.
            background_depth: ``(1, 1, H, W)`` z-depth of the object-free scene d'_b (e.g. from
                an inpainter + depth estimator); default: a harmonic fill of the object region
                (of all objects' regions with ``object_masks``; unused by a camera move).
            fov_deg: horizontal field of view (Sec. 5.1: 55 degrees).
            source_image: ``(1, 3, H, W)`` the input at its own size, for the pixel composite
                (default: the work-size image resized back, exact when the sizes agree).
            camera: move the camera instead of an object (see above).
            object_masks: per-object masks for a several-object edit (see above).
            callback: called with ``{"step", "total", "x", "energies"}`` after each step.
        """
        guidance = guidance or GuidanceConfig()
        if camera and object_masks is not None:
            raise HandlesError("camera: expected either a camera move or object_masks, got both")
        multi = object_masks is not None
        if multi:
            transforms = list(transform) if isinstance(transform, (list, tuple)) else None
            if transforms is None or not all(isinstance(t, (HandleEdit, Similarity)) for t in transforms):
                raise HandlesError("transform: expected a list of HandleEdit or Similarity (one per object mask), "
                                   f"got {type(transform).__name__}")
        elif not isinstance(transform, (HandleEdit, Similarity)):
            raise HandlesError(f"transform: expected a HandleEdit or Similarity, got {type(transform).__name__} "
                               "(several objects need object_masks)")
        schedule_layers = self._check_inverted(inverted, guidance)
        inverted = inverted.to(self.backbone.device)
        timings: dict[str, float] = {}
        self.backbone.counter.counts.clear()

        # 1. geometry of the 3D edit (Sec. 5.1) at the work size, and the edited depth d'
        t0 = time.perf_counter()
        h, w = inverted.depth.shape[-2:]
        cam = Camera(h, w, fov_deg)
        depth = inverted.depth.float()
        if camera:
            scene_move = camera_move(transform) if isinstance(transform, HandleEdit) else transform
            geom = compute_camera_move(depth, scene_move, cam)
            d_edit = camera_move_depth(geom)  # the moved z-buffer, disocclusions filled
        elif multi:
            masks_w = self._work_masks(inverted, object_masks)
            geom = compute_multi_edit(depth, masks_w, transforms, cam)
            d_edit = edited_depth(geom, self._background(background_depth, depth, geom.object_mask))
        else:
            geom = compute_edit(depth, inverted.mask, transform, cam, complete_back=guidance.complete_back)
            d_edit = edited_depth(geom, self._background(background_depth, depth, inverted.mask))  # (1, 1, H, W)
        # 2. guidance targets: Psi' = W[rho(Psi), F] (Eq. 6) and masks per layer resolution
        plan = guidance_targets(inverted, geom, guidance, schedule_layers, tuple(inverted.x_T.shape[-2:]))
        if plan.transfer is not None and guidance.transfer_source == "pixels":
            alpha = self.backbone.schedule(inverted.config.num_steps).alpha[plan.transfer_step]
            plan.transfer = pixel_transfer(self.backbone, inverted, geom, plan, alpha)
        keep_image = None
        if camera:  # the composite keeps the input *warped to the new view* outside the grown holes
            _, soft = hole_region(geom.valid)
            src = inverted.image.float() if source_image is None else source_image.float().to(depth.device)
            if tuple(src.shape[-2:]) != (h, w):
                src = self.backbone.resize_to_work(src, (h, w))
            keep_image = warp(src, geom.source.float())
        else:
            _, soft = edit_region(geom.object_mask, geom.edited_mask, geom.valid)
        timings["geometry"] = time.perf_counter() - t0

        # 3-4. guided generation conditioned on d', decoding, composite
        out, back = self._generate(inverted, plan, d_edit, soft, guidance, source_image, timings, progress, callback,
                                   desc="guided generation", keep_work=keep_image)
        out.preview = back(render_preview(inverted.image.float(), geom))
        out.edited_mask = back(geom.edited_mask)
        out.valid_mask = back(geom.valid, "nearest")
        return out

    # ------------------------------------------------------------------------------------
    def remove(self, inverted: InvertedImage, *, guidance: GuidanceConfig | None = None,
               background_depth: torch.Tensor | None = None, region_margin: int | None = None,
               fresh_noise: bool = True, seed: int = 0, source_image: torch.Tensor | None = None,
               progress: bool = True, callback=None) -> EditOutput:
        """Remove the inversion's masked object and regenerate its region over the background.

        Not in the paper; built from its parts. Stages: (1) the region: the object mask grown
        generously and extended downwards for its shadow
        (:func:`~diffusion_handles.geometry.removal_region`); the edited depth d' is the
        background depth d'_b (the object is gone, Sec. 5.1's d'_b); (2) guidance targets with
        the identity flow outside the region: ``Psi' = Psi`` there, the local Eq. 8 term and
        the Eq. 9 term over the kept pixels, nothing guided inside (the model fills it from
        d' and the prompt); (3) generation conditioned on d', from the inverted noise with the
        region's latent cells replaced by fresh noise (``fresh_noise``: the inverted noise
        there still encodes the object); (4) decode and composite the input outside the region.

        Invert with the prompt describing the scene *without* the object (it conditions the
        generation) and with the object's mask.

        Args:
            inverted: from :meth:`invert` with the object's mask.
            guidance: schedule and weights (identity transfer is not used: there is nothing to
                transfer); background_depth: d'_b ``(1, 1, H, W)`` at the input size (default:
                the harmonic fill of the region under the object).
            region_margin: the region's margin in work-size pixels (default in
                :func:`~diffusion_handles.geometry.removal_region`).
            fresh_noise, seed: replace the region's inverted noise by Gaussian noise of ``seed``.
            source_image: the input at its own size for the composite.

        Returns:
            :class:`EditOutput`; ``edited_mask`` is empty (no object), ``valid_mask`` is 0 in the
            region, ``region`` the soft regenerated region, ``preview`` the input with the
            region magenta.
        """
        guidance = guidance or GuidanceConfig()
        schedule_layers = self._check_inverted(inverted, guidance)
        inverted = inverted.to(self.backbone.device)
        timings: dict[str, float] = {}
        self.backbone.counter.counts.clear()

        # 1. the region and the edited depth d' = d'_b
        t0 = time.perf_counter()
        depth = inverted.depth.float()
        hard, soft = removal_region(inverted.mask, region_margin)
        d_edit = self._background(background_depth, depth, inverted.mask)
        keep = 1.0 - hard  # (1, 1, H, W) pixels kept from the input
        # 2. guidance targets: identity flow outside the region (Psi' = Psi)
        edited, m_obj, m_bg, scale, norm = {}, {}, {}, {}, {}
        per_res: dict[tuple[int, int], torch.Tensor] = {}
        for (lay, step), psi in inverted.activations.items():
            hw = tuple(psi.shape[-2:])
            if hw not in per_res:  # a feature cell is kept only when none of its pixels is in the region
                per_res[hw] = (1.0 - F.adaptive_max_pool2d(hard.float(), hw)).to(psi.device)
            edited[(lay, step)] = psi.float()
            m_obj[lay] = per_res[hw]
            m_bg[lay] = per_res[hw]
            norm[(lay, step)] = activation_scale(psi)
            scale[(lay, step)] = norm[(lay, step)] if guidance.mode == "normalized" else 1.0
        plan = GuidePlan(
            layers=schedule_layers, edited=edited, mask_object=m_obj, mask_background=m_bg, scale=scale, norm=norm,
            w_object=guidance.w_object, w_background=guidance.w_background, object_guidance="local",
            mode=guidance.mode, grad_steps=guidance.grad_steps, step_size=guidance.step_size,
            relative_step=guidance.relative_step, noise_guidance_scale=guidance.noise_guidance_scale,
        )
        latent_hw = tuple(inverted.x_T.shape[-2:])
        cells = latent_region(hard, latent_hw).float().to(inverted.x_T.device)  # (1, 1, h, w)
        if guidance.blend_latents:
            if inverted.trajectory is None:
                raise HandlesError("guidance: latent blending needs the inversion's trajectory; invert again")
            plan.blend_mask = cells
            plan.blend_trajectory = [t[None].float() for t in inverted.trajectory.to(inverted.x_T.device)]
            plan.blend_until = len(schedule_layers)
        x_T = inverted.x_T
        if fresh_noise:
            gen = torch.Generator().manual_seed(int(seed))
            noise = torch.randn(tuple(x_T.shape), generator=gen).to(x_T.device, x_T.dtype)
            x_T = cells.to(x_T.dtype) * noise + (1.0 - cells.to(x_T.dtype)) * x_T
        timings["geometry"] = time.perf_counter() - t0

        # 3-4. generation conditioned on d', decoding, composite
        out, back = self._generate(inverted, plan, d_edit, soft, guidance, source_image, timings, progress, callback,
                                   desc="removal", x_T=x_T)
        image = inverted.image.float()
        magenta = torch.tensor([1.0, 0.0, 1.0], device=image.device).view(1, 3, 1, 1)
        out.preview = back(image * keep.to(image.device) + magenta * hard.to(image.device))
        out.edited_mask = back(torch.zeros_like(depth))
        out.valid_mask = back(keep, "nearest")
        return out

    # ------------------------------------------------------------------------------------
    def _generate(self, inverted: InvertedImage, plan: GuidePlan, d_edit: torch.Tensor, soft: torch.Tensor,
                  guidance: GuidanceConfig, source_image, timings: dict, progress: bool, callback, *,
                  desc: str, x_T: torch.Tensor | None = None,
                  keep_work: torch.Tensor | None = None) -> tuple[EditOutput, object]:
        """Stages 3-4 of every edit: guided generation (Eq. 3) conditioned on ``d_edit``, then
        decoding and the optional composite with the soft region ``soft`` (work size): outside
        it the input (``source_image``), or ``keep_work`` (a work-size image) when given.

        Returns ``(output, back)``: the output (``preview``, ``edited_mask``, ``valid_mask`` for
        the caller to fill in) and the resize from the work size back to the input size."""
        bb = self.backbone
        counter = bb.counter
        n = inverted.config.num_steps
        x_T = inverted.x_T if x_T is None else x_T
        # 3. guided generation (Eq. 3) conditioned on the edited depth d'
        t0 = time.perf_counter()
        dcond = depth_to_condition(d_edit.to(bb.device), inverted.x_T.shape[-2:])
        den = Denoiser(bb, inverted.text_embedding, inverted.null_embeddings, dcond, bb.schedule(n),
                       inverted.config.guidance_scale)
        with counter.in_stage("edit"):
            res = sample(den, x_T, plan=plan, progress=progress, desc=desc, callback=callback)
        timings["guided_generation"] = time.perf_counter() - t0

        # 4. decode; keep the input's pixels outside the edit region (optional, not in the paper)
        t0 = time.perf_counter()
        if not bool(torch.isfinite(res.latent).all()):
            raise HandlesError("guided generation: the model produced non-finite values (NaN or inf); "
                               "try float32 (--dtype), fewer guidance steps or a smaller transform")
        image = bb.decode(res.latent)

        def back(x: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
            return bb.resize_to_work(x.float().cpu(), inverted.input_hw, mode)

        region = back(soft).clamp(0, 1)
        generated = back(image)
        edited = generated
        if guidance.composite:
            if keep_work is not None:  # a work-size image to keep (a camera move's warped input)
                src = back(keep_work)
            else:
                src = back(inverted.image) if source_image is None else source_image.float().cpu()
            if tuple(src.shape[-2:]) != tuple(inverted.input_hw):
                raise HandlesError(f"source_image: expected size {inverted.input_hw[1]}x{inverted.input_hw[0]} (W x H), got {src.shape[-1]}x{src.shape[-2]}")
            edited = region * generated + (1.0 - region) * src
        timings["decode"] = time.perf_counter() - t0

        resolved = guidance.to_dict()
        resolved["layers"] = list(guidance.resolved_layers(bb.num_up_blocks))
        resolved["guide_until"] = guidance.resolved_guide_until(n)
        result = EditOutput(
            edited=edited, reconstruction=back(inverted.reconstruction), preview=edited, edited_depth=back(d_edit),
            edited_mask=region, valid_mask=region, region=region, generated=generated, timings=timings,
            unet_evals={k: dict(v) for k, v in counter.counts.items()}, energies=res.energies, monitor=res.monitor,
            config=resolved,
        )
        return result, back
