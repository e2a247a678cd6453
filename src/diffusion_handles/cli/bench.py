"""``handles bench``: the ground-truth benchmark (Table 2 metrics, baselines, Fig. 8 ablations)."""

from __future__ import annotations

import argparse

_BENCH_SEED0 = 1_000_500  # = diffusion_handles.bench.cases.BENCH_SEED0 (not imported: keep --help fast)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark every method on random TinyWorld edits with rendered ground truth",
        description="Render N random TinyWorld scenes with one random 3D edit each (and the re-rendered ground "
        "truth), run every method, write results.json, report.html and print a Table-2-like summary. "
        "Resumable: rerun the same command to finish an interrupted run.",
    )
    p.add_argument("--model", default="tinyworld", help="depth-to-image model: 'tinyworld', a diffusers folder or a hub id")
    p.add_argument("--scenes", type=int, default=50, help="number of scenes, one edit each (default 50)")
    p.add_argument("--seed", type=int, default=_BENCH_SEED0,
                   help=f"first scene seed (default {_BENCH_SEED0}, the held-out range TinyWorld training never uses)")
    p.add_argument("--methods", nargs="+", metavar="NAME", default=None,
                   help="methods to run (default all): ours paper warp_only reconstruction depth_only ours_no_composite "
                   "ours_blend ours_transfer averaged_guidance layer2_only layer3_only layers_both layers_cyclic "
                   "stop20 stop28 stop38 stop50 wb_low wb_high")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (tinyworld's native size: 128)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps of inversion and generation (paper: 50)")
    p.add_argument("--inversion", default="null-text", choices=("null-text", "ddim", "negative-prompt"),
                   help="inversion method (paper: null-text)")
    p.add_argument("--null-inner-steps", type=int, default=5, help="null-text Adam steps per timestep (default 5)")
    p.add_argument("--no-cycle", action="store_true", help="skip the inverse edit (no cycle-consistency metric)")
    p.add_argument("--spp", type=int, default=128, help="path-tracer samples per pixel of the renders (default 128)")
    p.add_argument("--depth", default="exact", choices=("exact", "estimated"),
                   help="depth given to the methods: exact (the renderer's) or estimated (degraded the way monocular "
                        "estimators err: edges blurred, smooth scale/shift drift, thin structures lost)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 is best on a busy machine)")
    p.add_argument("--shard", default="0/1", metavar="I/K",
                   help="do only scenes I, I+K, I+2K, ... (parallel processes sharing --out; default 0/1 = all)")
    p.add_argument("--ray", default=None, metavar="auto|local|ADDRESS",
                   help="schedule on Ray, one task per scene (3deditbench: per file): auto ($RAY_ADDRESS or a local "
                        "instance), local, or a cluster's address (default: no Ray, this process)")
    p.add_argument("--gpus-per-job", type=float, default=0.0, metavar="F",
                   help="with --ray: GPUs each task reserves (fractions share a GPU; > 0 runs on cuda)")
    p.add_argument("--suite", default="tinyworld", choices=("tinyworld", "3deditbench"),
                   help="tinyworld (rendered scenes, default) or 3deditbench (HDF5 cases from --data)")
    p.add_argument("--data", default=None, metavar="DIR", help="3deditbench: folder of .hdf5 cases")
    p.add_argument("--gt-mask", action="store_true",
                   help="3deditbench: select the object by the files' GT_segment (default: SAM at point_prompt)")
    p.add_argument("--prompt", default="", metavar="TEXT",
                   help="3deditbench: text prompt for files without a caption (default empty)")
    p.add_argument("--sam-model", default=None, metavar="ID|DIR",
                   help="3deditbench: SAM for point_prompt and for edit adherence (default facebook/sam-vit-base)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (reused to resume)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: aggregate the edits already in --out into results.json / report.html")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from diffusion_handles.bench.methods import resolve_methods
    from diffusion_handles.bench.runner import BenchConfig, run_benchmark
    from diffusion_handles.errors import HandlesError

    if args.suite == "3deditbench":
        from diffusion_handles.bench.editbench3d import run_cli

        return run_cli(args)
    if args.size < 16:
        raise HandlesError(f"--size: expected >= 16 pixels, got {args.size}")
    if args.spp < 1:
        raise HandlesError(f"--spp: expected >= 1, got {args.spp}")
    resolve_methods(args.methods)  # validate names before any work
    try:
        i_shard, k_shard = (int(v) for v in args.shard.split("/"))
    except ValueError:
        raise HandlesError(f"--shard: expected I/K (two integers), got {args.shard!r}") from None
    cfg = BenchConfig(model=args.model, scenes=args.scenes, seed=args.seed, methods=args.methods, size=args.size,
                      steps=args.steps, inversion=args.inversion, null_inner_steps=args.null_inner_steps,
                      cycle=not args.no_cycle, spp=args.spp, device=args.device,
                      shard=(i_shard, k_shard), report_only=args.report_only,
                      threads=args.threads, depth=args.depth)
    if args.ray is not None:  # the same path as `handles batch`: Ray schedules one task per scene
        from diffusion_handles.batch.bench_ray import run_benchmark_on_ray

        if k_shard > 1 or args.report_only:
            raise HandlesError("--ray: expected without --shard I/K or --report-only (Ray does the sharding)")
        run_benchmark_on_ray(cfg, args.out, ray_address=args.ray, gpus_per_job=args.gpus_per_job,
                             progress=not args.quiet)
    else:
        run_benchmark(cfg, args.out, progress=not args.quiet)
    print(f"results written to {args.out}: results.json, report.html, edits/, images/, cases/")
    return 0
