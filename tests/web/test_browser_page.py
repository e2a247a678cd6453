"""The page as a new user meets it (issue 36), in headless Chromium on the tiny model: one owner
of the page's state (a scene switch, a reselection or a job never shows or sends another
scene's data), the layout (side by side from 1280x800, one column on a phone), accessibility
(axe-core, contrast, keyboard), the depth control and the results (input size, zoom, names).

Screenshots go to ``test-artifacts/web/`` (``30-*`` onwards).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"  # same as conftest
AXE = Path(__file__).resolve().parents[2] / "src" / "diffusion_handles" / "web" / "static" / "vendor" / "axe.min.js"
TINYWORLD = "tinyworld-1000024"  # an orange cube and a green sphere, the camera pitched down


# ---------------------------------------------------------------- helpers
def new_page(browser, live_server, width: int, height: int, init_script: str | None = None):
    ctx = browser.new_context(viewport={"width": width, "height": height})
    if init_script:
        ctx.add_init_script(init_script)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(live_server + "/")
    pg.wait_for_selector('body[data-ready="1"]', timeout=30000)
    return ctx, pg, errors


def preview_count(page) -> int:
    return page.evaluate("window.__handles.previewCount")


def wait_preview_after(page, count: int) -> None:
    page.wait_for_function(f"window.__handles.previewCount > {count} && !window.__handles.previewBusy", timeout=30000)


def open_scene(page, scene: str = "demo") -> None:
    n = preview_count(page)
    page.select_option("#scene-select", scene)
    page.click("#scene-open")
    wait_preview_after(page, n)


def set_field(page, field: str, value: float) -> None:
    n = preview_count(page)
    page.fill(f"#{field}", str(value))
    wait_preview_after(page, n)


def run_job(page, button: str) -> None:
    """Click a job button, wait until the job is done on the server and the page is idle again."""
    last = page.evaluate("window.__handles.lastJob || ''")
    page.click(button)
    page.wait_for_function(f"(window.__handles.lastJob || '') !== '{last}' || !document.querySelector('#error').hidden",
                           timeout=30000)
    assert page.is_hidden("#error"), page.inner_text("#error-text")
    deadline = time.time() + 120
    while page.evaluate("fetch('/api/jobs/' + window.__handles.lastJob).then(r => r.json()).then(j => j.state)") \
            not in ("done", "error"):
        assert time.time() < deadline, "the job did not finish in 120 s"
        time.sleep(0.2)
    page.wait_for_function("!window.__handles.job", timeout=30000)
    page.wait_for_timeout(300)  # its images decoded
    assert page.is_hidden("#error"), page.inner_text("#error-text")


def upload(page, tmp_path, *, mask: bool, prompt: str | None = None) -> None:
    from diffusion_handles.web.scenes import demo_scene

    sc = demo_scene(60, 80)
    Image.fromarray(sc.image[:, ::-1].copy()).save(tmp_path / "photo.png")  # not the demo's picture
    np.save(tmp_path / "depth.npy", sc.depth[:, ::-1].copy())
    Image.fromarray(sc.masks[0][1][:, ::-1].astype(np.uint8) * 255).save(tmp_path / "mask.png")
    if not page.evaluate("document.querySelector('#upload-details').open"):
        page.click("#upload-details summary")
    page.set_input_files("#upload-image", str(tmp_path / "photo.png"))
    page.set_input_files("#upload-depth", str(tmp_path / "depth.npy"))
    if mask:
        page.set_input_files("#upload-mask", str(tmp_path / "mask.png"))
    if prompt is not None:
        page.fill("#upload-prompt", prompt)
    before = page.evaluate("window.__handles.session ? window.__handles.session.id : null")
    page.click("#upload-submit")  # then wait for *this* upload's session (a second upload has the same size)
    page.wait_for_function("([before]) => window.__handles.session && window.__handles.session.id !== before"
                           " && window.__handles.session.width === 80", arg=[before], timeout=30000)


def box(page, selector: str) -> dict:
    b = page.locator(selector).bounding_box()
    assert b is not None, f"{selector} is not displayed"
    return b


def in_viewport(page, selector: str) -> bool:
    vp = page.viewport_size
    b = box(page, selector)
    return b["width"] > 0 and b["height"] > 0 and b["x"] >= 0 and b["y"] >= 0 \
        and b["x"] + b["width"] <= vp["width"] + 0.5 and b["y"] + b["height"] <= vp["height"] + 0.5


def axe_violations(page) -> list[dict]:
    """Serious and critical axe-core violations of the page as it is now."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    res = page.evaluate("""async () => {
        const r = await axe.run(document, { resultTypes: ['violations'] });
        return r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
            .map(v => ({ id: v.id, impact: v.impact, nodes: v.nodes.slice(0, 4).map(n => n.target.join(' ')) }));
    }""")
    return res


# ---------------------------------------------------------------- (a)-(e): one owner of the page's state
# A slow server: preview answers are held back 600 ms, so an answer for the last scene lands
# after the next scene is open (as on a busy machine).
SLOW_PREVIEWS = """(() => {
  const f = window.fetch.bind(window);
  window.fetch = async (url, opts) => {
    const r = await f(url, opts);
    if (String(url).endsWith('/preview')) await new Promise((ok) => setTimeout(ok, 600));
    return r;
  };
})();"""


def test_a_upload_after_the_demo_shows_nothing_of_the_demo(browser, live_server, tmp_path):
    ctx, page, errors = new_page(browser, live_server, 1400, 950, SLOW_PREVIEWS)
    try:
        open_scene(page)
        set_field(page, "tx", 0.3)
        upload(page, tmp_path, mask=False)  # no mask: nothing selected, no preview to show
        page.wait_for_timeout(1500)  # any answer still on its way for the demo has landed
        src = page.eval_on_selector("#preview-img", "e => e.getAttribute('src') || ''")
        assert not src.startswith("data:"), "the demo's preview is still shown for the uploaded image"
        status = page.inner_text("#preview-status")
        assert "px" not in status and "select" in status, status
        assert float(page.input_value("#tx")) == 0
        page.screenshot(path=str(ARTIFACTS / "30-upload-after-demo.png"))
    finally:
        ctx.close()
    assert not errors, errors


def test_b_reselecting_an_object_keeps_every_move_and_the_result(page):
    open_scene(page, TINYWORLD)
    assert page.input_value("#mask-select") == "0"  # the cube
    set_field(page, "tx", -0.5)
    n = preview_count(page)
    page.click("#add-object")  # keeps the cube's move, selects the sphere
    wait_preview_after(page, n)
    expect(page.locator("#mask-select")).to_have_value("1")
    set_field(page, "tx", 0.3)
    run_job(page, "#render-btn")
    n = preview_count(page)
    page.select_option("#mask-select", "0")  # back to the cube
    wait_preview_after(page, n)
    expect(page.locator("#tx")).to_have_value("-0.5")
    items = page.locator("#object-list li")
    expect(items).to_have_count(1)
    expect(items.first).to_contain_text("sphere")
    expect(items.first).to_contain_text("0.30")
    assert page.is_visible("#results"), "reselecting an object hid the last result"
    assert page.evaluate("window.__handles.editBody().objects")[0]["transform"]["translate"][0] == pytest.approx(0.3)


def test_c_selection_tools_the_server_lacks_are_not_shown(page):
    modes = page.evaluate("window.__handles.info.selection_modes")
    assert "click" not in modes and "text" not in modes  # no perception weights in the tests
    assert page.is_hidden("#click-mode")
    assert page.is_hidden("#text-form")


def test_d_an_upload_has_its_own_prompt_and_name(page, tmp_path):
    open_scene(page)
    demo_prompt = page.input_value("#prompt")
    assert "orange box" in demo_prompt
    upload(page, tmp_path, mask=True)
    assert page.evaluate("window.__handles.session.prompt") == ""
    assert page.input_value("#prompt") == ""
    label = page.eval_on_selector("#scene-select", "s => s.options[s.selectedIndex].textContent")
    assert "photo.png" in label and "Demo" not in label, label
    # an upload with a prompt of its own
    upload(page, tmp_path, mask=True, prompt="a box seen in a mirror")
    expect(page.locator("#prompt")).to_have_value("a box seen in a mirror")


def test_e_the_result_shows_the_last_job(page):
    open_scene(page)
    run_job(page, "#remove-btn")
    expect(page.locator("#result-title")).to_contain_text("Removal")
    set_field(page, "tx", 0.3)
    page.fill("#anim-frames", "2")
    run_job(page, "#animate-btn")
    expect(page.locator("#result-title")).to_contain_text("Animation")
    assert page.is_visible("#anim-gif")
    assert page.is_hidden("#compare"), "the removal is still shown next to the animation of the move"
    assert "removal" not in page.inner_text("#result-depth-caption").lower() or page.is_hidden("#result-depth")
    # the removal is one click away, and the animation hides then
    page.click("#result-kinds button[data-kind=remove]")
    expect(page.locator("#result-title")).to_contain_text("Removal")
    assert page.is_visible("#compare") and page.is_hidden("#anim-gif")
    assert page.get_attribute("#result-kinds button[data-kind=remove]", "aria-pressed") == "true"


# ---------------------------------------------------------------- layout
def test_layout_side_by_side_and_one_column_on_a_phone(browser, live_server):
    ctx, page, errors = new_page(browser, live_server, 1280, 800)
    try:
        # before a scene is open: no broken images anywhere
        broken = page.evaluate("""[...document.images].filter(i => i.getClientRects().length && !i.closest('[hidden]')
            && getComputedStyle(i).visibility !== 'hidden' && (!i.getAttribute('src') || !i.naturalWidth)).map(i => i.id)""")
        assert not broken, f"broken or empty images shown before a scene is open: {broken}"
        open_scene(page, TINYWORLD)
        set_field(page, "tx", 0.3)
        run_job(page, "#render-btn")
        for w, h in ((1280, 800), (1400, 950)):
            page.set_viewport_size({"width": w, "height": h})
            page.wait_for_timeout(200)
            assert page.evaluate("window.scrollY") == 0
            for sel in ("#view3d", "#input-img", "#preview-img", "#compare", "#tx", "#scale", "#render-btn",
                        "#cancel-btn", "#progress"):
                assert in_viewport(page, sel), f"{sel} is not visible without scrolling at {w}x{h}: {box(page, sel)}"
            a, b, c = box(page, "#input-img"), box(page, "#preview-img"), box(page, "#compare")
            assert a["x"] + a["width"] <= b["x"] + 1 and b["x"] + b["width"] <= c["x"] + 1, (a, b, c)  # side by side
            assert abs(a["y"] - b["y"]) < 40 and abs(b["y"] - c["y"]) < 80, (a, b, c)
        page.screenshot(path=str(ARTIFACTS / "31-layout-1400x950.png"))
        page.set_viewport_size({"width": 390, "height": 844})
        page.wait_for_timeout(300)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, "horizontal overflow at 390 px"
        v = box(page, "#view3d")
        assert v["height"] >= 200 and v["width"] >= 300, v
        xs = [box(page, s)["x"] for s in ("#controls", "#view3d", "#compare")]
        assert max(xs) - min(xs) < 30, f"not one column: {xs}"
        page.screenshot(path=str(ARTIFACTS / "32-layout-390x844.png"), full_page=True)
    finally:
        ctx.close()
    assert not errors, errors


# ---------------------------------------------------------------- accessibility
CONTRAST_JS = """() => {
  // contrast of each visible control's edge (border, or its own background where it has no
  // border) against what is behind it, and of text against its background
  const rgb = (s) => { const m = s.match(/[\\d.]+/g).map(Number); return { c: m.slice(0, 3), a: m.length > 3 ? m[3] : 1 }; };
  const lum = (c) => { const f = c.map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * f[0] + 0.7152 * f[1] + 0.0722 * f[2]; };
  const ratio = (a, b) => { const x = lum(a), y = lum(b); return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05); };
  const behind = (el) => { for (let e = el.parentElement; e; e = e.parentElement) {
      const b = rgb(getComputedStyle(e).backgroundColor); if (b.a > 0.5) return b.c; } return [255, 255, 255]; };
  const out = [];
  for (const el of document.querySelectorAll('input:not([type=file]):not([type=range]):not([type=checkbox]), select, textarea, button')) {
    if (!el.getClientRects().length || el.disabled) continue;
    const cs = getComputedStyle(el), back = behind(el), bg = rgb(cs.backgroundColor);
    const edge = parseFloat(cs.borderTopWidth) > 0 ? rgb(cs.borderTopColor).c : bg.c;
    const own = bg.a > 0.5 ? bg.c : back;
    out.push({ id: el.id || el.textContent.trim().slice(0, 20), edge: ratio(edge, back), text: ratio(rgb(cs.color).c, own) });
  }
  return out;
}"""


def test_accessibility(page):
    assert not axe_violations(page), axe_violations(page)
    open_scene(page)
    v = axe_violations(page)
    assert not v, v
    for c in page.evaluate(CONTRAST_JS):
        assert c["edge"] >= 3 and c["text"] >= 4.5, f"control contrast below 3:1 (text 4.5:1): {c}"
    # toggles say whether they are on
    for group in (("#edit-object", "#edit-camera"), ("#mode-translate", "#mode-rotate", "#mode-scale")):
        assert [page.get_attribute(s, "aria-pressed") for s in group][0] == "true"
        page.click(group[1])
        assert [page.get_attribute(s, "aria-pressed") for s in group] == ["false", "true"] + ["false"] * (len(group) - 2)
        page.click(group[0])
    # a named progress bar; status and errors in live regions
    assert page.evaluate("(() => { const p = document.querySelector('[role=progressbar]');"
                         " return p && (p.getAttribute('aria-label') || p.getAttribute('aria-labelledby')) })()")
    for sel in ("#progress-text", "#preview-status"):
        assert page.evaluate(f"document.querySelector('{sel}').closest('[aria-live],[role=status],[role=alert]') !== null"), sel
    assert page.evaluate("document.querySelector('#error').closest('[aria-live],[role=alert]') !== null")
    # the 3D view takes focus, and arrow keys move the object
    page.focus("#view3d canvas")
    assert page.evaluate("document.activeElement === document.querySelector('#view3d canvas')")
    n = preview_count(page)
    page.keyboard.press("ArrowRight")
    wait_preview_after(page, n)
    assert float(page.input_value("#tx")) > 0
    n = preview_count(page)
    page.keyboard.press("ArrowUp")
    wait_preview_after(page, n)
    assert float(page.input_value("#ty")) < 0  # up on screen is -y in camera axes
    run_job(page, "#render-btn")
    v = axe_violations(page)
    assert not v, v
    page.screenshot(path=str(ARTIFACTS / "33-accessible-render.png"))


# ---------------------------------------------------------------- depth control
def drag_depth(page, dy: float, shift: bool = False) -> None:
    b = box(page, "#depth-pad")
    x, y = b["x"] + b["width"] / 2, b["y"] + b["height"] / 2
    n = preview_count(page)
    if shift:
        page.keyboard.down("Shift")
    page.mouse.move(x, y)
    page.mouse.down()
    for k in range(1, 11):
        page.mouse.move(x, y + dy * k / 10)
    page.mouse.up()
    if shift:
        page.keyboard.up("Shift")
    wait_preview_after(page, n)


def drag_gizmo(page, dx: float, shift: bool = False) -> None:
    c = page.evaluate("window.__handles.gizmoScreen()")
    n = preview_count(page)
    page.mouse.move(c["x"], c["y"])
    page.mouse.down()
    if shift:
        page.keyboard.down("Shift")
    for k in range(1, 11):
        page.mouse.move(c["x"] + dx * k / 10, c["y"])
    page.mouse.up()
    if shift:
        page.keyboard.up("Shift")
    wait_preview_after(page, n)


def test_depth_control_and_turn_about_the_world_up(page):
    open_scene(page, TINYWORLD)
    # the default turn is about the world's up (the floor's normal), not the pitched camera's y
    axis = np.array([float(page.input_value(f"#{f}")) for f in ("ax", "ay", "az")])
    tilt = np.degrees(np.arccos(abs(axis[1]) / np.linalg.norm(axis)))
    assert 8 < tilt < 40, f"turn axis {axis} is {tilt:.1f} degrees from the camera's y"
    n = preview_count(page)
    page.fill("#deg", "30")
    wait_preview_after(page, n)
    assert "error" not in page.get_attribute("#preview-status", "class")
    page.click("#reset-transform")
    page.wait_for_timeout(100)
    # Shift: fine moves with the gizmo too
    drag_gizmo(page, 60)
    coarse = float(page.input_value("#tx"))
    page.click("#reset-transform")
    drag_gizmo(page, 60, shift=True)
    fine = float(page.input_value("#tx"))
    assert 0 < fine < 0.25 * coarse, (coarse, fine)
    page.click("#reset-transform")
    page.wait_for_timeout(100)

    z0 = -page.evaluate("window.__handles.cloud.pivot[2]")  # the object's depth
    assert page.is_visible("#depth-pad") and in_viewport(page, "#depth-pad")
    drag_depth(page, -60)  # up: farther
    tz = float(page.input_value("#tz"))
    assert 0.05 * z0 < tz < 0.6 * z0, f"a 60-px drag up moved the object {tz} deep (object at depth {z0})"
    drag_depth(page, -60, shift=True)  # fine
    fine = float(page.input_value("#tz")) - tz
    assert 0 < fine < 0.25 * tz, (tz, fine)
    drag_depth(page, 900)  # far down: the object stops in front of the camera
    tz = float(page.input_value("#tz"))
    assert tz > -z0, tz
    assert "behind" not in page.inner_text("#preview-status")
    assert page.is_hidden("#transform-error")
    # from the photo's viewpoint the gizmo has no arrow pointing at the viewer: near its centre
    # the mouse finds the centre handle (moves in the view plane) or the x / y arrows, never z
    c = page.evaluate("window.__handles.gizmoScreen()")
    seen = set()
    for dx in range(-14, 15, 2):
        for dy in range(-14, 15, 2):
            page.mouse.move(c["x"] + dx, c["y"] + dy)
            seen.add(page.evaluate("window.__handles.three.gizmo.axis"))
    assert "Z" not in seen and "XYZ" in seen, seen
    # a typed depth behind the camera: the error stands next to the fields, on screen
    page.fill("#tz", str(-3 * z0))
    page.wait_for_selector("#transform-error:not([hidden])", timeout=30000)
    assert "behind the camera" in page.inner_text("#transform-error")
    assert in_viewport(page, "#transform-error")
    page.screenshot(path=str(ARTIFACTS / "34-depth-error.png"))


# ---------------------------------------------------------------- results
def test_results_at_the_input_size_with_zoom_and_named_downloads(page):
    open_scene(page)
    set_field(page, "tx", 0.4)
    set_field(page, "deg", 25)
    run_job(page, "#render-btn")
    page.wait_for_function("document.querySelector('#compare-after').naturalWidth > 0", timeout=10000)
    inp, out = box(page, "#input-img"), box(page, "#compare-after")
    assert abs(inp["width"] - out["width"]) <= 2 and abs(inp["height"] - out["height"]) <= 2, (inp, out)
    page.click("#zoom-2")
    page.wait_for_timeout(100)
    z = box(page, "#compare-after")
    assert abs(z["width"] - 2 * inp["width"]) <= 3, (inp, z)
    assert page.get_attribute("#zoom-2", "aria-pressed") == "true"
    page.click("#zoom-1")
    names = page.eval_on_selector_all("#downloads a", "as => as.map(a => a.getAttribute('download'))")
    assert "demo_translate-0.4_0_0_rotate-25.png" in names, names
    assert all(re.fullmatch(r"demo_translate-0\.4_0_0_rotate-25(_[a-z_]+)?\.(png|npy)", n) for n in names), names
    # an animation is shown at the result's size, and named the same way
    page.fill("#anim-frames", "2")
    run_job(page, "#animate-btn")
    page.wait_for_function("document.querySelector('#anim-gif').naturalWidth > 0", timeout=10000)
    g = box(page, "#anim-gif")
    assert abs(g["width"] - inp["width"]) <= 2 and abs(g["height"] - inp["height"]) <= 2, (inp, g)
    assert page.get_attribute("#anim-gif-link", "download") == "demo_translate-0.4_0_0_rotate-25.gif"


def test_cancel_a_render(page):
    open_scene(page)
    assert page.is_disabled("#cancel-btn")  # nothing to cancel
    page.fill("#steps", "200")
    page.click("#render-btn")
    page.wait_for_function("window.__handles.job && document.querySelector('#progress-text').textContent.includes('/')",
                           timeout=60000)  # running: "stage i/n, ..."
    assert in_viewport(page, "#cancel-btn") and page.is_enabled("#cancel-btn")
    page.click("#cancel-btn")
    page.wait_for_function("!window.__handles.job", timeout=60000)
    expect(page.locator("#progress-text")).to_contain_text("cancelled")
    assert page.is_hidden("#results") and page.is_hidden("#error")
    expect(page.locator("#render-btn")).to_be_enabled()
    expect(page.locator("#cancel-btn")).to_be_disabled()
