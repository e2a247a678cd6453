"""3DEditBench in and out: HDF5 layout, the conversion of K and R, T, scoring, and a round trip
(TinyWorld export -> ``handles bench --suite 3deditbench --gt-mask``) on the tinyworld model."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch

from diffusion_handles.bench.editbench3d import (
    EditBenchCase,
    axis_angle,
    camera_from_K,
    handle_edit_from_rt,
    opencv_K,
    read_case,
    rigid_from_rt,
    rt_from_edit,
    score_edit,
    write_case,
)
from diffusion_handles.cli import main
from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry.camera import Camera, lift_at, project
from diffusion_handles.geometry.transform import HandleEdit, rotation_matrix


def _rot(axis, deg) -> np.ndarray:
    return rotation_matrix(axis, deg).numpy()


@pytest.mark.parametrize("axis,deg", [((0, 1, 0), 30.0), ((1, 2, -0.5), -75.0), ((0.3, 0, 1), 179.9999), ((1, 0, 0), 180.0)])
def test_rt_to_handle_edit_is_exact_on_points(axis, deg):
    R = _rot(axis, deg)
    T = np.array([0.3, -0.1, 0.7])
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(50, 3)) + np.array([0, 0, 4.0])
    pivot = pts.mean(0)
    edit = handle_edit_from_rt(R, T, pivot)
    got = edit.resolve(pivot).apply(torch.from_numpy(pts)).numpy()
    np.testing.assert_allclose(got, pts @ R.T + T, atol=1e-9)
    # a HandleEdit about the pivot translates the pivot by exactly `translate`
    np.testing.assert_allclose(np.asarray(edit.translate), R @ pivot + T - pivot, atol=1e-12)
    R2, T2 = rt_from_edit(edit, pivot)
    np.testing.assert_allclose(R2, R, atol=1e-9)
    np.testing.assert_allclose(T2, T, atol=1e-9)
    a, d = axis_angle(R)
    np.testing.assert_allclose(rotation_matrix(a, d).numpy(), R, atol=1e-6)


def test_rigid_from_rt_refuses_non_rotations():
    with pytest.raises(HandlesError, match="R: expected a rotation"):
        rigid_from_rt(np.diag([1.0, 1.0, -1.0]), np.zeros(3))
    with pytest.raises(HandlesError, match="R: expected a rotation matrix"):
        rigid_from_rt(np.diag([1.0, 1.2, 1.0]), np.zeros(3))
    with pytest.raises(HandlesError, match="scale"):
        rt_from_edit(HandleEdit(scale=1.2), (0, 0, 3))


def test_K_conversion_projects_like_opencv():
    h, w, fov = 48, 64, 50.0
    K = opencv_K(fov, h, w)
    win = camera_from_K(K, h, w)
    assert win.box == (0, h, 0, w) and not win.cropped and win.fov_deg == pytest.approx(fov)
    cam = Camera(h, w, win.fov_deg)
    p = np.array([[0.2, -0.3, 2.0], [-0.5, 0.4, 3.5]])
    uv_cv = (K @ p.T).T
    uv_cv = uv_cv[:, :2] / uv_cv[:, 2:]
    uv_ours, _ = project(torch.from_numpy(p), cam)
    np.testing.assert_allclose(uv_ours.numpy() - 0.5, uv_cv, atol=1e-9)  # half a pixel apart, same axes
    back = lift_at(uv_ours, torch.from_numpy(p[:, 2]), cam).numpy()
    np.testing.assert_allclose(back, p, atol=1e-9)


def test_K_off_centre_principal_point_is_a_centred_window_or_refused():
    h = w = 100
    K = np.array([[80.0, 0, 59.5], [0, 80.0, 49.5], [0, 0, 1]])  # cx 10 px right of the centre
    win = camera_from_K(K, h, w)
    y0, y1, x0, x1 = win.box
    assert (y0, y1) == (0, 100) and (x0 + x1) / 2 == pytest.approx(60.0) and x1 - x0 == 80
    assert win.fov_deg == pytest.approx(math.degrees(2 * math.atan(80 / 160)))
    # the window's camera sees a 3D point where the full camera does, shifted by the window's origin
    p = np.array([0.1, 0.2, 2.0])
    uv = K @ p
    uv = uv[:2] / uv[2] + 0.5
    uv_win, _ = project(torch.from_numpy(p), Camera(y1 - y0, x1 - x0, win.fov_deg))
    np.testing.assert_allclose(uv_win.numpy() + [x0, y0], uv, atol=1e-9)
    with pytest.raises(HandlesError, match="principal point"):
        camera_from_K(np.array([[80.0, 0, 90.0], [0, 80.0, 49.5], [0, 0, 1]]), h, w)
    with pytest.raises(HandlesError, match="square pixels"):
        camera_from_K(np.array([[80.0, 0, 49.5], [0, 90.0, 49.5], [0, 0, 1]]), h, w)


def _synthetic_case(name: str, shift: int = 6) -> EditBenchCase:
    """A red square on a grey-gradient background moved ``shift`` px right (a pure x translation at z = 2)."""
    h = w = 64
    bg = np.tile(np.linspace(60, 200, w, dtype=np.float64)[None, :, None], (h, 1, 3)).astype(np.uint8)
    im1, im2 = bg.copy(), bg.copy()
    m1 = np.zeros((h, w), bool)
    m1[20:36, 16:32] = True
    m2 = np.roll(m1, shift, axis=1)
    im1[m1] = (220, 30, 30)
    im2[m2] = (220, 30, 30)
    fov = 55.0
    K = opencv_K(fov, h, w)
    z = 2.0
    T = np.array([shift * z / K[0, 0], 0.0, 0.0])
    ys, xs = np.nonzero(m1)
    p1 = np.stack([xs[::37], ys[::37]], -1).astype(float)
    return EditBenchCase(name=name, image1=im1, image2=im2, K=K, R=np.eye(3), T=T,
                         point_prompt=np.array([24.0, 28.0]), gt_segment=m1, object_points_image1=p1,
                         object_points_image2=p1 + [shift, 0], depth=np.full((h, w), z, np.float32),
                         caption="a red cube", gt_segment_image2=m2)


def test_hdf5_layout_round_trip_and_scores(tmp_path):
    case = _synthetic_case("c0")
    path = write_case(tmp_path / "c0.hdf5", case)
    with h5py.File(path, "r") as f:  # 3DEditBench's keys and shapes
        assert f["image1"].shape == (64, 64, 3) and f["image1"].dtype == np.uint8
        assert f["K"].shape == (3, 3) and f["R"].shape == (3, 3) and f["T"].shape == (3,)
        assert f["point_prompt"].shape == (2,) and f["GT_segment"].shape == (64, 64)
    back = read_case(path)
    np.testing.assert_array_equal(back.image2, case.image2)
    np.testing.assert_allclose(back.T, case.T)
    assert back.caption == "a red cube" and back.gt_segment_image2.sum() == case.gt_segment_image2.sum()
    from diffusion_handles.bench.editbench3d import PointSegmenter

    seg = PointSegmenter(None)
    perfect = score_edit(case.image2, back, seg)
    assert perfect["psnr"] == 100.0 and perfect["ssim"] == pytest.approx(1.0) and perfect["lpips"] is None
    assert perfect["edit_adherence"] > 0.9
    unedited = score_edit(case.image1, back, seg)  # the object did not move: adherence = IoU of the two squares
    assert unedited["psnr"] < 40 and unedited["edit_adherence"] < 0.8


def test_read_case_refuses_bad_files(tmp_path):
    bad = tmp_path / "x.hdf5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("image1", data=np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(HandlesError, match="missing"):
        read_case(bad)
    (tmp_path / "y.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(HandlesError, match="expected an HDF5 file"):
        read_case(tmp_path / "y.hdf5")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("eb") / "cases"
    assert main(["world", "export-3deditbench", "--scenes", "2", "--size", "48", "--spp", "4", "--out", str(out)]) == 0
    return out


def test_export_writes_known_transforms(exported):
    files = sorted(exported.glob("*.hdf5"))
    assert len(files) == 2
    for p in files:
        c = read_case(p)
        assert c.image1.shape == (48, 48, 3) and c.gt_segment.any()
        np.testing.assert_allclose(c.R @ c.R.T, np.eye(3), atol=1e-9)
        x, y = c.point_prompt.astype(int)
        assert c.gt_segment[y, x]  # the prompt is on the object
        win = camera_from_K(c.K, 48, 48)
        assert not win.cropped and win.fov_deg == pytest.approx(c.attrs["fov_deg"])
        # the keypoints of image1 moved by R, T land on the annotated keypoints of image2
        cam = Camera(48, 48, win.fov_deg)
        p1 = torch.from_numpy(c.object_points_image1 + 0.5)
        d = torch.from_numpy(c.depth[c.object_points_image1[:, 1].astype(int), c.object_points_image1[:, 0].astype(int)]
                             .astype(np.float64))
        pts = lift_at(p1, d, cam).numpy() @ c.R.T + c.T
        uv, _ = project(torch.from_numpy(pts), cam)
        np.testing.assert_allclose(uv.numpy() - 0.5, c.object_points_image2, atol=1e-6)


def test_bench_suite_3deditbench_round_trip(exported, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["bench", "--suite", "3deditbench", "--data", str(exported), "--gt-mask", "--model", "tinyworld",
            "--steps", "3", "--inversion", "ddim", "--methods", "ours", "warp_only", "--quiet", "--out", str(out)]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert len(res["edits"]) == 2 and all(r["error"] is None for r in res["edits"])
    for name in ("ours", "warp_only"):
        a = res["aggregate"][name]
        assert a["ok"] == 2 and a["failed"] == 0 and a["lpips"]["mean"] is None
        assert 0 < a["psnr"]["mean"] < 100 and 0 <= a["edit_adherence"]["mean"] <= 1
    gt = res["aggregate"]["ground_truth"]
    assert gt["psnr"]["mean"] == 100.0 and gt["edit_adherence"]["mean"] > 0.8
    # warp-only on exact depth and the exact transform follows the ground truth better than doing nothing
    assert res["aggregate"]["warp_only"]["psnr"]["mean"] > res["aggregate"]["input"]["psnr"]["mean"]
    table = capsys.readouterr().out
    assert "Edit adherence" in table and "n/a" in table
    assert (out / "report.html").is_file()
    # resumed: nothing left to run, same results
    assert main(args) == 0
    assert json.loads((out / "results.json").read_text())["aggregate"]["ours"]["psnr"] == res["aggregate"]["ours"]["psnr"]
    # a corrupt record is named in a note and that case recomputed (deterministic: same results)
    rec_path = sorted((out / "edits").glob("*.json"))[0]
    rec_path.write_text("[1, 2")
    capsys.readouterr()
    assert main(args) == 0
    assert f"{rec_path} is corrupt" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["aggregate"]["ours"]["psnr"] == res["aggregate"]["ours"]["psnr"]


def test_point_prompt_without_sam_weights_says_so(exported, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["bench", "--suite", "3deditbench", "--data", str(exported), "--model", "tinyworld", "--steps", "2",
                 "--sam-model", "nobody/no-such-sam", "--quiet", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--gt-mask" in err[0] and "SAM" in err[0]
