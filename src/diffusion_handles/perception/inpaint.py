"""Object removal and the background depth d'_b (Sec. 5.1: "background depth").

The edited depth d' (Eq. 7 and the Poisson composite, :func:`diffusion_handles.geometry.
edited_depth`) needs the depth of the scene *without* the object, d'_b. The paper removes the
object from the image with an inpainter (LaMa) and estimates depth on the result. Here:

1. :func:`dilate_mask` grows the object mask by ``dilation_frac`` of the image's longer side:
   the mask's rim mixes object and background colours (and often holds the object's contact
   shadow), which an inpainter would otherwise copy back in as a ghost outline.
2. :func:`remove_object` fills the dilated mask with a diffusion inpainter from ``diffusers``
   (``StableDiffusionInpaintPipeline``, default ``stabilityai/stable-diffusion-2-inpainting``)
   or, offline, with OpenCV's classical inpainting (``cv2.inpaint``, Telea or Navier-Stokes).
   Pixels outside the dilated mask are copied from the input unchanged.
3. :func:`background_depth` estimates depth on the object-removed image x_b and aligns it to the
   original depth d with :func:`~diffusion_handles.perception.depth.align_scale_shift`: a
   least-squares scale and shift fitted on the pixels *outside* the dilated mask (in inverse
   depth for relative estimators, in depth for metric ones). d'_b is the aligned estimate
   inside the dilated mask and d itself outside, so the background keeps its depth exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from diffusion_handles.errors import HandlesError
from diffusion_handles.hub import load_pretrained
from diffusion_handles.perception.depth import (
    METRIC_DEPTH,
    DepthEstimator,
    align_scale_shift,
    image_to_pil,
)

OPENCV_METHODS = ("opencv-telea", "opencv-ns")
DEFAULT_INPAINT_MODEL = "stabilityai/stable-diffusion-2-inpainting"


@dataclass
class InpaintConfig:
    """How the object is removed.

    Attributes:
        model: ``opencv-telea`` / ``opencv-ns`` (classical, offline) or a diffusers inpainting
            pipeline, hub id or local folder (``stabilityai/stable-diffusion-2-inpainting``).
        fallback_to_opencv: if the diffusion inpainter's weights cannot be had, use
            ``opencv-telea`` and say so (in ``notes``) instead of failing.
        dilation_frac: mask dilation radius as a fraction of the image's longer side (2%: about
            10 px at 512; our choice, the paper does not give one).
        opencv_radius: neighbourhood radius of ``cv2.inpaint`` in pixels.
        prompt, negative_prompt, steps, guidance_scale, seed, resolution: diffusion inpainter
            settings (the image is resized to ``resolution`` on its longer side, multiples of 8).
        device, dtype: where the diffusion inpainter runs.
    """

    model: str = DEFAULT_INPAINT_MODEL
    fallback_to_opencv: bool = True
    dilation_frac: float = 0.02
    opencv_radius: int = 5
    prompt: str = "empty background, seamless, nothing there"
    negative_prompt: str = "object, person, animal, text, watermark, blurry"
    steps: int = 30
    guidance_scale: float = 7.5
    seed: int = 0
    resolution: int = 512
    device: str = "cpu"
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if not 0 <= self.dilation_frac < 0.5:
            raise HandlesError(f"--inpaint-dilation: expected a fraction in [0, 0.5), got {self.dilation_frac}")


def dilation_radius(height: int, width: int, frac: float) -> int:
    """Dilation radius in pixels: ``frac`` of the longer side, at least 1 (0 if ``frac`` is 0)."""
    return 0 if frac <= 0 else max(1, int(round(frac * max(height, width))))


def dilate_mask(mask: torch.Tensor, radius_px: int) -> torch.Tensor:
    """Grow a ``(B, 1, H, W)`` mask by a disk of ``radius_px`` pixels; returns float {0, 1}."""
    import cv2

    if radius_px <= 0:
        return (mask > 0.5).float()
    r = np.arange(-radius_px, radius_px + 1)
    kernel = ((r[:, None] ** 2 + r[None, :] ** 2) <= radius_px**2).astype(np.uint8)  # a discrete disk
    out = torch.empty_like(mask, dtype=torch.float32)
    for b in range(mask.shape[0]):  # batch loop; the dilation itself is one OpenCV call
        m = (mask[b, 0].detach().cpu().numpy() > 0.5).astype(np.uint8)
        out[b, 0] = torch.from_numpy(cv2.dilate(m, kernel).astype(np.float32))
    return out


def inpaint_opencv(image: torch.Tensor, mask: torch.Tensor, method: str = "opencv-telea", radius: int = 5) -> torch.Tensor:
    """Classical inpainting of ``(1, 3, H, W)`` [0, 1] inside ``mask`` ``(1, 1, H, W)``."""
    import cv2

    if method not in OPENCV_METHODS:
        raise ValueError(f"method: expected one of {OPENCV_METHODS}, got {method!r}")
    flag = cv2.INPAINT_TELEA if method == "opencv-telea" else cv2.INPAINT_NS
    rgb = (image[0].detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    m = (mask[0, 0].detach().cpu().numpy() > 0.5).astype(np.uint8) * 255
    out = cv2.inpaint(rgb, m, float(radius), flag)
    return torch.from_numpy(out.astype(np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


class DiffusionInpainter:
    """A ``diffusers`` inpainting pipeline (``AutoPipelineForInpainting``; SD2 inpainting by default)."""

    def __init__(self, pipe, config: InpaintConfig, source: str):
        self.pipe = pipe
        self.config = config
        self.source = source

    @classmethod
    def load(cls, config: InpaintConfig, *, bypass: str | None = "pass --inpaint-model opencv-telea (offline)") -> DiffusionInpainter:
        def _load(name: str, local_only: bool):
            import warnings

            from diffusers import AutoPipelineForInpainting

            with warnings.catch_warnings():  # diffusers >= 0.36 renames torch_dtype to dtype; older lack dtype
                warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
                warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")  # diffusers -> hf_hub noise
                return AutoPipelineForInpainting.from_pretrained(name, local_files_only=local_only,
                                                                 torch_dtype=config.dtype)

        pipe = load_pretrained(_load, config.model, what="inpainting", option="--inpaint-model", bypass=bypass)
        pipe = pipe.to(config.device)
        pipe.set_progress_bar_config(desc="inpainting", leave=False)
        return cls(pipe, config, config.model)

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Inpaint ``(1, 3, H, W)`` [0, 1] inside ``(1, 1, H, W)`` mask; same size out."""
        from PIL import Image

        h, w = image.shape[-2:]
        s = self.config.resolution / max(h, w)
        ph, pw = max(8, int(round(h * s / 8)) * 8), max(8, int(round(w * s / 8)) * 8)  # multiples of 8
        pil = image_to_pil(image).resize((pw, ph), Image.BICUBIC)
        m = (mask[0, 0].detach().cpu().numpy() > 0.5).astype(np.uint8) * 255
        pil_mask = Image.fromarray(m).resize((pw, ph), Image.NEAREST)
        gen = torch.Generator(device="cpu").manual_seed(self.config.seed)
        result = self.pipe(prompt=self.config.prompt, negative_prompt=self.config.negative_prompt, image=pil,
                           mask_image=pil_mask, height=ph, width=pw, num_inference_steps=self.config.steps,
                           guidance_scale=self.config.guidance_scale, generator=gen, output_type="pil").images[0]
        result = result.resize((w, h), Image.BICUBIC)
        return torch.from_numpy(np.asarray(result.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


@dataclass
class Removal:
    """Output of :func:`remove_object`.

    Attributes:
        image: ``(1, 3, H, W)`` object-removed image x_b in [0, 1].
        mask_dilated: ``(1, 1, H, W)`` {0, 1} the region that was filled.
        method: what filled it (``opencv-telea``, or the diffusion model's id).
        notes: remarks such as a fallback to OpenCV.
    """

    image: torch.Tensor
    mask_dilated: torch.Tensor
    method: str
    notes: list[str]


def load_inpainter(config: InpaintConfig) -> tuple[DiffusionInpainter | None, list[str]]:
    """The diffusion inpainter, or None for OpenCV (by choice, or as the stated fallback)."""
    if config.model in OPENCV_METHODS:
        return None, []
    try:
        return DiffusionInpainter.load(config), []
    except HandlesError as e:
        if not config.fallback_to_opencv:
            raise
        return None, [f"inpainting fell back to opencv-telea: {e}"]


def remove_object(image: torch.Tensor, mask: torch.Tensor, config: InpaintConfig | None = None,
                  inpainter: DiffusionInpainter | None = None) -> Removal:
    """Remove the masked object: dilate the mask, fill it, keep every other pixel.

    Args:
        image: ``(1, 3, H, W)`` RGB in [0, 1]; mask: ``(1, 1, H, W)`` object mask.
        inpainter: a loaded diffusion inpainter; None uses OpenCV (``config.model`` if it names
            an OpenCV method, else ``opencv-telea``).
    """
    config = config or InpaintConfig()
    h, w = image.shape[-2:]
    dil = dilate_mask(mask, dilation_radius(h, w, config.dilation_frac))
    if inpainter is not None:
        filled = inpainter(image, dil)
        method = inpainter.source
    else:
        method = config.model if config.model in OPENCV_METHODS else "opencv-telea"
        filled = inpaint_opencv(image, dil, method, config.opencv_radius)
    out = torch.where(dil > 0.5, filled.to(image), image)  # outside the dilated mask: the input, exactly
    return Removal(image=out, mask_dilated=dil, method=method, notes=[])


@dataclass
class BackgroundDepth:
    """d'_b and how it was made: ``scale``/``shift`` of the alignment fit in ``space``."""

    depth: torch.Tensor
    scale: float
    shift: float
    space: str
    fit_pixels: int


def background_depth(background_image: torch.Tensor, depth: torch.Tensor, mask_dilated: torch.Tensor,
                     estimator: DepthEstimator) -> BackgroundDepth:
    """d'_b: depth of the object-removed image, aligned to ``depth`` outside the dilated mask.

    Args:
        background_image: ``(1, 3, H, W)`` x_b from :func:`remove_object`.
        depth: ``(1, 1, H, W)`` z-depth of the original image (scene units).
        mask_dilated: ``(1, 1, H, W)`` the filled region (fit uses pixels outside it).
        estimator: the depth estimator (the same one that gave ``depth``, ideally).

    Returns:
        :class:`BackgroundDepth`; ``depth`` is ``(1, 1, H, W)`` z-depth, equal to the input
        outside the dilated mask.
    """
    est = estimator.estimate(background_image)
    space = "depth" if est.kind == METRIC_DEPTH else "disparity"
    outside = mask_dilated <= 0.5
    aligned, s, t = align_scale_shift(est.depth, depth.float(), outside, space=space)
    d_b = torch.where(outside, depth.float(), aligned)
    return BackgroundDepth(depth=d_b, scale=s, shift=t, space=space, fit_pixels=int(outside.sum()))
