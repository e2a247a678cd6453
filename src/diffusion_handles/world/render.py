"""Rendering TinyWorld scenes with Mitsuba 3 (variant ``scalar_rgb``).

* RGB: Mitsuba path tracer (sun with cast shadows + constant ambient sky), box pixel filter,
  converted from linear to sRGB.
* Depth and masks: one Mitsuba ray per pixel *centre*, cast along the rays of the project's
  :class:`~diffusion_handles.geometry.camera.Camera`, so depth is exactly the z-depth that
  :func:`~diffusion_handles.geometry.camera.lift` expects (scene units) and ``mask_k`` is the set
  of pixels whose centre ray first hits object ``k``.

The Mitsuba sensor is the same pinhole: horizontal field of view (``fov_axis='x'``), and
Mitsuba's camera-local axes (x left, y up, z forward) are the OpenCV axes (x right, y down,
z forward) rotated 180 degrees about z, hence ``to_world = camera_to_world @ diag(-1, -1, 1, 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from diffusion_handles.geometry.camera import Camera, lift, pixel_grid
from diffusion_handles.geometry.edit import object_centroid
from diffusion_handles.world.scene import DEFAULT_SIZE, Scene, sample_scene
from diffusion_handles.world.textures import (
    floor_texture,
    linear_to_srgb,
    object_texture,
    wall_colour,
)

DEFAULT_SPP = 128  # samples per pixel: an independent re-render scores 35.7 dB against a render (`handles world eval`, ceiling row)
_MITSUBA_FROM_OPENCV = np.diag([-1.0, -1.0, 1.0, 1.0])


def _mi():
    import mitsuba as mi

    if mi.variant() != "scalar_rgb":
        mi.set_variant("scalar_rgb")
    return mi


@dataclass
class Render:
    """A rendered scene.

    Attributes:
        rgb: ``(H, W, 3)`` uint8 sRGB.
        depth: ``(H, W)`` float32 z-depth in scene units at pixel centres (positive everywhere:
            the floor and back wall close the scene).
        masks: ``(K, H, W)`` bool, ``masks[k]`` = pixels whose centre sees object ``k``.
        caption: the scene's caption.
    """

    rgb: np.ndarray
    depth: np.ndarray
    masks: np.ndarray
    caption: str


def _mat(mi, m) -> object:
    return mi.ScalarTransform4f(np.asarray(m, dtype=np.float64).tolist())


def _bsdf_bitmap(mi, tex: np.ndarray, reps: float = 1.0, nearest: bool = False) -> dict:
    d = {"type": "bitmap", "bitmap": mi.Bitmap(np.ascontiguousarray(tex, dtype=np.float32)), "raw": True,
         "filter_type": "nearest" if nearest else "bilinear"}
    if reps != 1.0:
        d["to_uv"] = mi.ScalarTransform4f().scale([reps, reps, 1.0])
    return {"type": "diffuse", "reflectance": d}


def scene_dict(scene: Scene, spp: int = 16) -> dict:
    """The Mitsuba scene dictionary. Object ``k``'s shapes have ids ``obj{k}`` / ``obj{k}_capN``."""
    mi = _mi()
    T = mi.ScalarTransform4f
    sensor_to_world = scene.c2w() @ _MITSUBA_FROM_OPENCV
    d: dict = {
        "type": "scene",
        "integrator": {"type": "path", "max_depth": 3},
        "sensor": {
            "type": "perspective", "fov": float(scene.fov_deg), "fov_axis": "x",
            "to_world": _mat(mi, sensor_to_world),
            "film": {"type": "hdrfilm", "width": scene.width, "height": scene.height,
                     "rfilter": {"type": "box"}, "pixel_format": "rgb"},
            "sampler": {"type": "independent", "sample_count": int(spp)},
        },
        "sun": {"type": "directional", "direction": list(map(float, scene.sun_direction)),
                "irradiance": {"type": "rgb", "value": float(scene.sun_irradiance)}},
        "sky": {"type": "constant", "radiance": {"type": "rgb", "value": list(map(float, scene.ambient))}},
    }
    ftex, reps = floor_texture(scene.floor, seed=0)
    d["floor"] = {"type": "rectangle", "to_world": T().rotate([1, 0, 0], -90).scale([60.0, 60.0, 1.0]),
                  "bsdf": _bsdf_bitmap(mi, ftex, reps * 6.0)}
    d["wall"] = {"type": "rectangle", "to_world": T().translate([0.0, 0.0, scene.wall_z]).scale([60.0, 60.0, 1.0]),
                 "bsdf": {"type": "diffuse", "reflectance": {"type": "rgb", "value": wall_colour(scene.wall).tolist()}}}
    for k, ob in enumerate(scene.objects):
        bsdf = _bsdf_bitmap(mi, object_texture(ob.colour, ob.pattern), nearest=True)
        m = np.asarray(ob.to_world, dtype=np.float64)
        if ob.shape == "sphere":
            d[f"obj{k}"] = {"type": "sphere", "to_world": _mat(mi, m), "bsdf": bsdf}
        elif ob.shape == "cube":
            d[f"obj{k}"] = {"type": "cube", "to_world": _mat(mi, m), "bsdf": bsdf}
        elif ob.shape == "cylinder":
            a = float(ob.aspect)
            # Mitsuba's cylinder: radius 1, axis z in [0, 1]  ->  local axis y in [-1, 1], radius a.
            # (Non-uniform scales are not allowed for it, so place it by its end points.)
            p0 = (m @ np.array([0.0, -1.0, 0.0, 1.0]))[:3]
            p1 = (m @ np.array([0.0, 1.0, 0.0, 1.0]))[:3]
            scale = float(np.cbrt(abs(np.linalg.det(m[:3, :3]))))
            d[f"obj{k}"] = {"type": "cylinder", "p0": p0.tolist(), "p1": p1.tolist(), "radius": a * scale, "bsdf": bsdf}
            for j, (y, ang) in enumerate(((1.0, -90.0), (-1.0, 90.0))):
                cap = m @ np.asarray(T().translate([0.0, y, 0.0]).rotate([1, 0, 0], ang).scale([a, a, 1.0]).matrix, dtype=np.float64)
                d[f"obj{k}_cap{j}"] = {"type": "disk", "to_world": _mat(mi, cap), "bsdf": bsdf}
        else:
            raise ValueError(f"object {k}: unknown shape {ob.shape!r}")
    return d


