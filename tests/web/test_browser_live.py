"""The live preview in headless Chromium: while the gizmo is dragged the page draws the moved
object itself (WebGL splat of its lifted points) every frame and asks the server only when the
drag pauses or ends.

Frame times are recorded by the page (``window.__handles.live.stats``) and written to
``test-artifacts/web/live-drag.json``; Chromium here renders WebGL in software (SwiftShader),
so only behaviour is asserted, never a time.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .helpers import data_url_pixels

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
SIZE = 512  # the session image, as in the frame-time figure


def upload_scene(page, tmp_path, size: int) -> None:
    from diffusion_handles.web.scenes import demo_scene

    sc = demo_scene(size, size)
    Image.fromarray(sc.image).save(tmp_path / "photo.png")
    np.save(tmp_path / "depth.npy", sc.depth)
    Image.fromarray(sc.masks[0][1].astype(np.uint8) * 255).save(tmp_path / "mask.png")
    page.click("#upload-details summary")
    page.set_input_files("#upload-image", str(tmp_path / "photo.png"))
    page.set_input_files("#upload-depth", str(tmp_path / "depth.npy"))
    page.set_input_files("#upload-mask", str(tmp_path / "mask.png"))
    page.click("#upload-submit")
    page.wait_for_function("window.__handles.previewCount >= 1 && !window.__handles.previewBusy", timeout=60000)
    assert page.evaluate("[window.__handles.session.width, window.__handles.session.height]") == [size, size]


def quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def drag_and_measure(page, moves: int = 60, step_px: float = 2.0) -> dict:
    """Press the mouse on the gizmo's centre handle, move right ``moves`` times (one move per
    frame, ``window.__handles.probe.drag``), release; return the page's frame statistics during
    the drag, the preview requests sent before the button was released and in all, and the last
    splat drawn."""
    page.evaluate("window.__handles.live.sync = true; window.__handles.live.resetStats()")
    c = page.evaluate("window.__handles.gizmoScreen()")
    page.mouse.move(c["x"], c["y"])
    page.mouse.down()
    requests0 = page.evaluate("window.__handles.previewRequests")
    r = page.evaluate("([x, y, n, d]) => window.__handles.probe.drag(x, y, n, d)", [c["x"], c["y"], moves, step_px])
    n = page.evaluate("window.__handles.previewCount")
    page.mouse.up()
    page.wait_for_function(f"window.__handles.previewCount > {n} && !window.__handles.previewBusy", timeout=60000)
    return {"stats": r["stats"], "requests_during_drag": r["requests"], "splat": r["splat"], "splat_visible_during_drag": r["visible"],
            "requests_total": page.evaluate("window.__handles.previewRequests") - requests0}


def summary(stats: dict) -> dict:
    frames, draws = stats["frames"], stats["drawMs"]
    return {"renderer": stats["kind"], "frames": len(frames), "draws": stats["draws"], "pauses": stats["pauses"],
            "frame_ms_median": statistics.median(frames) if frames else None,
            "frame_ms_p95": quantile(frames, 0.95) if frames else None,
            "draw_ms_median": statistics.median(draws) if draws else None,
            "draw_ms_p95": quantile(draws, 0.95) if draws else None}


def test_drag_draws_the_object_every_frame_and_asks_the_server_when_it_pauses(page, tmp_path):
    upload_scene(page, tmp_path, SIZE)
    before = data_url_pixels(page.eval_on_selector("#preview-img", "e => e.src"))
    out = drag_and_measure(page)
    st = out["stats"]
    assert st["kind"] in ("webgl2", "webgl", "2d"), st["kind"]
    assert out["splat_visible_during_drag"]
    assert st["draws"] >= 10, st  # drawn in the page during the drag
    assert len(st["frames"]) >= 10, st
    assert out["requests_during_drag"] <= st["pauses"], out  # a request only when the drag paused
    assert out["requests_total"] - out["requests_during_drag"] <= 1  # one more when the drag ends

    # after the drag the exact preview replaces the splat, which showed nearly the same picture
    page.wait_for_function("document.getElementById('splat-canvas').hidden", timeout=10000)
    exact = data_url_pixels(page.eval_on_selector("#preview-img", "e => e.src"))
    splat = data_url_pixels(out["splat"])
    assert splat.shape == exact.shape == (SIZE, SIZE, 3)
    Image.fromarray(splat.astype(np.uint8)).save(ARTIFACTS / "10-live-splat.png")
    Image.fromarray(exact.astype(np.uint8)).save(ARTIFACTS / "11-live-exact.png")
    moved = (np.abs(exact - before).sum(-1) > 30)
    assert moved.mean() > 0.01, "the drag should move the object"
    agree = (np.abs(splat - exact).sum(-1) <= 60)
    assert agree.mean() > 0.9, f"splat and exact preview agree on {agree.mean():.1%} of the pixels"
    assert agree[moved].mean() > 0.6, f"... and on {agree[moved].mean():.1%} of the pixels the edit changed"

    prof = page.evaluate("window.__handles.probe.profile(20)")
    idle = page.evaluate("window.__handles.probe.idleFrames(30)")
    result = {"image": f"{SIZE}x{SIZE}", "moves": 60, **summary(st), "requests_during_drag": out["requests_during_drag"],
              "requests_total": out["requests_total"], "idle_frame_ms_median": statistics.median(idle),
              "splat_alone_ms_median": statistics.median(prof["splat"]), "view3d_alone_ms_median": statistics.median(prof["view3d"])}
    (ARTIFACTS / "live-drag.json").write_text(json.dumps(result, indent=2))
    print("live drag:", json.dumps(result))


FALLBACKS_JS = """async (dx) => {
    // the same splat drawn by each renderer: a canvas that already has a WebGL1 or 2D context
    // makes the Splat fall back to it
    const { Splat } = await import('/static/splat.js');
    const h = window.__handles, s = h.session, p = h.cloud.pivot;
    const load = (u) => { const i = new Image(); i.src = u; return i.decode().then(() => i); };
    const [img, mask] = await Promise.all([load(s.image_url), load(s.mask_url)]);
    const moved = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, p[0] + dx, p[1], p[2], 1];  // translate by dx (x right)
    const out = {};
    for (const pre of ['webgl2', 'webgl', '2d']) {
        const c = document.createElement('canvas');
        if (pre !== 'webgl2') c.getContext(pre);
        const sp = new Splat(c);
        sp.setScene(img, mask, h.cloud, s.width, s.height);
        sp.draw(moved, 1, true);
        out[pre] = { kind: sp.kind, url: c.toDataURL('image/png') };
    }
    return out;
}"""


def test_webgl1_and_2d_fallbacks_draw_the_same_splat(page):
    page.select_option("#scene-select", "demo")  # the small built-in scene: one sample per pixel
    page.click("#scene-open")
    page.wait_for_function("window.__handles.previewCount >= 1 && !window.__handles.previewBusy", timeout=30000)
    n = page.evaluate("window.__handles.previewCount")
    page.fill("#tx", "0.3")
    page.wait_for_function(f"window.__handles.previewCount > {n} && !window.__handles.previewBusy", timeout=30000)
    exact = data_url_pixels(page.eval_on_selector("#preview-img", "e => e.src"))
    out = page.evaluate(FALLBACKS_JS, 0.3)
    for kind, r in out.items():
        assert r["kind"] == kind
        splat = data_url_pixels(r["url"])
        assert splat.shape == exact.shape
        agree = (np.abs(splat - exact).sum(-1) <= 60).mean()
        assert agree > 0.9, f"{kind}: splat and exact preview agree on {agree:.1%} of the pixels"


COUNT_VIEW3D_JS = """() => {
    // count the 3D view's draws on screen and the points each one draws (three.js resets its
    // counters per draw); draws into a texture (the background kept during a drag) count apart
    const r = window.__handles.three.renderer, rec = { draws: 0, points: [], offscreen: 0 };
    const draw = r.render.bind(r);
    r.render = (scene, camera) => {
        const screen = r.getRenderTarget() === null;
        draw(scene, camera);
        if (!screen) { rec.offscreen += 1; return; }
        rec.draws += 1;
        rec.points.push(r.info.render.points);
    };
    window.__view3d = rec;
}"""


def test_the_3d_view_redraws_only_on_change_and_lighter_while_dragging(page, tmp_path):
    upload_scene(page, tmp_path, SIZE)
    full = page.evaluate("window.__handles.cloud.count")
    c = page.evaluate("window.__handles.gizmoScreen()")
    page.mouse.move(c["x"], c["y"])  # hovering highlights the handle: one redraw, before the drag
    page.evaluate("window.__handles.probe.idleFrames(5)")
    page.evaluate(COUNT_VIEW3D_JS)
    page.evaluate("window.__handles.probe.idleFrames(20)")
    assert page.evaluate("window.__view3d.draws") == 0, "the 3D view is redrawn while nothing changes"
    out = drag_and_measure(page, moves=40)
    rec = page.evaluate("window.__view3d")
    frames = len(out["stats"]["frames"])
    assert 3 <= rec["draws"] <= frames + 3, (rec["draws"], frames)  # at most one draw per frame
    assert rec["offscreen"] <= 1, rec["offscreen"]  # the background: once per drag at most
    during = rec["points"][:-1]
    assert max(during) <= full / 3, f"the 3D view drew {max(during)} of {full} points while dragging"
    page.evaluate("window.__handles.probe.idleFrames(5)")
    rec = page.evaluate("window.__view3d")
    assert rec["points"][-1] >= 0.9 * full, "the 3D view stays at reduced detail after the drag"
    result = {"image": f"{SIZE}x{SIZE}", "moves": 40, **summary(out["stats"]), "view3d_draws": rec["draws"],
              "view3d_offscreen_draws": rec["offscreen"],
              "view3d_points_dragging": max(during), "view3d_points_full": full}
    (ARTIFACTS / "live-drag-lod.json").write_text(json.dumps(result, indent=2))
    print("live drag (3D view at reduced detail):", json.dumps(result))
