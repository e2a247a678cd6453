"""Token grounding (world.grounding): which words name which object's pixels, the token loss, the
attention recorder, and a tiny training run with the term on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_handles.world import model_path
from diffusion_handles.world.grounding import (
    AttentionRecorder,
    object_masks,
    object_token_positions,
    token_loss,
)
from diffusion_handles.world.model import build_components, load_tokenizer
from diffusion_handles.world.scene import sample_scene


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(model_path() / "tokenizer")


def _several_objects(n: int):
    for seed in range(200):
        s = sample_scene(seed)
        if len(s.objects) == n and len({o.describe() for o in s.objects}) == n:
            return s
    raise AssertionError("no such scene")


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("mirrored", [False, True])
def test_each_objects_row_holds_the_words_that_describe_it(tokenizer, n, mirrored):
    scene = _several_objects(n)
    pos = object_token_positions(scene.to_json(), tokenizer, mirrored=mirrored)
    ids = tokenizer(scene.caption(mirrored=mirrored)).input_ids
    for k, obj in enumerate(scene.objects):
        words = [tokenizer.convert_ids_to_tokens(ids[p]).replace("</w>", "") for p in pos[k] if p >= 0]
        assert words == obj.describe().split(" ")  # object k's row: its colour, pattern, shape
    assert (pos[n:] == -1).all()


def test_masks_are_area_fractions_per_object():
    ids = np.full((1, 8, 8), 255, np.uint8)
    ids[0, :4, :4] = 0
    ids[0, 4:, 6:] = 1
    m = object_masks(ids, 2).float()  # (1, 3, 2, 2)
    torch.testing.assert_close(m[0, 0], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(m[0, 1], torch.tensor([[0.0, 0.0], [0.0, 0.5]]))
    assert float(m[0, 2].sum()) == 0.0


def _maps(where: dict[int, torch.Tensor], side: int = 4, length: int = 6) -> torch.Tensor:
    """(1, 1, side*side, length) attention: token t attends (over pixels) as ``where[t]`` says."""
    a = torch.full((side * side, length), 1.0)
    for t, m in where.items():
        a[:, t] = m.flatten() * 50 + 1e-3
    return (a / a.sum(1, keepdim=True))[None, None]


def test_token_loss_is_zero_inside_the_mask_and_high_when_the_words_are_swapped():
    left, right = torch.zeros(4, 4), torch.zeros(4, 4)
    left[:, :2], right[:, 2:] = 1, 1
    masks = torch.stack([left, right, torch.zeros(4, 4)])[None]  # (1, 3, 4, 4); object 2 absent
    tokens = torch.tensor([[[1, 2, -1], [3, 4, -1], [-1, -1, -1]]])
    right_way = _maps({1: left, 2: left, 3: right, 4: right})
    swapped = _maps({1: right, 2: right, 3: left, 4: left})
    assert float(token_loss([right_way], masks, tokens)) < 1e-3
    assert float(token_loss([swapped], masks, tokens)) > 0.99
    spread = torch.full((1, 1, 16, 6), 1 / 6)  # every pixel attends equally: half inside each mask
    assert float(token_loss([spread], masks, tokens)) == pytest.approx(0.25)
    # an object named in the caption but not visible (empty mask) is left out, not pushed to nowhere
    hidden = masks.clone()
    hidden[0, 1] = 0
    assert float(token_loss([right_way], hidden, tokens)) < 1e-3
    # a map at a coarser side than the masks is scored against the masks pooled to that side
    left2, right2 = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    coarse = _maps({1: left2, 2: left2, 3: right2, 4: right2}, side=2)
    coarse_swapped = _maps({1: right2, 2: right2, 3: left2, 4: left2}, side=2)
    assert float(token_loss([coarse], masks, tokens)) < 1e-3
    assert float(token_loss([coarse_swapped], masks, tokens)) > 0.99
    assert float(token_loss([right_way, coarse_swapped], masks, tokens)) == pytest.approx(0.5, abs=1e-2)  # layer mean


def test_recorder_gives_diffusers_output_and_keeps_every_cross_attention_map(tokenizer):
    torch.manual_seed(0)
    unet = build_components(tokenizer, image_size=32, unet_channels=(16, 32, 32))["unet"].eval()
    x = torch.randn(2, unet.config.in_channels, 8, 8)
    text = torch.randn(2, 5, unet.config.cross_attention_dim)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=text).sample
        rec = AttentionRecorder()
        rec.install(unet)
        out = unet(x, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    n_cross = sum(1 for name in unet.attn_processors if ".attn2." in name)
    assert len(rec.maps) == n_cross > 0
    for m in rec.maps:
        assert m.shape[0] == 2 and m.shape[-1] == 5
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]))  # softmax over the tokens
