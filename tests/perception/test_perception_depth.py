"""Depth: conversions to z-depth, the alignment fit, and each model family loaded from a folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_handles.errors import HandlesError
from diffusion_handles.perception.depth import (
    METRIC_DEPTH,
    RELATIVE_DEPTH,
    RELATIVE_DISPARITY,
    DepthConfig,
    DepthEstimator,
    align_scale_shift,
    kind_of_model,
    to_z_depth,
)


def test_metric_depth_passes_through():
    raw = torch.tensor([[[[0.5, 2.0], [3.25, 7.0]]]])
    assert torch.equal(to_z_depth(raw, METRIC_DEPTH), raw)
    assert to_z_depth(torch.tensor([[[[-1.0, 0.0]]]]), METRIC_DEPTH).min() > 0  # never <= 0


def test_relative_disparity_maps_range_to_near_far_in_inverse_depth():
    # a ramp of disparity: the largest disparity is nearest
    raw = torch.linspace(0, 1, 101).reshape(1, 1, 1, 101)
    z = to_z_depth(raw, RELATIVE_DISPARITY, near=2.0, far=8.0, quantiles=(0.0, 1.0))
    assert z[0, 0, 0, -1].item() == pytest.approx(2.0)
    assert z[0, 0, 0, 0].item() == pytest.approx(8.0)
    assert bool((z[..., 1:] < z[..., :-1]).all())  # monotone: more disparity, nearer
    inv = 1.0 / z.flatten()
    assert torch.allclose(inv[1:] - inv[:-1], (inv[1:] - inv[:-1]).mean().expand(100), atol=1e-6)  # linear in 1/z
    # affine invariance: a scaled and shifted disparity gives the same depth
    assert torch.allclose(to_z_depth(3 * raw + 7, RELATIVE_DISPARITY, near=2, far=8, quantiles=(0, 1)), z, atol=1e-5)


def test_relative_depth_is_linear_and_constant_maps_to_geometric_middle():
    raw = torch.linspace(5, 6, 11).reshape(1, 1, 1, 11)
    z = to_z_depth(raw, RELATIVE_DEPTH, near=1, far=3, quantiles=(0, 1))
    assert torch.allclose(z.flatten(), torch.linspace(1, 3, 11), atol=1e-6)
    const = to_z_depth(torch.full((1, 1, 4, 4), 0.3), RELATIVE_DISPARITY, near=1, far=9)
    assert torch.allclose(const, torch.full_like(const, 3.0))


@pytest.mark.parametrize("space", ["depth", "disparity"])
def test_alignment_recovers_known_scale_and_shift(space):
    g = torch.Generator().manual_seed(0)
    target = 1.0 + 4.0 * torch.rand(1, 1, 24, 32, generator=g, dtype=torch.float64)
    s_true, t_true = 2.5, 0.3
    if space == "depth":
        source = (target - t_true) / s_true
    else:
        source = 1.0 / ((1.0 / target - t_true * 0.01) / s_true)
        t_true *= 0.01
    valid = torch.ones_like(target, dtype=torch.bool)
    valid[..., 8:16, 10:20] = False
    source[~valid] = 123.0  # garbage inside the mask must not affect the fit
    aligned, s, t = align_scale_shift(source, target, valid, space=space)
    assert s == pytest.approx(s_true, rel=1e-6)
    assert t == pytest.approx(t_true, abs=1e-8)
    assert torch.allclose(aligned[valid], target[valid], rtol=1e-6)


def test_alignment_degenerate_falls_back_to_median_ratio():
    target = torch.full((1, 1, 4, 4), 6.0)
    source = torch.full((1, 1, 4, 4), 2.0)  # constant source: the 2x2 system is singular
    aligned, s, t = align_scale_shift(source, target, torch.ones_like(target, dtype=torch.bool))
    assert (s, t) == (pytest.approx(3.0), 0.0)
    assert torch.allclose(aligned, target)


@pytest.mark.parametrize(
    "name, kind",
    [("dpt", RELATIVE_DISPARITY), ("depth_anything", RELATIVE_DISPARITY),
     ("depth_anything_metric", METRIC_DEPTH), ("zoedepth", METRIC_DEPTH)],
)
def test_each_family_loads_from_folder_and_gives_image_sized_z_depth(tiny_models, photo, name, kind):
    est = DepthEstimator.load(DepthConfig(model=tiny_models[name]))
    assert est.kind == kind
    out = est.estimate(photo)  # 40x56 image, model resolution 28..64
    assert out.depth.shape == (1, 1, 40, 56) and out.raw.shape == (1, 1, 40, 56)
    assert out.kind == kind and out.model == tiny_models[name]
    assert bool(torch.isfinite(out.depth).all()) and float(out.depth.min()) > 0
    if kind == METRIC_DEPTH:
        assert torch.allclose(out.depth, out.raw.clamp_min(1e-3))


def test_kind_override_and_unknown_family():
    class Cfg:
        model_type = "mystery"

    with pytest.raises(HandlesError, match="--depth-kind"):
        kind_of_model(Cfg())
    with pytest.raises(HandlesError, match="--depth-kind"):
        DepthConfig(kind="disparity")
    # the --depth-kind words of files name the estimator kinds too
    assert DepthConfig(kind="inverse").kind == RELATIVE_DISPARITY and DepthConfig(kind="z").kind == METRIC_DEPTH
    with pytest.raises(HandlesError, match="--depth-range"):
        DepthConfig(near=5, far=1)


def test_zoedepth_padding_is_cropped(tiny_models, photo, monkeypatch):
    """ZoeDepth predicts depth for the reflect-padded image; only the image's own part is kept."""
    from types import SimpleNamespace

    est = DepthEstimator.load(DepthConfig(model=tiny_models["zoedepth"]))
    h, w = photo.shape[-2:]
    ph, pw = int(np.sqrt(h / 2) * 3), int(np.sqrt(w / 2) * 3)  # 13, 15 for 40x56
    interior = torch.linspace(1, 2, w).expand(h, w)
    padded = torch.full((1, h + 2 * ph, w + 2 * pw), 100.0)
    padded[0, ph:ph + h, pw:pw + w] = interior
    est.model = type("FakeZoe", (), {"config": est.model.config, "dtype": torch.float32,
                                     "__call__": lambda self, **kw: SimpleNamespace(predicted_depth=padded)})()
    out = est.estimate(photo)
    assert torch.allclose(out.raw[0, 0], interior, atol=1e-5)


def test_huge_relative_maps_convert():
    raw = torch.rand(1, 1, 1100, 1000, generator=torch.Generator().manual_seed(0))
    z = to_z_depth(raw, RELATIVE_DISPARITY, near=1, far=10)
    assert z.shape == raw.shape and float(z.min()) >= 1 - 1e-4 and float(z.max()) <= 10 + 1e-3
