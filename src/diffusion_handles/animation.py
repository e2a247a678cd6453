"""Trajectories: one inversion, many edits along an interpolated 3D transform.

The paper's stop-motion figures (Sec. 6) are sequences of independent edits of one inverted
image; here the transforms between a few keyframes are interpolated and every frame is one
guided generation from the same inversion:

* translation linearly;
* rotation by spherical linear interpolation (slerp) of unit quaternions; when two keyframes
  rotate about the same axis (or one is the identity) the angle itself is interpolated, which
  is the same constant-speed rotation but keeps turns beyond 180 degrees the user asked for;
* scale geometrically (``s0 * (s1 / s0) ** u``: equal ratios per frame).

Keyframes are spread evenly over the frames: with ``K`` keyframes and ``N`` frames, frame
``i`` sits at keyframe position ``i * (K - 1) / (N - 1)``, so the first and last frames are the
first and last keyframes.

Keyframes files are read strictly (:func:`keyframes_from_json`): a vector is a list of three
numbers (never a string), a number is never a boolean, and every magnitude lies within
:mod:`diffusion_handles.limits` (``TRANSLATE``, ``ROTATE_DEG``, ``SCALE``), so every
interpolated transform is finite.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from diffusion_handles import limits
from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry.transform import HandleEdit

MAX_FRAMES = limits.FRAMES[1]
MAX_KEYFRAMES = limits.KEYFRAMES[1]
TRANSFORM_KEYS = ("translate", "rotate_axis", "rotate_deg", "scale")
_IDENTITY = {"translate": [0, 0, 0], "rotate_axis": [0, 1, 0], "rotate_deg": 0, "scale": 1}
_AXIS_TOL = 1e-9


# ---- rotations --------------------------------------------------------------------------
def quaternion(axis: Sequence[float], degrees: float) -> np.ndarray:
    """Unit quaternion ``(w, x, y, z)`` of a rotation by ``degrees`` about ``axis`` (right-hand rule)."""
    a = np.asarray(axis, np.float64)
    n = float(np.linalg.norm(a))
    if degrees == 0 or n < 1e-12:
        return np.array([1.0, 0.0, 0.0, 0.0])
    half = math.radians(degrees) / 2.0
    return np.concatenate([[math.cos(half)], math.sin(half) * a / n])


def axis_angle(q: np.ndarray) -> tuple[tuple[float, float, float], float]:
    """``(axis, degrees)`` of a unit quaternion ``(w, x, y, z)``, angle in [0, 360)."""
    q = np.asarray(q, np.float64) / np.linalg.norm(q)
    v = q[1:]
    s = float(np.linalg.norm(v))
    if s < 1e-12:
        return (0.0, 1.0, 0.0), 0.0
    deg = math.degrees(2.0 * math.atan2(s, float(q[0])))
    return tuple(float(x) for x in v / s), deg  # type: ignore[return-value]


def slerp(q0: np.ndarray, q1: np.ndarray, u: float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions along the shorter arc, ``u`` in [0, 1]."""
    q0, q1 = np.asarray(q0, np.float64), np.asarray(q1, np.float64)
    d = float(np.dot(q0, q1))
    if d < 0.0:  # q and -q are the same rotation: take the shorter way round
        q1, d = -q1, -d
    if d > 1.0 - 1e-12:
        q = q0 + u * (q1 - q0)
        return q / np.linalg.norm(q)
    omega = math.acos(min(1.0, d))
    return (math.sin((1 - u) * omega) * q0 + math.sin(u * omega) * q1) / math.sin(omega)


def _same_axis(a: HandleEdit, b: HandleEdit) -> tuple[float, float, float] | None:
    """The shared axis when both edits rotate about the same directed axis (or one does not rotate)."""
    if a.rotate_deg == 0:
        return b.rotate_axis
    if b.rotate_deg == 0:
        return a.rotate_axis
    na, nb = np.asarray(a.rotate_axis), np.asarray(b.rotate_axis)
    na, nb = na / np.linalg.norm(na), nb / np.linalg.norm(nb)
    return a.rotate_axis if float(np.linalg.norm(na - nb)) < _AXIS_TOL else None


