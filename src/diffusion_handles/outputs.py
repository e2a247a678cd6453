"""Output folders: checked before any work starts, then written all at once (every file or none).

Every command that takes ``--out DIR`` calls :func:`check_output_dir` first thing, so a bad
folder is refused in one line before any model loads, and writes through
:func:`atomic_output_dir`, which stages the folder next to ``DIR`` and swaps it in whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
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


def check_cache_dir(cache: str | os.PathLike | None, out: str | os.PathLike | None = None, *,
                    arg: str = "--cache") -> Path | None:
    """Refuse an inversion cache folder that cannot be used; return it as a ``Path`` (``None``: no cache).

    Accepted: an existing writable folder (its entries are kept), or a path where one can be
    created. Refused, with one line naming ``arg``: an empty name, a file, a broken link, a path
    under a file, a place where nothing can be written, and a folder inside ``out`` (or ``out``
    itself: the output folder is replaced whole when it is written, the cache with it). Nothing
    is written (writability is probed with a temporary folder removed at once).
    """
    if cache is None:
        return None
    text = os.fspath(cache)
    if not text.strip() or "\x00" in text:
        raise HandlesError(f"{arg}: expected a folder name, got {text[:200]!r}")
    p = Path(text).expanduser()
    try:
        if out is not None:
            target, resolved = Path(out).expanduser().resolve(), p.resolve()
            if resolved == target or target in resolved.parents:
                raise HandlesError(f"{arg}: expected a folder outside --out, got {_show(text)}, which is inside "
                                   f"--out {_show(os.fspath(out))} (replaced whole when the output is written)")
        if p.is_symlink() and not p.exists():
            raise HandlesError(f"{arg}: expected a folder, got {_show(text)}, which is a broken link")
        if p.exists() and not p.is_dir():
            raise HandlesError(f"{arg}: expected a folder, got {_show(text)}, which is a file")
        probe_at = p if p.exists() else next((q for q in p.absolute().parents if q.exists()), None)
        if probe_at is not None and not probe_at.is_dir():
            raise HandlesError(f"{arg}: expected a folder, got {_show(text)}, which lies under the file "
                               f"{_show(str(probe_at))}")
        try:
            tempfile.TemporaryDirectory(prefix=".handles-probe.", dir=probe_at).cleanup()
        except OSError as e:
            raise HandlesError(f"{arg}: expected a writable place, got {_show(text)} ({probe_at}: "
                               f"{e.strerror or e})") from None
    except OSError as e:  # a name too long, a loop of links
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


# ---------------------------------------------------------------------- SIGTERM
class SigtermGuard:
    """SIGTERM raising ``KeyboardInterrupt("SIGTERM")`` (see :func:`terminate_as_interrupt`);
    ``received`` tells afterwards whether it came (a library may re-raise a bare
    ``KeyboardInterrupt`` in its place: Ray's ``ray.wait`` does)."""

    def __init__(self, active: bool) -> None:
        self.active = active
        self.received = False

    def _handler(self, signum, frame):
        self.received = True
        raise KeyboardInterrupt("SIGTERM")

    def install(self) -> None:
        """Install the handler (again, after a library such as ``ray.init`` replaced it)."""
        if self.active:
            signal.signal(signal.SIGTERM, self._handler)


@contextlib.contextmanager
def terminate_as_interrupt(*, force: bool = False) -> Iterator[SigtermGuard]:
    """While the body runs, SIGTERM raises ``KeyboardInterrupt("SIGTERM")`` as Ctrl-C does, so that
    the body's cleanup runs (a kill from a job scheduler, ``timeout``, ``docker stop``).

    Only in the main thread (elsewhere a no-op), and without ``force`` only where SIGTERM still
    has its default action (or is handled by an enclosing guard): a handler someone else installed
    (Ray's in its workers, a web server's) is left alone. The previous handler is restored
    afterwards. Yields the :class:`SigtermGuard`.
    """
    main = threading.current_thread() is threading.main_thread()
    old = signal.getsignal(signal.SIGTERM) if main else None
    ours = isinstance(getattr(old, "__self__", None), SigtermGuard)
    guard = SigtermGuard(main and (force or ours or old in (signal.SIG_DFL, None)))
    guard.install()
    try:
        yield guard
    finally:
        if guard.active:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if old is None else old)


