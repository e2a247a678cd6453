"""The render request's ``preset`` (issue 35): ``"draft"`` runs the library's draft preset
(negative-prompt inversion on a fifth of the steps, one gradient step per guided step), with an
inversion cached apart from the default's and reused by the next draft of the same image;
an unknown preset is a 422 naming the field.

Which bugs this catches: a draft that runs the default settings (as many UNet passes as a full
render), one that reuses the default's inversion (recorded for other steps) or re-inverts every
time, steps that ignore the draft's fifth, and a typo in the preset accepted.
"""

from __future__ import annotations

from .helpers import wait_job


def _render(client, sid, tx, **kw):
    r = client.post("/api/jobs", json={"session_id": sid, "transform": {"translate": [tx, 0, 0]}, **kw})
    assert r.status_code == 202, r.text
    st = wait_job(client, r.json()["id"])
    assert st["state"] == "done", st
    return st


def test_draft_preset_runs_the_drafts_settings_and_reuses_its_own_inversion(client, demo_session):
    sid = demo_session["id"]
    full = _render(client, sid, 0.3, num_steps=10)
    assert full["info"]["preset"] == "default"
    first = _render(client, sid, 0.3, num_steps=10, preset="draft")
    assert first["info"]["preset"] == "draft"
    assert first["info"]["reused_inversion"] is False  # not the default's inversion
    assert {"edited", "effects"} <= set(first["results"])
    # a fifth of the steps: 2 of 10, negative-prompt (inversion 2 + reconstruction 2), 2 guided
    assert first["total"] == 6, first
    assert first["info"]["fwd_eq"] * 5 < full["info"]["fwd_eq"], (first["info"], full["info"])
    again = _render(client, sid, 0.35, num_steps=10, preset="draft")
    assert again["info"]["reused_inversion"] is True and again["total"] == 2, again
    # the server's --steps (3 in the tests) when the request gives none: one draft step
    assert _render(client, sid, 0.4, preset="draft")["total"] == 3


def test_unknown_preset_is_a_422_naming_the_field(client, demo_session):
    r = client.post("/api/jobs", json={"session_id": demo_session["id"], "transform": {}, "preset": "quick"})
    assert r.status_code == 422
    assert "preset" in r.json()["detail"] and "draft" in r.json()["detail"], r.json()
