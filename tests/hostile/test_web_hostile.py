"""Hostile but fair requests to the web app (issue 13): each is answered with a 4xx whose JSON
``detail`` is one clear line, never a traceback, and leaves nothing behind.

Classes: Host spoofing (DNS rebinding), cross-origin writes, what ``/api/info`` reveals
(filesystem paths, tools without weights), the page and API docs offline, masks that leave no
background (whole image, 1x1 and 2-pixel-high images) in preview and render, a non-finite field
of view, and the stage text of ended jobs.
"""

from __future__ import annotations

import dataclasses
import io
import re
import time

import numpy as np
import pytest
from PIL import Image

SCENE_SIZE = (48, 64)


# ---------------------------------------------------------------------------- helpers


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def upload_files(image: np.ndarray, depth: np.ndarray | None = None, mask: np.ndarray | None = None) -> dict:
    files = {"image": ("image.png", png(image), "image/png")}
    if depth is not None:
        files["depth"] = ("depth.png", png((depth * 1000).astype(np.uint16)), "image/png")
    if mask is not None:
        files["mask"] = ("mask.png", png(mask.astype(np.uint8) * 255), "image/png")
    return files


def flat_scene(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((h, w, 3), 120, np.uint8), np.full((h, w), 2.0, np.float32)


def assert_clear(r, status: int, *needles: str) -> str:
    """``r`` has ``status`` and a JSON ``detail`` that is one line, mentions ``needles``, and no traceback."""
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert "Traceback" not in r.text and 'File "' not in r.text, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail.strip(), r.text
    assert "\n" not in detail and len(detail) < 600, detail
    for n in needles:
        assert n in detail, (n, detail)
    return detail


def wait_job(c, jid: str, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = c.get(f"/api/jobs/{jid}").json()
        if st["state"] in ("done", "error"):
            return st
        assert time.monotonic() < deadline, f"job did not end: {st}"
        time.sleep(0.05)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A randomly initialised SD2-depth-layout model folder (renders at 32 px, in seconds)."""
    from diffusion_handles.diffusion.random_models import (
        build_backbone_components,
        save_model_folder,
        tiny_configs,
    )

    return save_model_folder(build_backbone_components(tiny_configs(), seed=0), tmp_path_factory.mktemp("secret-models") / "tiny")


@pytest.fixture(scope="module")
def config(tiny_model, tmp_path_factory):
    from diffusion_handles.web.app import WebConfig

    return WebConfig(model=str(tiny_model), default_steps=2, scene_size=SCENE_SIZE,
                     results_dir=tmp_path_factory.mktemp("web-results"), allowed_hosts=("testserver",))


def make_client(cfg, **kw):
    from fastapi.testclient import TestClient

    from diffusion_handles.web.app import create_app

    return TestClient(create_app(cfg), raise_server_exceptions=False, **kw)


@pytest.fixture
def client(config):
    with make_client(config) as c:
        yield c


# ---------------------------------------------------------------------------- Host header


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:80", "testserver.attacker.example",
                                  "testserver:99999", "testserver:x", "evil@testserver", "", "[::1"])
def test_spoofed_host_is_400_and_not_served(client, host):
    before = len(client.app.state.sessions)
    assert_clear(client.get("/api/info", headers={"host": host}), 400, "Host", "testserver")
    assert_clear(client.get("/", headers={"host": host}), 400, "Host")
    assert_clear(client.post("/api/sessions/scene", json={"scene": "demo"}, headers={"host": host}), 400, "Host")
    assert len(client.app.state.sessions) == before  # nothing was done


def test_default_hosts_are_loopback_only(config):
    """Without explicit hosts the app answers the loopback names only (not "testserver")."""
    from diffusion_handles.web.app import WebConfig

    cfg = dataclasses.replace(config, allowed_hosts=WebConfig().allowed_hosts)
    with make_client(cfg) as c:
        assert_clear(c.get("/api/info"), 400, "Host")  # TestClient's own "testserver"
        for host in ("127.0.0.1:7860", "localhost:7860", "[::1]:7860", "LOCALHOST:1"):
            assert c.get("/api/info", headers={"host": host}).status_code == 200, host
    with make_client(dataclasses.replace(config, allowed_hosts=("127.0.0.1:7860",)), base_url="http://127.0.0.1:7860") as c:
        assert c.get("/api/info").status_code == 200
        assert_clear(c.get("/api/info", headers={"host": "127.0.0.1:7861"}), 400, "127.0.0.1:7860")


def test_bad_allowed_hosts_are_refused_at_start(config):
    from diffusion_handles.errors import HandlesError
    from diffusion_handles.web.app import create_app

    for bad in [("http://x/",), ("a:b",), ()]:
        with pytest.raises(HandlesError, match="allowed_hosts"):
            create_app(dataclasses.replace(config, allowed_hosts=bad))


# ---------------------------------------------------------------------------- Origin


@pytest.mark.parametrize("origin", ["http://attacker.example", "https://testserver.attacker.example", "null",
                                    "http://testserver:8080", "file://", "http://testserver/path"])
def test_cross_origin_writes_are_403(client, origin):
    image, depth = flat_scene(32, 32)
    before = len(client.app.state.sessions)
    h = {"origin": origin}
    assert_clear(client.post("/api/sessions", files=upload_files(image, depth), headers=h), 403, "Origin", "cross-origin")
    assert_clear(client.post("/api/sessions/scene", json={"scene": "demo"}, headers=h), 403, "Origin")
    assert len(client.app.state.sessions) == before
    sid = client.post("/api/sessions/scene", json={"scene": "demo"}).json()["id"]  # no Origin (curl): fine
    assert_clear(client.post(f"/api/sessions/{sid}/mask", files={"mask": ("m.png", png(np.ones((48, 64), np.uint8) * 255), "image/png")},
                             headers=h), 403, "Origin")
    assert_clear(client.post(f"/api/sessions/{sid}/preview", json={"transform": {}}, headers=h), 403, "Origin")
    assert_clear(client.post("/api/jobs", json={"session_id": sid, "transform": {}}, headers=h), 403, "Origin")
    assert len(client.app.state.jobs) == 0
    r = client.get("/api/info", headers=h)  # a read: served, and no CORS header lets the other site see it
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_same_origin_and_originless_writes_pass(client):
    assert client.post("/api/sessions/scene", json={"scene": "demo"}, headers={"origin": "http://testserver"}).status_code == 201
    assert client.post("/api/sessions/scene", json={"scene": "demo"}).status_code == 201


# ---------------------------------------------------------------------------- /api/info


def test_info_shows_no_filesystem_path(client, tiny_model, config):
    r = client.get("/api/info")
    assert r.status_code == 200
    assert r.json()["model"] == tiny_model.name
    for leak in (str(tiny_model), str(tiny_model.parent), str(config.results_dir)):
        assert leak not in r.text
    assert not re.search(r"(/tmp/|/home/|/root/|[A-Z]:\\)", r.text), r.text


def test_info_and_errors_hide_a_missing_model_folder(config, tmp_path):
    missing = tmp_path / "private" / "my-model"
    with make_client(dataclasses.replace(config, model=str(missing))) as c:
        info = c.get("/api/info")
        assert info.json()["model"] == "my-model" and str(tmp_path) not in info.text
        assert "my-model" in info.json()["render_unavailable"]
        sid = c.post("/api/sessions/scene", json={"scene": "demo"}).json()["id"]
        r = c.post("/api/jobs", json={"session_id": sid, "transform": {}})
        assert str(tmp_path) not in assert_clear(r, 422, "my-model")


@pytest.fixture
def fake_weights(tmp_path):
    """A folder that looks like a saved model (config + non-empty weights); not loadable, only present."""
    def make(name: str):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"\0" * 16)
        return str(d)

    return make


def test_info_offers_only_tools_whose_weights_are_present(config, tmp_path, fake_weights, monkeypatch):
    pytest.importorskip("diffusion_handles.perception")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty = tmp_path / "empty-sam"
    empty.mkdir()
    cases = [
        ({"sam_model": str(tmp_path / "absent"), "detector_model": str(tmp_path / "absent2"),
          "depth_model": "nobody-has/this-depth-model"}, ["mask", "upload"], False),
        ({"sam_model": str(empty), "detector_model": fake_weights("det"), "depth_model": str(empty)}, ["mask", "upload"], False),
        ({"sam_model": fake_weights("sam"), "detector_model": str(tmp_path / "absent"), "depth_model": fake_weights("dep")},
         ["mask", "upload", "click"], True),
        ({"sam_model": fake_weights("sam2"), "detector_model": fake_weights("det2"), "depth_model": str(empty)},
         ["mask", "upload", "click", "text"], False),
    ]
    for models, modes, depth in cases:
        with make_client(dataclasses.replace(config, perception_models=tuple(models.items()))) as c:
            info = c.get("/api/info")
            assert info.json()["selection_modes"] == modes, models
            assert info.json()["depth_estimation"] is depth, models
            assert str(tmp_path) not in info.text


# ---------------------------------------------------------------------------- offline page and docs


def test_docs_pages_are_off_and_the_page_loads_nothing_from_outside(client):
    for url in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert client.get(url).status_code == 404, url
    assert client.get("/openapi.json").status_code == 200
    page = client.get("/").text
    for tag in re.findall(r"<(?:script|link|img|iframe)\b[^>]*>", page, re.I):
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", tag, re.I), tag
    for url in re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", page):
        if url.startswith("/static/"):
            body = client.get(url)
            assert body.status_code == 200, url
            if url.endswith((".js", ".css")) and "/vendor/" not in url:
                assert not re.search(r"""(import|url|fetch)\s*\(?\s*["']?https?://""", body.text), url


# ---------------------------------------------------------------------------- masks that leave no background


def open_upload(c, h: int, w: int, mask: np.ndarray) -> str:
    image, depth = flat_scene(h, w)
    r = c.post("/api/sessions", files=upload_files(image, depth, mask))
    assert r.status_code == 201, r.text
    return r.json()["id"]


@pytest.mark.parametrize(("h", "w"), [(40, 60), (16, 16)])
def test_whole_image_mask_preview_and_render_are_422(client, h, w):
    sid = open_upload(client, h, w, np.ones((h, w), bool))
    for t in ({}, {"translate": [0.2, 0, 0]}, {"scale": 0.5}):
        for with_depth in (False, True):
            r = client.post(f"/api/sessions/{sid}/preview", json={"transform": t, "with_depth": with_depth})
            assert_clear(r, 422, "mask", "background", f"{w}x{h}")
    r = client.post("/api/jobs", json={"session_id": sid, "transform": {"translate": [0.2, 0, 0]}})
    assert_clear(r, 422, "mask", "background")  # refused before it is accepted
    assert len(client.app.state.jobs) == 0


def test_tiny_and_thin_images(config):
    """A 1x1 image is refused at upload by default; allowed (min_side=1), its edit is a 422, as
    is that of a 16x4000 image (2 px high at the working size) with a whole-image mask."""
    from diffusion_handles.web.uploads import UploadLimits

    with make_client(config) as c:
        image, depth = flat_scene(1, 1)
        assert_clear(c.post("/api/sessions", files=upload_files(image, depth, np.ones((1, 1), bool))), 422, "image", "1x1")
    with make_client(dataclasses.replace(config, limits=UploadLimits(min_side=1))) as c:
        for h, w in [(1, 1), (16, 4000)]:
            sid = open_upload(c, h, w, np.ones((h, w), bool))
            for with_depth in (False, True):
                assert_clear(c.post(f"/api/sessions/{sid}/preview", json={"transform": {}, "with_depth": with_depth}), 422, "mask")
            assert_clear(c.post("/api/jobs", json={"session_id": sid, "transform": {}}), 422, "mask")
        assert len(c.app.state.jobs) == 0


def test_raw_geometry_errors_become_a_clear_422(client, monkeypatch):
    """An unexpected error of the geometry code (not a HandlesError) is one line, not a 500."""
    import diffusion_handles.preview as preview_module

    def broken(*a, **kw):
        raise ValueError("poisson_solve: every pixel is unknown\nsecond line")

    monkeypatch.setattr(preview_module, "preview_edit", broken)
    sid = client.post("/api/sessions/scene", json={"scene": "demo"}).json()["id"]
    detail = assert_clear(client.post(f"/api/sessions/{sid}/preview", json={"transform": {}}), 422, "preview", "every pixel is unknown")
    assert "second line" not in detail
    assert_clear(client.post("/api/jobs", json={"session_id": sid, "transform": {}}), 422, "every pixel is unknown")
    assert len(client.app.state.jobs) == 0


def test_mask_without_background_at_the_render_size(config):
    """A mask leaving a 3-pixel border passes at 64x64 but leaves no background at the tiny
    model's 32 px: before the model is loaded the job fails at once with one line (stage
    "failed"); once it is loaded the same request is refused at submit."""
    with make_client(config) as c:
        mask = np.zeros((64, 64), bool)
        mask[3:-3, 3:-3] = True
        sid = open_upload(c, 64, 64, mask)
        assert c.post(f"/api/sessions/{sid}/preview", json={"transform": {}, "with_depth": True}).status_code == 200
        body = {"session_id": sid, "transform": {}, "num_steps": 2}
        r = c.post("/api/jobs", json=body)
        assert r.status_code == 202, r.text
        st = wait_job(c, r.json()["id"])
        assert st["state"] == "error" and st["stage"] == "failed", st
        assert "background" in st["error"] and "\n" not in st["error"] and "Traceback" not in st["error"]
        assert st["message"].startswith("failed during") and st["results"] == {}
        assert_clear(c.post("/api/jobs", json=body), 422, "mask", "background", "32x32")


# ---------------------------------------------------------------------------- field of view


@pytest.mark.parametrize(("fov", "got"), [("nan", "nan"), ("inf", "inf"), ("-inf", "-inf"), ("0", "0"),
                                          ("180", "180"), ("1e308", "1e+308"), ("-5", "-5")])
def test_bad_fov_is_a_clear_422(client, fov, got):
    image, depth = flat_scene(32, 32)
    before = len(client.app.state.sessions)
    r = client.post("/api/sessions", files=upload_files(image, depth), data={"fov_deg": fov})
    detail = assert_clear(r, 422, "fov_deg", "finite number of degrees in (0, 180)", f"got {got}")
    assert "less than" not in detail and "greater than" not in detail
    assert len(client.app.state.sessions) == before


def test_unparsable_fov_names_the_field(client):
    image, depth = flat_scene(32, 32)
    assert_clear(client.post("/api/sessions", files=upload_files(image, depth), data={"fov_deg": "wide"}), 422, "fov_deg", "wide")


# ---------------------------------------------------------------------------- ended jobs


def test_finished_job_says_done_not_a_running_stage(client):
    sid = client.post("/api/sessions/scene", json={"scene": "demo"}).json()["id"]
    r = client.post("/api/jobs", json={"session_id": sid, "transform": {"translate": [0.2, 0, 0]}, "num_steps": 2})
    assert r.status_code == 202, r.text
    st = wait_job(client, r.json()["id"])
    assert st["state"] == "done", st
    assert (st["stage"], st["message"], st["fraction"]) == ("done", "done", 1.0)
    assert st["done"] == st["total"] > 0
    for key in ("edited", "preview"):
        assert client.get(st["results"][key]).status_code == 200


# ---------------------------------------------------------------------------- animate endpoint


def test_animate_refuses_spoofed_hosts_and_cross_origin_writes(client):
    sid = client.post("/api/sessions/scene", json={"scene": "demo"}).json()["id"]
    body = {"transform": {"translate": [0.2, 0, 0]}, "frames": 3, "num_steps": 2}
    assert_clear(client.post(f"/api/sessions/{sid}/animate", json=body, headers={"host": "attacker.example"}), 400, "Host")
    assert_clear(client.post(f"/api/sessions/{sid}/animate", json=body, headers={"origin": "http://attacker.example"}),
                 403, "Origin", "cross-origin")
    assert len(client.app.state.jobs) == 0


@pytest.mark.parametrize(("body", "needles"), [
    ({"transform": {}, "frames": 10**12}, ("frames", "[2, 240]", "1000000000000")),
    ({"transform": {}, "frames": -1}, ("frames", "[2, 240]")),
    ({"transform": {}, "frames": "eight"}, ("frames", "integer", "eight")),
    ({"transform": {}, "frames": {"n": 8}}, ("frames", "integer")),
    ({"transform": {}, "frames": False}, ("frames", "integer")),
    ({"transform": {}, "frames": 8, "fps": 1e9}, ("fps",)),
    ({"transform": {}, "frames": 8, "num_steps": 10**6}, ("num_steps",)),
    ({"transform": {}, "frames": 8, "keyframes": [{}]}, ("keyframes", "Extra inputs")),
    ({"transform": {"scale": 0}, "frames": 8}, ("transform.scale",)),
    ({"frames": 8}, ("transform", "required")),
])
def test_bad_animate_requests_are_clear_422s(client, body, needles):
    sid = client.post("/api/sessions/scene", json={"scene": "demo"}).json()["id"]
    assert_clear(client.post(f"/api/sessions/{sid}/animate", json=body), 422, *needles)
    assert len(client.app.state.jobs) == 0


def test_animate_non_json_and_nan_bodies(client):
    sid = client.post("/api/sessions/scene", json={"scene": "demo"}).json()["id"]
    url = f"/api/sessions/{sid}/animate"
    headers = {"content-type": "application/json"}
    assert_clear(client.post(url, content=b'{"transform": {}, "frames": NaN}', headers=headers), 422, "frames")
    assert_clear(client.post(url, content=b"\xff\xfe not json", headers=headers), 400, "body", "JSON")
    assert_clear(client.post(url, content=b"[]", headers=headers), 422)
    assert len(client.app.state.jobs) == 0


def test_animate_of_impossible_edits_and_unknown_sessions(client):
    sid = open_upload(client, 40, 60, np.ones((40, 60), bool))  # no background left
    assert_clear(client.post(f"/api/sessions/{sid}/animate", json={"transform": {"translate": [0.2, 0, 0]}, "frames": 3}),
                 422, "mask", "background")
    demo = client.post("/api/sessions/scene", json={"scene": "demo"}).json()["id"]
    assert_clear(client.post(f"/api/sessions/{demo}/animate", json={"transform": {"translate": [0, 0, -30]}, "frames": 3}),
                 422, "behind the camera")
    assert_clear(client.post("/api/sessions/../../etc/animate", json={"transform": {}, "frames": 3}), 404)
    assert_clear(client.post("/api/sessions/nope/animate", json={"transform": {}, "frames": 3}), 404, "session")
    image, depth = flat_scene(32, 32)
    bare = client.post("/api/sessions", files=upload_files(image, depth)).json()["id"]  # no mask selected
    assert_clear(client.post(f"/api/sessions/{bare}/animate", json={"transform": {}, "frames": 3}), 422, "mask")
    assert len(client.app.state.jobs) == 0


def test_animate_respects_the_job_queue_limit(config):
    with make_client(dataclasses.replace(config, max_waiting_jobs=0)) as c:
        sid = c.post("/api/sessions/scene", json={"scene": "demo"}).json()["id"]
        assert_clear(c.post(f"/api/sessions/{sid}/animate", json={"transform": {}, "frames": 3}), 429, "queue")
        assert len(c.app.state.jobs) == 0


def test_animate_results_cannot_reach_outside_the_job(client):
    sid = client.post("/api/sessions/scene", json={"scene": "demo"}).json()["id"]
    r = client.post(f"/api/sessions/{sid}/animate", json={"transform": {"translate": [0.2, 0, 0]}, "frames": 2, "num_steps": 2})
    assert r.status_code == 202, r.text
    st = wait_job(client, r.json()["id"])
    assert st["state"] == "done", st
    jid = st["id"]
    for name in ("..%2Finfo.json", "frames", "info", "%2Fetc%2Fpasswd", "frame_0002"):
        assert client.get(f"/api/jobs/{jid}/results/{name}").status_code == 404, name
    assert client.get(st["results"]["gif"]).headers["content-type"] == "image/gif"


# ---------------------------------------------------------------------------- modes: camera, several objects, remove


def _two_object_session(c) -> str:
    """The demo scene (box = mask 0) with a wall patch uploaded as mask 1 (selected)."""
    sid = c.post("/api/sessions/scene", json={"scene": "demo"}).json()["id"]
    m = np.zeros(SCENE_SIZE, bool)
    m[2:12, 40:56] = True
    r = c.post(f"/api/sessions/{sid}/mask", files={"mask": ("m.png", png(m.astype(np.uint8) * 255), "image/png")})
    assert r.status_code == 200, r.text
    return sid


@pytest.mark.parametrize("mode", ["CAMERA", "Camera ", "", "multi", "remove", "objects", 0, 1.5, True, None,
                                  ["camera"], {"camera": 1}, "camera\n", "c" * 10_000])
def test_bad_mode_values_are_clear_422s(client, mode):
    sid = client.post("/api/sessions/scene", json={"scene": "demo"}).json()["id"]
    for path, extra in ((f"/api/sessions/{sid}/preview", {}), ("/api/jobs", {"session_id": sid})):
        detail = assert_clear(client.post(path, json={"transform": {}, "mode": mode, **extra}), 422,
                              "mode: expected \"object\"", "\"camera\"")
        assert len(detail) < 300  # a 10 000-character mode is not echoed back whole
    assert len(client.app.state.jobs) == 0


def test_too_many_objects_are_refused_before_any_work(client):
    sid = _two_object_session(client)
    many = [{"mask": k % 2, "transform": {}} for k in range(10_000)]
    for path, extra in ((f"/api/sessions/{sid}/preview", {}), ("/api/jobs", {"session_id": sid})):
        detail = assert_clear(client.post(path, json={"transform": {}, "objects": many, **extra}), 422,
                              "objects: expected at most 15 other objects", "10000 listed")
        assert len(detail) < 400
    assert len(client.app.state.jobs) == 0


@pytest.mark.parametrize(("objects", "needles"), [
    ([{"mask": 0, "transform": {}}, {"mask": 0, "transform": {"translate": [1, 0, 0]}}],
     ("objects[1].mask", "each mask once", "also objects[0]")),
    ([{"mask": 1, "transform": {}}], ("objects[0].mask", "another object than the selected one")),
    ([{"mask": 2, "transform": {}}], ("objects[0].mask", "[0, 2)", "got 2")),
    ([{"mask": 10**12, "transform": {}}], ("objects[0].mask",)),
    ([{"mask": "0", "transform": {}}], ("objects.0.mask",)),
    ([{"mask": 0.5, "transform": {}}], ("objects.0.mask",)),
    ([{"mask": 0, "transform": {"scale": -1}}], ("objects.0.transform.scale", "greater than or equal to 0.001")),
    ([{"mask": 0, "transform": {"rotate_deg": 30, "rotate_axis": [0, 0, 0]}}], ("rotate_axis", "non-zero axis")),
    ([{"mask": 0, "transform": {"translate": [0, 0, -30]}}], ("objects[0]", "behind the camera")),
    ([None], ("objects.0",)),
    ("everything", ("objects",)),
])
def test_overlapping_and_bad_object_lists_are_clear_422s(client, objects, needles):
    sid = _two_object_session(client)
    for path, extra in ((f"/api/sessions/{sid}/preview", {}), ("/api/jobs", {"session_id": sid})):
        assert_clear(client.post(path, json={"transform": {}, "objects": objects, **extra}), 422, *needles)
    assert len(client.app.state.jobs) == 0


def test_a_mask_inside_another_objects_mask_is_a_clear_422(client):
    sid = client.post("/api/sessions/scene", json={"scene": "demo"}).json()["id"]
    box = client.get(f"/api/sessions/{sid}/mask.png").content
    r = client.post(f"/api/sessions/{sid}/mask", files={"mask": ("m.png", box, "image/png")})  # the box again, as mask 1
    assert r.status_code == 200 and r.json()["selected"] == 1
    body = {"transform": {}, "objects": [{"mask": 0, "transform": {"translate": [0.3, 0, 0]}}]}
    assert_clear(client.post(f"/api/sessions/{sid}/preview", json=body), 422, "objects[0].mask", "pixels of its own")
    assert_clear(client.post("/api/jobs", json={"session_id": sid, **body}), 422, "objects[0].mask")
    assert len(client.app.state.jobs) == 0


def test_camera_mode_refuses_objects_scale_and_impossible_moves(client):
    sid = _two_object_session(client)
    cases = [({"objects": [{"mask": 0, "transform": {}}]}, ("objects: expected none in camera mode",)),
             ({"transform": {"scale": 2}}, ("transform.scale: expected 1 in camera mode", "got 2")),
             ({"transform": {"translate": [0, 0, 50]}}, ("behind the camera",))]
    for body, needles in cases:
        for path, extra in ((f"/api/sessions/{sid}/preview", {}), ("/api/jobs", {"session_id": sid})):
            assert_clear(client.post(path, json={"transform": {}, "mode": "camera", **body, **extra}), 422, *needles)
    assert len(client.app.state.jobs) == 0


def test_remove_refuses_hostile_requests(client, config):
    sid = client.post("/api/sessions/scene", json={"scene": "demo"}).json()["id"]
    url = f"/api/sessions/{sid}/remove"
    assert_clear(client.post(url, json={}, headers={"host": "attacker.example"}), 400, "Host")
    assert_clear(client.post(url, json={}, headers={"origin": "http://attacker.example"}), 403, "Origin")
    assert_clear(client.post(url, json={"mask": 0}), 422, "mask", "Extra inputs")
    assert_clear(client.post(url, json={"num_steps": 0}), 422, "num_steps")
    assert_clear(client.post(url, json={"prompt": "x" * 501}), 422, "prompt")
    assert_clear(client.post(url, content=b"\xff not json", headers={"content-type": "application/json"}), 400, "JSON")
    assert_clear(client.post("/api/sessions/nope/remove", json={}), 404, "session")
    whole = open_upload(client, 40, 60, np.ones((40, 60), bool))
    assert_clear(client.post(f"/api/sessions/{whole}/remove", json={}), 422, "mask", "background")
    assert len(client.app.state.jobs) == 0
    with make_client(dataclasses.replace(config, max_waiting_jobs=0)) as c:
        sid = c.post("/api/sessions/scene", json={"scene": "demo"}).json()["id"]
        assert_clear(c.post(f"/api/sessions/{sid}/remove", json={}), 429, "queue")
