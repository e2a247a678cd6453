"""The benchmark's new regions (full, effects, disocclusion) and its estimated-depth track."""

from __future__ import annotations

import numpy as np
import pytest

from diffusion_handles.bench.depth_noise import degrade_depth
from diffusion_handles.bench.methods import METHODS
from diffusion_handles.bench.metrics import PSNR_CAP, edit_metrics, effects_region


def _scene():
    h = w = 32
    src = np.full((h, w, 3), 0.5)
    gt = src.copy()
    m_src = np.zeros((h, w), bool)
    m_src[10:16, 4:10] = True
    m_gt = np.zeros((h, w), bool)
    m_gt[10:16, 20:26] = True
    src[m_src] = (1.0, 0.0, 0.0)
    gt[m_gt] = (1.0, 0.0, 0.0)
    gt[16:18, 20:26] = 0.3  # the moved object's contact shadow: an effect
    src[16:18, 4:10] = 0.3  # the old shadow
    return src, gt, m_src, m_gt


def test_effects_region_is_what_the_truth_changes_outside_both_objects():
    src, gt, m_src, m_gt = _scene()
    eff = effects_region(gt, src, m_gt, m_src)
    expect = np.zeros_like(m_src)
    expect[16:18, 20:26] = True
    expect[16:18, 4:10] = True
    np.testing.assert_array_equal(eff, expect)


def test_new_regions_score_truth_and_input_as_expected():
    src, gt, m_src, m_gt = _scene()
    examples = [(gt, m_gt), (src, m_src), (np.full_like(src, 0.5), np.zeros_like(m_src))]
    perfect = edit_metrics(gt, gt, m_gt, m_src, examples)
    assert perfect["psnr_full"] == PSNR_CAP and perfect["psnr_effects"] == PSNR_CAP
    assert perfect["psnr_disocc"] == PSNR_CAP
    lazy = edit_metrics(src, gt, m_gt, m_src, examples)  # the unedited input
    assert lazy["psnr_effects"] < 20 and lazy["psnr_disocc"] < 10
    assert lazy["psnr_full"] < perfect["psnr_full"]


def test_degraded_depth_blurs_edges_drifts_smoothly_and_drops_thin_structures():
    h = w = 128
    d = np.full((h, w), 10.0, np.float32)
    d[40:90, 40:90] = 4.0  # a box
    d[10:100, 110:111] = 3.0  # a 1-pixel pole
    out = degrade_depth(d, seed=3)
    assert out.shape == d.shape and out.dtype == np.float32 and np.isfinite(out).all() and (out > 0).all()
    np.testing.assert_array_equal(out, degrade_depth(d, seed=3))  # deterministic per seed
    assert not np.array_equal(out, degrade_depth(d, seed=4))
    assert abs(np.median(out[10:100, 110]) - 10.0) < 1.5  # the pole is gone
    assert 4.0 * 0.8 < np.median(out[50:80, 50:80]) < 4.0 * 1.25  # the box stays, a few % off
    edge = out[65, 36:45]  # across the box's left edge: a ramp, not a step
    assert np.sum((edge > 4.5) & (edge < 9.0)) >= 2
    flat = out[100:128, 0:30]
    assert flat.std() / flat.mean() < 0.1  # drift is smooth and small


def test_paper_and_default_methods_differ_as_documented():
    paper, ours, depth_only = METHODS["paper"].guidance(50), METHODS["ours"].guidance(50), METHODS["depth_only"].guidance(50)
    assert paper.mode == "paper" and not paper.composite
    assert ours.mode == "normalized" and ours.composite
    assert depth_only.grad_steps == 0 and not depth_only.composite and depth_only.identity_transfer is None
    assert ours.resolved_transfer_step(50) == 35 and paper.identity_transfer is None
    assert ours.transfer_source == "pixels"
    assert METHODS["ours_no_transfer"].guidance(50).identity_transfer is None
    latent = METHODS["ours_latent_transfer"].guidance(50)
    assert latent.transfer_source == "latent" and latent.resolved_transfer_step(50) == 35


def test_degrade_depth_rejects_bad_input():
    with pytest.raises(ValueError, match="depth"):
        degrade_depth(np.zeros((4, 4)))
