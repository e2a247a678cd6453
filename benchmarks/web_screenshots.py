"""Screenshots of the web page after a finished render, for docs/web.md.

Serves the app (the embedded TinyWorld model, its default scene size), opens the page in
headless Chromium (``/usr/bin/chromium``, driven by Playwright) at 1400x950, opens a TinyWorld
scene, moves and turns its first object, renders with the model's default steps, and saves the
window at 1400x950 and the whole page at 390x844 (a phone); then moves the object on and saves
the window with the draft the page renders by itself when the handle pauses
(``web-draft-1400x950.png``). The images are written with a 256-colour palette to keep them small.

Usage: ``python benchmarks/web_screenshots.py [--scene tinyworld-1000024] [--out docs/images]``
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from pathlib import Path


def save(png: bytes, path: Path) -> None:
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    img.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"wrote {path} ({img.width}x{img.height}, {path.stat().st_size // 1024} KB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", default="tinyworld-1000024")
    ap.add_argument("--translate", default="-0.35,0,0", help="tx,ty,tz of the first object (camera axes)")
    ap.add_argument("--turn", type=float, default=35.0, help="degrees about the world's up")
    ap.add_argument("--out", type=Path, default=Path("docs/images"))
    args = ap.parse_args()

    import torch
    import uvicorn
    from playwright.sync_api import sync_playwright

    from diffusion_handles.web.app import WebConfig, create_app

    torch.set_num_threads(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(WebConfig(allowed_hosts=(f"127.0.0.1:{port}",))),
                                          host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                        args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
            page = browser.new_context(viewport={"width": 1400, "height": 950}).new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector('body[data-ready="1"]', timeout=30000)
            page.select_option("#scene-select", args.scene)
            page.click("#scene-open")
            page.wait_for_function("window.__handles.previewCount >= 1 && !window.__handles.previewBusy", timeout=60000)
            for field, value in zip(("tx", "ty", "tz"), args.translate.split(","), strict=True):
                page.fill(f"#{field}", value)
            page.fill("#deg", str(args.turn))
            page.wait_for_timeout(1500)
            t0 = time.time()
            page.click("#render-btn")
            page.wait_for_function("window.__handles.jobsDone >= 1 || !document.querySelector('#error').hidden", timeout=900000)
            print(f"render took {time.time() - t0:.0f} s: {page.inner_text('#progress-text')}")
            page.wait_for_timeout(1000)
            page.mouse.move(5, 5)
            save(page.screenshot(), args.out / "web-1400x950.png")
            page.set_viewport_size({"width": 390, "height": 844})
            page.wait_for_timeout(1000)
            save(page.screenshot(full_page=True), args.out / "web-390x844.png")
            # the cube moved on: the draft the page renders by itself when the handle pauses
            page.set_viewport_size({"width": 1400, "height": 950})
            done = page.evaluate("window.__handles.draftLog.length")
            page.fill("#tx", str(float(args.translate.split(",")[0]) - 0.15))
            page.wait_for_function(f"window.__handles.draftLog.length > {done}", timeout=300000)
            entry = page.evaluate("window.__handles.draftLog.at(-1)")
            print(f"draft shown {entry['seconds_from_pause']:.1f} s after the pause "
                  f"({'inversion reused' if entry['reused_inversion'] else 'inverted'})")
            page.wait_for_timeout(500)
            page.mouse.move(5, 5)
            save(page.screenshot(), args.out / "web-draft-1400x950.png")
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


if __name__ == "__main__":
    main()
