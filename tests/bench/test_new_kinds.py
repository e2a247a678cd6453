"""Benchmark kinds camera / remove / multi: cases with ground truth, scores, and the CLI route."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffusion_handles.bench.cases import bench_seeds
from diffusion_handles.bench.new_kinds import (
    KindCase,
    _edits_of,
    kind_metrics,
    make_kind_case,
    warp_only_kind,
)
from diffusion_handles.cli import main
from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry import Camera, camera_move, compute_camera_move

SEED = bench_seeds(1)[0]


def _t(case):
    img = torch.from_numpy(case.image.astype(np.float32) / 255).permute(2, 0, 1)[None]
    d = torch.from_numpy(case.depth.astype(np.float32))[None, None]
    masks = [torch.from_numpy(m.astype(np.float32))[None, None] for m in case.masks]
    return img, d, masks


def test_camera_case_ground_truth_matches_the_moved_geometry(tmp_path):
    case = make_kind_case("camera", SEED, size=32, spp=2)
    assert case.kind == "camera" and case.masks.shape == (0, 32, 32)
    d = torch.from_numpy(case.depth.astype(np.float64))[None, None]
    geom = compute_camera_move(d, camera_move(_edits_of(case)[0]), Camera(32, 32, case.fov_deg))
    z = geom.zbuffer[0, 0].numpy()
    ok = np.isfinite(z)
    # the rendered moved camera and the lifted-and-moved depth agree far better than the input does
    assert np.median(np.abs(z[ok] - case.gt_depth[ok])) < 0.3 * np.median(np.abs(case.depth - case.gt_depth))
    back = KindCase.load(case.save(tmp_path / case.case_id))
    assert np.array_equal(back.gt, case.gt) and back.edits == case.edits


def test_remove_case_is_the_render_without_the_object():
    case = make_kind_case("remove", SEED, size=32, spp=2)
    k = case.stats["object_index"]
    assert case.masks.shape[0] == 1 and case.masks[0].sum() == case.stats["object_pixels"]
    assert np.abs(case.gt_depth - case.depth)[case.masks[0]].mean() > 0.05  # the object's place shows the background
    np.testing.assert_allclose(case.clean_depth, case.gt_depth)
    from diffusion_handles.world.scene import LIGHT_SIDES

    assert isinstance(k, int) and any(case.prompt.endswith(f" wall lit from the {side}") for side in LIGHT_SIDES)
    img, d, masks = _t(case)
    filled, preview = warp_only_kind(case, img, d, masks)
    assert filled.shape == img.shape
    m = kind_metrics(case.gt, case)
    assert m["psnr"] == 100.0


def test_multi_case_moves_two_objects():
    case = make_kind_case("multi", SEED, size=32, spp=2)
    assert case.masks.shape[0] == 2 and len(case.edits) == 2
    assert len({e["object_index"] for e in case.edits}) == 2
    assert not np.array_equal(case.gt, case.image)
    with pytest.raises(HandlesError, match="--kinds"):
        make_kind_case("sideways", SEED)


def test_bench_kinds_cli_and_bad_kind(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["bench", "--kinds", "nope", "--out", str(out), "--quiet"]) == 2
    assert "--kinds" in capsys.readouterr().err and not out.exists()
    assert main(["bench", "--kinds", "remove", "--methods", "warp_only", "--scenes", "1", "--size", "32",
                 "--spp", "2", "--quiet", "--out", str(out)]) == 0
    res = json.loads((out / "kinds_results.json").read_text())
    agg = res["aggregate"]["remove"]
    assert agg["warp_only"]["n"] == 1 and agg["input"]["psnr"] is not None
    assert agg["warp_only"]["fwd_eq"] == 0 and agg["warp_only"]["seconds"] >= 0  # its cost: no UNet evaluation
    # resumable: the same command reuses the folder
    assert main(["bench", "--kinds", "remove", "--methods", "warp_only", "--scenes", "1", "--size", "32",
                 "--spp", "2", "--quiet", "--out", str(out)]) == 0
    # a corrupt record is named in a note and recomputed, not a crash
    (rec_path,) = (out / "kinds_edits").glob("remove_*.json")
    rec_path.write_text('{"methods": ')
    capsys.readouterr()
    assert main(["bench", "--kinds", "remove", "--methods", "warp_only", "--scenes", "1", "--size", "32",
                 "--spp", "2", "--quiet", "--out", str(out)]) == 0
    assert f"{rec_path} is corrupt" in capsys.readouterr().err
    assert "warp_only" in json.loads(rec_path.read_text())["methods"]