def interpolate(a: HandleEdit, b: HandleEdit, u: float) -> HandleEdit:
    """The edit a fraction ``u`` in [0, 1] of the way from ``a`` to ``b`` (see the module docstring)."""
    t = tuple(float(x + u * (y - x)) for x, y in zip(a.translate, b.translate, strict=True))
    scale = float(a.scale * (b.scale / a.scale) ** u)
    axis = _same_axis(a, b)
    if axis is not None:
        deg_a = a.rotate_deg if a.rotate_deg == 0 or _directed(a.rotate_axis, axis) else -a.rotate_deg
        deg_b = b.rotate_deg if b.rotate_deg == 0 or _directed(b.rotate_axis, axis) else -b.rotate_deg
        deg = deg_a + u * (deg_b - deg_a)
    else:
        axis, deg = axis_angle(slerp(quaternion(a.rotate_axis, a.rotate_deg), quaternion(b.rotate_axis, b.rotate_deg), u))
    return HandleEdit(t, tuple(axis), float(deg), scale)  # type: ignore[arg-type]


def _directed(axis: Sequence[float], ref: Sequence[float]) -> bool:
    return float(np.dot(axis, ref)) > 0


def interpolate_keyframes(keyframes: Sequence[HandleEdit], n_frames: int, arg: str = "--keyframes") -> list[HandleEdit]:
    """``n_frames`` edits spread evenly from the first keyframe to the last.

    Args:
        keyframes: at least one :class:`HandleEdit` (one keyframe: every frame is that edit).
        n_frames: frames to make, in :data:`~diffusion_handles.limits.FRAMES`; at least 2 when
            there are several keyframes (the first and last frames are the first and last keyframes).
        arg: how the user gave the keyframes (named when an interpolated transform is not finite).
    """
    if not keyframes:
        raise HandlesError(f"{arg}: expected at least one keyframe, got none")
    if not limits.in_range(n_frames, limits.FRAMES):
        raise HandlesError(f"--frames: expected an integer in [{limits.FRAMES[0]}, {MAX_FRAMES}], got {n_frames}")
    k = len(keyframes)
    if k > 1 and n_frames < 2:
        raise HandlesError(f"--frames: expected at least 2 frames for {k} keyframes (first and last), got {n_frames}")
    if k == 1:
        return [keyframes[0]] * n_frames
    out = []
    for i in range(n_frames):
        pos = i * (k - 1) / (n_frames - 1)
        j = min(int(math.floor(pos)), k - 2)
        try:
            out.append(interpolate(keyframes[j], keyframes[j + 1], pos - j))
        except ValueError as e:  # HandleEdit refuses non-finite numbers
            raise HandlesError(f"{arg}: expected finite transforms between keyframes {j} and {j + 1}, got frame {i}: "
                               f"{e}") from None
    return out


def _shown(v: object) -> str:
    text = json.dumps(v)
    return text if len(text) <= 60 else text[:60] + "..."