# ---------------------------------------------------------------------- staged folders
# ``.<name>.<host>-<pid>.<random>.tmp`` (a staging folder) and ``...old`` (a folder being replaced):
# the owner is known, so the next run can remove what a killed one left
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_SIDE = re.compile(r"([0-9a-f]{8})-([0-9]+)\.[0-9a-f]{12}\.(tmp|old)")
_NAME_KEEP = 200  # characters of the target's name kept in its side folders' names (255 at most in all)


def _side_path(path: Path, kind: str) -> Path:
    return path.parent / f".{path.name[:_NAME_KEEP]}.{_HOST}-{os.getpid()}.{uuid.uuid4().hex[:12]}.{kind}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def remove_stale_staging(path: str | Path) -> list[Path]:
    """Remove the staging folders next to ``path`` that a run on this machine left when it was
    killed (its process is gone); returns them. A folder moved aside by a swap that was cut short
    is removed only when ``path`` is back in place (otherwise it is the user's only copy)."""
    path = Path(os.path.abspath(Path(path).expanduser()))
    prefix = f".{path.name[:_NAME_KEEP]}."
    removed: list[Path] = []
    with contextlib.suppress(OSError):
        for entry in path.parent.iterdir():
            m = _SIDE.fullmatch(entry.name[len(prefix):]) if entry.name.startswith(prefix) else None
            if m is None or m.group(1) != _HOST or _alive(int(m.group(2))):
                continue
            if m.group(3) == "old" and not path.exists():
                continue
            _remove(entry)
            removed.append(entry)
    return removed


def _make_staging(path: Path) -> Path:
    """A new empty folder beside ``path``, with the mode a plain ``mkdir`` gives under the umask
    (``tempfile.mkdtemp`` would give 0700: a group sharing the output could not read it)."""
    for _ in range(3):
        staging = _side_path(path, "tmp")
        try:
            os.mkdir(staging, 0o777)
            return staging
        except FileExistsError:
            continue
    raise FileExistsError(f"{path}: could not create a staging folder beside it")


def _swap_in(staging: Path, path: Path) -> Path | None:
    """Rename ``staging`` to ``path``; an existing ``path`` is moved aside first (returned, to be
    deleted) and put back if the rename fails."""
    try:
        if not (path.exists() or path.is_symlink()):
            staging.rename(path)
            return None
        old = _side_path(path, "old")  # same file system: a rename
        path.rename(old)
        try:
            staging.rename(path)
        except BaseException:
            old.rename(path)
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return old


@contextlib.contextmanager
def atomic_output_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh staging folder; on success it replaces ``path`` whole.

    The staging folder lives next to ``path`` (same file system, so the swap is two renames).
    If the body raises, the staging folder is removed and ``path`` is left exactly as it was
    (not created if it did not exist), so a failed command never leaves a half-written output.
    SIGTERM is handled like Ctrl-C meanwhile (:func:`terminate_as_interrupt`), and staging folders
    that a killed run left beside ``path`` are removed first (:func:`remove_stale_staging`).
    The folder gets the mode a plain ``mkdir`` would give. An existing ``path`` (a folder, or a
    link to one) is replaced, never merged into: it is moved aside, the staging folder is renamed
    into its place, and only then is the old one deleted (if the swap fails the old one is put
    back). Callers check first with :func:`check_output_dir` whether replacing is allowed.
    """
    path = Path(os.path.abspath(Path(path).expanduser()))
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        raise HandlesError(f"{path}: expected a folder to write, got a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(path)
    with terminate_as_interrupt():
        staging = _make_staging(path)
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        old = _swap_in(staging, path)
    if old is not None:
        _remove(old)
