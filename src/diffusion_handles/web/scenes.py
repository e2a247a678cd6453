"""Scenes the page can open without an upload: a built-in synthetic demo and TinyWorld scenes.

The demo scene is computed analytically with numpy (a camera looking at a floor, a back wall
and a box), so it is always available. TinyWorld scenes (Mitsuba renders from
:mod:`diffusion_handles.world`) are offered when that package and Mitsuba import.
"""

from __future__ import annotations

import importlib
import math
import threading
from dataclasses import dataclass, field

import numpy as np

from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry.camera import DEFAULT_FOV_DEG
from diffusion_handles.web.sessions import Session, make_session


@dataclass
class SceneData:
    """One ready-to-edit scene.

    Attributes:
        image: ``(H, W, 3)`` uint8 sRGB.
        depth: ``(H, W)`` float32 z-depth in scene units, positive everywhere.
        masks: ``[(label, (H, W) bool)]`` selectable objects.
        caption: a text prompt describing the image.
        fov_deg: horizontal field of view of the camera that made the image.
    """

    image: np.ndarray
    depth: np.ndarray
    masks: list[tuple[str, np.ndarray]] = field(default_factory=list)
    caption: str = ""
    fov_deg: float = DEFAULT_FOV_DEG


def scene_session(scene: SceneData, scene_id: str, max_side: int) -> Session:
    """A session of a built-in scene at working resolution (longer side at most ``max_side``):
    its image, depth, caption and object masks, the first one selected."""
    s = make_session(scene.image, scene.depth, scene.caption, scene.fov_deg, scene_id, max_side)
    for name, m in scene.masks:
        s.add_mask(name, m)
    s.selected = 0 if s.masks else None
    return s


def _hit_box(dx, dy, lo, hi):
    """Z-depth of the first hit of rays ``(dx, dy, 1)`` from the origin with an axis-aligned box.

    Returns ``(t, face)``: ``t`` (H, W) z-depth (inf where missed) and ``face`` (H, W) int in
    {0: x, 1: y, 2: z} naming the axis of the entering face. Slab method, vectorised.
    """
    dirs = (dx, dy, np.ones_like(dx))
    with np.errstate(divide="ignore", invalid="ignore"):
        t0 = [np.where(d != 0, lo[i] / d, -np.inf) for i, d in enumerate(dirs)]
        t1 = [np.where(d != 0, hi[i] / d, np.inf) for i, d in enumerate(dirs)]
    tmin = np.stack([np.minimum(a, b) for a, b in zip(t0, t1, strict=True)])  # (3, H, W)
    tmax = np.stack([np.maximum(a, b) for a, b in zip(t0, t1, strict=True)])
    t_enter = tmin.max(0)
    t_exit = tmax.min(0)
    hit = (t_enter <= t_exit) & (t_enter > 0)
    return np.where(hit, t_enter, np.inf), tmin.argmax(0)