def _json_number(v: object, name: str) -> float:
    """A JSON number (never a boolean or a string), finite."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise HandlesError(f"{name}: expected a number, got {_shown(v)}")
    try:
        f = float(v)
    except OverflowError:  # an integer beyond float
        f = math.inf
    if not math.isfinite(f):
        raise HandlesError(f"{name}: expected a finite number, got {_shown(v)}")
    return f


def _json_vector(v: object, name: str) -> list[float]:
    """A JSON list of three numbers (a string is never a vector)."""
    if not isinstance(v, list) or len(v) != 3 or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in v):
        raise HandlesError(f"{name}: expected a list of 3 numbers, got {_shown(v)}")
    return [_json_number(x, name) for x in v]


def edit_from_values(translate: Sequence[float], axis: Sequence[float], deg: float, scale: float,
                     names: Mapping[str, str]) -> HandleEdit:
    """A :class:`HandleEdit` whose numbers lie within :mod:`~diffusion_handles.limits`: every
    ``|translate|`` component within ``TRANSLATE``, ``|deg|`` within ``ROTATE_DEG``, ``scale`` in
    ``SCALE``, a non-zero axis of finite length when it rotates. ``names`` maps each key of
    :data:`TRANSFORM_KEYS` to how the user gave it (``--scale``, ``--edits: [0].scale``, ...)."""
    t, r = limits.TRANSLATE, limits.ROTATE_DEG
    if not all(abs(v) <= t for v in translate):
        raise HandlesError(f"{names['translate']}: expected numbers in [-{t:g}, {t:g}], got "
                           f"{' '.join(f'{v:g}' for v in translate)}")
    if not abs(deg) <= r:
        raise HandlesError(f"{names['rotate_deg']}: expected degrees in [-{r:g}, {r:g}], got {deg:g}")
    lo, hi = limits.SCALE
    if not limits.in_range(scale, limits.SCALE):
        raise HandlesError(f"{names['scale']}: expected a factor in [{lo:g}, {hi:g}], got {scale:g} (out of range)")
    length2 = sum(a * a for a in axis)
    if not math.isfinite(length2) or (deg != 0 and length2 < 1e-24):
        want = "an axis of finite length" if not math.isfinite(length2) else "a non-zero axis"
        raise HandlesError(f"{names['rotate_axis']}: expected {want}, got {' '.join(f'{a:g}' for a in axis)}")
    return HandleEdit(tuple(translate), tuple(axis), deg, scale)  # type: ignore[arg-type]


def edit_from_json(d: Mapping, where: str) -> HandleEdit:
    """The transform keys of a parsed JSON object, strictly (a missing key is the identity's
    value; other keys are the caller's business); errors name ``{where}{key}``."""
    translate = _json_vector(d.get("translate", _IDENTITY["translate"]), f"{where}translate")
    axis = _json_vector(d.get("rotate_axis", _IDENTITY["rotate_axis"]), f"{where}rotate_axis")
    deg = _json_number(d.get("rotate_deg", _IDENTITY["rotate_deg"]), f"{where}rotate_deg")
    scale = _json_number(d.get("scale", _IDENTITY["scale"]), f"{where}scale")
    return edit_from_values(translate, axis, deg, scale, {k: f"{where}{k}" for k in TRANSFORM_KEYS})


def keyframes_from_json(data: object, arg: str = "--keyframes") -> list[HandleEdit]:
    """Keyframes from parsed JSON: a list of 1 to ``KEYFRAMES`` objects with the keys ``translate``,
    ``rotate_axis`` (lists of three numbers), ``rotate_deg``, ``scale`` (numbers); a missing key
    is the identity's value. Read by :func:`edit_from_json` (types and magnitudes checked)."""
    if not isinstance(data, list) or not data:
        raise HandlesError(f"{arg}: expected a JSON list of transforms, got {type(data).__name__ if not isinstance(data, list) else 'an empty list'}")
    if len(data) > MAX_KEYFRAMES:
        raise HandlesError(f"{arg}: expected at most {MAX_KEYFRAMES} keyframes, got {len(data)}")
    out = []
    for i, d in enumerate(data):
        if not isinstance(d, dict):
            raise HandlesError(f"{arg}: keyframe {i}: expected an object with translate/rotate_axis/rotate_deg/scale, got {type(d).__name__}")
        unknown = sorted(set(d) - set(TRANSFORM_KEYS))
        if unknown:
            raise HandlesError(f"{arg}: keyframe {i}: unknown keys {', '.join(unknown)[:80]}; expected "
                               f"{', '.join(TRANSFORM_KEYS)}")
        out.append(edit_from_json(d, f"{arg}: keyframe {i}: "))
    return out


# ---- frames to files --------------------------------------------------------------------
def display_frames(frames: Sequence[np.ndarray], min_side: int = 256) -> list[np.ndarray]:
    """Frames ``(H, W, 3)`` uint8 upscaled by an integer factor (nearest neighbour) until the
    long side is at least ``min_side``, then padded by edge pixels to even sides (H.264 with
    4:2:0 chroma needs even sides)."""
    h, w = frames[0].shape[:2]
    f = max(1, math.ceil(min_side / max(h, w)))
    out = []
    for fr in frames:
        big = np.repeat(np.repeat(fr, f, 0), f, 1)
        pad = ((0, big.shape[0] % 2), (0, big.shape[1] % 2), (0, 0))
        out.append(np.pad(big, pad, mode="edge") if any(p[1] for p in pad) else big)
    return out


def mp4_available() -> bool:
    """Whether :func:`write_mp4` can run: imageio-ffmpeg (the ``video`` extra) is installed."""
    import importlib.util

    try:
        return importlib.util.find_spec("imageio_ffmpeg") is not None
    except (ImportError, ValueError):  # a broken installation
        return False


def write_mp4(frames: Sequence[np.ndarray], path: str | Path, fps: float) -> None:
    """H.264 (libx264, yuv420p) through imageio-ffmpeg's bundled ffmpeg. Frames must have even sides.

    Raises:
        HandlesError: one line naming the ``video`` extra when imageio-ffmpeg is not installed.
    """
    try:
        import imageio_ffmpeg
    except ImportError:
        from diffusion_handles.hub import needs_extra

        raise HandlesError(needs_extra("animation.mp4", "video")) from None

    h, w = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                         macro_block_size=1, ffmpeg_log_level="error")
    writer.send(None)  # start ffmpeg
    try:
        for fr in frames:
            writer.send(np.ascontiguousarray(fr))
    finally:
        writer.close()


