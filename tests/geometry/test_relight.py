"""A turned object relit under the found light (geometry/relight.py, shadow.turn_gains): normals
from depth, the sky-over-sun ratio from the shadow, the gain of a turned face."""

from __future__ import annotations

import math

import torch

from diffusion_handles.geometry import Camera, HandleEdit, compute_edit, rotation_matrix
from diffusion_handles.geometry.relight import sky_over_sun, surface_normals, turn_gain

H = W = 64


def _plane(normal, offset=3.0):
    """Depth of the plane ``n . p = -offset`` (facing the camera) seen by a 60-degree camera."""
    cam = Camera(H, W, 60.0)
    v = torch.arange(H, dtype=torch.float32) + 0.5
    u = torch.arange(W, dtype=torch.float32) + 0.5
    ray = torch.stack([((u - cam.cx) / cam.fx)[None, :].expand(H, W), ((v - cam.cy) / cam.fy)[:, None].expand(H, W),
                       torch.ones(H, W)])
    n = torch.tensor(normal, dtype=torch.float32)
    n = n / n.norm()
    z = -offset / (n.view(3, 1, 1) * ray).sum(0)
    return cam, z[None, None], n


def test_normals_of_a_plane_are_its_normal_facing_the_camera():
    """A tilted plane's normal comes back everywhere inside the smoothing margin; a sign slip in
    the cross product or the facing test flips it, swapped differences turn it."""
    for normal in ([0.0, 0.0, -1.0], [0.5, -0.3, -1.0], [-0.6, 0.2, -0.8]):
        cam, depth, n = _plane(normal)
        got = surface_normals(depth, torch.ones(1, 1, H, W), cam)[0, :, 4:-4, 4:-4]
        assert float((got * n.view(3, 1, 1)).sum(0).min()) > 0.999, normal


def test_sky_over_sun_from_the_shadow():
    """``r = A / (A + E cos)``: a shadow keeping a fifth of the light under a sun at the zenith of
    the ground gives ``A = E / 4``; a lower sun (cos 0.5) half that; per channel. The ratio
    inverted (``(1 - r) / r``) gives 4."""
    r = torch.tensor([0.2, 0.2, 0.5]).view(1, 3, 1, 1)
    assert torch.allclose(sky_over_sun(r, 1.0), torch.tensor([0.25, 0.25, 1.0]).view(1, 3, 1, 1))
    assert torch.allclose(sky_over_sun(r, 0.5), torch.tensor([0.125, 0.125, 0.5]).view(1, 3, 1, 1))


def test_a_face_turned_away_from_the_sun_darkens_and_one_turned_to_it_brightens():
    """A face towards the camera (normal -z), the sun straight behind the camera (towards it:
    -z), ``k = 1``: turned 60 degrees about y its cosine to the sun drops from 1 to 0.5, so its
    gain is (1 + 0.5) / (1 + 1) = 0.75; the turn back gives 1 / 0.75 of a face at 60 degrees.
    A gain with the light's direction in place of the sun's, or before and after swapped, fails."""
    n = torch.tensor([0.0, 0.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    mask = torch.ones(1, 1, 4, 4)
    k = torch.ones(1, 3, 1, 1)
    sun = torch.tensor([0.0, 0.0, -1.0])
    rot = rotation_matrix((0.0, 1.0, 0.0), 60.0).float()
    assert torch.allclose(turn_gain(n, rot, sun, k, mask), torch.full((1, 3, 4, 4), 0.75))
    assert torch.allclose(turn_gain(n, torch.eye(3), sun, k, mask), torch.ones(1, 3, 4, 4))
    tilted = torch.einsum("ij,bjhw->bihw", rot, n)
    assert torch.allclose(turn_gain(tilted, rot.T, sun, k, mask), torch.full((1, 3, 4, 4), 1.0 / 0.75))
    half = mask.clone()
    half[..., :2] = 0.0
    assert float(turn_gain(n, rot, sun, k, half)[..., :2].min()) == 1.0  # nothing off the object


def test_the_found_shadows_relight_a_turned_box_and_leave_a_moved_one():
    """``find_shadows`` gives a turned box a gain map (on the box alone, not 1 everywhere) and a
    translated one none."""
    from diffusion_handles.geometry import shadow

    from .test_shadow import _shadowed_image

    true = torch.tensor([0.7, 0.7, 0.1]) / torch.tensor([0.7, 0.7, 0.1]).norm()
    cam, depth, receiver, box, image, _ = _shadowed_image(true)

    def found(edit):
        moved = compute_edit(depth, box, edit, cam)
        return shadow.find_shadows(image, depth, [box], receiver, cam, [moved.transforms[0]], moved.edited_mask)

    turned = found(HandleEdit(rotate_axis=(0.0, 1.0, 0.0), rotate_deg=50.0))
    assert turned.any and turned.turn is not None
    assert float((turned.turn - 1.0).abs().amax(1, keepdim=True)[box > 0.5].mean()) > 0.02
    assert float((turned.turn - 1.0).abs()[(box < 0.5).expand(1, 3, -1, -1)].max()) == 0.0
    moved = found(HandleEdit(translate=(-0.3, 0.0, 0.0)))
    assert moved.any and moved.turn is None
    assert math.isfinite(float(turned.turn.sum()))
