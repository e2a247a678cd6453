"""Flags of ``handles edit --camera`` and ``handles edit --edits FILE.json`` (not a sub-command);
their inputs are loaded by :mod:`diffusion_handles.cli.inputs`.

* ``--camera``: the transform flags move the camera; no object is selected, the whole image is
  the inversion's mask. The depth is given (``--depth``) or estimated.
* ``--edits FILE.json``: several objects in one pass. The file is a JSON list, one object per
  entry: exactly one of ``"mask"`` (a PNG path, relative paths relative to the JSON file),
  ``"object"`` (a text query) or ``"click"`` (``[x, y]`` or a list of such points, pixels), and
  the transform keys of :class:`~diffusion_handles.geometry.HandleEdit`: ``"translate"``
  ``[x, y, z]``, ``"rotate_axis"`` ``[x, y, z]``, ``"rotate_deg"``, ``"scale"`` (a missing key
  is the identity).
* ``handles animate --edits FILE.json``: the same list, each entry with ``"keyframes"`` (a list
  of such transforms, its own track) instead of one transform.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

from diffusion_handles import limits
from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry.transform import HandleEdit

MAX_EDITS = limits.OBJECTS[1]  # objects in one --edits file (a TinyWorld scene has at most 16)
MAX_EDITS_BYTES = limits.JSON_BYTES  # read no further (a FIFO or /dev/zero never ends)
SOURCE_KEYS = ("mask", "object", "click")
TRANSFORM_KEYS = ("translate", "rotate_axis", "rotate_deg", "scale")


@dataclass
class EditEntry:
    """One object of an ``--edits`` file: where it is (one of mask path, text, clicks) and its edit."""

    index: int
    edit: HandleEdit
    mask_path: Path | None = None
    text: str | None = None
    clicks: list[tuple[float, float]] | None = None
    keyframes: list[HandleEdit] | None = None  # handles animate: the object's track (``edit`` is its last keyframe)

    def to_json(self) -> dict:
        src = ({"mask": str(self.mask_path)} if self.mask_path is not None
               else {"object": self.text} if self.text is not None else {"click": [list(c) for c in self.clicks]})
        if self.keyframes is not None:
            return {**src, "keyframes": [k.to_dict() for k in self.keyframes]}
        return {**src, **self.edit.to_dict()}


def add_mode_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("other edits (instead of one object)")
    g.add_argument("--camera", action="store_true",
                   help="move the camera instead of an object: the transform flags move the camera (rotation about "
                        "the camera centre); the whole scene is lifted and moved and the disocclusions generated "
                        "(no --mask/--object/--click)")
    g.add_argument("--edits", default=None, metavar="FILE.json",
                   help='several objects in one pass: a JSON list of {"mask": PNG | "object": TEXT | "click": [X, Y], '
                        '"translate": [X, Y, Z], "rotate_axis": [X, Y, Z], "rotate_deg": A, "scale": S} (relative '
                        "paths relative to the file; instead of --mask/--object/--click and the transform flags)")


def _numbers(v, where: str, n: int | None) -> list[float]:
    if isinstance(v, bool) or not isinstance(v, list if n is not None else (int, float)):
        want = f"a list of {n} numbers" if n is not None else "a number"
        raise HandlesError(f"--edits: {where}: expected {want}, got {json.dumps(v)[:60]}")
    vals = v if n is not None else [v]
    if (n is not None and len(vals) != n) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals):
        want = f"a list of {n} numbers" if n is not None else "a number"
        raise HandlesError(f"--edits: {where}: expected {want}, got {json.dumps(v)[:60]}")
    out = [float(x) if abs(x) < 1e308 else math.inf for x in vals]  # an integer beyond float is not finite
    if not all(math.isfinite(x) for x in out):
        raise HandlesError(f"--edits: {where}: expected finite numbers, got {json.dumps(v)[:60]}")
    return out


def _transform(d: dict, where: str) -> HandleEdit:
    """The transform keys of one ``--edits`` entry (a missing key is the identity's value), read
    strictly (types, and magnitudes within :mod:`~diffusion_handles.limits`)."""
    from diffusion_handles.animation import edit_from_json

    return edit_from_json(d, f"--edits: {where}.")


def parse_edits_file(path: str | Path, keyframes: bool = False) -> list[EditEntry]:
    """The entries of an ``--edits`` file, validated (one-line errors naming the entry and key).

    ``keyframes``: each entry has ``"keyframes"`` (``handles animate``) instead of the transform keys.
    """
    from diffusion_handles.io import read_json_file

    p = Path(path)
    data = read_json_file(p, "--edits", "a JSON list")  # at most limits.JSON_BYTES, nested at most JSON_DEPTH
    if not isinstance(data, list) or not data:
        raise HandlesError(f"--edits: expected a non-empty JSON list of edits, got {type(data).__name__ if data else 'an empty list'}")
    if len(data) > MAX_EDITS:
        raise HandlesError(f"--edits: expected at most {MAX_EDITS} edits, got {len(data)}")
    entries = []
    for i, d in enumerate(data):
        where = f"[{i}]"
        if not isinstance(d, dict):
            raise HandlesError(f"--edits: {where}: expected an object with a mask/object/click and a transform, got {json.dumps(d)[:60]}")
        motion = ("keyframes",) if keyframes else TRANSFORM_KEYS
        unknown = sorted(set(d) - set(SOURCE_KEYS) - set(motion))
        if unknown:
            raise HandlesError(f"--edits: {where}: unknown key(s) {', '.join(unknown)}; expected mask|object|click and "
                               f"{', '.join(motion)}")
        given = [k for k in SOURCE_KEYS if k in d]
        if len(given) != 1:
            raise HandlesError(f"--edits: {where}: expected exactly one of mask, object, click, got {', '.join(given) or 'none'}")
        if keyframes:
            from diffusion_handles.animation import keyframes_from_json

            if "keyframes" not in d:
                raise HandlesError(f"--edits: {where}: expected \"keyframes\" (a list of transforms), got none")
            track = keyframes_from_json(d["keyframes"], f"--edits: {where}.keyframes")
            entry = EditEntry(i, track[-1], keyframes=track)
        else:
            entry = EditEntry(i, _transform(d, where))
        key = given[0]
        v = d[key]
        if key == "mask":
            if not isinstance(v, str) or not v.strip():
                raise HandlesError(f"--edits: {where}.mask: expected a PNG path, got {json.dumps(v)[:60]}")
            mp = Path(v).expanduser()
            entry.mask_path = mp if mp.is_absolute() else p.parent / mp
        elif key == "object":
            if not isinstance(v, str) or not v.strip():
                raise HandlesError(f"--edits: {where}.object: expected a text query, got {json.dumps(v)[:60]}")
            entry.text = v
        else:
            pts = v if isinstance(v, list) and v and isinstance(v[0], list) else [v]
            entry.clicks = [tuple(_numbers(q, f"{where}.click", 2)) for q in pts]
        entries.append(entry)
    return entries


def check_mode_args(args: argparse.Namespace) -> str:
    """``"camera"``, ``"multi"`` or ``"object"``; refuses conflicting flags (before any work)."""
    picked = [f for f in ("mask", "object", "click") if getattr(args, f, None)]
    edits = getattr(args, "edits", None)
    if args.camera and edits:
        raise HandlesError("--camera: expected either --camera or --edits, got both")
    if args.camera:
        if picked:
            raise HandlesError(f"--camera: expected no --mask/--object/--click (a camera move moves the whole scene), "
                               f"got --{picked[0]}")
        if getattr(args, "background_depth", None):
            raise HandlesError("--background-depth: expected none with --camera (nothing is removed from the scene)")
        return "camera"
    if edits:
        if picked:
            raise HandlesError(f"--edits: expected no --{picked[0]} (each entry of the file names its object), got --{picked[0]}")
        flags = {"--translate": ("translate", ["0", "0", "0"]), "--rotate-axis": ("rotate_axis", ["0", "1", "0"]),
                 "--rotate-deg": ("rotate_deg", "0"), "--scale": ("scale", "1")}
        for flag, (name, default) in flags.items():  # handles animate has none (its --edits carry keyframes)
            if getattr(args, name, default) != default:
                raise HandlesError(f"{flag}: expected no transform flag with --edits (each entry has its own), got {flag}")
        return "multi"
    return "object"