def write_gif(frames: Sequence[np.ndarray], path: str | Path, fps: float) -> None:
    """An endlessly looping GIF (Pillow)."""
    from PIL import Image

    ims = [Image.fromarray(f) for f in frames]
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=max(20, round(1000 / fps)), loop=0)


# ---- temporal consistency against ground truth ------------------------------------------
def temporal_metrics(frames: Sequence[np.ndarray], truth: Sequence[np.ndarray]) -> dict:
    """Per-frame PSNR against the true frames and frame-to-frame change against the truth's.

    Args:
        frames, truth: equally long sequences of ``(H, W, 3)`` uint8 images of one size.

    Returns:
        ``psnr`` per frame (dB), ``psnr_mean``; ``change`` and ``change_truth``: per pair of
        consecutive frames the mean absolute difference (0-255 scale); ``change_ratio``: mean
        change over the truth's mean change (1 = as much motion as the truth; above 1 = flicker
        or extra motion); ``change_error``: mean ``|change - change_truth|``.
    """
    if len(frames) != len(truth) or not frames:
        raise HandlesError(f"truth: expected {len(frames)} frames, got {len(truth)}")
    a = np.stack([np.asarray(f, np.float64) for f in frames])  # (N, H, W, 3)
    b = np.stack([np.asarray(f, np.float64) for f in truth])
    if a.shape != b.shape:
        raise HandlesError(f"truth: expected frames of shape {a.shape[1:]}, got {b.shape[1:]}")
    mse = ((a - b) ** 2).mean(axis=(1, 2, 3))
    psnr = [float(10 * math.log10(255.0**2 / m)) if m > 0 else float("inf") for m in mse]
    ch = np.abs(np.diff(a, axis=0)).mean(axis=(1, 2, 3)) if len(a) > 1 else np.zeros(0)
    ch_t = np.abs(np.diff(b, axis=0)).mean(axis=(1, 2, 3)) if len(b) > 1 else np.zeros(0)
    finite = [p for p in psnr if math.isfinite(p)]
    return {
        "psnr": psnr, "psnr_mean": float(np.mean(finite)) if finite else float("inf"),
        "change": ch.tolist(), "change_truth": ch_t.tolist(),
        "change_ratio": float(ch.mean() / ch_t.mean()) if len(ch) and ch_t.mean() > 0 else float("nan"),
        "change_error": float(np.abs(ch - ch_t).mean()) if len(ch) else 0.0,
    }


def run_frames(edit_frame: Callable[[int, HandleEdit], np.ndarray], edits: Sequence[HandleEdit],
               callback: Callable[[dict], None] | None = None) -> list[np.ndarray]:
    """Call ``edit_frame(i, edit)`` for every frame, reporting ``{"stage": "frames", "step", "total"}``."""
    frames = []
    for i, e in enumerate(edits):
        frames.append(edit_frame(i, e))
        if callback is not None:
            callback({"stage": "frames", "step": i + 1, "total": len(edits)})
    return frames
