"""Frame times of the page's live preview while the gizmo is dragged (headless Chromium).

Starts the app with uvicorn on a free loopback port, opens the page in Debian's Chromium
(``/usr/bin/chromium``, driven by Playwright), uploads the built-in demo scene at ``--size``
x ``--size`` pixels, presses the mouse on the gizmo and moves it ``--moves`` times, one move per
displayed frame (``window.__handles.probe.drag``), then releases. Reports the page's frame
intervals and splat draw times during the drag (the page waits for the GPU after each draw),
the server preview requests sent during the drag and after it, the idle frame interval, and
the draw times of the splat alone and of the 3D view alone (at full detail, and at the reduced
detail the page draws while a drag lasts). The issue's goal: a median frame of at most 33 ms.

Without a GPU, Chromium renders WebGL in software (SwiftShader): the figures then say how the
page behaves on this machine, not on a desktop with a GPU (``--gpu`` drops ``--disable-gpu``).

Usage: ``python benchmarks/web_drag.py [--size 512] [--moves 120] [--gpu]``
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path


def q(xs: list[float], p: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="scene height and width in pixels (default 512)")
    ap.add_argument("--moves", type=int, default=120, help="mouse moves during the drag, one per frame (default 120)")
    ap.add_argument("--gpu", action="store_true", help="let Chromium use a GPU if it finds one")
    args = ap.parse_args()

    import numpy as np
    import torch
    import uvicorn
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from diffusion_handles.web.app import WebConfig, create_app
    from diffusion_handles.web.scenes import demo_scene

    torch.set_num_threads(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(WebConfig(allowed_hosts=(f"127.0.0.1:{port}",)))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    tmp = Path(tempfile.mkdtemp(prefix="web-drag-"))
    sc = demo_scene(args.size, args.size)
    Image.fromarray(sc.image).save(tmp / "photo.png")
    np.save(tmp / "depth.npy", sc.depth)
    Image.fromarray(sc.masks[0][1].astype(np.uint8) * 255).save(tmp / "mask.png")
    flags = ["--headless", "--no-sandbox", "--no-first-run", "--disable-background-networking"] + ([] if args.gpu else ["--disable-gpu"])
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=flags, headless=True)
            page = browser.new_context(viewport={"width": 1400, "height": 950}).new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector('body[data-ready="1"]', timeout=30000)
            page.click("#upload-details summary")
            for field, name in (("image", "photo.png"), ("depth", "depth.npy"), ("mask", "mask.png")):
                page.set_input_files(f"#upload-{field}", str(tmp / name))
            page.click("#upload-submit")
            page.wait_for_function("window.__handles.previewCount >= 1 && !window.__handles.previewBusy", timeout=60000)
            page.evaluate("window.__handles.live.sync = true; window.__handles.live.resetStats()")
            c = page.evaluate("window.__handles.gizmoScreen()")
            page.mouse.move(c["x"], c["y"])
            page.mouse.down()
            r0 = page.evaluate("window.__handles.previewRequests")
            r = page.evaluate("([x, y, n]) => window.__handles.probe.drag(x, y, n, 1)", [c["x"], c["y"], args.moves])
            n = page.evaluate("window.__handles.previewCount")
            page.mouse.up()
            page.wait_for_function(f"window.__handles.previewCount > {n} && !window.__handles.previewBusy", timeout=60000)
            total = page.evaluate("window.__handles.previewRequests") - r0
            prof = page.evaluate("window.__handles.probe.profile(30)")
            idle = page.evaluate("window.__handles.probe.idleFrames(60)")
            gl = page.evaluate("""() => { const g = document.createElement('canvas').getContext('webgl');
                const e = g && g.getExtension('WEBGL_debug_renderer_info');
                return e ? g.getParameter(e.UNMASKED_RENDERER_WEBGL) : 'unknown'; }""")
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)

    st = r["stats"]
    frames, draws = st["frames"], st["drawMs"]
    print(f"live preview drag, {args.size}x{args.size} demo scene, {args.moves} moves (one per frame), renderer {st['kind']} "
          f"on {gl}")
    print(f"  frame interval during drag: median {statistics.median(frames):6.1f} ms  p95 {q(frames, 0.95):6.1f} ms  "
          f"({len(frames)} frames, {st['draws']} splat draws)")
    print(f"  splat draw in the frame:    median {statistics.median(draws):6.1f} ms  p95 {q(draws, 0.95):6.1f} ms  (waits for the GPU)")
    print(f"  splat draw alone:           median {statistics.median(prof['splat']):6.1f} ms  p95 {q(prof['splat'], 0.95):6.1f} ms")
    print(f"  3D view draw alone:         median {statistics.median(prof['view3d']):6.1f} ms  p95 {q(prof['view3d'], 0.95):6.1f} ms  (full detail)")
    if "view3dDragging" in prof:
        v = prof["view3dDragging"]
        print(f"  3D view draw, gizmo drag:   median {statistics.median(v):6.1f} ms  p95 {q(v, 0.95):6.1f} ms  (half resolution, background drawn once, as a texture)")
        v = prof["view3dOrbiting"]
        print(f"  3D view draw, orbiting:     median {statistics.median(v):6.1f} ms  p95 {q(v, 0.95):6.1f} ms  (a quarter of the points, half the resolution)")
    print(f"  idle frame interval:        median {statistics.median(idle):6.1f} ms")
    print(f"  server preview requests: {r['requests']} during the drag ({st['pauses']} pauses), {total - r['requests']} after it")
    print(json.dumps({"frame_ms_median": statistics.median(frames), "frame_ms_p95": q(frames, 0.95), "frames": len(frames),
                      "requests_during_drag": r["requests"], "requests_after": total - r["requests"]}))


if __name__ == "__main__":
    main()
