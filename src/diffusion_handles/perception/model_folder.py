"""Checking a local model folder's kind before ``from_pretrained`` reads it.

``transformers`` loads some folders of the wrong kind without complaint: ``SamModel`` accepts a
depth model's folder and initialises every weight at random (the edit then fails later with a
traceback, or silently selects garbage). So a folder given for a perception model is checked
first: it must hold a ``config.json`` whose ``model_type`` is one the stage can run. The message
says what the folder is (empty, a diffusers pipeline, a model of another kind) and what was
expected, naming the command-line option.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from diffusion_handles.errors import HandlesError

T = TypeVar("T")


def describe_folder(folder: Path) -> str:
    """What a folder looks like, in a few words, for an error message."""
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError as e:
        return f"an unreadable folder ({type(e).__name__})"
    if not names:
        return "an empty folder"
    if "model_index.json" in names:
        return "a diffusers pipeline folder (model_index.json)"
    if "config.json" not in names:
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        return f"a folder without config.json (it holds {shown})"
    return "a model folder"


def folder_model_type(folder: Path) -> str | None:
    """``model_type`` of the ``config.json`` in ``folder``, or None if there is none."""
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    mt = cfg.get("model_type") if isinstance(cfg, dict) else None
    return mt if isinstance(mt, str) else None


def _diffusers_class(folder: Path) -> str | None:
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    cls = cfg.get("_class_name") if isinstance(cfg, dict) else None
    return cls if isinstance(cls, str) else None


def check_model_folder(source: str, *, option: str, what: str, model_types: Iterable[str]) -> None:
    """If ``source`` is an existing folder, refuse it unless its ``config.json`` names one of
    ``model_types``. Hub ids (not folders) pass unchecked.

    Args:
        source: the hub id or folder the user gave.
        option: the command-line option, e.g. ``--sam-model``.
        what: the kind expected, e.g. ``"SAM"`` or ``"depth estimation"``.
        model_types: accepted ``model_type`` values.

    Raises:
        HandlesError: one line naming ``option``, what was expected and what the folder holds.
    """
    if not isinstance(source, str) or not source.strip():
        return
    folder = Path(source).expanduser()
    if not folder.is_dir():
        return
    accepted = sorted(set(model_types))
    expected = f"a transformers {what} model folder (config.json with model_type {', '.join(accepted)})"
    if not (folder / "config.json").is_file():
        raise HandlesError(f"{option}: expected {expected}, got {describe_folder(folder)}: {folder}")
    mt = folder_model_type(folder)
    if mt is None:
        cls = _diffusers_class(folder)
        got = f"a diffusers {cls} folder" if cls else "a config.json without a model_type"
        raise HandlesError(f"{option}: expected {expected}, got {got} in {folder}")
    if mt not in accepted:
        raise HandlesError(f"{option}: expected {expected}, got a model of type {mt!r} in {folder}")


def guarded_loader(load: Callable[[str, bool], T]) -> Callable[[str, bool], T]:
    """Wrap a ``from_pretrained`` loader so that the unexpected exceptions a broken folder can
    raise (truncated weights, mismatched shapes, ...) reach :func:`diffusion_handles.hub.load_pretrained`
    as a ``ValueError`` it reports in one line, instead of a traceback."""

    def _load(name: str, local_only: bool) -> T:
        if not Path(name).is_dir():  # hub ids: load_pretrained handles the hub's own errors
            return load(name, local_only)
        try:
            return load(name, local_only)
        except (OSError, ValueError, KeyError, HandlesError):
            raise
        except Exception as e:  # noqa: BLE001 - translated to one line by load_pretrained
            text = str(e).strip().splitlines()
            raise ValueError(f"{type(e).__name__}: {text[0][:200] if text else ''}") from None

    return _load
