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

The second test renders the same edit from the web app (the scene's files uploaded as the page
does, a render job of the draft preset over the JSON API the page uses) and checks the same on its result: a
web path that dropped the effects stage, the finish or the photo's own mask would fail it.
"""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from diffusion_handles.cli import main

LUMA = np.array([0.2126, 0.7152, 0.0722])


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.float64) / 255.0


def _luma(x: np.ndarray) -> np.ndarray:
    return x @ LUMA


def _truth(tmp_path):
    """The scene, the truth with the cylinder moved and the clean plate, rendered by the CLI."""
    scene, truth, clean = (tmp_path / n for n in ("scene", "truth", "clean"))
    assert main(["world", "render", "--seed", "4242", "--out", str(scene)]) == 0
    assert main(["world", "render", "--seed", "4242", "--object", "0", "--translate", "0.6", "0", "0.3",
                 "--out", str(truth)]) == 0
    empty = json.loads((scene / "scene.json").read_text())
    empty["objects"] = []
    (tmp_path / "empty.json").write_text(json.dumps(empty))
    assert main(["world", "render", "--scene", str(tmp_path / "empty.json"), "--out", str(clean)]) == 0
    return scene, truth, clean


def _check_shadows(scene, truth, clean, edited: np.ndarray) -> None:
    inp, gt, plate = (_luma(_rgb(p / "rgb.png")) for p in (scene, truth, clean))
    ours = _luma(edited)
    m_src = np.asarray(Image.open(scene / "mask_0.png").convert("L")) > 127
    m_gt = np.asarray(Image.open(truth / "mask_0.png").convert("L")) > 127
    old = (inp < plate - 0.05) & (np.abs(gt - plate) < 0.03) & ~m_src & ~m_gt
    new = (gt < plate - 0.05) & ~m_gt
    assert old.sum() > 100 and new.sum() > 100  # the scene has both
    for region, baseline in ((old, inp), (new, plate)):
        want, before, got = (float(x[region].mean()) for x in (gt, baseline, ours))
        assert abs(got - want) < 0.5 * abs(before - want), (int(region.sum()), want, before, got)


def test_the_old_shadow_is_lifted_and_the_new_one_cast(tmp_path):
    scene, truth, clean = _truth(tmp_path)
    out = tmp_path / "edit"
    caption = (scene / "caption.txt").read_text().strip()
    assert main(["edit", str(scene / "rgb.png"), "--depth", str(scene / "depth.npy"), "--mask",
                 str(scene / "mask_0.png"), "--prompt", caption, "--model", "tinyworld", "--steps", "8",
                 "--inversion", "ddim", "--translate", "0.6", "0", "0.3", "--threads", "1", "--quiet",
                 "--out", str(out)]) == 0
    _check_shadows(scene, truth, clean, _rgb(out / "edited.png"))


def test_the_web_apps_render_moves_the_shadow_too(tmp_path):
    from fastapi.testclient import TestClient

    from diffusion_handles.web.app import WebConfig, create_app
    from diffusion_handles.web.render import RenderService

    reason = RenderService("tinyworld").available()
    if reason:
        pytest.skip(reason)
    scene, truth, clean = _truth(tmp_path)
    config = WebConfig(model="tinyworld", scene_size=(128, 128), results_dir=tmp_path / "web",
                       allowed_hosts=("testserver",))
    with TestClient(create_app(config)) as client:
        files = {"image": ("rgb.png", (scene / "rgb.png").read_bytes(), "image/png"),
                 "depth": ("depth.npy", (scene / "depth.npy").read_bytes(), "application/octet-stream"),
                 "mask": ("mask_0.png", (scene / "mask_0.png").read_bytes(), "image/png")}
        fov = json.loads((scene / "scene.json").read_text())["fov_deg"]
        r = client.post("/api/sessions", files=files,
                        data={"prompt": (scene / "caption.txt").read_text().strip(), "fov_deg": str(fov)})
        assert r.status_code == 201, r.text
        session = r.json()
        assert session["selected"] == 0 and (session["width"], session["height"]) == (128, 128)
        r = client.post("/api/jobs", json={"session_id": session["id"], "transform": {"translate": [0.6, 0, 0.3]},
                                           "preset": "draft"})
        assert r.status_code == 202, r.text
        jid, deadline, st = r.json()["id"], time.time() + 300, {}
        while time.time() < deadline and st.get("state") not in ("done", "error", "cancelled"):
            time.sleep(0.2)
            st = client.get(f"/api/jobs/{jid}").json()
        assert st.get("state") == "done", st
        png = client.get(st["results"]["edited"]).content
    edited = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float64) / 255.0
    _check_shadows(scene, truth, clean, edited)
