"""Layout-bound cross-attention (world.binding): which words name which object, the regions the
depth gives the objects, the logit bias, the processor, and what it does to generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_handles.world import binding as bd
from diffusion_handles.world import model_path
from diffusion_handles.world.model import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(model_path() / "tokenizer")


@pytest.fixture(scope="module")
def bb():
    from diffusion_handles.diffusion.backbone import Backbone

    return Backbone.from_pretrained("tinyworld")


def test_phrase_tokens_are_each_objects_words_without_articles(tokenizer):
    """An off-by-one (the start token, the article, the word "and") would hand one object's
    colour to its neighbour."""
    caption = "an orange dotted cube and a white cylinder and a red striped sphere on a grey floor by a white wall"
    ids = tokenizer(caption).input_ids
    words = [tokenizer.decode([ids[t] for t in slots]).replace(" ", "") for slots in bd.phrase_tokens(caption, tokenizer)]
    assert words == ["orangedottedcube", "whitecylinder", "redstripedsphere"]
    assert bd.phrase_tokens("a photo of a cat", tokenizer) == []


def _room(h: int = 64, w: int = 80) -> np.ndarray:
    """Inverse depth of an empty room seen by a camera without roll or yaw: constant per row."""
    rows = np.linspace(0.1, 0.4, h)[:, None]  # the wall far at the top, the floor nearer below
    return np.repeat(rows, w, 1)


def test_object_regions_follow_the_depth_left_to_right():
    """Three objects, the middle one partly in front of the right one (touching in the image):
    three regions in left-to-right order, the touching pair split at the depth step."""
    inv = _room()
    truth = np.zeros((3, 64, 80), bool)
    truth[0, 30:50, 5:20] = True  # left
    truth[2, 20:50, 50:75] = True  # right, behind
    truth[1, 35:58, 36:56] = True  # middle, in front of the right one
    truth[2] &= ~truth[1]
    inv = inv + 0.08 * truth[2] + 0.16 * truth[0]
    inv = np.where(truth[1], inv + 0.25, inv)
    regions = bd.object_regions(1.0 / inv, 3)
    assert regions is not None and regions.shape == (3, 64, 80)
    for k in range(3):
        iou = (regions[k] & truth[k]).sum() / (regions[k] | truth[k]).sum()
        assert iou > 0.9, (k, iou)
    assert bd.object_regions(1.0 / inv, 4) is None  # the caption names more objects than the depth shows
    assert bd.object_regions(1.0 / _room(), 1) is None  # an empty room


def test_object_regions_of_rendered_scenes_match_their_masks():
    """On the world's own renders (its cameras, floors and walls) the regions are the objects'."""
    pytest.importorskip("mitsuba")
    from diffusion_handles.world.dataset import HELDOUT_SEED0, render_seed

    ious = []
    for j in range(6):
        r = render_seed((HELDOUT_SEED0 + 500 + j, 128, 4))
        from diffusion_handles.world.evaluate import object_count

        regions = bd.object_regions(r["depth"], object_count(r["ids"]))
        assert regions is not None
        xs = [np.nonzero(r["ids"] == k)[1].mean() for k in range(len(regions))]
        for i, k in enumerate(np.argsort(xs)):  # the i-th region from the left is the i-th object from the left
            t = r["ids"] == k
            ious.append((regions[i] & t).sum() / (regions[i] | t).sum())
    assert np.mean(ious) > 0.85, ious


def test_attention_bias_raises_an_objects_words_inside_its_region_only():
    """Inside +alpha, outside -beta, a half-covered cell in between; other tokens untouched."""
    regions = torch.zeros(2, 8, 8)
    regions[0, :, :4] = 1.0  # object 0 the left half
    regions[1, :4, 4:] = 1.0  # object 1 the top right quarter
    b = bd.attention_bias(regions, [[1, 2], [4]], (2, 2), 6, bd.Binding(beta=5.0, alpha=2.0))
    assert b.shape == (4, 6)  # cells in row-major order: (0,0) (0,1) (1,0) (1,1)
    torch.testing.assert_close(b[:, 1], torch.tensor([2.0, -5.0, 2.0, -5.0]))
    torch.testing.assert_close(b[:, 2], b[:, 1])
    torch.testing.assert_close(b[:, 4], torch.tensor([-5.0, 2.0, -5.0, -5.0]))
    assert (b[:, [0, 3, 5]] == 0).all()
    half = bd.attention_bias(regions, [[1, 2], [4]], (1, 1), 6, bd.Binding(beta=5.0, alpha=2.0))
    torch.testing.assert_close(half[0, 1], torch.tensor(0.5 * 2.0 - 0.5 * 5.0))


def test_layer_shape_of_square_and_wide_maps():
    assert bd.layer_shape(32 * 32, (32, 32)) == (32, 32)
    assert bd.layer_shape(64, (32, 32)) == (8, 8)
    assert bd.layer_shape(6 * 10, (24, 40)) == (6, 10)
    with pytest.raises(ValueError, match="n: expected"):
        bd.layer_shape(7, (32, 32))


def _unet_pass(bb, text, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((2, 8, 32, 32), generator=g)
    cond = torch.rand((1, 1, 32, 32), generator=g)
    return bb.unet_eval(x, 500, text, cond)


def test_bound_attention_changes_only_the_conditional_rows(bb):
    """Zero strengths reproduce diffusers' own attention; the default changes the conditional
    branch (row 1) and leaves the unconditional one (row 0) exactly as it was; the processors
    come back on the way out."""
    caption = "a red cube and a blue sphere on a grey floor by a white wall"
    text = torch.cat([bb.encode_prompt(""), bb.encode_prompt(caption)])
    tokens = bd.phrase_tokens(caption, bb.tokenizer)
    regions = torch.zeros(2, 128, 128)
    regions[0, 40:100, 10:60], regions[1, 30:90, 70:120] = 1.0, 1.0
    before = dict(bb.unet.attn_processors)
    with torch.no_grad():
        plain = _unet_pass(bb, text)
        with bd.bound(bb.unet, regions, tokens, (32, 32), rows=[1], binding=bd.Binding(0.0, 0.0)):
            zero = _unet_pass(bb, text)
        with bd.bound(bb.unet, regions, tokens, (32, 32), rows=[1]):
            bound = _unet_pass(bb, text)
    torch.testing.assert_close(zero, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bound[0], plain[0], atol=1e-5, rtol=1e-5)
    assert (bound[1] - plain[1]).abs().mean() > 1e-3
    assert all(before[k] is v for k, v in bb.unet.attn_processors.items())


def test_binding_improves_per_object_silhouettes_on_held_out_scenes(bb):
    """On held-out scenes with two or three objects, the bound generation covers each object's
    own mask better than the unbound one, from the same noise (binding to the wrong region, a
    swapped object order or a bias of the wrong sign would make it worse)."""
    pytest.importorskip("mitsuba")
    from diffusion_handles.diffusion.backbone import model_folder
    from diffusion_handles.world import leak_prior as lp
    from diffusion_handles.world.dataset import HELDOUT_SEED0, render_seed
    from diffusion_handles.world.evaluate import generate, image_metrics, object_count

    prior = lp.load(model_folder("tinyworld"), bb)
    scores = {None: [], bd.Binding(): []}
    seed = HELDOUT_SEED0 + 600
    while len(scores[None]) < 6:
        r = render_seed((seed, 128, 32))
        seed += 1
        n = object_count(r["ids"])
        if n < 2:
            continue
        ref, depth = r["rgb"].astype(np.float32) / 255.0, torch.from_numpy(r["depth"].astype(np.float32))[None, None]
        for b, out in scores.items():
            gen = generate(bb, r["caption"], depth, seed=seed, steps=25, prior=prior, binding=b)
            out.append(image_metrics(gen[0].permute(1, 2, 0).numpy(), ref, r["ids"], n)["iou_obj"])
    plain, bound = np.mean(scores[None]), np.mean(scores[bd.Binding()])
    print(f"per-object IoU on {len(scores[None])} held-out scenes: unbound {plain:.3f}, bound {bound:.3f}")
    assert bound > plain + 0.03
