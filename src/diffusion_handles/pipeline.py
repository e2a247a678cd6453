"""The facade: ``DiffusionHandles.from_pretrained(model).invert(...)`` once, ``.edit(...)`` many times.

As in Fig. 2 of the paper:

1. :meth:`DiffusionHandles.invert` (Sec. 5, step (i)): encode the image, DDIM-invert it with the
   depth condition, (null-text) optimise, record the guided activations ``Psi_{i,t}`` on the
   reconstruction pass. The result is an :class:`~diffusion_handles.diffusion.inverted.InvertedImage`,
   optionally cached on disk by a hash of its inputs (``cache_dir``).
2. :meth:`DiffusionHandles.edit` and :meth:`DiffusionHandles.remove` (Sec. 5.1-5.2): the five stages
   of :mod:`diffusion_handles.stages`, the same for every edit kind: ``prepare`` -> ``geometry``
   (flow, edited depth ``d'``) -> ``targets`` (``Psi' = W[rho(Psi), F]``, Eq. 6, the masks of
   Eqs. 8-9) -> ``sample`` (Eq. 3 conditioned on ``d'``) -> ``finish`` (decode, composite).

Edit kinds the paper does not make share those stages: a camera move (``edit(inv, CameraMove(T))``:
the whole scene is lifted and moved, the object energy covers every valid pixel and there is no
background energy), several objects in one pass (``edit(inv, [ObjectMove(M_1, T_1), ...])``: one
z-buffer, one object energy per object) and object removal (:meth:`DiffusionHandles.remove`:
generate over the background depth, the input's activations kept outside the removed region).

Progress bars are a setting of the facade, as in diffusers (:meth:`set_progress_bar_config`);
``callback`` receives every step.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from diffusion_handles.diffusion.backbone import DEFAULT_MODEL, Backbone
from diffusion_handles.diffusion.conditioning import depth_to_condition
from diffusion_handles.diffusion.config import GuidanceConfig, InversionConfig
from diffusion_handles.diffusion.inversion import Conditions
from diffusion_handles.diffusion.inversion import invert as run_inversion
from diffusion_handles.diffusion.inverted import CacheEntryError, InvertedImage, inversion_key
from diffusion_handles.diffusion.sampler import Record
from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry import DEFAULT_FOV_DEG, HandleEdit, Similarity
from diffusion_handles.stages import (
    CameraMove,
    EditOutput,
    EditRequest,
    ObjectMove,
    edit_target,
    effects,
    finish,
    geometry,
    guidance_targets,
    pixel_transfer,
    prepare,
    request_for_edit,
    request_for_removal,
    sample,
    targets,
)

__all__ = ["CameraMove", "DiffusionHandles", "EditOutput", "ObjectMove", "edit_target", "guidance_targets",
           "keep_loaded_models", "pixel_transfer"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
Callback = Callable[[dict], None]

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


def _window_inputs(box, input_hw, image, depth, mask) -> tuple:
    """``(image, depth, mask)`` cropped to ``box`` (``InversionConfig.window``), checked."""
    from diffusion_handles.geometry.window import crop

    x0, y0, x1, y1 = box
    h, w = input_hw
    if not (x1 <= w and y1 <= h):
        raise HandlesError(f"inversion.window: expected a box inside the {w}x{h} image, got {list(box)}")
    cropped = tuple(crop(t, box) for t in (image, depth, mask))
    if not bool((cropped[2] > 0.5).any()):
        raise HandlesError(f"inversion.window: expected a box holding the object, got {list(box)}, which misses the mask")
    return cropped


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


@contextlib.contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[stage] = time.perf_counter() - t0


# The keyword inputs of DiffusionHandles.edit at the photo's own size (``**photo``).
PHOTO_INPUTS = ("background_depth", "source_image", "source_depth", "source_mask")

class DiffusionHandles:
    """3D object edits with a depth-conditioned diffusion model (the paper's method).

    Attributes:
        backbone: the depth-conditioned model.
        cache_dir: if set, :meth:`invert` looks up and stores inversions under ``cache_dir/<key>``.
        progress: show progress bars (:meth:`set_progress_bar_config`).
    """

    def __init__(self, backbone: Backbone, *, cache_dir: str | Path | None = None) -> None:
        self.backbone = backbone
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.progress = True

    @classmethod
    def from_pretrained(cls, model: str | Path = DEFAULT_MODEL, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str = torch.float32, local_files_only: bool = False,
                        cache_dir: str | Path | None = None) -> DiffusionHandles:
        """Load the backbone from a hub id, a local diffusers folder, or ``"tinyworld"``;
        ``cache_dir``: the inversion cache (see the class)."""
        if isinstance(dtype, str):
            if dtype not in _DTYPES:
                raise HandlesError(f"--dtype: expected one of {', '.join(_DTYPES)}, got {dtype!r}")
            dtype = _DTYPES[dtype]
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise HandlesError("--device: cuda was asked for but no CUDA GPU is available; use --device cpu")
        key = (str(model), str(device), dtype, bool(local_files_only))
        if _KEEP.get() and _KEPT.get("key") == key:
            return cls(_KEPT["backbone"], cache_dir=cache_dir)
        backbone = Backbone.from_pretrained(model, device=device, dtype=dtype, local_files_only=local_files_only)
        if _KEEP.get():
            _KEPT.clear()
            _KEPT.update(key=key, backbone=backbone)
        return cls(backbone, cache_dir=cache_dir)

    def set_progress_bar_config(self, *, disable: bool = False) -> DiffusionHandles:
        """Show (default) or hide the progress bars of :meth:`invert`, :meth:`edit` and
        :meth:`remove` (diffusers' name for the same switch). Returns ``self``."""
        self.progress = not disable
        return self

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
               seed: int | None = 0, callback: Callback | None = None) -> InvertedImage:
        """Invert ``image`` with ``prompt`` and z-depth ``depth`` (Sec. 5, step (i)).

        Args:
            image: ``(1, 3, H, W)`` in [0, 1]; depth: ``(1, 1, H, W)`` z-depth, scene units;
            mask: ``(1, 1, H, W)`` object mask M_o (> 0.5 = object). Any size: the model works
                at :meth:`~diffusion_handles.diffusion.backbone.Backbone.model_size` (the longer
                side at most its native size) and every edit comes back at ``H x W``.
            inversion: method and steps; guidance: decides which (layer, step) activations are
                recorded (only those the edit will guide).
            seed: seeds the VAE posterior sample (``None``: posterior mode).
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
        context = None
        if inversion.window is not None:
            context = bb.resize_to_work(depth.float(), bb.model_size(input_hw))
            image, depth, mask = _window_inputs(inversion.window, input_hw, image, depth, mask)
        work = bb.model_size(tuple(image.shape[-2:]), upscale=inversion.window is not None)
        inputs = (bb.resize_to_work(image.float().clamp(0, 1), work), bb.resize_to_work(depth.float(), work),
                  (bb.resize_to_work((mask > 0.5).float(), work, mode="nearest") > 0.5).float())
        plan = self.record_plan(guidance, inversion.num_steps)
        digest = bb.weights_digest if self.cache_dir is not None else ""  # hashing every weight costs seconds on SD2
        key = inversion_key(inputs, prompt, inversion, plan, seed=seed,
                            model={"model": bb.model_id, "dtype": str(bb.dtype), "weights": digest})
        if self.cache_dir is not None:
            inv = _cached(self.cache_dir / key, key, bb)
            if inv is not None:
                return inv
        record = Record(plan, _DTYPES[guidance.record_dtype])
        inv = self._invert(inputs, prompt, inversion, record, seed, callback)
        inv.input_hw, inv.key, inv.weights_digest = input_hw, key, digest
        inv.context_depth = None if context is None else context.to(bb.device)
        problem = inv.problem()
        if problem is not None:
            raise HandlesError(f"inversion: the model produced an unusable result ({problem}); "
                               "try float32 (--dtype) or another seed")
        inv.verified = True
        if self.cache_dir is not None:
            inv.save(self.cache_dir / key)
        return inv

    def _invert(self, inputs: tuple, prompt: str, inversion: InversionConfig, record: Record,
                seed: int | None, callback: Callback | None) -> InvertedImage:
        """Encode, invert and reconstruct the work-size ``(image, depth, mask)``, keeping the
        ``record`` activations."""
        bb = self.backbone
        image_w, depth_w, mask_w = inputs
        bb.counter.counts.clear()
        timings: dict[str, float] = {}
        with _timed(timings, "encode"):
            gen = None if seed is None else torch.Generator().manual_seed(int(seed))
            z0 = bb.encode_image(image_w, gen, refine_steps=inversion.encode_refine_steps)
            cond = Conditions(bb.encode_prompt(prompt), bb.encode_prompt(""),
                              depth_to_condition(depth_w.to(bb.device), z0.shape[-2:]))
        res = run_inversion(bb, z0, cond, inversion, record=record, progress=self.progress, callback=callback)
        timings.update(res.timings)  # ddim_inversion, then null_text or reconstruction
        with _timed(timings, "decode"):
            recon = bb.decode(res.latent_0)
        return InvertedImage(
            model_id=bb.model_id, prompt=prompt, config=inversion, record_plan=dict(record.layers),
            input_hw=tuple(image_w.shape[-2:]), image=image_w.to(bb.device), depth=depth_w.to(bb.device),
            mask=mask_w.to(bb.device), x_T=res.x_T, latent_0=z0, text_embedding=cond.text,
            null_embeddings=res.null_embeddings, reconstruction=recon, activations=res.activations, key="",
            timings=timings, unet_evals={k: dict(v) for k, v in bb.counter.counts.items()},
            null_losses=res.null_losses, seed=seed,
            trajectory=torch.cat(res.trajectory) if res.trajectory else None, weights_digest="",
        )

    def edit_window(self, depth: torch.Tensor, mask: torch.Tensor,
                    *targets: HandleEdit | Similarity | CameraMove | Sequence[ObjectMove],
                    fov_deg: float = DEFAULT_FOV_DEG, margin: float | None = None) -> tuple[int, int, int, int] | None:
        """The edit window (``InversionConfig.window``) for the edits ``targets`` of one inversion
        (one edit, each frame of a trajectory, or none for a removal): a square around every
        object where it is and where each edit takes it, with a margin for its shadow, or ``None``
        (the whole photo) when the photo is no larger than the model's native size, for a camera
        move, or when the square would cover most of the photo
        (:func:`diffusion_handles.geometry.window.choose_window`).

        Args:
            depth: ``(1, 1, H, W)`` z-depth; mask: ``(1, 1, H, W)`` the object (for several
                objects each :class:`ObjectMove` has its own); targets: as :meth:`edit` takes them.
            margin: the window's margin around the edit's box, a fraction of the box's longer
                side (``None``: :data:`~diffusion_handles.geometry.window.WINDOW_MARGIN`).
        """
        from diffusion_handles.geometry import Camera
        from diffusion_handles.geometry.window import WINDOW_MARGIN, choose_window, edit_boxes

        h, w = (int(v) for v in depth.shape[-2:])
        if any(isinstance(t, CameraMove) for t in targets) or max(h, w) <= self.backbone.default_size:
            return None
        camera, boxes = Camera(h, w, fov_deg), []
        for t in targets or (HandleEdit(),):  # a removal: the object where it is
            masks, edits = ([mask], [t]) if isinstance(t, (HandleEdit, Similarity)) else \
                ([m.mask for m in t], [m.transform for m in t])
            boxes += edit_boxes(depth.float(), masks, edits, camera)
        return choose_window((h, w), boxes, WINDOW_MARGIN if margin is None else margin)

    # ------------------------------------------------------------------------------------
    def edit(self, inverted: InvertedImage, transform: HandleEdit | Similarity | CameraMove | Sequence[ObjectMove], *,
             guidance: GuidanceConfig | None = None, fov_deg: float = DEFAULT_FOV_DEG,
             callback: Callback | None = None, restyle: str | None = None, restyle_words: str | None = None,
             **photo: torch.Tensor | None) -> EditOutput:
        """Generate the edited image for a 3D ``transform`` (Sec. 5.1-5.2).

        ``transform`` says the kind of edit:

        * a :class:`HandleEdit` (about the object's centroid) or :class:`Similarity`: the
          inversion's masked object moves (the paper);
        * :class:`CameraMove` ``(T)``: the *camera* moves (a :class:`HandleEdit`: translation in
          camera axes, rotation about the camera centre; a :class:`Similarity` is the scene
          transform itself). Every scene point moves, the disocclusions are generated, Eq. 8 covers
          every valid pixel and Eq. 9 is off. Invert with an all-ones mask. The composite (if on)
          keeps the input warped to the new view outside the grown holes;
        * a list of :class:`ObjectMove` ``(mask, T)`` (masks ``(1, 1, H, W)`` at the input size):
          several objects in one z-buffer, one Eq. 8 term per object, Eq. 9 outside all of them.
          Invert with the union of the masks.

        Args:
            inverted: from :meth:`invert` (same model).
            transform: see above.
            guidance: the guidance schedule, weights, mode and preservation options; must guide
                only recorded (layer, step)s.
            fov_deg: horizontal field of view (Sec. 5.1: 55 degrees).
            photo: the inputs at the photo's own size, by keyword (:data:`PHOTO_INPUTS`), each
                optional:
                background_depth: ``(1, 1, H, W)`` z-depth of the object-free scene d'_b (e.g. from
                    an inpainter + depth estimator); default: a harmonic fill of the object region
                    (of all objects' regions for several; unused by a camera move).
                source_image: ``(1, 3, H, W)`` the input at its own size, for the pixel composite
                    (default: the work-size image resized back, exact when the sizes agree).
                source_depth, source_mask: ``(1, 1, H, W)`` the z-depth and (one object) the object's
                    mask at the input's own size, as given to :meth:`invert`. With them an object edit's
                    detail-preserving finish warps ``source_image`` by the 3D flow computed at the
                    input's resolution (the same resolved transform) instead of the work-size flow
                    interpolated, so the moved object's silhouette and its holes are as sharp as the
                    photo when it is larger than the model's size (without them the silhouette
                    is stepped at the work grid). Unused by a camera move.
            callback: called with ``{"step", "total", "x", "energies"}`` after each step.
            restyle: one object only: its new description (e.g. ``"a red striped sphere"``); the
                generation's prompt is the inversion's with the object's words replaced
                (:func:`~diffusion_handles.diffusion.prompts.restyle_prompt`; the null-text or
                negative embeddings stay) and the object takes the new look while it moves: the
                guidance carries its shape, pose and shading, not its old colour, and the finish
                does not paste its old pixels (``EditOutput.prompt`` is the prompt used). Refused
                for a camera move, several objects and a removal.
            restyle_words: the words of the inversion's prompt that name the object (default:
                its one object phrase, the part before " on "; required when it names several).
        """
        unknown = sorted(set(photo) - set(PHOTO_INPUTS))
        if unknown:
            raise HandlesError(f"{unknown[0]}: expected a keyword of DiffusionHandles.edit (the photo's inputs: "
                               f"{', '.join(PHOTO_INPUTS)}), got an unknown one")
        request = request_for_edit(transform, fov_deg=fov_deg, restyle=restyle, restyle_words=restyle_words, **photo)
        return self._run(inverted, request, guidance or GuidanceConfig(), callback)

    def remove(self, inverted: InvertedImage, *, guidance: GuidanceConfig | None = None,
               background_depth: torch.Tensor | None = None, region_margin: int | None = None,
               noise_seed: int | None = 0, source_image: torch.Tensor | None = None,
               callback: Callback | None = None) -> EditOutput:
        """Remove the inversion's masked object and regenerate its region over the background.

        Not in the paper; built from its parts, through the same stages as :meth:`edit`: the region
        is the object mask grown generously and extended downwards for its shadow
        (:func:`~diffusion_handles.geometry.removal_region`); the edited depth d' is the background
        depth d'_b; the guidance follows the identity flow outside the region (``Psi' = Psi``,
        nothing guided inside: the model fills it from d' and the prompt); the generation starts
        from the inverted noise with the region's latent cells re-drawn; the input is kept outside
        the region.

        Invert with the prompt describing the scene *without* the object (it conditions the
        generation) and with the object's mask.

        Args:
            inverted: from :meth:`invert` with the object's mask.
            guidance: schedule and weights (identity transfer is not used: there is nothing to
                transfer); background_depth: d'_b ``(1, 1, H, W)`` at the input size (default:
                the harmonic fill of the region under the object).
            region_margin: the region's margin in work-size pixels (default in
                :func:`~diffusion_handles.geometry.removal_region`).
            noise_seed: seed of the Gaussian noise that replaces the region's inverted noise
                (``None``: keep the inverted noise, which still encodes the object).
            source_image: the input at its own size for the composite.

        Returns:
            :class:`EditOutput`; ``edited_mask`` is empty (no object), ``valid_mask`` is 0 in the
            region, ``region`` the soft regenerated region, ``preview`` the input with the
            region magenta.
        """
        request = request_for_removal(background_depth=background_depth, region_margin=region_margin,
                                      noise_seed=noise_seed, source_image=source_image)
        return self._run(inverted, request, guidance or GuidanceConfig(), callback)

    def _run(self, inverted: InvertedImage, request: EditRequest, guidance: GuidanceConfig,
             callback: Callback | None) -> EditOutput:
        """The five stages of :mod:`diffusion_handles.stages`, timed one by one."""
        bb = self.backbone
        bb.counter.counts.clear()
        timings: dict[str, float] = {}
        with _timed(timings, "prepare"):
            prep = prepare(bb, inverted, request, guidance)
        with _timed(timings, "geometry"):
            geo = geometry(prep, guidance)
        with _timed(timings, "effects"):
            geo = effects(prep, geo, guidance)
        with _timed(timings, "targets"):
            tg = targets(bb, prep, geo, guidance)
        with _timed(timings, "sample"):
            sampled = sample(bb, prep, geo, tg, progress=self.progress, callback=callback)
        with _timed(timings, "finish"):
            out = finish(bb, prep, geo, sampled, guidance)
        out.timings = timings
        return out
