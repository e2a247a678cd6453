"""Trajectory interpolation, video files and the temporal-consistency figures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusion_handles.animation import (
    display_frames,
    interpolate,
    interpolate_keyframes,
    keyframes_from_json,
    quaternion,
    slerp,
    temporal_metrics,
    write_gif,
    write_mp4,
)
from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry.transform import HandleEdit, rotation_matrix


def _R(e: HandleEdit) -> np.ndarray:
    return rotation_matrix(e.rotate_axis, e.rotate_deg).double().numpy() if e.rotate_deg else np.eye(3)


def test_endpoints_are_the_keyframes_and_frames_spread_evenly():
    keys = [HandleEdit(), HandleEdit((1.0, 0.0, 0.0), (0, 1, 0), 30.0, 2.0), HandleEdit((1.0, 0.0, 2.0), (1, 0, 0), 10.0, 1.0)]
    edits = interpolate_keyframes(keys, 5)  # keyframes at frames 0, 2, 4
    for i, k in ((0, 0), (2, 1), (4, 2)):
        assert np.allclose(edits[i].translate, keys[k].translate) and math.isclose(edits[i].scale, keys[k].scale)
        assert np.allclose(_R(edits[i]), _R(keys[k]), atol=1e-9)
    assert np.allclose(edits[1].translate, (0.5, 0.0, 0.0))  # translation linear
    assert np.allclose(edits[3].translate, (1.0, 0.0, 1.0))
    assert math.isclose(edits[1].scale, math.sqrt(2.0))  # scale geometric, not (1 + 2) / 2
    assert math.isclose(edits[3].scale, math.sqrt(2.0))


def test_same_axis_turns_keep_their_full_angle():
    """0 -> 360 degrees about one axis is a full turn (slerp of q and -q would not move at all)."""
    edits = interpolate_keyframes([HandleEdit(), HandleEdit(rotate_axis=(0, 1, 0), rotate_deg=360.0)], 5)
    assert [round(e.rotate_deg, 6) for e in edits] == [0.0, 90.0, 180.0, 270.0, 360.0]
    opposite = interpolate(HandleEdit(rotate_axis=(0, 1, 0), rotate_deg=40.0),
                           HandleEdit(rotate_axis=(0, -1, 0), rotate_deg=-80.0), 0.5)  # same rotation sense
    assert np.allclose(_R(opposite), rotation_matrix((0, 1, 0), 60.0).double().numpy(), atol=1e-9)


def test_slerp_between_different_axes_is_constant_speed_geodesic():
    a = HandleEdit(rotate_axis=(0, 1, 0), rotate_deg=0.0)
    b = HandleEdit(rotate_axis=(1, 1, 0), rotate_deg=100.0)
    mid = interpolate(a, b, 0.5)
    assert np.allclose(_R(mid) @ _R(mid), _R(b), atol=1e-9)  # half the rotation, twice, is the whole
    c = HandleEdit(rotate_axis=(0, 0, 1), rotate_deg=50.0)
    frames = [interpolate(b, c, u) for u in np.linspace(0, 1, 6)]
    steps = [math.degrees(math.acos(np.clip((np.trace(_R(frames[i + 1]) @ _R(frames[i]).T) - 1) / 2, -1, 1)))
             for i in range(5)]
    assert np.allclose(steps, steps[0], atol=1e-6) and steps[0] > 1.0


def test_slerp_takes_the_shorter_arc():
    q0, q1 = quaternion((0, 0, 1), 10.0), quaternion((0, 0, 1), 350.0)  # 20 degrees apart the short way
    q = slerp(q0, q1, 0.5)
    w = abs(float(q[0]))
    assert math.isclose(2 * math.degrees(math.acos(min(1.0, w))), 0.0, abs_tol=1e-5)  # through 0 degrees


def test_keyframe_json_missing_keys_are_identity_and_errors_name_the_keyframe():
    keys = keyframes_from_json([{}, {"translate": [0.1, 0, 0]}, {"rotate_deg": 20}])
    assert keys[0] == HandleEdit() and keys[1].translate == (0.1, 0.0, 0.0) and keys[2].rotate_axis == (0.0, 1.0, 0.0)
    for bad, match in (({}, "JSON list"), ([], "empty"), ([{}, 3], "keyframe 1"), ([{"scale": -1}], "keyframe 0.*scale"),
                       ([{"spin": 3}], "unknown keys"), ([{"translate": [1, 2]}], "translate")):
        with pytest.raises(HandlesError, match=match):
            keyframes_from_json(bad)
    with pytest.raises(HandlesError, match="--frames"):
        interpolate_keyframes(keys, 1)
    with pytest.raises(HandlesError, match="--frames"):
        interpolate_keyframes(keys, 10_000)


def test_display_frames_upscale_nearest_to_even_sides():
    f = np.zeros((33, 21, 3), np.uint8)
    f[0, 0] = 255
    (big,) = display_frames([f], min_side=256)
    assert big.shape[0] % 2 == 0 and big.shape[1] % 2 == 0 and max(big.shape[:2]) >= 256
    k = 256 // 33 + 1  # integer factor 8
    assert (big[:k, :k] == 255).all() and (big[k:2 * k, :k] == 0).all()  # blocks, no smoothing


def test_mp4_and_gif_hold_every_frame(tmp_path):
    import imageio_ffmpeg
    from PIL import Image

    frames = [np.full((64, 48, 3), v, np.uint8) for v in (0, 80, 160, 240)]
    write_mp4(frames, tmp_path / "a.mp4", fps=8)
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "a.mp4"))
    meta = next(reader)
    got = [np.frombuffer(b, np.uint8).reshape(64, 48, 3) for b in reader]
    assert meta["size"] == (48, 64) and "h264" in meta["codec"] and len(got) == 4
    assert [round(float(g.mean())) for g in got] == pytest.approx([0, 80, 160, 240], abs=3)
    write_gif(frames, tmp_path / "a.gif", fps=8)
    with Image.open(tmp_path / "a.gif") as im:
        assert im.n_frames == 4


def test_temporal_metrics_separate_flicker_from_motion():
    rng = np.random.default_rng(0)
    truth = [np.full((8, 8, 3), 100 + 10 * i, np.uint8) for i in range(4)]
    same = temporal_metrics(truth, truth)
    assert same["psnr_mean"] == float("inf") and same["change_ratio"] == 1.0 and same["change_error"] == 0.0
    frozen = temporal_metrics([truth[0]] * 4, truth)
    assert frozen["change_ratio"] == 0.0 and math.isclose(frozen["change_error"], 10.0)
    noisy = [np.clip(t.astype(int) + rng.integers(-30, 30, t.shape), 0, 255).astype(np.uint8) for t in truth]
    flick = temporal_metrics(noisy, truth)
    assert flick["change_ratio"] > 1.0 and all(p < 30 for p in flick["psnr"])
    with pytest.raises(HandlesError, match="truth"):
        temporal_metrics(truth, truth[:2])


def test_frames_follow_the_interpolated_transform_geometry():
    """The preview of each interpolated edit moves the object centroid along the straight line
    between the keyframes' centroids (translation is linear in 3D, not in the image)."""
    from diffusion_handles.geometry import Camera, compute_edit

    s = 32
    depth = torch.full((1, 1, s, s), 4.0)
    mask = torch.zeros(1, 1, s, s)
    depth[..., 12:20, 12:20], mask[..., 12:20, 12:20] = 3.0, 1.0
    cam = Camera(s, s, 55.0)
    edits = interpolate_keyframes([HandleEdit(), HandleEdit((0.8, 0.0, 0.4))], 3)
    xs = []
    for e in edits:
        g = compute_edit(depth, mask, e, cam)
        m = g.edited_mask[0, 0] > 0.5
        xs.append(float(torch.nonzero(m)[:, 1].float().mean()))
    assert xs[0] < xs[1] < xs[2]
