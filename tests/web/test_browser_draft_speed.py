"""How soon a draft appears (issue 35): the page on the embedded TinyWorld model (128-px scene,
the model's own size), the cube dragged, the drag paused: the first draft inverts the image
(the draft inversion, cached), the next re-edit reuses it. The test asserts what the page does
(a draft of each position shown, labelled "draft", the second one reusing the inversion) and
records the seconds from the drag's pause to the draft on screen in
``test-artifacts/web/draft-timing.json``; it asserts no time (the machine is shared).

``HANDLES_DRAFT_FULL=1`` also clicks Render for the same edit (after a first full render that
inverts the image at the default settings) and records the full re-edit's seconds beside the
draft's, for docs/web.md. One torch thread, as ``handles serve`` runs by default.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from .test_browser_page import ARTIFACTS, TINYWORLD, drag_gizmo, open_scene

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def web_config(tmp_path_factory):
    """This module's server: the embedded TinyWorld model on 128-px scenes."""
    from diffusion_handles.web.app import WebConfig
    from diffusion_handles.web.render import RenderService
    from diffusion_handles.web.scenes import SceneCatalog

    reason = RenderService("tinyworld").available()
    if reason:
        pytest.skip(reason)
    if not any(s["id"] == TINYWORLD for s in SceneCatalog(size=(128, 128)).list()):
        pytest.skip("TinyWorld scenes need Mitsuba (pip install mitsuba)")
    return WebConfig(model="tinyworld", scene_size=(128, 128), results_dir=tmp_path_factory.mktemp("web-draft-speed"),
                     allowed_hosts=("testserver",))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def draft_after_drag(page, dx: float, after: str, timeout_ms: float) -> dict:
    """Drag the cube by ``dx`` px, let go, and wait for the draft of that position; its log entry."""
    drag_gizmo(page, dx)
    page.wait_for_function(f"""(() => {{ const h = window.__handles, d = h.store.draftResult;
        return d && d.id !== '{after}' && h.draftLog.some(e => e.id === d.id)
            && d.key === h.draftKey() && !document.querySelector('#draft-view').hidden; }})()""",
                           timeout=timeout_ms)
    return page.evaluate("(() => { const h = window.__handles; return h.draftLog.find(e => e.id === h.store.draftResult.id); })()")


def test_a_draft_re_edit_of_a_tinyworld_scene_appears_after_the_drag_pauses(page):
    page.set_default_timeout(60000)
    open_scene(page, TINYWORLD)
    assert page.evaluate("window.__handles.session.width") == 128
    t0 = time.perf_counter()
    first = draft_after_drag(page, -40, "", 300000)  # the model loads, the draft inversion runs
    first_wall = time.perf_counter() - t0
    assert first["reused_inversion"] is False
    second = draft_after_drag(page, -15, first["id"], 120000)  # a re-edit: the inversion is reused
    assert second["reused_inversion"] is True
    assert page.inner_text("#result-tag") == "draft"
    assert page.is_hidden("#error")
    page.screenshot(path=str(ARTIFACTS / "43-tinyworld-draft.png"))
    for e in (first, second):  # the job's own seconds per stage
        e["timings"] = page.evaluate(f"fetch('/api/jobs/{e['id']}').then(r => r.json()).then(j => j.info.timings)")
    record = {"scene": TINYWORLD, "size": 128, "model": "tinyworld", "pause_ms": page.evaluate("window.__handles.draftPauseMs"),
              "first_draft": {**first, "wall_s_from_drag_start": first_wall}, "draft_re_edit": second,
              "load_average": os.getloadavg(), "torch_threads": 1}
    if os.environ.get("HANDLES_DRAFT_FULL") == "1":
        record["full"] = full_renders(page)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "draft-timing.json").write_text(json.dumps(record, indent=2))


def full_renders(page) -> dict:
    """Render (the default preset) twice: the first inverts the image, the second of a moved cube
    reuses the inversion; seconds from the click to the result on screen."""
    out = {}
    for name, dx in (("first_render", 0), ("render_re_edit", -15)):
        if dx:
            drag_gizmo(page, dx)
        last = page.evaluate("window.__handles.lastJob || ''")
        t0 = time.perf_counter()
        page.click("#render-btn")
        page.wait_for_function(f"""(() => {{ const h = window.__handles; return h.lastJob && h.lastJob !== '{last}' && !h.job
            && !document.querySelector('#results').hidden && document.querySelector('#compare-after').complete; }})()""",
                               timeout=600000)
        wall = time.perf_counter() - t0
        st = page.evaluate("fetch('/api/jobs/' + window.__handles.lastJob).then(r => r.json())")
        assert st["state"] == "done", st
        out[name] = {"seconds_from_click": wall, "seconds_job": st["finished"] - st["started"], "timings": st["info"]["timings"],
                     "reused_inversion": st["info"]["reused_inversion"], "fwd_eq": st["info"]["fwd_eq"]}
    return out
