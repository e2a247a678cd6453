"""The 3DEditBench runner's click path: one SAM selects the object and scores adherence."""

import json

import pytest

pytest.importorskip("mitsuba")
pytest.importorskip("h5py")

from diffusion_handles.cli import main  # noqa: E402
from diffusion_handles.perception.segment import SamSegmenter  # noqa: E402


def test_click_path_loads_sam_once_and_scores_with_it(tiny_models, tmp_path, monkeypatch):
    cases = tmp_path / "cases"
    assert main(["world", "export-3deditbench", "--scenes", "1", "--size", "48", "--spp", "4", "--out", str(cases)]) == 0
    loads = []
    real = SamSegmenter.load.__func__

    def counted(cls, *args, **kwargs):
        loads.append(args)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(SamSegmenter, "load", classmethod(counted))
    out = tmp_path / "run"
    main(["bench", "--suite", "3deditbench", "--data", str(cases), "--model", "tinyworld", "--steps", "2",
          "--inversion", "ddim", "--methods", "warp_only", "--sam-model", tiny_models["sam"], "--quiet",
          "--out", str(out)])
    assert len(loads) == 1  # the runner's; adherence scoring reuses it
    rec = json.loads(next((out / "edits").glob("*.json")).read_text())
    assert rec["segmenter"] == "sam"
