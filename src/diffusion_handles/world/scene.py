"""TinyWorld scenes: a floor, a back wall, one to three textured primitives, a sun.

A :class:`Scene` is a small JSON document. Frames:

* **world**: y up, floor is the plane ``y = 0``; the camera looks roughly along world ``-z``.
* **camera**: the project's convention (OpenCV axes: x right, y down, z forward), see
  :mod:`diffusion_handles.geometry.camera`. ``camera_to_world`` (4x4, rigid) maps camera-frame
  points to world points.

Each object is a canonical shape (sphere of radius 1, cube ``[-1, 1]^3``, cylinder of radius
``aspect`` with its axis along local y from -1 to 1) placed by a 4x4 *similarity* ``to_world``
(rotation, uniform scale, translation). Edits (:class:`~diffusion_handles.geometry.transform.HandleEdit`)
are given in camera axes and applied by conjugating with ``camera_to_world``, so a scene can be
re-rendered with any object moved, rotated or scaled, or with the camera moved.

Captions list the objects **from left to right in the image** (by the horizontal position of
their centre), e.g. "a red striped cube and a blue sphere on a wooden floor by a grey wall".
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry.camera import DEFAULT_FOV_DEG
from diffusion_handles.geometry.transform import HandleEdit

SCENE_VERSION = 1
DEFAULT_SIZE = 128  # the world's native image side in pixels (v2; v1 was 64)
# Limits of a scene file (the same as ``handles world render --size``): image sides, objects,
# and magnitudes of positions and scales (the floor and wall are 60 units wide).
MIN_SIDE, MAX_SIDE = 16, 1024
MAX_OBJECTS = 16
MAX_COORD = 1e3
SCALE_RANGE = (1e-3, 1e3)
RIGID_TOL = 1e-6  # tolerance of the orthonormality checks (relative)

# Named colours (sRGB, 0-1). Chosen to stay distinguishable under coloured light.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "orange": (0.95, 0.50, 0.08),
    "yellow": (0.95, 0.85, 0.15),
    "green": (0.15, 0.65, 0.20),
    "cyan": (0.10, 0.75, 0.80),
    "blue": (0.12, 0.25, 0.85),
    "purple": (0.50, 0.18, 0.70),
    "pink": (0.95, 0.50, 0.70),
    "white": (0.92, 0.92, 0.90),
}
PATTERNS = ("solid", "checkered", "striped", "dotted")
SHAPES = ("sphere", "cube", "cylinder")
FLOORS = ("wooden", "tiled", "grey", "sandy", "grassy")
WALLS = {
    "white": (0.88, 0.88, 0.86),
    "grey": (0.55, 0.56, 0.58),
    "beige": (0.85, 0.76, 0.60),
    "dark": (0.22, 0.22, 0.25),
    "teal": (0.35, 0.60, 0.62),
}

# The side the sun shines from, as the caption names it ("... lit from the front left"): the
# sampler's azimuth range (SUN_AZIMUTH_DEG) in equal sectors, seen from the camera, from the left
# of the back wall round to its right. Six 50-degree sectors put a perfect generator within reach
# of the generation targets (`benchmarks/light_bound.py --sectors 1 2 3 6`, docs/releases/tinyworld-v2.7.md).
LIGHT_SIDES = ("back left", "left", "front left", "front right", "right", "back right")
LIGHT_PHRASE = " lit from the "  # caption + LIGHT_PHRASE + side
LIGHT_WORDS = tuple(sorted({*LIGHT_PHRASE.split(), *" ".join(LIGHT_SIDES).split()}))  # the words the light adds


def light_side_of(caption: str) -> int | None:
    """Index into :data:`LIGHT_SIDES` of the side a caption's "... lit from the SIDE" names
    (``None`` when it names none)."""
    _, sep, side = caption.strip().lower().rpartition(LIGHT_PHRASE)
    return LIGHT_SIDES.index(side) if sep and side in LIGHT_SIDES else None


# Every word a caption can contain (the tokenizer's vocabulary is built from this).
CAPTION_WORDS = sorted(
    {"a", "an", "and", "on", "by", "floor", "wall", *LIGHT_WORDS, *COLOURS, *PATTERNS, *SHAPES, *FLOORS, *WALLS}
)


@dataclass
class SceneObject:
    """One primitive. ``to_world`` is a 4x4 similarity (list of lists) from the canonical shape."""

    shape: str
    colour: str
    pattern: str
    to_world: list[list[float]]
    aspect: float = 1.0  # cylinder radius in local units (height is always 2)

    def describe(self) -> str:
        words = [self.colour] + ([] if self.pattern == "solid" else [self.pattern]) + [self.shape]
        return " ".join(words)

    def centre_world(self) -> np.ndarray:
        return np.asarray(self.to_world, dtype=np.float64)[:3, 3]


@dataclass
class Scene:
    """A TinyWorld scene (JSON-serialisable). Units: scene units (think metres)."""

    seed: int
    height: int
    width: int
    fov_deg: float
    camera_to_world: list[list[float]]
    floor: str
    wall: str
    wall_z: float  # the back wall is the plane z = wall_z (world), facing +z
    sun_direction: list[float]  # world direction the light travels (pointing down)
    sun_irradiance: float
    ambient: list[float]  # constant environment radiance (linear RGB)
    objects: list[SceneObject] = field(default_factory=list)
    version: int = SCENE_VERSION

    # ---------------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @staticmethod
    def from_dict(d: dict, max_side: int = MAX_SIDE) -> Scene:
        """A scene from its JSON object, validated by :func:`validate_scene_dict`.

        Raises:
            HandlesError: one line naming the JSON key path, e.g.
                ``objects[2].shape: expected one of sphere, cube, cylinder, got 'torus'``.
        """
        validate_scene_dict(d, max_side=max_side)
        d = dict(d)
        d["objects"] = [SceneObject(**o) for o in d.get("objects", [])]
        return Scene(**d)

    @staticmethod
    def from_json(text: str, max_side: int = MAX_SIDE) -> Scene:
        """A scene from JSON text (see :meth:`from_dict`); invalid JSON raises :class:`HandlesError`."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise HandlesError(f"expected a JSON object, got invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
        except RecursionError:
            raise HandlesError("expected a JSON object, got JSON nested too deeply") from None
        return Scene.from_dict(d, max_side=max_side)

    def copy(self) -> Scene:
        return copy.deepcopy(self)

    # ---------------------------------------------------------------- frames
    def c2w(self) -> np.ndarray:
        return np.asarray(self.camera_to_world, dtype=np.float64)

    def w2c(self) -> np.ndarray:
        return np.linalg.inv(self.c2w())

    def object_centre_camera(self, k: int) -> np.ndarray:
        """Centre of object ``k``'s canonical shape in camera coordinates, shape (3,)."""
        c = self.objects[k].centre_world()
        return (self.w2c() @ np.append(c, 1.0))[:3]

    def left_to_right(self) -> list[int]:
        """Object indices sorted by the horizontal image position of their centres."""
        xs = []
        for k in range(len(self.objects)):
            p = self.object_centre_camera(k)
            xs.append(p[0] / max(p[2], 1e-6))
        return sorted(range(len(self.objects)), key=lambda k: xs[k])

    def caption(self, mirrored: bool = False) -> str:
        """The caption; ``mirrored=True`` gives the caption of the left-right mirrored image."""
        order = self.left_to_right()
        objs = [self.objects[k].describe() for k in (order[::-1] if mirrored else order)]
        parts = [("an " if o[0] in "aeiou" else "a ") + o for o in objs]
        side = LIGHT_SIDES[len(LIGHT_SIDES) - 1 - self.light_sector() if mirrored else self.light_sector()]
        return (" and ".join(parts) + f" on {_article(self.floor)} {self.floor} floor by {_article(self.wall)} {self.wall}"
                f" wall{LIGHT_PHRASE}{side}")

    def sun_azimuth_camera_deg(self) -> float:
        """The sun's azimuth (degrees) about the camera's horizontal view direction: 0 when the
        sunlight travels the way the camera looks (the sun behind the camera), positive when it
        comes from the camera's right, +-180 straight from the front of the camera. For the
        sampler's cameras (no yaw) this is the azimuth :func:`_sun_direction` drew."""
        c2w = np.asarray(self.camera_to_world, dtype=np.float64)
        d = np.asarray(self.sun_direction, dtype=np.float64)
        right = c2w[:3, 0] * (1.0, 0.0, 1.0)
        forward = c2w[:3, 2] * (1.0, 0.0, 1.0)
        return math.degrees(math.atan2(-float(d @ right) / max(np.linalg.norm(right), 1e-12),
                                       float(d @ forward) / max(np.linalg.norm(forward), 1e-12)))

    def light_sector(self) -> int:
        """Index into :data:`LIGHT_SIDES` of the side the sun shines from, seen from the camera."""
        return azimuth_sector(self.sun_azimuth_camera_deg(), len(LIGHT_SIDES))

    # ---------------------------------------------------------------- edits
    def with_object_edit(self, k: int, edit: HandleEdit, pivot_camera) -> Scene:
        """A copy with object ``k`` moved by ``edit`` (camera axes) about ``pivot_camera``.

        ``pivot_camera`` (3,) is in camera coordinates, scene units; the project uses the
        centroid of the object's visible lifted depth pixels (see :func:`render.object_pivot`).
        """
        if not 0 <= k < len(self.objects):
            raise IndexError(f"object: expected an index in [0, {len(self.objects) - 1}], got {k}")
        s_cam = edit.resolve(list(map(float, pivot_camera))).matrix.numpy()  # 4x4 in camera frame
        m = self.c2w() @ s_cam @ self.w2c()  # the same similarity in the world frame
        out = self.copy()
        out.objects[k].to_world = (m @ np.asarray(self.objects[k].to_world)).tolist()
        return out

    def with_camera_edit(self, edit: HandleEdit, pivot_camera=(0.0, 0.0, 0.0)) -> Scene:
        """A copy seen from a moved camera (``edit`` moves the camera; camera axes).

        Consistent with :func:`diffusion_handles.geometry.transform.camera_move`: the scene
        points in the new camera frame are ``camera_move(edit, pivot) @ p_old``.
        """
        if edit.scale != 1.0:
            raise ValueError(f"scale: a camera move cannot scale, expected 1, got {edit.scale}")
        move = edit.resolve(list(map(float, pivot_camera))).matrix.numpy()
        out = self.copy()
        out.camera_to_world = (self.c2w() @ move).tolist()
        return out


