"""``handles edit --restyle`` (issue 39): the object's new look reaches the library and the
summary records it with the prompt the generation used; bad restyle flags are refused in one line
naming the flag, exit 2, before any work and with nothing written.

Which bugs this catches: a ``--restyle`` parsed but never passed to ``DiffusionHandles.edit``
(or passed without its ``--restyle-words``), a summary without the generation's prompt, a restyle
that fails only after the model loaded (or with a traceback, or naming the library's parameter
instead of the flag), a restyle accepted with ``--camera`` or ``--edits``.
"""

from __future__ import annotations

import json

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
PROMPT = "a box and a ball on a floor"  # two objects: --restyle needs --restyle-words


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("restyle")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((S, S, 3)) * 255).astype(np.uint8)).save(d / "image.png")
    depth = np.full((S, S), 3.0, np.float32)
    depth[4:12, 4:12] = 2.0
    np.save(d / "depth.npy", depth)
    mask = np.zeros((S, S), np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(d / "mask.png")
    (d / "edits.json").write_text(json.dumps([{"mask": "mask.png", "translate": [0.1, 0, 0]}]))
    model = save_model_folder(build_backbone_components(tiny_configs(), seed=0), d / "model")
    return {"dir": str(d), "image": str(d / "image.png"), "depth": str(d / "depth.npy"), "mask": str(d / "mask.png"),
            "edits": str(d / "edits.json"), "model": str(model)}


def _args(inputs, out, *extra, prompt: str = PROMPT, mask: bool = True) -> list[str]:
    return ["edit", inputs["image"], "--prompt", prompt, "--depth", inputs["depth"],
            *(["--mask", inputs["mask"]] if mask else []), "--model", inputs["model"], "--steps", "2",
            "--preset", "fast", "--quiet", "--out", str(out), *extra]


def test_restyle_reaches_the_library_and_the_summary(inputs, tmp_path, monkeypatch, capsys):
    from diffusion_handles.pipeline import DiffusionHandles

    calls, real_edit = [], DiffusionHandles.edit

    def spy(self, inverted, transform, **kw):
        calls.append(kw)
        return real_edit(self, inverted, transform, **kw)

    monkeypatch.setattr(DiffusionHandles, "edit", spy)
    out = tmp_path / "out"
    code = main(_args(inputs, out, "--translate", "0.1", "0", "0", "--restyle", "a red striped sphere",
                      "--restyle-words", "a box"))
    printed = capsys.readouterr().out
    assert code == 0
    assert len(calls) == 1
    assert calls[0]["restyle"] == "a red striped sphere" and calls[0]["restyle_words"] == "a box"
    s = json.loads((out / "summary.json").read_text())["inputs"]
    assert s["prompt"] == PROMPT  # the inversion's
    assert s["restyle"] == "a red striped sphere" and s["restyle_words"] == "a box"
    assert s["generation_prompt"] == "a red striped sphere and a ball on a floor"  # EditOutput.prompt
    assert "a red striped sphere and a ball on a floor" in printed


def test_an_edit_without_restyle_passes_none_and_records_its_own_prompt(inputs, tmp_path, monkeypatch):
    from diffusion_handles.pipeline import DiffusionHandles

    calls, real_edit = [], DiffusionHandles.edit

    def spy(self, inverted, transform, **kw):
        calls.append(kw)
        return real_edit(self, inverted, transform, **kw)

    monkeypatch.setattr(DiffusionHandles, "edit", spy)
    out = tmp_path / "plain"
    assert main(_args(inputs, out, "--translate", "0.1", "0", "0")) == 0
    assert calls[0].get("restyle") is None and calls[0].get("restyle_words") is None
    s = json.loads((out / "summary.json").read_text())["inputs"]
    assert s["restyle"] is None and s["generation_prompt"] == PROMPT


@pytest.mark.parametrize("extra, prompt, mask, match", [
    (["--restyle", ""], PROMPT, True, "--restyle: expected the object's new description"),
    (["--restyle", "   "], PROMPT, True, "--restyle: expected the object's new description"),
    (["--restyle", "a red ball"], PROMPT, True, "pass --restyle-words"),  # two objects, no words
    (["--restyle", "a red ball", "--restyle-words", "a cup"], PROMPT, True,
     "--restyle-words: expected words that occur in the prompt"),
    (["--restyle", "a red ball", "--restyle-words", ""], PROMPT, True, "--restyle-words: expected words of the prompt"),
    (["--restyle-words", "a box"], PROMPT, True, "--restyle-words: expected --restyle with it"),
    (["--restyle", "a red ball", "--camera"], "a box on a floor", False, "--restyle: expected a one-object edit, got --camera"),
    (["--restyle", "a red ball", "--edits", "EDITS"], "a box on a floor", False,
     "--restyle: expected a one-object edit, got --edits"),
])
def test_bad_restyle_flags_are_one_line_exit_2_nothing_written(inputs, tmp_path, capsys, extra, prompt, mask, match):
    out = tmp_path / "out"
    extra = [inputs["edits"] if e == "EDITS" else e for e in extra]
    code = main(_args(inputs, out, *extra, prompt=prompt, mask=mask))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("handles edit: error: ") and match in err, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists()


def test_restyle_is_not_a_flag_of_remove(inputs, tmp_path, capsys):
    out = tmp_path / "removed"
    with pytest.raises(SystemExit) as exc:
        main(["remove", inputs["image"], "--prompt", "a floor", "--depth", inputs["depth"], "--mask", inputs["mask"],
              "--model", inputs["model"], "--restyle", "a red ball", "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "--restyle" in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists()
