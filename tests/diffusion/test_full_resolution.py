"""Edits come back at the input's size, the input's pixels untouched outside the edit region, and
an edit window runs the model at its own size on part of a larger photo (issue: any photo in, the
same photo out). Tiny random model (native size 32 px)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from diffusion_handles.diffusion.config import InversionConfig
from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry import HandleEdit
from diffusion_handles.io import save_image

MOVE = HandleEdit(translate=(0.25, 0.0, 0.0))


def _photo(size: int):
    """A textured wall with a box in front of it, quantised to 8 bits like a file."""
    g = torch.Generator().manual_seed(3)
    image = (torch.rand(1, 3, size, size, generator=g) * 255).round() / 255
    depth = torch.full((1, 1, size, size), 4.0)
    mask = torch.zeros(1, 1, size, size)
    a, b = int(size * 0.40), int(size * 0.55)
    mask[..., a:b, a:b] = 1.0
    depth[mask > 0.5] = 3.0
    image[:, 0:1][mask > 0.5] = 0.9
    return image, depth, mask


def _inv(handles, size, **config):
    image, depth, mask = _photo(size)
    inv = handles.invert(image, "a red box", depth, mask,
                         inversion=InversionConfig(num_steps=3, method="negative-prompt", **config))
    return image, depth, inv


def _png_roundtrip(x: torch.Tensor, tmp_path) -> np.ndarray:
    save_image(tmp_path / "x.png", x)
    return np.asarray(Image.open(tmp_path / "x.png").convert("RGB"))


def test_a_large_input_is_edited_at_the_models_size_and_comes_back_at_its_own(handles, tmp_path):
    """A model run at the input's size, or a result left at the model's, fails; so does a
    composite that touches a pixel outside the region (compared byte for byte after the PNG)."""
    image, _, inv = _inv(handles, 96)
    assert tuple(inv.image.shape[-2:]) == (32, 32) and inv.input_hw == (96, 96)
    out = handles.edit(inv, MOVE, source_image=image)
    assert out.edited.shape == (1, 3, 96, 96) and out.region.shape == (1, 1, 96, 96)
    outside = (out.region[0, 0] == 0).numpy()
    assert outside.mean() > 0.3
    got, want = _png_roundtrip(out.edited, tmp_path), _png_roundtrip(image, tmp_path)
    assert np.array_equal(got[outside], want[outside])


def test_a_window_edit_keeps_the_photo_outside_the_window(handles, tmp_path):
    """The window's generation placed at the wrong offset, or scaled wrongly, changes pixels
    outside it or misses the object; an edit without the photo cannot fill outside the window."""
    box = (24, 24, 72, 72)
    image, depth, inv = _inv(handles, 96, window=box)
    assert tuple(inv.image.shape[-2:]) == (32, 32) and inv.config.window == box
    out = handles.edit(inv, MOVE, source_image=image)
    assert out.edited.shape == (1, 3, 96, 96)
    outside_window = torch.ones(96, 96, dtype=torch.bool)
    outside_window[24:72, 24:72] = False
    assert torch.equal(out.edited[0][:, outside_window], image[0][:, outside_window])
    assert float(out.region[0, 0][outside_window].max()) == 0.0
    assert float(out.region[0, 0][24:72, 24:72].max()) == pytest.approx(1.0)
    moved = out.edited_mask[0, 0] > 0.5  # the moved box lands right of where it was, inside the window
    cols = torch.nonzero(moved)[:, 1].float()
    assert cols.numel() > 0 and float(cols.mean()) > 47.5 + 2
    assert torch.allclose(out.edited_depth[0, 0][:10, :10], torch.full((10, 10), 4.0), atol=1e-4)
    with pytest.raises(HandlesError, match="source_image"):
        handles.edit(inv, MOVE)


def test_a_window_must_hold_the_object_and_lie_in_the_photo(handles):
    image, depth, mask = _photo(96)
    with pytest.raises(HandlesError, match="misses the mask"):
        handles.invert(image, "x", depth, mask, inversion=InversionConfig(num_steps=2, window=(0, 0, 20, 20)))
    with pytest.raises(HandlesError, match="inside the 96x96 image"):
        handles.invert(image, "x", depth, mask, inversion=InversionConfig(num_steps=2, window=(50, 50, 120, 120)))


def _silhouette_case(handles):
    """A 96-px photo whose box (rows/cols 38-51) does not fall on the 32-px work grid's 3-px cells."""
    image, depth, inv = _inv(handles, 96)
    _, _, mask = _photo(96)
    return image, depth, mask, inv


