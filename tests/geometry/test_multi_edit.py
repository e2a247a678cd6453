"""Several objects moved in one pass: one z-buffer across objects (geometry.multi)."""

from __future__ import annotations

import pytest
import torch

from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry import (
    Camera,
    HandleEdit,
    compute_edit,
    compute_multi_edit,
    disjoint_masks,
    lift,
)

S = 48


def _scene():
    """A wall at z=4 and two boxes: A (left, z=2) and B (right, z=3)."""
    depth = torch.full((1, 1, S, S), 4.0, dtype=torch.float64)
    a = torch.zeros_like(depth)
    b = torch.zeros_like(depth)
    a[..., 20:28, 6:14] = 1.0
    b[..., 20:28, 32:40] = 1.0
    depth[a > 0.5] = 2.0
    depth[b > 0.5] = 3.0
    return depth, a, b


def _shift_to(depth, mask, target_px: float, cam: Camera) -> HandleEdit:
    """The x-translation that brings the object's centroid to image column ``target_px``."""
    pts = lift(depth, cam)[0].permute(1, 2, 0)[mask[0, 0] > 0.5]
    c = pts.mean(0)
    x_target = (target_px - cam.cx) * float(c[2]) / cam.fx
    return HandleEdit(translate=(x_target - float(c[0]), 0.0, 0.0))


def test_nearer_object_wins_where_two_moved_objects_overlap():
    depth, a, b = _scene()
    cam = Camera(S, S)
    # both moved onto column 24: A (z=2) is nearer than B (z=3), so A must win the overlap
    geom = compute_multi_edit(depth, [a, b], [_shift_to(depth, a, 24.0, cam), _shift_to(depth, b, 24.0, cam)], cam)
    overlap = (geom.edited_masks[:, 0:1] > 0) | (geom.edited_masks[:, 1:2] > 0)
    a_alone = compute_edit(torch.where(b > 0.5, torch.full_like(depth, float("inf")), depth), a,
                           _shift_to(depth, a, 24.0, cam), cam, require_background=False).object_wins
    b_alone = compute_edit(torch.where(a > 0.5, torch.full_like(depth, float("inf")), depth), b,
                           _shift_to(depth, b, 24.0, cam), cam, require_background=False).object_wins
    both = a_alone & b_alone
    assert int(both.sum()) > 20, "the test needs the two moved objects to overlap"
    assert bool((geom.labels[both] == 0).all()), "the nearer object (A) must win every overlapping pixel"
    torch.testing.assert_close(geom.zbuffer[both], torch.full_like(geom.zbuffer[both], 2.0))
    # B is seen where only it lands; both old places are holes unless covered
    assert bool((geom.labels[b_alone & ~a_alone] == 1).all())
    assert bool(overlap.any())
    assert float(geom.valid[0, 0, 24, 10]) == 0.0 and float(geom.valid[0, 0, 24, 36]) == 0.0
    # per-object masks are disjoint and sum to the union's M'_o
    assert float((geom.edited_masks > 0).sum(1).max()) <= 1
    torch.testing.assert_close(geom.edited_mask, geom.edited_masks.sum(1, keepdim=True))


def test_an_object_is_not_hidden_by_another_objects_old_place():
    """B moves behind A's *old* position: A moved away, so B must be visible there."""
    depth, a, b = _scene()
    cam = Camera(S, S)
    geom = compute_multi_edit(depth, [a, b], [HandleEdit(translate=(0.0, -0.8, 0.0)), _shift_to(depth, b, 10.0, cam)], cam)
    assert bool((geom.labels[0, 0, 20:28, 8:12] == 1).all())


def test_one_object_equals_compute_edit():
    depth, a, _ = _scene()
    cam = Camera(S, S)
    e = HandleEdit(translate=(0.3, 0.1, 0.2), rotate_deg=20)
    one = compute_edit(depth, a, e, cam)
    multi = compute_multi_edit(depth, [a], [e], cam)
    for name in ("source", "valid", "edited_mask", "object_depth"):
        torch.testing.assert_close(getattr(multi, name), getattr(one, name))
    for hw in ((12, 12), (24, 24)):
        f1, f2 = one.at_resolution(*hw), multi.at_resolution(*hw)
        torch.testing.assert_close(f2.source, f1.source)
        torch.testing.assert_close(f2.edited_mask, f1.edited_mask)


def test_each_object_keeps_its_own_flow_at_feature_resolution():
    depth, a, b = _scene()
    cam = Camera(S, S)
    ea, eb = HandleEdit(translate=(0.0, -0.5, 0.0)), HandleEdit(translate=(0.0, 0.5, 0.0))
    multi = compute_multi_edit(depth, [a, b], [ea, eb], cam).at_resolution(24, 24)
    one_a = compute_edit(depth, a, ea, cam).at_resolution(24, 24)
    # on the left half (object A's landing place) the flow is A's alone
    torch.testing.assert_close(multi.source[..., :, :12], one_a.source[..., :, :12])
    assert float(multi.flow[..., :, 12:].abs().amax()) > 0.01  # B moves on the right


def test_bad_inputs_are_one_line_errors():
    depth, a, b = _scene()
    with pytest.raises(HandlesError, match=r"edits\[1\]\.mask: .*empty"):
        compute_multi_edit(depth, [a, torch.zeros_like(b)], [HandleEdit(), HandleEdit()])
    with pytest.raises(HandlesError, match="one transform per mask"):
        compute_multi_edit(depth, [a, b], [HandleEdit()])
    with pytest.raises(HandlesError, match=r"edits\[1\]\.mask: expected pixels of its own"):
        disjoint_masks([a, a])
    with pytest.raises(HandlesError, match=r"edits\[0\]: transform: .*behind the camera"):
        compute_multi_edit(depth, [a, b], [HandleEdit(translate=(0, 0, -5.0)), HandleEdit()])
