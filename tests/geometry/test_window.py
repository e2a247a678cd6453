"""The edit window (geometry/window.py) and a window's camera (Camera.window): which bugs each
test catches is in its docstring."""

from __future__ import annotations

import pytest
import torch

from diffusion_handles.geometry import Camera, compute_edit, lift
from diffusion_handles.geometry.transform import HandleEdit
from diffusion_handles.geometry.window import choose_window, crop, moved_box, paste, source_to_image


def test_a_window_camera_sees_the_same_rays_as_the_photo():
    """A principal point shifted the wrong way, or a focal length not scaled with the crop's
    resize, puts the window's 3D points elsewhere than the photo's."""
    full = Camera(300, 400, 55.0)
    box = (120, 60, 270, 210)  # 150 x 150
    win = full.window(box).resized(64, 64)
    # the window's pixel (i, j) at 64 px covers the photo's pixels around (y0 + (i + .5) s, x0 + (j + .5) s)
    s = 150 / 64
    for i, j in [(0, 0), (31, 40), (63, 63)]:
        u, v = box[0] + (j + 0.5) * s, box[1] + (i + 0.5) * s
        z = torch.full((1, 1, 64, 64), 3.0, dtype=torch.float64)
        p_win = lift(z, win)[0, :, i, j]
        ray_full = torch.tensor([(u - full.cx) / full.fx, (v - full.cy) / full.fy, 1.0], dtype=torch.float64) * 3.0
        assert torch.allclose(p_win, ray_full, atol=1e-9)
    with pytest.raises(ValueError, match="window"):
        full.window((350, 0, 450, 100))


def test_the_default_camera_is_unchanged_by_resizing():
    cam = Camera(100, 200, 55.0)
    assert cam.resized(50, 100) == Camera(50, 100, 55.0)
    assert cam.resized(50, 100).fx == pytest.approx(cam.fx / 2)


def test_choose_window_holds_the_boxes_in_a_square_inside_the_image():
    box = choose_window((3024, 4032), [(1000, 1200, 1300, 1500), (1500, 1300, 1800, 1600)])
    assert box is not None
    x0, y0, x1, y1 = box
    assert x1 - x0 == y1 - y0  # square, the model's aspect
    assert x0 <= 1000 and y0 <= 1200 and x1 >= 1800 and y1 >= 1600
    assert 0 <= x0 and 0 <= y0 and x1 <= 4032 and y1 <= 3024
    edge = choose_window((3024, 4032), [(0, 0, 300, 300)])
    assert edge[0] == 0 and edge[1] == 0  # moved inside, not shrunk
    assert choose_window((600, 800), [(100, 100, 500, 500)]) is None  # too big: the whole image
    assert choose_window((600, 800), []) is None


def test_paste_and_crop_are_inverse_where_the_sizes_agree():
    canvas = torch.rand(1, 3, 40, 50)
    box = (10, 5, 30, 25)
    part = crop(canvas, box)
    assert torch.equal(paste(part, torch.zeros_like(canvas), box)[..., 5:25, 10:30], part)
    out = paste(torch.ones(1, 3, 10, 10), canvas, box)  # resized 2x into the box
    assert torch.equal(out[..., :5, :], canvas[..., :5, :]) and float(out[..., 5:25, 10:30].min()) == 1.0


def test_window_flow_maps_to_the_photos_coordinates():
    """The identity in the window is the identity in the photo; a shift by one window pixel is a
    shift by (window size / window resolution) photo pixels, and nothing moves outside."""
    h, w, box = 60, 80, (20, 10, 50, 40)  # 30 x 30, worked at 15 x 15
    ys = (torch.arange(15, dtype=torch.float64) + 0.5) / 15
    ident = torch.stack([ys[None, :].expand(15, 15), ys[:, None].expand(15, 15)])[None]
    full = source_to_image(ident, box, (h, w))
    yy = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    xx = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    expect = torch.stack([xx[None, :].expand(h, w), yy[:, None].expand(h, w)])[None]
    assert torch.allclose(full, expect, atol=1e-9)
    shifted = ident.clone()
    shifted[:, 0] += 1.0 / 15  # one window pixel to the right
    out = source_to_image(shifted, box, (h, w))
    inside = (slice(None), 0, slice(15, 25), slice(25, 45))
    assert torch.allclose((out - expect)[inside] * w, torch.full_like(out[inside], 2.0), atol=1e-6)
    assert torch.equal(out[..., :10, :], expect[..., :10, :])


def test_a_window_edit_moves_the_object_where_the_photo_edit_does():
    """Run the 3D edit in a window's camera and in the photo's: the moved object lands on the same
    photo pixels (a wrong window camera shifts or scales it)."""
    h, w = 120, 160
    cam = Camera(h, w, 55.0)
    depth = torch.full((1, 1, h, w), 6.0, dtype=torch.float64)
    mask = torch.zeros(1, 1, h, w, dtype=torch.float64)
    mask[..., 50:70, 30:50] = 1.0
    depth[mask > 0.5] = 3.0
    edit = HandleEdit(translate=(0.4, 0.0, 0.3))
    full = compute_edit(depth, mask, edit, cam)
    box = (10, 20, 90, 100)  # 80 x 80 around the object
    win_cam = cam.window(box).resized(40, 40)
    dw = torch.nn.functional.interpolate(crop(depth, box), size=(40, 40), mode="nearest")
    mw = torch.nn.functional.interpolate(crop(mask, box), size=(40, 40), mode="nearest")
    win = compute_edit(dw, mw, edit, win_cam)
    placed = paste(win.edited_mask.float(), torch.zeros(1, 1, h, w), box, "nearest") > 0.5
    truth = full.edited_mask > 0.5
    iou = float((placed & truth).sum()) / float((placed | truth).sum())
    assert iou > 0.8
    box_moved = moved_box(depth, mask, full.transforms[0], cam)
    ys, xs = torch.nonzero(truth[0, 0], as_tuple=True)
    assert abs(box_moved[0] - float(xs.min())) <= 2 and abs(box_moved[2] - float(xs.max()) - 1) <= 2
