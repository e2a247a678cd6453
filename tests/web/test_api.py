"""JSON API of the web app (FastAPI TestClient): sessions, preview, renders, and bad requests."""

from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from diffusion_handles.web.scenes import demo_scene

from .helpers import data_url_pixels as decode_data_url
from .helpers import png_bytes, wait_job


def preview(client, sid, transform, **kw):
    return client.post(f"/api/sessions/{sid}/preview", json={"transform": transform, **kw})


# ---------------------------------------------------------------------------- documents


def test_openapi_describes_the_api(client):
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    for p in ["/api/info", "/api/sessions", "/api/sessions/scene", "/api/sessions/{sid}/preview",
              "/api/jobs", "/api/jobs/{jid}", "/api/jobs/{jid}/cancel", "/api/jobs/{jid}/events",
              "/api/jobs/{jid}/results/{name}"]:
        assert p in paths, p
    schemas = doc["components"]["schemas"]
    assert {"Transform", "PreviewRequest", "RenderRequest", "JobStatus", "SessionInfo", "Error"} <= set(schemas)
    assert schemas["Transform"]["additionalProperties"] is False
    assert "422" in paths["/api/jobs"]["post"]["responses"]


def test_page_and_vendored_three_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "three" not in page.text.lower().split("<script")[0]
    js = client.get("/static/vendor/three.bundle.min.js")
    assert js.status_code == 200 and "TransformControls" in js.text
    assert "MIT" in client.get("/static/vendor/LICENSE-three.txt").text
    assert "cdn" not in client.get("/static/app.js").text.lower()


def test_page_loads_nothing_from_outside(client):
    """Offline: no script, style, font or image from another host in the page or its code, and
    no CDN-backed API docs pages (/openapi.json itself is served)."""
    import re

    from diffusion_handles.web.app import STATIC

    files = sorted(f for f in STATIC.iterdir() if f.suffix in (".html", ".js", ".css"))  # not vendor/
    assert {"index.html", "app.js", "live.js", "splat.js"} <= {f.name for f in files}
    for f in files:
        text = f.read_text()
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text, re.I), f.name
        assert not re.search(r"""(import|url)\s*\(?\s*["']?(https?:)?//""", text, re.I), f.name
    for url in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert client.get(url).status_code == 404, url
    assert client.get("/openapi.json").status_code == 200


def test_info_lists_the_builtin_scene_and_modes(client):
    info = client.get("/api/info").json()
    assert info["scenes"][0]["id"] == "demo"
    assert {"mask", "upload"} <= set(info["selection_modes"])
    assert info["render_unavailable"] is None


# ---------------------------------------------------------------------------- preview


def test_preview_moves_the_object(client, demo_session):
    sid = demo_session["id"]
    assert demo_session["selected"] == 0 and demo_session["masks"][0]["pixels"] > 0
    same = preview(client, sid, {})
    moved = preview(client, sid, {"translate": [0.4, 0, 0]})
    assert same.status_code == moved.status_code == 200
    a, b = decode_data_url(same.json()["image"]), decode_data_url(moved.json()["image"])
    h, w = demo_session["height"], demo_session["width"]
    assert a.shape == b.shape == (h, w, 3)
    original = demo_scene(h, w).image.astype(int)
    assert np.abs(a - original).max() <= 1  # identity edit reproduces the image
    assert (np.abs(a - b).sum(-1) > 30).mean() > 0.02  # the box moved
    rot = preview(client, sid, {"rotate_axis": [0, 1, 0], "rotate_deg": 30, "scale": 1.2}, with_depth=True)
    assert rot.status_code == 200 and rot.json()["depth"].startswith("data:image/png")


def test_impossible_edit_is_a_clear_422(client, demo_session):
    r = preview(client, demo_session["id"], {"translate": [0, 0, -20]})
    assert r.status_code == 422
    assert "behind the camera" in r.json()["detail"]
    r = preview(client, demo_session["id"], {"translate": [50, 0, 0]})
    assert r.status_code == 422 and "transform" in r.json()["detail"]


