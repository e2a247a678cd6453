"""``handles bench``: the ground-truth benchmark (Table 2 metrics, baselines, Fig. 8 ablations)."""

from __future__ import annotations

import argparse

from diffusion_handles import limits
from diffusion_handles.cli.common import (
    MAX_THREADS,
    add_out_args,
    check_device,
    check_out,
    parse_seed,
    restore_progress_bars,
    silence_progress_bars,
)

_BENCH_SEED0 = 1_000_500  # = diffusion_handles.bench.cases.BENCH_SEED0 (not imported: keep --help fast)
# Upper bounds (a larger value is a typo, or a run that cannot fit in memory or time).
MAX_SIZE = 1024  # pixels per side; the path tracer and the UNet scale with its square
MAX_SCENES = 10_000
MIN_SIZE = limits.IMAGE_SIDE[0]
MAX_STEPS = limits.STEPS[1]  # the schedulers' training timesteps: more DDIM steps do not exist
MAX_SPP = 4096
MAX_NULL_INNER = 100
MAX_ENCODE_REFINE = 1000
MAX_SEED = 2**62  # seeds walk upwards from --seed; this keeps every one a 63-bit integer


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark every method on random TinyWorld edits with rendered ground truth",
        description="Render N random TinyWorld scenes with one random 3D edit each (and the re-rendered ground "
        "truth), run every method, write results.json, report.html and print a Table-2-like summary. "
        "Resumable: rerun the same command to finish an interrupted run. Exit status: 0 when every edit "
        "succeeded, 1 when any failed (the count is printed; the errors are in results.json), 2 for bad "
        "arguments.",
    )
    p.add_argument("--model", default="tinyworld", help="depth-to-image model: 'tinyworld', a diffusers folder or a hub id")
    p.add_argument("--scenes", type=int, default=50, help=f"number of scenes, one edit each, in [1, {MAX_SCENES}] (default 50)")
    p.add_argument("--seed", default=str(_BENCH_SEED0), metavar="S",
                   help=f"first scene seed, in [0, {MAX_SEED}] (default {_BENCH_SEED0}, the held-out range TinyWorld "
                        "training never uses)")
    p.add_argument("--methods", nargs="+", metavar="NAME", default=None,
                   help="methods to run (default all): ours paper warp_only reconstruction depth_only ours_no_composite "
                   "ours_blend ours_transfer averaged_guidance layer2_only layer3_only layers_both layers_cyclic "
                   "stop20 stop28 stop38 stop50 wb_low wb_high; with --kinds: ours warp_only (every kind), "
                   "depth_only chain (restyle)")
    p.add_argument("--size", type=int, default=128,
                   help=f"image side in pixels, in [{MIN_SIZE}, {MAX_SIZE}] (tinyworld's native size: 128)")
    p.add_argument("--steps", type=int, default=50,
                   help=f"DDIM steps of inversion and generation, in [{limits.STEPS[0]}, {MAX_STEPS}] (paper: 50)")
    p.add_argument("--inversion", default="null-text", choices=("null-text", "ddim", "negative-prompt"),
                   help="inversion method (paper: null-text)")
    p.add_argument("--null-inner-steps", type=int, default=5,
                   help=f"null-text Adam steps per timestep, in [0, {MAX_NULL_INNER}] (default 5)")
    p.add_argument("--null-lr", type=float, default=1e-2,
                   help="null-text Adam learning rate, in (0, 1] (default 1e-2, NTI's; docs/releases/tinyworld-v2.2.md measures 5e-2)")
    p.add_argument("--encode-refine-steps", type=int, default=None, metavar="N",
                   help=f"latent refinement steps after the VAE encoder, in [0, {MAX_ENCODE_REFINE}] (default: the model's own; "
                        "tinyworld: 20, a hub model: 0)")
    p.add_argument("--no-cycle", action="store_true", help="skip the inverse edit (no cycle-consistency metric)")
    p.add_argument("--spp", type=int, default=128,
                   help=f"path-tracer samples per pixel of the renders, in [1, {MAX_SPP}] (default 128)")
    p.add_argument("--depth", default="exact", choices=("exact", "estimated"),
                   help="depth given to the methods: exact (the renderer's) or estimated (degraded the way monocular "
                        "estimators err: edges blurred, smooth scale/shift drift, thin structures lost)")
    p.add_argument("--device", default="cpu", metavar="cpu|cuda|cuda:N",
                   help="torch device (default cpu); checked before anything runs")
    p.add_argument("--threads", type=int, default=None,
                   help=f"torch CPU threads, in [1, {MAX_THREADS}] (default: 1 for a small model such as tinyworld, as "
                        "handles edit chooses, else torch's)")
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
    p.add_argument("--kinds", default=None, metavar="K[,K...]",
                   help="edits beyond one object, instead of the object edits: camera (a moved camera), remove (an "
                        "object removed), multi (two objects moved in one pass), restyle (an object moved and given "
                        "another colour or pattern), comma-separated; --scenes cases of each, methods ours and "
                        "warp_only (restyle: also depth_only and chain); written to kinds_results.json (default: "
                        "object edits)")
    p.add_argument("--preset", default="default", choices=list(limits.PRESETS),
                   help="with --kinds: the guidance settings of handles edit's preset (--steps and --inversion still "
                        "apply; default: default)")
    add_out_args(p, help="output folder; a folder holding a bench run of the same settings is resumed")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: aggregate the edits already in --out into results.json / report.html "
                        "(an error when --out holds no edits of these scenes)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (weight loading included)")
    p.set_defaults(func=run)


