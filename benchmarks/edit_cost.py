"""Cost of the whole method on the full-size Stable Diffusion 2 depth architecture.

The UNet (866 M parameters), VAE and OpenCLIP-H text encoder are built from SD2-depth's configs
(:func:`diffusion_handles.diffusion.random_models.sd2_depth_configs`) with random weights, so no
download is needed; time and memory do not depend on the weight values. Each configuration runs
in its own child process (clean peak-memory figures) and reports per-stage wall time, process
CPU time, peak memory (resident set on CPU, ``torch.cuda.max_memory_allocated`` on GPU) and the
UNet evaluations per stage (forward = samples through the UNet, backward = backward passes).

Configurations:
  * ``paper``: the paper-faithful one: null-text inversion (up to 5 Adam steps per step), CFG
    7.5, guidance until step 38/50 cycling layer 3 / 2 / both, 3 gradient steps per guided
    step, fp32 everywhere.
  * ``fast``: negative-prompt inversion (no optimisation, one UNet pass per reconstruction
    step), 1 gradient step per guided step, activations recorded in fp16, and fp16 weights on a
    GPU (fp32 on CPU).
  * ``draft``: the draft preset (``--preset draft``, ``config.preset("draft")``) as ``fast``
    (fp16 records, fp16 weights on a GPU) on a fifth of the steps (``config.draft_steps``: 10
    of 50), with the identity transfer, composite, effects and detail keeping of the default.

Each configuration inverts once and edits twice: ``edit`` is the first edit of the inverted
image (it also encodes the input once for the identity transfer and warms the kernels up),
``re-edit`` a second edit of the same inversion with another transform (a drag in the page).

Usage::

    python benchmarks/edit_cost.py --size 256 --steps 50 --device cpu        # this CPU
    python benchmarks/edit_cost.py --size 512 --steps 50 --device cuda       # a GPU
    python benchmarks/edit_cost.py --table benchmarks/results/edit_cost_cpu256.json

``--steps`` smaller than 50 keeps the paper's ratios (guidance until round(38/50 * steps)); the
time of every stage is linear in the number of steps (``draft`` runs ``draft_steps(steps)``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time

CONFIGS = ("paper", "fast", "draft")


def _scene(size: int):
    """A smooth random image, a box in front of a slanted wall (z-depth, metres), and its mask."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    image = F.interpolate(torch.rand(1, 3, size // 16, size // 16, generator=g), size=(size, size),
                          mode="bicubic", align_corners=False).clamp(0, 1)
    rows = torch.linspace(0, 1, size).view(1, 1, size, 1)
    depth = (4.0 - 1.5 * rows).expand(1, 1, size, size).clone()
    lo, hi = size * 3 // 8, size * 5 // 8
    depth[..., lo:hi, lo:hi] = 2.0
    mask = torch.zeros(1, 1, size, size)
    mask[..., lo:hi, lo:hi] = 1.0
    return image, depth, mask


