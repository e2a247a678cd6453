"""``handles preview`` end to end: outputs on a scene with known geometry, and every kind of bad input."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from diffusion_handles.cli import main

H, W = 96, 128
Z_WALL, Z_BOX = 6.0, 3.0
BOX = (30, 62, 40, 80)  # rows y0:y1, cols x0:x1


@pytest.fixture()
def scene(tmp_path):
    depth = np.full((H, W), Z_WALL, np.float32)
    y0, y1, x0, x1 = BOX
    depth[y0:y1, x0:x1] = Z_BOX
    mask = np.zeros((H, W), np.uint8)
    mask[y0:y1, x0:x1] = 255
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 2] = 180
    rgb[y0:y1, x0:x1] = (220, 40, 40)
    paths = {"image": tmp_path / "img.png", "depth": tmp_path / "depth.npy", "mask": tmp_path / "mask.png"}
    Image.fromarray(rgb).save(paths["image"])
    np.save(paths["depth"], depth)
    Image.fromarray(mask).save(paths["mask"])
    return paths


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_preview_writes_all_outputs_and_the_analytic_mask(scene, tmp_path, capsys):
    out = tmp_path / "out"
    tx = 0.25  # scene units, to the right
    code, stdout, err = run(capsys, "preview", scene["image"], "--depth", scene["depth"], "--mask", scene["mask"],
                            "--translate", tx, 0, 0, "--out", out)
    assert code == 0, err
    names = {"preview.png", "edited_mask.png", "valid_mask.png", "edited_depth.npy", "edited_depth.png", "summary.json", "comparison.png"}
    assert names <= {p.name for p in out.iterdir()}
    fx = W / (2 * math.tan(math.radians(27.5)))
    dx = fx * tx / Z_BOX
    got = np.asarray(Image.open(out / "edited_mask.png")) >= 128
    cols = np.nonzero(got.any(0))[0]
    rows = np.nonzero(got.any(1))[0]
    assert abs(cols[0] - (BOX[2] + dx)) <= 1 and abs(cols[-1] + 1 - (BOX[3] + dx)) <= 1
    assert rows[0] == BOX[0] and rows[-1] + 1 == BOX[1]
    valid = np.asarray(Image.open(out / "valid_mask.png")) >= 128
    assert not valid[BOX[0]:BOX[1], BOX[2]:int(BOX[2] + dx) - 1].any()  # the vacated strip is a hole
    d = np.load(out / "edited_depth.npy")
    assert np.allclose(d[got], Z_BOX, atol=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["transform"]["edit"]["translate"] == [tx, 0.0, 0.0]
    assert summary["camera"]["fov_deg"] == 55.0
    assert {"geometry", "edited_depth", "total"} <= set(summary["timings_ms"])


def test_sixteen_bit_png_depth_in_millimetres(scene, tmp_path, capsys):
    depth = np.load(scene["depth"])
    png = tmp_path / "depth.png"
    Image.fromarray((depth * 1000).astype(np.uint16)).save(png)
    out = tmp_path / "o16"
    code, _, err = run(capsys, "preview", scene["image"], "--depth", png, "--mask", scene["mask"], "--translate", 0, 0, -1, "--out", out)
    assert code == 0, err
    got = np.asarray(Image.open(out / "edited_mask.png")) >= 128
    # moved from 3 to 2 scene units: 1.5 x larger
    assert got.any(0).sum() == pytest.approx((BOX[3] - BOX[2]) * 1.5, abs=2)


def _bad(tmp_path, scene, **changes):
    args = {"image": scene["image"], "--depth": scene["depth"], "--mask": scene["mask"]}
    args.update(changes)
    argv = ["preview", args.pop("image")]
    for k, v in args.items():
        argv += [k, *(v if isinstance(v, list) else [v])]
    return argv


@pytest.mark.parametrize(
    "case, expect",
    [
        ("missing_image", "IMAGE: file not found"),
        ("missing_depth", "--depth: file not found"),
        ("mask_size", "--mask: expected size 128x96"),
        ("empty_mask", "--mask: expected at least one object pixel"),
        ("negative_depth", "positive z-depth"),
        ("nan_depth", "finite depth"),
        ("eight_bit_depth", "16-bit PNG"),
        ("bad_translate", "--translate: expected numbers"),
        ("zero_scale", "--scale: expected a positive number"),
        ("behind_camera", "behind the camera"),
        ("out_of_frame", "out of the frame"),
        ("not_an_image", "IMAGE: expected an image file"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_output(case, expect, scene, tmp_path, capsys):
    out = tmp_path / "never"
    extra: list = []
    changes = {}
    if case == "missing_image":
        changes["image"] = tmp_path / "nope.png"
    elif case == "missing_depth":
        changes["--depth"] = tmp_path / "nope.npy"
    elif case == "mask_size":
        p = tmp_path / "small.png"
        Image.fromarray(np.full((10, 10), 255, np.uint8)).save(p)
        changes["--mask"] = p
    elif case == "empty_mask":
        p = tmp_path / "empty.png"
        Image.fromarray(np.zeros((H, W), np.uint8)).save(p)
        changes["--mask"] = p
    elif case in ("negative_depth", "nan_depth"):
        d = np.load(scene["depth"])
        d[3, 3] = -1.0 if case == "negative_depth" else np.nan
        p = tmp_path / "bad.npy"
        np.save(p, d)
        changes["--depth"] = p
    elif case == "eight_bit_depth":
        p = tmp_path / "d8.png"
        Image.fromarray(np.full((H, W), 9, np.uint8)).save(p)
        changes["--depth"] = p
    elif case == "bad_translate":
        extra = ["--translate", "1", "x", "0"]
    elif case == "zero_scale":
        extra = ["--scale", "0"]
    elif case == "behind_camera":
        extra = ["--translate", "0", "0", "-4"]
    elif case == "out_of_frame":
        extra = ["--translate", "50", "0", "0"]
    elif case == "not_an_image":
        p = tmp_path / "text.png"
        p.write_text("hello")
        changes["image"] = p
    argv = _bad(tmp_path, scene, **changes) + extra + ["--out", str(out)]
    code, stdout, err = run(capsys, *argv)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and expect in lines[0], err
    assert "Traceback" not in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]  # no staging left


def test_failed_run_leaves_existing_output_untouched(scene, tmp_path, capsys):
    out = tmp_path / "keep"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    code, _, err = run(capsys, "preview", scene["image"], "--depth", scene["depth"], "--mask", scene["mask"],
                       "--translate", 0, 0, -10, "--out", out)
    assert code == 2 and "--out: expected a new or empty folder" in err  # not replaced without --overwrite
    code, _, err = run(capsys, "preview", scene["image"], "--depth", scene["depth"], "--mask", scene["mask"],
                       "--translate", 0, 0, -10, "--overwrite", "--out", out)
    assert code == 2 and "behind the camera" in err  # the edit itself fails: the old folder stays
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["depth.npy", "img.png", "keep", "mask.png"]


def test_console_script_reports_without_traceback(scene, tmp_path):
    out = tmp_path / "o"
    proc = subprocess.run(
        [sys.executable, "-m", "diffusion_handles", "preview", str(scene["image"]), "--depth", str(scene["depth"]),
         "--mask", str(scene["mask"]), "--rotate-deg", "abc", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "handles preview: error: --rotate-deg: expected numbers, got 'abc'"
    assert not out.exists()


def test_camera_move_needs_no_mask_and_shifts_everything(scene, tmp_path, capsys):
    out = tmp_path / "cam"
    # camera 0.2 units to the right: the wall (z = 6) moves left by fx * 0.2 / 6 pixels
    code, _, err = run(capsys, "preview", scene["image"], "--depth", scene["depth"], "--camera",
                       "--translate", 0.2, 0, 0, "--out", out)
    assert code == 0, err
    fx = W / (2 * math.tan(math.radians(27.5)))
    valid = np.asarray(Image.open(out / "valid_mask.png")) >= 128
    # the right edge is disoccluded by about fx * 0.2 / 6 pixels
    assert abs((~valid[5]).sum() - fx * 0.2 / Z_WALL) <= 1.5
    code, _, err = run(capsys, "preview", scene["image"], "--depth", scene["depth"], "--out", tmp_path / "x")
    assert code == 2 and "--mask" in err