def _bounded(value: int | None, arg: str, lo: int, hi: int) -> None:
    from diffusion_handles.errors import HandlesError

    if value is not None and not lo <= value <= hi:
        raise HandlesError(f"{arg}: expected an integer in [{lo}, {hi}], got {value}")


def _check_work(args: argparse.Namespace) -> None:
    """The bounds both suites share: ``--steps`` (:data:`~diffusion_handles.limits.STEPS`),
    ``--null-inner-steps`` and ``--threads``."""
    _bounded(args.steps, "--steps", *limits.STEPS)
    _bounded(args.null_inner_steps, "--null-inner-steps", 0, MAX_NULL_INNER)
    _bounded(args.threads, "--threads", 1, MAX_THREADS)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    finally:
        restore_progress_bars()  # --quiet lasts for this command only (main() may run in-process)


def _checked_out(args: argparse.Namespace):
    """``--out`` (with ``--report-only``: an existing bench folder to aggregate), checked first:
    nothing is computed (or loaded) for a folder that cannot be used."""
    from diffusion_handles.bench.runner import is_bench_folder
    from diffusion_handles.errors import HandlesError

    if not args.report_only:
        return check_out(args, reusable=is_bench_folder, reuse_what="a bench run to resume")
    if args.overwrite:
        raise HandlesError("--overwrite: expected without --report-only (it would discard the edits to report)")
    out = check_out(args, reusable=lambda _: True)  # only the path: any existing folder is looked into
    if not is_bench_folder(out) or not (out / "edits").is_dir():
        raise HandlesError(f"--report-only: expected a bench folder with edits/ to aggregate, got {args.out!r} "
                           f"({'no bench run in it' if out.is_dir() else 'no such folder'}); nothing written")
    return out


def _shard(args: argparse.Namespace) -> tuple[int, int]:
    """``--shard I/K``, checked against ``--overwrite``, ``--ray`` and ``--report-only``."""
    from diffusion_handles.errors import HandlesError

    try:
        i_shard, k_shard = (int(v) for v in args.shard.split("/"))
    except ValueError:
        raise HandlesError(f"--shard: expected I/K (two integers), got {args.shard!r}") from None
    if not (k_shard >= 1 and 0 <= i_shard < k_shard):
        raise HandlesError(f"--shard: expected I/K with 0 <= I < K, got {args.shard}")
    if args.overwrite and k_shard > 1:
        raise HandlesError("--overwrite: expected without --shard I/K (parallel shards share one folder)")
    if args.ray is not None and (k_shard > 1 or args.report_only):
        raise HandlesError("--ray: expected without --shard I/K or --report-only (Ray does the sharding)")
    return i_shard, k_shard


def _config_from_args(args: argparse.Namespace):
    """The :class:`~diffusion_handles.bench.runner.BenchConfig` of the flags, every bound checked
    (method names included) before any work."""
    from diffusion_handles.bench.runner import BenchConfig
    from diffusion_handles.errors import HandlesError

    _bounded(args.scenes, "--scenes", 1, MAX_SCENES)
    seed = parse_seed(args.seed, maximum=MAX_SEED)
    _bounded(args.size, "--size", MIN_SIZE, MAX_SIZE)
    _check_work(args)
    if not 0 < args.null_lr <= 1:  # also refuses NaN
        raise HandlesError(f"--null-lr: expected a learning rate in (0, 1], got {args.null_lr}")
    if args.encode_refine_steps is not None:
        _bounded(args.encode_refine_steps, "--encode-refine-steps", 0, MAX_ENCODE_REFINE)
    _bounded(args.spp, "--spp", 1, MAX_SPP)
    _method_kinds(args)  # validate names before any work
    shard = _shard(args)
    check_device(args.device)
    return BenchConfig(model=args.model, scenes=args.scenes, seed=seed, methods=args.methods, size=args.size,
                       steps=args.steps, inversion=args.inversion, null_inner_steps=args.null_inner_steps, null_lr=args.null_lr,
                       encode_refine_steps=args.encode_refine_steps, cycle=not args.no_cycle, spp=args.spp, device=args.device,
                       shard=shard, report_only=args.report_only,
                       threads=args.threads, depth=args.depth)


def _kinds_of(args: argparse.Namespace) -> list[str]:
    """``--kinds`` as a list of names (not checked)."""
    return [k.strip() for k in args.kinds.split(",") if k.strip()]


