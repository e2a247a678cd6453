"""``handles batch``: one ``handles edit`` per JSONL line, scheduled by Ray, resumable."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch",
        help="run many edits from a JSONL file on Ray (local or a cluster), resumable",
        description="Run one edit per line of JOBS (a JSON object: id, image, prompt, mask|object|click, optional "
        "depth, translate, rotate_axis, rotate_deg, scale, model, steps, inversion, preset, ...; relative paths are "
        "relative to JOBS). Job <id> writes OUT/<id>/ exactly as 'handles edit' does; jobs on the same image and "
        "settings share one inversion (OUT/.cache). Rerun the same command to resume: a finished job is skipped "
        "when its line, its input files and its model are those it was made from, and runs again otherwise. "
        "Prints one line per finished job on stderr, a summary table on stdout, writes OUT/batch.json and "
        "OUT/report.html; exits 1 if any job failed, 130 when stopped by Ctrl-C or SIGTERM (finished jobs are kept).",
    )
    p.add_argument("jobs", metavar="JOBS.jsonl", help="job file, one JSON object per line")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder: new, empty, or the folder of an earlier run of this command (resumed)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out whole: the batch starts afresh in a folder beside it, swapped in "
                        "when it is done (the old one is deleted only then)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="inversion cache shared by the jobs (default OUT/.cache; not inside --out otherwise); on a "
                        "cluster it must be on a shared file system")
    p.add_argument("--ray", default="auto", metavar="auto|local|ADDRESS",
                   help="auto (default): $RAY_ADDRESS if set, else a local Ray instance started and stopped here; "
                        "local; or the address of a running cluster (HOST:PORT or ray://HOST:PORT)")
    p.add_argument("--gpus-per-job", default="0", metavar="F",
                   help="GPUs each job reserves (fractions share a GPU, e.g. 0.5; default 0); jobs given a GPU "
                        "run on cuda unless their line sets device")
    p.add_argument("--cpus-per-job", default="1", metavar="F", help="CPUs each job reserves (default 1)")
    p.add_argument("--num-cpus", default=None, metavar="N",
                   help="CPUs of the local Ray instance (default: all of this machine's)")
    p.set_defaults(func=run)


def _float(value: str, arg: str, minimum: float, strict: bool) -> float:
    from diffusion_handles.errors import HandlesError

    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not (v > minimum if strict else v >= minimum) or v != v or v == float("inf"):
        raise HandlesError(f"{arg}: expected a number {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return v


def run_edit(argv: list[str]) -> int:
    """One batch job: ``handles edit`` with ``argv`` (``["edit", IMAGE, ...]``) through the same
    parser and code path, in this process; returns the exit code. The parser's ``SystemExit`` on a
    bad option and the edit's errors propagate (:func:`~diffusion_handles.batch.execute.run_job`
    records them). Module-level, so that Ray pickles it by reference."""
    from diffusion_handles.cli import build_parser

    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


def run(args: argparse.Namespace) -> int:
    import sys

    from diffusion_handles.batch.execute import BatchOptions, is_batch_folder, run_batch
    from diffusion_handles.batch.report import format_table
    from diffusion_handles.bench.ray import check_ray_installed
    from diffusion_handles.cli.common import check_out
    from diffusion_handles.errors import HandlesError

    check_ray_installed()  # the 'batch' extra: one line at once, not after the jobs are read
    gpus = _float(args.gpus_per_job, "--gpus-per-job", 0.0, strict=False)
    cpus = _float(args.cpus_per_job, "--cpus-per-job", 0.0, strict=True)
    num_cpus = None
    if args.num_cpus is not None:
        num_cpus = int(_float(args.num_cpus, "--num-cpus", 0.0, strict=True))
        if num_cpus != float(args.num_cpus):
            raise HandlesError(f"--num-cpus: expected a positive integer, got {args.num_cpus!r}")
    out = check_out(args, reusable=is_batch_folder, reuse_what="a batch run to resume")  # and --cache
    fresh = args.overwrite and out.is_dir() and any(out.iterdir())
    opts = BatchOptions(ray_address=args.ray, gpus_per_job=gpus, cpus_per_job=cpus, num_cpus=num_cpus,
                        cache=args.cache, overwrite=args.overwrite)
    try:
        state = run_batch(args.jobs, out, run_edit=run_edit, options=opts)
    except KeyboardInterrupt as e:
        how = "terminated (SIGTERM)" if e.args == ("SIGTERM",) else "interrupted"
        kept = (f"nothing written, {args.out} left as it was" if fresh else
                f"the jobs finished so far are recorded in {out / 'batch.json'}; rerun the same command to resume")
        print(f"handles batch: {how}: stopped, {kept}", file=sys.stderr)
        return 130
    print(format_table(state))
    print(f"batch written to {args.out}: batch.json, report.html, <id>/ per job")
    return 1 if any(r["status"] == "failed" for r in state["jobs"]) else 0