def test_the_finish_warps_a_large_photo_by_the_flow_at_its_own_resolution(handles):
    """With the input's depth and mask, the kept pixels are the photo warped by the 3D flow
    computed at the photo's resolution (the same transform): a finish that interpolates the
    work-size flow steps the moved box's edges on the work grid, a window camera without the
    crop's principal point or another transform puts them elsewhere; both fail the equality."""
    from diffusion_handles.geometry import Camera, compute_edit, warp
    from diffusion_handles.stages.s6_finish import keep_weight, old_rim

    image, depth, mask, inv = _silhouette_case(handles)
    fine = handles.edit(inv, MOVE, source_image=image, source_depth=depth, source_mask=mask)
    coarse = handles.edit(inv, MOVE, source_image=image)
    truth = compute_edit(depth, mask, MOVE, Camera(96, 96))
    want = warp(image, truth.source)
    ring = old_rim(mask, truth.edited_mask, depth)  # the old footprint and its rim are refilled
    keep = (keep_weight(truth.valid) * (1.0 - ring) >= 1.0) & (fine.region >= 1.0) & (fine.effects <= 0.0)
    edge = keep & (F.max_pool2d(truth.edited_mask, 3, 1, 1) > 0.5) & (-F.max_pool2d(-truth.edited_mask, 3, 1, 1) < 0.5)
    assert int(edge.sum()) > 20  # the moved box's outline, inside the region, kept from the warp
    k = keep.expand_as(want)
    assert torch.allclose(fine.edited[k], want[k], atol=1e-5)
    e = edge.expand_as(want)
    assert float((coarse.edited[e] - want[e]).abs().max()) > 0.2  # the work-size flow misses pixels of the outline


def test_the_old_silhouettes_blended_rim_is_refilled(handles):
    """The photo's box has a 1-px rim outside its mask that mixes the box's red with the wall (as a
    renderer's or a segmenter's mask leaves it). After the move, that rim must not keep the red
    (the finish treats it as a hole: without ``old_rim`` it keeps the warp's red outline), and the
    warp is kept right up to it (no feather around a 1-px hole: its neighbours are known)."""
    from diffusion_handles.geometry import Camera, compute_edit, warp
    from diffusion_handles.stages.s6_finish import keep_weight

    image, depth, mask = _photo(96)
    rim = (F.max_pool2d(mask, 3, 1, 1) > 0.5) & (mask < 0.5)
    image = torch.where(rim.expand_as(image), 0.5 * image + 0.5 * torch.tensor([0.9, 0.0, 0.0]).view(1, 3, 1, 1),
                        image)
    inv = handles.invert(image, "a red box", depth, mask,
                         inversion=InversionConfig(num_steps=3, method="negative-prompt"))
    out = handles.edit(inv, MOVE, source_image=image, source_depth=depth, source_mask=mask)
    truth = compute_edit(depth, mask, MOVE, Camera(96, 96))
    moved = truth.edited_mask > 0.5
    left = rim & ~F.max_pool2d(moved.float(), 3, 1, 1).bool()  # the old rim, away from the moved box
    assert int(left.sum()) > 20
    before = (image - out.edited)[:, :1][left].abs().mean()
    assert float(before) > 0.1  # the mixed red is gone: the warp alone leaves it unchanged (difference 0)
    beside = (F.max_pool2d(rim.float(), 3, 1, 1) > 0.5) & ~rim & (mask < 0.5) & ~moved & (out.region >= 1.0)
    beside = beside & (keep_weight(truth.valid) >= 1.0)  # the wall just outside the old rim
    assert int(beside.sum()) >= 10
    k = beside.expand_as(image)
    assert torch.allclose(out.edited[k], warp(image, truth.source)[k], atol=1e-5)


