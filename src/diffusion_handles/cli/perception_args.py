"""Command-line flags for the perception models, shared by ``depth``, ``segment`` and ``edit``.

Not a sub-command itself (it has no ``register``); the sub-commands call
:func:`add_perception_args` and :func:`perception_config_from_args`. The perception package
imports torch but not ``transformers``/``diffusers`` at import time, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse

from diffusion_handles.errors import HandlesError
from diffusion_handles.perception.depth import DEFAULT_DEPTH_MODEL
from diffusion_handles.perception.inpaint import DEFAULT_INPAINT_MODEL
from diffusion_handles.perception.segment import DEFAULT_DETECTOR_MODEL, DEFAULT_SAM_MODEL


def add_perception_args(parser: argparse.ArgumentParser, *, depth: bool = True, segment: bool = True,
                        inpaint: bool = False, device: bool = True) -> None:
    """Model choices: each takes a hub id or a local folder written by ``save_pretrained``."""
    g = parser.add_argument_group("perception models (hub id or local folder; HF_HUB_OFFLINE=1 is respected)")
    if depth:
        g.add_argument("--depth-model", default=DEFAULT_DEPTH_MODEL, metavar="ID|DIR",
                       help=f"depth estimator: ZoeDepth, Depth Anything (V2) or DPT (default {DEFAULT_DEPTH_MODEL})")
        add_depth_kind_args(g)
    if segment:
        g.add_argument("--detector-model", default=DEFAULT_DETECTOR_MODEL, metavar="ID|DIR",
                       help=f"zero-shot detector for --object: OWLv2 or Grounding DINO (default {DEFAULT_DETECTOR_MODEL})")
        g.add_argument("--sam-model", default=DEFAULT_SAM_MODEL, metavar="ID|DIR",
                       help=f"SAM for --object/--click (default {DEFAULT_SAM_MODEL})")
        g.add_argument("--box-threshold", type=float, default=None, metavar="S",
                       help="detector score a box needs to match --object (default 0.1 OWLv2, 0.3 Grounding DINO)")
        g.add_argument("--pick", type=int, default=None, metavar="N",
                       help="when several objects match --object, use the N-th best (0 = best, the default)")
    if inpaint:
        g.add_argument("--inpaint-model", default=DEFAULT_INPAINT_MODEL, metavar="ID|DIR|opencv-telea|opencv-ns",
                       help=f"object removal for the background depth: a diffusers inpainting pipeline (default "
                            f"{DEFAULT_INPAINT_MODEL}, falls back to opencv-telea when unavailable) or OpenCV")
        g.add_argument("--background-mode", default="auto", choices=["auto", "estimate", "fill"],
                       help="d'_b: auto (inpaint+estimate when depth is estimated, harmonic fill when --depth is "
                            "given), estimate, or fill")
    if device:
        g.add_argument("--device", default="cpu", metavar="cpu|cuda|cuda:N",
                       help="torch device for the perception models (default cpu); checked before any model loads")


def add_depth_kind_args(g) -> None:
    """``--depth-kind`` and ``--depth-range``: what a ``--depth`` file's values are (or, without
    one, what the depth model predicts), and where a relative map's nearest and farthest pixels go."""
    from diffusion_handles.io import DEFAULT_DEPTH_RANGE, DEPTH_KIND_FLAGS, DEPTH_KINDS

    near, far = DEFAULT_DEPTH_RANGE
    kinds = list(dict.fromkeys([*DEPTH_KIND_FLAGS, *DEPTH_KINDS]))  # the flag's words, then the kinds' own names
    g.add_argument("--depth-kind", default=None, choices=kinds, metavar="z|inverse",
                   help="what --depth holds: z (z-depth in scene units, the default for a file) or inverse (relative "
                        "inverse depth, as MiDaS and Depth Anything give: its 1st..99th percentile mapped linearly in "
                        "inverse depth onto --depth-range), or relative-depth; without --depth, what the depth model "
                        "predicts (default: from its family). metric-depth = z, relative-disparity = inverse")
    g.add_argument("--depth-range", nargs=2, type=float, default=[near, far], metavar=("NEAR", "FAR"),
                   help=f"scene units for the nearest/farthest pixels of a relative depth (default {near:g} {far:g})")


def add_object_args(parser: argparse.ArgumentParser, *, mask: bool = True, required: bool = False) -> None:
    """``--object TEXT`` | ``--click X,Y`` (repeatable) | ``--mask FILE``."""
    g = parser.add_argument_group("object selection (exactly one)")
    if mask:
        g.add_argument("--mask", default=None, help="object mask PNG (pixels >= 128 are the object), same size as IMAGE")
    g.add_argument("--object", default=None, metavar="TEXT", help='text query, e.g. "the red mug" (detector + SAM)')
    g.add_argument("--click", action="append", default=None, metavar="X,Y",
                   help="a point on the object in pixels (x right, y down); repeat for more points (SAM)")


def clicks_from_args(args: argparse.Namespace) -> list[tuple[float, float]] | None:
    from diffusion_handles.perception.segment import parse_click

    return [parse_click(c) for c in args.click] if getattr(args, "click", None) else None


def check_one_object_source(args: argparse.Namespace) -> None:
    # only the flags this command has (``handles segment`` has no --mask)
    flags = [f"--{name}" for name in ("mask", "object", "click") if hasattr(args, name)]
    given = [flag for flag in flags if getattr(args, flag[2:])]
    if len(given) != 1:
        raise HandlesError(f"{'/'.join(flags)}: expected exactly one, got {', '.join(given) or 'none'}")


def perception_config_from_args(args: argparse.Namespace):
    """A :class:`~diffusion_handles.perception.PerceptionConfig` from the flags present in ``args``."""
    from diffusion_handles.cli.common import check_device
    from diffusion_handles.perception import (
        DepthConfig,
        InpaintConfig,
        PerceptionConfig,
        SegmentConfig,
    )

    device = check_device(getattr(args, "device", "cpu"))
    depth = DepthConfig(device=device)
    if hasattr(args, "depth_model"):
        near, far = args.depth_range
        # with a --depth file, --depth-kind says what the file holds, not what the model predicts
        kind = args.depth_kind if getattr(args, "depth", None) is None else None
        depth = DepthConfig(model=args.depth_model, kind=kind, near=near, far=far, device=device)
    segment = SegmentConfig(device=device)
    if hasattr(args, "detector_model"):
        if args.box_threshold is not None and not 0 <= args.box_threshold <= 1:
            raise HandlesError(f"--box-threshold: expected a score in [0, 1], got {args.box_threshold}")
        segment = SegmentConfig(detector_model=args.detector_model, sam_model=args.sam_model,
                                threshold=args.box_threshold, pick=args.pick, device=device)
    inpaint = InpaintConfig(device=device)
    background = "auto"
    if hasattr(args, "inpaint_model"):
        inpaint = InpaintConfig(model=args.inpaint_model, device=device)
        background = args.background_mode
    return PerceptionConfig(depth=depth, segment=segment, inpaint=inpaint, background=background)
