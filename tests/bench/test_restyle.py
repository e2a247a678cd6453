"""Benchmark kind ``restyle`` (issue 39): cases, scores, the four methods and the CLI route."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from diffusion_handles.bench.cases import bench_seeds
from diffusion_handles.bench.metrics import iou
from diffusion_handles.bench.new_kinds import KIND_METHODS, NEW_KINDS, kinds_methods, make_kind_case
from diffusion_handles.bench.restyle import (
    PATTERN_SHARE,
    RestyleCase,
    draw_look,
    mean_colour_error,
    new_caption,
    object_phrase,
    pattern_agreement,
    restyle_metrics,
)
from diffusion_handles.cli import main
from diffusion_handles.errors import HandlesError
from diffusion_handles.world.scene import COLOURS, PATTERNS

SEEDS = bench_seeds(3)


@pytest.fixture(scope="module")
def cases():
    return [make_kind_case("restyle", s, size=32, spp=2) for s in SEEDS]


def test_the_other_kinds_keep_their_random_streams():
    # the stream of a kind is default_rng([seed, 12, NEW_KINDS.index(kind)]): restyle is appended
    assert NEW_KINDS[:3] == ("camera", "remove", "multi") and NEW_KINDS[3] == "restyle"
    assert KIND_METHODS["restyle"] == ("ours", "warp_only", "depth_only", "chain")


def test_cases_are_deterministic_and_always_change_the_colour(cases, tmp_path):
    again = make_kind_case("restyle", SEEDS[0], size=32, spp=2)
    assert again.edits == cases[0].edits and again.restyle == cases[0].restyle
    assert np.array_equal(again.gt, cases[0].gt)
    for case in cases:
        old, new = case.stats["old"], case.stats["new"]
        assert new["colour"] != old["colour"] and new["colour"] in COLOURS and new["pattern"] in PATTERNS
        assert case.restyle != case.restyle_words
        assert case.prompt.count(case.restyle_words) == 1  # the words name one object only
        assert new_caption(case) == case.prompt.replace(case.restyle_words, case.restyle)
        assert case.masks.shape == (1, 32, 32) and case.mask_gt.sum() >= 30
        assert case.edits[0]["object_index"] == case.stats["object_index"]
    back = RestyleCase.load(cases[0].save(tmp_path / "c"))
    assert np.array_equal(back.gt, cases[0].gt) and np.array_equal(back.mask_gt, cases[0].mask_gt)
    assert (back.restyle, back.restyle_words, back.edits) == (cases[0].restyle, cases[0].restyle_words, cases[0].edits)


def test_draw_look_changes_the_colour_always_and_the_pattern_in_a_share():
    rng = np.random.default_rng(0)
    draws = [(c, p, *draw_look(rng, c, p)) for c in COLOURS for p in PATTERNS for _ in range(60)]
    assert all(nc != c for c, _, nc, _ in draws)
    share = np.mean([np_ != p for _, p, _, np_ in draws])
    assert abs(share - PATTERN_SHARE) < 0.05


def test_object_phrase_follows_the_caption_article():
    from diffusion_handles.world.scene import SceneObject

    eye = np.eye(4).tolist()
    assert object_phrase(SceneObject("cube", "orange", "striped", eye)) == "an orange striped cube"
    assert object_phrase(SceneObject("sphere", "red", "solid", eye)) == "a red sphere"


def test_truth_differs_from_the_plain_moved_render_inside_the_object(cases):
    from diffusion_handles.geometry import HandleEdit
    from diffusion_handles.world.render import object_pivot, render, scene_for_seed

    case = cases[0]
    k = case.stats["object_index"]
    scene = scene_for_seed(case.seed, 32, 32)
    pivot = object_pivot(case.depth, case.masks[0], scene)
    edit = HandleEdit.from_dict({a: b for a, b in case.edits[0].items() if a != "object_index"})
    plain = render(scene.with_object_edit(k, edit, pivot), spp=2, seed=case.seed)
    np.testing.assert_array_equal(plain.masks[k], case.mask_gt)  # the same geometry ...
    np.testing.assert_allclose(plain.depth, case.gt_depth)
    diff = np.abs(plain.rgb.astype(float) - case.gt.astype(float)).max(-1)
    assert diff[case.mask_gt].mean() > 20  # ... another look


def test_colour_error_is_zero_for_the_truth_and_grows_with_a_shift():
    rng = np.random.default_rng(1)
    truth = rng.uniform(0.2, 0.6, (24, 24, 3))
    mask = np.zeros((24, 24), bool)
    mask[6:18, 4:20] = True
    assert mean_colour_error(truth, truth, mask) == 0.0
    errs = []
    for d in (5, 20, 60):
        shifted = truth.copy()
        shifted[mask, 0] += d / 255.0
        errs.append(mean_colour_error(shifted, truth, mask))
    np.testing.assert_allclose(errs, [5, 20, 60], rtol=1e-9)
    out = truth.copy()
    out[~mask] = 0  # outside the object does not count
    assert mean_colour_error(out, truth, mask) == pytest.approx(0.0, abs=1e-9)
    assert mean_colour_error(truth, truth, np.zeros_like(mask)) is None


def _striped(colour, bg=(0.5, 0.5, 0.5), size=40):
    img = np.tile(np.asarray(bg, float), (size, size, 1))
    yy, xx = np.mgrid[:size, :size]
    mask = (yy - 20) ** 2 + (xx - 20) ** 2 < 14**2
    stripes = (yy // 3) % 2 == 0
    img[mask] = np.asarray(colour, float)
    img[mask & stripes] = 0.95
    return img, mask


def test_pattern_agreement_is_one_for_the_same_pattern_and_lower_for_a_shuffled_one():
    img, mask = _striped((0.8, 0.1, 0.1))
    assert pattern_agreement(img, img, mask) == pytest.approx(1.0)
    shuffled = img.copy()
    rng = np.random.default_rng(0)
    shuffled[mask] = rng.permutation(img[mask])
    assert pattern_agreement(shuffled, img, mask) < 0.6
    # solid against solid: the same (empty) pattern whatever the colours; the silhouette's edge
    # against the background is left out
    solid_red, solid_blue = img.copy(), img.copy()
    solid_red[mask], solid_blue[mask] = (0.8, 0.1, 0.1), (0.1, 0.2, 0.9)
    assert pattern_agreement(solid_blue, solid_red, mask) == pytest.approx(1.0)
    assert pattern_agreement(solid_red, img, mask) < pattern_agreement(img, img, mask)
    assert pattern_agreement(img, img, np.zeros_like(mask)) is None


def test_iou_of_known_masks_and_the_references(cases):
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[0:4, 0:4] = True
    b[0:4, 2:6] = True  # 8 shared of 24
    assert iou(a, b) == pytest.approx(1 / 3)
    case = cases[0]
    truth = restyle_metrics(case.gt, case, case.mask_gt)
    assert truth["psnr_obj"] == 100.0 and truth["colour_err_obj"] == 0.0 and truth["pattern_obj"] == pytest.approx(1.0)
    assert truth["iou_mask"] == 1.0 and truth["iou_obj"] > 0.9  # the colour classifier's ceiling
    moved_away = np.roll(case.mask_gt, 8, axis=1)
    assert restyle_metrics(case.gt, case, moved_away)["iou_mask"] == iou(moved_away, case.mask_gt)
    inp = restyle_metrics(case.image, case)
    assert inp["iou_mask"] is None and inp["colour_err_obj"] > 10 and inp["psnr_obj"] < truth["psnr_obj"]


def test_kinds_methods_per_kind():
    assert kinds_methods(["restyle"], None) == ["ours", "warp_only", "depth_only", "chain"]
    assert kinds_methods(["camera", "restyle"], ["chain", "ours"]) == ["ours", "chain"]
    with pytest.raises(HandlesError, match="chain runs with --kinds restyle"):
        kinds_methods(["camera"], ["chain"])
    with pytest.raises(HandlesError, match="--methods"):
        kinds_methods(["restyle"], ["paper"])


def test_four_methods_run_on_the_tiny_random_model(cases, tmp_path):
    """Every method end to end on a random tiny model (its images are noise; the plumbing is checked)."""
    import torch

    from diffusion_handles.bench.restyle import run_restyle_case
    from diffusion_handles.diffusion.backbone import Backbone
    from diffusion_handles.diffusion.config import preset
    from diffusion_handles.diffusion.random_models import build_backbone_components, tiny_configs
    from diffusion_handles.pipeline import DiffusionHandles

    torch.manual_seed(0)
    pipe = DiffusionHandles(Backbone(build_backbone_components(tiny_configs(), seed=0), model_id="tiny-random"))
    pipe.set_progress_bar_config(disable=True)
    inversion, guidance = preset("default", 2)
    inversion = dataclasses.replace(inversion, method="ddim")
    res = run_restyle_case(cases[0], list(KIND_METHODS["restyle"]), lambda: pipe, inversion, guidance, tmp_path)
    for name in ("ours", "warp_only", "depth_only", "chain"):
        assert res[name]["error"] is None, res[name].get("traceback")
        assert res[name]["psnr_obj"] is not None and res[name]["iou_mask"] is not None
        assert (tmp_path / f"{name}.png").is_file()
    assert res["chain"]["fwd_eq"] > res["ours"]["fwd_eq"] > 0 and res["warp_only"]["fwd_eq"] == 0
    assert (tmp_path / "preview.png").is_file() and (tmp_path / "chain_edit.png").is_file()


def test_bench_kinds_restyle_cli(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["bench", "--kinds", "restyle", "--methods", "paper", "--out", str(out), "--quiet"]) == 2
    assert "--methods" in capsys.readouterr().err and not out.exists()
    assert main(["bench", "--kinds", "camera", "--methods", "chain", "--out", str(out), "--quiet"]) == 2
    assert "chain runs with --kinds restyle" in capsys.readouterr().err and not out.exists()
    assert main(["bench", "--kinds", "restyle", "--methods", "warp_only", "--scenes", "1", "--size", "32",
                 "--spp", "2", "--quiet", "--out", str(out)]) == 0
    res = json.loads((out / "kinds_results.json").read_text())
    agg = res["aggregate"]["restyle"]
    assert set(agg) == {"input", "truth", "warp_only"} and agg["warp_only"]["n"] == 1
    for key in ("psnr", "ssim", "psnr_obj", "ssim_obj", "colour_err_obj", "pattern_obj", "iou_obj"):
        assert agg["warp_only"][key] is not None, key
    assert agg["truth"]["colour_err_obj"] == 0.0
    (rec,) = res["edits"]
    assert rec["restyle"] and rec["restyle_words"] in rec["prompt"]
    names = {p.name for p in (out / "kinds_images" / rec["case_id"]).iterdir()}
    assert {"input.png", "gt.png", "preview.png", "warp_only.png"} <= names
