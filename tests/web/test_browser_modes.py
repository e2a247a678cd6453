"""The page's camera mode, several objects in one render, and Remove, in headless Chromium on
the tiny model (32 px renders). Screenshots go to ``test-artifacts/web/``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from .helpers import preview_pixels

pytestmark = pytest.mark.browser


ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"  # same as conftest
SCENE_SIZE = (48, 64)  # WebConfig.scene_size of the conftest


def preview_count(page) -> int:
    return page.evaluate("window.__handles.previewCount")


def wait_preview_after(page, count: int) -> None:
    page.wait_for_function(f"window.__handles.previewCount > {count} && !window.__handles.previewBusy", timeout=30000)


def open_demo(page) -> None:
    page.select_option("#scene-select", "demo")
    page.click("#scene-open")
    page.wait_for_function("window.__handles.previewCount >= 1 && !window.__handles.previewBusy", timeout=30000)


def magenta(px: np.ndarray) -> np.ndarray:
    return (px[..., 0] > 200) & (px[..., 1] < 60) & (px[..., 2] > 200)


def render_and_wait(page, button: str = "#render-btn") -> dict:
    page.click(button)
    page.wait_for_selector("#results:not([hidden])", timeout=90000)
    assert page.get_attribute("#progress", "aria-valuenow") == "100"
    assert page.is_hidden("#error")
    page.wait_for_function("document.querySelector('#compare-after').naturalWidth > 0", timeout=10000)
    return page.evaluate("fetch('/api/jobs/' + window.__handles.lastJob).then(r => r.json())")


def test_camera_mode_drag_and_render(page):
    open_demo(page)
    before = preview_pixels(page)
    page.click("#edit-camera")
    assert page.evaluate("window.__handles.three.gizmo.object === window.__handles.three.rig")
    for sel in ("#scale", "#remove-btn", "#add-object"):
        expect(page.locator(sel)).to_be_disabled()
    expect(page.locator("#render-btn")).to_have_text("Render camera move")

    n = preview_count(page)
    c = page.evaluate("window.__handles.gizmoScreen()")
    page.mouse.move(c["x"], c["y"])
    page.mouse.down()
    for k in range(1, 11):
        page.mouse.move(c["x"] + 8 * k, c["y"], steps=2)
    page.mouse.up()
    wait_preview_after(page, n)
    moved = [float(page.input_value(f"#{f}")) for f in ("tx", "ty", "tz")]
    assert max(abs(v) for v in moved) > 0.05, moved
    expect(page.locator("#preview-status")).to_contain_text("camera move")
    assert page.is_hidden("#splat-canvas")  # no live drawing in camera mode
    after = preview_pixels(page)
    assert magenta(after).any() and (np.abs(after - before).sum(-1) > 30).mean() > 0.05
    page.screenshot(path=str(ARTIFACTS / "20-camera-dragged.png"))

    st = render_and_wait(page)
    assert st["info"]["mode"] == "camera"
    page.screenshot(path=str(ARTIFACTS / "21-camera-render.png"), full_page=True)

    # back to object mode: the object's own transform, the gizmo on the object again
    page.click("#edit-object")
    assert page.evaluate("window.__handles.three.gizmo.object === window.__handles.three.handle")
    expect(page.locator("#scale")).to_be_enabled()
    assert float(page.input_value("#tx")) == 0


def test_two_objects_one_render(page, tmp_path):
    open_demo(page)
    n = preview_count(page)
    page.fill("#tx", "0.3")
    wait_preview_after(page, n)
    page.click("#add-object")  # only one object so far: kept, and the page asks for another
    expect(page.locator("#object-list li")).to_have_count(1)  # auto-waits: the page updates asynchronously
    expect(page.locator("#objects-hint")).to_contain_text("select another object")

    h, w = SCENE_SIZE
    mask = np.zeros((h, w), np.uint8)
    mask[2:12, 40:56] = 255  # a patch of the back wall
    Image.fromarray(mask).save(tmp_path / "wall.png")
    n = preview_count(page)
    page.set_input_files("#mask-file", str(tmp_path / "wall.png"))
    wait_preview_after(page, n)
    expect(page.locator("#mask-select")).to_have_value("1")
    assert float(page.input_value("#tx")) == 0
    expect(page.locator("#object-list")).to_contain_text("orange box")
    n = preview_count(page)
    page.fill("#ty", "0.5")
    wait_preview_after(page, n)
    expect(page.locator("#preview-status")).to_contain_text("2 object(s)")
    expect(page.locator("#render-btn")).to_have_text("Render 2 objects")
    expect(page.locator("#animate-note")).to_contain_text("the 2 objects")
    page.screenshot(path=str(ARTIFACTS / "22-two-objects.png"))

    st = render_and_wait(page)
    assert st["info"]["mode"] == "object" and st["info"]["objects"] == 2
    # the animation moves both objects, each along its own track, from the render's inversion
    page.fill("#anim-frames", "2")
    page.click("#animate-btn")
    page.wait_for_selector("#anim-result:not([hidden])", timeout=90000)
    expect(page.locator("#anim-info")).to_contain_text("reused")
    anim = page.evaluate("fetch('/api/jobs/' + window.__handles.lastJob).then(r => r.json())")
    last = anim["info"]["edits"][-1]
    assert [e["translate"] for e in last] == [pytest.approx([0, 0.5, 0]), pytest.approx([0.3, 0, 0])], last

    # selecting the kept box again takes it out of the list with its move, and keeps the wall
    # patch's move in its place; the × drops an entry
    n = preview_count(page)
    page.select_option("#mask-select", "0")
    wait_preview_after(page, n)
    page.wait_for_function("parseFloat(document.querySelector('#tx').value) === 0.3", timeout=30000)
    expect(page.locator("#object-list li")).to_have_count(1)
    expect(page.locator("#object-list li")).to_contain_text("uploaded mask")
    expect(page.locator("#render-btn")).to_have_text("Render 2 objects")
    page.click("#object-list li button")
    expect(page.locator("#object-list li")).to_have_count(0)
    expect(page.locator("#render-btn")).to_have_text("Render")


def test_remove_object(page):
    open_demo(page)
    page.fill("#prompt", "a checkered floor in front of a grey wall")
    st = render_and_wait(page, "#remove-btn")
    assert st["info"]["mode"] == "remove"
    assert page.inner_text("#result-depth-caption").startswith("background depth")
    links = dict(page.eval_on_selector_all("#downloads a", "as => as.map(a => [a.href.split('/').pop(), a.download])"))
    assert links["edited"] == "demo_remove-orange-box.png" and links["region"] == "demo_remove-orange-box_region.png", links
    page.screenshot(path=str(ARTIFACTS / "23-removed.png"), full_page=True)
