"""Loading the backbone from diffusers folders, and clear one-line errors when it cannot be."""

from __future__ import annotations

import shutil

import pytest
import torch

from diffusion_handles.diffusion.backbone import Backbone
from diffusion_handles.diffusion.random_models import build_backbone_components, tiny_configs
from diffusion_handles.errors import HandlesError
from diffusion_handles.pipeline import DiffusionHandles


def test_loads_pipeline_folder_and_plain_component_folder(tiny_model_dir, backbone, tmp_path):
    loaded = Backbone.from_pretrained(tiny_model_dir)
    assert loaded.model_id == str(tiny_model_dir)
    assert loaded.scaling_factor == backbone.vae.config.scaling_factor
    assert (loaded.vae_factor, loaded.size_multiple, loaded.num_up_blocks) == (2, 4, 2)
    torch.testing.assert_close(loaded.encode_prompt("a box"), backbone.encode_prompt("a box"), rtol=0, atol=0)
    # DDIM on the model's own noise schedule (the folder ships a PNDM config, as SD2-depth does)
    assert type(loaded.scheduler).__name__ == "DDIMScheduler"
    assert loaded.scheduler.config.beta_schedule == "scaled_linear"
    plain = tmp_path / "plain"
    shutil.copytree(tiny_model_dir, plain)
    (plain / "model_index.json").unlink()
    assert Backbone.from_pretrained(plain).num_up_blocks == 2


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_load_errors_are_one_line_and_name_the_model(tiny_model_dir, tmp_path):
    with pytest.raises(HandlesError) as e:
        Backbone.from_pretrained(tmp_path / "missing")
    assert "--model" in _one_line(e) and "missing" in str(e.value)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(HandlesError, match="vae/") as e:
        Backbone.from_pretrained(broken)
    _one_line(e)
    (broken / "vae").mkdir()
    with pytest.raises(HandlesError, match="could not load") as e:
        Backbone.from_pretrained(broken)
    _one_line(e)
    with pytest.raises(HandlesError) as e:  # hub id, nothing cached, no network here
        Backbone.from_pretrained("nobody-here/no-such-model-xyz", local_files_only=True)
    assert "nobody-here/no-such-model-xyz" in _one_line(e) and "--model" in str(e.value)
    with pytest.raises(HandlesError, match="--dtype"):
        DiffusionHandles.from_pretrained(tiny_model_dir, dtype="float8")


def test_rejects_a_unet_without_the_depth_channel():
    configs = tiny_configs()
    configs["unet"] = dict(configs["unet"], in_channels=4)
    with pytest.raises(HandlesError, match="in_channels"):
        Backbone(build_backbone_components(configs), model_id="no-depth")


def test_tinyworld_name_resolves_through_the_world_layer_or_fails_clearly():
    try:
        bb = Backbone.from_pretrained("tinyworld")
    except HandlesError as e:
        assert "tinyworld" in str(e) and "\n" not in str(e)
    else:
        assert bb.model_id == "tinyworld"
        assert int(bb.unet.config.in_channels) == int(bb.vae.config.latent_channels) + 1  # latent + depth
