"""``handles bench --suite 3deditbench``: the flags checked, then a local or Ray run, then the table.

Every flag is checked, and ``--data`` and ``--out`` looked at, before a model is loaded; the
exit code is 1 when any case or method failed (the first error is printed).
"""

from __future__ import annotations

from pathlib import Path

from diffusion_handles.bench.editbench3d.io import list_cases
from diffusion_handles.bench.editbench3d.runner import EditBenchConfig, run_editbench
from diffusion_handles.errors import HandlesError


def run_cli(args) -> int:
    """``handles bench --suite 3deditbench``: validate the flags, run (locally or on Ray), print the table."""
    if not args.data:
        raise HandlesError("--data: expected a folder of 3DEditBench .hdf5 files with --suite 3deditbench, got none")
    for value, arg, lo in ((args.steps, "--steps", 1), (args.null_inner_steps, "--null-inner-steps", 0)):
        if value < lo:
            raise HandlesError(f"{arg}: expected an integer >= {lo}, got {value}")
    if args.threads is not None and args.threads < 1:
        raise HandlesError(f"--threads: expected an integer >= 1, got {args.threads}")
    if args.shard != "0/1":
        raise HandlesError("--shard: expected 0/1 with --suite 3deditbench (use --ray to spread the cases)")
    from diffusion_handles.bench.methods import resolve_methods

    resolve_methods(args.methods)
    files = list_cases(args.data)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "settings.json").is_file())):
        raise HandlesError(f"--out: expected a new or empty folder or a 3deditbench run to resume, got {args.out!r}")
    cfg = EditBenchConfig(model=args.model, methods=args.methods, steps=args.steps, inversion=args.inversion,
                          null_inner_steps=args.null_inner_steps, gt_mask=args.gt_mask, sam_model=args.sam_model,
                          prompt=args.prompt, device=args.device, threads=args.threads)
    if args.ray is not None:
        from diffusion_handles.bench.ray import RaySettings, run_editbench_on_ray

        results = run_editbench_on_ray(cfg, args.data, out, [p.stem for p in files],
                                       RaySettings(address=args.ray, gpus_per_job=args.gpus_per_job),
                                       progress=not args.quiet)
    else:
        results = run_editbench(cfg, args.data, out, progress=not args.quiet, report_only=args.report_only)
    print(f"results written to {args.out}: results.json, report.html, edits/, images/")
    failed = results["failed"]
    if failed:
        import sys

        cases = results["cases"]
        first = next((_first_error(r) for r in results["edits"]
                      if r.get("error") or any(e.get("error") for e in r.get("methods", {}).values())), None)
        print(f"handles bench: error: {cases['failed']} of {cases['total']} case(s) failed as a whole, "
              f"{failed - cases['failed']} method result(s) failed; first: {first}", file=sys.stderr)
        return 1
    return 0


def _first_error(rec: dict) -> str:
    """The error of a case record (or of its first failed method), naming the case."""
    err = rec.get("error") or next(f"{m}: {e['error']}" for m, e in rec["methods"].items() if e.get("error"))
    return err if err.startswith(rec["case"]) else f"{rec['case']}: {err}"
