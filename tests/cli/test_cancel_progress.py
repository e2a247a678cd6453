"""Ctrl-C stops a command within a step and writes nothing; progress names each stage with its
own step, the time elapsed and left; every summary.json carries the edit's cost.

Which bugs this catches: an interrupted ``handles edit`` leaving a half-written (or any) output
folder, a traceback or a zero exit status; progress counting all stages together ("step 3 of
150"); a summary without UNet forward-equivalents or seconds per stage.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

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
LINE = re.compile(r"^handles (edit|remove|animate): (.+?) (\d+)/(\d+), [\d.]+ s elapsed(, about .+ left)?$")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((S, S, 3)) * 255).astype(np.uint8)).save(d / "image.png")
    depth = np.full((S, S), 3.0, np.float32)
    depth[4:12, 4:12] = 2.0
    np.save(d / "depth.npy", depth)
    mask = np.zeros((S, S), np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(d / "mask.png")
    model = save_model_folder(build_backbone_components(tiny_configs(), seed=0), d / "model")
    return {"image": str(d / "image.png"), "depth": str(d / "depth.npy"), "mask": str(d / "mask.png"),
            "model": str(model)}


def _edit(inputs, out, *extra) -> list[str]:
    return ["edit", inputs["image"], "--prompt", "a box", "--depth", inputs["depth"], "--mask", inputs["mask"],
            "--model", inputs["model"], "--translate", "0.1", "0", "0", "--out", str(out), *extra]


def _default_sigint() -> None:
    """A child of a non-interactive shell's background job inherits SIGINT ignored, and Python then
    keeps it ignored; give the command under test the default disposition a terminal gives it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_during_edit_exits_130_and_writes_nothing(inputs, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # 100 steps: the run lasts far longer than the wait for its first progress line
    proc = subprocess.Popen([sys.executable, "-m", "diffusion_handles", *_edit(inputs, out, "--steps", "100")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_default_sigint)
    lines = []
    try:
        for line in proc.stderr:  # wait until it is sampling: a progress line of the inversion
            lines.append(line.rstrip("\n"))
            if LINE.match(lines[-1]):
                break
        assert proc.poll() is None, lines
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        rest = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = [*lines, *rest.strip().splitlines()]
    assert proc.returncode == 130, err
    last = err[-1]
    assert last.startswith("handles edit: interrupted during inversion "), err
    assert "nothing written" in last and "not created" in last, last
    assert not any("Traceback" in x for x in err), err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no staging folder left beside it either


def test_a_cancelled_run_exits_130_with_one_line(inputs, tmp_path, capsys, monkeypatch):
    """The library's ``Cancelled`` (raised from a step's callback) ends a command as Ctrl-C does."""
    from diffusion_handles.errors import Cancelled
    from diffusion_handles.progress import Progress

    step = Progress.step

    def cancel_in_null_text(self, key, i, total, prefix=""):
        step(self, key, i, total, prefix)
        if key == "null_text" and i == 1:
            raise Cancelled("cancelled during null-text 2/3")

    monkeypatch.setattr(Progress, "step", cancel_in_null_text)
    out = tmp_path / "out"
    code = main(_edit(inputs, out, "--steps", "3"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130
    assert err[-1].startswith("handles edit: interrupted during null-text 2/3"), err
    assert not out.exists()


@pytest.mark.parametrize("command", ["remove", "animate"])
def test_ctrl_c_during_remove_or_animate_exits_130_and_writes_nothing(inputs, tmp_path, capsys, monkeypatch, command):
    """Ctrl-C arriving in the middle of a guided generation (KeyboardInterrupt raised in a step)."""
    from diffusion_handles.progress import Progress

    step = Progress.step

    def interrupt(self, key, i, total, prefix=""):
        step(self, key, i, total, prefix)
        if key in ("removal", "guided_generation") and i == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Progress, "step", interrupt)
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([{}, {"translate": [0.1, 0, 0]}]))
    out = tmp_path / "out"
    common = [inputs["image"], "--depth", inputs["depth"], "--mask", inputs["mask"], "--model", inputs["model"],
              "--steps", "3", "--out", str(out)]
    argv = (["remove", *common, "--prompt", "a wall"] if command == "remove" else
            ["animate", *common, "--prompt", "a box", "--keyframes", str(keys), "--frames", "2"])
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    stage = "removal" if command == "remove" else "frame 1/2: guided generation"
    assert err[-1].startswith(f"handles {command}: interrupted during {stage} 2/3"), err
    assert "nothing written" in err[-1] and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.json"]


def test_progress_lines_name_each_stage_with_its_own_steps(inputs, tmp_path, capsys):
    assert main(_edit(inputs, tmp_path / "out", "--steps", "3")) == 0
    err = capsys.readouterr().err.splitlines()
    seen = [(m.group(2), int(m.group(3)), int(m.group(4))) for m in map(LINE.match, err) if m]
    stages = [s for s, _, _ in seen]
    assert stages[0] == "inversion" and "null-text" in stages and stages[-1] == "guided generation", err
    for s in ("inversion", "null-text", "guided generation"):
        steps = [(i, n) for name, i, n in seen if name == s]
        assert steps[0] == (1, 3) and steps[-1] == (3, 3), (s, steps)  # its own count, not all stages together
    assert all("left" in line for line in err if LINE.match(line))  # the first step is measured already
    assert main(_edit(inputs, tmp_path / "quiet", "--steps", "3", "--quiet")) == 0
    assert not [line for line in capsys.readouterr().err.splitlines() if LINE.match(line)]


def _fwd_eq(evals: dict) -> int:
    return sum(v["forward"] + 2 * v["backward"] for v in evals.values())


def test_edit_summary_carries_forward_equivalents_and_seconds_per_stage(inputs, tmp_path):
    out = tmp_path / "out"
    assert main(_edit(inputs, out, "--steps", "4", "--quiet")) == 0
    s = json.loads((out / "summary.json").read_text())
    cost = s["cost"]
    fwd = cost["fwd_eq"]
    assert fwd["edit"] == _fwd_eq(s["unet_evals"]["edit"])
    n, until, k = 4, 3, 3  # guide round(38/50 * 4) = 3 steps, 3 gradient steps (forward + backward) each
    assert fwd["edit"] == 2 * n + k * until * 3
    assert fwd["inversion"] == _fwd_eq(s["unet_evals"]["inversion"]) > 0
    assert fwd["total"] == fwd["inversion"] + fwd["edit"]
    secs = cost["seconds"]
    assert set(secs["edit_stages"]) >= {"prepare", "geometry", "targets", "sample", "finish"}
    assert {"ddim_inversion", "null_text"} <= set(secs["inversion_stages"])
    assert secs["edit"] == pytest.approx(sum(secs["edit_stages"].values()))
    assert all(v >= 0 for v in [*secs["edit_stages"].values(), *secs["inversion_stages"].values()])


def test_remove_summary_carries_its_cost(inputs, tmp_path):
    out = tmp_path / "out"
    argv = ["remove", inputs["image"], "--prompt", "a wall", "--depth", inputs["depth"], "--mask", inputs["mask"],
            "--model", inputs["model"], "--steps", "3", "--inversion", "ddim", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["cost"]["fwd_eq"]["edit"] == _fwd_eq(s["unet_evals"]["remove"]) > 0
    assert s["cost"]["fwd_eq"]["inversion"] == _fwd_eq(s["unet_evals"]["inversion"]) > 0


def test_animate_states_its_estimate_before_the_frames_and_counts_their_cost(inputs, tmp_path, capsys):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([{}, {"translate": [0.1, 0, 0]}]))
    out = tmp_path / "anim"
    argv = ["animate", inputs["image"], "--prompt", "a box", "--depth", inputs["depth"], "--mask", inputs["mask"],
            "--model", inputs["model"], "--steps", "2", "--preset", "fast", "--keyframes", str(keys),
            "--frames", "3", "--out", str(out)]
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    first_frame = next(i for i, x in enumerate(err) if x.startswith("handles animate: frame 1/3: guided generation"))
    estimate = [i for i, x in enumerate(err) if re.match(r"handles animate: 3 frames of 2 steps, about .+ \(estimated", x)]
    assert estimate and estimate[0] < first_frame, err
    assert any(x.startswith("handles animate: frame 1 took ") for x in err), err
    s = json.loads((out / "summary.json").read_text())
    assert len(s["frames"]) == 3 and all(f["fwd_eq"] > 0 and "sample" in f["seconds_by_stage"] for f in s["frames"])
    assert s["cost"]["fwd_eq"]["edit"] == sum(f["fwd_eq"] for f in s["frames"])


def test_progress_estimates_from_measured_steps_and_stops_when_cancelled():
    import threading

    from diffusion_handles.errors import Cancelled
    from diffusion_handles.progress import Progress, Stage

    clock = iter(float(t) for t in range(100))
    events = []
    stop = threading.Event()
    prog = Progress([Stage("ddim_inversion", 2, 1.0), Stage("null_text", 2, 3.0), Stage("guided_generation", 2, 2.0)],
                    report=events.append, cancel=stop, clock=lambda: next(clock))
    prog({"stage": "ddim_inversion", "step": 0, "total": 2})  # 1 s for 1 forward-equivalent
    ev = prog.event
    assert (ev.stage, ev.step, ev.steps, ev.done, ev.total) == ("inversion", 1, 2, 1, 6)
    assert ev.eta_s == pytest.approx(1 + 2 * 3 + 2 * 2)  # the rest estimated from 1 s per forward-equivalent
    prog({"stage": "ddim_inversion", "step": 1, "total": 2})
    prog({"stage": "null_text", "step": 0, "total": 2})
    assert prog.event.stage == "null-text" and prog.event.step == 1 and prog.event.done == 3
    stop.set()
    with pytest.raises(Cancelled, match="cancelled during null-text 2/2"):
        prog({"stage": "null_text", "step": 1, "total": 2})
    assert [e.stage for e in events] == ["inversion", "inversion", "null-text", "null-text"]


def test_progress_skips_a_cached_inversion_and_counts_frames():
    from diffusion_handles.diffusion.config import GuidanceConfig, InversionConfig
    from diffusion_handles.progress import Progress, plan_for

    plan = plan_for(InversionConfig(num_steps=50), GuidanceConfig())
    assert [s.key for s in plan] == ["ddim_inversion", "null_text", "guided_generation"]
    assert plan[-1].weight * 50 == pytest.approx(442)  # docs/method.md's count for the default
    fast = plan_for(InversionConfig(num_steps=20, method="negative-prompt"), GuidanceConfig(grad_steps=1))
    assert fast[-1].weight * 20 == pytest.approx(65)
    prog = Progress(plan_for(InversionConfig(num_steps=2), GuidanceConfig(), edits=2, frames=True))
    cb = [prog.callback("guided_generation", f"frame {i}/2") for i in (1, 2)]
    cb[0]({"step": 0, "total": 2})
    assert prog.event.stage == "frame 1/2: guided generation" and prog.total == 4  # the inversion was cached
    cb[0]({"step": 1, "total": 2})
    cb[1]({"step": 0, "total": 2})
    assert prog.event.stage == "frame 2/2: guided generation" and prog.done == 3


def test_cancellable_wraps_a_facade_callback():
    import threading

    from diffusion_handles.errors import Cancelled, HandlesError
    from diffusion_handles.progress import cancellable, forward_equivalents

    seen, stop = [], threading.Event()
    cb = cancellable(seen.append, stop)
    cb({"stage": "null_text", "step": 0, "total": 5})
    stop.set()
    with pytest.raises(Cancelled, match="null-text 2/5") as e:
        cb({"stage": "null_text", "step": 1, "total": 5})
    assert isinstance(e.value, HandlesError) and len(seen) == 2
    assert cancellable(None, None) is None
    with pytest.raises(Cancelled):
        cancellable(None, lambda: True)({"step": 0, "total": 1})
    assert forward_equivalents({"edit": {"forward": 214, "backward": 114, "calls": 214}}) == 442


def test_a_cancel_flag_stops_the_facade_within_one_step(inputs):
    """A cancel flag stops the facade itself within one step of the guided generation."""
    import threading

    import torch

    from diffusion_handles.diffusion.config import InversionConfig
    from diffusion_handles.errors import Cancelled
    from diffusion_handles.geometry import HandleEdit
    from diffusion_handles.pipeline import DiffusionHandles
    from diffusion_handles.progress import Progress

    dh = DiffusionHandles.from_pretrained(inputs["model"]).set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, S, S)
    depth = torch.full((1, 1, S, S), 3.0)
    depth[..., 4:12, 4:12] = 2.0
    mask = (depth < 2.5).float()
    inv = dh.invert(image, "a box", depth, mask, inversion=InversionConfig(num_steps=6, method="ddim"))
    stop = threading.Event()
    steps = []

    def report(ev):
        steps.append(ev.step)
        if ev.step == 2:
            stop.set()

    prog = Progress(report=report, cancel=stop)
    with pytest.raises(Cancelled, match="guided generation 2/6"):
        dh.edit(inv, HandleEdit(translate=(0.1, 0, 0)), callback=prog.callback("guided_generation"))
    assert steps == [1, 2]  # stopped at the end of the step that saw the flag


def test_progress_on_a_terminal_rewrites_one_line_per_stage():
    import argparse
    import io

    from diffusion_handles.cli.common import ProgressPrinter, interrupted_line
    from diffusion_handles.progress import Progress, Stage

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    printer = ProgressPrinter("edit", stream=out)
    prog = Progress([Stage("ddim_inversion", 2), Stage("guided_generation", 3)], report=printer)
    prog.printer = printer
    for i in range(2):
        prog({"stage": "ddim_inversion", "step": i, "total": 2})
    prog({"stage": "guided_generation", "step": 0, "total": 3})
    args = argparse.Namespace(command="edit", progress=prog, out=None)
    line = interrupted_line(args)  # ends the line being rewritten first
    text = out.getvalue()
    lines = text.split("\n")
    assert len(lines) == 3 and lines[-1] == "", text  # one finished line per stage, nothing left open
    assert lines[0].count("\r") == 2 and lines[0].rsplit("\r", 1)[1].startswith("\x1b[Khandles edit: inversion 2/2, ")
    assert "guided generation 1/3" in lines[1]
    assert line.startswith("handles edit: interrupted during guided generation 1/3 after ") and "nothing written" in line
