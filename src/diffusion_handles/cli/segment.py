"""``handles segment IMAGE --object TEXT | --click X,Y --out DIR``: object selection on its own."""

from __future__ import annotations

import argparse
import re

from diffusion_handles.cli.common import add_out_args, check_out
from diffusion_handles.cli.perception_args import (
    add_object_args,
    add_perception_args,
    check_one_object_source,
    clicks_from_args,
    perception_config_from_args,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="object mask from a text query (detector + SAM) or clicks (SAM)",
        description="Select an object by --object TEXT (zero-shot detector -> best box -> SAM) or by one or more "
        "--click X,Y (SAM). Writes mask.png (usable as --mask), overlay.png (mask, every candidate box with its "
        "score, clicks) and summary.json (candidates with scores). When several objects match, the best is used "
        "and the others are listed; --pick N chooses another. When none matches, the command fails but still writes "
        "summary.json and overlay.png with every candidate.",
    )
    p.add_argument("image", metavar="IMAGE", help="input image (PNG/JPEG)")
    add_out_args(p)
    add_object_args(p, mask=False)
    add_perception_args(p, depth=False, segment=True)
    p.set_defaults(func=run)


# The perception library's messages suggest ``--mask FILE``, a flag of ``handles edit``; this
# command has none, so say where a hand-made mask goes instead.
_MASK_HINT = re.compile(r"(give )?(?<!handles edit )--mask FILE")


def for_segment(message: str) -> str:
    """``message`` with every ``--mask FILE`` suggestion pointed at ``handles edit``."""
    return _MASK_HINT.sub(lambda m: ("draw " if m.group(1) else "") + "a mask of your own (handles edit --mask FILE)",
                          message)


def run(args: argparse.Namespace) -> int:
    from diffusion_handles.errors import HandlesError

    try:
        return _run(args)
    except HandlesError as e:
        raise HandlesError(for_segment(str(e))) from None


def _run(args: argparse.Namespace) -> int:
    import json
    import sys
    import time

    import torch
    from PIL import Image

    from diffusion_handles.errors import HandlesError
    from diffusion_handles.io import load_image, save_image
    from diffusion_handles.outputs import atomic_output_dir
    from diffusion_handles.perception.segment import (
        NoMatchError,
        SamSegmenter,
        Selection,
        TextDetector,
        overlay_image,
        select_object,
    )

    check_out(args)
    check_one_object_source(args)
    cfg = perception_config_from_args(args).segment
    image = load_image(args.image)
    clicks = clicks_from_args(args)
    t0 = time.perf_counter()
    detector = TextDetector.load(cfg) if args.object is not None else None
    bypass = "give --mask FILE instead of " + ("--object" if args.object is not None else "--click")  # see for_segment
    sam = SamSegmenter.load(cfg, bypass=bypass)
    t1 = time.perf_counter()
    try:
        sel = select_object(image, text=args.object, clicks=clicks, config=cfg, detector=detector, sam=sam)
    except NoMatchError as e:
        # nothing matched: still show what the detector saw (boxes, scores), but no mask.png
        sel = Selection(mask=torch.zeros(1, 1, *image.shape[-2:]), source="text", candidates=e.candidates,
                        threshold=e.threshold, notes=[str(e)])
        with atomic_output_dir(args.out) as out:
            Image.fromarray(overlay_image(image, sel.mask, sel)).save(out / "overlay.png")
            summary = {"image": str(args.image), "query": args.object, **sel.summary(),
                       "detector_model": detector.source, "sam_model": sam.source}
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
        raise HandlesError(f"{e} (every candidate with its score: {args.out}/summary.json, overlay.png)") from None
    t2 = time.perf_counter()
    for note in sel.notes:
        print(f"handles segment: note: {for_segment(note)}", file=sys.stderr)
    with atomic_output_dir(args.out) as out:
        save_image(out / "mask.png", sel.mask)
        Image.fromarray(overlay_image(image, sel.mask, sel)).save(out / "overlay.png")
        summary = {
            "image": str(args.image),
            "size": {"width": int(image.shape[-1]), "height": int(image.shape[-2])},
            "query": args.object,
            **sel.summary(),
            "detector_model": detector.source if detector else None,
            "sam_model": sam.source,
            "seconds": {"load": round(t1 - t0, 3), "segment": round(t2 - t1, 3)},
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"mask written to {args.out} ({int(sel.mask.sum())} object pixels"
          + (f", {summary['matched']} matching boxes" if args.object is not None else "")
          + "): mask.png, overlay.png, summary.json")
    return 0
