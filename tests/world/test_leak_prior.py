"""The leak prior: the brightness a generation starts from, predicted from caption and depth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_handles.errors import HandlesError
from diffusion_handles.world import leak_prior as lp


@pytest.fixture(scope="module")
def bb():
    from diffusion_handles.diffusion.backbone import Backbone

    return Backbone.from_pretrained("tinyworld")


CAPTIONS = ["a red cube on a grey floor by a white wall", "a blue sphere on a wooden floor by a dark wall",
            "a green cylinder on a sandy floor by a teal wall", "a white cube and a red sphere on a tiled floor by a grey wall"]


def _layout_latents(n: int, c: int = 8, hw: int = 32, k: int = 4, seed: int = 0):
    """Latents whose k x k block means are a known linear function of the depth features."""
    g = torch.Generator().manual_seed(seed)
    depth = 2.0 + 6.0 * torch.rand((n, 1, 16, 16), generator=g)
    inv = torch.nn.functional.adaptive_avg_pool2d(1.0 / depth, lp.DEPTH_POOL).flatten(1)  # (n, 64)
    w = torch.randn((inv.shape[1], c * k * k), generator=torch.Generator().manual_seed(99))  # one map for every draw
    means = (inv @ w).reshape(n, c, k, k)
    z = torch.nn.functional.interpolate(means, scale_factor=hw // k, mode="nearest")  # piecewise constant
    return depth, z + 0.01 * torch.randn(z.shape, generator=g), means


def test_fit_recovers_the_block_means_in_their_places(bb):
    """A block layout that follows the depth is predicted block by block: a transposed block
    grid, a channel/block mix-up in the reshape or a fit on the wrong pooling breaks it."""
    n = 200
    depth, z, means = _layout_latents(n)
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(n)]
    prior, r2 = lp.fit(bb, captions, depth, z, blocks=4, ridge=1e-6, holdout=0.2)
    assert prior.weight.shape == (64 + lp.DEPTH_POOL ** 2 + 1 + 6, 8 * 16) and prior.light_sides == 6
    assert r2 > 0.95  # a linear layout is explained on the images the split held out
    shuffled = lp.fit(bb, captions, depth, z[torch.randperm(n, generator=torch.Generator().manual_seed(1))],
                      blocks=4, ridge=1e-6, holdout=0.2)[1]
    assert shuffled < 0.2  # latents that do not belong to their depth maps are not
    d2, _, m2 = _layout_latents(3, seed=1)  # unseen depth maps
    for j in range(3):
        pred = prior.predict(bb, CAPTIONS[j], d2[j:j + 1])
        assert pred.shape == (1, 8, 4, 4)
        torch.testing.assert_close(pred, m2[j:j + 1], atol=0.05 * float(m2.abs().max()), rtol=0)


def test_the_side_the_caption_names_enters_the_prediction(bb):
    """Latents whose brightness follows the named side of the sun (every caption with every side,
    twice) are predicted per side; a caption naming no side has no side features; a prior fitted
    before the captions named it (``light_sides`` 0) still predicts."""
    from diffusion_handles.world.scene import LIGHT_SIDES

    n = 48
    depth = torch.full((n, 1, 16, 16), 4.0)
    side = [(i // 4) % 6 for i in range(n)]
    captions = [f"{CAPTIONS[i % 4]} lit from the {LIGHT_SIDES[side[i]]}" for i in range(n)]
    z = torch.tensor([0.3 * k - 0.7 for k in side]).view(n, 1, 1, 1).expand(n, 8, 8, 8).clone()
    prior, r2 = lp.fit(bb, captions, depth, z, blocks=1, holdout=0.25)
    assert prior.light_sides == len(LIGHT_SIDES) and r2 > 0.95
    for k, name in enumerate(LIGHT_SIDES):
        pred = prior.predict(bb, f"{CAPTIONS[k % 4]} lit from the {name}", depth[:1])
        torch.testing.assert_close(pred, torch.full((1, 8, 1, 1), 0.3 * k - 0.7), atol=0.1, rtol=0)  # sides 0.3 apart; ridge shrinks a little
    assert lp.features(bb, ["a red cube on a grey floor by a white wall"], depth[:1])[0, -6:].abs().sum() == 0
    old = lp.LeakPrior(prior.weight[:-6], blocks=1)  # no side features
    assert old.predict(bb, captions[0], depth[:1]).shape == (1, 8, 1, 1)


def test_start_is_the_forward_process_of_the_predicted_blocks(bb):
    """``x_T = sqrt(a) up(mu) + sqrt(1 - a) eps``: swapping the two weights or dropping the
    upsampling changes it."""
    c, k = 8, 2
    w = torch.zeros(64 + lp.DEPTH_POOL ** 2 + 1, c * k * k)
    mu = torch.arange(c * k * k, dtype=torch.float32) / 10.0
    w[-1] = mu  # the constant feature: the prediction is mu whatever the inputs
    prior = lp.LeakPrior(w, blocks=k)
    noise = torch.randn(1, c, 8, 8, generator=torch.Generator().manual_seed(0))
    a = 0.0073
    x = prior.start(bb, CAPTIONS[0], torch.full((1, 1, 16, 16), 5.0), noise, a)
    up = mu.reshape(1, c, k, 1, k, 1).expand(1, c, k, 4, k, 4).reshape(1, c, 8, 8)
    torch.testing.assert_close(x, a ** 0.5 * up + (1 - a) ** 0.5 * noise)


def test_the_leak_sets_the_generated_brightness(bb):
    """The reason the prior exists: the shipped model reads the image's brightness from the
    leak in its starting latent, so a prior predicting a bright latent gives a brighter image
    than one predicting a dark latent, from the same noise and caption."""
    from diffusion_handles.world.dataset import HELDOUT_SEED0, render_seed
    from diffusion_handles.world.evaluate import generate

    pytest.importorskip("mitsuba")
    r = render_seed((HELDOUT_SEED0 + 2, 128, 4))
    depth = torch.from_numpy(r["depth"].astype(np.float32))[None, None]
    x = torch.from_numpy(r["rgb"]).permute(2, 0, 1)[None].float() / 255.0
    z = bb.encode_image(x, refine_steps=0)
    bright, dark = (bb.encode_image(torch.full_like(x, v), refine_steps=0).mean((2, 3)) for v in (0.9, 0.1))
    luma = []
    for m in (bright, dark):
        w = torch.zeros(64 + lp.DEPTH_POOL ** 2 + 1, z.shape[1])
        w[-1] = m[0]
        img = generate(bb, r["caption"], depth, seed=3, steps=10, prior=lp.LeakPrior(w, blocks=1))
        luma.append(float(img.mean()))
    plain = float(generate(bb, r["caption"], depth, seed=3, steps=10).mean())
    print(f"mean generated value: bright leak {luma[0]:.3f}, dark leak {luma[1]:.3f}, none {plain:.3f}")
    assert luma[0] > plain > luma[1] and luma[0] - luma[1] > 0.1


def test_saved_prior_loads_and_a_wrong_one_is_refused(bb, tmp_path):
    w = torch.randn(64 + lp.DEPTH_POOL ** 2 + 1, 8 * 4)
    lp.LeakPrior(w, blocks=2).save(tmp_path)
    back = lp.load(tmp_path, bb)
    assert back.blocks == 2 and back.depth_pool == lp.DEPTH_POOL and torch.equal(back.weight, w)
    assert lp.load(tmp_path / "none", bb) is None  # no prior: plain noise
    lp.LeakPrior(w, blocks=3).save(tmp_path)  # 32 columns cannot be 8 channels x 3 x 3 blocks
    with pytest.raises(HandlesError, match=r"--model: .*leak_prior.safetensors: expected a weight of shape \(129, 72\)"):
        lp.load(tmp_path, bb)
    (tmp_path / lp.PRIOR_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(HandlesError, match="is not a readable leak prior"):
        lp.load(tmp_path, bb)


def test_leak_prior_command_copies_the_model_and_adds_its_prior(tmp_path, capsys):
    pytest.importorskip("mitsuba")
    from diffusion_handles.cli import main
    from diffusion_handles.world import model_path
    from diffusion_handles.world.dataset import build_dataset

    data = build_dataset(tmp_path / "train.npz", range(6), size=128, spp=4, workers=1)
    out = tmp_path / "m"
    assert main(["world", "leak-prior", "--data", str(data), "--blocks", "3", "--out", str(out)]) == 2
    assert "--blocks: expected a divisor of the latent grid 32x32" in capsys.readouterr().err and not out.exists()
    assert main(["world", "leak-prior", "--data", str(data), "--holdout", "1", "--out", str(out)]) == 2
    assert "--holdout: expected a share in [0, 1), got 1.0" in capsys.readouterr().err and not out.exists()
    assert main(["world", "leak-prior", "--data", str(data), "--blocks", "2", "--holdout", "0.5", "--out", str(out)]) == 0
    assert "of the block means' variance on the held-out 0.5" in capsys.readouterr().out
    shipped = sorted(str(f.relative_to(model_path())) for f in model_path().rglob("*") if f.is_file())
    written = sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.is_file())
    assert sorted(set(shipped) | {lp.PRIOR_FILE}) == written
    from diffusion_handles.diffusion.backbone import Backbone

    assert lp.load(out, Backbone.from_pretrained(out)).blocks == 2
    import json

    before, after = (json.loads((f / "training.json").read_text())["history"] for f in (model_path(), out))
    fit_record = after[-1]["stages"]["leak_prior"]
    assert after[:-1] == before and fit_record["images"] == 6 and "heldout_r2" in fit_record  # the fit is on record
    assert main(["world", "leak-prior", "--data", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "m2")]) == 2
    assert "--data: file not found" in capsys.readouterr().err and not (tmp_path / "m2").exists()


def test_the_shipped_model_follows_the_named_side_of_the_sun(bb):
    """The shipped model with its prior: on the same noise and depth, a caption naming the sun in
    front (lighting the back wall) gives a brighter image than one naming it behind the wall
    (model version 2.8: 0.52 against 0.27 mean luminance over 8 held-out scenes), and the light
    words are single tokens of its vocabulary."""
    from diffusion_handles.world import model_path
    from diffusion_handles.world.dataset import HELDOUT_SEED0, render_seed
    from diffusion_handles.world.evaluate import generate

    pytest.importorskip("mitsuba")
    prior = lp.load(model_path(), bb)
    assert prior is not None and prior.light_sides == 6
    assert all(len(bb.tokenizer(w, add_special_tokens=False).input_ids) == 1 for w in ("lit", "front", "back", "left"))
    r = render_seed((HELDOUT_SEED0 + 3, 128, 4))
    depth = torch.from_numpy(r["depth"].astype(np.float32))[None, None]
    base = r["caption"].rsplit(" lit from the ", 1)[0]
    luma = {side: float(generate(bb, f"{base} lit from the {side}", depth, seed=5, steps=10, prior=prior).mean())
            for side in ("front left", "back left")}
    print(luma)
    assert luma["front left"] > luma["back left"] + 0.1