def run_one(name: str, size: int, steps: int, device: str, progress: bool) -> dict:
    import torch

    from diffusion_handles.diffusion import GuidanceConfig, InversionConfig
    from diffusion_handles.diffusion.backbone import Backbone
    from diffusion_handles.diffusion.config import draft_steps, preset
    from diffusion_handles.diffusion.random_models import (
        build_backbone_components,
        sd2_depth_configs,
    )
    from diffusion_handles.geometry import HandleEdit
    from diffusion_handles.pipeline import DiffusionHandles

    cuda = device == "cuda"
    if name == "paper":
        dtype = torch.float32
        inversion = InversionConfig(method="null-text", num_steps=steps)
        guidance = GuidanceConfig()
    elif name == "fast":
        dtype = torch.float16 if cuda else torch.float32
        inversion = InversionConfig(method="negative-prompt", num_steps=steps)
        guidance = GuidanceConfig(grad_steps=1, record_dtype="float16")
    else:
        dtype = torch.float16 if cuda else torch.float32
        inversion, guidance = preset("draft", draft_steps(steps))
        guidance = dataclasses.replace(guidance, record_dtype="float16")

    t0 = time.perf_counter()
    components = build_backbone_components(sd2_depth_configs(), seed=0)
    backbone = Backbone(components, model_id="sd2-depth-architecture-random", device=device, dtype=dtype)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in backbone.unet.parameters())
    dh = DiffusionHandles(backbone)
    image, depth, mask = _scene(size)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    inv = dh.invert(image, "a box in front of a wall", depth, mask, inversion=inversion, guidance=guidance)
    if cuda:
        torch.cuda.synchronize()
        peak_invert = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    cpu1, wall1 = time.process_time(), time.perf_counter()
    out = dh.edit(inv, HandleEdit(translate=(0.15, 0.0, 0.0), rotate_deg=20.0), guidance=guidance)
    if cuda:
        torch.cuda.synchronize()
        peak_edit = torch.cuda.max_memory_allocated() / 2**30
    cpu2, wall2 = time.process_time(), time.perf_counter()
    again = dh.edit(inv, HandleEdit(translate=(0.2, 0.0, 0.05), rotate_deg=25.0), guidance=guidance)
    if cuda:
        torch.cuda.synchronize()
    cpu3, wall3 = time.process_time(), time.perf_counter()
    result = {
        "config": name, "size": size, "steps": inversion.num_steps, "device": device,
        "dtype": str(dtype).replace("torch.", ""),
        "unet_params_M": round(params / 1e6, 1), "build_model_s": build_s, "threads": torch.get_num_threads(),
        "inversion": {"method": inversion.method, "timings_s": inv.timings, "unet_evals": inv.unet_evals,
                      "wall_s": wall1 - wall0, "cpu_s": cpu1 - cpu0,
                      "activation_MiB": inv.activation_bytes / 2**20, "recorded": len(inv.activations)},
        "edit": {"grad_steps": guidance.grad_steps, "guide_until": out.config["guide_until"],
                 "timings_s": out.timings, "unet_evals": out.unet_evals,
                 "wall_s": wall2 - wall1, "cpu_s": cpu2 - cpu1},
        "reedit": {"timings_s": again.timings, "unet_evals": again.unet_evals, "wall_s": wall3 - wall2,
                   "cpu_s": cpu3 - cpu2},
    }
    if cuda:
        result["peak_GiB"] = {"invert": peak_invert, "edit": peak_edit}
        result["gpu"] = torch.cuda.get_device_name()
    else:
        result["peak_GiB"] = {"process_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    return result


def _fmt_evals(evals: dict) -> str:
    fwd = sum(v["forward"] for v in evals.values())
    bwd = sum(v["backward"] for v in evals.values())
    return f"{fwd} / {bwd}"


def table(results: list[dict]) -> str:
    lines = [
        "| config | device, dtype | size | steps | inversion: wall / CPU time, stages (UNet fwd / bwd) | edit: wall / CPU time (UNet fwd / bwd) | re-edit: wall, stages | peak memory |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        inv, ed = r["inversion"], r["edit"]
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in inv["timings_s"].items() if v >= 0.5)
        mem = ", ".join(f"{k} {v:.1f} GiB" for k, v in r["peak_GiB"].items())
        again = r.get("reedit")  # results saved before re-edits were measured have none
        reedit = "-" if again is None else (f"{again['wall_s']:.2f} s (" + ", ".join(
            f"{k} {v:.2f}" for k, v in again["timings_s"].items() if v >= 0.01) + ")")
        lines.append(
            f"| {r['config']} ({inv['method']}, {ed['grad_steps']} grad step{'s' if ed['grad_steps'] != 1 else ''}) "
            f"| {r['device']}, {r['dtype']} | {r['size']} | {r['steps']} (guided {ed['guide_until']}) "
            f"| {inv['wall_s']:.0f} s / {inv['cpu_s']:.0f} s ({stages}; {_fmt_evals(inv['unet_evals'])}) "
            f"| {ed['wall_s']:.1f} s / {ed['cpu_s']:.0f} s ({_fmt_evals(ed['unet_evals'])}) | {reedit} | {mem} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50, the paper's)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    p.add_argument("--json", default=None, help="also write all results to this JSON file")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.add_argument("--table", default=None, metavar="JSON", help="only print the table of a saved --json file")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.table:
        with open(args.table) as f:
            print(table(json.load(f)))
        return 0
    if args._child:
        print("RESULT " + json.dumps(run_one(args._child, args.size, args.steps, args.device, args.progress)), flush=True)
        return 0
    results = []
    for name in args.configs:
        cmd = [sys.executable, os.path.abspath(__file__), "--_child", name, "--size", str(args.size),
               "--steps", str(args.steps), "--device", args.device] + (["--progress"] if args.progress else [])
        print(f"[edit_cost] running {name} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            print(f"[edit_cost] {name} failed with exit code {proc.returncode}", file=sys.stderr)
            return proc.returncode
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
        results.append(json.loads(line[len("RESULT "):]))
        print(json.dumps(results[-1], indent=1), file=sys.stderr, flush=True)
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
