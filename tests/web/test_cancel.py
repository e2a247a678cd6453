"""Cancelling jobs through the JSON API: a running render stops at the end of the step during
which it was cancelled and ends ``cancelled`` without results (and without caching a partial
inversion); a queued job never runs; unknown ids are 404, ended jobs are left as they are.

Which bugs this catches: a cancel that waits for the whole render, leaves result files or a
cached half inversion behind, or marks the job failed.
"""

from __future__ import annotations

import threading

import pytest

from .helpers import wait_job


@pytest.fixture
def paused(monkeypatch):
    """Job progress recorded; the first job to report ``done == pause_at`` steps waits (inside
    that step, in the worker) until the test says ``go``."""
    from diffusion_handles.web.jobs import Job

    report = Job.report
    state = {"pause_at": 2, "seen": [], "reached": threading.Event(), "go": threading.Event()}

    def recording(self, stage, step, steps, message="", **kw):
        report(self, stage, step, steps, message, **kw)
        state["seen"].append((self.id, stage, step, steps, kw.get("done")))
        if kw.get("done") == state["pause_at"] and not state["reached"].is_set():
            state["reached"].set()
            assert state["go"].wait(60), "the test never let the job go on"

    monkeypatch.setattr(Job, "report", recording)
    yield state
    state["go"].set()


def _render(client, sid, **kw):
    body = {"session_id": sid, "transform": {"translate": [0.3, 0, 0]}, "num_steps": 4, **kw}
    r = client.post("/api/jobs", json=body)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_cancel_a_running_render_stops_within_one_step(client, demo_session, paused):
    sid = demo_session["id"]
    jid = _render(client, sid)
    assert paused["reached"].wait(120)  # in the inversion's second step
    r = client.post(f"/api/jobs/{jid}/cancel")
    assert r.status_code == 200, r.text
    st = r.json()
    assert st["state"] == "running" and st["cancel_requested"] is True
    paused["go"].set()
    st = wait_job(client, jid)
    assert st["state"] == "cancelled" and st["stage"] == "cancelled", st
    assert st["message"] == "cancelled during inversion 2/4" and st["error"] is None
    assert st["results"] == {} and st["fraction"] < 1
    steps = [done for j, *_, done in paused["seen"] if j == jid and done]
    assert max(steps) == 2  # no step after the one during which it was cancelled
    assert client.get(f"/api/jobs/{jid}/results/edited").status_code == 404
    again = wait_job(client, _render(client, sid))  # nothing of the cancelled inversion was cached
    assert again["state"] == "done" and again["info"]["reused_inversion"] is False


def test_cancel_a_queued_job_before_it_runs(client, demo_session, paused):
    sid = demo_session["id"]
    first = _render(client, sid)
    assert paused["reached"].wait(120)
    second = _render(client, sid, seed=1)
    st = client.post(f"/api/jobs/{second}/cancel").json()
    assert st["state"] == "cancelled" and st["message"] == "cancelled before it started"
    paused["go"].set()
    assert wait_job(client, first)["state"] == "done"
    st = client.get(f"/api/jobs/{second}").json()
    assert st["state"] == "cancelled" and st["started"] is None
    assert not [s for s in paused["seen"] if s[0] == second]  # it never ran


def test_cancel_an_animation_between_frames(client, demo_session, paused):
    sid = demo_session["id"]
    transform = {"translate": [0.3, 0, 0]}
    paused["pause_at"] = -1  # the render runs through
    assert wait_job(client, _render(client, sid, num_steps=2))["state"] == "done"
    paused["pause_at"] = 3  # its inversion is reused: frame 2's first step
    r = client.post(f"/api/sessions/{sid}/animate", json={"transform": transform, "frames": 3, "num_steps": 2})
    assert r.status_code == 202, r.text
    jid = r.json()["id"]
    assert paused["reached"].wait(120)
    client.post(f"/api/jobs/{jid}/cancel")
    paused["go"].set()
    st = wait_job(client, jid)
    assert st["state"] == "cancelled" and st["message"] == "cancelled during frame 2/3: guided generation 1/2", st
    assert st["results"] == {}


def test_cancel_unknown_and_ended_jobs(client, demo_session):
    r = client.post("/api/jobs/nope/cancel")
    assert r.status_code == 404 and "no job" in r.json()["detail"]
    jid = _render(client, demo_session["id"], num_steps=1)
    done = wait_job(client, jid)
    assert done["state"] == "done"
    st = client.post(f"/api/jobs/{jid}/cancel").json()
    assert st["state"] == "done" and st["cancel_requested"] is False and st["results"] == done["results"]
