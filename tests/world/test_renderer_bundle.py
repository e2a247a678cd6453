"""The trimmed renderer for the GPU machine: which files it keeps, and that TinyWorld renders
through it exactly as through the full Mitsuba installation."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mitsuba")

from diffusion_handles.cli import main  # noqa: E402
from diffusion_handles.world.renderer_bundle import MITSUBA_PLUGINS, keep  # noqa: E402

SRC = Path(__file__).parents[2] / "src"


def test_keep_rules():
    ext = "cpython-312-x86_64-linux-gnu.so"
    assert keep("mitsuba/plugins/path.so") and keep("mitsuba/plugins/sphere.so")
    assert not keep("mitsuba/plugins/roughconductor.so") and not keep("mitsuba/plugins/volpath.so")
    assert keep(f"mitsuba/scalar_rgb.{ext}") and keep(f"mitsuba/mitsuba_ext.{ext}") and keep(f"mitsuba/mitsuba_alias.{ext}")
    for variant in ("llvm_ad_rgb", "cuda_ad_rgb", "scalar_spectral", "scalar_spectral_polarized"):
        assert not keep(f"mitsuba/{variant}.{ext}")
    assert keep("mitsuba/libmitsuba.so") and keep("mitsuba/libembree3.so") and keep("mitsuba/__init__.py")
    assert keep("mitsuba/python/util.py") and keep("drjit/libdrjit-core.so") and keep(f"drjit/_drjit_ext.{ext}")
    for dropped in ("mitsuba/__init__.pyi", "mitsuba/include/mitsuba/mitsuba.h", "mitsuba/data/srgb.coeff",
                    "drjit/include/drjit/array.h", "drjit/cmake/drjit-config.cmake", "mitsuba-3.9.1.dist-info/RECORD",
                    "share/doc/mitsuba/README.md", "mitsuba/plugins/"):
        assert not keep(dropped), dropped


def _render_hashes(pythonpath: str | None, seeds) -> dict:
    code = ("import hashlib, json, sys, mitsuba\n"
            "from diffusion_handles.world.dataset import render_seed\n"
            "out = {'mitsuba': mitsuba.__file__}\n"
            f"for s in {list(seeds)}:\n"
            "    r = render_seed((s, 32, 4))\n"
            "    out[s] = [hashlib.md5(r[k].tobytes()).hexdigest() for k in ('rgb', 'depth', 'ids')]\n"
            "print(json.dumps(out))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (pythonpath, str(SRC)) if p)}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_tinyworld_renders_through_the_bundle_exactly(tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["world", "bundle-renderer", "--installed", "--out", str(out)]) == 0
    assert "plugins bitmap, box" in capsys.readouterr().out
    info = json.loads((out / "BUNDLE.json").read_text())
    assert set(MITSUBA_PLUGINS) == set(info["plugins"])
    assert len(list((out / "mitsuba" / "plugins").iterdir())) == len(MITSUBA_PLUGINS)
    assert not list(out.glob("mitsuba/llvm_*")) and not (out / "mitsuba" / "data").exists()
    # seeds with every shape (sphere, cube, cylinder with its caps) and pattern between them
    from diffusion_handles.world.scene import sample_scene

    seeds = [s for s in range(40) if len({o.shape for o in sample_scene(s).objects}) >= 2][:4]
    shapes = {o.shape for s in seeds for o in sample_scene(s).objects}
    assert shapes == {"sphere", "cube", "cylinder"}, shapes
    full = _render_hashes(None, seeds)
    trimmed = _render_hashes(str(out), seeds)
    assert trimmed.pop("mitsuba").startswith(str(out)) and not full.pop("mitsuba").startswith(str(out))
    assert trimmed == full


def test_bundle_refuses_an_existing_out_and_a_wrong_wheels_folder(tmp_path, capsys):
    existing = tmp_path / "b.tar.xz"
    existing.write_text("mine")
    assert main(["world", "bundle-renderer", "--installed", "--out", str(existing)]) == 2
    assert "--out: expected a new path" in capsys.readouterr().err and existing.read_text() == "mine"
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "mitsuba-3.9.1-cp312-cp312-manylinux_2_28_x86_64.whl").write_bytes(b"")
    assert main(["world", "bundle-renderer", "--wheels", str(tmp_path / "w"), "--out", str(tmp_path / "c.tar.xz")]) == 2
    err = capsys.readouterr().err
    assert "--wheels: expected a folder with one mitsuba-*.whl and one drjit-*.whl" in err and "Traceback" not in err
    assert not (tmp_path / "c.tar.xz").exists()


def test_bundle_from_wheels_keeps_only_what_renders(tmp_path):
    """The wheel path on two small synthetic wheels with the real layout (no download in tests)."""
    import zipfile

    from diffusion_handles.world.renderer_bundle import build_bundle

    ext = "cpython-312-x86_64-linux-gnu.so"
    w = {"mitsuba": tmp_path / "mitsuba-3.9.1-cp312-cp312-manylinux_2_28_x86_64.whl",
         "drjit": tmp_path / "drjit-1.5.0-cp312-cp312-manylinux_2_28_x86_64.whl"}
    with zipfile.ZipFile(w["mitsuba"], "w") as z:
        for name in ["mitsuba/__init__.py", f"mitsuba/scalar_rgb.{ext}", f"mitsuba/llvm_ad_rgb.{ext}",
                     "mitsuba/plugins/volpath.so", "mitsuba/data/ior.txt"] + [f"mitsuba/plugins/{p}.so" for p in MITSUBA_PLUGINS]:
            z.writestr(name, name)
    with zipfile.ZipFile(w["drjit"], "w") as z:
        for name in ("drjit/__init__.py", "drjit/__init__.pyi", f"drjit/_drjit_ext.{ext}"):
            z.writestr(name, name)
    out = tmp_path / "b.tar.xz"
    info = build_bundle(out, w.values())
    import tarfile

    with tarfile.open(out) as tar:
        names = set(tar.getnames())
    assert f"mitsuba/scalar_rgb.{ext}" in names and f"drjit/_drjit_ext.{ext}" in names and "BUNDLE.json" in names
    assert not {f"mitsuba/llvm_ad_rgb.{ext}", "mitsuba/plugins/volpath.so", "mitsuba/data/ior.txt",
                "drjit/__init__.pyi"} & names
    assert info["files"] == 2 + len(MITSUBA_PLUGINS) + 2
    # a wheel without a needed plugin is refused, and nothing is written
    with zipfile.ZipFile(w["mitsuba"], "w") as z:
        z.writestr("mitsuba/__init__.py", "")
    with pytest.raises(ValueError, match="wheels: expected Mitsuba's plugins"):
        build_bundle(tmp_path / "c.tar.xz", w.values())
    assert not (tmp_path / "c.tar.xz").exists() and np.all([not p.name.endswith(".partial") for p in tmp_path.iterdir()])


def test_gpu_render_script_renders_chunks_into_one_pack(tmp_path):
    """``world/gpu_render.sh``, the device-side renderer, on the CPU through a bundle folder."""
    import shutil

    from diffusion_handles.world.dataset import load_dataset
    from diffusion_handles.world.renderer_bundle import build_bundle

    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    build_bundle(tmp_path / "bundle")
    script = SRC / "diffusion_handles" / "world" / "gpu_render.sh"
    out = tmp_path / "fresh.npz"
    env = {**os.environ, "CHUNK": "2", "WORKERS": "1", "MAX_SCENES": "3", "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(script), str(tmp_path / "bundle"), "900000", "240", str(out), "--size", "32",
                          "--spp", "2"], cwd=SRC.parent, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "rendered seeds 900000:900002" in res.stdout and "rendered seeds 900002:900003" in res.stdout
    data = load_dataset(out)
    assert list(data["seed"]) == [900000, 900001, 900002] and data["rgb"].shape == (3, 32, 32, 3)
    # no time at all: nothing finished, said so, nothing written
    res = subprocess.run(["bash", str(script), str(tmp_path / "bundle"), "900000", "0", str(tmp_path / "none.npz")],
                         cwd=SRC.parent, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "no chunk finished" in res.stderr and not (tmp_path / "none.npz").exists()