def test_old_rim_on_a_square_and_in_front_of_it():
    """The hole is the old footprint grown by one pixel, outside the moved object and the pixel
    beside it (its own blended rim); a grown pixel nearer than the object (an occluder's edge) is
    not part of it, one behind it is."""
    from diffusion_handles.stages.s6_finish import old_rim

    src = torch.zeros(1, 1, 12, 12)
    src[..., 4:8, 4:8] = 1.0
    moved = torch.zeros_like(src)
    moved[..., 4:8, 7:11] = 1.0
    ring = old_rim(src, moved, beside=0)
    assert float(ring[..., 3, 3]) == 1.0 and float(ring[..., 2, 2]) == 0.0  # one pixel out, diagonal included
    assert float(ring[..., 5, 5]) == 1.0 and float(ring[..., 5, 6]) == 1.0  # the old footprint, uncovered
    assert float(ring[..., 5, 7]) == 0.0 and float(ring[..., 5, 8]) == 0.0  # under the moved object: not a hole
    assert int(ring.sum()) == 36 - 8  # the 6x6 grown footprint minus its 8 pixels under the moved box
    ring = old_rim(src, moved)  # and one pixel beside the moved box stays the warp's
    assert float(ring[..., 5, 5]) == 1.0 and float(ring[..., 5, 6]) == 0.0 and float(ring[..., 3, 6]) == 0.0
    assert int(ring.sum()) == 36 - 18  # minus columns 6-8 of the grown footprint
    depth = torch.full_like(src, 4.0)
    depth[src > 0.5] = 3.0
    depth[..., 3, :] = 2.0  # an occluder's lower edge along row 3, in front of the object
    ring = old_rim(src, moved, depth)
    assert float(ring[..., 3, 4:7].max()) == 0.0 and float(ring[..., 8, 5]) == 1.0 and float(ring[..., 5, 3]) == 1.0


def test_source_depth_and_mask_are_checked_against_the_photo(handles):
    image, depth, mask, inv = _silhouette_case(handles)
    with pytest.raises(HandlesError, match=r"source_depth: expected size 96x96"):
        handles.edit(inv, MOVE, source_image=image, source_depth=depth[..., :90, :], source_mask=mask)
    with pytest.raises(HandlesError, match="source_depth: expected positive"):
        handles.edit(inv, MOVE, source_image=image, source_depth=depth * 0, source_mask=mask)
    with pytest.raises(HandlesError, match="source_mask: expected at least one object pixel"):
        handles.edit(inv, MOVE, source_image=image, source_depth=depth, source_mask=mask * 0)


def test_a_turn_of_a_large_photo_pivots_about_the_photos_own_centroid(handles, monkeypatch):
    """A rotation and scale of the box (rows/cols 38-51, off the work grid's cells) turns about
    the object's centroid lifted from the photo's own depth and mask, as the instant preview and
    the benchmark's truth do: the work-size centroid is off by a fraction of a work pixel, which
    moves every kept pixel of the turned box. Without the photo's pivot the equality fails."""
    from diffusion_handles.geometry import Camera, compute_edit, warp
    from diffusion_handles.stages import s1_prepare
    from diffusion_handles.stages.s6_finish import keep_weight, old_rim

    turn = HandleEdit(rotate_axis=(0.0, 0.0, 1.0), rotate_deg=35.0, scale=1.3)
    image, depth, mask, inv = _silhouette_case(handles)
    truth = compute_edit(depth, mask, turn, Camera(96, 96))
    want = warp(image, truth.source)

    def kept_error(out) -> float:
        valid = truth.valid * (1.0 - old_rim(mask, truth.edited_mask))
        keep = (keep_weight(valid) >= 1.0) & (out.region >= 1.0) & (out.effects <= 0.0) & (truth.edited_mask > 0.5)
        assert int(keep.sum()) > 50  # the turned box, kept from the warp
        k = keep.expand_as(want)
        return float((out.edited[k] - want[k]).abs().max())

    assert kept_error(handles.edit(inv, turn, source_image=image, source_depth=depth, source_mask=mask)) < 1e-5
    monkeypatch.setattr(s1_prepare, "input_pivots", lambda request, input_hw: None)  # the work-size centroid
    assert kept_error(handles.edit(inv, turn, source_image=image, source_depth=depth, source_mask=mask)) > 0.05


def test_an_unknown_photo_keyword_is_refused_by_name(handles):
    image, depth, mask, inv = _silhouette_case(handles)
    with pytest.raises(HandlesError, match=r"^source_imag: expected a keyword of DiffusionHandles.edit"):
        handles.edit(inv, MOVE, source_imag=image)


