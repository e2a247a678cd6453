"""Metric code on cases with known answers (synthetic images with distinct colours)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffusion_handles.bench.metrics import (
    LPIPS,
    PSNR_CAP,
    bootstrap_ci,
    cycle_l1,
    edit_metrics,
    iou,
    lpips_status,
    masked_psnr,
    masked_ssim,
    segment_object,
)
from diffusion_handles.errors import HandlesError

H = W = 32


def _scene():
    """Background with a floor gradient; a red-and-white striped square at two places."""
    rng = np.random.default_rng(0)
    bg = np.zeros((H, W, 3))
    bg[: H // 2] = (0.55, 0.56, 0.58)  # wall
    bg[H // 2 :] = (0.55, 0.35, 0.18)  # floor
    bg += rng.uniform(-0.02, 0.02, bg.shape)
    src, gt = np.zeros((H, W), bool), np.zeros((H, W), bool)
    src[8:16, 4:12] = True
    gt[14:24, 15:25] = True

    def paint(mask):
        img = bg.copy()
        ys, xs = np.nonzero(mask)
        stripe = (ys % 2 == 0)[:, None]
        img[ys, xs] = np.where(stripe, (0.85, 0.12, 0.10), (0.95, 0.95, 0.93))
        return (img.clip(0, 1) * 255 + 0.5).astype(np.uint8)

    return paint(src), paint(gt), (bg.clip(0, 1) * 255 + 0.5).astype(np.uint8), src, gt


def _examples(inp, gt, clean, src, mgt):
    return [(gt, mgt), (inp, src), (clean, np.zeros_like(src))]


def test_output_equal_to_ground_truth_is_perfect():
    inp, gt, clean, src, mgt = _scene()
    m = edit_metrics(gt, gt, mgt, src, _examples(inp, gt, clean, src, mgt))
    assert m["iou"] == 1.0
    assert m["psnr_obj"] == PSNR_CAP and m["psnr_bg"] == PSNR_CAP
    assert m["ssim_obj"] == pytest.approx(1.0) and m["ssim_bg"] == pytest.approx(1.0)


def test_output_equal_to_input_scores_the_overlap_of_old_and_new_place():
    inp, gt, clean, src, mgt = _scene()
    m = edit_metrics(inp, gt, mgt, src, _examples(inp, gt, clean, src, mgt))
    assert m["iou"] == pytest.approx(iou(src, mgt))
    assert m["iou"] < 0.1
    assert m["psnr_bg"] == PSNR_CAP  # background outside both places is untouched
    assert m["psnr_obj"] < 20


def test_missing_object_gives_iou_zero():
    inp, gt, clean, src, mgt = _scene()
    m = edit_metrics(clean, gt, mgt, src, _examples(inp, gt, clean, src, mgt))
    assert m["iou"] == 0.0


def test_segmentation_ignores_small_colour_noise():
    inp, gt, clean, src, mgt = _scene()
    rng = np.random.default_rng(1)
    noisy = np.clip(gt.astype(int) + rng.integers(-6, 7, gt.shape), 0, 255).astype(np.uint8)
    seg = segment_object(noisy, _examples(inp, gt, clean, src, mgt))
    assert iou(seg, mgt) > 0.95


def test_iou_edge_cases_and_shape_errors():
    a = np.zeros((4, 4), bool)
    assert iou(a, a) == 1.0
    b = a.copy()
    b[0, 0] = True
    assert iou(a, b) == 0.0
    with pytest.raises(HandlesError, match="pred"):
        iou(np.zeros((3, 4), bool), a)


def test_psnr_known_value_and_empty_region():
    t = np.full((8, 8, 3), 0.5)
    o = t + 0.1
    assert masked_psnr(o, t, np.ones((8, 8), bool)) == pytest.approx(20.0)
    assert masked_psnr(o, t, np.zeros((8, 8), bool)) is None
    assert masked_ssim(o, t, np.zeros((8, 8), bool)) is None
    with pytest.raises(HandlesError, match="output"):
        masked_psnr(np.zeros((8, 7, 3)), t, np.ones((8, 8), bool))


def test_cycle_l1_is_ten_times_mean_absolute_error():
    i = np.full((8, 8, 3), 0.5)
    assert cycle_l1(i, i) == 0.0
    assert cycle_l1(i + 0.1, i) == pytest.approx(1.0)
    region = np.zeros((8, 8), bool)
    region[:2] = True
    c = i.copy()
    c[:2] += 0.2
    assert cycle_l1(c, i, region) == pytest.approx(2.0)
    assert cycle_l1(c, i) == pytest.approx(0.5)


def test_bootstrap_ci():
    ci = bootstrap_ci([2.0, 2.0, 2.0, None, float("nan")])
    assert ci == {"mean": 2.0, "lo": 2.0, "hi": 2.0, "n": 3}
    v = np.random.default_rng(0).normal(1.0, 0.5, 200)
    ci = bootstrap_ci(list(v))
    assert ci["lo"] < ci["mean"] < ci["hi"]
    assert ci["hi"] - ci["lo"] == pytest.approx(2 * 1.96 * 0.5 / math.sqrt(200), rel=0.3)
    assert bootstrap_ci([None])["mean"] is None


def test_lpips_is_never_computed_without_real_weights():
    ok, why = lpips_status()
    if ok:
        pytest.skip("real LPIPS weights are installed here")
    assert why
    with pytest.raises(HandlesError, match="lpips"):
        LPIPS()


def _shadow_scene():
    """Grey textured floor; the input has a shadow at rows 4-8, the truth at rows 20-24 instead."""
    rng = np.random.default_rng(1)
    floor = 0.6 + rng.uniform(-0.1, 0.1, (H, W, 1)) * np.ones((1, 1, 3))
    src, gt = floor.copy(), floor.copy()
    src[4:8, 4:20] *= 0.5
    gt[20:24, 4:20] *= 0.5
    no = np.zeros((H, W), bool)
    return src, gt, no


def test_shadow_regions_split_by_the_sign_of_the_truth_change():
    from diffusion_handles.bench.metrics import shadow_regions

    src, gt, no = _shadow_scene()
    old, new = shadow_regions(gt, src, no, no)
    assert old[4:8, 4:20].all() and old.sum() == 4 * 16  # the truth is brighter where the old shadow was
    assert new[20:24, 4:20].all() and new.sum() == 4 * 16


def test_shadow_psnrs_score_a_kept_old_shadow_and_a_missing_new_one():
    src, gt, no = _shadow_scene()
    ex = [(gt, no), (src, no), (gt, no)]
    perfect = edit_metrics(gt, gt, no, no, ex, source=src)
    assert perfect["psnr_shadow_old"] == PSNR_CAP and perfect["psnr_shadow_new"] == PSNR_CAP
    only_removed = src.copy()
    only_removed[4:8, 4:20] = gt[4:8, 4:20]  # old shadow gone, new one not drawn
    m = edit_metrics(only_removed, gt, no, no, ex, source=src)
    assert m["psnr_shadow_old"] == PSNR_CAP and m["psnr_shadow_new"] < 25
    m = edit_metrics(src, gt, no, no, ex, source=src)  # the input kept: both wrong
    assert m["psnr_shadow_old"] < 25 and m["psnr_shadow_new"] < 25


def test_sharpness_is_one_for_the_truth_below_for_a_blur_above_for_noise():
    from scipy.ndimage import uniform_filter

    from diffusion_handles.bench.metrics import sharpness_ratio

    rng = np.random.default_rng(2)
    gt = rng.uniform(0.2, 0.8, (H, W, 3))
    region = np.zeros((H, W), bool)
    region[8:24, 8:24] = True
    assert sharpness_ratio(gt, gt, region) == pytest.approx(1.0)
    blurred = uniform_filter(gt, size=(3, 3, 1), mode="nearest")
    assert sharpness_ratio(blurred, gt, region) < 0.6
    noisy = np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1)
    assert sharpness_ratio(noisy, gt, region) > 1.1
    assert sharpness_ratio(gt, gt, np.zeros((H, W), bool)) is None
    flat = np.full((H, W, 3), 0.5)
    assert sharpness_ratio(flat, flat, region) is None
