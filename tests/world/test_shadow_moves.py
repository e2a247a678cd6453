"""The shadow moves with the object: the scene of issue 33 on the shipped TinyWorld model.

``handles world render --seed 4242`` is an orange cylinder lit from the right, its shadow on the
grass to its left; ``--object 0 --translate 0.6 0 0.3`` renders the truth with it moved, and the
scene without the cylinder is the clean plate. The edit, through ``handles edit`` (8 DDIM steps,
enough for the geometry and the finish), must lift the old shadow (where the input is darker
than the clean plate and the truth is not) and cast the new one (where the truth is darker than
the clean plate; much of it falls where the cylinder was): on both, the result's mean luminance
must be much closer to the truth's than the input's (old) or the clean plate's (new, no shadow
drawn) is. Which bugs this catches: the effects stage removed or its light reversed, the lift
or the cast inverted, a finish that keeps the input (or the generation) there.
"""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from diffusion_handles.cli import main

LUMA = np.array([0.2126, 0.7152, 0.0722])


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.float64) / 255.0


def _luma(x: np.ndarray) -> np.ndarray:
    return x @ LUMA


def test_the_old_shadow_is_lifted_and_the_new_one_cast(tmp_path):
    scene, truth, clean, out = (tmp_path / n for n in ("scene", "truth", "clean", "edit"))
    assert main(["world", "render", "--seed", "4242", "--out", str(scene)]) == 0
    assert main(["world", "render", "--seed", "4242", "--object", "0", "--translate", "0.6", "0", "0.3",
                 "--out", str(truth)]) == 0
    empty = json.loads((scene / "scene.json").read_text())
    empty["objects"] = []
    (tmp_path / "empty.json").write_text(json.dumps(empty))
    assert main(["world", "render", "--scene", str(tmp_path / "empty.json"), "--out", str(clean)]) == 0
    caption = (scene / "caption.txt").read_text().strip()
    assert main(["edit", str(scene / "rgb.png"), "--depth", str(scene / "depth.npy"), "--mask",
                 str(scene / "mask_0.png"), "--prompt", caption, "--model", "tinyworld", "--steps", "8",
                 "--inversion", "ddim", "--translate", "0.6", "0", "0.3", "--threads", "1", "--quiet",
                 "--out", str(out)]) == 0
    inp, gt, plate, ours = (_luma(_rgb(p / n)) for p, n in ((scene, "rgb.png"), (truth, "rgb.png"),
                                                            (clean, "rgb.png"), (out, "edited.png")))
    m_src = np.asarray(Image.open(scene / "mask_0.png").convert("L")) > 127
    m_gt = np.asarray(Image.open(truth / "mask_0.png").convert("L")) > 127
    old = (inp < plate - 0.05) & (np.abs(gt - plate) < 0.03) & ~m_src & ~m_gt
    new = (gt < plate - 0.05) & ~m_gt
    assert old.sum() > 100 and new.sum() > 100  # the scene has both
    for region, baseline in ((old, inp), (new, plate)):
        want, before, got = (float(x[region].mean()) for x in (gt, baseline, ours))
        assert abs(got - want) < 0.5 * abs(before - want), (int(region.sum()), want, before, got)
