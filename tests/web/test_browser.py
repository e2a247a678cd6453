"""The page in headless Chromium: open the demo scene, move the object with the gizmo and the
number fields, watch the preview change, render on a tiny model, and see every error.

Screenshots go to ``test-artifacts/web/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from playwright.sync_api import expect

from diffusion_handles.geometry import HandleEdit

from .helpers import preview_pixels

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"  # same as conftest
SCENE_SIZE = (48, 64)  # WebConfig.scene_size of the conftest


def preview_count(page) -> int:
    return page.evaluate("window.__handles.previewCount")


def wait_preview_after(page, count: int) -> None:
    page.wait_for_function(f"window.__handles.previewCount > {count} && !window.__handles.previewBusy", timeout=30000)


def grab_handle(page, axis: str, direction: tuple[int, int]) -> tuple[float, float]:
    """Hover outwards from the gizmo's centre along ``direction`` and return the farthest point
    (client pixels) where the gizmo highlights ``axis`` (e.g. "XYZ": the centre handle)."""
    c = page.evaluate("window.__handles.gizmoScreen()")
    hits = []
    for r in range(0, 80, 2):
        x, y = c["x"] + direction[0] * r, c["y"] + direction[1] * r
        page.mouse.move(x, y)
        if page.evaluate("window.__handles.three.gizmo.axis") == axis:
            hits.append((x, y))
        elif hits:
            break
    assert hits, f"no {axis} handle found from the gizmo centre towards {direction}"
    page.mouse.move(*hits[-1])
    return hits[-1]


def open_demo(page) -> None:
    page.select_option("#scene-select", "demo")
    page.click("#scene-open")
    page.wait_for_function("window.__handles.previewCount >= 1 && !window.__handles.previewBusy", timeout=30000)


def changed_fraction(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.abs(a - b).sum(-1) > 30).mean())


def test_open_select_move_with_gizmo_and_fields_then_render(page):
    open_demo(page)
    assert page.input_value("#mask-select") == "0"  # the scene's object is selected
    assert page.evaluate("window.__handles.three !== null"), "the 3D view did not start (WebGL)"
    page.screenshot(path=str(ARTIFACTS / "01-demo-loaded.png"))
    before = preview_pixels(page)
    assert before.shape == (*SCENE_SIZE, 3)

    # drag the gizmo's centre handle to the right (translation in the view plane)
    n = preview_count(page)
    c = page.evaluate("window.__handles.gizmoScreen()")
    page.mouse.move(c["x"], c["y"])
    page.mouse.down()
    for k in range(1, 11):
        page.mouse.move(c["x"] + 8 * k, c["y"], steps=2)
    page.mouse.up()
    wait_preview_after(page, n)
    tx = float(page.input_value("#tx"))
    assert tx > 0.05, f"dragging right should move the object along +x, got tx={tx}"
    dragged = preview_pixels(page)
    assert changed_fraction(before, dragged) > 0.02
    page.screenshot(path=str(ARTIFACTS / "02-gizmo-dragged.png"))

    # scale mode: drag the centre box outwards (uniform scale); rotate mode: drag the free ring
    for mode, axis, direction, move in [("scale", "XYZ", (1, -1), (3, -3)), ("rotate", "XYZE", (1, 0), (0, 6))]:
        n = preview_count(page)
        page.click(f"#mode-{mode}")
        x, y = grab_handle(page, axis, direction)
        page.mouse.down()
        for k in range(1, 9):
            page.mouse.move(x + move[0] * k, y + move[1] * k, steps=2)
        page.mouse.up()
        wait_preview_after(page, n)
        assert "error" not in page.get_attribute("#preview-status", "class")
    assert 1.05 < float(page.input_value("#scale")) <= 20
    assert abs(float(page.input_value("#deg"))) > 1
    assert float(page.input_value("#tx")) == pytest.approx(tx, abs=1e-3)  # untouched by scale/rotate
    page.screenshot(path=str(ARTIFACTS / "03-gizmo-scaled-rotated.png"))

    # number fields drive the preview and the gizmo
    page.click("#reset-transform")
    page.fill("#tx", str(tx))
    n = preview_count(page)
    page.fill("#scale", "1.4")
    wait_preview_after(page, n)
    assert page.evaluate("window.__handles.three.handle.scale.x") == pytest.approx(1.4)
    scaled = preview_pixels(page)
    assert changed_fraction(dragged, scaled) > 0.01
    page.screenshot(path=str(ARTIFACTS / "04-fields-scaled.png"))

    # full render on the tiny model: progress reaches 100 %, before/after and depth shown
    page.click("#render-btn")
    page.wait_for_selector("#results:not([hidden])", timeout=90000)
    assert page.get_attribute("#progress", "aria-valuenow") == "100"
    assert "done" in page.inner_text("#progress-text")
    page.wait_for_function("document.querySelector('#compare-after').naturalWidth > 0 && "
                           "document.querySelector('#result-depth').naturalWidth > 0", timeout=10000)
    page.fill("#compare-range", "30")
    page.dispatch_event("#compare-range", "input")
    assert "30%" in page.eval_on_selector("#compare-after-wrap", "e => e.style.clipPath")
    links = dict(page.eval_on_selector_all("#downloads a", "as => as.map(a => [a.href.split('/').pop(), a.download])"))
    assert {"edited", "edited_depth", "edited_depth_npy"} <= set(links)
    base = links["edited"].removesuffix(".png")  # named after the scene and the edit
    assert base.startswith("demo_translate-") and "_scale-1.4" in base, base
    assert links["edited_depth"] == f"{base}_edited_depth.png" and links["edited_depth_npy"] == f"{base}_edited_depth.npy"
    assert page.is_hidden("#error")
    page.screenshot(path=str(ARTIFACTS / "05-render-done.png"), full_page=True)


def test_errors_are_shown_in_the_page(page, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the live server runs in this process
    open_demo(page)
    n = preview_count(page)
    page.fill("#tz", "-20")  # behind the camera
    page.wait_for_function("document.querySelector('#preview-status').classList.contains('error')", timeout=30000)
    assert "behind the camera" in page.inner_text("#preview-status")
    assert preview_count(page) == n  # the last good preview stays
    page.screenshot(path=str(ARTIFACTS / "06-impossible-edit.png"))

    # the render button refuses the impossible edit with the server's message
    page.click("#render-btn")
    page.wait_for_selector("#error:not([hidden])", timeout=30000)
    assert "behind the camera" in page.inner_text("#error-text")
    assert "failed" in page.inner_text("#progress-text")

    # a non-image upload: 415 shown in the error box
    bogus = tmp_path / "notes.png"
    bogus.write_text("this is not an image")
    page.click("#upload-details summary")
    page.set_input_files("#upload-image", str(bogus))
    page.click("#upload-submit")
    page.wait_for_function("document.querySelector('#error-text').textContent.includes('415')", timeout=30000)
    assert "image:" in page.inner_text("#error-text")
    page.screenshot(path=str(ARTIFACTS / "07-bad-upload.png"))

    # click selection without SAM weights (offline): the reason and the way out are shown
    if page.is_visible("#click-mode"):
        page.check("#click-toggle")
        page.click("#input-img", position={"x": 30, "y": 30})
        page.wait_for_function("document.querySelector('#error-text').textContent.includes('click selection')", timeout=60000)
        assert "upload a mask" in page.inner_text("#error-text")
        assert page.inner_text("#preview-status").startswith("failed: click selection")  # no stale "working…"
        page.screenshot(path=str(ARTIFACTS / "07b-click-offline.png"))


def test_mask_upload_selects_a_new_object(page, tmp_path):
    open_demo(page)
    h, w = SCENE_SIZE
    mask = np.zeros((h, w), np.uint8)
    mask[h // 2 + 4:, w // 2 + 6:] = 255  # a patch of floor on the right
    path = tmp_path / "mask.png"
    Image.fromarray(mask).save(path)
    n = preview_count(page)
    page.set_input_files("#mask-file", str(path))
    wait_preview_after(page, n)
    options = page.eval_on_selector_all("#mask-select option", "os => os.map(o => o.textContent)")
    assert len(options) == 2 and options[1].startswith("uploaded mask")
    assert page.input_value("#mask-select") == "1"
    assert page.evaluate("window.__handles.three.object.geometry.attributes.position.count") == int((mask > 0).sum())
    n = preview_count(page)
    page.fill("#ty", "-0.3")  # lift the floor patch
    wait_preview_after(page, n)
    page.screenshot(path=str(ARTIFACTS / "08-mask-upload.png"))


def test_upload_image_depth_and_mask_in_the_form(page, tmp_path):
    from diffusion_handles.web.scenes import demo_scene

    sc = demo_scene(60, 80)
    Image.fromarray(sc.image).save(tmp_path / "photo.png")
    np.save(tmp_path / "depth.npy", sc.depth)
    Image.fromarray(sc.masks[0][1].astype(np.uint8) * 255).save(tmp_path / "mask.png")
    page.click("#upload-details summary")
    page.set_input_files("#upload-image", str(tmp_path / "photo.png"))
    page.set_input_files("#upload-depth", str(tmp_path / "depth.npy"))
    page.set_input_files("#upload-mask", str(tmp_path / "mask.png"))
    page.fill("#upload-prompt", "a box on a floor")  # the upload's own caption
    page.click("#upload-submit")
    page.wait_for_function("window.__handles.previewCount >= 1 && !window.__handles.previewBusy", timeout=30000)
    assert page.evaluate("[window.__handles.session.width, window.__handles.session.height]") == [80, 60]
    assert page.input_value("#prompt") == "a box on a floor"
    assert np.abs(preview_pixels(page) - sc.image.astype(int)).max() <= 1  # identity preview = the photo
    n = preview_count(page)
    page.fill("#deg", "35")
    wait_preview_after(page, n)
    assert changed_fraction(sc.image.astype(int), preview_pixels(page)) > 0.01
    assert page.is_hidden("#error")
    page.screenshot(path=str(ARTIFACTS / "09-upload-rotate.png"))


def test_gizmo_pose_conversion_matches_handle_edit(page):
    """convert.js (three.js axes, y up, z to the viewer) against the Python HandleEdit (camera axes)."""
    poses = page.evaluate(
        """async () => {
            const T = await import('/static/vendor/three.bundle.min.js');
            const C = await import('/static/convert.js');
            const out = [];
            let seed = 7;
            const rnd = () => { seed = (seed * 16807) % 2147483647; return seed / 2147483647 - 0.5; };
            for (let k = 0; k < 12; k++) {
                const pivot = [rnd(), rnd(), -4 + rnd()];
                const g = new T.Group();
                g.position.set(pivot[0] + rnd(), pivot[1] + rnd(), pivot[2] + rnd());
                g.quaternion.setFromAxisAngle(new T.Vector3(rnd(), rnd(), rnd()).normalize(), 6 * rnd());
                g.scale.setScalar(1 + rnd());
                g.updateMatrixWorld(true);
                const pts = [];
                for (let i = 0; i < 5; i++) {
                    const local = [rnd(), rnd(), rnd()];  // offset from the pivot, three.js axes
                    const world = new T.Vector3(...local).applyMatrix4(g.matrixWorld).toArray();
                    pts.push({ start: [pivot[0] + local[0], pivot[1] + local[1], pivot[2] + local[2]], end: world });
                }
                const edit = C.editFromPose(pivot, g.position.toArray(), g.quaternion.toArray(), g.scale.x);
                const back = C.poseFromEdit(pivot, edit);
                out.push({ pivot, pts, edit, back, position: g.position.toArray(), quaternion: g.quaternion.toArray() });
            }
            return out;
        }"""
    )
    flip = np.array([1.0, -1.0, -1.0])
    for p in poses:
        e = p["edit"]
        edit = HandleEdit(tuple(e["translate"]), tuple(e["rotate_axis"]), e["rotate_deg"], e["scale"])
        assert 0 <= e["rotate_deg"] <= 180
        sim = edit.resolve(torch.tensor(p["pivot"], dtype=torch.float64) * torch.tensor(flip))
        start = torch.tensor([q["start"] for q in p["pts"]], dtype=torch.float64) * torch.tensor(flip)
        moved = sim.apply(start).numpy() * flip  # back to three.js axes
        np.testing.assert_allclose(moved, [q["end"] for q in p["pts"]], atol=1e-6)
        np.testing.assert_allclose(p["back"]["position"], p["position"], atol=1e-9)
        q, qb = np.array(p["quaternion"]), np.array(p["back"]["quaternion"])
        assert min(np.abs(q - qb).max(), np.abs(q + qb).max()) < 1e-9  # same rotation (q ~ -q)


def test_animate_after_a_render_shows_a_gif(page):
    open_demo(page)
    page.fill("#tx", "0.4")
    page.fill("#deg", "25")
    page.click("#render-btn")
    page.wait_for_selector("#results:not([hidden])", timeout=90000)
    assert page.is_visible("#animate-btn") and page.input_value("#anim-frames") == "8"
    page.fill("#anim-frames", "3")
    page.click("#animate-btn")
    page.wait_for_selector("#anim-result:not([hidden])", timeout=90000)
    assert page.get_attribute("#progress", "aria-valuenow") == "100"
    page.wait_for_function("document.querySelector('#anim-gif').naturalWidth >= 256", timeout=10000)
    expect(page.locator("#anim-info")).to_contain_text("3 frames")
    expect(page.locator("#anim-info")).to_contain_text("reused")
    assert page.get_attribute("#anim-mp4", "href").endswith("/results/mp4")
    assert page.is_hidden("#error")
    page.screenshot(path=str(ARTIFACTS / "12-animation.png"), full_page=True)

    page.fill("#anim-frames", "1")  # refused by the server with its reason, shown in the page
    page.click("#animate-btn")
    page.wait_for_selector("#error:not([hidden])", timeout=30000)
    assert "frames" in page.inner_text("#error-text") and "422" in page.inner_text("#error-text")
