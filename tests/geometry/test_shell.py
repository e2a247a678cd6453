"""The object's mirrored back (geometry.shell) on a sphere, where the truth is known exactly."""

from __future__ import annotations

import torch

from diffusion_handles.geometry import Camera, HandleEdit, compute_edit, edited_depth
from diffusion_handles.geometry.camera import pixel_grid
from diffusion_handles.geometry.shell import mirror_depth, shell_zbuffer
from diffusion_handles.geometry.transform import Similarity

H = W = 96
CENTRE = (0.2, 0.1, 4.0)
RADIUS = 0.9
Z_WALL = 7.0


def _sphere(centre=CENTRE, radius=RADIUS):
    """Ray-traced z-depth of a sphere before a wall: ``(depth, mask, front z, back z)``, each
    ``(1, 1, H, W)`` float64 (front and back are the ray's two hits, nan off the sphere)."""
    cam = Camera(H, W)
    g = pixel_grid(H, W, torch.float64)
    d = torch.stack([(g[0] - cam.cx) / cam.fx, (g[1] - cam.cy) / cam.fy, torch.ones_like(g[0])])  # rays, z = 1
    c = torch.tensor(centre, dtype=torch.float64)[:, None, None]
    a = (d * d).sum(0)
    bq = -2 * (d * c).sum(0)
    cq = (c * c).sum() - radius ** 2
    disc = bq * bq - 4 * a * cq
    hit = disc > 0
    root = torch.sqrt(disc.clamp(min=0))
    front = torch.where(hit, (-bq - root) / (2 * a), torch.nan)  # ray parameter = z-depth (d_z = 1)
    back = torch.where(hit, (-bq + root) / (2 * a), torch.nan)
    depth = torch.where(hit, front, torch.full_like(front, Z_WALL))
    return depth[None, None], hit[None, None], front[None, None], back[None, None], cam


def test_mirror_plane_of_a_sphere_is_its_centre():
    """Nearest point plus half the width: the sphere's centre depth (a full width, or the mean
    depth of the visible front, misses by a third of the radius or more)."""
    depth, mask, _, _, cam = _sphere()
    z = float(mirror_depth(depth, mask, cam)[0])
    assert abs(z - CENTRE[2]) < 0.1 * RADIUS, z


def test_mirrored_back_matches_the_sphere_back_without_a_move():
    """Identity transform: the shell z-buffer is the sphere's far side (a wrong mirror such as
    ``z_m - z`` or ``z_m + z`` fails)."""
    depth, mask, _, back, cam = _sphere()
    z = shell_zbuffer(depth, mask, (Similarity.identity(),), cam)
    inner = mask & (torch.nan_to_num(back) - torch.nan_to_num(depth) > 0.3 * RADIUS)  # away from the rim
    err = (z - back)[inner].abs()
    assert bool(torch.isfinite(z[inner]).all())
    assert float(err.mean()) < 0.08 * RADIUS and float(err.max()) < 0.25 * RADIUS


def test_a_turned_sphere_keeps_its_silhouette_and_depth_with_the_back():
    """A sphere turned 45 degrees about its own vertical axis looks the same. The front alone
    leaves a third of it a hole filled from the wall's depth (IoU 0.68, depth off by 0.88 on
    average); with the back the edited depth is the sphere's again (0.96, 0.24). A back that is
    not moved, not splatted or not used by ``edited_depth`` fails."""
    depth, mask, front, _, cam = _sphere()
    edit = HandleEdit(rotate_axis=(0.0, 1.0, 0.0), rotate_deg=45.0)
    pivot = torch.tensor(CENTRE, dtype=torch.float64)
    disc = mask[0, 0]
    found = {}
    for complete in (False, True):
        g = compute_edit(depth, mask.double(), edit, cam, pivot=pivot, complete_back=complete)
        covered = g.edited_mask[0, 0] > 0.5
        if complete:
            back = g.back_depth[0, 0] > 0
            assert bool((g.valid[0, 0][back] == 0).all())  # the back's pixels are holes: no appearance known
            covered = covered | back
        iou = float((covered & disc).sum() / (covered | disc).sum())
        d = edited_depth(g, torch.full_like(depth, Z_WALL))
        found[complete] = (iou, float((d[0, 0] - front[0, 0])[disc].abs().mean()))
    (iou0, err0), (iou1, err1) = found[False], found[True]
    print(f"turned sphere: IoU {iou0:.2f} -> {iou1:.2f}, depth error {err0:.2f} -> {err1:.2f}")
    assert iou0 < 0.75 and iou1 > 0.9, found
    assert err1 < 0.35 * RADIUS and err1 < 0.5 * err0, found


def test_the_back_changes_nothing_for_an_identity_edit_and_little_for_a_slide():
    """No move: the back stays behind the front everywhere. A sideways slide shows the sphere
    from a slightly different angle: a thin crescent of its back, not a blob."""
    depth, mask, *_ = _sphere()
    cam = Camera(H, W)
    assert compute_edit(depth, mask.double(), HandleEdit(), cam).back_depth is None
    same = compute_edit(depth, mask.double(), HandleEdit(), cam, complete_back=True)
    assert int((same.back_depth > 0).sum()) == 0 and bool((same.valid == 1).all())
    slide = compute_edit(depth, mask.double(), HandleEdit(translate=(0.3, 0.0, 0.0)), cam, complete_back=True)
    assert 0 < int((slide.back_depth > 0).sum()) < 0.05 * int(mask.sum())
