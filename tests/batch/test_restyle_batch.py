"""The batch keys ``restyle`` and ``restyle_words`` (issue 39): validated like the other keys
(a bad line is a one-line error naming the key, the other lines still run), passed to ``handles
edit`` as ``--restyle`` / ``--restyle-words``, and a restyled job records the prompt its
generation used.

Which bugs this catches: a restyle key refused as unknown, or accepted when empty, without its
object's words in the prompt, or as words alone; the key dropped on the way to ``handles edit``;
a restyle that makes jobs on the same image invert it again (it changes the generation only).
"""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from diffusion_handles.batch.jobs import parse_jobs

TWO = "a box and a ball on a floor"


def _line(jid: str, **kw) -> str:
    return json.dumps({"id": jid, "image": "a.png", "prompt": TWO, "mask": "m.png", **kw})


def test_restyle_keys_are_validated_like_the_others(tmp_path):
    lines = [
        _line("ok", restyle="a red striped sphere", restyle_words="a box", translate=[0.1, 0, 0]),
        _line("same-image", translate=[0.2, 0, 0]),
        json.dumps({"id": "one", "image": "a.png", "prompt": "a box on a floor", "mask": "m.png", "restyle": "-a dash"}),
        _line("empty", restyle="  "),
        _line("number", restyle=5),
        _line("alone", restyle_words="a box"),
        _line("absent", restyle="a red ball", restyle_words="a cup"),
        _line("several", restyle="a red ball"),  # two objects named, no words
        _line("empty-words", restyle="a red ball", restyle_words=""),
    ]
    f = tmp_path / "jobs.jsonl"
    f.write_text("\n".join(lines))
    jobs, bad = parse_jobs(f)
    assert [j.id for j in jobs] == ["ok", "same-image", "one"]
    errors = {b.id: b.error for b in bad}
    assert errors["empty"].startswith("line 4: restyle: expected a non-empty text")
    assert errors["number"].startswith("line 5: restyle: expected a non-empty text")
    assert errors["alone"].startswith("line 6: restyle_words: expected restyle with it")
    assert errors["absent"].startswith("line 7: restyle_words: expected words that occur in the prompt")
    assert errors["several"].startswith("line 8: restyle: ") and "pass restyle_words" in errors["several"]
    assert errors["empty-words"].startswith("line 9: restyle_words: expected a non-empty text")
    assert all("\n" not in e for e in errors.values())
    ok, same, one = jobs
    argv = ok.edit_argv("OUT/ok", None)
    assert "--restyle=a red striped sphere" in argv and "--restyle-words=a box" in argv
    assert "--restyle=-a dash" in one.edit_argv("OUT/one", None)  # a text starting with '-' stays the value
    assert not any(a.startswith("--restyle") for a in same.edit_argv("OUT/same", None))
    assert ok.inversion_group() == same.inversion_group()  # one shared inversion


def test_a_restyled_job_runs_through_handles_edit(tmp_path):
    from diffusion_handles.batch.execute import run_job
    from diffusion_handles.cli.batch import run_edit
    from diffusion_handles.diffusion.random_models import (
        build_backbone_components,
        save_model_folder,
        tiny_configs,
    )

    s = 16
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((s, s, 3)) * 255).astype(np.uint8)).save(tmp_path / "image.png")
    depth = np.full((s, s), 3.0, np.float32)
    depth[4:12, 4:12] = 2.0
    np.save(tmp_path / "depth.npy", depth)
    mask = np.zeros((s, s), np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    model = save_model_folder(build_backbone_components(tiny_configs(), seed=0), tmp_path / "model")
    (tmp_path / "jobs.jsonl").write_text(json.dumps({
        "id": "red", "image": "image.png", "prompt": TWO, "mask": "mask.png", "depth": "depth.npy",
        "model": str(model), "steps": 2, "preset": "fast", "translate": [0.1, 0, 0],
        "restyle": "a red striped sphere", "restyle_words": "a box"}))
    (job,), bad = parse_jobs(tmp_path / "jobs.jsonl")
    assert not bad
    rec = run_job(job.spec, str(tmp_path / "out"), None, run_edit)
    assert rec["status"] == "ok", rec
    assert rec["generation_prompt"] == "a red striped sphere and a ball on a floor"
    summary = json.loads((tmp_path / "out" / "red" / "summary.json").read_text())["inputs"]
    assert summary["restyle"] == "a red striped sphere" and summary["restyle_words"] == "a box"
    assert summary["generation_prompt"] == rec["generation_prompt"]