@pytest.mark.parametrize(
    ("transform", "field"),
    [
        ({"translate": [1, 2]}, "transform.translate"),
        ({"translate": [0, "a", 0]}, "transform.translate.1"),
        ({"scale": 0}, "transform.scale"),
        ({"scale": "big"}, "transform.scale"),
        ({"rotate_deg": 10, "rotate_axis": [0, 0, 0]}, "rotate_axis"),
        ({"rotate_deg": None}, "transform.rotate_deg"),
        ({"shear": 1}, "transform.shear"),
        ("move it left", "transform"),
    ],
)
def test_malformed_transform_is_422_naming_the_field(client, demo_session, transform, field):
    r = preview(client, demo_session["id"], transform)
    assert r.status_code == 422
    assert field in r.json()["detail"], r.json()["detail"]


def test_non_finite_numbers_are_refused(client, demo_session):
    body = '{"transform": {"translate": [NaN, 0, 0]}}'
    r = client.post(f"/api/sessions/{demo_session['id']}/preview", content=body,
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "transform.translate.0" in r.json()["detail"]
    r = client.post(f"/api/sessions/{demo_session['id']}/preview", content="{not json",
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"]


def test_burst_of_concurrent_previews(client, demo_session):
    sid = demo_session["id"]

    def one(i):
        return preview(client, sid, {"translate": [0.01 * i, 0, 0]})

    with ThreadPoolExecutor(max_workers=32) as ex:
        answers = list(ex.map(one, range(96)))
    assert [r.status_code for r in answers] == [200] * 96  # queued one at a time, none dropped
    first = decode_data_url(answers[0].json()["image"])
    last = decode_data_url(answers[-1].json()["image"])
    assert (np.abs(first - last).sum(-1) > 30).mean() > 0.01  # each answer is its own transform
    assert client.get("/api/info").status_code == 200


def test_preview_queue_is_bounded(web_config):
    """Deterministic: the preview thread is held by a gate, so the queue's state does not
    depend on how fast previews run or how requests overlap in time."""
    import dataclasses
    import threading

    from fastapi.testclient import TestClient

    from diffusion_handles.web.app import create_app

    cfg = dataclasses.replace(web_config, max_waiting_previews=2)
    app = create_app(cfg)
    previews = app.state.previews
    with TestClient(app) as c, ThreadPoolExecutor(max_workers=1) as ex:
        sid = c.post("/api/sessions/scene", json={"scene": "demo"}).json()["id"]
        gate = threading.Event()
        held = previews.submit(gate.wait, 60)  # occupies the one preview thread: 1 of 2 places
        try:
            queued = ex.submit(preview, c, sid, {"rotate_deg": 10})  # waits behind it: 2 of 2
            deadline = time.monotonic() + 30
            while previews.waiting < 2:  # a state to reach, not a time to wait
                assert time.monotonic() < deadline and not queued.done(), "the second preview never queued"
                time.sleep(0.01)
            refused = preview(c, sid, {"rotate_deg": 20})
            assert refused.status_code == 429, refused.text
            assert "2 previews are already waiting" in refused.json()["detail"]
        finally:
            gate.set()
        assert held.result(timeout=60) is True
        assert queued.result(timeout=60).status_code == 200  # the queued one was served, not dropped
        assert preview(c, sid, {}).status_code == 200  # and places free up again
        assert previews.waiting == 0


def test_render_queue_is_bounded(tmp_path):
    """The job queue refuses (QueueFull, HTTP 429) beyond ``max_waiting``; the worker is held."""
    import threading

    from diffusion_handles.web.jobs import JobQueue, QueueFull

    q = JobQueue(tmp_path, max_waiting=2)
    gate, running = threading.Event(), threading.Event()

    def hold(job):
        running.set()
        gate.wait(60)
        return {}

    try:
        first = q.submit(hold)
        assert running.wait(60)  # the worker runs it: no longer waiting
        waiting = [q.submit(lambda job: {}) for _ in range(2)]
        with pytest.raises(QueueFull, match="2 jobs are already waiting"):
            q.submit(lambda job: {})
        assert [q.position(j) for j in waiting] == [1, 2]
    finally:
        gate.set()
    deadline = time.monotonic() + 60
    while not all(j.state == "done" for j in [first, *waiting]):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    q.close()


def test_finished_and_failed_jobs_leave_no_running_stage(tmp_path):
    from diffusion_handles.errors import HandlesError
    from diffusion_handles.web.jobs import JobQueue

    def ok(job):
        job.report("guided generation", 0, 3, "guided generation: 0 of 3")
        return {}

    def bad(job):
        job.report("guided generation", 1, 3, "guided generation: 1 of 3")
        raise HandlesError("mask: expected background, got none")

    def crash(job):
        raise RuntimeError(f"boom at {tmp_path}/secret\nTraceback line")

    q = JobQueue(tmp_path, scrub=lambda text: text.replace(str(tmp_path), "<folder>"))
    jobs = [q.submit(f) for f in (ok, bad, crash)]
    deadline = time.monotonic() + 60
    while not all(j.state in ("done", "error") for j in jobs):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    q.close()
    done, failed, crashed = jobs
    assert (done.state, done.stage, done.message, done.step, done.steps, done.done, done.total) == \
        ("done", "done", "done", 3, 3, 3, 3)
    assert (failed.state, failed.stage) == ("error", "failed")
    assert failed.message == "failed during guided generation, step 1 of 3"
    assert failed.error == "mask: expected background, got none"
    assert crashed.stage == "failed" and crashed.error == "render failed: RuntimeError: boom at <folder>/secret"


# ---------------------------------------------------------------------------- uploads


def test_upload_image_depth_and_mask(client):
    sc = demo_scene(40, 60)
    buf = io.BytesIO()
    np.save(buf, sc.depth)
    files = {
        "image": ("scene.png", png_bytes(sc.image), "image/png"),
        "depth": ("depth.npy", buf.getvalue(), "application/octet-stream"),
        "mask": ("mask.png", png_bytes(sc.masks[0][1].astype(np.uint8) * 255), "image/png"),
    }
    r = client.post("/api/sessions", files=files, data={"prompt": "a box", "fov_deg": "55"})
    assert r.status_code == 201, r.text
    s = r.json()
    assert (s["width"], s["height"], s["prompt"], s["selected"]) == (60, 40, "a box", 0)
    assert s["masks"][0]["pixels"] == int(sc.masks[0][1].sum())
    assert preview(client, s["id"], {"translate": [0.2, 0, 0]}).status_code == 200
    img = client.get(s["image_url"])
    assert img.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(img.content)).convert("RGB")), sc.image)


