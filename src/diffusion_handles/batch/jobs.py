"""The JSONL job file of ``handles batch``: one edit per line, validated before anything runs.

A line is a JSON object; keys (``handles edit`` flags, with ``_`` for ``-``):

* required: ``id`` (the output folder's name: letters, digits, ``.``, ``_``, ``-``, starting with
  a letter or digit, at most 100 characters; unique, case-insensitively), ``image`` (path),
  ``prompt`` (text), and exactly one of ``mask`` (path), ``object`` (text) or ``click``
  (``[x, y]`` or a list of them, pixels);
* optional: ``depth``, ``background_depth`` (paths), ``depth_scale`` (number), ``depth_kind``
  (``z|inverse|relative-depth``: what ``depth`` holds, as ``--depth-kind``), ``translate``,
  ``rotate_axis`` (three numbers), ``rotate_deg``, ``scale``, ``fov`` (numbers), ``model``,
  ``preset`` (``default|paper|fast``), ``inversion`` (``null-text|ddim|negative-prompt``),
  ``steps``, ``guidance_steps``, ``grad_steps``, ``seed`` (integers), ``identity_transfer``
  (number or ``"off"``), ``transfer_source`` (``latent|pixels``), ``composite``, ``complete_back`` (bool),
  ``device`` (``cpu|cuda``), ``dtype``, ``restyle`` (the object's new look, text, as ``--restyle``) and
  ``restyle_words`` (the words of ``prompt`` naming the object, as ``--restyle-words``; only with
  ``restyle``, which is checked against ``prompt`` by the library's rule).

Every number has the range ``handles edit`` gives it, from :mod:`diffusion_handles.limits`
(``steps`` in ``STEPS``, ``grad_steps`` in ``GRAD_STEPS``, ``seed`` in ``SEED``, transforms within
``TRANSLATE`` / ``ROTATE_DEG`` / ``SCALE``, ``fov`` in ``FOV_DEG``); a line is at most
``JSON_BYTES`` long and nested at most ``JSON_DEPTH`` deep, a file at most ``BATCH_JOBS`` lines.

Relative paths are relative to the JSONL file's folder. Blank lines and lines starting with
``#`` are skipped. A line that fails validation becomes a :class:`BadLine` (its 1-based line
number and a one-line reason); the other lines still run.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from diffusion_handles import limits
from diffusion_handles.errors import HandlesError

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
PATH_KEYS = ("image", "mask", "depth", "background_depth")
CHOICES = {
    "preset": limits.PRESETS,
    "inversion": ("null-text", "ddim", "negative-prompt"),
    "device": ("cpu", "cuda"),
    "dtype": ("float32", "float16", "bfloat16"),
    "transfer_source": ("latent", "pixels"),
    "depth_kind": ("z", "inverse", "relative-depth"),
}
INT_KEYS = {"steps": limits.STEPS, "guidance_steps": (0, limits.STEPS[1]), "grad_steps": limits.GRAD_STEPS,
            "seed": limits.SEED}  # inclusive ranges, as handles edit checks them
NUMBER_KEYS = ("rotate_deg", "scale", "fov", "depth_scale")
VECTOR_KEYS = ("translate", "rotate_axis")
TEXT_KEYS = ("model", "object")
RESTYLE_KEYS = ("restyle", "restyle_words")  # the generation's prompt: the object's words replaced (--restyle)
KNOWN_KEYS = frozenset({"id", "image", "prompt", "mask", "object", "click", "depth", "background_depth",
                        "identity_transfer", "composite", "complete_back", *CHOICES, *INT_KEYS, *NUMBER_KEYS, *VECTOR_KEYS,
                        *TEXT_KEYS, *RESTYLE_KEYS})
# keys that do not change the inversion: jobs equal on everything else share one (cache)
EDIT_ONLY_KEYS = frozenset({"id", "translate", "rotate_axis", "rotate_deg", "scale", "fov", "background_depth",
                            "composite", "complete_back", "identity_transfer", "transfer_source", "grad_steps",
                            *RESTYLE_KEYS})


@dataclass
class Job:
    """One valid line: ``spec`` holds the line's keys with paths made absolute."""

    id: str
    line: int
    spec: dict = field(default_factory=dict)

    def inversion_group(self) -> str:
        """Jobs with equal groups invert the same inputs with the same settings (one inversion)."""
        key = {k: v for k, v in self.spec.items() if k not in EDIT_ONLY_KEYS}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def edit_argv(self, out: str | Path, cache_dir: str | Path | None) -> list[str]:
        """The ``handles edit`` command line of this job (``--out out``, ``--cache cache_dir``)."""
        s = self.spec
        argv = ["edit", s["image"], f"--prompt={s['prompt']}"]
        if "mask" in s:
            argv.append(f"--mask={s['mask']}")
        if "object" in s:
            argv.append(f"--object={s['object']}")
        for x, y in s.get("click", []):
            argv.append(f"--click={x!r},{y!r}")
        for key in ("depth", "background_depth", "model", "preset", "inversion", "device", "dtype", "transfer_source",
                    "depth_kind"):
            if key in s:
                argv.append(f"--{key.replace('_', '-')}={s[key]}")
        for key in VECTOR_KEYS:
            if key in s:
                argv += [f"--{key.replace('_', '-')}", *(repr(float(v)) for v in s[key])]
        for key in (*NUMBER_KEYS, *INT_KEYS):
            if key in s:
                argv.append(f"--{key.replace('_', '-')}={s[key]!r}")
        if "identity_transfer" in s:
            argv.append(f"--identity-transfer={s['identity_transfer']}")
        for key in RESTYLE_KEYS:  # "--flag=TEXT": a text starting with '-' stays the flag's value
            if key in s:
                argv.append(f"--{key.replace('_', '-')}={s[key]}")
        if "composite" in s:
            argv.append(f"--composite={'on' if s['composite'] else 'off'}")
        if s.get("complete_back"):
            argv.append("--complete-back")
        if cache_dir is not None:
            argv.append(f"--cache={cache_dir}")
        argv += ["--quiet", f"--out={out}"]
        return argv


