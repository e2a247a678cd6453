"""Commands that need an optional extra (``batch``: ray, ``bench3d``: h5py, ``video``:
imageio-ffmpeg) say so in one line naming the extra, at once, when it is not installed.

A missing package is simulated by ``None`` in ``sys.modules`` (``import`` then raises
ImportError and ``importlib.util.find_spec`` returns None).

Which bug this catches: a default install without ray, h5py or imageio-ffmpeg failing with a
traceback, or after the work, instead of one line that says which extra to install.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from diffusion_handles.cli import main


def _one_line(capsys, command: str, extra: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"handles {command}: error: "), err[0]
    assert f"needs the '{extra}' extra: pip install 'diffusion-handles[{extra}]'" in err[0], err[0]
    return err[0]


def test_batch_without_ray_names_the_batch_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "a", "image": "x.png", "prompt": "p", "mask": "m.png"}) + "\n")
    out = tmp_path / "out"
    assert main(["batch", str(jobs), "--out", str(out)]) == 2
    line = _one_line(capsys, "batch", "batch")
    assert line == "handles batch: error: --ray: needs the 'batch' extra: pip install 'diffusion-handles[batch]'"
    assert not out.exists()


def test_bench_ray_without_ray_names_the_batch_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    out = tmp_path / "out"
    assert main(["bench", "--scenes", "1", "--size", "32", "--spp", "4", "--steps", "2", "--methods", "warp_only",
                 "--ray", "local", "--quiet", "--out", str(out)]) == 2
    assert "--ray: needs the 'batch' extra" in _one_line(capsys, "bench", "batch")


def test_ray_session_without_ray_names_the_batch_extra(monkeypatch):
    from diffusion_handles.bench.ray import ray_session
    from diffusion_handles.errors import HandlesError

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(HandlesError, match=r"--ray: needs the 'batch' extra"), ray_session("local"):
        pass


def test_3deditbench_without_h5py_names_the_bench3d_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    data = tmp_path / "data"
    data.mkdir()
    assert main(["bench", "--suite", "3deditbench", "--data", str(data), "--methods", "warp_only",
                 "--out", str(tmp_path / "out")]) == 2
    assert "--suite 3deditbench: needs the 'bench3d' extra" in _one_line(capsys, "bench", "bench3d")
    assert main(["world", "export-3deditbench", "--scenes", "1", "--out", str(tmp_path / "cases")]) == 2
    _one_line(capsys, "world", "bench3d")
    assert not (tmp_path / "cases").exists()


def test_read_case_without_h5py_names_the_bench3d_extra(tmp_path, monkeypatch):
    from diffusion_handles.bench.editbench3d.io import read_case
    from diffusion_handles.errors import HandlesError

    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(HandlesError, match=r"needs the 'bench3d' extra"):
        read_case(tmp_path / "x.hdf5")


def test_write_mp4_without_imageio_ffmpeg_names_the_video_extra(tmp_path, monkeypatch):
    from diffusion_handles.animation import mp4_available, write_mp4
    from diffusion_handles.errors import HandlesError

    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    assert not mp4_available()
    with pytest.raises(HandlesError, match=r"needs the 'video' extra"):
        write_mp4([np.zeros((4, 4, 3), np.uint8)], tmp_path / "a.mp4", 8)


def test_animate_without_imageio_ffmpeg_writes_the_gif_only_and_says_so(tmp_path, capsys, monkeypatch):
    from diffusion_handles.diffusion.random_models import (
        build_backbone_components,
        save_model_folder,
        tiny_configs,
    )

    from .test_fast_fail import write_inputs

    write_inputs(tmp_path)
    save_model_folder(build_backbone_components(tiny_configs(), seed=0), tmp_path / "model")
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    out = tmp_path / "anim"
    assert main(["animate", str(tmp_path / "image.png"), "--prompt", "a box", "--depth", str(tmp_path / "depth.npy"),
                 "--mask", str(tmp_path / "mask.png"), "--model", str(tmp_path / "model"), "--steps", "2",
                 "--preset", "fast", "--keyframes", str(tmp_path / "keys.json"), "--frames", "2", "--quiet",
                 "--out", str(out)]) == 0
    assert (out / "animation.gif").is_file() and not (out / "animation.mp4").exists()
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "animation.mp4" not in line.split("; no animation.mp4")[0], line
    assert line.endswith("; no animation.mp4 (MP4: needs the 'video' extra: pip install 'diffusion-handles[video]')")
