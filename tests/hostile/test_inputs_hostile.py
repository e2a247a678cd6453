"""Hostile but fair input files (issue 13, items 4, 6 and 8): through the real command line.

Every case must exit 2 with one line on stderr (``handles <cmd>: error: <argument>: ...``) that
names the argument, no traceback, and nothing written in ``--out``; a few inputs that used to be
misread must now be read correctly. Classes:

* images: 1x1, 16-bit grey (read as almost white before), transparency, 32-bit float;
* depth: complex, scaled by 1e30 or beyond float32, 1x1, ``.npz`` (also renamed ``.npy``);
* masks that leave no background (whole image, all but a thin border);
* transforms that put the object behind the camera (the message names the culprit);
* ``handles world render --scene`` files: wrong types, unknown shapes, singular cameras,
  NaN transforms, sizes above the ``--size`` limit, invalid JSON;
* model folders of the wrong kind for ``--depth-model`` and ``--sam-model``;
* the web app's upload decoding: the same decoders, so the same answers.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import diffusion_handles.world as world_pkg
from diffusion_handles.cli import main

H, W = 48, 64
BOX = (14, 34, 20, 44)  # rows y0:y1, cols x0:x1
TINYWORLD = Path(world_pkg.__file__).resolve().parent / "model"

# the web app's fixtures (tiny model, config, in-process client), shared rather than rebuilt
_spec = importlib.util.spec_from_file_location("_web_conftest_for_input_tests",
                                               Path(__file__).resolve().parents[1] / "web" / "conftest.py")
_web = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_web)
tiny_model, web_config, client = _web.tiny_model, _web.web_config, _web.client


# ---------------------------------------------------------------------------- helpers
def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def assert_refused(code: int, err: str, out_dir: Path, command: str, *needles: str) -> str:
    """Exit 2, one line ``handles <command>: error: ...`` mentioning ``needles``, nothing written."""
    assert code == 2, err
    assert "Traceback" not in err and 'File "' not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"handles {command}: error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert not out_dir.exists() or not any(out_dir.iterdir()), sorted(out_dir.iterdir())
    return lines[0]


@pytest.fixture()
def scene(tmp_path) -> dict:
    """A box in front of a wall: image, depth (.npy) and mask files."""
    y0, y1, x0, x1 = BOX
    depth = np.full((H, W), 6.0, np.float32)
    depth[y0:y1, x0:x1] = 3.0
    depth[y0:y0 + 8, x0:x1] = 2.5  # some relief, so scaling about the centre moves points in z
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


def preview(capsys, tmp_path, image, depth, mask, *extra):
    out = tmp_path / "out"
    code, _, err = run(capsys, "preview", image, "--depth", depth, "--mask", mask, *extra, "--out", out)
    return code, err, out


# ---------------------------------------------------------------------------- masks and images
def test_whole_image_mask_is_refused_naming_the_mask(scene, tmp_path, capsys):
    full = tmp_path / "full.png"
    Image.fromarray(np.full((H, W), 255, np.uint8)).save(full)
    code, err, out = preview(capsys, tmp_path, scene["image"], scene["depth"], full, "--translate", "0.1", "0", "0")
    assert_refused(code, err, out, "preview", "--mask: covers every pixel of the 64x48 image", "background")


def test_mask_leaving_only_a_thin_border_is_refused(scene, tmp_path, capsys):
    m = np.full((H, W), 255, np.uint8)
    m[:, 0] = 0  # one column of background: gone once the mask is grown by 2 pixels for the fill
    p = tmp_path / "nearly.png"
    Image.fromarray(m).save(p)
    code, err, out = preview(capsys, tmp_path, scene["image"], scene["depth"], p)
    assert_refused(code, err, out, "preview", "--mask: leaves no background farther than 2 pixels")


def test_one_pixel_image_is_refused_with_the_minimum_size(tmp_path, capsys):
    img, dep, msk = tmp_path / "i.png", tmp_path / "d.npy", tmp_path / "m.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(img)
    np.save(dep, np.ones((1, 1), np.float32))
    Image.fromarray(np.full((1, 1), 255, np.uint8)).save(msk)
    code, err, out = preview(capsys, tmp_path, img, dep, msk)
    assert_refused(code, err, out, "preview", "IMAGE: expected width and height of at least 16 pixels, got 1x1")


def test_16_bit_grey_image_is_scaled_not_saturated(scene, tmp_path, capsys):
    """A 16-bit grey PNG used to be read as almost white (values clipped at 255)."""
    from diffusion_handles.io import load_image

    grey = (np.linspace(0, 65535, W)[None, :] * np.ones((H, 1))).astype(np.uint16)
    p = tmp_path / "grey16.png"
    Image.fromarray(grey).save(p)
    assert Image.open(p).mode.startswith("I")
    img = load_image(p)
    assert tuple(img.shape) == (1, 3, H, W)
    np.testing.assert_allclose(img[0, 0].numpy(), grey / 65535.0, atol=1e-6)
    assert float(img.mean()) == pytest.approx(0.5, abs=0.01)  # mid-grey on average, not white
    # and through the command line: an identity preview re-renders the image as it was read
    code, err, out = preview(capsys, tmp_path, p, scene["depth"], scene["mask"])
    assert code == 0, err
    got = np.asarray(Image.open(out / "preview.png")).astype(float)
    np.testing.assert_allclose(got[..., 0], np.round(grey / 65535.0 * 255.0), atol=1)


@pytest.mark.parametrize("kind, needle", [
    ("rgba_transparent", "IMAGE: expected an opaque image, got 100 transparent or semi-transparent pixels in an RGBA image"),
    ("palette_transparent", f"IMAGE: expected an opaque image, got {H * W} transparent"),
    ("float_out_of_range", "IMAGE: expected 8- or 16-bit colour or grey (or float grey in [0, 1]), got a 32-bit float"),
])
def test_images_that_cannot_be_read_as_colour_are_refused(kind, needle, scene, tmp_path, capsys):
    if kind == "rgba_transparent":
        a = np.full((H, W, 4), 255, np.uint8)
        a[:10, :10, 3] = 0
        p = tmp_path / "rgba.png"
        Image.fromarray(a).save(p)
    elif kind == "palette_transparent":
        im = Image.fromarray(np.zeros((H, W), np.uint8)).convert("P")
        p = tmp_path / "pal.png"
        im.save(p, transparency=0)
    else:
        p = tmp_path / "float.tiff"
        Image.fromarray(np.full((H, W), 7.5, np.float32), mode="F").save(p)
    code, err, out = preview(capsys, tmp_path, p, scene["depth"], scene["mask"])
    assert_refused(code, err, out, "preview", needle)


def test_every_pil_mode_is_read_or_refused_in_one_line():
    """The shared decoder on modes a file can arrive in: read correctly or refused, never misread."""
    from diffusion_handles.errors import HandlesError
    from diffusion_handles.io import image_to_rgb

    ramp = np.linspace(0, 1, 32)[None, :].repeat(16, 0)
    values = (ramp * 65535).astype(np.int32)
    i16 = Image.fromarray(values, mode="I")  # how older Pillows open 16-bit PNGs
    np.testing.assert_allclose(image_to_rgb(i16)[..., 1], values / 65535, atol=1e-6)
    f = Image.fromarray(ramp.astype(np.float32), mode="F")
    np.testing.assert_allclose(image_to_rgb(f)[..., 2], ramp, atol=1e-6)
    la = Image.fromarray(np.stack([(ramp * 255).astype(np.uint8), np.full((16, 32), 255, np.uint8)], -1), mode="LA")
    np.testing.assert_allclose(image_to_rgb(la)[..., 0], (ramp * 255).astype(np.uint8) / 255.0)
    with pytest.raises(HandlesError, match=r"^IMAGE: expected 8- or 16-bit colour or grey, got a 32-bit integer "
                                           r"image with values in \[70000, 70000\]"):
        image_to_rgb(Image.fromarray(np.full((16, 32), 70000, np.int32), mode="I"))
    with pytest.raises(HandlesError, match=r"^image: expected an opaque image, got 512 transparent .* in an LA image"):
        image_to_rgb(Image.fromarray(np.zeros((16, 32, 2), np.uint8), mode="LA"), "image")


def test_opaque_rgba_and_cmyk_images_are_read(tmp_path):
    from diffusion_handles.io import load_image

    rgb = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    a = np.concatenate([rgb, np.full((H, W, 1), 255, np.uint8)], axis=2)
    Image.fromarray(a).save(tmp_path / "opaque.png")
    np.testing.assert_allclose(load_image(tmp_path / "opaque.png")[0].permute(1, 2, 0).numpy(), rgb / 255.0, atol=1e-6)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert tuple(load_image(tmp_path / "cmyk.jpg").shape) == (1, 3, H, W)


# ---------------------------------------------------------------------------- depth files
def _depth_case(kind: str, scene: dict, tmp_path: Path) -> Path:
    d = np.load(scene["depth"])
    if kind == "complex":
        p = tmp_path / "c.npy"
        np.save(p, d.astype(np.complex64) + 1j)
    elif kind == "scaled_1e30":
        p = tmp_path / "big.npy"
        np.save(p, d * 1e30)
    elif kind == "beyond_float32":
        p = tmp_path / "huge.npy"
        np.save(p, d.astype(np.float64) * 1e39)
    elif kind == "one_by_one":
        p = tmp_path / "one.npy"
        np.save(p, np.ones((1, 1), np.float32))
    elif kind == "npz":
        p = tmp_path / "d.npz"
        np.savez(p, depth=d)
    elif kind == "npz_named_npy":
        buf = io.BytesIO()
        np.savez(buf, depth=d)
        p = tmp_path / "zip.npy"
        p.write_bytes(buf.getvalue())
    elif kind == "bool":
        p = tmp_path / "b.npy"
        np.save(p, d > 4)
    elif kind == "vector":
        p = tmp_path / "v.npy"
        np.save(p, d[:1])  # shape (1, W): used to be squeezed to (W,) and reported as such
    else:
        raise AssertionError(kind)
    return p


@pytest.mark.parametrize("kind, needles", [
    ("complex", ["--depth: expected real z-depth values, got a complex array (dtype complex64"]),
    ("scaled_1e30", ["--depth: expected z-depth in [1e-06, 1e+06] scene units, got values in [2.5e+30, 6e+30]"]),
    ("beyond_float32", ["--depth: expected z-depth in [1e-06, 1e+06] scene units", "2.5e+39"]),
    ("one_by_one", ["--depth: expected an (H, W) array of at least 16x16", "got shape (1, 1)"]),
    ("npz", ["--depth: got an .npz archive", "expected a .npy array"]),
    ("npz_named_npy", ["--depth: got an .npz archive"]),
    ("bool", ["--depth: expected a numeric (integer or float) z-depth array, got dtype bool"]),
    ("vector", ["--depth: expected an (H, W) array of at least 16x16", f"got shape (1, {W})"]),
])
def test_bad_depth_files_are_refused_saying_what_arrived(kind, needles, scene, tmp_path, capsys):
    p = _depth_case(kind, scene, tmp_path)
    code, err, out = preview(capsys, tmp_path, scene["image"], p, scene["mask"])
    assert_refused(code, err, out, "preview", *needles)


def test_depth_scale_is_validated(scene, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(capsys, "preview", scene["image"], "--depth", scene["depth"], "--mask", scene["mask"],
                       "--depth-scale", "0", "--out", out)
    assert_refused(code, err, out, "preview", "--depth-scale: expected a positive finite number, got 0")


def test_scale_behind_the_camera_names_the_scale(scene, tmp_path, capsys):
    """``--scale`` used to be blamed on the translation ("use a smaller translation")."""
    code, err, out = preview(capsys, tmp_path, scene["image"], scene["depth"], scene["mask"], "--scale", "100")
    line = assert_refused(code, err, out, "preview", "behind the camera", "the scale 100 about the pivot alone",
                          "use a smaller scale")
    assert "translation" not in line


# ---------------------------------------------------------------------------- world render --scene
def _base_scene() -> dict:
    from diffusion_handles.world.scene import sample_scene

    return sample_scene(0, 64, 64, n_objects=2).to_dict()


def _bad_scene(kind: str) -> dict | list | str:
    d = _base_scene()
    if kind == "unknown_shape":
        d["objects"][1]["shape"] = "torus"
    elif kind == "wrong_type":
        d["fov_deg"] = "wide"
    elif kind == "too_large":
        d["height"] = d["width"] = 2048
    elif kind == "zero_look":
        m = np.asarray(d["camera_to_world"])
        m[:3, 2] = 0.0  # the forward (look) axis has zero length
        d["camera_to_world"] = m.tolist()
    elif kind == "up_parallel":
        m = np.asarray(d["camera_to_world"])
        m[:3, 1] = m[:3, 2]  # the down axis equals the look axis
        d["camera_to_world"] = m.tolist()
    elif kind == "fov_180":
        d["fov_deg"] = 180
    elif kind == "nan_transform":
        d["objects"][0]["to_world"][0][3] = math.nan
    elif kind == "sheared":
        d["objects"][0]["to_world"][0][1] = 0.5
    elif kind == "bool_seed":
        d["seed"] = True
    elif kind == "unknown_key":
        d["objects"][0]["texture"] = "wood"
    elif kind == "not_an_object":
        return [1, 2, 3]
    else:
        raise AssertionError(kind)
    return d


@pytest.mark.parametrize("kind, needles", [
    ("unknown_shape", ["--scene: objects[1].shape: expected one of sphere, cube, cylinder, got a string 'torus'"]),
    ("wrong_type", ["--scene: fov_deg: expected a number, got a string 'wide'"]),
    ("too_large", ["--scene: height: expected an integer in [16, 1024], got 2048"]),
    ("zero_look", ["--scene: camera_to_world: expected a rigid camera pose", "singular"]),
    ("up_parallel", ["--scene: camera_to_world: expected a rigid camera pose", "singular"]),
    ("fov_180", ["--scene: fov_deg: expected a number in (0, 180), got 180"]),
    ("nan_transform", ["--scene: objects[0].to_world[0][3]: expected a finite number, got nan"]),
    ("sheared", ["--scene: objects[0].to_world: expected a similarity"]),
    ("bool_seed", ["--scene: seed: expected an integer, got a boolean"]),
    ("unknown_key", ["--scene: objects[0].texture: unknown key"]),
    ("not_an_object", ["--scene: expected a JSON object (a TinyWorld scene), got a list of 3"]),
])
def test_bad_scene_files_are_refused_naming_the_key(kind, needles, tmp_path, capsys):
    p = tmp_path / "scene.json"
    p.write_text(json.dumps(_bad_scene(kind)))  # json writes NaN as the (non-standard) literal NaN
    out = tmp_path / "out"
    code, _, err = run(capsys, "world", "render", "--scene", p, "--out", out)
    assert_refused(code, err, out, "world", *needles)


def test_invalid_json_scene_is_refused(tmp_path, capsys):
    p = tmp_path / "scene.json"
    p.write_text('{"seed": 0,')
    out = tmp_path / "out"
    code, _, err = run(capsys, "world", "render", "--scene", p, "--out", out)
    assert_refused(code, err, out, "world", "--scene: expected a JSON object, got invalid JSON")


def test_a_valid_scene_passes_the_validation():
    """The validation accepts what the world itself writes (so the refusals above are specific)."""
    from diffusion_handles.geometry.transform import HandleEdit
    from diffusion_handles.world.scene import Scene

    d = _base_scene()
    s = Scene.from_json(json.dumps(d))
    assert s.to_dict() == d
    moved = s.with_object_edit(0, HandleEdit((0.2, 0, 0.3), (0, 1, 0), 30, 1.3), [0.0, 0.5, 4.0])
    moved = moved.with_camera_edit(HandleEdit((0.1, 0, 0), (1, 0, 0), 5))
    Scene.from_json(moved.to_json())


# ---------------------------------------------------------------------------- model folders
@pytest.fixture()
def wrong_folders(tmp_path) -> dict[str, Path]:
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "dpt"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "dpt"}))
    return {"empty": empty, "diffusers": TINYWORLD, "other_kind": other}


@pytest.mark.parametrize("which, needle", [
    ("empty", "got an empty folder"),
    ("diffusers", "got a diffusers pipeline folder (model_index.json)"),
])
def test_depth_model_folder_of_the_wrong_kind(which, needle, wrong_folders, scene, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(capsys, "depth", scene["image"], "--depth-model", wrong_folders[which], "--out", out)
    assert_refused(code, err, out, "depth", "--depth-model: expected a transformers depth estimation model folder", needle)


@pytest.mark.parametrize("which, needle", [
    ("empty", "got an empty folder"),
    ("diffusers", "got a diffusers pipeline folder (model_index.json)"),
    ("other_kind", "got a model of type 'dpt'"),  # SamModel used to load it with random weights
])
def test_sam_model_folder_of_the_wrong_kind(which, needle, wrong_folders, scene, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", scene["image"], "--click", "30,20", "--sam-model", wrong_folders[which],
                       "--out", out)
    assert_refused(code, err, out, "segment", "--sam-model: expected a transformers SAM model folder", needle)


# ---------------------------------------------------------------------------- web uploads
def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_web_decodes_16_bit_grey_like_the_command_line(tmp_path):
    """The web app used to refuse 16-bit grey images that the CLI misread; both now share one decoder."""
    from diffusion_handles.io import load_image
    from diffusion_handles.web.uploads import UploadLimits, read_image

    grey = (np.linspace(0, 65535, W)[None, :] * np.ones((H, 1))).astype(np.uint16)
    data = _png(grey)
    web = read_image(data, "image/png", "image", UploadLimits())
    (tmp_path / "g.png").write_bytes(data)
    cli = load_image(tmp_path / "g.png")[0].permute(1, 2, 0).numpy()
    assert web.dtype == np.uint8 and web.shape == (H, W, 3)
    np.testing.assert_array_equal(web, (cli * 255.0 + 0.5).astype(np.uint8))


@pytest.mark.parametrize("depth, status, needle", [
    (lambda d: d.astype(np.complex64) + 1j, 422, "depth: expected real z-depth values, got a complex array"),
    (lambda d: d * 1e30, 422, "depth: expected z-depth in [1e-06, 1e+06] scene units"),
    (lambda d: np.ones((1, 1), np.float32), 422, "shape (1, 1)"),
    ("npz", 415, "depth: got an .npz archive"),
])
def test_web_refuses_bad_depth_uploads(depth, status, needle, client):
    d = np.full((H, W), 3.0, np.float32)
    if depth == "npz":
        buf = io.BytesIO()
        np.savez(buf, depth=d)
        data = buf.getvalue()
    else:
        data = _npy(depth(d))
    grey16 = (np.linspace(0, 65535, W)[None, :] * np.ones((H, 1))).astype(np.uint16)
    r = client.post("/api/sessions", files={"image": ("g.png", _png(grey16), "image/png"),
                                            "depth": ("d.npy", data, "application/octet-stream")})
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert needle in detail and "\n" not in detail and "Traceback" not in r.text


def test_web_accepts_a_16_bit_grey_upload(client):
    grey16 = (np.linspace(0, 65535, W)[None, :] * np.ones((H, 1))).astype(np.uint16)
    r = client.post("/api/sessions", files={"image": ("g.png", _png(grey16), "image/png"),
                                            "depth": ("d.npy", _npy(np.full((H, W), 3.0, np.float32)),
                                                      "application/octet-stream")})
    assert r.status_code == 201, r.text
