"""The built-in demo (``handles demo``): the whole method on a held-out TinyWorld scene, measured
against the re-rendered ground truth.

Renders the scene (never trained on), inverts it into the ``tinyworld`` model, moves one object in
3D (translate + rotate about its centroid), generates the edited image with Diffusion Handles'
guidance, and re-renders the edited scene as the ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diffusion_handles.diffusion.config import GuidanceConfig, InversionConfig
from diffusion_handles.geometry.transform import HandleEdit
from diffusion_handles.pipeline import DiffusionHandles
from diffusion_handles.viz import colorize_depth, side_by_side
from diffusion_handles.world.render import Render, object_pivot, render, scene_for_seed
from diffusion_handles.world.scene import Scene

# The built-in scene: a held-out seed (training seeds are 0..999, held-out ones >= 1000000),
# the object to move (index as in mask_K.png) and the 3D edit (camera axes, scene units).
DEMO_SEED = 1_000_024  # "an orange dotted cube and a green checkered sphere on a grey floor by a teal wall"
DEMO_OBJECT = 1  # the green checkered sphere: moved back, uncovering the cube, and turned 45 degrees
DEMO_TRANSLATE = (-0.1, 0.0, 0.7)
DEMO_ROTATE_DEG = 45.0


@dataclass
class Demo:
    """What :func:`run_demo` made; images ``(1, 3, H, W)`` in [0, 1], depths and masks ``(1, 1, H, W)``."""

    scene: Scene
    source: Render  # the rendered input scene
    ground_truth: Render  # the scene re-rendered with the object moved
    edit: HandleEdit
    pivot: np.ndarray  # (3,) camera coordinates: centroid of the object's lifted pixels
    image: torch.Tensor
    depth: torch.Tensor
    mask: torch.Tensor
    gt_image: torch.Tensor
    gt_depth: torch.Tensor
    inverted: Any  # the pipeline's inversion
    result: Any  # the pipeline's edit
    metrics: dict[str, float]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [0, 1] (clamped), the squared error floored at 1e-10."""
    return float(10 * torch.log10(1.0 / F.mse_loss(a.clamp(0, 1), b.clamp(0, 1)).clamp(min=1e-10)))


def _image(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, H, W)


def run_demo(steps: int, complete_back: bool = False, progress: bool = True) -> Demo:
    """Render the demo scene and its ground truth, invert with ``steps`` DDIM steps and edit."""
    torch.manual_seed(0)
    handles = DiffusionHandles.from_pretrained("tinyworld").set_progress_bar_config(disable=not progress)
    size = handles.backbone.default_size
    scene = scene_for_seed(DEMO_SEED, size, size)
    src = render(scene, seed=scene.seed)
    edit = HandleEdit(translate=DEMO_TRANSLATE, rotate_axis=(0.0, 1.0, 0.0), rotate_deg=DEMO_ROTATE_DEG)
    pivot = object_pivot(src.depth, src.masks[DEMO_OBJECT], scene)  # centroid of lifted mask pixels
    gt = render(scene.with_object_edit(DEMO_OBJECT, edit, pivot), seed=scene.seed)

    image = _image(src.rgb)
    depth = torch.from_numpy(src.depth)[None, None]  # (1, 1, H, W) z-depth, scene units
    mask = torch.from_numpy(src.masks[DEMO_OBJECT].astype(np.float32))[None, None]
    inverted = handles.invert(image, src.caption, depth, mask, inversion=InversionConfig(num_steps=steps))
    result = handles.edit(inverted, edit, fov_deg=scene.fov_deg, source_image=image,
                          guidance=GuidanceConfig(complete_back=complete_back))

    gt_img = _image(gt.rgb)
    metrics = {
        "psnr_edited_vs_ground_truth": psnr(result.edited, gt_img),
        "psnr_input_vs_ground_truth": psnr(image, gt_img),
        "psnr_reconstruction_vs_input": psnr(result.reconstruction, image),
    }
    return Demo(scene, src, gt, edit, pivot, image, depth, mask, gt_img, torch.from_numpy(gt.depth)[None, None],
                inverted, result, metrics)


def comparison_strip(demo: Demo, min_side: int = 256) -> torch.Tensor:
    """Input, reconstruction, depths, 3D preview, edit and ground truth side by side, each panel
    enlarged (nearest neighbour) to at least ``min_side`` pixels."""
    size = demo.image.shape[-1]

    def big(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t.float(), scale_factor=max(1, -(-min_side // size)), mode="nearest")

    result = demo.result
    return side_by_side([
        ("input", big(demo.image)), ("reconstruction", big(result.reconstruction)),
        ("input depth", big(colorize_depth(demo.depth))),
        ("3D preview", big(result.preview)), ("edited", big(result.edited)),
        ("ground truth", big(demo.gt_image)), ("edited depth", big(colorize_depth(result.edited_depth))),
        ("true depth", big(colorize_depth(demo.gt_depth))),
    ])


__all__ = ["DEMO_OBJECT", "DEMO_ROTATE_DEG", "DEMO_SEED", "DEMO_TRANSLATE", "Demo", "comparison_strip", "psnr",
           "run_demo"]
