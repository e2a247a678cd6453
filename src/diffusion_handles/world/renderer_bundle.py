"""A trimmed copy of Mitsuba 3 and Dr.Jit that renders TinyWorld scenes, for a machine that has
neither and cannot download them.

The lent GPU machine has 16 cores, which render TinyWorld about 8x faster than this project's
2-core CPU, but one call carries at most 64 MiB with the working tree, and the two wheels weigh
67 MB (Mitsuba's holds 15 variants and 100 plugin libraries). A TinyWorld render needs one
variant (``scalar_rgb``) and the plugins of :data:`MITSUBA_PLUGINS`, so the bundle keeps:

* Dr.Jit's package without its headers, CMake files and type stubs;
* Mitsuba's Python files, shared libraries, ``mitsuba_ext``, ``mitsuba_alias`` and the
  ``scalar_rgb`` extension, and of its plugins only :data:`MITSUBA_PLUGINS`;

and drops the LLVM/CUDA and spectral variants, the other plugins, ``data/`` (spectral tables,
fonts), headers, stubs and documentation. Put the folder it unpacks to first on ``PYTHONPATH``.

    pip download mitsuba==3.9.1 drjit==1.5.0 --no-deps --only-binary=:all: --python-version 3.12 -d W
    handles world bundle-renderer --wheels W --out runs/wheels/mitsuba-scalar-rgb-cp312.tar.xz
"""

from __future__ import annotations

import fnmatch
import io
import json
import tarfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from diffusion_handles.errors import HandlesError

# The plugins a TinyWorld render loads: the types in ``render.scene_dict`` plus the two Mitsuba
# adds itself (``srgb`` for RGB values, ``merge`` for the scene's shape groups); measured from
# /proc/self/maps after renders of every shape and pattern (tests/world/test_renderer_bundle.py
# renders through the bundle).
MITSUBA_PLUGINS = ("bitmap", "box", "constant", "cube", "cylinder", "diffuse", "directional", "disk",
                   "hdrfilm", "independent", "merge", "path", "perspective", "rectangle", "sphere", "srgb")

_DROP = ("*.pyi", "*/stubs.pat", "*/py.typed", "*/include/*", "*/cmake/*", "*/pkgconfig/*", "mitsuba/data/*",
         "*/__pycache__/*", "mitsuba/mitsuba_stubs/*")


def keep(name: str) -> bool:
    """Whether the bundle keeps the package file ``name`` (a path like ``mitsuba/plugins/path.so``)."""
    parts = name.split("/")
    if parts[0] not in ("mitsuba", "drjit") or name.endswith("/") or any(fnmatch.fnmatch(name, p) for p in _DROP):
        return False
    if parts[0] == "drjit":
        return True
    if len(parts) == 3 and parts[1] == "plugins":
        return parts[2].rsplit(".", 1)[0] in MITSUBA_PLUGINS
    if len(parts) == 2 and parts[1].endswith(".so") and ".cpython-" in parts[1]:  # a Python extension
        return parts[1].split(".", 1)[0] in ("mitsuba_ext", "mitsuba_alias", "scalar_rgb")
    return True


def _from_wheels(wheels: Iterable[Path]) -> Iterator[tuple[str, bytes, int]]:
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            for info in z.infolist():
                if keep(info.filename):
                    yield info.filename, z.read(info), (info.external_attr >> 16) & 0o777 or 0o644


def _from_installed() -> Iterator[tuple[str, bytes, int]]:
    import drjit
    import mitsuba

    for pkg in (drjit, mitsuba):
        root = Path(pkg.__file__).parent
        for f in sorted(root.rglob("*")):
            name = f"{root.name}/{f.relative_to(root).as_posix()}"
            if f.is_file() and keep(name):
                yield name, f.read_bytes(), f.stat().st_mode & 0o777


def build_bundle(out: str | Path, wheels: Iterable[str | Path] | None = None) -> dict:
    """Write the bundle to ``out``: a ``.tar.xz`` file, or else a folder (both unpack to the
    ``mitsuba/`` and ``drjit/`` packages). From the ``wheels`` (a Mitsuba and a Dr.Jit wheel, any
    Python version) or, when None, from the Mitsuba and Dr.Jit installed here.

    Returns ``{"files", "bytes", "plugins", "source"}`` (``bytes``: uncompressed).
    """
    out = Path(out)
    if out.exists():
        raise HandlesError(f"out: expected a new path, got {out} (it exists; nothing was overwritten)")
    wheels = [Path(w) for w in wheels] if wheels is not None else None
    if wheels is not None:
        names = sorted(w.name.split("-")[0] for w in wheels)
        if names != ["drjit", "mitsuba"]:
            raise HandlesError(f"wheels: expected one mitsuba and one drjit wheel, got {[w.name for w in wheels]}")
    files = list(_from_wheels(wheels) if wheels is not None else _from_installed())
    plugins = sorted(n.rsplit("/", 1)[1].rsplit(".", 1)[0] for n, _, _ in files if n.startswith("mitsuba/plugins/"))
    missing = sorted(set(MITSUBA_PLUGINS) - set(plugins))
    if missing:
        raise HandlesError(f"wheels: expected Mitsuba's plugins {', '.join(missing)}, got a package without them")
    info = {"files": len(files), "bytes": sum(len(b) for _, b, _ in files), "plugins": plugins,
            "source": [w.name for w in wheels] if wheels is not None else "installed"}
    tmp = out.with_name(out.name + ".partial")
    if out.name.endswith(".tar.xz"):
        with tarfile.open(tmp, "w:xz", preset=6) as tar:
            for name, data, mode in files:
                ti = tarfile.TarInfo(name)
                ti.size, ti.mode = len(data), mode
                tar.addfile(ti, io.BytesIO(data))
            manifest = json.dumps(info, indent=1).encode()
            ti = tarfile.TarInfo("BUNDLE.json")
            ti.size = len(manifest)
            tar.addfile(ti, io.BytesIO(manifest))
    else:
        for name, data, mode in files:
            f = tmp / name
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(data)
            f.chmod(mode)
        (tmp / "BUNDLE.json").write_text(json.dumps(info, indent=1))
    tmp.replace(out)
    return info
