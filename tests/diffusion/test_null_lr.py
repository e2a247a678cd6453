"""Null-text inversion's learning rate: NTI's 1e-2 unless the model folder measured its own."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from diffusion_handles.diffusion.backbone import Backbone
from diffusion_handles.diffusion.config import NTI_NULL_LR, GuidanceConfig, InversionConfig, preset
from diffusion_handles.errors import HandlesError
from diffusion_handles.pipeline import DiffusionHandles

from .conftest import make_scene


@pytest.fixture
def folder_with(tiny_model_dir, tmp_path):
    """A copy of the tiny model folder with ``handles.json`` holding ``text`` (None: no file)."""
    def make(text: str | None):
        dst = tmp_path / "model"
        shutil.copytree(tiny_model_dir, dst)
        if text is not None:
            (dst / "handles.json").write_text(text)
        return dst
    return make


def _null_embeddings(dh: DiffusionHandles, inversion: InversionConfig):
    image, depth, mask = make_scene()
    inv = dh.invert(image, "a box", depth, mask, inversion=inversion, guidance=GuidanceConfig(grad_steps=0),
                    progress=False)
    emb = inv.null_embeddings
    emb = torch.stack(list(emb)) if isinstance(emb, (list, tuple)) else emb
    return inv, emb.reshape(emb.shape[0], -1)  # (steps, L * D)


def test_the_model_folder_sets_null_lr_and_an_explicit_value_wins(folder_with):
    dh = DiffusionHandles.from_pretrained(folder_with(json.dumps({"null_lr": 0.2})))
    assert dh.backbone.null_lr == 0.2
    cfg = InversionConfig(num_steps=3, null_inner_steps=2)
    inv_model, emb_model = _null_embeddings(dh, cfg)
    inv_set, emb_set = _null_embeddings(dh, InversionConfig(num_steps=3, null_inner_steps=2, null_lr=NTI_NULL_LR))
    assert inv_model.config.null_lr == 0.2 and inv_set.config.null_lr == NTI_NULL_LR  # recorded, resolved
    assert inv_model.key != inv_set.key  # the cache key covers the learning rate actually used
    # the learning rate reaches the optimiser: a 20x larger step moves the null embedding further
    start = dh.backbone.encode_prompt("").reshape(1, -1)
    assert (emb_model - start).abs().mean() > 5 * (emb_set - start).abs().mean()


def test_without_handles_json_null_lr_is_nti_s(folder_with):
    assert Backbone.from_pretrained(folder_with(None)).null_lr == NTI_NULL_LR == 1e-2
    assert preset("paper")[0].null_lr == NTI_NULL_LR  # the paper's settings exactly, whatever the model
    assert preset("default")[0].null_lr is None  # ours: the model's own


@pytest.mark.parametrize("text, needle", [("{", "not readable JSON"), ('{"null_lr": -1}', "null_lr"),
                                          ('{"null_lr": "fast"}', "null_lr"), ("[1]", "null_lr")])
def test_a_malformed_handles_json_is_one_line_naming_it(folder_with, text, needle):
    with pytest.raises(HandlesError, match=needle) as e:
        Backbone.from_pretrained(folder_with(text))
    assert "handles.json" in str(e.value) and "\n" not in str(e.value)


def test_inversion_config_refuses_a_bad_null_lr():
    for bad in (0.0, -1e-2, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="null_lr"):
            InversionConfig(null_lr=bad)