def test_inpainting_behind_the_moved_object_takes_the_background_alone():
    """A hole beside the moved red box (what it uncovered) is filled from the green floor, not
    with the box's red (the box's pixels are not sources); a hole on the box (a side it turns
    towards the camera) is filled from the box. Without ``foreground`` the red bleeds in."""
    import numpy as np

    from diffusion_handles.stages.s6_finish import inpaint

    image = torch.zeros(1, 3, 40, 40)
    image[:, 1] = 0.6
    box = torch.zeros(40, 40, dtype=torch.bool)
    box[10:30, 20:32] = True
    image[:, 0][:, box] = 0.9
    image[:, 1][:, box] = 0.1
    holes = np.zeros((40, 40), dtype=bool)
    holes[12:28, 14:20] = True  # uncovered floor left of the box
    holes[18:22, 24:28] = True  # a hole on the box
    fg = box.numpy()
    out = inpaint(image, holes, fg)
    assert float(out[0, 0, 12:28, 14:20].max()) < 0.05 and float(out[0, 1, 12:28, 14:20].min()) > 0.55
    assert float(out[0, 0, 18:22, 24:28].min()) > 0.85  # the box's own hole keeps its red
    bled = inpaint(image, holes)
    assert float(bled[0, 0, 12:28, 17:20].max()) > 0.3  # the red the foreground keeps out


def _inpainted_foregrounds(monkeypatch):
    """``(foregrounds, boxes)``: each foreground the finish hands to the inpainting, placed in the
    photo's frame (the finish works on the edit region's bounding box, recorded in ``boxes``)."""
    from diffusion_handles.stages import s6_finish

    seen, boxes = [], []
    real_inpaint, real_detail = s6_finish.inpaint, s6_finish._detail

    def detail(prep, geo, generated, kept, frame, region, *rest):  # the edit region's box, as _detail finds it
        boxes.append(s6_finish.work_area(region, s6_finish.input_per_work(prep.inverted)))
        return real_detail(prep, geo, generated, kept, frame, region, *rest)

    monkeypatch.setattr(s6_finish, "_detail", detail)

    def inpaint(im, holes, fg=None):
        if fg is not None:
            y0, y1, x0, x1 = boxes[-1]
            full = torch.zeros(96, 96, dtype=torch.bool)
            full[y0:y1, x0:x1] = torch.from_numpy(fg)
            seen.append(full)
        else:
            seen.append(None)
        return real_inpaint(im, holes, fg)

    monkeypatch.setattr(s6_finish, "inpaint", inpaint)
    return seen, boxes


def test_the_finish_inpaints_behind_the_moved_object(handles, monkeypatch):
    """The finish hands the moved object to the inpainting as foreground and leaves the ground it
    uncovered out of it (a finish that drops the foreground bleeds the object's colour into the
    ground it uncovers, see the test above)."""
    from diffusion_handles.geometry import Camera, compute_edit

    image, depth, mask, inv = _silhouette_case(handles)
    seen, boxes = _inpainted_foregrounds(monkeypatch)
    handles.edit(inv, MOVE, source_image=image, source_depth=depth, source_mask=mask)
    truth = compute_edit(depth, mask, MOVE, Camera(96, 96))
    moved = truth.edited_mask[0, 0] > 0.5
    assert len(seen) == 1 and seen[0] is not None
    assert int(moved.sum()) > 100 and bool(seen[0][moved].all())  # the moved box, every pixel
    uncovered = (mask[0, 0] > 0.5) & ~torch.from_numpy(ndimage.binary_dilation(moved.numpy(), iterations=3))
    assert int(uncovered.sum()) > 50 and not bool(seen[0][uncovered].any())


def test_object_cover_takes_the_gaps_and_holes_on_the_object():
    """A turned object's splats leave thin gaps and enclosed holes in its edited mask: they are on
    the object (inpainted from it), the ground beside it is not."""
    from diffusion_handles.stages.s6_finish import object_cover

    m = torch.zeros(1, 1, 30, 30)
    m[..., 5:25, 5:25] = 1.0
    m[..., 5:25, 12:14] = 0.0  # a 2-px gap across the whole object, open at both ends
    m[..., 18:21, 18:21] = 0.0  # an enclosed hole
    cover = object_cover(m, radius=2)
    assert float(cover[..., 7:23, 12:14].min()) == 1.0 and float(cover[..., 18:21, 18:21].min()) == 1.0  # (notches at its ends)
    assert float(cover[..., :4, :].max()) == 0.0 and float(cover[..., 5:25, 26:].max()) == 0.0
    assert float(object_cover(m, radius=0)[..., 10, 12]) == 0.0  # the open gap needs the closing


