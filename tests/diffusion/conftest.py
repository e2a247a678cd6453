"""Tiny randomly initialised SD2-depth-shaped components, built in code (no downloads)."""

from __future__ import annotations

import pytest
import torch

from diffusion_handles.diffusion.backbone import Backbone
from diffusion_handles.diffusion.random_models import (
    build_backbone_components,
    save_model_folder,
    tiny_configs,
)
from diffusion_handles.pipeline import DiffusionHandles

SIZE = 16  # image side; latent 8x8 with the tiny 2x VAE


@pytest.fixture(scope="session")
def tiny_components():
    return build_backbone_components(tiny_configs(), seed=0)


@pytest.fixture(scope="session")
def backbone(tiny_components) -> Backbone:
    return Backbone(tiny_components, model_id="tiny-random")


@pytest.fixture(scope="session")
def handles(backbone) -> DiffusionHandles:
    return DiffusionHandles(backbone).set_progress_bar_config(disable=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_components, tmp_path_factory):
    """The tiny model saved in the diffusers pipeline layout."""
    return save_model_folder(tiny_components, tmp_path_factory.mktemp("tiny-sd2-depth"))


@pytest.fixture(scope="session")
def scene():
    """The default :func:`make_scene` (16x16 box in front of a wall)."""
    return make_scene()


def make_scene(size: int = SIZE, seed: int = 0):
    """``(image (1,3,S,S), depth (1,1,S,S) z-depth, mask (1,1,S,S))``: a box in front of a wall."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, size, size, generator=g)
    depth = torch.full((1, 1, size, size), 3.0)
    lo, hi = size // 4, size // 4 + size // 2
    depth[..., lo:hi, lo:hi] = 2.0
    mask = torch.zeros(1, 1, size, size)
    mask[..., lo:hi, lo:hi] = 1.0
    return image, depth, mask