def test_upload_without_mask_then_mask_upload_and_select(client):
    sc = demo_scene(40, 60)
    files = {"image": ("a.png", png_bytes(sc.image), "image/png"),
             "depth": ("d.png", png_bytes((sc.depth * 1000).astype(np.uint16)), "image/png")}
    s = client.post("/api/sessions", files=files).json()
    assert s["selected"] is None
    r = preview(client, s["id"], {})
    assert r.status_code == 422 and "no object is selected" in r.json()["detail"]
    m = client.post(f"/api/sessions/{s['id']}/mask", files={"mask": ("m.png", png_bytes(sc.masks[0][1].astype(np.uint8) * 255), "image/png")})
    assert m.status_code == 200 and m.json()["selected"] == 0
    assert client.post(f"/api/sessions/{s['id']}/select", json={"mode": "mask", "index": 3}).status_code == 422
    empty = client.post(f"/api/sessions/{s['id']}/mask", files={"mask": ("m.png", png_bytes(np.zeros((40, 60), np.uint8)), "image/png")})
    assert empty.status_code == 422 and "empty mask" in empty.json()["detail"]
    wrong = client.post(f"/api/sessions/{s['id']}/mask", files={"mask": ("m.png", png_bytes(np.zeros((60, 60), np.uint8)), "image/png")})
    assert wrong.status_code == 422 and "aspect ratio" in wrong.json()["detail"]


def test_oversized_upload_is_413(client):
    big = b"\x89PNG\r\n\x1a\n" + bytes(11 * 1024 * 1024)
    r = client.post("/api/sessions", files={"image": ("big.png", big, "image/png")})
    assert r.status_code == 413
    assert "image" in r.json()["detail"] and "MB" in r.json()["detail"]


