"""Time the web app's preview request end to end (HTTP, JSON, geometry, PNG encoding).

Starts the app with uvicorn on a free loopback port (one torch thread, as ``handles serve``
does by default), opens the built-in demo scene at ``--size`` x ``--size`` pixels and sends
``--repeats`` preview requests with different translations, one at a time (the exact preview
the page asks for when a drag pauses or ends). Reports the median and 90th percentile of the client-side
round trip and the server's own stage timings.

Usage: ``python benchmarks/web_preview.py [--size 256] [--repeats 30] [--threads 1]``

The page itself draws the moved object while the gizmo is dragged and sends a preview request
only when the drag pauses: ``benchmarks/web_drag.py`` measures its frame times in Chromium.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256, help="scene height and width in pixels (default 256)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as handles serve)")
    ap.add_argument("--with-depth", action="store_true", help="also composite the edited depth (Poisson)")
    args = ap.parse_args()

    import httpx
    import torch
    import uvicorn

    from diffusion_handles.web.app import WebConfig, create_app

    torch.set_num_threads(args.threads)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(WebConfig(scene_size=(args.size, args.size)))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=60) as c:
            sid = c.post("/api/sessions/scene", json={"scene": "demo"}).raise_for_status().json()["id"]
            body = lambda i: {"transform": {"translate": [0.02 * (i % 20), -0.01 * (i % 7), 0.0],  # noqa: E731
                                            "rotate_axis": [0, 1, 0], "rotate_deg": 2.0 * (i % 10)},
                              "with_depth": args.with_depth}
            for i in range(3):  # warm-up
                c.post(f"/api/sessions/{sid}/preview", json=body(i)).raise_for_status()
            round_trip, server_ms, geometry_ms = [], [], []
            for i in range(args.repeats):
                t0 = time.perf_counter()
                r = c.post(f"/api/sessions/{sid}/preview", json=body(i)).raise_for_status().json()
                round_trip.append((time.perf_counter() - t0) * 1e3)
                server_ms.append(r["timings_ms"]["server_total"])
                geometry_ms.append(r["timings_ms"]["total"])
    finally:
        server.should_exit = True
        thread.join(timeout=10)

    def q(xs, p):
        return sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]

    print(f"preview request, {args.size}x{args.size} demo scene, {args.repeats} requests, torch threads {args.threads}, "
          f"with_depth={args.with_depth}")
    print(f"  round trip (client):  median {statistics.median(round_trip):7.1f} ms   p90 {q(round_trip, 0.9):7.1f} ms")
    print(f"  server handler:       median {statistics.median(server_ms):7.1f} ms   p90 {q(server_ms, 0.9):7.1f} ms")
    print(f"  preview_edit():       median {statistics.median(geometry_ms):7.1f} ms   p90 {q(geometry_ms, 0.9):7.1f} ms")


if __name__ == "__main__":
    main()
