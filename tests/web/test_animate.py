"""The animate job: after a render, the object moved from its place to the transform over N
frames from the render's cached inversion, with progress frame i of N; GIF, MP4 and frames."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from diffusion_handles.animation import MAX_FRAMES

from .helpers import wait_job


def test_animate_after_a_render_reuses_the_inversion(client, demo_session, monkeypatch, tmp_path):
    from diffusion_handles.web.jobs import Job

    seen = []
    report = Job.report

    def recording(self, stage, step, steps, message="", **kw):
        seen.append((stage, step, steps, kw.get("done")))
        report(self, stage, step, steps, message, **kw)

    monkeypatch.setattr(Job, "report", recording)
    sid = demo_session["id"]
    transform = {"translate": [0.3, 0, 0], "rotate_axis": [0, 1, 0], "rotate_deg": 20}
    render = client.post("/api/jobs", json={"session_id": sid, "transform": transform, "num_steps": 2})
    assert render.status_code == 202, render.text
    assert wait_job(client, render.json()["id"])["state"] == "done"

    seen.clear()
    r = client.post(f"/api/sessions/{sid}/animate", json={"transform": transform, "frames": 3, "num_steps": 2, "fps": 4})
    assert r.status_code == 202, r.text
    st = wait_job(client, r.json()["id"])
    assert st["state"] == "done", st
    assert st["info"]["reused_inversion"] is True and st["info"]["frames"] == 3
    assert st["done"] == st["total"] == 3 * 2 and st["fraction"] == 1.0  # 3 frames of 2 steps, no inversion
    stages = [s for s, _, _, _ in seen]
    for i in (1, 2, 3):
        assert f"frame {i}/3: guided generation" in stages
    assert [(s, n) for st_, s, n, _ in seen if st_.startswith("frame")] == [(1, 2), (2, 2)] * 3  # each frame's own
    done = [d for *_, d in seen if d]
    assert done == sorted(done)  # progress only grows
    edits = st["info"]["edits"]
    assert edits[0]["translate"] == [0, 0, 0] and edits[-1]["translate"] == pytest.approx([0.3, 0, 0])
    assert edits[1]["rotate_deg"] == pytest.approx(10) and edits[-1]["rotate_deg"] == pytest.approx(20)

    gif = client.get(st["results"]["gif"])
    assert gif.status_code == 200 and gif.headers["content-type"] == "image/gif"
    im = Image.open(io.BytesIO(gif.content))
    assert im.n_frames == 3 and max(im.size) >= 256
    mp4 = client.get(st["results"]["mp4"])
    assert mp4.status_code == 200 and mp4.headers["content-type"] == "video/mp4" and mp4.content[4:8] == b"ftyp"
    (tmp_path / "a.mp4").write_bytes(mp4.content)
    import imageio_ffmpeg

    assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "a.mp4"))[0] == 3
    for i in range(3):
        frame = client.get(st["results"][f"frame_{i:04d}"])
        assert frame.status_code == 200 and frame.headers["content-type"] == "image/png"
        assert max(Image.open(io.BytesIO(frame.content)).size) > 32  # the input's size, not the tiny model's


@pytest.mark.parametrize("frames", [1, 0, -3, MAX_FRAMES + 1, 10**9, 2.5, "8", True, None, [4]])
def test_bad_frames_are_a_clear_422(client, demo_session, frames):
    r = client.post(f"/api/sessions/{demo_session['id']}/animate", json={"transform": {}, "frames": frames})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith("frames: ") and f"integer number of frames in [2, {MAX_FRAMES}]" in detail, detail
    assert len(client.app.state.jobs) == 0


def test_animate_refuses_what_a_render_refuses(client, demo_session):
    sid = demo_session["id"]
    r = client.post(f"/api/sessions/{sid}/animate", json={"transform": {"translate": [0, 0, -20]}, "frames": 4})
    assert r.status_code == 422 and "behind the camera" in r.json()["detail"]
    r = client.post("/api/sessions/nope/animate", json={"transform": {}, "frames": 4})
    assert r.status_code == 404 and "session" in r.json()["detail"]
    r = client.post(f"/api/sessions/{sid}/animate", json={"transform": {}, "frames": 4, "fps": 0})
    assert r.status_code == 422 and r.json()["detail"].startswith("fps: ")
    assert len(client.app.state.jobs) == 0


def test_animate_moves_what_the_render_moves(client, demo_session):
    """Several objects: each keeps its own track from the identity to its transform, all in one
    frame; a camera move animates the camera, from the camera render's inversion (all-ones mask)."""
    from .test_modes import second_object

    sid = demo_session["id"]
    second_object(client, sid)
    body = {"transform": {"translate": [0, 0.4, 0]}, "objects": [{"mask": 0, "transform": {"translate": [0.4, 0, 0]}}]}
    r = client.post(f"/api/sessions/{sid}/animate", json={**body, "frames": 3, "num_steps": 2})
    assert r.status_code == 202, r.text
    st = wait_job(client, r.json()["id"])
    assert st["state"] == "done", st
    edits = st["info"]["edits"]
    assert len(edits) == 3 and all(len(frame) == 2 for frame in edits)  # two objects in every frame
    assert edits[0][0]["translate"] == [0, 0, 0] and edits[0][1]["translate"] == [0, 0, 0]
    assert edits[1][0]["translate"] == pytest.approx([0, 0.2, 0]) and edits[1][1]["translate"] == pytest.approx([0.2, 0, 0])
    assert edits[2][0]["translate"] == pytest.approx([0, 0.4, 0]) and edits[2][1]["translate"] == pytest.approx([0.4, 0, 0])

    camera = {"mode": "camera", "transform": {"translate": [0.2, 0, 0]}, "num_steps": 2}
    assert wait_job(client, client.post("/api/jobs", json={"session_id": sid, **camera}).json()["id"])["state"] == "done"
    r = client.post(f"/api/sessions/{sid}/animate", json={**camera, "frames": 2})
    st = wait_job(client, r.json()["id"])
    assert st["state"] == "done", st
    assert st["info"]["reused_inversion"] is True  # the camera render's inversion, not the objects'
    assert st["info"]["edits"][-1]["translate"] == pytest.approx([0.2, 0, 0])
    r = client.post(f"/api/sessions/{sid}/animate", json={**camera, "objects": body["objects"], "frames": 2})
    assert r.status_code == 422 and "objects: expected none in camera mode" in r.json()["detail"]
