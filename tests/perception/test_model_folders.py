"""Model folders of the wrong kind (issue 13): one line naming the option and what was expected.

``SamModel.from_pretrained`` used to load a depth model's folder with every weight random (the
run then failed later with a traceback); empty folders and the diffusers pipeline folder gave
transformers' own messages.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import diffusion_handles.world as world_pkg
from diffusion_handles.errors import HandlesError
from diffusion_handles.perception.depth import DepthConfig, DepthEstimator
from diffusion_handles.perception.segment import SamSegmenter, SegmentConfig, TextDetector

TINYWORLD = Path(world_pkg.__file__).resolve().parent / "model"


def test_folders_of_another_model_kind_are_refused_before_loading(tiny_models):
    with pytest.raises(HandlesError, match=r"^--sam-model: expected a transformers SAM model folder .*"
                                           r"got a model of type 'dpt'"):
        SamSegmenter.load(SegmentConfig(sam_model=tiny_models["dpt"]))
    with pytest.raises(HandlesError, match=r"^--sam-model: .* got a model of type 'owlv2'"):
        SamSegmenter.load(SegmentConfig(sam_model=tiny_models["owlv2"]))
    with pytest.raises(HandlesError, match=r"^--depth-model: expected a transformers depth estimation model folder "
                                           r".* got a model of type 'sam'"):
        DepthEstimator.load(DepthConfig(model=tiny_models["sam"]))
    with pytest.raises(HandlesError, match=r"^--detector-model: .* got a model of type 'zoedepth'"):
        TextDetector.load(SegmentConfig(detector_model=tiny_models["zoedepth"]))
    # the right kinds still load
    assert SamSegmenter.load(SegmentConfig(sam_model=tiny_models["sam"])).source == tiny_models["sam"]
    assert DepthEstimator.load(DepthConfig(model=tiny_models["depth_anything"])).kind == "relative-disparity"


def test_empty_and_diffusers_folders_are_described(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, got in ((empty, "got an empty folder"),
                        (TINYWORLD, "got a diffusers pipeline folder (model_index.json)"),
                        (TINYWORLD / "unet", "got a diffusers UNet2DConditionModel folder")):
        with pytest.raises(HandlesError, match=r"^--depth-model: ") as e:
            DepthEstimator.load(DepthConfig(model=str(folder)))
        assert got in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(HandlesError, match=r"^--sam-model: ") as e:
            SamSegmenter.load(SegmentConfig(sam_model=str(folder)))
        assert got in str(e.value)


def test_a_right_kind_folder_with_broken_weights_is_one_line(tiny_models, tmp_path):
    broken = tmp_path / "sam"
    shutil.copytree(tiny_models["sam"], broken)
    for f in broken.glob("*.safetensors"):
        f.write_bytes(b"\x00" * 64)
    with pytest.raises(HandlesError, match=r"^--sam-model: could not load a SAM model from folder") as e:
        SamSegmenter.load(SegmentConfig(sam_model=str(broken)))
    assert "\n" not in str(e.value)