def demo_scene(height: int = 192, width: int = 256, fov_deg: float = DEFAULT_FOV_DEG) -> SceneData:
    """A synthetic scene with exact depth: checkered floor, back wall, an orange box with a shadow.

    Camera axes x right, y down, z forward; the floor is the plane ``y = 1.6`` (1.6 units below the
    camera), the wall is ``z = 9``, the box spans ``x in [-1.2, 0]``, ``y in [0.7, 1.6]``,
    ``z in [4.6, 5.8]``.
    """
    f = width / (2.0 * math.tan(math.radians(fov_deg) / 2.0))
    jj, ii = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    dx = (jj - width / 2.0) / f  # ray direction per unit z-depth, (H, W)
    dy = (ii - height / 2.0) / f
    floor_y, wall_z = 1.6, 9.0
    with np.errstate(divide="ignore"):
        t_floor = np.where(dy > 1e-6, floor_y / dy, np.inf)
    t_wall = np.full_like(dx, wall_z)
    lo, hi = np.array([-1.2, 0.7, 4.6]), np.array([0.0, floor_y, 5.8])
    t_box, face = _hit_box(dx, dy, lo, hi)
    depth = np.minimum(np.minimum(t_floor, t_wall), t_box)
    is_box = t_box <= np.minimum(t_floor, t_wall)
    is_floor = ~is_box & (t_floor < t_wall)
    x, y, z = dx * depth, dy * depth, depth  # 3D points, (H, W) each

    rgb = np.empty((height, width, 3), np.float64)
    wall = np.array([0.78, 0.80, 0.86]) * (0.85 + 0.15 * (1 - ii / height))[..., None]
    rgb[:] = wall
    checker = ((np.floor(x * 1.5) + np.floor(z * 1.5)) % 2)[..., None]
    floor_col = np.where(checker > 0, np.array([0.55, 0.45, 0.35]), np.array([0.72, 0.62, 0.50]))
    # soft shadow of the box cast by a light up and to the left (offset footprint on the floor)
    sx, sz = x - 0.45, z - 0.35
    inside = (sx > lo[0]) & (sx < hi[0]) & (sz > lo[2]) & (sz < hi[2])
    floor_col = floor_col * np.where(inside, 0.55, 1.0)[..., None]
    rgb[is_floor] = floor_col[is_floor]
    shade = np.choose(face, [0.75, 1.0, 0.88])[..., None]  # side faces darker than the top
    stripe = (0.9 + 0.1 * np.cos(8.0 * (x + y + z)))[..., None]
    box_col = np.array([0.93, 0.45, 0.12]) * shade * stripe
    rgb[is_box] = box_col[is_box]
    image = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    return SceneData(image, depth.astype(np.float32), [("orange box", is_box)],
                     "an orange box on a checkered floor in front of a grey wall", fov_deg)


def _world_available() -> str | None:
    """``None`` when TinyWorld scenes can be rendered here, else the reason they cannot."""
    try:
        importlib.import_module("diffusion_handles.world.render")
        importlib.import_module("mitsuba")
    except Exception as e:  # any import failure means "not offered"
        return f"{type(e).__name__}: {e}"
    return None


class SceneCatalog:
    """The scenes offered by the page: ``demo`` always, ``tinyworld-<seed>`` when available.

    ``size`` is ``(height, width)`` of the demo; TinyWorld scenes are square with the longer
    side. Scenes are computed on first use and kept (they are small). Thread-safe.
    """

    # held-out TinyWorld seeds (the model never saw them): two objects each, on four floors
    WORLD_SEEDS = (1_000_024, 1_000_028, 1_000_021, 1_000_033)

    def __init__(self, world_seeds: tuple[int, ...] = WORLD_SEEDS, size: tuple[int, int] = (192, 256)):
        self.world_seeds = world_seeds
        self.size = size
        self._cache: dict[str, SceneData] = {}
        self._lock = threading.Lock()
        self.world_unavailable = _world_available()

    def list(self) -> list[dict]:
        out = [{"id": "demo", "title": "Demo: box on a floor (built in)", "source": "builtin"}]
        if self.world_unavailable is None:
            out += [{"id": f"tinyworld-{s}", "title": f"TinyWorld scene {s}", "source": "tinyworld"}
                    for s in self.world_seeds]
        return out

    def get(self, scene_id: str) -> SceneData:
        known = {s["id"] for s in self.list()}
        if scene_id not in known:
            raise HandlesError(f"scene: expected one of {', '.join(sorted(known))}, got {scene_id!r}")
        with self._lock:
            if scene_id not in self._cache:
                self._cache[scene_id] = self._make(scene_id)
            return self._cache[scene_id]

    def _make(self, scene_id: str) -> SceneData:
        h, w = self.size
        if scene_id == "demo":
            return demo_scene(h, w)
        seed = int(scene_id.split("-", 1)[1])
        h = w = max(h, w)  # square, like the TinyWorld model's 128x128 training images
        world = importlib.import_module("diffusion_handles.world.render")
        try:
            scene = world.scene_for_seed(seed, h, w)
            r = world.render(scene, seed=seed)  # the world's samples per pixel: low noise
        except Exception as e:
            raise HandlesError(f"scene: could not render TinyWorld scene {seed}: {e}") from None
        names = [o.describe() for o in scene.objects]
        masks = [(names[k] if k < len(names) else f"object {k}", r.masks[k]) for k in range(len(r.masks))]
        masks = [(n, m) for n, m in masks if m.any()]
        return SceneData(r.rgb, r.depth.astype(np.float32), masks, r.caption, float(scene.fov_deg))
