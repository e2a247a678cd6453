"""Writing an output folder all at once: either every file lands, or none does."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_output_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh staging folder; on success move its files into ``path``.

    The staging folder lives next to ``path`` (same file system, so moves are renames). If the
    body raises, the staging folder is removed and ``path`` is left exactly as it was (not
    created if it did not exist), so a failed command never leaves a half-written output.
    """
    path = Path(path)
    parent = path.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not path.exists():
        staging.rename(path)
        return
    try:
        for item in staging.iterdir():
            target = path / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            item.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
