"""Stage 3 (the effects region: old and new shadows) and the detail-preserving finish, on the tiny
random model: which bugs these catch is said in each test."""

from __future__ import annotations

import pytest
import torch

from diffusion_handles.diffusion.config import GuidanceConfig, InversionConfig
from diffusion_handles.geometry import Camera, HandleEdit
from diffusion_handles.geometry.shadow import cast_shadow, occluder_points
from diffusion_handles.stages.s6_finish import keep_weight

S = 32  # the tiny model's native size (larger inputs are scaled down to it)
FOV = 60.0
LIGHT = torch.tensor([0.7, 0.7, 0.1]) / torch.tensor([0.7, 0.7, 0.1]).norm()
MOVE = HandleEdit(translate=(-0.6, 0.0, 0.0))
INV = InversionConfig(num_steps=3, method="negative-prompt")


def _floor_scene():
    """A box standing on a textured floor, lit from the left (its shadow falls to its right)."""
    cam = Camera(S, S, FOV)
    v = torch.arange(S, dtype=torch.float32) + 0.5
    u = torch.arange(S, dtype=torch.float32) + 0.5
    ry = ((v - cam.cy) / cam.fy)[:, None].expand(S, S)
    rx = ((u - cam.cx) / cam.fx)[None, :].expand(S, S)
    receiver = torch.where(ry > 1e-3, 1.0 / ry.clamp(min=1e-3), torch.full_like(ry, 9.0)).clamp(max=9.0)[None, None]
    x, y = rx * 2.0, ry * 2.0
    box = ((x >= -0.2) & (x <= 0.6) & (y >= 0.4) & (y <= 1.0)).float()[None, None]
    depth = torch.where(box > 0.5, torch.tensor(2.0), receiver)
    g = torch.Generator().manual_seed(0)
    clean = (0.55 + 0.08 * torch.rand(1, 1, S, S, generator=g)).repeat(1, 3, 1, 1)
    shadow = cast_shadow(occluder_points(depth, box, cam), receiver, LIGHT, cam, 3.0) * (1 - box)
    image = clean * (1 - 0.55 * shadow)
    image = image * (1 - box) + torch.tensor([0.9, 0.2, 0.1]).view(1, 3, 1, 1) * box
    return image, depth, box, receiver, shadow


@pytest.fixture(scope="module")
def floor(handles):
    image, depth, box, receiver, shadow = _floor_scene()
    inv = handles.invert(image, "a red box on a floor", depth, box, inversion=INV)
    return image, inv, receiver, shadow


def _edit(handles, floor, **over):
    image, inv, receiver, _ = floor
    return handles.edit(inv, MOVE, guidance=GuidanceConfig(**over), fov_deg=FOV, background_depth=receiver,
                        source_image=image)


def test_the_effects_stage_finds_the_old_shadow_and_regenerates_it(handles, floor):
    """Removing the stage (or its region growth) leaves the old shadow outside the edit region."""
    image, _, _, shadow = floor
    on, off = _edit(handles, floor), _edit(handles, floor, effects=False)
    assert "effects" in on.timings and on.light is not None and off.light is None
    far = (shadow > 0.5) & (off.region < 0.5)  # shadow pixels the plain region leaves alone
    assert int(far.sum()) >= 10
    assert float(on.region[far].mean()) > 0.95 and float(on.region[far].min()) > 0.5
    assert float(on.effects[shadow > 0.5].mean()) > 0.8 and float(off.effects.sum()) == 0


def test_the_old_shadow_is_lifted_in_the_result(handles, floor):
    """An inverted shadow move (darkening the old shadow) or a finish that ignores the effects
    keeps the old shadow dark."""
    image, _, _, shadow = floor
    on, off = _edit(handles, floor), _edit(handles, floor, effects=False)
    far = (shadow > 0.5) & (off.region < 0.5) & (on.edited_mask < 0.5)
    luma = torch.tensor([0.2126, 0.7152, 0.0722]).view(1, 3, 1, 1)
    before = float((image * luma).sum(1, keepdim=True)[far].mean())
    after = float((on.edited * luma).sum(1, keepdim=True)[far].mean())
    kept = float((off.edited * luma).sum(1, keepdim=True)[far].mean())
    assert after > before + 0.15 and abs(kept - before) < 0.02


def test_the_new_shadow_falls_beside_the_moved_box(handles, floor):
    """A new shadow cast from the unmoved object (a missing transform) lands on the old one."""
    _, _, _, shadow = floor
    on = _edit(handles, floor)
    new = (on.effects > 0.5) & (shadow < 0.5) & (on.edited_mask < 0.5)
    cols_new = torch.nonzero(new[0, 0])[:, 1].float()
    cols_old = torch.nonzero(shadow[0, 0] > 0.5)[:, 1].float()
    assert cols_new.numel() >= 10 and float(cols_new.mean()) < float(cols_old.mean()) - 3


def test_keep_weight_keeps_the_warp_where_it_has_pixels():
    """Swapping the weight (keeping the generation on valid pixels) or ignoring the holes fails."""
    valid = torch.ones(1, 1, 32, 32)
    valid[..., 10:20, 10:20] = 0
    w = keep_weight(valid)
    assert float(w[..., 24:, 24:].min()) == pytest.approx(1.0)  # valid, away from the hole: the warp
    assert float(w[..., 11:19, 11:19].max()) == 0.0  # the hole: the generation
    assert 0.0 < float(w[..., 9, 15]) < 1.0  # the rim blends


def test_detail_finish_keeps_the_inputs_pixels_where_nothing_changes(handles, floor):
    """Without the detail finish the region is the (random) generation; with it, valid pixels
    that agree come from the input warped: the unmoved floor far from the box equals the input."""
    image, inv, _, shadow = floor
    on = _edit(handles, floor, effects=False)
    plain = _edit(handles, floor, effects=False, keep_detail=False)
    old_rim = torch.nn.functional.max_pool2d((inv.mask > 0.5).float(), 5, 1, 2) > 0.5  # refilled (old_rim), with a margin
    busy = (on.valid_mask < 0.5) | (on.edited_mask > 0.01) | old_rim
    inside = (on.region > 0.99) & (torch.nn.functional.max_pool2d(busy.float(), 3, 1, 1) < 0.5)
    sel = inside & (keep_weight(on.valid_mask) > 0.999)
    assert int(sel.sum()) >= 5
    assert float((on.edited - image).abs().amax(1, keepdim=True)[sel].max()) < 1e-5
    assert float((plain.edited - image).abs().amax(1, keepdim=True)[sel].mean()) > 1e-3
