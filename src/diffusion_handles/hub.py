"""Loading pretrained models (perception models and the diffusion backbone): a local folder,
the local hub cache, or the hub.

Every model (depth estimator, detector, SAM, inpainter, depth-to-image backbone) is named by one string, a
Hugging Face hub id (``Intel/zoedepth-nyu-kitti``) or a local folder written by
``save_pretrained``. :func:`load_pretrained` resolves it in this order and never waits on a
network that is not there:

1. an existing folder: loaded from disk only;
2. the hub cache: tried first with ``local_files_only=True`` (no network at all);
3. the hub: only if offline mode is off (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` unset) and
   one quick TCP connection to the hub endpoint succeeds (:func:`hub_reachable`). Without this
   probe ``from_pretrained`` retries an unreachable hub for more than a minute.

When none works it raises :class:`~diffusion_handles.errors.HandlesError` with one line naming
the model id, the option that selects another model or a local folder, and the option that
bypasses the stage (e.g. ``--depth`` or ``--mask``). :func:`check_available` makes the same
decision without loading (and without importing transformers or diffusers), so that a command
refuses an unavailable model before its heavy imports.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from diffusion_handles.errors import HandlesError, first_line

T = TypeVar("T")

_TRUE = {"1", "on", "yes", "true"}
HUB_PROBE_TIMEOUT_S = 3.0  # one TCP connect to the hub endpoint, no retries


def is_offline() -> bool:
    """Whether the user asked for offline mode (read at call time, not at import)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return True
    return False


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_reachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One TCP connection to the hub endpoint's host, with a short timeout; no retries."""
    url = urlparse(hub_endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _load_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning "these weights are not here" (file missing, hub error, bad folder)."""
    errors: list[type[BaseException]] = [OSError]
    try:
        from huggingface_hub import errors as hf_errors

        for name in ("HfHubHTTPError", "LocalEntryNotFoundError", "EntryNotFoundError",
                     "RepositoryNotFoundError", "OfflineModeIsEnabled"):
            cls = getattr(hf_errors, name, None)
            if isinstance(cls, type):
                errors.append(cls)
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency of transformers
        pass
    return tuple(errors)


def looks_like_path(source: str) -> bool:
    """A string meant as a folder rather than a hub id (``./x``, ``/x``, ``~/x``, ``x/y/z``)."""
    return (source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1
            or Path(source).expanduser().exists())


def unavailable_message(model_id: str, *, what: str, option: str, bypass: str | None, reason: str) -> str:
    """The one-line message for weights that can be neither found locally nor downloaded."""
    msg = (f"{option}: {what} model {model_id!r} is not available ({reason}); "
           f"pass {option} with another hub id or a local folder saved by save_pretrained")
    if bypass:
        msg += f", or {bypass}"
    return msg


def load_pretrained(
    load: Callable[[str, bool], T],
    source: str,
    *,
    what: str,
    option: str,
    bypass: str | None = None,
) -> T:
    """Load a model with ``load(name_or_folder, local_files_only)`` from a folder, the cache or the hub.

    Args:
        load: calls the library's ``from_pretrained`` (model and its processor) with the given
            name/folder and ``local_files_only`` flag.
        source: hub id or local folder.
        what: what the model is, for the message ("depth", "text detection", "SAM", ...).
        option: the command-line option selecting this model, e.g. ``--depth-model``.
        bypass: how to skip the stage, e.g. ``"give --depth FILE to skip depth estimation"``.

    Raises:
        HandlesError: one line, at once (no retry loop), when the weights cannot be had.
    """
    if not isinstance(source, str) or not source.strip():
        raise HandlesError(f"{option}: expected a hub id or a local folder, got {source!r}")
    load_errors = _load_errors()
    folder = Path(source).expanduser()
    if folder.is_dir():
        try:
            return load(str(folder), True)
        except load_errors + (ValueError, KeyError) as e:
            raise HandlesError(f"{option}: could not load a {what} model from folder {folder}: {first_line(e)}") from None
    if looks_like_path(source):
        raise HandlesError(f"{option}: expected a hub id or an existing folder, got {source!r} (no such folder)")
    try:
        return load(source, True)  # the local cache only: never touches the network
    except load_errors:
        pass  # not cached (or only partly)
    except (ValueError, KeyError) as e:  # cached, but not a model of the expected kind
        raise HandlesError(f"{option}: could not load a {what} model {source!r} from the local cache: "
                           f"{first_line(e)}") from None
    _check_hub(source, what=what, option=option, bypass=bypass)
    try:
        return load(source, False)
    except load_errors as e:
        raise HandlesError(unavailable_message(source, what=what, option=option, bypass=bypass,
                                               reason=f"download failed: {first_line(e)}")) from None


def _check_hub(source: str, *, what: str, option: str, bypass: str | None) -> None:
    """Raise the one-line message when the hub may not be used (offline mode) or cannot be reached."""
    if is_offline():
        raise HandlesError(unavailable_message(source, what=what, option=option, bypass=bypass,
                                               reason="HF_HUB_OFFLINE is set and it is not in the local cache"))
    if not hub_reachable():
        host = urlparse(hub_endpoint()).hostname
        raise HandlesError(unavailable_message(source, what=what, option=option, bypass=bypass,
                                               reason=f"not in the local cache and {host} is unreachable"))


def hub_cache_dir() -> Path:
    """The hub cache the libraries read (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
    ``~/.cache/huggingface/hub``), as ``huggingface_hub`` resolved it."""
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE).expanduser()
    except (ImportError, AttributeError):  # pragma: no cover - huggingface_hub is a dependency of transformers
        home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
        return Path(os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")).expanduser()


def in_local_cache(repo_id: str) -> bool:
    """Whether the hub cache holds a snapshot of the model ``repo_id`` with files in it (a look at
    the folder: no network, no import of transformers or diffusers)."""
    snapshots = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    try:
        return any(s.is_dir() and any(s.iterdir()) for s in snapshots.iterdir())
    except OSError:
        return False


def check_available(source: str, *, what: str, option: str, bypass: str | None = None) -> None:
    """What :func:`load_pretrained` will decide about ``source``, decided before anything heavy is
    imported: an existing folder, a hub id in the local cache, or a hub id the hub can serve
    (offline mode off, the endpoint reachable) passes; otherwise :func:`load_pretrained`'s
    one-line :class:`~diffusion_handles.errors.HandlesError`. A folder's contents and a partly
    cached model are left to the loader."""
    if not isinstance(source, str) or not source.strip():
        raise HandlesError(f"{option}: expected a hub id or a local folder, got {source!r}")
    if Path(source).expanduser().is_dir():
        return
    if looks_like_path(source):
        raise HandlesError(f"{option}: expected a hub id or an existing folder, got {source!r} (no such folder)")
    if not in_local_cache(source):
        _check_hub(source, what=what, option=option, bypass=bypass)


def needs_extra(option: str, extra: str) -> str:
    """The one-line message for a feature whose optional dependencies are not installed."""
    return f"{option}: needs the {extra!r} extra: pip install 'diffusion-handles[{extra}]'"
