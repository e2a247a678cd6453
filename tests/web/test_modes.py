"""Camera moves, object removal and several objects in one render, through the API on the tiny
model: previews, jobs with progress and results, and clear 422s for bad modes and object lists."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from .helpers import data_url_pixels as pixels
from .helpers import wait_job


def second_object(client, sid: str) -> dict:
    """Give the demo session a second object (a patch of the back wall) by uploading its mask;
    the box (mask 0) stays listed, the patch (mask 1) is selected."""
    info = client.get(f"/api/sessions/{sid}").json()
    m = np.zeros((info["height"], info["width"]), np.uint8)
    m[2:12, 40:56] = 255  # top right: the wall, away from the box
    buf = io.BytesIO()
    Image.fromarray(m).save(buf, format="PNG")
    r = client.post(f"/api/sessions/{sid}/mask", files={"mask": ("m.png", buf.getvalue(), "image/png")})
    assert r.status_code == 200, r.text
    return r.json()


def test_camera_preview_moves_the_whole_scene_without_a_mask(client):
    from diffusion_handles.web.scenes import demo_scene
    from diffusion_handles.web.sessions import make_session

    d = demo_scene(48, 64)
    s = client.app.state.sessions.add(make_session(d.image, d.depth, "a box", 55.0, "test", 512))  # no mask at all
    body = {"transform": {"translate": [0.3, 0, 0]}, "mode": "camera"}
    r = client.post(f"/api/sessions/{s.id}/preview", json=body)
    assert r.status_code == 200, r.text
    cam = r.json()
    assert cam["hole_pixels"] > 0  # a camera moved right uncovers a strip at the image's right edge
    px = pixels(cam["image"])
    magenta = (px[..., 0] > 200) & (px[..., 1] < 60) & (px[..., 2] > 200)
    assert magenta[:, -3:].mean() > 0.5 and magenta[:, :20].mean() < 0.05
    # the same request in object mode needs a selected object
    r = client.post(f"/api/sessions/{s.id}/preview", json={**body, "mode": "object"})
    assert r.status_code == 422 and r.json()["detail"].startswith("mask: no object is selected"), r.text


def test_camera_render_job(client, demo_session):
    sid = demo_session["id"]
    body = {"session_id": sid, "mode": "camera", "transform": {"translate": [0.2, 0, 0], "rotate_axis": [0, 1, 0],
                                                               "rotate_deg": -3}, "num_steps": 2}
    r = client.post("/api/jobs", json=body)
    assert r.status_code == 202, r.text
    st = wait_job(client, r.json()["id"])
    assert st["state"] == "done", st
    assert st["info"]["mode"] == "camera" and st["fraction"] == 1.0 and st["done"] == st["total"] == 3 * 2
    img = client.get(st["results"]["edited"])
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    # the camera's inversion (all-ones mask) is not the object's: an object render inverts again
    r = client.post("/api/jobs", json={**body, "mode": "object"})
    assert wait_job(client, r.json()["id"])["info"]["reused_inversion"] is False
    r = client.post("/api/jobs", json=body)
    assert wait_job(client, r.json()["id"])["info"]["reused_inversion"] is True


def test_remove_job_reuses_the_render_inversion(client, demo_session):
    sid = demo_session["id"]
    r = client.post("/api/jobs", json={"session_id": sid, "transform": {"translate": [0.3, 0, 0]}, "num_steps": 2})
    assert wait_job(client, r.json()["id"])["state"] == "done"
    r = client.post(f"/api/sessions/{sid}/remove", json={"num_steps": 2})
    assert r.status_code == 202, r.text
    st = wait_job(client, r.json()["id"])
    assert st["state"] == "done", st
    assert st["info"]["mode"] == "remove" and st["info"]["reused_inversion"] is True
    assert st["done"] == st["total"] == 2 and st["fraction"] == 1.0
    for name in ("edited", "input", "preview", "region", "edited_depth"):
        res = client.get(st["results"][name])
        assert res.status_code == 200 and res.headers["content-type"] == "image/png", name
    region = np.asarray(Image.open(io.BytesIO(client.get(st["results"]["region"]).content)))
    assert region.max() > 0


def test_remove_needs_a_selected_object_with_background(client):
    from diffusion_handles.web.scenes import demo_scene
    from diffusion_handles.web.sessions import make_session

    d = demo_scene(48, 64)
    s = client.app.state.sessions.add(make_session(d.image, d.depth, "", 55.0, "test", 512))
    r = client.post(f"/api/sessions/{s.id}/remove", json={})
    assert r.status_code == 422 and r.json()["detail"].startswith("mask: no object is selected"), r.text
    s.add_mask("everything", np.ones((48, 64), bool))
    r = client.post(f"/api/sessions/{s.id}/remove", json={})
    assert r.status_code == 422 and "background" in r.json()["detail"], r.text
    assert len(client.app.state.jobs) == 0


def test_two_objects_preview_and_one_render(client, demo_session):
    sid = demo_session["id"]
    info = second_object(client, sid)
    assert info["selected"] == 1
    patch_only = client.post(f"/api/sessions/{sid}/preview", json={"transform": {"translate": [0, 0.5, 0]}}).json()
    both_body = {"transform": {"translate": [0, 0.5, 0]}, "objects": [{"mask": 0, "transform": {"translate": [0.4, 0, 0]}}]}
    r = client.post(f"/api/sessions/{sid}/preview", json=both_body)
    assert r.status_code == 200, r.text
    both = r.json()
    assert both["hole_pixels"] > patch_only["hole_pixels"]  # the box moved too: its old place is a hole
    a, b = pixels(patch_only["image"]), pixels(both["image"])
    box_rows = slice(24, 48)
    assert (np.abs(a - b).sum(-1) > 30)[box_rows].mean() > 0.02

    r = client.post("/api/jobs", json={"session_id": sid, **both_body, "num_steps": 2})
    assert r.status_code == 202, r.text
    st = wait_job(client, r.json()["id"])
    assert st["state"] == "done", st
    assert st["info"]["mode"] == "object" and st["info"]["objects"] == 2
    assert client.get(st["results"]["edited"]).status_code == 200


@pytest.mark.parametrize(("body", "needle"), [
    ({"mode": "orbit"}, 'mode: expected "object" (move the selected object) or "camera" (move the camera) (got "orbit")'),
    ({"mode": 1}, "mode: expected"),
    ({"mode": None}, "mode: expected"),
    ({"mode": ["camera"]}, 'mode: expected "object"'),
    ({"mode": "camera", "transform": {"scale": 2}}, "transform.scale: expected 1 in camera mode"),
    ({"mode": "camera", "objects": [{"mask": 0, "transform": {}}]}, "objects: expected none in camera mode"),
    ({"objects": [{"mask": 0, "transform": {}}] * 2}, "objects[1].mask: expected each mask once, got mask 0 again"),
    ({"objects": [{"mask": -1, "transform": {}}]}, "objects.0.mask"),
    ({"objects": [{"mask": 0}]}, "objects.0.transform"),
    ({"objects": [{"mask": 0, "transform": {}, "x": 1}]}, "objects.0.x"),
    ({"objects": {"mask": 0}}, "objects:"),
    ({"objects": [{"mask": k, "transform": {}} for k in range(1, 17)]}, "objects: expected at most 15 other objects (16 with the selected one), 16 listed"),
])
def test_bad_modes_and_object_lists_are_clear_422s(client, demo_session, body, needle):
    body = {"transform": {}, **body}
    for path, extra in ((f"/api/sessions/{demo_session['id']}/preview", {}), ("/api/jobs", {"session_id": demo_session["id"]})):
        r = client.post(path, json={**body, **extra})
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert needle in detail and "\n" not in detail and "Traceback" not in detail, detail
    assert len(client.app.state.jobs) == 0


def test_object_lists_checked_against_the_session(client, demo_session):
    sid = demo_session["id"]
    cases = [([{"mask": 5, "transform": {}}], "objects[0].mask: expected a mask index in [0, 1), got 5"),
             ([{"mask": 0, "transform": {}}], "objects[0].mask: expected another object than the selected one")]
    for objects, needle in cases:
        for path, extra in ((f"/api/sessions/{sid}/preview", {}), ("/api/jobs", {"session_id": sid})):
            r = client.post(path, json={"transform": {}, "objects": objects, **extra})
            assert r.status_code == 422 and needle in r.json()["detail"], r.text
    assert len(client.app.state.jobs) == 0
    assert json.loads(client.get("/openapi.json").text)["components"]["schemas"]["ObjectEdit"]
