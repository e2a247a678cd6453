"""The page's restyle (issue 39) in headless Chromium on the embedded TinyWorld model: a TinyWorld
scene, the cube moved, a new look typed in the "New look" field, one render (the fewest steps the
server takes, auto draft off): the render request carries the new look, the server's answer says
what ran (the new look, the caption's words it replaced, the generation's prompt), the result
panel says the restyle applied and the result image is there. No serious or critical axe-core
violation with the field on the page and the restyled result shown.

Screenshot: ``test-artifacts/web/50-restyle-tinyworld.png``.
"""

from __future__ import annotations

import pytest

from .test_browser_page import ARTIFACTS, TINYWORLD, axe_violations, open_scene, run_job, set_field

pytestmark = pytest.mark.browser

NEW_LOOK = "a blue striped cube"


@pytest.fixture(scope="module")
def web_config(tmp_path_factory):
    """This module's server: the embedded TinyWorld model on 128-px scenes (its own size)."""
    from diffusion_handles.web.app import WebConfig
    from diffusion_handles.web.render import RenderService
    from diffusion_handles.web.scenes import SceneCatalog

    reason = RenderService("tinyworld").available()
    if reason:
        pytest.skip(reason)
    if not any(s["id"] == TINYWORLD for s in SceneCatalog(size=(128, 128)).list()):
        pytest.skip("TinyWorld scenes need Mitsuba (pip install mitsuba)")
    return WebConfig(model="tinyworld", scene_size=(128, 128), results_dir=tmp_path_factory.mktemp("web-restyle"),
                     allowed_hosts=("testserver",))


def test_a_restyle_render_of_a_tinyworld_scene(page):
    page.set_default_timeout(60000)
    open_scene(page, TINYWORLD)
    caption = page.input_value("#prompt")
    assert caption.startswith("an orange dotted cube and a green checkered sphere on "), caption
    page.click("#auto-draft")  # one render, no drafts beside it
    assert page.get_attribute("#auto-draft", "aria-pressed") == "false"
    page.fill("#steps", "1")  # the fewest steps the server takes
    set_field(page, "tx", -0.3)
    page.fill("#restyle", NEW_LOOK)
    assert page.is_visible("#restyle") and page.is_enabled("#restyle") and page.is_visible("#restyle-words")
    with page.expect_request(lambda r: r.url.endswith("/api/jobs") and r.method == "POST") as sent:
        run_job(page, "#render-btn")
    body = sent.value.post_data_json
    assert body["restyle"] == NEW_LOOK and "restyle_words" not in body and body["num_steps"] == 1
    status = page.evaluate("fetch('/api/jobs/' + window.__handles.lastJob).then(r => r.json())")
    assert status["state"] == "done", status
    info = status["info"]
    assert info["restyle"] == NEW_LOOK and info["restyle_words"] == "an orange dotted cube"
    assert info["generation_prompt"] == NEW_LOOK + caption[len("an orange dotted cube"):]
    shown = page.inner_text("#result-restyle")
    assert page.is_visible("#result-restyle") and "New look applied" in shown and NEW_LOOK in shown, shown
    assert NEW_LOOK in page.inner_text("#result-title")
    edited = status["results"]["edited"]
    assert page.evaluate(f"fetch('{edited}').then(r => r.status)") == 200
    assert page.get_attribute("#compare-after", "src") == edited
    assert page.evaluate("document.querySelector('#compare-after').naturalWidth") > 0
    v = axe_violations(page)
    assert not v, v
    page.screenshot(path=str(ARTIFACTS / "50-restyle-tinyworld.png"))