@dataclass
class BadLine:
    """A line that cannot run: ``id`` when the line had a usable one, else ``line-<n>``."""

    id: str
    line: int
    error: str


def _number(v) -> bool:
    """A finite JSON number (a boolean is not one; an integer beyond float is not finite)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= sys.float_info.max


def _check_required(obj: dict, spec: dict) -> None:
    """Unknown keys, ``id``, ``prompt`` and the one object source."""
    unknown = sorted(set(obj) - KNOWN_KEYS)
    if unknown:
        raise HandlesError(f"{unknown[0]}: expected one of the known keys ({', '.join(sorted(KNOWN_KEYS))}), "
                           f"got an unknown key")
    for key in ("id", "image", "prompt"):
        if key not in obj:
            raise HandlesError(f"{key}: expected a value, got no such key")
    jid = obj["id"]
    if not isinstance(jid, str) or not ID_PATTERN.match(jid):
        raise HandlesError(f"id: expected a folder-safe name (letters, digits, '.', '_', '-', starting with a "
                           f"letter or digit, at most 100 characters), got {jid!r}")
    spec["id"] = jid
    if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
        raise HandlesError(f"prompt: expected a non-empty text, got {obj['prompt']!r}")
    spec["prompt"] = obj["prompt"]
    sources = [k for k in ("mask", "object", "click") if k in obj]
    if len(sources) != 1:
        raise HandlesError(f"mask/object/click: expected exactly one, got {', '.join(sources) or 'none'}")


def _check_texts(obj: dict, spec: dict, base: Path) -> None:
    """Paths (made absolute), texts and clicks."""
    for key in PATH_KEYS:
        if key in obj:
            v = obj[key]
            if not isinstance(v, str) or not v.strip():
                raise HandlesError(f"{key}: expected a file path (text), got {v!r}")
            p = Path(v).expanduser()
            spec[key] = str(p if p.is_absolute() else (base / p).resolve())
    for key in TEXT_KEYS:
        if key in obj:
            if not isinstance(obj[key], str) or not obj[key].strip():
                raise HandlesError(f"{key}: expected a non-empty text, got {obj[key]!r}")
            spec[key] = obj[key]
    if "click" in obj:
        c = obj["click"]
        points = [c] if isinstance(c, list) and len(c) == 2 and all(_number(v) for v in c) else c
        if not isinstance(points, list) or not points or not all(
                isinstance(p, list) and len(p) == 2 and all(_number(v) for v in p) for p in points):
            raise HandlesError(f"click: expected [x, y] or a list of [x, y] (pixels), got {_shown(c)}")
        spec["click"] = [[float(x), float(y)] for x, y in points]


def _check_restyle(obj: dict, spec: dict) -> None:
    """``restyle`` and ``restyle_words``: texts, the words only with ``restyle``, both checked against
    ``prompt`` as the edit will use them (:func:`~diffusion_handles.diffusion.prompts.restyle_prompt`)."""
    for key in RESTYLE_KEYS:
        if key in obj:
            if not isinstance(obj[key], str) or not obj[key].strip():
                raise HandlesError(f"{key}: expected a non-empty text, got {_shown(obj[key])}")
            spec[key] = obj[key]
    if "restyle" not in spec:
        if "restyle_words" in spec:
            raise HandlesError("restyle_words: expected restyle with it (the object's new look), got restyle_words alone")
        return
    from diffusion_handles.diffusion.prompts import restyle_prompt

    restyle_prompt(spec["prompt"], spec["restyle"], spec.get("restyle_words"))  # raises naming restyle(_words)


def _check_transform(obj: dict, spec: dict) -> None:
    """``translate``, ``rotate_axis``, ``rotate_deg``, ``scale``, ``fov``, ``depth_scale``: types, then
    the ranges of :mod:`~diffusion_handles.limits` (as ``handles edit`` checks its flags)."""
    from diffusion_handles.animation import edit_from_values

    for key in VECTOR_KEYS:
        if key in obj:
            v = obj[key]
            if not isinstance(v, list) or len(v) != 3 or not all(_number(x) for x in v):
                raise HandlesError(f"{key}: expected three finite numbers [x, y, z], got {_shown(v)}")
            spec[key] = [float(x) for x in v]
    for key in NUMBER_KEYS:
        if key in obj:
            if not _number(obj[key]):
                raise HandlesError(f"{key}: expected a finite number, got {_shown(obj[key])}")
            spec[key] = float(obj[key])
    if "scale" in spec and spec["scale"] <= 0:
        raise HandlesError(f"scale: expected a positive number, got {obj['scale']!r}")
    if "depth_scale" in spec and spec["depth_scale"] <= 0:
        raise HandlesError(f"depth_scale: expected a positive number, got {obj['depth_scale']!r}")
    lo, hi = limits.FOV_DEG
    if "fov" in spec and not lo < spec["fov"] < hi:
        raise HandlesError(f"fov: expected degrees in ({lo:g}, {hi:g}), got {obj['fov']!r}")
    edit_from_values(spec.get("translate", (0.0, 0.0, 0.0)), spec.get("rotate_axis", (0.0, 1.0, 0.0)),
                     spec.get("rotate_deg", 0.0), spec.get("scale", 1.0), {k: k for k in (*VECTOR_KEYS, "rotate_deg", "scale")})


def _check_settings(obj: dict, spec: dict) -> None:
    """Integers in their ranges, choices, ``identity_transfer`` and the booleans."""
    for key, (lo, hi) in INT_KEYS.items():
        if key in obj:
            v = obj[key]
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise HandlesError(f"{key}: expected an integer in [{lo}, {hi}], got {_shown(v)}")
            spec[key] = v
    if "guidance_steps" in spec and "steps" in spec and spec["guidance_steps"] > spec["steps"]:
        raise HandlesError(f"guidance_steps: expected at most steps ({spec['steps']}), got {spec['guidance_steps']}")
    for key, allowed in CHOICES.items():
        if key in obj:
            if obj[key] not in allowed:
                raise HandlesError(f"{key}: expected one of {', '.join(allowed)}, got {_shown(obj[key])}")
            spec[key] = obj[key]
    if "identity_transfer" in obj:
        v = obj["identity_transfer"]
        if v != "off" and not (_number(v) and 0 <= v < 1):
            raise HandlesError(f"identity_transfer: expected a fraction in [0, 1) or 'off', got {_shown(v)}")
        spec["identity_transfer"] = v
    for key in ("composite", "complete_back"):
        if key in obj:
            if not isinstance(obj[key], bool):
                raise HandlesError(f"{key}: expected true or false, got {_shown(obj[key])}")
            spec[key] = obj[key]


def _shown(v: object) -> str:
    """``repr(v)``, at most 60 characters (a line may hold a megabyte)."""
    text = repr(v)
    return text if len(text) <= 60 else text[:60] + "..."


def _check(obj: dict, base: Path) -> dict:
    """The validated spec of one line (paths absolute); raises HandlesError naming the key."""
    spec: dict = {}
    _check_required(obj, spec)
    _check_texts(obj, spec, base)
    _check_restyle(obj, spec)
    _check_transform(obj, spec)
    _check_settings(obj, spec)
    return spec


def _parse_line(line: str, n: int) -> dict:
    """One line's JSON object: at most ``JSON_BYTES`` long, nested at most ``JSON_DEPTH`` deep."""
    from diffusion_handles.io import check_json_depth

    size = len(line.encode("utf-8", "surrogatepass"))
    if size > limits.JSON_BYTES:
        raise HandlesError(f"line {n}: expected a line of at most {limits.JSON_BYTES} bytes, got {size}")
    check_json_depth(line, f"line {n}")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise HandlesError(f"line {n}: expected a JSON object, got invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise HandlesError(f"line {n}: expected a JSON object, got {type(obj).__name__}")
    return obj


def parse_jobs(path: str | Path) -> tuple[list[Job], list[BadLine]]:
    """Read and validate a JSONL job file: ``(valid jobs, bad lines)``, both in file order.

    Raises:
        HandlesError: the file cannot be read at all (missing, not UTF-8 text).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HandlesError(f"JOBS: expected a JSONL file, got {str(path)!r} (no such file)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise HandlesError(f"JOBS: could not read {str(path)!r}: {e}") from None
    base = path.resolve().parent
    jobs: list[Job] = []
    bad: list[BadLine] = []
    seen: dict[str, int] = {}
    lines = [(n, raw.strip()) for n, raw in enumerate(text.splitlines(), start=1)]
    lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
    if len(lines) > limits.BATCH_JOBS:
        raise HandlesError(f"JOBS: expected at most {limits.BATCH_JOBS} jobs, got {len(lines)} lines in {str(path)!r}")
    for n, line in lines:
        try:
            obj = _parse_line(line, n)
        except HandlesError as e:
            bad.append(BadLine(f"line-{n}", n, str(e)))
            continue
        jid = obj.get("id") if isinstance(obj.get("id"), str) and ID_PATTERN.match(obj.get("id", "")) else None
        try:
            spec = _check(obj, base)
        except HandlesError as e:
            bad.append(BadLine(jid or f"line-{n}", n, f"line {n}: {e}"))
            continue
        low = spec["id"].lower()
        if low in seen:
            bad.append(BadLine(f"line-{n}", n, f"line {n}: id: expected a unique id, got {spec['id']!r} again "
                                               f"(first on line {seen[low]})"))
            continue
        seen[low] = n
        jobs.append(Job(spec["id"], n, spec))
    # a bad line's id must not collide with a valid job's folder or another bad line
    taken = {j.id.lower() for j in jobs}
    for b in bad:
        if b.id.lower() in taken:
            b.id = f"line-{b.line}"
        taken.add(b.id.lower())
    return jobs, bad
