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
        "settings share one inversion (OUT/.cache). Rerun the same command to resume: finished jobs are skipped. "
        "Prints one line per finished job on stderr, a summary table on stdout, writes OUT/batch.json and "
        "OUT/report.html; exits 1 if any job failed.",
    )
    p.add_argument("jobs", metavar="JOBS.jsonl", help="job file, one JSON object per line")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (reused to resume)")
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
    from diffusion_handles.batch.execute import run_batch
    from diffusion_handles.batch.report import format_table
    from diffusion_handles.errors import HandlesError

    gpus = _float(args.gpus_per_job, "--gpus-per-job", 0.0, strict=False)
    cpus = _float(args.cpus_per_job, "--cpus-per-job", 0.0, strict=True)
    num_cpus = None
    if args.num_cpus is not None:
        num_cpus = int(_float(args.num_cpus, "--num-cpus", 0.0, strict=True))
        if num_cpus != float(args.num_cpus):
            raise HandlesError(f"--num-cpus: expected a positive integer, got {args.num_cpus!r}")
    state = run_batch(args.jobs, args.out, run_edit=run_edit, ray_address=args.ray, gpus_per_job=gpus,
                      cpus_per_job=cpus, num_cpus=num_cpus)
    print(format_table(state))
    print(f"batch written to {args.out}: batch.json, report.html, <id>/ per job")
    return 1 if any(r["status"] == "failed" for r in state["jobs"]) else 0