def test_oversized_request_body_is_413_before_parsing(client):
    r = client.post("/api/sessions", content=bytes(40 * 1024 * 1024), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "MB" in r.json()["detail"]

    def chunks():  # streamed without Content-Length: counted as it arrives
        yield b"--x\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n"
        for _ in range(40):
            yield bytes(1024 * 1024)

    r = client.post("/api/sessions", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "MB" in r.json()["detail"]


@pytest.mark.parametrize(
    ("data", "ctype", "needle"),
    [
        (b"hello, I am not an image", "image/png", "not an image"),
        (b"%PDF-1.4 fake", "application/pdf", "content type"),
        (png_bytes(np.zeros((32, 32, 3), np.uint8)), "text/plain", "content type"),
        (png_bytes(np.zeros((32, 32, 3), np.uint8))[:60], "image/png", "image"),
    ],
)
def test_non_image_upload_is_415(client, data, ctype, needle):
    r = client.post("/api/sessions", files={"image": ("x.png", data, ctype)})
    assert r.status_code == 415, r.text
    assert needle in r.json()["detail"] and r.json()["detail"].startswith("image:")


def test_bad_depth_and_image_sizes_are_refused(client):
    img = png_bytes(np.zeros((32, 32, 3), np.uint8))
    r = client.post("/api/sessions", files={"image": ("a.png", img, "image/png"), "depth": ("d.npy", b"garbage", "application/octet-stream")})
    assert r.status_code == 415 and r.json()["detail"].startswith("depth:")
    buf = io.BytesIO()
    np.save(buf, -np.ones((32, 32), np.float32))
    r = client.post("/api/sessions", files={"image": ("a.png", img, "image/png"), "depth": ("d.npy", buf.getvalue(), "application/octet-stream")})
    assert r.status_code == 422 and "positive" in r.json()["detail"]
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    r = client.post("/api/sessions", files={"image": ("a.png", img, "image/png"), "depth": ("d.npy", buf.getvalue(), "application/octet-stream")})
    assert r.status_code == 415 and r.json()["detail"].startswith("depth:")  # never unpickled
    tall = png_bytes(np.zeros((5000, 20, 3), np.uint8))
    r = client.post("/api/sessions", files={"image": ("t.png", tall, "image/png")})
    assert r.status_code == 422 and "5000" in r.json()["detail"]
    r = client.post("/api/sessions", files={"image": ("a.png", img, "image/png")})
    assert r.status_code == 422 and r.json()["detail"].startswith("depth")  # no depth and no estimator offline


def test_unknown_ids_are_404(client, demo_session):
    for url in ["/api/jobs/not-a-job", "/api/jobs/not-a-job/events", "/api/jobs/x/results/edited",
                "/api/sessions/nope", "/api/sessions/nope/points", "/api/sessions/../../etc/passwd/image.png"]:
        r = client.get(url)
        assert r.status_code == 404, url
        assert r.json()["detail"]
    r = preview(client, "nope", {})
    assert r.status_code == 404 and "session" in r.json()["detail"]
    r = client.post("/api/jobs", json={"session_id": "nope", "transform": {}})
    assert r.status_code == 404
    r = client.post("/api/sessions/scene", json={"scene": "../etc"})
    assert r.status_code == 422 and "scene" in r.json()["detail"]


def test_selection_tools_are_not_offered_without_weights(web_config, tmp_path, monkeypatch):
    import dataclasses

    from fastapi.testclient import TestClient

    from diffusion_handles.web.app import create_app

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tuple((k, str(tmp_path / f"no-{k}")) for k in ("sam_model", "detector_model", "depth_model"))
    with TestClient(create_app(dataclasses.replace(web_config, perception_models=missing))) as c:
        info = c.get("/api/info").json()
        assert info["selection_modes"] == ["mask", "upload"] and info["depth_estimation"] is False
        sid = c.post("/api/sessions/scene", json={"scene": "demo"}).json()["id"]
        r = c.post(f"/api/sessions/{sid}/select", json={"mode": "click", "x": 20, "y": 40})
        detail = r.json()["detail"]
        assert r.status_code == 422 and "mask" in detail  # asked anyway: one line, with the way round
        assert str(tmp_path) not in detail and "no-sam_model" in detail  # named, not located
        r = c.post(f"/api/sessions/{sid}/select", json={"mode": "click", "x": 999, "y": 40})
        assert r.status_code == 422 and "inside" in r.json()["detail"]


def test_point_cloud_matches_the_depth(client, demo_session):
    pc = client.get(demo_session["points_url"]).json()
    pos = np.frombuffer(base64.b64decode(pc["positions"]), np.float32).reshape(-1, 3)
    obj = np.frombuffer(base64.b64decode(pc["object"]), np.uint8)
    h, w = demo_session["height"], demo_session["width"]
    sc = demo_scene(h, w)
    assert pc["stride"] == 1 and pos.shape == (h * w, 3)
    np.testing.assert_allclose(-pos[:, 2], sc.depth.reshape(-1), rtol=1e-5)  # three.js z = -depth
    assert obj.sum() == sc.masks[0][1].sum()
    centroid = pos[obj == 1].mean(0)
    np.testing.assert_allclose(centroid, pc["pivot"], rtol=1e-4)
    np.testing.assert_allclose(pc["pivot_camera"], [centroid[0], -centroid[1], -centroid[2]], rtol=1e-4)


# ---------------------------------------------------------------------------- renders


def test_render_job_progress_results_and_inversion_cache(client, demo_session):
    sid = demo_session["id"]
    body = {"session_id": sid, "transform": {"translate": [0.3, 0, 0]}, "num_steps": 3}
    first = client.post("/api/jobs", json=body)
    assert first.status_code == 202, first.text
    jid = first.json()["id"]
    events = []
    with client.stream("GET", f"/api/jobs/{jid}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    st = events[-1]
    assert st["state"] == "done", st
    assert st["fraction"] == 1.0 and st["done"] == st["total"] == 9  # 3 inversion + 3 + 3 edit steps
    assert st["step"] == st["steps"] == 3 and st["eta_s"] == 0 and st["elapsed_s"] > 0
    assert all(e["total"] in (0, 9) for e in events)
    running = [e for e in events if e["state"] == "running" and e["done"]]  # after a step
    # each stage with its own steps (not "step 4 of 9"), the time elapsed and an estimate of the time left
    # (the stream samples the job every 0.1 s: fast steps may be skipped)
    assert running and all(e["stage"] in ("inversion", "null-text", "guided generation") and 1 <= e["step"] <= 3
                           and e["steps"] == 3 for e in running), running
    assert all(e["elapsed_s"] >= 0 and e["eta_s"] is not None and e["eta_s"] >= 0 for e in running)
    assert [e["fraction"] for e in events] == sorted(e["fraction"] for e in events)
    assert st["info"]["reused_inversion"] is False
    rh, rw = st["info"]["render_size_hw"]
    # the model works at its 32 px, the result comes back at the upload's own size
    assert (rh, rw) == (demo_session["height"], demo_session["width"]) and max(rh, rw) > 32
    for name in ("edited", "input", "reconstruction", "preview", "edited_depth"):
        r = client.get(st["results"][name])
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(r.content)).size == (rw, rh)
    assert client.get(f"/api/jobs/{jid}/results/nothing").status_code == 404
    depth = np.load(io.BytesIO(client.get(st["results"]["edited_depth_npy"]).content))
    assert depth.shape == (rh, rw) and (depth > 0).all()

    second = wait_job(client, client.post("/api/jobs", json={**body, "transform": {"translate": [-0.3, 0, 0]}}).json()["id"])
    assert second["state"] == "done" and second["info"]["reused_inversion"] is True
    assert second["total"] == 3  # only the edit's steps


def test_concurrent_renders_queue_one_at_a_time(client, demo_session):
    body = {"session_id": demo_session["id"], "transform": {"translate": [0.2, 0, 0]}, "num_steps": 2}
    with ThreadPoolExecutor(max_workers=3) as ex:
        subs = list(ex.map(lambda i: client.post("/api/jobs", json={**body, "seed": i}), range(3)))
    assert [r.status_code for r in subs] == [202] * 3
    done = sorted((wait_job(client, r.json()["id"]) for r in subs), key=lambda s: s["started"])
    assert all(s["state"] == "done" for s in done)
    for a, b in zip(done, done[1:], strict=False):
        assert b["started"] >= a["finished"]  # one worker: never two renders at once


def test_render_of_an_impossible_edit_is_refused_at_submit(client, demo_session):
    r = client.post("/api/jobs", json={"session_id": demo_session["id"], "transform": {"translate": [0, 0, -20]}})
    assert r.status_code == 422 and "behind the camera" in r.json()["detail"]
    r = client.post("/api/jobs", json={"session_id": demo_session["id"], "transform": {}, "num_steps": 0})
    assert r.status_code == 422 and "num_steps" in r.json()["detail"]
