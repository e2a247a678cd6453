"""Exact and property-based checks of the 3D edit (Sec. 5.1, Eqs. 4-7)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry import (
    Camera,
    HandleEdit,
    camera_move,
    compute_camera_move,
    compute_edit,
    render_preview,
    warp,
)

from .scenes import bbox, box_on_wall


def test_identity_edit_gives_identity_flow_and_full_validity():
    depth, mask = box_on_wall()
    g = compute_edit(depth, mask, HandleEdit())
    assert torch.allclose(g.flow, torch.zeros_like(g.flow), atol=1e-9)
    assert bool((g.valid == 1).all())
    assert torch.allclose(g.edited_mask, mask, atol=1e-9)
    assert torch.allclose(g.object_depth[mask > 0.5], depth[mask > 0.5])


@settings(max_examples=30, deadline=None)
@given(
    z=st.floats(1.0, 8.0),
    tx=st.floats(-0.6, 0.6),
    ty=st.floats(-0.4, 0.4),
    h=st.integers(40, 90),
    w=st.integers(40, 120),
    fov=st.floats(30, 90),
)
def test_parallel_translation_shifts_by_f_t_over_z(z, tx, ty, h, w, fov):
    cam = Camera(h, w, fov)
    box = (h // 3, h // 3 + h // 4, w // 3, w // 3 + w // 4)
    depth, mask = box_on_wall(h, w, z_wall=z * 3, z_box=z, box=box)
    dx, dy = cam.fx * tx / z, cam.fy * ty / z
    try:
        g = compute_edit(depth, mask, HandleEdit(translate=(tx, ty, 0.0)), cam)
    except HandlesError:
        y0, y1, x0, x1 = box  # only when the moved box leaves the frame
        assert y0 + dy >= h - 0.5 or y1 + dy <= 0.5 or x0 + dx >= w - 0.5 or x1 + dx <= 0.5
        return
    # the flow on the moved object is exactly (dx, dy) pixels
    won = g.object_wins[0, 0]
    flow_px = g.flow[0].permute(1, 2, 0)[won] * torch.tensor([w, h], dtype=torch.float64)
    assert torch.allclose(flow_px, torch.tensor([dx, dy], dtype=torch.float64).expand_as(flow_px), atol=1e-6)
    # the edited mask is the box moved by (dx, dy): pixel centres inside the moved box
    y0, y1, x0, x1 = box
    j = torch.arange(w, dtype=torch.float64) + 0.5
    i = torch.arange(h, dtype=torch.float64) + 0.5
    expect = ((i[:, None] - dy >= y0) & (i[:, None] - dy < y1)) & ((j[None] - dx >= x0) & (j[None] - dx < x1))
    got = g.edited_mask[0, 0] > 0.5
    assert int((expect ^ got).sum()) <= (y1 - y0 + x1 - x0) * 0.1 + 2  # only ties on pixel edges may differ
    # pixels the object left and nothing covers are holes
    holes = (mask[0, 0] > 0.5) & ~g.object_wins[0, 0]
    assert bool((g.valid[0, 0][holes] == 0).all())


@settings(max_examples=20, deadline=None)
@given(z=st.floats(2.0, 6.0), ratio=st.floats(0.5, 0.95))
def test_moving_towards_camera_enlarges_by_depth_ratio(z, ratio):
    h, w = 120, 160
    depth, mask = box_on_wall(h, w, z_wall=20.0, z_box=z, box=(50, 70, 70, 90))
    # move along the ray through the box centre so it stays centred on the same pixel
    cam = Camera(h, w)
    g0 = compute_edit(depth, mask, HandleEdit())
    c = g0.pivots[0]
    t = (c * (ratio - 1.0)).tolist()
    g = compute_edit(depth, mask, HandleEdit(translate=t), cam)
    y0, y1, x0, x1 = bbox(g.edited_mask)
    assert (x1 - x0) == pytest.approx(20 / ratio, abs=1.5)
    assert (y1 - y0) == pytest.approx(20 / ratio, abs=1.5)
    # magnified splats leave no pinholes inside the object
    inner = g.edited_mask[0, 0, y0 + 1 : y1 - 1, x0 + 1 : x1 - 1]
    assert bool((inner > 0.5).all())
    assert torch.allclose(g.object_depth[g.object_wins], torch.tensor(z * ratio, dtype=torch.float64), rtol=1e-9)


def test_nearer_surface_wins_overlaps():
    h, w = 60, 80
    depth = torch.full((1, 1, h, w), 10.0, dtype=torch.float64)
    mask = torch.zeros_like(depth)
    mask[..., 20:40, 10:30] = 1
    depth[mask > 0.5] = 5.0
    depth[..., 20:40, 50:70] = 3.0  # a pillar in front, to the right
    cam = Camera(h, w)
    shift = 30 * 5.0 / cam.fx  # 30 pixels to the right, same depth: half behind the pillar
    g = compute_edit(depth, mask, HandleEdit(translate=(shift, 0, 0)), cam)
    assert not bool(g.object_wins[..., 22:38, 51:68].any())  # hidden behind the pillar
    assert bool(g.object_wins[..., 22:38, 41:49].all())  # visible beside it
    assert torch.allclose(g.zbuffer[..., 22:38, 52:68], torch.tensor(3.0, dtype=torch.float64))
    # now bring it in front of the pillar: it wins
    g2 = compute_edit(depth, mask, HandleEdit(translate=(140 / cam.fx, 0, -3.0)), cam)  # centre at column 60, z = 2
    won = g2.object_wins[0, 0]
    assert bool((g2.zbuffer[0, 0][won] < 3.0).all())
    assert bool(won[22:38, 52:68].any())


@settings(max_examples=15, deadline=None)
@given(
    tx=st.floats(-0.4, 0.4), tz=st.floats(-0.8, 0.8), deg=st.floats(-35, 35),
    scale=st.floats(0.7, 1.4), axis=st.sampled_from([(0, 1, 0), (1, 0, 0), (0, 0, 1), (1, 1, 0)]),
)
def test_edit_then_inverse_restores_mask(tx, tz, deg, scale, axis):
    h, w = 80, 100
    depth, mask = box_on_wall(h, w, z_wall=8.0, z_box=3.0, box=(25, 55, 35, 65))
    edit = HandleEdit((tx, 0.1, tz), axis, deg, scale)
    g = compute_edit(depth, mask, edit)
    # lift the edited scene (the object where it won, at its Eq. 7 depth, over the bare wall)
    # and apply the inverse transform
    inside = g.object_wins & (g.object_depth > 0)
    edited_depth = torch.where(inside, g.object_depth, torch.full_like(depth, 8.0))
    back = compute_edit(edited_depth, inside.double(), g.transforms[0].inverse())
    a, b = back.edited_mask[0, 0] > 0.5, mask[0, 0] > 0.5
    iou = float((a & b).sum() / (a | b).sum())
    assert iou > 0.9


def test_feature_resolution_flow_agrees_with_image_flow():
    depth, mask = box_on_wall(96, 128, z_wall=9, z_box=3, box=(24, 72, 32, 96))
    g = compute_edit(depth, mask, HandleEdit((0.2, -0.1, 0.4), (0, 1, 0), 25, 1.1))
    for h, w in [(12, 16), (24, 32), (48, 64)]:
        f = g.at_resolution(h, w)
        assert f.flow.shape == (1, 2, h, w) and f.valid.shape == (1, 1, h, w)
        # the image flow at the feature pixel centres (bilinear) agrees inside the object
        ys = (torch.arange(h, dtype=torch.float64) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float64) + 0.5) / w
        centres = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))[None]
        img_flow = warp(g.flow, centres)
        interior = (f.edited_mask[0, 0] > 0.999) & (warp(g.edited_mask, centres)[0, 0] > 0.999)
        assert int(interior.sum()) > 0
        err = (f.flow - img_flow)[0].permute(1, 2, 0)[interior] * torch.tensor([128, 96], dtype=torch.float64)
        assert float(err.abs().max()) < 0.05  # pixels at image resolution
        # masks agree with pooled image masks in area
        assert float(f.edited_mask.mean()) == pytest.approx(float(g.edited_mask.mean()), abs=1e-9)


def test_warp_moves_signals_with_the_flow():
    depth, mask = box_on_wall(40, 60, z_wall=6, z_box=3, box=(10, 30, 10, 30))
    cam = Camera(40, 60)
    g = compute_edit(depth, mask, HandleEdit(translate=(10 * 3 / cam.fx, 0, 0)), cam)  # 10 pixels right
    img = torch.rand(1, 3, 40, 60, dtype=torch.float64)
    out = render_preview(img, g)
    assert torch.allclose(out[..., 12:28, 22:38], img[..., 12:28, 12:28], atol=1e-9)
    # Psi' at feature resolution: an 8x8 feature map warped by the 8x8 flow
    feat = torch.rand(1, 5, 20, 30, dtype=torch.float64)
    f = g.at_resolution(20, 30)
    warped = warp(feat, f.source)
    assert torch.allclose(warped[..., 6:14, 11:19], feat[..., 6:14, 6:14], atol=1e-9)


def test_camera_move_translates_everything():
    h, w = 48, 64
    depth = torch.full((1, 1, h, w), 4.0, dtype=torch.float64)
    cam = Camera(h, w)
    t = 8 * 4.0 / cam.fx  # camera 8 px worth to the right -> scene shifts 8 px left
    g = compute_camera_move(depth, camera_move(HandleEdit(translate=(t, 0, 0))), cam)
    assert torch.allclose(g.flow[0, 0][g.object_wins[0, 0]] * w, torch.tensor(-8.0, dtype=torch.float64), atol=1e-6)
    assert bool((g.valid[0, 0, :, -8:] == 0).all()) and bool((g.valid[0, 0, :, :-9] == 1).all())


def test_bad_edits_raise_clear_errors():
    depth, mask = box_on_wall()
    with pytest.raises(HandlesError, match="behind the camera"):
        compute_edit(depth, mask, HandleEdit(translate=(0, 0, -5.0)))
    with pytest.raises(HandlesError, match="out of the frame"):
        compute_edit(depth, mask, HandleEdit(translate=(100.0, 0, 0)))
    with pytest.raises(HandlesError, match="hidden"):
        compute_edit(depth, mask, HandleEdit(translate=(1.5, 0, 3.5)))  # behind the wall, beside its old place
    with pytest.raises(HandlesError, match="empty"):
        compute_edit(depth, torch.zeros_like(mask), HandleEdit())


def test_batched_edit_matches_single():
    d1, m1 = box_on_wall(z_box=3.0)
    d2, m2 = box_on_wall(z_box=4.0, box=(10, 40, 20, 60))
    e = HandleEdit((0.3, 0, 0.5), (0, 1, 0), 20)
    gb = compute_edit(torch.cat([d1, d2]), torch.cat([m1, m2]), e)
    for i, (d, m) in enumerate([(d1, m1), (d2, m2)]):
        gs = compute_edit(d, m, e)
        assert torch.allclose(gb.flow[i : i + 1], gs.flow)
        assert torch.equal(gb.object_wins[i : i + 1], gs.object_wins)


def test_pivot_is_the_centroid_of_the_lifted_object_everywhere():
    from diffusion_handles.geometry import lift, object_centroid

    depth, mask = box_on_wall(z_box=3.0)
    depth[..., 40:50, 50:60] = 2.5  # a non-planar object
    g = compute_edit(depth, mask, HandleEdit(rotate_deg=10))
    assert torch.allclose(g.pivots, object_centroid(lift(depth, Camera(96, 128)), mask), atol=1e-12)


def test_splat_footprint_covers_its_square():
    """A point with footprint 3 covers the 3x3 pixels around it; footprint 1 only its own pixel."""
    from diffusion_handles.geometry.splat import zbuffer_splat

    pix = torch.tensor([[5.5, 4.5], [1.5, 1.5]], dtype=torch.float64)  # centres of pixels (4, 5), (1, 1)
    z = torch.tensor([2.0, 3.0], dtype=torch.float64)
    zb = zbuffer_splat(pix, z, torch.zeros(2, dtype=torch.long), torch.tensor([3.0, 1.0], dtype=torch.float64), 1, 8, 10)
    covered = torch.isfinite(zb[0, 0])
    assert bool(covered[3:6, 4:7].all()) and int(covered.sum()) == 9 + 1
    assert float(zb[0, 0, 1, 1]) == 3.0 and float(zb[0, 0, 5, 6]) == 2.0


def test_strong_magnification_leaves_no_pinholes():
    """Brought 4.5x closer, each source pixel must cover ~4.5x4.5 target pixels (the footprint);
    the closing alone (radius 1) cannot fill gaps of 3-4 pixels. (4.5, not 4: at exactly 4x the
    points land on pixel corners and each touches 2x2 pixels.)"""
    h, w = 160, 160
    depth, mask = box_on_wall(h, w, z_wall=40.0, z_box=8.0, box=(74, 86, 74, 86))
    c = compute_edit(depth, mask, HandleEdit()).pivots[0]
    g = compute_edit(depth, mask, HandleEdit(translate=(c * (1 / 4.5 - 1.0)).tolist()), Camera(h, w))
    y0, y1, x0, x1 = bbox(g.edited_mask)
    assert (x1 - x0) == pytest.approx(12 * 4.5, abs=4)
    inner = g.edited_mask[0, 0, y0 + 2 : y1 - 2, x0 + 2 : x1 - 2]
    assert bool((inner > 0.5).all())