# -------------------------------------------------------------------- validation
def _type_name(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"a boolean ({'true' if v else 'false'})"
    if isinstance(v, str):
        return f"a string {v[:40]!r}"
    if isinstance(v, list):
        return f"a list of {len(v)}"
    if isinstance(v, dict):
        return "an object"
    return f"{v!r}"[:60]


def _number(v, path: str, lo: float | None = None, hi: float | None = None, *, open_lo: bool = False,
            open_hi: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise HandlesError(f"{path}: expected a number, got {_type_name(v)}")
    f = float(v)
    if not math.isfinite(f):
        raise HandlesError(f"{path}: expected a finite number, got {v}")
    too_low = lo is not None and (f <= lo if open_lo else f < lo)
    too_high = hi is not None and (f >= hi if open_hi else f > hi)
    if too_low or too_high:
        left = "(" if open_lo else "["
        right = ")" if open_hi else "]"
        raise HandlesError(f"{path}: expected a number in {left}{lo:g}, {hi:g}{right}, got {v:g}")
    return f


def _integer(v, path: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise HandlesError(f"{path}: expected an integer, got {_type_name(v)}")
    if not lo <= v <= hi:
        raise HandlesError(f"{path}: expected an integer in [{lo}, {hi}], got {str(v)[:40]}")
    return v


def _choice(v, path: str, options) -> str:
    options = list(options)
    if not isinstance(v, str) or v not in options:
        raise HandlesError(f"{path}: expected one of {', '.join(options)}, got {_type_name(v)}")
    return v


def _vector(v, path: str, n: int, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    if not isinstance(v, list) or len(v) != n:
        raise HandlesError(f"{path}: expected a list of {n} numbers, got {_type_name(v)}")
    return np.array([_number(x, f"{path}[{i}]", lo, hi) for i, x in enumerate(v)], dtype=np.float64)


def _matrix4(v, path: str) -> np.ndarray:
    if not isinstance(v, list) or len(v) != 4:
        raise HandlesError(f"{path}: expected a 4x4 matrix (a list of 4 rows of 4 numbers), got {_type_name(v)}")
    m = np.stack([_vector(row, f"{path}[{i}]", 4) for i, row in enumerate(v)])
    if not np.allclose(m[3], (0.0, 0.0, 0.0, 1.0), rtol=0, atol=RIGID_TOL):
        raise HandlesError(f"{path}: expected the last row [0, 0, 0, 1], got {m[3].tolist()}")
    if np.abs(m[:3, 3]).max() > MAX_COORD:
        raise HandlesError(f"{path}: expected a translation within {MAX_COORD:g} scene units, got {m[:3, 3].tolist()}")
    return m


def _linear_part(m: np.ndarray, path: str, what: str) -> float:
    """The uniform scale of a similarity's linear part, or a HandlesError describing the defect."""
    lin = m[:3, :3]
    sv = np.linalg.svd(lin, compute_uv=False)
    if sv[-1] <= RIGID_TOL * max(sv[0], 1.0):
        raise HandlesError(f"{path}: expected {what}, got a singular matrix (singular values "
                           f"{', '.join(f'{x:.3g}' for x in sv)}: an axis of zero length or two parallel axes)")
    if np.linalg.det(lin) < 0:
        raise HandlesError(f"{path}: expected {what}, got a reflection (determinant < 0)")
    if sv[0] - sv[-1] > RIGID_TOL * sv[0]:
        raise HandlesError(f"{path}: expected {what}, got axes that are not orthogonal or not of equal length "
                           f"(singular values {', '.join(f'{x:.6g}' for x in sv)})")
    return float(sv[0])


def validate_scene_dict(d, max_side: int = MAX_SIDE) -> None:
    """Check a scene's JSON object completely before anything uses it.

    Checks types, names (shapes, colours, patterns, floors, walls), image sides in
    ``[MIN_SIDE, max_side]``, the field of view in (0, 180), a rigid ``camera_to_world``
    (orthonormal axes, no reflection: a zero-length look direction or an up vector parallel to
    it is singular), object ``to_world`` similarities with a scale in :data:`SCALE_RANGE`, finite
    numbers everywhere and no unknown or missing keys.

    Raises:
        HandlesError: one line naming the JSON key path, what was expected and what arrived.
    """
    if not isinstance(d, dict):
        raise HandlesError(f"expected a JSON object (a TinyWorld scene), got {_type_name(d)}")
    keys = {f.name for f in Scene.__dataclass_fields__.values()}
    required = keys - {"objects", "version"}
    unknown = sorted(set(d) - keys)
    if unknown:
        raise HandlesError(f"{unknown[0]}: unknown key; expected only {', '.join(sorted(keys))}")
    missing = sorted(required - set(d))
    if missing:
        raise HandlesError(f"{missing[0]}: missing; a scene needs {', '.join(sorted(required))}")
    if d.get("version", None) != SCENE_VERSION:
        raise HandlesError(f"version: expected {SCENE_VERSION}, got {_type_name(d.get('version'))}")
    _integer(d["seed"], "seed", 0, 2**63 - 1)
    for k in ("height", "width"):
        _integer(d[k], k, MIN_SIDE, max_side)
    _number(d["fov_deg"], "fov_deg", 0.0, 180.0, open_lo=True, open_hi=True)
    c2w = _matrix4(d["camera_to_world"], "camera_to_world")
    s = _linear_part(c2w, "camera_to_world", "a rigid camera pose (orthonormal right, down and forward axes)")
    if abs(s - 1.0) > RIGID_TOL:
        raise HandlesError(f"camera_to_world: expected a rigid camera pose (unit-length axes), got axes of length {s:.6g}")
    _choice(d["floor"], "floor", FLOORS)
    _choice(d["wall"], "wall", WALLS)
    _number(d["wall_z"], "wall_z", -MAX_COORD, MAX_COORD)
    sun = _vector(d["sun_direction"], "sun_direction", 3)
    if np.linalg.norm(sun) < 1e-9:
        raise HandlesError("sun_direction: expected a non-zero direction, got [0, 0, 0]")
    _number(d["sun_irradiance"], "sun_irradiance", 0.0, 100.0)
    _vector(d["ambient"], "ambient", 3, 0.0, 100.0)
    objects = d.get("objects", [])
    if not isinstance(objects, list):
        raise HandlesError(f"objects: expected a list of objects, got {_type_name(objects)}")
    if len(objects) > MAX_OBJECTS:
        raise HandlesError(f"objects: expected at most {MAX_OBJECTS} objects, got {len(objects)}")
    okeys = {f.name for f in SceneObject.__dataclass_fields__.values()}
    for i, o in enumerate(objects):
        path = f"objects[{i}]"
        if not isinstance(o, dict):
            raise HandlesError(f"{path}: expected an object with {', '.join(sorted(okeys))}, got {_type_name(o)}")
        unknown = sorted(set(o) - okeys)
        if unknown:
            raise HandlesError(f"{path}.{unknown[0]}: unknown key; expected only {', '.join(sorted(okeys))}")
        missing = sorted(okeys - {"aspect"} - set(o))
        if missing:
            raise HandlesError(f"{path}.{missing[0]}: missing; an object needs {', '.join(sorted(okeys - {'aspect'}))}")
        _choice(o["shape"], f"{path}.shape", SHAPES)
        _choice(o["colour"], f"{path}.colour", COLOURS)
        _choice(o["pattern"], f"{path}.pattern", PATTERNS)
        m = _matrix4(o["to_world"], f"{path}.to_world")
        scale = _linear_part(m, f"{path}.to_world", "a similarity (rotation times a uniform scale, plus a translation)")
        if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
            raise HandlesError(f"{path}.to_world: expected a scale in [{SCALE_RANGE[0]:g}, {SCALE_RANGE[1]:g}], got {scale:g}")
        if "aspect" in o:
            _number(o["aspect"], f"{path}.aspect", 0.0, 100.0, open_lo=True)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# -------------------------------------------------------------------- sampling
# The light of a random scene: neither its caption nor its depth tells it (see :func:`relight`).
SUN_ELEVATION_DEG = (35.0, 65.0)  # above the horizon
SUN_AZIMUTH_DEG = (-150.0, 150.0)  # 0: the sun shines at the back wall; +-150: nearly from behind it
SUN_IRRADIANCE = (2.2, 3.2)
AMBIENT = (0.25, 0.4)  # sky radiance, each channel then tinted by a factor in 1 +- AMBIENT_TINT
AMBIENT_TINT = 0.08


def _sun_direction(rng: np.random.Generator, azimuth_deg: tuple[float, float] = SUN_AZIMUTH_DEG) -> list[float]:
    """World direction the sunlight travels (unit, pointing down), drawn from the world's range
    (the azimuth from ``azimuth_deg``, degrees)."""
    elev = rng.uniform(*SUN_ELEVATION_DEG)
    return sun_direction(rng.uniform(*azimuth_deg), elev)


def sun_direction(azimuth_deg: float, elevation_deg: float) -> list[float]:
    """The unit world direction sunlight travels (pointing down) for a sun at ``azimuth_deg``
    (0: shining at the back wall, positive: from the camera's right) and ``elevation_deg``."""
    elev, azim = math.radians(elevation_deg), math.radians(azimuth_deg)
    return [-math.cos(elev) * math.sin(azim), -math.sin(elev), -math.cos(elev) * math.cos(azim)]


def sun_azimuth_deg(direction) -> float:
    """The azimuth (degrees) :func:`_sun_direction` drew for a sun ``direction`` (3,)."""
    return math.degrees(math.atan2(-float(direction[0]), -float(direction[2])))


def azimuth_sector(azimuth_deg: float, sectors: int) -> int:
    """Which of ``sectors`` equal parts of :data:`SUN_AZIMUTH_DEG` holds ``azimuth_deg`` (degrees;
    azimuths beyond the range count in its end sectors)."""
    lo, hi = SUN_AZIMUTH_DEG
    return min(max(int((float(azimuth_deg) - lo) // ((hi - lo) / int(sectors))), 0), int(sectors) - 1)


def _ambient(rng: np.random.Generator) -> list[float]:
    return [float(v) for v in rng.uniform(*AMBIENT) * (1.0 + rng.uniform(-AMBIENT_TINT, AMBIENT_TINT, 3))]


def relight(scene: Scene, seed: int, azimuth_sectors: int = 1) -> Scene:
    """``scene`` with its sun and sky drawn afresh (seeded) from the range :func:`sample_scene` draws.

    Geometry, materials, camera and caption are unchanged, so the depth and the caption are too:
    a render of it is an image a perfect generator could return for them (what ``handles world
    eval`` reports as the ``relit`` reference). ``azimuth_sectors > 1`` splits the sun's azimuth
    range into that many equal sectors and keeps the new sun in the sector of the old one: what a
    perfect generator could return if the caption also named that sector.
    """
    lo, hi = SUN_AZIMUTH_DEG
    width = (hi - lo) / int(azimuth_sectors)
    seen = scene.sun_azimuth_camera_deg()  # sectors as the caption sees them, from the camera
    k = azimuth_sector(seen, azimuth_sectors)
    turn = seen - sun_azimuth_deg(scene.sun_direction)  # the camera's yaw (0 for the sampler's cameras)
    rng = np.random.default_rng(seed)
    out = copy.deepcopy(scene)
    out.sun_direction = _sun_direction(rng, (lo + k * width - turn, lo + (k + 1) * width - turn))
    out.sun_irradiance = float(rng.uniform(*SUN_IRRADIANCE))
    out.ambient = _ambient(rng)
    return out


def _yaw(deg: float) -> np.ndarray:
    t = math.radians(deg)
    c, s = math.cos(t), math.sin(t)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=np.float64)


def camera_pose(height: float, pitch_deg: float) -> np.ndarray:
    """``camera_to_world`` of a camera at ``(0, height, 0)`` pitched down by ``pitch_deg``."""
    p = math.radians(pitch_deg)
    forward = np.array([0.0, -math.sin(p), -math.cos(p)])
    right = np.array([1.0, 0.0, 0.0])
    down = np.cross(forward, right)  # camera y (OpenCV: z = x cross y  =>  y = z cross x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, down, forward, (0.0, height, 0.0)
    return m


def sample_scene(seed: int, height: int = DEFAULT_SIZE, width: int = DEFAULT_SIZE, fov_deg: float = DEFAULT_FOV_DEG,
                 n_objects: int | None = None) -> Scene:
    """A random scene, fully determined by ``seed`` (numpy PCG64).

    Objects stand on the floor inside the camera's view, do not intersect, and are at least
    partly visible (the renderer checks visibility; see :func:`render.sample_visible_scene`).
    """
    rng = np.random.default_rng(seed)
    cam_h = rng.uniform(1.8, 2.8)
    pitch = rng.uniform(14.0, 26.0)
    c2w = camera_pose(cam_h, pitch)
    n = int(n_objects if n_objects is not None else rng.choice([1, 2, 3], p=[0.35, 0.45, 0.2]))
    tan_half = math.tan(math.radians(fov_deg) / 2.0)
    objects: list[SceneObject] = []
    placed: list[tuple[float, float, float]] = []  # (x, z, radius) on the floor
    colours = list(COLOURS)
    tries = 0
    while len(objects) < n and tries < 200:
        tries += 1
        shape = str(rng.choice(SHAPES))
        size = rng.uniform(0.5, 0.85)
        dist = rng.uniform(3.0, 5.4)  # along the floor, in front of the camera
        lateral = rng.uniform(-0.7, 0.7) * tan_half * dist
        x, z = lateral, -dist
        radius = size * (1.45 if shape == "cube" else 1.05)
        if any(math.hypot(x - px, z - pz) < radius + pr + 0.1 for px, pz, pr in placed):
            continue
        aspect = float(rng.uniform(0.55, 1.0)) if shape == "cylinder" else 1.0
        m = np.eye(4)
        m[:3, :3] = _yaw(rng.uniform(0, 360)) * size
        m[:3, 3] = (x, size, z)  # rests on the floor (canonical shapes span y in [-1, 1])
        objects.append(SceneObject(shape, str(rng.choice(colours)), str(rng.choice(PATTERNS)), m.tolist(), aspect))
        placed.append((x, z, radius))
    sun = _sun_direction(rng)
    return Scene(
        seed=int(seed), height=int(height), width=int(width), fov_deg=float(fov_deg),
        camera_to_world=c2w.tolist(), floor=str(rng.choice(FLOORS)), wall=str(rng.choice(list(WALLS))),
        wall_z=float(-rng.uniform(10.0, 13.0)), sun_direction=sun, sun_irradiance=float(rng.uniform(*SUN_IRRADIANCE)),
        ambient=_ambient(rng),
        objects=objects,
    )

