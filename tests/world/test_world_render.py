"""TinyWorld renderer: geometry agrees with the project's Camera, scenes round-trip, edits are exact."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("mitsuba")

from diffusion_handles.errors import HandlesError  # noqa: E402
from diffusion_handles.geometry.camera import Camera, lift, project  # noqa: E402
from diffusion_handles.geometry.transform import HandleEdit  # noqa: E402
from diffusion_handles.world.render import (  # noqa: E402
    _mi,
    cast_depth_and_ids,
    depth_and_masks,
    object_pivot,
    render,
    scene_dict,
    scene_for_seed,
)
from diffusion_handles.world.scene import CAPTION_WORDS, Scene, SceneObject  # noqa: E402


def _sphere_scene(centre_cam, radius, size=64) -> Scene:
    """A scene whose only object is a sphere at a camera-frame position."""
    base = scene_for_seed(3, size, size)
    c2w = base.c2w()
    centre_w = (c2w @ np.append(np.asarray(centre_cam, float), 1.0))[:3]
    m = np.eye(4)
    m[:3, :3] *= radius
    m[:3, 3] = centre_w
    base.objects = [SceneObject("sphere", "red", "solid", m.tolist())]
    return base


def test_sphere_depth_and_mask_match_camera_geometry():
    centre, r = np.array([0.4, -0.3, 4.0]), 0.6
    scene = _sphere_scene(centre, r)
    depth, masks = depth_and_masks(scene)
    cam = Camera(scene.height, scene.width, scene.fov_deg)
    px, _ = project(torch.tensor(centre), cam)
    j, i = int(px[0]), int(px[1])  # the pixel containing the projected centre
    # exact z-depth of the sphere's front surface along that pixel-centre ray
    ray = torch.tensor([(j + 0.5 - cam.cx) / cam.fx, (i + 0.5 - cam.cy) / cam.fy, 1.0], dtype=torch.float64)
    u = ray / ray.norm()
    b = float(u @ torch.tensor(centre))
    t = b - math.sqrt(b * b - (float(np.dot(centre, centre)) - r * r))
    assert depth[i, j] == pytest.approx(t * float(u[2]), abs=1e-3)
    # lifted depth pixels of the mask lie on the sphere
    pts = lift(torch.from_numpy(depth.astype(np.float64))[None, None], cam)[0].permute(1, 2, 0).numpy()
    dist = np.linalg.norm(pts[masks[0]] - centre, axis=1)
    assert np.abs(dist - r).max() < 1e-3
    # silhouette area: a circle of angular radius asin(r / |c|) (projected as an ellipse; close)
    d = np.linalg.norm(centre)
    area = math.pi * (cam.fx * math.tan(math.asin(r / d))) ** 2
    assert masks[0].sum() == pytest.approx(area, rel=0.12)


def test_mitsuba_image_agrees_with_ray_cast_mask():
    """The Mitsuba sensor (fov axis, axis flips) shows the sphere exactly where Camera projects it."""
    mi = _mi()
    scene = _sphere_scene([-0.5, 0.2, 3.5], 0.5)
    d = scene_dict(scene, spp=16)
    del d["floor"], d["wall"], d["sun"]
    d["sky"]["radiance"]["value"] = [1.0, 1.0, 1.0]
    d["obj0"]["bsdf"] = {"type": "diffuse", "reflectance": {"type": "rgb", "value": [0.0, 0.0, 0.0]}}
    mscene = mi.load_dict(d)
    img = np.asarray(mi.render(mscene, seed=1))[..., 0]
    _, ids = cast_depth_and_ids(mscene, scene)
    coverage = 1.0 - np.clip(img, 0, 1)  # sphere is black on white: coverage per pixel
    ys, xs = np.mgrid[0 : scene.height, 0 : scene.width] + 0.5
    c_img = np.array([(coverage * xs).sum(), (coverage * ys).sum()]) / coverage.sum()
    m = ids == 0
    c_mask = np.array([xs[m].mean(), ys[m].mean()])
    assert np.abs(c_img - c_mask).max() < 0.3
    assert coverage.sum() == pytest.approx(m.sum(), rel=0.05)


def test_scene_json_round_trip():
    s = scene_for_seed(11)
    t = Scene.from_json(s.to_json())
    assert t == s
    assert t.caption() == s.caption()
    assert all(w in CAPTION_WORDS for w in s.caption().split())


def test_scene_file_renders_and_a_camera_that_sees_nothing_is_one_line(tmp_path, capsys):
    """``handles world render --scene``: a scene it wrote renders again; a valid but useless
    camera (looking up past the wall) is refused in one line, with nothing written."""
    from diffusion_handles.cli import main
    from diffusion_handles.world.scene import camera_pose

    s = scene_for_seed(2, 16, 16)
    good = tmp_path / "good.json"
    good.write_text(s.to_json())
    assert main(["world", "render", "--scene", str(good), "--spp", "1", "--out", str(tmp_path / "ok")]) == 0
    assert Scene.from_json((tmp_path / "ok" / "scene.json").read_text()) == s
    s.camera_to_world = camera_pose(2.0, -80.0).tolist()  # pitched up: most rays hit nothing
    sky = tmp_path / "sky.json"
    sky.write_text(s.to_json())
    capsys.readouterr()
    out = tmp_path / "sky"
    assert main(["world", "render", "--scene", str(sky), "--spp", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("handles world: error: --scene: could not render") and "no geometry" in err
    assert "\n" not in err and "Traceback" not in err and not out.exists()


def test_scene_validation_names_the_key_path():
    d = scene_for_seed(3, 16, 16).to_dict()
    d["objects"][0]["to_world"][1][1] = 0.0  # a flattened (singular) object
    with pytest.raises(HandlesError, match=r"^objects\[0\]\.to_world: expected a similarity .* singular"):
        Scene.from_dict(d)
    d = scene_for_seed(3, 16, 16).to_dict()
    d["width"] = 4096
    with pytest.raises(HandlesError, match=r"^width: expected an integer in \[16, 1024\], got 4096"):
        Scene.from_dict(d)
    with pytest.raises(HandlesError, match=r"^width: expected an integer in \[16, 256\]"):
        Scene.from_dict({**d, "width": 512}, max_side=256)


def test_identity_edit_renders_the_same_image():
    s = scene_for_seed(5)
    a = render(s, spp=4, seed=1)
    pivot = object_pivot(a.depth, a.masks[0], s)
    b = render(s.with_object_edit(0, HandleEdit(), pivot), spp=4, seed=1)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_allclose(a.depth, b.depth, atol=1e-5)
    np.testing.assert_array_equal(a.masks, b.masks)


def test_translation_edit_moves_the_lifted_object_by_the_translation():
    centre = np.array([0.0, 0.3, 4.5])
    s = _sphere_scene(centre, 0.5)
    depth, masks = depth_and_masks(s)
    pivot = object_pivot(depth, masks[0], s)
    moved = s.with_object_edit(0, HandleEdit(translate=(0.4, 0.0, 0.5)), pivot)
    depth2, masks2 = depth_and_masks(moved)
    # the sphere's centre is where the transform sends it (exact, via the world frame)
    new_centre = moved.object_centre_camera(0)
    np.testing.assert_allclose(new_centre, centre + [0.4, 0.0, 0.5], atol=1e-9)
    # and the lifted visible surface is a sphere around it
    cam = Camera(s.height, s.width, s.fov_deg)
    pts = lift(torch.from_numpy(depth2.astype(np.float64))[None, None], cam)[0].permute(1, 2, 0).numpy()
    assert np.abs(np.linalg.norm(pts[masks2[0]] - new_centre, axis=1) - 0.5).max() < 1e-3


def test_rotation_about_pivot_keeps_the_pivot_and_scale_grows_the_object():
    s = scene_for_seed(8)
    depth, masks = depth_and_masks(s)
    k = int(np.argmax(masks.sum((1, 2))))
    pivot = object_pivot(depth, masks[k], s)
    rot = s.with_object_edit(k, HandleEdit(rotate_axis=(0, 1, 0), rotate_deg=90), pivot)
    big = s.with_object_edit(k, HandleEdit(scale=1.3), pivot)
    # the pivot is a fixed point of the edit: the object's centre moves around it consistently
    c0, c1 = s.object_centre_camera(k), rot.object_centre_camera(k)
    assert abs(np.linalg.norm((c0 - pivot)[[0, 2]]) - np.linalg.norm((c1 - pivot)[[0, 2]])) < 1e-9
    _, masks_big = depth_and_masks(big)
    assert masks_big[k].sum() > masks[k].sum()


def test_camera_move_matches_geometry_camera_move():
    from diffusion_handles.geometry.transform import camera_move

    s = scene_for_seed(2)
    edit = HandleEdit(translate=(0.3, 0.0, 0.2), rotate_axis=(0, 1, 0), rotate_deg=5)
    moved = s.with_camera_edit(edit)
    expect = camera_move(edit).apply(torch.tensor(s.object_centre_camera(0)))
    np.testing.assert_allclose(moved.object_centre_camera(0), expect.numpy(), atol=1e-9)
