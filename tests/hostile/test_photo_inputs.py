"""Photos and depth maps as phones, renderers and depth estimators write them (issue 34, item 3),
through ``handles edit`` on a tiny random model (a fraction of a second per edit).

Read correctly: a JPEG stored turned with an EXIF orientation (edited and written upright), HEIC,
CMYK, palette, grey+alpha and 16-bit colour images; depth as OpenEXR, PFM (also relative inverse
depth, ``--depth-kind inverse``), 16-bit and float TIFF, and at another resolution than the image.
Refused in one line with exit 2 and nothing written: a truncated or garbage EXR, a garbage or
truncated PFM, a TIFF of the wrong type or shape, broken EXIF, a mask or depth of the photo's
stored (sideways) size. Every fixture file is written by a maintained library (OpenEXR, OpenCV,
tifffile, Pillow, pillow-heif), never by hand.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import OpenEXR
import pillow_heif
import pytest
import tifffile
import torch
from PIL import Image

from diffusion_handles.batch.jobs import parse_jobs
from diffusion_handles.diffusion.random_models import (
    build_backbone_components,
    save_model_folder,
    tiny_configs,
)
from diffusion_handles.errors import HandlesError
from diffusion_handles.io import (
    DepthReading,
    fit_depth,
    load_depth,
    load_image,
    read_photo,
)

from .test_inputs_hostile import assert_refused, run

H, W = 24, 32  # upright: wider than high, so a photo stored turned is 24 wide and 32 high
BOX = (8, 16, 12, 20)  # rows y0:y1, cols x0:x1
QUADRANTS = {(2, 2): (220, 30, 30), (2, W - 3): (30, 200, 30), (H - 3, 2): (30, 30, 220), (H - 3, W - 3): (230, 220, 30)}
# what Pillow's exif_transpose does to turn a stored image upright, undone to store one turned
STORED_BY_ORIENTATION = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
EXR_HEADER = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}


def _upright() -> np.ndarray:
    """Four coloured quadrants (any turn or flip shows) and a grey box: ``(H, W, 3)`` uint8."""
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[: H // 2, : W // 2], rgb[: H // 2, W // 2:] = (220, 30, 30), (30, 200, 30)
    rgb[H // 2:, : W // 2], rgb[H // 2:, W // 2:] = (30, 30, 220), (230, 220, 30)
    y0, y1, x0, x1 = BOX
    rgb[y0:y1, x0:x1] = 128
    return rgb


def _depth() -> np.ndarray:
    """z-depth: a wall at 3 and the box at 2 (both exact in float16 and in millimetres)."""
    z = np.full((H, W), 3.0, np.float32)
    y0, y1, x0, x1 = BOX
    z[y0:y1, x0:x1] = 2.0
    return z


def _jpeg_with_exif(path, rgb: np.ndarray, exif: Image.Exif | bytes) -> None:
    Image.fromarray(rgb).save(path, quality=95, subsampling=0, exif=exif)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """The tiny model folder, the upright photo, its depth (.npy) and mask, and the edit of them."""
    d = tmp_path_factory.mktemp("photo-inputs")
    save_model_folder(build_backbone_components(tiny_configs(), seed=0), d / "model")
    Image.fromarray(_upright()).save(d / "photo.png")
    np.save(d / "depth.npy", _depth())
    mask = np.zeros((H, W), np.uint8)
    y0, y1, x0, x1 = BOX
    mask[y0:y1, x0:x1] = 255
    Image.fromarray(mask).save(d / "mask.png")
    Image.fromarray(np.ascontiguousarray(mask.T)).save(d / "mask_sideways.png")  # the stored (turned) size
    paths = {"dir": d, "model": d / "model", "image": d / "photo.png", "depth": d / "depth.npy",
             "mask": d / "mask.png", "mask_sideways": d / "mask_sideways.png"}
    assert _edit(paths, d / "baseline") == 0
    paths["baseline"] = d / "baseline"
    return paths


def _argv(files: dict, out, *, image=None, depth=None, mask=None, extra=()) -> list:
    return ["edit", image or files["image"], "--prompt", "a box", "--depth", depth or files["depth"],
            "--mask", mask or files["mask"], "--model", files["model"], "--steps", "2", "--preset", "fast",
            "--translate", "0.1", "0", "0", "--quiet", "--out", out, *extra]


def _edit(files: dict, out, **kw) -> int:
    from diffusion_handles.cli import main

    return main([str(a) for a in _argv(files, out, **kw)])


def _same_edit_as_baseline(files: dict, out) -> None:
    """The edit reads exactly the depth of the ``.npy`` baseline: the same pixels and edited depth."""
    assert (out / "edited.png").read_bytes() == (files["baseline"] / "edited.png").read_bytes()
    assert np.array_equal(np.load(out / "edited_depth.npy"), np.load(files["baseline"] / "edited_depth.npy"))


# ---------------------------------------------------------------------------- photos
@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_a_jpeg_stored_turned_is_edited_and_written_upright(files, tmp_path, capsys, orientation):
    """A phone JPEG stored sideways with EXIF orientation 6 (or 8, or upside down: 3): the upright
    mask and depth fit it, and ``edited.png`` is upright (the quadrants where the upright photo has them)."""
    photo = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = Image.fromarray(_upright()).transpose(STORED_BY_ORIENTATION[orientation])
    _jpeg_with_exif(photo, np.asarray(stored), exif)
    out = tmp_path / "out"
    code, _, err = run(capsys, *_argv(files, out, image=photo))
    assert code == 0, err
    assert f"EXIF orientation {orientation}" in err
    with Image.open(out / "edited.png") as im:
        assert im.size == (W, H)
        edited = np.asarray(im.convert("RGB")).astype(int)
    for (y, x), colour in QUADRANTS.items():
        assert np.abs(edited[y, x] - colour).max() <= 12, ((y, x), edited[y, x], colour)


def test_a_mask_or_depth_of_the_stored_size_is_refused_saying_why(files, tmp_path, capsys):
    photo = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    _jpeg_with_exif(photo, np.asarray(Image.fromarray(_upright()).transpose(Image.Transpose.ROTATE_90)), exif)
    out = tmp_path / "out"
    code, _, err = run(capsys, *_argv(files, out, image=photo, mask=files["mask_sideways"]))
    assert_refused(code, err, out, "edit", f"--mask: expected size {W}x{H}", "before its EXIF orientation 6")
    sideways = tmp_path / "depth_sideways.npy"
    np.save(sideways, np.ascontiguousarray(_depth().T))
    code, _, err = run(capsys, *_argv(files, out, image=photo, depth=sideways))
    assert_refused(code, err, out, "edit", "--depth: expected IMAGE's aspect ratio", "EXIF orientation 6")


def test_a_heic_photo_goes_through_edit(files, tmp_path, capsys):
    photo = tmp_path / "phone.heic"
    pillow_heif.from_pillow(Image.fromarray(_upright())).save(photo, quality=95)
    out = tmp_path / "out"
    assert read_photo(photo).size == (W, H)
    code, _, err = run(capsys, *_argv(files, out, image=photo))
    assert code == 0, err
    with Image.open(out / "edited.png") as im:
        assert im.size == (W, H)


@pytest.mark.parametrize("mode", ["CMYK", "P", "LA", "RGB16", "I;16"])
def test_colour_modes_are_converted_to_rgb(tmp_path, mode):
    rgb = _upright()
    path = tmp_path / ("image.jpg" if mode == "CMYK" else "image.png")
    if mode == "RGB16":  # 48-bit PNG, written by OpenCV (BGR order)
        cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]).astype(np.uint16) * 257)
    elif mode == "I;16":
        Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(path)
    else:
        Image.fromarray(rgb).convert(mode).save(path, **({"quality": 95} if mode == "CMYK" else {}))
    got = load_image(path)[0].permute(1, 2, 0).numpy() * 255
    assert got.shape == (H, W, 3)
    grey = {"LA": np.asarray(Image.fromarray(rgb).convert("L")), "I;16": rgb[..., 0]}.get(mode)
    want = rgb.astype(float) if grey is None else np.repeat(grey[..., None], 3, axis=2).astype(float)
    if mode == "P":  # the colours of Pillow's (web) palette
        want = np.asarray(Image.fromarray(rgb).convert("P").convert("RGB")).astype(float)
    assert np.abs(got - want).max() <= 4, mode


@pytest.mark.parametrize("case, needle", [
    ("not-tiff", "IMAGE: expected readable EXIF metadata (it says which way is up), got an EXIF block that is not a TIFF"),
    ("truncated", "IMAGE: expected readable EXIF metadata (it says which way is up), got a corrupt EXIF block"),
    ("orientation-9", "IMAGE: expected an EXIF orientation of 1 to 8 (which way is up), got 9"),
])
def test_broken_exif_is_refused_in_one_line(files, tmp_path, capfd, case, needle):
    """Which way is up is unknown: refused, not guessed. (capfd: nothing else on the terminal.)"""
    photo = tmp_path / "photo.jpg"
    if case == "orientation-9":
        exif = Image.Exif()
        exif[0x0112] = 9
    else:  # an EXIF block whose TIFF header is missing, or whose first directory is cut short
        good = Image.Exif()
        good[0x0112] = 6
        raw = good.tobytes()  # starts with Exif\0\0
        exif = raw[:6] + b"\xde\xad" * 20 if case == "not-tiff" else raw[: len(raw) - 8]
    _jpeg_with_exif(photo, _upright(), exif)
    out = tmp_path / "out"
    code, _, err = run(capfd, *_argv(files, out, image=photo))
    assert_refused(code, err, out, "edit", needle)


# ---------------------------------------------------------------------------- depth files
def _exr(path, channels: dict, compression=OpenEXR.ZIP_COMPRESSION) -> None:
    OpenEXR.File({**EXR_HEADER, "compression": compression}, channels).write(str(path))


@pytest.mark.parametrize("layout", ["Z float", "Blender half", "RGB"])
def test_an_exr_depth_reads_as_the_npy(files, tmp_path, capsys, layout):
    z = _depth()
    path = tmp_path / "depth.exr"
    if layout == "Z float":
        _exr(path, {"Z": z})
    elif layout == "Blender half":  # a multilayer render: the depth pass among others
        _exr(path, {"ViewLayer.Depth.Z": z.astype(np.float16), "ViewLayer.Combined.R": np.zeros_like(z)})
    else:  # a grey map saved as colour
        _exr(path, {"RGB": np.stack([z, z, z], -1)})
    out = tmp_path / "out"
    code, _, err = run(capsys, *_argv(files, out, depth=path))
    assert code == 0, err
    _same_edit_as_baseline(files, out)


@pytest.mark.parametrize("kind", ["uint16 mm", "float32"])
def test_a_tiff_depth_reads_as_the_npy(files, tmp_path, capsys, kind):
    path = tmp_path / "depth.tif"
    z = _depth()
    tifffile.imwrite(path, np.round(z * 1000).astype(np.uint16) if kind == "uint16 mm" else z)
    out = tmp_path / "out"
    code, _, err = run(capsys, *_argv(files, out, depth=path))
    assert code == 0, err
    _same_edit_as_baseline(files, out)


def test_a_pfm_inverse_depth_goes_through_edit(files, tmp_path, capsys):
    """Relative inverse depth, as Depth Anything gives, at a lower resolution than the photo:
    resized, then mapped onto --depth-range (the box's disparity to near, the wall's to far)."""
    disparity = 1.0 / _depth()
    small = cv2.resize(disparity, (W * 3 // 4, H * 3 // 4), interpolation=cv2.INTER_NEAREST)  # 18x24
    path = tmp_path / "disparity.pfm"
    assert cv2.imwrite(str(path), small)
    reading = DepthReading(kind="inverse", near=1.0, far=10.0)
    z = load_depth(path, "--depth", reading, fit_to=torch.zeros(1, 3, H, W))[0, 0]
    assert z.shape == (H, W)
    assert float(z[12, 16]) == pytest.approx(1.0) and float(z[2, 2]) == pytest.approx(10.0)  # box near, wall far
    out = tmp_path / "out"
    code, _, err = run(capsys, *_argv(files, out, depth=path, extra=["--depth-kind", "inverse", "--depth-range", "1", "10"]))
    assert code == 0, err
    # the edit lifted exactly that depth: the same as giving it as z-depth
    np.save(tmp_path / "z.npy", z.numpy())
    assert _edit(files, tmp_path / "as-z", depth=tmp_path / "z.npy") == 0
    assert (out / "edited.png").read_bytes() == (tmp_path / "as-z" / "edited.png").read_bytes()


def test_pfm_and_exr_values_round_trip_exactly(tmp_path):
    z = _depth() + np.linspace(0, 0.5, W, dtype=np.float32)  # no symmetry: a flip would show
    cv2.imwrite(str(tmp_path / "d.pfm"), z)
    _exr(tmp_path / "d.exr", {"Z": z})
    for name in ("d.pfm", "d.exr"):
        assert np.array_equal(load_depth(tmp_path / name)[0, 0].numpy(), z), name


def test_a_depth_of_another_resolution_is_resized_bilinearly(tmp_path):
    ramp = np.tile(np.linspace(1.0, 4.0, 16, dtype=np.float32), (12, 1))  # 16x12: half of 32x24
    assert fit_depth(torch.from_numpy(ramp)[None, None], torch.zeros(1, 3, 12, 16)).shape == (1, 1, 12, 16)
    up = fit_depth(torch.from_numpy(ramp)[None, None], torch.zeros(1, 3, H, W))[0, 0].numpy()
    assert up.shape == (H, W) and up.min() >= 1.0 and up.max() <= 4.0
    assert np.all(np.diff(up, axis=1) >= 0) and np.allclose(up, up[:1])  # still a ramp, no new extremes
    down = fit_depth(torch.from_numpy(np.tile(ramp, (4, 4)))[None, None], torch.zeros(1, 3, 12, 16))
    assert down.shape == (1, 1, 12, 16) and 1.0 <= float(down.min()) and float(down.max()) <= 4.0
    with pytest.raises(HandlesError, match="expected IMAGE's aspect ratio"):
        fit_depth(torch.ones(1, 1, 24, 24), torch.zeros(1, 3, H, W))


# ---------------------------------------------------------------------------- refused
def _truncated(path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _malformed(tmp_path, case: str):
    """One malformed depth file of each kind, written by its library and then broken."""
    z = _depth()
    if case in ("truncated.exr", "exr-magic-garbage.exr"):
        path = tmp_path / "depth.exr"
        _exr(path, {"Z": z}, OpenEXR.NO_COMPRESSION)  # the pixels, not the header, are cut off
        if case == "truncated.exr":
            _truncated(path, 0.5)
        else:
            path.write_bytes(path.read_bytes()[:4] + b"\x00garbage" * 8)
    elif case == "garbage.exr":
        path = tmp_path / "depth.exr"
        path.write_bytes(b"not an exr file at all")
    elif case == "garbage.pfm":
        path = tmp_path / "depth.pfm"
        path.write_bytes(b"PF\nnot a header\n")
    elif case == "truncated.pfm":
        path = tmp_path / "depth.pfm"
        cv2.imwrite(str(path), z)
        _truncated(path, 0.5)
    elif case == "uint8.tif":
        path = tmp_path / "depth.tif"
        tifffile.imwrite(path, (z * 50).astype(np.uint8))
    elif case == "colour.tif":
        path = tmp_path / "depth.tif"
        tifffile.imwrite(path, np.stack([z, z + 1, z + 2], -1), photometric="rgb")
    elif case == "truncated.tif":
        path = tmp_path / "depth.tif"
        tifffile.imwrite(path, z)
        _truncated(path, 0.6)
    else:  # an 8-bit JPEG pretending to be a depth map
        path = tmp_path / "depth.jpg"
        Image.fromarray((z * 50).astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize("case, needle", [
    ("truncated.exr", "--depth: expected an OpenEXR image, could not read"),
    ("exr-magic-garbage.exr", "--depth: expected an OpenEXR file, could not read the header"),
    ("garbage.exr", "--depth: expected an OpenEXR file, but"),
    ("garbage.pfm", "--depth: expected a PFM file (PF or Pf, width, height, scale)"),
    ("truncated.pfm", "--depth: expected a PFM float image, could not read"),
    ("uint8.tif", "--depth: expected a 16-bit integer or a float TIFF depth map, got a TIFF of 8-bit integer values"),
    ("colour.tif", "--depth: expected one depth channel, got a TIFF with 3 channels that differ"),
    ("truncated.tif", "--depth: expected a 16-bit or float TIFF depth map, could not read"),
    ("8-bit.jpg", "--depth: expected a 16-bit PNG"),
])
def test_a_malformed_depth_file_is_refused_in_one_line(files, tmp_path, capfd, case, needle):
    """Exit 2, one line naming --depth, nothing written, and nothing the decoding library printed
    on the terminal (capfd sees file descriptor 2, where OpenEXR's and OpenCV's C code write)."""
    out = tmp_path / "out"
    code, printed, err = run(capfd, *_argv(files, out, depth=_malformed(tmp_path, case)))
    assert_refused(code, err, out, "edit", needle)
    assert printed == ""


def test_depth_kind_is_checked_and_a_relative_background_is_refused(files, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exited:  # argparse's choices: its one line, exit 2
        run(capsys, *_argv(files, out, extra=["--depth-kind", "disparity"]))
    assert_refused(exited.value.code, capsys.readouterr().err, out, "edit", "--depth-kind", "'inverse'")
    code, _, err = run(capsys, *_argv(files, out, extra=["--depth-kind", "inverse", "--background-depth", files["depth"]]))
    assert_refused(code, err, out, "edit", "--background-depth: expected no background depth with --depth-kind inverse")
    code, _, err = run(capsys, *_argv(files, out, extra=["--depth-kind", "inverse", "--depth-range", "5", "1"]))
    assert_refused(code, err, out, "edit", "--depth-range: expected 0 < near < far")


def test_batch_lines_pass_depth_kind_on(tmp_path):
    f = tmp_path / "jobs.jsonl"
    line = {"id": "a", "image": "a.jpg", "prompt": "p", "mask": "m.png", "depth": "d.pfm", "depth_kind": "inverse"}
    f.write_text(json.dumps(line) + "\n" + json.dumps({**line, "id": "b", "depth_kind": "disparity"}) + "\n")
    jobs, bad = parse_jobs(f)
    assert "--depth-kind=inverse" in jobs[0].edit_argv("OUT/a", None)
    assert len(bad) == 1 and "depth_kind: expected one of z, inverse, relative-depth" in bad[0].error


@pytest.mark.parametrize("command", ["preview", "remove", "animate"])
def test_every_command_with_depth_reads_a_turned_photo_and_an_inverse_pfm(files, tmp_path, capsys, command):
    """preview, remove and animate read IMAGE and --depth as edit does: upright, resized, converted."""
    photo = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    _jpeg_with_exif(photo, np.asarray(Image.fromarray(_upright()).transpose(Image.Transpose.ROTATE_90)), exif)
    pfm = tmp_path / "disparity.pfm"
    cv2.imwrite(str(pfm), cv2.resize(1.0 / _depth(), (W * 3 // 4, H * 3 // 4), interpolation=cv2.INTER_NEAREST))
    out = tmp_path / "out"
    argv = [command, photo, "--depth", pfm, "--depth-kind", "inverse", "--mask", files["mask"], "--out", out]
    if command != "preview":
        argv += ["--prompt", "a box", "--model", files["model"], "--steps", "2", "--preset", "fast", "--quiet"]
    if command == "animate":
        keys = tmp_path / "keys.json"
        keys.write_text(json.dumps([{}, {"translate": [0.1, 0, 0]}]))
        argv += ["--keyframes", keys, "--frames", "2"]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    images = [png for png in out.rglob("*.png") if "comparison" not in png.name and "contact" not in png.name]
    assert images
    for png in images:  # every output image is upright (W x H), none sideways
        with Image.open(png) as im:
            assert im.size == (W, H), (png.name, im.size)
