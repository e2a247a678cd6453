"""``handles preview``: the 3D edit's geometry re-rendered instantly, no diffusion."""

from __future__ import annotations

import argparse

from diffusion_handles.cli.common import (
    add_out_args,
    add_transform_args,
    check_out,
    edit_from_args,
    fov_from_args,
)
from diffusion_handles.cli.inputs import (
    DEPTH_HELP,
    DEPTH_SCALE_HELP,
    IMAGE_HELP,
    depth_reading_from_args,
)
from diffusion_handles.cli.perception_args import add_depth_kind_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preview",
        help="instant 3D preview of an edit (no diffusion)",
        description="Lift the image with its depth, move the masked object in 3D, and re-render by splatting. "
        "Holes (disocclusions) are shown in magenta.",
    )
    p.add_argument("image", metavar="IMAGE", help=IMAGE_HELP)
    p.add_argument("--depth", required=True, help=DEPTH_HELP)
    p.add_argument("--depth-scale", type=float, default=1000.0, help=DEPTH_SCALE_HELP)
    add_depth_kind_args(p)
    p.add_argument("--mask", help="object mask PNG (pixels >= 128 are the object), same size as IMAGE")
    add_transform_args(p)
    p.add_argument("--camera", action="store_true",
                   help="move the camera instead of the object (viewpoint change; --mask not needed)")
    add_out_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from diffusion_handles.preview import make_preview

    check_out(args)
    edit = edit_from_args(args)
    fov = fov_from_args(args)
    result = make_preview(args.image, args.depth, args.mask, edit, fov, args.out,
                          depth_scale=depth_reading_from_args(args), move_camera=args.camera)
    print(f"preview written to {args.out} ({result['timings_ms']['total']:.0f} ms): preview.png, comparison.png, "
          f"edited_mask.png, valid_mask.png, edited_depth.npy/.png, summary.json")
    return 0