def camera_of(scene: Scene) -> Camera:
    return Camera(scene.height, scene.width, scene.fov_deg)


def cast_depth_and_ids(mi_scene, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast pixel centres: ``(depth (H, W) float32 z-depth, ids (H, W) int)``.

    ``ids`` is the object index hit first, or -1 for floor / wall / nothing.
    """
    mi = _mi()
    cam = camera_of(scene)
    grid = pixel_grid(scene.height, scene.width, torch.float64).numpy()  # (2, H, W)
    dirs_cam = np.stack([(grid[0] - cam.cx) / cam.fx, (grid[1] - cam.cy) / cam.fy, np.ones_like(grid[0])], -1)
    c2w = scene.c2w()
    dirs_w = dirs_cam.reshape(-1, 3) @ c2w[:3, :3].T  # (N, 3), unnormalised: z-component 1 in camera
    norms = np.linalg.norm(dirs_w, axis=1)
    dirs_w = dirs_w / norms[:, None]
    origin = mi.ScalarPoint3f(*c2w[:3, 3].tolist())
    shape_ids = {}
    for s in mi_scene.shapes():
        name = s.id()
        shape_ids[name] = int(name[3:].split("_")[0]) if name.startswith("obj") else -1
    t = np.full(len(dirs_w), np.inf)
    ids = np.full(len(dirs_w), -1, dtype=np.int64)
    for i, dvec in enumerate(dirs_w.tolist()):
        si = mi_scene.ray_intersect(mi.Ray3f(origin, mi.ScalarVector3f(*dvec)))
        if si.is_valid():
            t[i] = si.t
            ids[i] = shape_ids[si.shape.id()]
    depth = (t / norms).reshape(scene.height, scene.width).astype(np.float32)  # ray length -> z-depth
    return depth, ids.reshape(scene.height, scene.width)


def render(scene: Scene, spp: int = DEFAULT_SPP, seed: int = 0) -> Render:
    """Render RGB, depth and masks of ``scene`` (see the module docstring)."""
    mi = _mi()
    mi_scene = mi.load_dict(scene_dict(scene, spp))
    img = np.asarray(mi.render(mi_scene, seed=int(seed) % (2**31)), dtype=np.float32)[..., :3]
    rgb = (linear_to_srgb(img) * 255.0 + 0.5).astype(np.uint8)
    depth, ids = cast_depth_and_ids(mi_scene, scene)
    if not np.isfinite(depth).all():
        raise RuntimeError(f"scene {scene.seed}: some pixels see no geometry")
    masks = np.stack([ids == k for k in range(len(scene.objects))]) if scene.objects else np.zeros((0, *ids.shape), bool)
    return Render(rgb, depth, masks, scene.caption())


def depth_and_masks(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Only the geometry of :func:`render`: ``(depth (H, W) float32, masks (K, H, W) bool)``."""
    mi = _mi()
    depth, ids = cast_depth_and_ids(mi.load_dict(scene_dict(scene, 1)), scene)
    return depth, np.stack([ids == k for k in range(len(scene.objects))]) if scene.objects else np.zeros((0, *ids.shape), bool)


def object_pivot(depth: np.ndarray, mask: np.ndarray, scene: Scene) -> np.ndarray:
    """The pivot of an object edit: centroid of the object's visible lifted depth pixels.

    This is what the edit pipeline uses (mean of lifted points inside the mask), so ground-truth
    re-renders and the method's prediction agree. Returns (3,) camera coordinates, scene units.
    """
    d = torch.from_numpy(np.asarray(depth, np.float64))[None, None]
    m = torch.from_numpy(np.asarray(mask, np.float64))[None, None]
    if m.sum() == 0:
        raise ValueError("mask: the object is not visible, it has no pivot")
    pts = lift(d, camera_of(scene))
    return object_centroid(pts, m)[0].numpy()


def sample_visible_scene(seed: int, height: int = DEFAULT_SIZE, width: int = DEFAULT_SIZE, min_pixels: int | None = None,
                         **kwargs) -> Scene:
    """:func:`sample_scene`, re-drawn (seeds ``seed * 1000 + j``) until every object shows ``min_pixels``.

    The first draw uses ``seed`` itself; the returned scene keeps the seed it was drawn with.
    ``min_pixels`` defaults to 0.3 % of the image (12 pixels at 64x64, 48 at 128x128), so a seed
    gives the same scene at any size up to objects right at the threshold.
    """
    mi = _mi()
    if min_pixels is None:
        min_pixels = max(1, round(12 * height * width / 4096))
    for j in range(50):
        s = sample_scene(seed if j == 0 else seed * 1000 + j, height, width, **kwargs)
        s.seed = seed
        _, ids = cast_depth_and_ids(mi.load_dict(scene_dict(s, 1)), s)
        if all((ids == k).sum() >= min_pixels for k in range(len(s.objects))):
            return s
    raise RuntimeError(f"seed {seed}: could not place visible objects")


def scene_for_seed(seed: int, height: int = DEFAULT_SIZE, width: int = DEFAULT_SIZE) -> Scene:
    """The canonical scene of ``seed`` (what ``handles world render --seed N`` shows)."""
    return sample_visible_scene(seed, height, width)
