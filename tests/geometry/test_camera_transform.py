import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusion_handles.geometry import (
    Camera,
    HandleEdit,
    Similarity,
    camera_move,
    lift,
    project,
    ray_distance_to_z,
    rotation_matrix,
    z_to_ray_distance,
)

finite = st.floats(-3, 3, allow_nan=False)


def test_intrinsics_from_horizontal_fov_any_size():
    cam = Camera(384, 640, 55.0)
    assert cam.fx == pytest.approx(320.0 / math.tan(math.radians(27.5)))
    assert cam.fy == cam.fx
    assert (cam.cx, cam.cy) == (320.0, 192.0)
    # the image's left and right edges are exactly fov/2 off axis
    assert math.degrees(math.atan(cam.cx / cam.fx)) == pytest.approx(27.5)
    with pytest.raises(ValueError, match="fov_deg"):
        Camera(10, 10, 180.0)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(3, 40), w=st.integers(3, 40), fov=st.floats(20, 120), z=st.floats(0.1, 100))
def test_lift_then_project_returns_pixel_centres(h, w, fov, z):
    cam = Camera(h, w, fov)
    depth = torch.full((1, 1, h, w), z, dtype=torch.float64)
    pts = lift(depth, cam)
    px, zz = project(pts.permute(0, 2, 3, 1), cam)
    j, i = torch.meshgrid(torch.arange(w, dtype=torch.float64), torch.arange(h, dtype=torch.float64), indexing="xy")
    assert torch.allclose(px[0, ..., 0], j + 0.5, atol=1e-9)
    assert torch.allclose(px[0, ..., 1], i + 0.5, atol=1e-9)
    assert torch.allclose(zz, depth[:, 0])


def test_ray_distance_round_trip_and_centre():
    cam = Camera(20, 30)
    z = torch.rand(1, 1, 20, 30, dtype=torch.float64) + 1
    r = z_to_ray_distance(z, cam)
    assert torch.all(r >= z)
    assert torch.allclose(ray_distance_to_z(r, cam), z)
    assert torch.allclose(r, lift(z, cam).norm(dim=1, keepdim=True))


@settings(max_examples=40, deadline=None)
@given(
    t=st.tuples(finite, finite, finite),
    axis=st.tuples(st.floats(-1, 1), st.floats(-1, 1), st.floats(0.1, 1)),
    deg=st.floats(-180, 180),
    scale=st.floats(0.25, 4),
    pivot=st.tuples(finite, finite, st.floats(1, 10)),
)
def test_edit_inverse_and_composition(t, axis, deg, scale, pivot):
    e = HandleEdit(t, axis, deg, scale)
    m = e.resolve(pivot)
    # the pivot moves by exactly the translation
    p = torch.tensor([pivot], dtype=torch.float64)
    assert torch.allclose(m.apply(p), p + torch.tensor(t, dtype=torch.float64), atol=1e-9)
    pts = torch.randn(50, 3, dtype=torch.float64)
    assert torch.allclose(m.inverse().apply(m.apply(pts)), pts, atol=1e-9)
    # HandleEdit.inverse about the moved pivot undoes the edit
    moved_pivot = [c + d for c, d in zip(pivot, t, strict=True)]
    assert (e.inverse().resolve(moved_pivot) @ m).is_identity(1e-9)
    assert m.scale == pytest.approx(scale)
    two = m @ m
    assert torch.allclose(two.apply(pts), m.apply(m.apply(pts)), atol=1e-8)


def test_rotation_right_hand_rule_in_camera_axes():
    r = rotation_matrix((0, 0, 1), 90)  # about the viewing axis: x (right) -> y (down)
    assert torch.allclose(r @ torch.tensor([1.0, 0, 0], dtype=torch.float64), torch.tensor([0, 1.0, 0], dtype=torch.float64), atol=1e-12)
    with pytest.raises(ValueError, match="axis"):
        rotation_matrix((0, 0, 0), 10)


def test_handle_edit_validation_and_dict_round_trip():
    e = HandleEdit((1, 2, 3), (0, 1, 0), 30, 1.5)
    assert HandleEdit.from_dict(e.to_dict()) == e
    with pytest.raises(ValueError, match="scale"):
        HandleEdit(scale=0)
    with pytest.raises(ValueError, match="finite"):
        HandleEdit(translate=(float("nan"), 0, 0))
    with pytest.raises(ValueError, match="unknown keys"):
        HandleEdit.from_dict({"move": [1, 2, 3]})
    assert HandleEdit().is_identity()


def test_camera_move_is_inverse_scene_motion():
    # moving the camera right by 1 moves every scene point left by 1
    s = camera_move(HandleEdit(translate=(1.0, 0, 0)))
    p = torch.tensor([[0.0, 0.0, 5.0]], dtype=torch.float64)
    assert torch.allclose(s.apply(p), torch.tensor([[-1.0, 0, 5.0]], dtype=torch.float64))
    assert isinstance(s, Similarity)