def _method_kinds(args: argparse.Namespace) -> list[str]:
    """The kinds (``"warp"``, ``"diffusion"``, ...) of the methods the flags run, every name
    checked: ``--methods`` against the object edits' registry, or with ``--kinds`` against the
    kinds' methods (:func:`~diffusion_handles.bench.new_kinds.kinds_methods`, the kinds too)."""
    from diffusion_handles.bench.methods import resolve_methods

    if args.kinds is None:
        return [m.kind for m in resolve_methods(args.methods)]
    from diffusion_handles.bench.new_kinds import kinds_methods

    return ["warp" if m == "warp_only" else "diffusion" for m in kinds_methods(_kinds_of(args), args.methods)]


def _fresh_or_resumed(out, overwrite: bool, work):
    """``work(folder)``: into ``out``, or with ``--overwrite`` of a non-empty ``out`` into a fresh
    folder swapped in whole when it is done."""
    from diffusion_handles.outputs import atomic_output_dir

    if overwrite and out.is_dir() and any(out.iterdir()):
        with atomic_output_dir(out) as tmp:
            return work(tmp)
    return work(out)


def _run_kinds(args: argparse.Namespace, cfg, out) -> int:
    """``--kinds``: camera / remove / multi / restyle cases (bench.new_kinds, bench.restyle), their
    own random streams."""
    import sys
    from pathlib import Path

    from diffusion_handles.bench.new_kinds import kinds_methods, run_kinds_benchmark
    from diffusion_handles.errors import HandlesError

    kinds = _kinds_of(args)
    kinds_methods(kinds, args.methods)  # the kinds and methods checked (again: _config_from_args did)
    if args.ray is not None or cfg.shard[1] > 1 or args.report_only:
        raise HandlesError("--kinds: expected without --ray, --shard I/K or --report-only")
    kres = _fresh_or_resumed(out, args.overwrite, lambda target: run_kinds_benchmark(
        cfg, kinds, target, preset_name=args.preset, progress=not args.quiet))
    print(f"results written to {args.out}: kinds_results.json, kinds_edits/, kinds_images/, kinds/")
    failed = sum(1 for r in kres["edits"] for m, e in r["methods"].items() if e.get("error"))
    if failed:
        first = next(e["error"] for r in kres["edits"] for e in r["methods"].values() if e.get("error"))
        print(f"handles bench: error: {failed} method runs failed; first: {first[:200]}; every error is in "
              f"{Path(args.out) / 'kinds_results.json'}", file=sys.stderr)
        return 1
    return 0


def _run_edits(args: argparse.Namespace, cfg, out) -> int:
    """The object edits: every method on every scene, in this process or on Ray."""
    import sys
    from pathlib import Path

    from diffusion_handles.bench.report import failures
    from diffusion_handles.bench.runner import run_benchmark

    def execute(target):
        if args.ray is not None:  # the same path as `handles batch`: Ray schedules one task per scene
            from diffusion_handles.bench.ray import run_benchmark_on_ray

            return run_benchmark_on_ray(cfg, target, ray_address=args.ray, gpus_per_job=args.gpus_per_job,
                                        progress=not args.quiet)
        return run_benchmark(cfg, target, progress=not args.quiet)

    results = _fresh_or_resumed(out, args.overwrite, execute)
    print(f"results written to {args.out}: results.json, report.html, edits/, images/, cases/")
    f = failures(results)
    if f["failed"]:
        per = ", ".join(f"{n}: {k}" for n, k in f["by_method"].items())
        first = " ".join(str(f["first"]).split())
        first = first if len(first) <= 200 else first[:200] + "..."
        print(f"handles bench: error: {f['failed']} of {f['edits']} edits failed ({per or 'case errors'}); "
              f"first: {first}; every error is in {Path(args.out) / 'results.json'}", file=sys.stderr)
        return 1
    return 0


def _check_needs(args: argparse.Namespace) -> None:
    """Before any work: the extras the flags need (``--ray``: ``batch``; ``--suite 3deditbench``:
    ``bench3d``), the model (when a method loads one; before transformers/diffusers are imported)
    and, without ``--threads``, one torch thread for a small model (as ``handles edit``)."""
    from diffusion_handles.cli.common import check_model, small_model_threads

    if args.ray is not None:
        from diffusion_handles.bench.ray import check_ray_installed

        check_ray_installed()
    if args.suite == "3deditbench":
        from diffusion_handles.bench.editbench3d.io import require_h5py

        require_h5py("--suite 3deditbench")
    if args.report_only or all(k == "warp" for k in _method_kinds(args)):
        return  # no weights are loaded
    check_model(args.model)
    if args.threads is None and args.ray is None:
        threads = small_model_threads(args.model)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    if args.suite == "3deditbench":
        from diffusion_handles.bench.editbench3d import run_cli

        _check_work(args)  # before run_cli looks at --data or loads anything
        _check_needs(args)
        return run_cli(args)
    out = _checked_out(args)
    cfg = _config_from_args(args)
    _check_needs(args)
    if args.quiet and any(k != "warp" for k in _method_kinds(args)):  # warp-only runs load no weights
        silence_progress_bars()
    if args.kinds is not None:
        return _run_kinds(args, cfg, out)
    return _run_edits(args, cfg, out)
