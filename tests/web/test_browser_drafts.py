"""Drafts, progress and the effects overlay in the page (issues 35 and 33), in headless Chromium on
the tiny model: when the handle pauses the page renders a draft (preset "draft") by itself, shows
it over the result box labelled "draft" and cancels it when the handle moves again; the
progress line is the job's own message and a cancelled job resets the bar; a render's effects
region can be tinted over the result.

Screenshots go to ``test-artifacts/web/`` (``40-*``).
"""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
from playwright.sync_api import expect

from .helpers import png_bytes
from .test_browser_page import (
    ARTIFACTS,
    axe_violations,
    box,
    drag_gizmo,
    open_scene,
    run_job,
    set_field,
)

pytestmark = pytest.mark.browser


def job(page, jid: str) -> dict:
    return page.evaluate(f"fetch('/api/jobs/{jid}').then(r => r.json())")


def wait_draft_shown(page, after: str = "", timeout: float = 120000) -> dict:
    """Wait until a draft other than ``after`` is drawn over the result box; its log entry."""
    page.wait_for_function(f"""(() => {{ const h = window.__handles, d = h.store.draftResult;
        return d && d.id !== '{after}' && h.draftLog.some(e => e.id === d.id)
            && !document.querySelector('#draft-view').hidden; }})()""", timeout=timeout)
    return page.evaluate("(() => { const h = window.__handles; return h.draftLog.find(e => e.id === h.store.draftResult.id); })()")


@pytest.fixture
def held(monkeypatch):
    """The first job to finish its first step waits there (in the server's worker thread: the live
    server runs in this process) until the test sets ``go``: a draft still running when the
    handle moves, however fast the machine."""
    from diffusion_handles.web.jobs import Job

    report = Job.report
    state = {"reached": threading.Event(), "go": threading.Event(), "job": None}

    def holding(self, stage, step, steps, message="", **kw):
        report(self, stage, step, steps, message, **kw)
        if kw.get("done") == 1 and state["job"] in (None, self.id):
            state["job"] = self.id
            state["reached"].set()
            assert state["go"].wait(60), "the test never let the job go on"

    monkeypatch.setattr(Job, "report", holding)
    yield state
    state["go"].set()


def test_a_draft_starts_when_the_drag_pauses_and_is_cancelled_when_it_moves_again(page, held):
    open_scene(page)
    assert page.evaluate("window.__handles.store.draft") is None
    drag_gizmo(page, 50)
    assert held["reached"].wait(60), "no draft started after the drag paused"
    first = held["job"]
    assert page.evaluate("window.__handles.store.draft.id") == first
    assert job(page, first)["state"] == "running"
    expect(page.locator("#render-btn")).to_be_enabled()  # a draft does not hold the page's job slot
    assert page.evaluate("window.__handles.job") is None
    drag_gizmo(page, 40)  # the handle moves again: the first draft is cancelled
    page.wait_for_function(f"fetch('/api/jobs/{first}').then(r => r.json()).then(j => j.cancel_requested)", timeout=30000)
    held["go"].set()  # it stops at the end of the step it is in
    page.wait_for_function(f"fetch('/api/jobs/{first}').then(r => r.json()).then(j => j.state === 'cancelled')",
                           timeout=60000)
    assert first in page.evaluate("window.__handles.drafts.cancelled")
    entry = wait_draft_shown(page, after=first)
    second = page.evaluate("window.__handles.store.draftResult.id")
    assert second != first
    assert page.evaluate("window.__handles.store.draftResult.key === window.__handles.draftKey()")  # this position's
    st = job(page, second)
    assert st["state"] == "done" and st["info"]["preset"] == "draft", st
    assert job(page, first)["state"] == "cancelled"
    expect(page.locator("#result-tag")).to_have_text("draft")
    expect(page.locator("#draft-status")).to_contain_text("draft ready")
    assert page.evaluate("document.querySelector('#draft-img').naturalWidth") > 0
    assert page.evaluate("document.querySelector('#draft-img').src").endswith(f"/api/jobs/{second}/results/edited")
    a, b = box(page, "#preview-img"), box(page, "#draft-img")  # next to the preview, at its size
    assert a["x"] + a["width"] <= b["x"] + 1 and abs(a["width"] - b["width"]) <= 2, (a, b)
    assert entry["seconds_from_pause"] > 0
    assert page.is_hidden("#error") and page.is_hidden("#results")  # no full render was asked
    assert not axe_violations(page)
    page.screenshot(path=str(ARTIFACTS / "40-draft-shown.png"))

    # the draft of an earlier edit is dimmed once the handle moves; Render runs the full quality
    set_field(page, "tx", 0.2)
    expect(page.locator("#result-tag")).to_contain_text("earlier edit")
    run_job(page, "#render-btn")
    st = job(page, page.evaluate("window.__handles.lastJob"))
    assert st["info"]["preset"] == "default", st["info"]
    expect(page.locator("#result-tag")).to_have_text("result")
    assert page.is_hidden("#draft-view") and page.is_visible("#compare")
    # the draft of that position, if one ran meanwhile, was cancelled by Render (the worker is free)
    assert page.evaluate("window.__handles.store.draft") is None
    # the last draft is one click away
    page.click("#draft-toggle")
    assert page.is_visible("#draft-view")
    page.click("#draft-toggle")
    assert page.is_hidden("#draft-view")


