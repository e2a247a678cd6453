"""Depth compositing with Poisson image editing (Sec. 5.1, "Edited Depth"; Perez et al. 2003).

All solves work on **inverse depth** ``1/z``: a plane's inverse depth is an affine function of
pixel coordinates, hence harmonic, so hole filling reproduces planes (floors, walls) exactly and
the composite's transition follows the background's slope. Inputs and outputs are z-depth.

The linear systems are sparse 5-point Laplacians over the unknown pixels only, built with
vectorised index arithmetic and solved with SciPy's sparse direct solver (SuperLU).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry.camera import check_depth

_NEIGHBOURS = ((0, 1), (0, -1), (1, 0), (-1, 0))


def poisson_solve(known: np.ndarray, unknown: np.ndarray, guide: np.ndarray | None = None) -> np.ndarray:
    """Solve ``laplace(f) = laplace(guide)`` on ``unknown`` with ``f = known`` elsewhere.

    For every unknown pixel ``p`` and each in-image 4-neighbour ``q``:
    ``sum_q (f_p - f_q) = sum_q (g_p - g_q)`` (Neumann at the image border). With no guide this
    is a harmonic (membrane) fill.

    Args:
        known: ``(H, W)`` float values, used where ``unknown`` is False.
        unknown: ``(H, W)`` bool, the pixels to solve for.
        guide: optional ``(H, W)`` guidance field ``g`` whose gradients are kept.

    Returns:
        ``(H, W)`` float64: ``known`` outside ``unknown``, the solution inside.
    """
    h, w = unknown.shape
    out = known.astype(np.float64).copy()
    n = int(unknown.sum())
    if n == 0:
        return out
    if n == h * w:
        raise HandlesError(f"poisson_solve: expected at least one known pixel to fill from, got every pixel of the {w}x{h} grid unknown")
    idx = np.full((h, w), -1, dtype=np.int64)
    idx[unknown] = np.arange(n)
    ys, xs = np.nonzero(unknown)
    g = None if guide is None else guide.astype(np.float64)
    rows, cols, vals = [], [], []
    diag = np.zeros(n)
    rhs = np.zeros(n)
    p = idx[ys, xs]
    for dy, dx in _NEIGHBOURS:
        qy, qx = ys + dy, xs + dx
        inside = (qy >= 0) & (qy < h) & (qx >= 0) & (qx < w)
        pp, qy, qx = p[inside], qy[inside], qx[inside]
        diag[pp] += 1.0
        q = idx[qy, qx]
        unk = q >= 0
        rows.append(pp[unk])
        cols.append(q[unk])
        vals.append(np.full(int(unk.sum()), -1.0))
        rhs[pp[~unk]] += out[qy[~unk], qx[~unk]]
        if g is not None:
            rhs[pp] += g[ys[inside], xs[inside]] - g[qy, qx]
    # a tiny pull towards the guide (or 0) keeps components with no known neighbour solvable
    reg = 1e-12
    diag += reg
    if g is not None:
        rhs += reg * g[ys, xs]
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    vals.append(diag)
    import scipy.sparse as sp  # here, not at import: the renderer's import chain runs without SciPy
    import scipy.sparse.linalg as spla

    a = sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    out[ys, xs] = spla.spsolve(a, rhs, permc_spec="MMD_AT_PLUS_A")  # symmetric pattern: minimum degree on A + A^T
    return out


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of ``(B, 1, H, W)`` by a ``(2r+1)^2`` square; returns bool."""
    m = mask.float() if mask.dtype == torch.bool else (mask > 0.5).float()
    if radius <= 0:
        return m > 0.5
    return F.max_pool2d(m, 2 * radius + 1, stride=1, padding=radius) > 0.5


def fill_depth(depth: torch.Tensor, unknown: torch.Tensor) -> torch.Tensor:
    """Fill ``unknown`` pixels of a z-depth map harmonically in inverse depth.

    Args:
        depth: ``(B, 1, H, W)`` z-depth (scene units), finite and > 0 where known.
        unknown: ``(B, 1, H, W)`` bool (or {0, 1}).

    Returns:
        ``(B, 1, H, W)`` z-depth, equal to ``depth`` where known; planes are filled exactly.
    """
    depth = check_depth(depth)
    unknown = unknown.bool() if unknown.dtype == torch.bool else unknown > 0.5
    out = depth.clone()
    for b in range(depth.shape[0]):
        unk = unknown[b, 0].cpu().numpy()
        if not unk.any():
            continue
        d = depth[b, 0].detach().double().cpu().numpy()
        inv = np.where(unk, 0.0, 1.0 / np.where(unk, 1.0, d))
        sol = poisson_solve(inv, unk)
        sol = np.maximum(sol, 1e-12)
        out[b, 0] = torch.from_numpy(1.0 / sol).to(depth)
    return out


