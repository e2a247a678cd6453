"""Benchmark cases: one TinyWorld scene with one random 3D edit each, and its ground truth.

Seeds. Scene ``i`` of a run with ``--seed S`` uses the ``i``-th seed ``s >= S`` with
``s % 1000 >= 100`` (:func:`bench_seeds`). The default ``S`` is
:data:`BENCH_SEED0` ``= HELDOUT_SEED0 + 500`` (``1_000_500``): TinyWorld training sets use seeds
``0 .. N-1`` (:mod:`diffusion_handles.world.dataset`), and a scene whose objects are hidden is
re-drawn with seed ``seed * 1000 + j`` (``j < 50``, :func:`~diffusion_handles.world.render.sample_visible_scene`);
skipping ``s % 1000 < 100`` keeps benchmark scenes disjoint from those re-draws too.

Edits (as the paper's Sec. 6: within the view frustum, limited disocclusion), drawn with
``numpy.random.default_rng([seed, 6])``: the kind uniformly once per scene (kept for the first
half of the draws, then any kind), the object uniformly among those covering >= 1% of the image,
the parameters as follows:

* ``translate``: along the floor (world ``x``/``z``, so with a change of depth), 0.25-0.9 units
  sideways and 0.3-1.2 units in depth, each with a random sign;
* ``rotate_vertical``: 20-90 degrees about the world's vertical axis;
* ``rotate_tilted``: 15-35 degrees about an axis tilted 20-45 degrees from the vertical;
* ``scale``: by 0.7-0.85 or 1.15-1.4, with a vertical translation that keeps the object on the floor.

All rotations and scales are about the pivot the method uses (centroid of the visible lifted
object pixels, :func:`diffusion_handles.world.render.object_pivot`). An edit is rejected (and
another drawn) when the moved object's bounding box leaves the view frustum, when the 3D edit
fails (:func:`~diffusion_handles.geometry.compute_edit` raises), when the disocclusion (pixels
with ``M_v = 0``) covers more than ``max_holes`` of the image, or when the moved object shows
fewer than ``min_pixels`` pixels in the ground-truth render.

A case on disk (``cases/<id>/``): ``input.png``, ``gt.png``, ``clean.png`` (scene without the
object), ``arrays.npz`` (``depth``, ``clean_depth``, ``gt_depth`` z-depth in scene units,
``mask_src``, ``mask_gt`` bool) and ``case.json`` (scene, object, edit, pivot, caption, stats).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry.transform import HandleEdit

BENCH_SEED0 = 1_000_500


class NoEditFound(HandlesError):
    """A scene with no acceptable edit (the benchmark skips its seed and draws the next one)."""

EDIT_KINDS = ("translate", "rotate_vertical", "rotate_tilted", "scale")


def bench_seeds(n: int, start: int = BENCH_SEED0) -> list[int]:
    """The first ``n`` seeds ``s >= start`` with ``s % 1000 >= 100`` (see the module docstring)."""
    out, s = [], int(start)
    while len(out) < n:
        if s % 1000 >= 100:
            out.append(s)
        s += 1
    return out


@dataclass
class Case:
    """One benchmark edit with its ground truth (images ``(H, W, 3)`` uint8, depths float32)."""

    case_id: str
    seed: int
    caption: str
    object_index: int
    kind: str
    edit: HandleEdit
    pivot: np.ndarray  # (3,) camera coordinates, scene units
    fov_deg: float
    image: np.ndarray
    depth: np.ndarray
    mask_src: np.ndarray
    gt: np.ndarray
    gt_depth: np.ndarray
    mask_gt: np.ndarray
    clean: np.ndarray
    clean_depth: np.ndarray
    stats: dict
    scene: dict

    # ------------------------------------------------------------------ disk
    def save(self, folder: str | Path) -> Path:
        meta = {"case_id": self.case_id, "seed": self.seed, "caption": self.caption,
                "object_index": self.object_index, "kind": self.kind, "edit": self.edit.to_dict(),
                "pivot": [float(v) for v in self.pivot], "fov_deg": self.fov_deg, "stats": self.stats,
                "scene": self.scene}
        return write_case_folder(folder, {"input": self.image, "gt": self.gt, "clean": self.clean},
                                 {"depth": self.depth, "clean_depth": self.clean_depth, "gt_depth": self.gt_depth,
                                  "mask_src": self.mask_src, "mask_gt": self.mask_gt}, meta)

    @staticmethod
    def load(folder: str | Path) -> Case:
        meta, arr, png = read_case_folder(folder, ("input", "gt", "clean"))
        return Case(
            case_id=meta["case_id"], seed=int(meta["seed"]), caption=meta["caption"],
            object_index=int(meta["object_index"]), kind=meta["kind"], edit=HandleEdit.from_dict(meta["edit"]),
            pivot=np.asarray(meta["pivot"], np.float64), fov_deg=float(meta["fov_deg"]),
            image=png["input"], depth=arr["depth"], mask_src=arr["mask_src"].astype(bool),
            gt=png["gt"], gt_depth=arr["gt_depth"], mask_gt=arr["mask_gt"].astype(bool),
            clean=png["clean"], clean_depth=arr["clean_depth"], stats=meta["stats"], scene=meta["scene"],
        )


def write_case_folder(folder: str | Path, pngs: dict[str, np.ndarray], arrays: dict[str, np.ndarray],
                      meta: dict) -> Path:
    """Write a case folder whole: ``<name>.png`` per uint8 image, ``arrays.npz``, ``case.json``.

    Staged in ``<folder>.partial`` and renamed into place (an existing folder is replaced), so a
    reader never sees half a case.
    """
    import shutil

    from PIL import Image

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, img in pngs.items():
        Image.fromarray(img).save(tmp / f"{name}.png")
    np.savez_compressed(tmp / "arrays.npz", **arrays)
    (tmp / "case.json").write_text(json.dumps(meta, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.replace(folder)
    return folder


def read_case_folder(folder: str | Path, png_names: tuple[str, ...]) -> tuple[dict, dict, dict]:
    """``(meta, arrays, images)`` of a folder written by :func:`write_case_folder` (RGB uint8 images)."""
    from PIL import Image

    folder = Path(folder)
    meta = json.loads((folder / "case.json").read_text())
    with np.load(folder / "arrays.npz", allow_pickle=False) as z:
        arr = {k: z[k] for k in z.files}
    png = {n: np.asarray(Image.open(folder / f"{n}.png").convert("RGB")) for n in png_names}
    return meta, arr, png


# ---------------------------------------------------------------------- sampling
def _uniform_signed(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi) * rng.choice([-1.0, 1.0]))


def draw_edit(rng: np.random.Generator, kind: str, w2c: np.ndarray, pivot_world: np.ndarray) -> HandleEdit:
    """A random edit of ``kind`` in camera axes (see the module docstring).

    Args:
        w2c: ``(4, 4)`` world-to-camera rigid transform; pivot_world: ``(3,)`` the pivot in world
            coordinates (its height above the floor keeps scaled objects on the floor).
    """
    r = w2c[:3, :3]  # world -> camera rotation
    up_cam = r @ np.array([0.0, 1.0, 0.0])
    if kind == "translate":
        t_world = np.array([_uniform_signed(rng, 0.25, 0.9), 0.0, _uniform_signed(rng, 0.3, 1.2)])
        return HandleEdit(translate=tuple(r @ t_world))
    if kind == "rotate_vertical":
        return HandleEdit(rotate_axis=tuple(up_cam), rotate_deg=_uniform_signed(rng, 20.0, 90.0))
    if kind == "rotate_tilted":
        tilt = math.radians(rng.uniform(20.0, 45.0))
        az = rng.uniform(0.0, 2.0 * math.pi)
        axis_w = np.array([math.sin(tilt) * math.cos(az), math.cos(tilt), math.sin(tilt) * math.sin(az)])
        return HandleEdit(rotate_axis=tuple(r @ axis_w), rotate_deg=_uniform_signed(rng, 15.0, 35.0))
    if kind == "scale":
        s = float(rng.uniform(0.7, 0.85) if rng.random() < 0.5 else rng.uniform(1.15, 1.4))
        # scaling about the pivot moves the floor contact from y=0 to (1-s) * pivot_y: undo that
        t_world = np.array([0.0, -(1.0 - s) * float(pivot_world[1]), 0.0])
        return HandleEdit(translate=tuple(r @ t_world), scale=s)
    raise HandlesError(f"kind: expected one of {', '.join(EDIT_KINDS)}, got {kind!r}")


def _bbox_in_frustum(scene, k: int, margin_px: float = 1.0) -> bool:
    """Whether all 8 corners of object ``k``'s bounding box project inside the image."""
    from diffusion_handles.world.render import camera_of

    ob = scene.objects[k]
    a = float(ob.aspect) if ob.shape == "cylinder" else 1.0
    corners = np.array([[sx * a, sy, sz * a, 1.0] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    pts = (scene.w2c() @ np.asarray(ob.to_world) @ corners.T).T[:, :3]  # (8, 3) camera frame
    if (pts[:, 2] <= 0.1).any():
        return False
    cam = camera_of(scene)
    u = cam.fx * pts[:, 0] / pts[:, 2] + cam.cx
    v = cam.fy * pts[:, 1] / pts[:, 2] + cam.cy
    return bool((u >= margin_px).all() and (u <= scene.width - margin_px).all()
                and (v >= margin_px).all() and (v <= scene.height - margin_px).all())


def make_case(seed: int, size: int = 64, spp: int = 64, max_holes: float = 0.06, min_pixels: int = 30,
              min_object_fraction: float = 0.01, max_tries: int = 60) -> Case:
    """Render the scene of ``seed``, draw an acceptable edit, render its ground truth.

    Args:
        seed: scene seed (use :func:`bench_seeds`); size: image side in pixels; spp: samples
            per pixel of the path tracer; max_holes: largest disocclusion as a fraction of the
            image; min_pixels: smallest visible moved object in the ground truth;
            min_object_fraction: smallest edited object (fraction of the image) before the edit.

    Raises:
        NoEditFound: no acceptable object or edit was found in ``max_tries`` draws.
    """
    import torch

    from diffusion_handles.geometry import Camera, compute_edit
    from diffusion_handles.world.render import object_pivot, render, scene_for_seed

    scene = scene_for_seed(seed, size, size)
    src = render(scene, spp=spp, seed=seed)
    areas = src.masks.reshape(len(scene.objects), -1).sum(1) if scene.objects else np.zeros(0)
    candidates = [k for k, a in enumerate(areas) if a >= max(min_object_fraction * size * size, min_pixels)]
    if not candidates:
        raise NoEditFound(f"seed {seed}: expected an object covering >= {min_object_fraction:.0%} of the image, got none")
    rng = np.random.default_rng([seed, 6])
    camera = Camera(size, size, scene.fov_deg)
    depth_t = torch.from_numpy(src.depth.astype(np.float64))[None, None]
    rejected: dict[str, int] = {}
    first_kind = str(rng.choice(EDIT_KINDS))  # the scene's edit kind, uniform over EDIT_KINDS ...
    for attempt in range(max_tries):
        k = int(rng.choice(candidates))
        # ... kept for the first half of the draws, so that hard kinds (translations leave the
        # frame and disocclude more) are not under-represented; then any kind
        kind = first_kind if attempt < max_tries // 2 else str(rng.choice(EDIT_KINDS))
        pivot = object_pivot(src.depth, src.masks[k], scene)
        pivot_world = (scene.c2w() @ np.append(pivot, 1.0))[:3]
        edit = draw_edit(rng, kind, scene.w2c(), pivot_world)
        moved = scene.with_object_edit(k, edit, pivot)
        if not _bbox_in_frustum(moved, k):
            rejected["frustum"] = rejected.get("frustum", 0) + 1
            continue
        mask_t = torch.from_numpy(src.masks[k].astype(np.float64))[None, None]
        try:
            geom = compute_edit(depth_t, mask_t, edit, camera)
        except HandlesError:
            rejected["geometry"] = rejected.get("geometry", 0) + 1
            continue
        holes = float((geom.valid < 0.5).double().mean())
        if holes > max_holes:
            rejected["disocclusion"] = rejected.get("disocclusion", 0) + 1
            continue
        gt = render(moved, spp=spp, seed=seed)
        if gt.masks[k].sum() < min_pixels:
            rejected["hidden"] = rejected.get("hidden", 0) + 1
            continue
        empty = scene.copy()
        empty.objects.pop(k)
        clean = render(empty, spp=spp, seed=seed)
        pred_mask = geom.edited_mask[0, 0].numpy() > 0.5
        inter = np.logical_and(pred_mask, gt.masks[k]).sum()
        union = np.logical_or(pred_mask, gt.masks[k]).sum()
        stats = {"holes_fraction": holes, "object_pixels_src": int(src.masks[k].sum()),
                 "object_pixels_gt": int(gt.masks[k].sum()), "attempt": attempt, "rejected": rejected,
                 # how well the 3D edit of the *true* depth predicts the true mask (upper bound of geometry)
                 "geometry_iou": float(inter / max(union, 1))}
        return Case(
            case_id=f"s{seed}", seed=int(seed), caption=src.caption, object_index=k, kind=kind, edit=edit,
            pivot=np.asarray(pivot, np.float64), fov_deg=float(scene.fov_deg), image=src.rgb,
            depth=src.depth.astype(np.float32), mask_src=src.masks[k].copy(), gt=gt.rgb,
            gt_depth=gt.depth.astype(np.float32), mask_gt=gt.masks[k].copy(), clean=clean.rgb,
            clean_depth=clean.depth.astype(np.float32), stats=stats, scene=scene.to_dict(),
        )
    raise NoEditFound(f"seed {seed}: no acceptable edit in {max_tries} draws (rejected: {rejected})")
