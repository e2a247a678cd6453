"""Restyle renders over the JSON API (issue 39): ``POST /api/jobs`` with ``restyle`` (and
optionally ``restyle_words``) reaches ``DiffusionHandles.edit``; the job's info says what ran
(the new look, the words replaced, the generation's prompt); a restyle the edit cannot take is
a one-line 422 at submit naming the field.

Which bugs this catches: a ``restyle`` accepted by the schema but never passed to the library;
the selected object's words not found in a scene's caption (so a two-object TinyWorld caption
could not be restyled without typing the words); a camera move, several objects, words not in
the prompt or a removal accepted and failing later (or silently ignored).
"""

from __future__ import annotations

import pytest

from diffusion_handles.web.routes.jobs import object_words

from .helpers import wait_job

DEMO_PROMPT = "an orange box on a checkered floor in front of a grey wall"  # the demo scene's caption, mask "orange box"


def test_object_words_find_the_selected_objects_phrase():
    caption = "an orange cube and a green striped sphere on a wooden floor by a grey wall"
    assert object_words(caption, "orange cube") == "an orange cube"
    assert object_words(caption, "green striped sphere") == "a green striped sphere"
    assert object_words("the orange cube sits on a floor", "orange cube") == "orange cube"  # in the prompt, no phrase
    assert object_words(caption, "blue cone") is None
    assert object_words(caption, None) is None


def test_a_restyle_render_reaches_the_library_and_its_info_says_so(client, demo_session, monkeypatch):
    from diffusion_handles.pipeline import DiffusionHandles

    assert demo_session["prompt"] == DEMO_PROMPT and demo_session["masks"][0]["name"] == "orange box"
    calls, real_edit = [], DiffusionHandles.edit

    def spy(self, inverted, transform, **kw):
        calls.append(kw)
        return real_edit(self, inverted, transform, **kw)

    monkeypatch.setattr(DiffusionHandles, "edit", spy)
    body = {"session_id": demo_session["id"], "transform": {"translate": [0.3, 0, 0]}, "num_steps": 2,
            "restyle": "a red striped box"}
    r = client.post("/api/jobs", json=body)
    assert r.status_code == 202, r.text
    st = wait_job(client, r.json()["id"])
    assert st["state"] == "done", st
    assert calls[-1]["restyle"] == "a red striped box"
    assert calls[-1]["restyle_words"] == "an orange box"  # the selected object's phrase of the caption
    info = st["info"]
    assert info["restyle"] == "a red striped box" and info["restyle_words"] == "an orange box"
    assert info["generation_prompt"] == "a red striped box on a checkered floor in front of a grey wall"
    assert client.get(st["results"]["edited"]).status_code == 200
    # words given: taken as they are; a render without restyle reports none and the prompt itself
    st = wait_job(client, client.post("/api/jobs", json={**body, "restyle_words": "orange box"}).json()["id"])
    assert st["state"] == "done" and calls[-1]["restyle_words"] == "orange box"
    assert st["info"]["generation_prompt"] == "an a red striped box on a checkered floor in front of a grey wall"
    plain = {k: v for k, v in body.items() if k != "restyle"}
    st = wait_job(client, client.post("/api/jobs", json=plain).json()["id"])
    assert st["state"] == "done" and "restyle" not in calls[-1]
    assert st["info"]["restyle"] is None and st["info"]["generation_prompt"] == DEMO_PROMPT


@pytest.mark.parametrize("extra, match", [
    ({"restyle": ""}, "restyle: expected the object's new description"),
    ({"restyle": "a red box", "restyle_words": "a blue cup"}, "restyle_words: expected words that occur in the prompt"),
    ({"restyle_words": "an orange box"}, "restyle_words: expected restyle with it"),
    ({"restyle": "a red box", "mode": "camera"}, "restyle: expected a one-object edit, got mode 'camera'"),
    ({"restyle": "a red box", "objects": [{"mask": 1, "transform": {}}]}, "restyle: expected a one-object edit, got 2 objects"),
    ({"restyle": "x" * 201}, "restyle: String should have at most 200 characters"),
])
def test_a_restyle_the_edit_cannot_take_is_refused_at_submit(client, demo_session, extra, match):
    body = {"session_id": demo_session["id"], "transform": {"translate": [0.3, 0, 0]}, "num_steps": 2, **extra}
    r = client.post("/api/jobs", json=body)
    assert r.status_code == 422 and match in r.json()["detail"], r.text
    assert "\n" not in r.json()["detail"]


def test_a_removal_takes_no_restyle(client, demo_session):
    r = client.post(f"/api/sessions/{demo_session['id']}/remove", json={"num_steps": 2, "restyle": "a red box"})
    assert r.status_code == 422 and r.json()["detail"].startswith("restyle: "), r.text