def test_the_finish_counts_a_turned_objects_unseen_side_as_object(handles, monkeypatch):
    """Turned, the box shows a side the input never had: the warp leaves a hole there, and the
    finish hands the moved box's whole shell (stage 3's occluder moved and projected, at the
    photo's size) to the inpainting as foreground, so that side is inpainted from the box, not
    from the floor. A finish without the shell hands the turned front's splats alone."""
    from diffusion_handles.geometry import Camera, compute_edit
    from diffusion_handles.geometry.shadow import occluder_points, shell_footprint
    from diffusion_handles.stages import s6_finish

    image, depth, mask, inv = _silhouette_case(handles)
    turn = HandleEdit(rotate_axis=(0.0, 1.0, 0.0), rotate_deg=60.0)
    seen, boxes = _inpainted_foregrounds(monkeypatch)
    handles.edit(inv, turn, source_image=image, source_depth=depth, source_mask=mask)
    cam = Camera(96, 96)
    truth = compute_edit(depth, mask, turn, cam)
    shell = shell_footprint(truth.transforms[0].apply(occluder_points(depth, mask, cam).double()), cam)[0, 0] > 0.5
    front = s6_finish.object_cover(truth.edited_mask)[0, 0] > 0.5
    assert len(seen) == 1 and seen[0] is not None
    assert bool(seen[0][shell].all()) and bool(seen[0][front].all())
    monkeypatch.setattr(s6_finish, "moved_shell", lambda *a: None)
    handles.edit(inv, turn, source_image=image, source_depth=depth, source_mask=mask)
    side = shell & ~front & (truth.valid[0, 0] < 0.5)  # the side's holes
    assert int(side.sum()) > 20 and bool(seen[0][side].all()) and not bool(seen[1][side].any())


def test_what_stands_in_front_of_the_uncovered_ground_is_not_its_source():
    """A second object (depth 3) beside the ground a move uncovered (a hole whose filled depth is
    the floor's, 5) is in front of it; the floor around the hole (5) and the moved object's own
    cover are not marked. A test with the comparison inverted marks the floor instead."""
    from diffusion_handles.stages.s6_finish import in_front

    depth = torch.full((1, 1, 30, 30), 5.0)
    depth[..., 5:25, 2:8] = 3.0  # another object, left of the hole
    valid = torch.ones(1, 1, 30, 30)
    valid[..., 8:20, 8:16] = 0.0  # the uncovered ground
    cover = torch.zeros(1, 1, 30, 30)
    cover[..., 8:20, 16:24] = 1.0  # the moved object, right of it
    front = in_front(depth, valid, cover)
    assert float(front[..., 5:25, 2:8].min()) == 1.0
    assert float(front.sum()) == 20 * 6  # that object alone: not the floor, not the hole
    assert float(in_front(depth, torch.ones_like(valid), cover).sum()) == 0.0  # nothing uncovered


def test_the_finish_leaves_what_stands_in_front_of_the_uncovered_ground_out(handles, monkeypatch):
    """The finish passes the edited depth, its holes and the moved object's cover to
    :func:`in_front` and adds what it marks to the inpainting's foreground."""
    from diffusion_handles.stages import s6_finish

    image, depth, mask, inv = _silhouette_case(handles)
    calls = []

    def marked(d, valid, cover):
        calls.append((d.shape, valid.shape, cover.shape))
        out = torch.zeros_like(cover)
        out[..., :3, :3] = 1.0  # the area's corner: far from the box, never a hole or the object
        return out

    monkeypatch.setattr(s6_finish, "in_front", marked)
    seen, boxes = _inpainted_foregrounds(monkeypatch)
    handles.edit(inv, MOVE, source_image=image, source_depth=depth, source_mask=mask)
    assert len(calls) == 1 and calls[0][0] == calls[0][1] == calls[0][2]
    y0, _, x0, _ = boxes[-1]
    assert len(seen) == 1 and bool(seen[0][y0:y0 + 3, x0:x0 + 3].all())


