"""Rows of one ``handles bench`` folder's pictures, one row per edit, for a person to compare
methods side by side: input | 3D preview (holes magenta) | each method | ground truth.

    python benchmarks/bench_strip.py runs/bench/v2p --methods ours_latent_transfer ours \\
        --n 6 --out docs/images/pixel_transfer.png

With ``--kind K`` the rows are the cases of kind ``K`` of a ``handles bench --kinds`` folder
(its ``kinds_images/K_s<seed>/``), e.g. the restyle strip (input | preview | chain | ours | truth):

    python benchmarks/bench_strip.py runs/restyle --kind restyle --methods chain ours \\
        --n 6 --out docs/images/restyle_strip.png

The edits are the folder's first ``--n`` in case order (by seed; no picking); panels are enlarged by
nearest neighbour to at least 256 px (``viz.side_by_side``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", type=Path, help="a handles bench output folder (its images/<case>/ pictures)")
    ap.add_argument("--kind", default=None, metavar="K",
                    help="a --kinds run: the cases of kind K (kinds_images/K_s<seed>/), e.g. restyle")
    ap.add_argument("--methods", nargs="+", default=["ours"])
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from diffusion_handles.io import load_image, save_image
    from diffusion_handles.viz import side_by_side

    folder, prefix = ("images", "") if args.kind is None else ("kinds_images", f"{args.kind}_s")
    if not (args.bench / folder).is_dir():
        raise SystemExit(f"bench: no {folder}/ folder under {args.bench}")
    cases = [p for p in (args.bench / folder).iterdir() if p.is_dir() and p.name.startswith(prefix)]
    cases = sorted(cases, key=lambda p: (len(p.name), p.name))[: args.n]  # seeds in numeric order
    if not cases:
        raise SystemExit(f"bench: no {folder}/{prefix or '<case>'}*/ folders under {args.bench}")
    names = [("input", "input"), ("3D preview", "preview"), *[(m, m) for m in args.methods], ("ground truth", "gt")]
    rows = []
    for case in cases:
        missing = [f for _, f in names if not (case / f"{f}.png").is_file()]
        if missing:
            raise SystemExit(f"bench: {case.name} lacks {', '.join(m + '.png' for m in missing)}")
        labels = [f"{case.name}: {names[0][0]}", *(label for label, _ in names[1:])]
        rows.append(side_by_side([(lab, load_image(case / f"{f}.png")) for lab, (_, f) in zip(labels, names, strict=True)]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_image(args.out, torch.cat(rows, dim=2))
    print(f"wrote {args.out} ({len(rows)} edits)")


if __name__ == "__main__":
    main()
