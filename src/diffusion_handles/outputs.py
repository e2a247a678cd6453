"""Output folders: checked before any work starts, then written all at once (every file or none).

Every command that takes ``--out DIR`` calls :func:`check_output_dir` first thing, so a bad
folder is refused in one line before any model loads, and writes through
:func:`atomic_output_dir`, which stages the folder next to ``DIR`` and swaps it in whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from diffusion_handles.errors import HandlesError


def _show(path: str) -> str:
    return repr(path if len(path) <= 200 else path[:200] + "...")


def check_output_dir(path: str | os.PathLike | None, overwrite: bool | None = False, *, arg: str = "--out",
                     reusable: Callable[[Path], bool] | None = None, reuse_what: str = "") -> Path:
    """Refuse an output folder that cannot (or may not) be written; return it as a ``Path``.

    Accepted: a folder that does not exist (its parents are created later) or is empty; a
    non-empty folder only with ``overwrite`` (it is then replaced whole by
    :func:`atomic_output_dir`) or when ``reusable(folder)`` says it holds a run to resume.
    Refused, with one line naming ``arg``: an empty name, the current folder or any folder
    above it (or the home folder or above it), an existing file, a path under a file, and a
    place where no folder can be created. Nothing is written: writability is probed with a
    temporary folder that is removed at once.

    Args:
        overwrite: the user gave ``--overwrite``; ``None``: the command has no such flag (the
            message then does not suggest it).
        reusable: for commands that resume into their output folder (``handles bench``).
        reuse_what: what ``reusable`` accepts, for the message (e.g. "a bench run").

    Raises:
        HandlesError: ``"--out: expected ..., got ..."``.
    """
    text = "" if path is None else os.fspath(path)
    if not text.strip():
        raise HandlesError(f"{arg}: expected a folder name, got {text!r}")
    if "\x00" in text:
        raise HandlesError(f"{arg}: expected a folder name, got a path with a NUL character")
    p = Path(text).expanduser()
    try:
        resolved = p.resolve()
        cwd = Path.cwd().resolve()
        protected = [(cwd, "the current folder")]
        with contextlib.suppress(RuntimeError, KeyError):
            protected.append((Path.home().resolve(), "the home folder"))
        for place, name in protected:
            if resolved == place or resolved in place.parents:
                where = name if resolved == place else f"above {name}"
                raise HandlesError(f"{arg}: expected a new or empty folder, got {_show(text)}, which is {where} "
                                   "(never written to); name a subfolder instead")
        # the nearest existing path: DIR itself or the ancestor the folder would be created in
        probe_at = p if p.exists() or p.is_symlink() else None
        if probe_at is None:
            for parent in p.absolute().parents:
                if parent.exists():
                    if not parent.is_dir():
                        raise HandlesError(f"{arg}: expected a folder, got {_show(text)}, which lies under the "
                                           f"file {_show(str(parent))}")
                    probe_at = parent
                    break
        elif not p.is_dir():
            kind = "a broken link" if p.is_symlink() and not p.exists() else "a file"
            raise HandlesError(f"{arg}: expected a folder, got {_show(text)}, which is {kind}; name a folder instead")
        else:
            entries = sorted(e.name for e in p.iterdir())
            reused = bool(entries) and not overwrite and reusable is not None and reusable(p)
            if entries and not overwrite and not reused:
                hint = " (pass --overwrite to replace it whole, or name another folder)" if overwrite is not None \
                    else " (name another folder)"
                what = f" or {reuse_what}" if reuse_what else ""
                raise HandlesError(f"{arg}: expected a new or empty folder{what}, got {_show(text)} holding "
                                   f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} "
                                   f"({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''}){hint}")
            # a resumed run writes inside DIR; otherwise staging and the swap happen next to it
            probe_at = p if reused else p.absolute().parent
        if probe_at is None:  # pragma: no cover - the root always exists
            raise HandlesError(f"{arg}: expected a writable place, got {_show(text)}")
        try:
            tempfile.TemporaryDirectory(prefix=".handles-probe.", dir=probe_at).cleanup()
        except OSError as e:
            raise HandlesError(f"{arg}: expected a writable place, got {_show(text)} ({probe_at}: "
                               f"{e.strerror or e})") from None
    except OSError as e:  # a name too long, a loop of links, a folder that cannot be listed
        raise HandlesError(f"{arg}: expected a usable folder, got {_show(text)} ({e.strerror or e})") from None
    return p


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (a temporary file beside it, then a rename);
    NaN and infinity are refused (``allow_nan=False``), so a reader never meets invalid JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=False))
    tmp.replace(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_output_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh staging folder; on success it replaces ``path`` whole.

    The staging folder lives next to ``path`` (same file system, so the swap is two renames).
    If the body raises, the staging folder is removed and ``path`` is left exactly as it was
    (not created if it did not exist), so a failed command never leaves a half-written output.
    An existing ``path`` (a folder, or a link to one) is replaced, never merged into: it is
    moved aside, the staging folder is renamed into its place, and only then is the old one
    deleted (if the swap fails the old one is put back). Callers check first with
    :func:`check_output_dir` whether replacing is allowed.
    """
    path = Path(os.path.abspath(Path(path).expanduser()))
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        raise HandlesError(f"{path}: expected a folder to write, got a file")
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        if not (path.exists() or path.is_symlink()):
            staging.rename(path)
            return
        old = parent / f".{path.name}.{uuid.uuid4().hex[:12]}.old"  # same file system: a rename
        path.rename(old)
        try:
            staging.rename(path)
        except BaseException:
            old.rename(path)
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _remove(old)