def _with_effects(handles, monkeypatch, find):
    """The box moved by ``MOVE`` without and with stage 3 replaced by ``find(prep, geo, guidance)``:
    ``(plain, changed, truth, moved, mask)``, ``truth`` the edit at the photo's size and ``moved``
    its ``(96, 96)`` moved box."""
    from diffusion_handles.geometry import Camera, compute_edit
    from diffusion_handles.stages import s3_effects

    image, depth, mask, inv = _silhouette_case(handles)
    plain = handles.edit(inv, MOVE, source_image=image, source_depth=depth, source_mask=mask)
    monkeypatch.setattr(s3_effects, "find_effects", find)
    changed = handles.edit(inv, MOVE, source_image=image, source_depth=depth, source_mask=mask)
    truth = compute_edit(depth, mask, MOVE, Camera(96, 96))
    return plain, changed, truth, truth.edited_mask[0, 0] > 0.5, mask


def test_the_shadows_stop_at_the_moved_object_at_the_photos_size(handles, monkeypatch):
    """Stage 3's shadows are found at the work size (32 px) and stop at the moved object there;
    brought to the photo's size (96 px) their bilinear edge would still reach a pixel or two
    into the moved box. The finish keeps them off the box at the photo's size too: a shadow cast
    right up to the box (everywhere outside its work-size mask, half the light) leaves the box's
    kept pixels as an edit without shadows keeps them, and darkens the ground beside it.
    A finish that applies the placed shadows without ``Effects.outside`` darkens the box's edge."""
    from diffusion_handles.geometry.shadow import Effects

    def cast_all_round(prep, geo, guidance):
        off = (geo.edited_mask.float().cpu() > 0.5).float()
        return Effects(torch.tensor([0.0, 1.0, 0.0]), torch.zeros_like(off), 1.0 - off, torch.full((1, 3, 1, 1), 0.5))

    plain, shaded, truth, moved, _ = _with_effects(handles, monkeypatch, cast_all_round)
    kept = torch.from_numpy(ndimage.binary_erosion((truth.valid[0, 0] > 0.5).numpy(), iterations=2)) & moved
    assert int(kept.sum()) > 100
    assert torch.allclose(shaded.edited[0][:, kept], plain.edited[0][:, kept], atol=1e-5)  # float rounding
    beside = torch.from_numpy(ndimage.binary_dilation(moved.numpy(), iterations=3)) & ~moved & (truth.valid[0, 0] > 0.5)
    assert float((plain.edited - shaded.edited)[0][:, beside].mean()) > 0.1


def test_the_finish_relights_the_moved_object_where_it_lands(handles, monkeypatch):
    """Stage 3's relighting (``Effects.turn``, in the input's frame) moves with the object: a
    gain of one half on the box (its work-size mask grown by two work pixels, so that the map
    brought to the photo's size is flat over the whole box) halves every kept pixel of the moved
    box at the photo's size and leaves the ground away from the box alone. A finish that applied
    the map where the box stood, without moving it by the flow, leaves the part of the moved box
    beyond its old place unchanged and fails."""
    from diffusion_handles.geometry.shadow import Effects

    def half_on_the_box(prep, geo, guidance):
        box = F.max_pool2d((prep.inverted.mask.float().cpu() > 0.5).float(), 5, 1, 2)
        speck = torch.zeros_like(box)
        speck[..., 0, 0] = 1.0  # a shadow far away, so the effects count
        turn = (1.0 - 0.5 * box).expand(1, 3, -1, -1)
        return Effects(torch.tensor([0.0, 1.0, 0.0]), torch.zeros_like(box), speck, torch.ones(1, 3, 1, 1), None, turn)

    plain, relit, truth, moved, mask = _with_effects(handles, monkeypatch, half_on_the_box)
    kept = torch.from_numpy(ndimage.binary_erosion((truth.valid[0, 0] > 0.5).numpy(), iterations=3)) & moved
    assert int(kept.sum()) > 50
    assert torch.allclose(relit.edited[0][:, kept], 0.5 * plain.edited[0][:, kept], atol=1e-4)
    near = ndimage.binary_dilation((moved | (mask[0, 0] > 0.5)).numpy(), iterations=16)  # (holes there are inpainted from the relit box)
    ground = torch.from_numpy(~near) & (truth.valid[0, 0] > 0.5) & (relit.region[0, 0] == plain.region[0, 0])  # not the speck
    assert int(ground.sum()) > 1000 and torch.allclose(relit.edited[0][:, ground], plain.edited[0][:, ground], atol=1e-4)
