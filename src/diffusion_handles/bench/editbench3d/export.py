"""TinyWorld edits written as 3DEditBench files (``handles world export-3deditbench``).

A rigid TinyWorld bench case (:func:`~diffusion_handles.bench.cases.make_case`) gives ``R, T``
(:func:`~diffusion_handles.bench.editbench3d.camera.rt_from_edit`), ``K`` from its field of view,
keypoints ``(N, 2)`` (OpenCV pixels) of object points visible before and after the move, three
floor points and the z-depth ``(H, W)`` of the input; :func:`export_tinyworld` writes ``n`` of
them into a new folder, all or none. torch, cv2 and the renderer are imported when called.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from diffusion_handles.bench.editbench3d.camera import opencv_K, rt_from_edit
from diffusion_handles.bench.editbench3d.io import EditBenchCase, write_case
from diffusion_handles.errors import HandlesError


def _keypoints(case, R: np.ndarray, T: np.ndarray, rng: np.random.Generator, n: int = 12):
    """Object pixels of the input visible after the move, and where they land (OpenCV pixel coordinates)."""
    import torch

    from diffusion_handles.geometry.camera import Camera, lift_at, project

    h, w = case.mask_src.shape
    cam = Camera(h, w, case.fov_deg)
    rows, cols = np.nonzero(case.mask_src)
    pix = torch.from_numpy(np.stack([cols + 0.5, rows + 0.5], -1).astype(np.float64))
    pts = lift_at(pix, torch.from_numpy(case.depth[rows, cols].astype(np.float64)), cam).numpy()
    moved = pts @ R.T + T
    uv, z = project(torch.from_numpy(moved), cam)
    uv = uv.numpy()
    u, v = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h) & (z.numpy() > 0)
    ok = np.zeros(len(rows), bool)
    ok[inside] = case.mask_gt[v[inside], u[inside]] & (
        np.abs(case.gt_depth[v[inside], u[inside]] - z.numpy()[inside]) < 0.03 * z.numpy()[inside])
    idx = np.nonzero(ok)[0]
    if len(idx) == 0:
        return None, None
    pick = np.sort(rng.choice(idx, size=min(n, len(idx)), replace=False))
    p1 = np.stack([cols[pick], rows[pick]], -1).astype(np.float64)
    p2 = uv[pick] - 0.5  # this project's pixel coordinates -> OpenCV's
    return p1, p2


def _ground_points(case) -> np.ndarray:
    """Three floor pixels of the input (world height ~0, not an object), left to right (OpenCV (x, y))."""
    import torch

    from diffusion_handles.geometry.camera import Camera, lift
    from diffusion_handles.world.scene import Scene

    h, w = case.depth.shape
    pts = lift(torch.from_numpy(case.depth.astype(np.float64))[None, None], Camera(h, w, case.fov_deg))[0].numpy()
    c2w = Scene.from_dict(case.scene).c2w()
    y_world = np.einsum("j,jhw->hw", c2w[1, :3], pts) + c2w[1, 3]
    rows, cols = np.nonzero((np.abs(y_world) < 1e-3) & ~case.mask_src)
    if len(rows) == 0:
        return np.zeros((3, 2))
    order = np.argsort(cols)
    pick = order[np.clip((np.array([0.15, 0.5, 0.85]) * len(order)).astype(int), 0, len(order) - 1)]
    return np.stack([cols[pick], rows[pick]], -1).astype(np.float64)


def case_from_tinyworld(case) -> EditBenchCase | None:
    """A TinyWorld bench case in 3DEditBench's layout; None for a non-rigid (scale) edit or no visible keypoint."""
    import cv2

    if abs(case.edit.scale - 1.0) > 1e-12:
        return None
    R, T = rt_from_edit(case.edit, case.pivot)
    rng = np.random.default_rng([case.seed, 14])
    p1, p2 = _keypoints(case, R, T, rng)
    if p1 is None:
        return None
    h, w = case.mask_src.shape
    dist = cv2.distanceTransform(np.pad(case.mask_src.astype(np.uint8), 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    i, j = np.unravel_index(int(np.argmax(dist)), dist.shape)  # the object pixel farthest from its outline
    return EditBenchCase(
        name=case.case_id, image1=case.image, image2=case.gt, K=opencv_K(case.fov_deg, h, w), R=R, T=T,
        point_prompt=np.array([float(j), float(i)]), gt_segment=case.mask_src.copy(),
        object_points_image1=p1, object_points_image2=p2, ground_points_image1=_ground_points(case),
        depth=case.depth.astype(np.float32), caption=case.caption, gt_segment_image2=case.mask_gt.copy(),
        attrs={"source": "TinyWorld (diffusion-handles)", "seed": int(case.seed), "kind": case.kind,
               "fov_deg": float(case.fov_deg)},
    )


def export_tinyworld(n: int, out: str | Path, *, first_seed: int | None = None, size: int = 128, spp: int = 64,
                     log=None) -> list[Path]:
    """Write ``n`` rigid TinyWorld edits as 3DEditBench HDF5 files into the new folder ``out`` (whole or not at all).

    Cases come from the benchmark's generator (:func:`~diffusion_handles.bench.cases.make_case`) over
    :func:`~diffusion_handles.bench.cases.bench_seeds`; scale edits (not rigid) and seeds without an
    acceptable edit are skipped.
    """
    from diffusion_handles.bench.cases import BENCH_SEED0, NoEditFound, bench_seeds, make_case

    if n < 1:
        raise HandlesError(f"--scenes: expected >= 1, got {n}")
    if size < 16:
        raise HandlesError(f"--size: expected >= 16 pixels, got {size}")
    if spp < 1:
        raise HandlesError(f"--spp: expected >= 1, got {spp}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HandlesError(f"--out: expected a new or empty folder, got {str(out)!r} (not empty)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.resolve().parent))
    written: list[str] = []
    try:
        for seed in bench_seeds(n * 20, BENCH_SEED0 if first_seed is None else first_seed):
            if len(written) >= n:
                break
            try:
                case = make_case(seed, size=size, spp=spp)
            except NoEditFound:
                continue
            eb = case_from_tinyworld(case)
            if eb is None:
                continue
            write_case(staging / f"{case.case_id}.hdf5", eb)
            written.append(f"{case.case_id}.hdf5")
            if log:
                log(f"  {case.case_id}: {case.kind}, {case.caption}")
        if len(written) < n:
            raise HandlesError(f"--scenes: expected {n} rigid edits, found {len(written)} in {n * 20} seeds")
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [out / w for w in written]

