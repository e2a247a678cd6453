"""Time the 3D edit geometry (Sec. 5.1) on this machine.

Stages timed, median of repeated runs after a warm-up:
  * ``geometry``: lift + transform + z-buffered splat + inverse flow (Eq. 5) + M_v + M'_o +
    edited object depth (Eq. 7) -- :func:`compute_edit`;
  * ``feature_flows``: the flow at the two guided decoder resolutions (H/16, H/8);
  * ``background_fill``: classical d'_b (harmonic fill of the object region, sparse solve);
  * ``poisson``: the Poisson composite d' (sparse solve in the seam band);
  * ``total`` = all of the above.

Both wall time and process CPU time are reported: on a shared, busy machine wall time grows
with the load while CPU time (single-threaded with ``--threads 1``) stays comparable.

Usage: ``python benchmarks/geometry_speed.py [--sizes 512 1024] [--repeats 15] [--threads N]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from diffusion_handles.geometry import (
    Camera,
    HandleEdit,
    background_depth_fill,
    compute_edit,
    edited_depth,
)


def scene(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A floor tilting away, a back wall, and a box covering ~6% of the image."""
    ys = torch.arange(n, dtype=torch.float32)[:, None] + 0.5
    inv = (0.12 + 0.5 * (ys / n)).expand(n, n)  # inverse depth of a tilted plane
    depth = (1.0 / inv).clone()[None, None]
    mask = torch.zeros(1, 1, n, n)
    a, b = int(n * 0.4), int(n * 0.65)
    mask[..., a:b, a:b] = 1.0
    depth[mask > 0.5] = depth[mask > 0.5].min() * 0.8
    return depth, mask


def bench(n: int, repeats: int, clock=time.perf_counter) -> dict[str, float]:
    depth, mask = scene(n)
    cam = Camera(n, n)
    edit = HandleEdit((0.3, -0.1, 0.4), (0, 1, 0), 25.0, 1.1)
    times: dict[str, list[float]] = {k: [] for k in ("geometry", "feature_flows", "background_fill", "poisson", "total")}
    for i in range(repeats + 1):
        t0 = clock()
        g = compute_edit(depth, mask, edit, cam)
        t1 = clock()
        g.at_resolution(n // 16, n // 16)
        g.at_resolution(n // 8, n // 8)
        t2 = clock()
        bg = background_depth_fill(depth, mask)
        t3 = clock()
        edited_depth(g, bg)
        t4 = clock()
        if i == 0:
            continue  # warm-up
        for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), strict=True):
            v_ms = v * 1e3
            times[k].append(v_ms)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeats} runs, ms")
    cols = ("geometry", "feature_flows", "background_fill", "poisson", "total")
    print("| size | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for n in args.sizes:
        for name, clock in (("wall", time.perf_counter), ("cpu", time.process_time)):
            r = bench(n, args.repeats, clock)
            print(f"| {n}x{n} {name} | " + " | ".join(f"{r[c]:.1f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
