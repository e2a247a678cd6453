"""Runs that need what this machine lacks: a CUDA GPU, or the real SD2-depth weights.

Skipped by default (``-m 'not hub and not gpu'`` in pyproject); run with ``-m gpu`` / ``-m hub``.
"""

from __future__ import annotations

import pytest
import torch

from diffusion_handles.diffusion.backbone import DEFAULT_MODEL, Backbone
from diffusion_handles.diffusion.config import GuidanceConfig, InversionConfig
from diffusion_handles.geometry import HandleEdit
from diffusion_handles.pipeline import DiffusionHandles

from .conftest import make_scene


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tiny_model_on_cuda(tiny_components, dtype):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    dh = DiffusionHandles(Backbone(tiny_components, model_id="tiny-cuda", device="cuda", dtype=dtype))
    image, depth, mask = make_scene()
    inv = dh.invert(image, "a box", depth, mask, inversion=InversionConfig(num_steps=4, null_inner_steps=2))
    out = dh.edit(inv, HandleEdit(translate=(0.2, 0, 0)))
    assert torch.isfinite(out.edited).all() and out.edited.shape == (1, 3, 16, 16)
    assert inv.x_T.dtype == torch.float32  # latents stay fp32; only the networks run in dtype


@pytest.mark.hub
def test_real_sd2_depth_edit():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dh = DiffusionHandles.from_pretrained(DEFAULT_MODEL, device=device)
    assert dh.backbone.num_up_blocks == 4 and dh.backbone.size_multiple == 64
    image, depth, mask = make_scene(size=512)
    guidance = GuidanceConfig()
    inv = dh.invert(image, "a box in front of a wall", depth, mask, inversion=InversionConfig(num_steps=10),
                    guidance=guidance)
    assert {lay for lay, _ in inv.activations} == {2, 3}  # the paper's decoder "layers 2 and 3"
    out = dh.edit(inv, HandleEdit(translate=(0.1, 0, 0)), guidance=guidance)
    assert out.edited.shape == (1, 3, 512, 512)
