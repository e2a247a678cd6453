import numpy as np
import torch

from diffusion_handles.geometry import (
    HandleEdit,
    background_depth_fill,
    compute_edit,
    edited_depth,
    poisson_composite,
    poisson_solve,
)
from diffusion_handles.geometry.poisson import dilate

from .scenes import box_on_wall


def test_harmonic_fill_reproduces_a_plane_exactly():
    # a tilted floor: inverse depth is affine in pixel coordinates
    h, w = 50, 70
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    inv = 0.1 + 0.01 * yy + 0.002 * xx
    depth = torch.from_numpy(1.0 / inv)[None, None]
    mask = torch.zeros_like(depth)
    mask[..., 10:35, 20:50] = 1
    broken = depth.clone()
    broken[mask > 0.5] = 99.0
    filled = background_depth_fill(broken, mask, dilate_px=2)
    assert torch.allclose(filled, depth, rtol=1e-7)


def test_composite_is_object_inside_and_background_far_away():
    depth, mask = box_on_wall(64, 80, z_wall=7, z_box=2.5, box=(20, 44, 25, 55))
    g = compute_edit(depth, mask, HandleEdit((0.2, 0, 0.3), (0, 1, 0), 15))
    bg = background_depth_fill(depth, mask)
    d = edited_depth(g, bg, band_px=3)
    inside = g.object_wins & (g.object_depth > 0)
    assert torch.allclose(d[inside], g.object_depth[inside])
    far = ~dilate(inside, 3)
    assert torch.allclose(d[far], bg[far])
    band = dilate(inside, 3) & ~inside
    # the band lies between the object's and the background's depths
    assert float(d[band].min()) >= float(g.object_depth[inside].min()) - 1e-6
    assert float(d[band].max()) <= float(bg.max()) + 1e-6


def test_poisson_solve_keeps_guide_gradients():
    h, w = 30, 30
    guide = np.random.default_rng(0).normal(size=(h, w))
    unknown = np.zeros((h, w), bool)
    unknown[5:25, 5:25] = True
    known = guide + 3.0  # same field shifted: the solution must be guide + 3 everywhere
    sol = poisson_solve(np.where(unknown, 0.0, known), unknown, guide)
    assert np.allclose(sol, known, atol=1e-6)


def test_composite_with_empty_mask_is_background():
    bg = torch.full((1, 1, 10, 10), 3.0, dtype=torch.float64)
    out = poisson_composite(torch.zeros_like(bg), bg, torch.zeros_like(bg))
    assert torch.equal(out, bg)