def test_auto_draft_switch_and_no_draft_for_an_unmoved_object(page):
    open_scene(page)
    page.wait_for_timeout(900)  # an open scene (nothing moved) starts no draft
    assert page.evaluate("window.__handles.store.draft") is None and not page.evaluate("window.__handles.draftLog.length")
    page.click("#auto-draft")
    assert page.get_attribute("#auto-draft", "aria-pressed") == "false"
    set_field(page, "tx", 0.3)
    page.wait_for_timeout(900)
    assert page.evaluate("window.__handles.store.draft") is None and not page.evaluate("window.__handles.draftLog.length")
    page.click("#auto-draft")  # back on: a draft of the current edit
    wait_draft_shown(page)
    assert page.evaluate("window.__handles.store.draftResult.body.transform.translate[0]") == pytest.approx(0.3)


def test_progress_shows_the_message_and_a_cancelled_job_resets_the_bar(page):
    open_scene(page)
    page.fill("#steps", "200")
    page.click("#render-btn")
    page.wait_for_function(r"/\d+\/\d+/.test(document.querySelector('#progress-text').textContent)", timeout=60000)
    text = page.inner_text("#progress-text")
    assert re.search(r"render: (inversion|null-text|reconstruction|guided generation|ddim inversion)\b.*\d+/200", text, re.I), text
    assert "step" not in text and " of " not in text, text  # not the old "stage: step N of total"
    page.wait_for_function("/left|elapsed/.test(document.querySelector('#progress-text').textContent)", timeout=60000)
    assert int(page.get_attribute("#progress", "aria-valuenow")) < 100
    page.click("#cancel-btn")
    page.wait_for_function("!window.__handles.job", timeout=60000)
    expect(page.locator("#progress-text")).to_contain_text("cancelled")
    assert page.get_attribute("#progress", "aria-valuenow") == "0"
    assert page.evaluate("document.querySelector('#progress-fill').style.width") == "0%"
    assert page.is_hidden("#error") and page.is_hidden("#results")
    page.screenshot(path=str(ARTIFACTS / "41-cancelled.png"))


def test_effects_region_overlay_after_a_render(page):
    open_scene(page)
    page.click("#auto-draft")  # this test is about the full render
    # the tiny model's 24x32 renders find no shadow: the page is given a known region (the left
    # half white) in place of the render's effects_region.png, to check where the tint lands
    region = np.zeros((24, 32), np.uint8)
    region[:, :16] = 255
    page.route(re.compile(r".*/results/effects$"),
               lambda route: route.fulfill(status=200, content_type="image/png", body=png_bytes(region)))
    set_field(page, "tx", 0.4)
    run_job(page, "#render-btn")
    st = job(page, page.evaluate("window.__handles.lastJob"))
    assert "effects" in st["results"] and "light_direction" in st["info"], st  # the server's own
    expect(page.locator("#effects-toggle")).to_be_visible()
    assert page.get_attribute("#effects-toggle", "aria-pressed") == "false"
    assert page.is_hidden("#effects-overlay")
    page.click("#effects-toggle")
    page.wait_for_function("document.querySelector('#effects-overlay').dataset.src !== undefined", timeout=10000)
    assert page.get_attribute("#effects-toggle", "aria-pressed") == "true"
    assert page.is_visible("#effects-overlay")
    o, r = box(page, "#effects-overlay"), box(page, "#compare-after")
    assert all(abs(o[k] - r[k]) <= 1 for k in ("x", "y", "width", "height")), (o, r)  # over the result
    alpha = np.array(page.evaluate("""(() => { const c = document.querySelector('#effects-overlay');
        const a = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const out = []; for (let y = 0; y < c.height; y++) { const row = [];
          for (let x = 0; x < c.width; x++) row.push(a[4 * (y * c.width + x) + 3]); out.push(row); } return out; })()"""))
    assert alpha.shape == region.shape
    assert (alpha[:, :16] > 100).all() and (alpha[:, 16:] == 0).all(), alpha  # tinted where the region is white
    expect(page.locator("#effects-note")).to_contain_text("effects region: 384 px")
    assert not axe_violations(page)
    page.screenshot(path=str(ARTIFACTS / "42-effects-overlay.png"))
    page.click("#effects-toggle")
    assert page.is_hidden("#effects-overlay")
    assert page.get_attribute("#effects-toggle", "aria-pressed") == "false"
