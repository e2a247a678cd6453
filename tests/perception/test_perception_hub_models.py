"""The real default models (need their weights: ``pytest -m hub tests/perception``).

Skipped by default (pyproject: ``-m 'not hub ...'``). On a machine with hub access (or the
weights in the Hugging Face cache) run ``python -m pytest -m hub tests/perception``.
"""

from __future__ import annotations

import pytest
import torch

from diffusion_handles.perception import (
    DepthConfig,
    DepthEstimator,
    InpaintConfig,
    SegmentConfig,
    remove_object,
    select_object,
)
from diffusion_handles.perception.inpaint import load_inpainter

pytestmark = pytest.mark.hub


@pytest.fixture(autouse=True)
def _real_cache(monkeypatch):
    """Undo the empty-cache fixture of conftest: these tests want the user's real cache."""
    monkeypatch.undo()


def _scene() -> tuple[torch.Tensor, torch.Tensor]:
    """A 256x320 picture: a red disk on a grey floor that recedes upward, and its mask."""
    h, w = 256, 320
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    floor = 0.35 + 0.45 * (yy / h)
    img = torch.stack([floor, floor, floor * 0.95])
    disk = ((xx - 170) ** 2 + (yy - 150) ** 2) <= 45**2
    img[:, disk] = torch.tensor([0.85, 0.1, 0.1])[:, None]
    return img[None], disk[None, None].float()


@pytest.mark.parametrize("model", ["Intel/zoedepth-nyu-kitti", "depth-anything/Depth-Anything-V2-Small-hf",
                                   "Intel/dpt-hybrid-midas"])
def test_real_depth_models(model):
    img, _ = _scene()
    out = DepthEstimator.load(DepthConfig(model=model)).estimate(img)
    assert out.depth.shape == (1, 1, 256, 320) and float(out.depth.min()) > 0
    # the floor recedes upward: the top rows are farther than the bottom rows
    assert out.depth[0, 0, :20].median() > out.depth[0, 0, -20:].median()


@pytest.mark.parametrize("detector", ["google/owlv2-base-patch16-ensemble", "IDEA-Research/grounding-dino-tiny"])
def test_real_text_selection_finds_the_disk(detector):
    img, disk = _scene()
    sel = select_object(img, text="a red circle", config=SegmentConfig(detector_model=detector))
    iou = (sel.mask * disk).sum() / ((sel.mask + disk) > 0).sum()
    assert iou > 0.8, sel.summary()


def test_real_click_selection_finds_the_disk():
    img, disk = _scene()
    sel = select_object(img, clicks=[(170.0, 150.0)], config=SegmentConfig())
    iou = (sel.mask * disk).sum() / ((sel.mask + disk) > 0).sum()
    assert iou > 0.8, sel.summary()


def test_real_inpainting_removes_the_disk():
    img, disk = _scene()
    inpainter, notes = load_inpainter(InpaintConfig(fallback_to_opencv=False, steps=20))
    removal = remove_object(img, disk, InpaintConfig(), inpainter)
    red = removal.image[0, 0][disk[0, 0] > 0].mean() - removal.image[0, 1][disk[0, 0] > 0].mean()
    assert red < 0.3  # no longer strongly red where the disk was
