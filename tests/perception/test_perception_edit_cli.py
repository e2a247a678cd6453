"""``handles edit`` with the perception stages: --object/--click instead of --mask, no --depth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffusion_handles.cli import main
from diffusion_handles.io import save_image


@pytest.fixture()
def scene(tmp_path):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 32, 32, generator=g)
    image[..., 8:24, 8:24] = torch.tensor([0.9, 0.2, 0.1])[:, None, None]
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    depth = torch.full((32, 32), 3.0)
    depth[8:24, 8:24] = 2.0
    save_image(tmp_path / "photo.png", image)
    save_image(tmp_path / "mask.png", mask)
    np.save(tmp_path / "depth.npy", depth.numpy())
    return tmp_path


@pytest.fixture()
def tiny_sd2_depth(tmp_path_factory):
    from diffusion_handles.diffusion.random_models import (
        build_backbone_components,
        save_model_folder,
        tiny_configs,
    )

    return str(save_model_folder(build_backbone_components(tiny_configs(), seed=0), tmp_path_factory.mktemp("sd2d")))


def test_edit_object_offline_fails_fast_before_the_diffusion_model(monkeypatch, scene, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_backbone(*a, **k):
        raise AssertionError("the diffusion model was loaded before the perception models were checked")

    monkeypatch.setattr("diffusion_handles.pipeline.DiffusionHandles.from_pretrained", no_backbone)
    out = scene / "out"
    base = ["edit", str(scene / "photo.png"), "--prompt", "a mug on a table", "--translate", "0.2", "0", "0",
            "--out", str(out)]
    assert main(base + ["--object", "a mug"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--depth-model" in err and "Intel/zoedepth-nyu-kitti" in err and "--depth FILE" in err
    assert main(base + ["--object", "a mug", "--depth", str(scene / "depth.npy")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--detector-model" in err and "--mask FILE" in err
    assert main(base + ["--click", "12,12", "--depth", str(scene / "depth.npy")]) == 2
    assert "--sam-model" in capsys.readouterr().err
    assert main(base + ["--click", "12,12", "--mask", str(scene / "mask.png")]) == 2
    assert "expected exactly one, got --mask, --click" in capsys.readouterr().err
    assert not out.exists()


def test_edit_estimates_depth_and_background_then_runs(tiny_models, tiny_sd2_depth, scene, capsys):
    out = scene / "out"
    rc = main(["edit", str(scene / "photo.png"), "--prompt", "a red box", "--mask", str(scene / "mask.png"),
               "--depth-model", tiny_models["zoedepth"], "--inpaint-model", "opencv-telea",
               "--translate", "0.1", "0", "0", "--model", tiny_sd2_depth, "--steps", "2", "--inversion", "ddim",
               "--grad-steps", "0", "--quiet", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    s = json.loads((out / "summary.json").read_text())
    p = s["perception"]
    assert p["depth"] == {"source": "estimated", "model": tiny_models["zoedepth"], "kind": "metric-depth"}
    assert p["background"]["method"] == "inpaint+estimate+align" and p["mask"]["source"] == "file"
    assert np.load(out / "depth.npy").shape == (32, 32) and np.load(out / "background_depth.npy").min() > 0
    assert (out / "edited.png").exists() and (out / "mask.png").exists()
