"""Camera moves, object removal and several objects in one pass, through the facade (tiny model)."""

from __future__ import annotations

import pytest
import torch

from diffusion_handles.diffusion.config import GuidanceConfig, InversionConfig
from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry import Camera, HandleEdit, camera_move, compute_camera_move
from diffusion_handles.pipeline import CameraMove, ObjectMove, guidance_targets

from .conftest import make_scene

N = 4
INV = InversionConfig(num_steps=N, method="negative-prompt")


@pytest.fixture(scope="module")
def camera_inverted(handles, scene):
    image, depth, _ = scene
    return handles.invert(image, "a box in front of a wall", depth, torch.ones_like(depth), inversion=INV)


def test_camera_move_guides_every_valid_pixel_and_no_background(handles, camera_inverted):
    """Pin: in a camera move the object-energy mask is the valid mask at every layer, and the
    background energy is off."""
    move = HandleEdit(translate=(0.3, 0.0, 0.0))
    depth = camera_inverted.depth.float()
    h, w = depth.shape[-2:]
    geom = compute_camera_move(depth, camera_move(move), Camera(h, w))
    assert bool((geom.valid < 0.5).any()), "the move must disocclude something"
    g = GuidanceConfig()
    assert geom.whole_scene
    plan = guidance_targets(camera_inverted, geom, g, g.schedule(N, handles.backbone.num_up_blocks),
                            tuple(camera_inverted.x_T.shape[-2:]))
    for (lay, _), psi in camera_inverted.activations.items():
        fe = geom.at_resolution(*psi.shape[-2:])
        torch.testing.assert_close(plan.mask_object[lay], fe.valid.float())
        assert float(plan.mask_background[lay].abs().sum()) == 0.0
    assert plan.w_background == 0.0
    # the same geometry as an object edit (an all-ones object) would have kept a background term
    import dataclasses

    obj_plan = guidance_targets(camera_inverted, dataclasses.replace(geom, whole_scene=False), g,
                                g.schedule(N, handles.backbone.num_up_blocks), tuple(camera_inverted.x_T.shape[-2:]))
    assert float(obj_plan.w_background) > 0

    out = handles.edit(camera_inverted, CameraMove(move))
    assert out.energies, "no guided steps ran"
    holes = out.valid_mask < 0.5
    assert bool((out.region[holes] == 1).all()), "every disocclusion is generated"
    # the composite keeps the input warped to the new view outside the grown holes
    from diffusion_handles.geometry import render_preview

    warped = render_preview(camera_inverted.image.float(), geom)
    keep = (out.region == 0).expand_as(warped)
    assert bool(keep.any())
    torch.testing.assert_close(out.edited[keep], warped[keep])
    off = handles.edit(camera_inverted, CameraMove(move), guidance=GuidanceConfig(composite=False))
    torch.testing.assert_close(off.edited, off.generated)
    torch.testing.assert_close(out.valid_mask, geom.valid.float())
    assert bool(torch.isfinite(out.edited_depth).all()) and float(out.edited_depth.min()) > 0
    assert not torch.allclose(out.edited, out.reconstruction, atol=1e-3)


def test_identity_camera_move_reproduces_the_reconstruction(handles, camera_inverted):
    out = handles.edit(camera_inverted, CameraMove(HandleEdit()))
    torch.testing.assert_close(out.generated, out.reconstruction, atol=1e-4, rtol=0)


def test_removal_regenerates_inside_and_keeps_the_input_outside(handles):
    size = 24
    image, depth, mask = make_scene(size)
    mask = torch.zeros_like(mask)
    mask[..., 8:14, 9:15] = 1.0
    depth = torch.where(mask > 0.5, torch.full_like(depth, 2.0), torch.full_like(depth, 3.0))
    inv = handles.invert(image, "a wall", depth, mask, inversion=INV)
    background = torch.full_like(depth, 3.0)
    out = handles.remove(inv, background_depth=background)
    torch.testing.assert_close(out.edited_depth, background)  # generated over d'_b
    region = out.region
    inside = mask > 0.5
    assert bool((region[inside] == 1).all()), "the object must be inside the regenerated region"
    outside = region == 0
    assert int(outside.sum()) > 0
    # composite: the input exactly outside the region, the generation inside
    torch.testing.assert_close(out.edited.expand_as(image)[outside.expand_as(image)],
                               image[outside.expand_as(image)])
    # the generation deep inside the region (its rim blends into an inpainting of the input, stage 6)
    deep = -torch.nn.functional.max_pool2d(-(out.valid_mask < 0.5).float(), 11, 1, 5) > 0.5
    assert int(deep.sum()) > 0
    torch.testing.assert_close(out.edited[deep.expand_as(image)], out.generated[deep.expand_as(image)])
    # the region grows generously below the object (its shadow) more than above it
    rows = region[0, 0].amax(1) > 0.99
    top, bottom = int(rows.nonzero().min()), int(rows.nonzero().max())
    assert (bottom - 13) > (8 - top)
    assert float(out.edited_mask.sum()) == 0.0
    assert not torch.allclose(out.generated[inside.expand_as(image)], image[inside.expand_as(image)], atol=0.05)


def test_two_objects_in_one_pass(handles):
    size = 24
    image, _, _ = make_scene(size)
    depth = torch.full((1, 1, size, size), 3.0)
    a = torch.zeros_like(depth)
    b = torch.zeros_like(depth)
    a[..., 8:14, 3:9] = 1.0
    b[..., 8:14, 15:21] = 1.0
    depth[a > 0.5] = 2.0
    depth[b > 0.5] = 2.5
    union = ((a + b) > 0.5).float()
    inv = handles.invert(image, "two boxes", depth, union, inversion=INV)
    edits = [HandleEdit(translate=(0.0, -0.3, 0.0)), HandleEdit(translate=(0.0, 0.3, 0.0))]
    out = handles.edit(inv, [ObjectMove(a, edits[0]), ObjectMove(b, edits[1])])
    assert out.energies
    assert float(out.edited_mask[..., :, :12].sum()) > 0 and float(out.edited_mask[..., :, 12:].sum()) > 0
    # one energy term per object: the plan's object masks have two channels
    # each object's mask is checked (named by its place in the list); a plain list of transforms,
    # a mask without a transform, or an empty list is refused before any work
    with pytest.raises(HandlesError, match=r"object_masks\[1\]: expected size"):
        handles.edit(inv, [ObjectMove(a, edits[0]), ObjectMove(b[..., :10, :10], edits[1])])
    for bad in (edits, [ObjectMove(a, edits[0]), ObjectMove(b, "left")], []):
        with pytest.raises(HandlesError, match="transform"):
            handles.edit(inv, bad)
