"""Object removal, background depth d'_b, prepare_inputs, and the stage commands on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffusion_handles.cli import main
from diffusion_handles.errors import HandlesError
from diffusion_handles.io import load_depth, load_mask, save_image
from diffusion_handles.perception.depth import METRIC_DEPTH, RELATIVE_DISPARITY, DepthEstimate
from diffusion_handles.perception.inpaint import (
    InpaintConfig,
    background_depth,
    dilate_mask,
    dilation_radius,
    load_inpainter,
    remove_object,
)
from diffusion_handles.perception.prepare import PerceptionConfig, prepare_inputs
from diffusion_handles.perception.segment import SegmentConfig

MISSING = "nobody-here/not-a-cached-model"


def _square_mask(h=40, w=56):
    m = torch.zeros(1, 1, h, w)
    m[..., 12:28, 20:36] = 1
    return m


def test_dilation_is_a_disk():
    m = torch.zeros(1, 1, 11, 11)
    m[..., 5, 5] = 1
    d = dilate_mask(m, 2)
    assert int(d.sum()) == 13 and d[0, 0, 5, 7] == 1 and d[0, 0, 7, 7] == 0  # radius-2 disk
    assert dilation_radius(40, 56, 0.02) == 1 and dilation_radius(384, 512, 0.02) == 10
    assert dilation_radius(40, 56, 0.0) == 0


def test_opencv_removal_fills_from_surroundings_and_keeps_the_rest(photo):
    mask = _square_mask()
    cfg = InpaintConfig(model="opencv-telea", dilation_frac=0.05)
    removal = remove_object(photo, mask, cfg)
    assert removal.method == "opencv-telea" and removal.image.shape == photo.shape
    outside = removal.mask_dilated < 0.5
    assert torch.equal(removal.image.expand_as(photo)[outside.expand_as(photo)],
                       photo[outside.expand_as(photo)])  # untouched outside the dilated mask
    assert bool((removal.mask_dilated >= mask).all()) and removal.mask_dilated.sum() > mask.sum()
    # the red square is gone: the fill is close to the background gradient, far from red
    red = torch.tensor([0.9, 0.2, 0.1])[:, None]
    fill = removal.image[0][:, mask[0, 0] > 0.5]
    assert (fill - red).abs().mean() > 0.25


def test_diffusion_inpainter_falls_back_to_opencv_when_unavailable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    inpainter, notes = load_inpainter(InpaintConfig(model=MISSING))
    assert inpainter is None and "fell back to opencv-telea" in notes[0] and MISSING in notes[0]
    with pytest.raises(HandlesError, match="--inpaint-model"):
        load_inpainter(InpaintConfig(model=MISSING, fallback_to_opencv=False))


class _KnownEstimator:
    """Stands in for a depth model: returns a fixed depth of the background image."""

    source = "known"

    def __init__(self, depth, kind):
        self.depth, self.kind = depth, kind

    def estimate(self, image):
        return DepthEstimate(depth=self.depth, raw=self.depth, kind=self.kind, model="known")


@pytest.mark.parametrize("kind", [METRIC_DEPTH, RELATIVE_DISPARITY])
def test_background_depth_is_aligned_inside_and_exact_outside(kind):
    h, w = 40, 56
    plane = torch.linspace(2.0, 6.0, h)[:, None].expand(h, w)[None, None].clone()  # a floor, z in [2, 6]
    depth = plane.clone()
    depth[..., 12:28, 20:36] = 1.5  # the object, in front
    dil = dilate_mask(_square_mask(), 2)
    # the estimator sees the floor up to an unknown scale/shift (in depth or in inverse depth)
    est = 0.5 * plane - 0.2 if kind == METRIC_DEPTH else 1.0 / (3.0 / plane + 0.1)
    bg = background_depth(torch.zeros(1, 3, h, w), depth, dil, _KnownEstimator(est, kind))
    assert bg.space == ("depth" if kind == METRIC_DEPTH else "disparity")
    assert torch.equal(bg.depth[dil < 0.5], depth[dil < 0.5])
    assert torch.allclose(bg.depth, plane, rtol=1e-4)  # the object is replaced by the floor behind it
    assert bg.fit_pixels == int((dil < 0.5).sum())


def test_prepare_with_given_depth_and_mask_needs_no_model(monkeypatch, photo):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models = PerceptionConfig()  # default hub ids, none cached: loading any would raise
    depth = torch.full((1, 1, 40, 56), 4.0)
    depth[..., 12:28, 20:36] = 2.0
    out = prepare_inputs(photo, depth=depth, mask=_square_mask(), models=models)
    assert out.depth_kind == "given" and out.background_image is None
    assert out.background_depth.shape == (1, 1, 40, 56)
    assert torch.allclose(out.background_depth, torch.full_like(depth, 4.0), rtol=1e-3)  # harmonic fill
    assert out.info["background"]["method"].startswith("harmonic")


def test_prepare_estimates_depth_and_background_with_local_models(tiny_models, photo):
    models = PerceptionConfig(inpaint=InpaintConfig(model="opencv-telea"))
    models.depth.model = tiny_models["zoedepth"]
    out = prepare_inputs(photo, mask=_square_mask(), models=models)
    assert out.depth_kind == METRIC_DEPTH and out.info["depth"]["model"] == tiny_models["zoedepth"]
    assert out.background_image is not None and out.background_image.shape == photo.shape
    bg = out.info["background"]
    assert bg["method"] == "inpaint+estimate+align" and bg["inpainter"] == "opencv-telea"
    assert bool(torch.isfinite(out.background_depth).all()) and float(out.background_depth.min()) > 0


def test_prepare_fails_before_running_anything_when_a_model_is_missing(monkeypatch, tiny_models, photo):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models = PerceptionConfig(segment=SegmentConfig(detector_model=tiny_models["owlv2"]))  # SAM: default, missing
    models.depth.model = tiny_models["dpt"]
    ran = []
    monkeypatch.setattr("diffusion_handles.perception.depth.DepthEstimator.estimate", lambda *a: ran.append(1))
    with pytest.raises(HandlesError, match=r"--sam-model: SAM model 'facebook/sam-vit-base'.*--mask FILE"):
        prepare_inputs(photo, object_text="a mug", models=models)
    assert ran == []
    with pytest.raises(HandlesError, match="exactly one way"):
        prepare_inputs(photo, mask=_square_mask(), object_text="a mug", models=models)
    with pytest.raises(HandlesError, match="--depth: expected size 56x40"):
        prepare_inputs(photo, depth=torch.ones(1, 1, 8, 8), mask=_square_mask(), models=models)


def test_stage_commands_write_viewable_outputs(tiny_models, tmp_path, capsys, photo):
    img = tmp_path / "photo.png"
    save_image(img, photo)
    d = tmp_path / "depth"
    assert main(["depth", str(img), "--out", str(d), "--depth-model", tiny_models["dpt"], "--depth-range", "2", "8"]) == 0
    s = json.loads((d / "summary.json").read_text())
    assert s["kind"] == "relative-disparity" and s["model"] == tiny_models["dpt"]
    z = np.load(d / "depth.npy")
    assert z.shape == (40, 56) and z.min() >= 2 - 1e-4 and z.max() <= 8 + 1e-4
    assert torch.allclose(load_depth(d / "depth16.png")[0, 0], torch.from_numpy(z), atol=1e-3)  # usable as --depth
    from PIL import Image

    assert Image.open(d / "depth.png").size == (56, 40) and Image.open(d / "depth.png").mode == "RGB"

    sg = tmp_path / "seg"
    assert main(["segment", str(img), "--object", "a red square", "--out", str(sg), "--detector-model",
                 tiny_models["owlv2"], "--sam-model", tiny_models["sam"], "--box-threshold", "0"]) in (0, 2)
    captured = capsys.readouterr()
    if (sg / "summary.json").exists():  # the tiny random SAM may or may not give an empty mask
        s = json.loads((sg / "summary.json").read_text())
        assert s["matched"] == len(s["candidates"]) > 1 and s["chosen"] == 0
        assert "objects matched 'a red square'" in captured.err  # said clearly, not only in the file
        assert load_mask(sg / "mask.png").shape == (1, 1, 40, 56) and (sg / "overlay.png").exists()
    else:
        assert "SAM returned an empty mask" in captured.err
    nm = tmp_path / "nomatch"
    assert main(["segment", str(img), "--object", "a red square", "--out", str(nm), "--detector-model",
                 tiny_models["owlv2"], "--sam-model", tiny_models["sam"], "--box-threshold", "1"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # (after the weight-loading progress bars)
    assert err.startswith("handles segment: error: --object: no object matched 'a red square'") and "summary.json" in err
    s = json.loads((nm / "summary.json").read_text())
    assert s["matched"] == 0 and len(s["candidates"]) > 1 and s["chosen"] is None
    assert (nm / "overlay.png").exists() and not (nm / "mask.png").exists()
    assert main(["segment", str(img), "--click", "10,10", "--click", "200,5", "--out", str(tmp_path / "seg_clicks"),
                 "--sam-model", tiny_models["sam"]]) == 2
    assert "--click: expected X,Y inside the 56x40 image" in capsys.readouterr().err


def test_diffusion_inpainter_loads_from_folder_and_only_changes_the_masked_region(tiny_inpaint_pipeline, photo):
    from diffusion_handles.perception.inpaint import DiffusionInpainter

    cfg = InpaintConfig(model=tiny_inpaint_pipeline, steps=1, resolution=16, dilation_frac=0.05)
    inpainter, notes = load_inpainter(cfg)
    assert isinstance(inpainter, DiffusionInpainter) and notes == []
    removal = remove_object(photo, _square_mask(), cfg, inpainter)
    assert removal.method == tiny_inpaint_pipeline and removal.image.shape == photo.shape
    inside = (removal.mask_dilated > 0.5).expand_as(photo)
    assert torch.equal(removal.image[~inside], photo[~inside])
    assert not torch.allclose(removal.image[inside], photo[inside], atol=0.05)
    assert float(removal.image.min()) >= 0 and float(removal.image.max()) <= 1