BACKGROUND_DILATE_PX = 2  # background_depth_fill grows the object mask by this much before filling it


def check_mask_leaves_background(mask: torch.Tensor, arg: str = "mask", dilate_px: int = BACKGROUND_DILATE_PX) -> None:
    """Refuse an object mask that leaves nothing to fill the object's place from.

    The depth behind the object (:func:`background_depth_fill`) is filled from the pixels
    outside the mask grown by ``dilate_px``; a mask covering the whole image (e.g. a 1x1 image),
    or all of it but a border thinner than ``dilate_px + 1`` pixels, leaves none. Cheap: call it
    where inputs are validated, before any heavy work.

    Args:
        mask: ``(B, 1, H, W)`` or ``(H, W)``, > 0.5 = object.
        arg: the argument's name for the message (``--mask`` on the command line).

    Raises:
        HandlesError: one line naming ``arg``, what is needed and what arrived.
    """
    m = mask if mask.dim() == 4 else mask.reshape(1, 1, *mask.shape[-2:])
    obj = m > 0.5 if m.dtype != torch.bool else m
    h, w = obj.shape[-2:]
    grown = dilate(obj, dilate_px)
    for b in range(obj.shape[0]):
        if bool(grown[b].all()):
            n = int(obj[b].sum())
            if n == h * w:
                raise HandlesError(f"{arg}: covers every pixel of the {w}x{h} image; expected some background around "
                                   f"the object (the depth behind the object is filled in from it)")
            raise HandlesError(f"{arg}: leaves no background farther than {dilate_px} pixels from the object "
                               f"({n} of the {h * w} pixels of the {w}x{h} image are object); expected some background "
                               f"around the object (the depth behind it is filled in from it)")


def background_depth_fill(depth: torch.Tensor, mask: torch.Tensor, dilate_px: int = BACKGROUND_DILATE_PX) -> torch.Tensor:
    """Classical object removal on depth: the scene's depth with the object filled in (d'_b).

    The object mask is dilated by ``dilate_px`` pixels (its edge pixels mix object and
    background depth) and filled harmonically in inverse depth from the surrounding background.
    The paper instead inpaints the image and re-estimates depth (Sec. 5.1); this is the offline
    stand-in used when no inpainter or depth estimator is available.

    Args:
        depth: ``(B, 1, H, W)`` z-depth; mask: ``(B, 1, H, W)`` object mask.

    Returns:
        ``(B, 1, H, W)`` background z-depth.

    Raises:
        HandlesError: the mask leaves no background (:func:`check_mask_leaves_background`).
    """
    check_mask_leaves_background(mask, "mask", dilate_px)
    return fill_depth(depth, dilate(mask, dilate_px))


def poisson_composite(
    object_depth: torch.Tensor,
    background_depth: torch.Tensor,
    object_mask: torch.Tensor,
    band_px: int = 3,
) -> torch.Tensor:
    """Composite an edited object's depth over a background depth (the paper's Eq. 7 output d'_o
    into d'_b with Poisson image editing, giving the edited depth d').

    Inside the (binarised) object mask the result is exactly ``object_depth``; farther than
    ``band_px`` pixels from it, exactly ``background_depth``. In the band between, inverse
    depth solves Poisson's equation with the background's gradients as guidance and both as
    boundary values, so the seam is smooth and follows the background's slope.

    Args:
        object_depth: ``(B, 1, H, W)`` z-depth of the transformed object (used inside the mask).
        background_depth: ``(B, 1, H, W)`` z-depth of the object-free scene, > 0 everywhere.
        object_mask: ``(B, 1, H, W)`` edited object mask M'_o (bool or in [0, 1], > 0.5 = object).
        band_px: width of the blending band outside the object, in pixels.

    Returns:
        ``(B, 1, H, W)`` the edited z-depth d'.
    """
    background_depth = check_depth(background_depth, "background_depth")
    inside = object_mask.bool() if object_mask.dtype == torch.bool else object_mask > 0.5
    out = torch.where(inside, object_depth, background_depth)
    band = dilate(inside, band_px) & ~inside
    for b in range(out.shape[0]):
        unk = band[b, 0].cpu().numpy()
        if not unk.any():
            continue
        known = 1.0 / out[b, 0].detach().double().cpu().numpy()
        guide = 1.0 / background_depth[b, 0].detach().double().cpu().numpy()
        sol = np.maximum(poisson_solve(known, unk, guide), 1e-12)
        out[b, 0] = torch.from_numpy(1.0 / sol).to(out)
    return out
