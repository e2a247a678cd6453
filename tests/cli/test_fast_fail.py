"""An unavailable hub model is refused before transformers/diffusers are imported, and the
closing lines state the whole command's wall time and every file written.

Which bug this catches: ``handles edit`` without ``--model`` on a machine without hub access
importing torch, diffusers and transformers (and running the perception models) before saying in
one line that the default hub model is not available.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusion_handles.cli import main
from diffusion_handles.diffusion.random_models import (
    build_backbone_components,
    save_model_folder,
    tiny_configs,
)

S = 16
DEFAULT_MODEL = "stabilityai/stable-diffusion-2-depth"
# Runs the command in a fresh interpreter and reports which heavy libraries were imported when
# the error left main(): the order of the check, not its time.
PROBE = """
import json, sys
from diffusion_handles.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "imported": sorted(m for m in ("diffusers", "transformers") if m in sys.modules)}))
"""


def write_inputs(d: Path) -> Path:
    """A 16 px image, its depth, a mask and a two-keyframe track in folder ``d``."""
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((S, S, 3)) * 255).astype(np.uint8)).save(d / "image.png")
    np.save(d / "depth.npy", np.full((S, S), 3.0, np.float32))
    mask = np.zeros((S, S), np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(d / "mask.png")
    (d / "keys.json").write_text(json.dumps([{}, {"translate": [0.2, 0, 0]}]))
    return d


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("fastfail"))


def _offline_env(tmp_path: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty-cache"), OMP_NUM_THREADS="1")
    env.pop("HF_HOME", None)
    return env


def _commands(d: Path, out: Path) -> dict[str, list[str]]:
    common = [str(d / "image.png"), "--prompt", "a box", "--out", str(out)]
    return {
        "edit": ["edit", *common, "--depth", str(d / "depth.npy"), "--mask", str(d / "mask.png"),
                 "--translate", "0.1", "0", "0"],
        # no --depth and a click: the depth estimator and SAM (transformers) load before the backbone
        "edit-perception": ["edit", *common, "--click", "8,8", "--translate", "0.1", "0", "0"],
        "remove": ["remove", *common, "--depth", str(d / "depth.npy"), "--mask", str(d / "mask.png")],
        "animate": ["animate", *common, "--depth", str(d / "depth.npy"), "--mask", str(d / "mask.png"),
                    "--keyframes", str(d / "keys.json")],
    }


@pytest.mark.parametrize("case", ["edit", "remove", "animate", "edit-perception"])
def test_unavailable_hub_model_fails_in_one_line_before_the_heavy_imports(inputs, tmp_path, case):
    out = tmp_path / "out"
    argv = _commands(inputs, out)[case]
    command, option, model = argv[0], "--model", DEFAULT_MODEL
    if case == "edit-perception":
        from diffusion_handles.perception.depth import DEFAULT_DEPTH_MODEL

        option, model = "--depth-model", DEFAULT_DEPTH_MODEL
    r = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True,
                       env=_offline_env(tmp_path), timeout=120)
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["code"] == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"handles {command}: error: {option}: "), lines[0]
    assert f"model {model!r} is not available (HF_HUB_OFFLINE is set" in lines[0], lines[0]
    assert ("--model tinyworld" if option == "--model" else "--depth FILE") in lines[0]
    assert result["imported"] == [], f"imported before the hub check: {result['imported']}"
    assert not out.exists()


def test_check_available_decides_as_the_loader(tmp_path, monkeypatch):
    from diffusion_handles import hub
    from diffusion_handles.errors import HandlesError

    monkeypatch.setattr(hub, "hub_cache_dir", lambda: tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HandlesError, match="HF_HUB_OFFLINE is set"):
        hub.check_available("org/model", what="depth-to-image", option="--model")
    snapshot = tmp_path / "models--org--model" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    with pytest.raises(HandlesError):  # an empty snapshot is no cached model
        hub.check_available("org/model", what="depth-to-image", option="--model")
    (snapshot / "model_index.json").write_text("{}")
    hub.check_available("org/model", what="depth-to-image", option="--model")  # cached: no network asked
    hub.check_available(str(tmp_path), what="depth-to-image", option="--model")  # a folder
    with pytest.raises(HandlesError, match="no such folder"):
        hub.check_available("./no/such/folder", what="depth-to-image", option="--model")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout_s=0: False)
    with pytest.raises(HandlesError, match="unreachable"):
        hub.check_available("org/other", what="depth-to-image", option="--model")
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout_s=0: True)
    hub.check_available("org/other", what="depth-to-image", option="--model")  # downloadable


def test_edit_and_remove_closing_lines_state_the_wall_time_and_every_file(inputs, tmp_path, capsys):
    model = tmp_path / "model"
    save_model_folder(build_backbone_components(tiny_configs(), seed=0), model)
    base = [str(inputs / "image.png"), "--prompt", "a box", "--depth", str(inputs / "depth.npy"), "--mask",
            str(inputs / "mask.png"), "--model", str(model), "--steps", "2", "--preset", "fast", "--quiet"]
    for command, extra in (("edit", ["--translate", "0.1", "0", "0"]), ("remove", [])):
        out = tmp_path / command
        capsys.readouterr()
        assert main([command, *base, *extra, "--out", str(out)]) == 0
        line = capsys.readouterr().out.strip().splitlines()[-1]
        assert f"written to {out} in " in line and " s (" in line, line
        listed = set(line.rsplit("): ", 1)[1].split(", "))
        assert listed == {p.name for p in out.iterdir()}, line


def test_closing_line_time_counts_from_the_command_start(inputs, tmp_path, capsys, monkeypatch):
    """main() records the start before building the parser; the closing line counts from it."""
    import time

    from diffusion_handles.cli import common

    model = tmp_path / "model"
    save_model_folder(build_backbone_components(tiny_configs(), seed=0), model)
    real = common.started
    monkeypatch.setattr(common, "started", lambda args: real(args) - 100.0)  # as if 100 s went before
    out = tmp_path / "out"
    t0 = time.perf_counter()
    assert main(["remove", str(inputs / "image.png"), "--prompt", "a box", "--depth", str(inputs / "depth.npy"),
                 "--mask", str(inputs / "mask.png"), "--model", str(model), "--steps", "2", "--preset", "fast",
                 "--quiet", "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    stated = float(line.split(" in ", 1)[1].split(" s ", 1)[0])
    assert 100.0 <= stated <= 100.0 + time.perf_counter() - t0 + 0.1, line


def test_demo_lists_every_file_it_writes_and_uses_one_thread(tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = tmp_path / "demo"
        assert main(["demo", "--steps", "2", "--quiet", "--out", str(out)]) == 0
        assert torch.get_num_threads() == 1  # the miniature model: one thread, as handles edit chooses
    finally:
        torch.set_num_threads(before)
    printed = capsys.readouterr().out.splitlines()
    wrote = {Path(line.split("wrote ", 1)[1]).name for line in printed if line.startswith("wrote ")}
    assert wrote == {p.name for p in out.iterdir()}
    assert printed[-1].startswith("done in ")
