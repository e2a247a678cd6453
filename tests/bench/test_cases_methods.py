"""Benchmark cases (seeds, edit sampling, ground truth) and the methods registry."""

from __future__ import annotations

import numpy as np
import pytest

from diffusion_handles.bench.cases import (
    BENCH_SEED0,
    EDIT_KINDS,
    Case,
    bench_seeds,
    draw_edit,
    make_case,
)
from diffusion_handles.bench.methods import METHODS, record_all_guidance, resolve_methods
from diffusion_handles.errors import HandlesError


def test_bench_seeds_are_held_out_and_avoid_redraw_seeds():
    from diffusion_handles.world.dataset import HELDOUT_SEED0

    seeds = bench_seeds(120)
    assert seeds[0] == BENCH_SEED0 >= HELDOUT_SEED0
    assert len(set(seeds)) == 120
    assert all(s % 1000 >= 100 for s in seeds)
    assert bench_seeds(3, 998) == [998, 999, 1100]


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_draw_edit_kinds(kind):
    w2c = np.eye(4)
    e = draw_edit(np.random.default_rng(0), kind, w2c, np.array([0.0, 0.7, -4.0]))
    if kind == "translate":
        assert e.translate[1] == 0.0 and e.rotate_deg == 0 and e.scale == 1
        assert abs(e.translate[2]) >= 0.3  # changes depth
    elif kind == "rotate_vertical":
        assert e.rotate_axis == (0.0, 1.0, 0.0) and 20 <= abs(e.rotate_deg) <= 90
    elif kind == "rotate_tilted":
        assert abs(e.rotate_axis[1]) < 0.95 and 15 <= abs(e.rotate_deg) <= 35
    else:
        assert e.scale != 1.0
        # the floor contact (pivot height 0.7 above the floor) stays on the floor
        assert e.translate[1] == pytest.approx(-(1 - e.scale) * 0.7)
    with pytest.raises(HandlesError, match="kind"):
        draw_edit(np.random.default_rng(0), "shear", w2c, np.zeros(3))


def test_make_case_ground_truth_and_round_trip(tmp_path):
    from diffusion_handles.bench.metrics import iou, segment_object

    case = make_case(bench_seeds(1)[0], size=32, spp=8)
    assert case.image.shape == case.gt.shape == case.clean.shape == (32, 32, 3)
    assert case.mask_src.any() and case.mask_gt.sum() >= 30
    assert case.stats["holes_fraction"] <= 0.06
    assert (case.depth > 0).all() and (case.clean_depth >= case.depth - 1e-4).all()  # removing can only reveal farther
    ex = [(case.gt, case.mask_gt), (case.image, case.mask_src), (case.clean, np.zeros_like(case.mask_src))]
    assert iou(segment_object(case.gt, ex), case.mask_gt) > 0.97
    assert iou(segment_object(case.clean, ex), case.mask_gt) == 0.0
    assert iou(segment_object(case.image, ex), case.mask_gt) == pytest.approx(iou(case.mask_src, case.mask_gt), abs=0.03)
    back = Case.load(case.save(tmp_path / case.case_id))
    assert back.edit == case.edit and back.caption == case.caption
    np.testing.assert_array_equal(back.gt, case.gt)
    np.testing.assert_array_equal(back.mask_gt, case.mask_gt)
    np.testing.assert_allclose(back.pivot, case.pivot)


def test_methods_are_config_variants_of_one_pipeline():
    n = 50
    ours = METHODS["ours"].guidance(n)
    assert METHODS["layers_cyclic"].guidance(n) == ours
    assert METHODS["stop38"].guidance(n).resolved_guide_until(n) == ours.resolved_guide_until(n) == 38
    assert METHODS["stop20"].guidance(10).resolved_guide_until(10) == 4
    assert METHODS["depth_only"].guidance(n).schedule(n, 3) == [()] * n
    assert METHODS["layer2_only"].guidance(n).schedule(n, 3)[0] == (1,)
    assert METHODS["layer3_only"].guidance(n).schedule(n, 3)[0] == (2,)
    assert METHODS["layers_both"].guidance(n).schedule(n, 3)[5] == (1, 2)
    assert METHODS["wb_low"].guidance(n).w_background < ours.w_background < METHODS["wb_high"].guidance(n).w_background
    with pytest.raises(HandlesError, match="not a diffusion"):
        METHODS["warp_only"].guidance(n)
    # the one inversion records every (layer, step) any method guides
    plan = record_all_guidance(n).schedule(n, 3)
    for m in METHODS.values():
        if m.kind != "diffusion":
            continue
        try:
            g = m.guidance(n)
        except HandlesError:
            continue  # a field this build lacks (reported per edit)
        for step, layers in enumerate(g.schedule(n, 3)):
            assert set(layers) <= set(plan[step])


def test_resolve_methods():
    assert [m.name for m in resolve_methods(None)] == list(METHODS)
    assert [m.name for m in resolve_methods(["warp_only", "ours"])] == ["ours", "warp_only"]
    with pytest.raises(HandlesError, match="--methods"):
        resolve_methods(["nope"])
