"""Argument groups and parsing shared by several sub-commands."""

from __future__ import annotations

import argparse

from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry.camera import DEFAULT_FOV_DEG
from diffusion_handles.geometry.transform import HandleEdit


def add_transform_args(parser: argparse.ArgumentParser) -> None:
    """``--translate X Y Z --rotate-axis X Y Z --rotate-deg A --scale S --fov DEG``."""
    g = parser.add_argument_group("3D transform (camera axes: x right, y down, z forward; scene units)")
    g.add_argument("--translate", nargs=3, metavar=("X", "Y", "Z"), default=["0", "0", "0"],
                   help="translation in scene units (default 0 0 0)")
    g.add_argument("--rotate-axis", nargs=3, metavar=("X", "Y", "Z"), default=["0", "1", "0"],
                   help="rotation axis through the object's centroid (default 0 1 0, vertical)")
    g.add_argument("--rotate-deg", metavar="A", default="0", help="rotation angle in degrees (default 0)")
    g.add_argument("--scale", metavar="S", default="1", help="uniform scale about the centroid (default 1)")
    g.add_argument("--fov", metavar="DEG", default=str(DEFAULT_FOV_DEG),
                   help=f"horizontal field of view in degrees (default {DEFAULT_FOV_DEG:g}, Sec. 5.1)")


def _floats(values, arg: str) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise HandlesError(f"{arg}: expected numbers, got {' '.join(map(str, values))!r}") from None
    if not all(abs(v) < float("inf") and v == v for v in out):
        raise HandlesError(f"{arg}: expected finite numbers, got {' '.join(map(str, values))!r}")
    return out


def edit_from_args(args: argparse.Namespace) -> HandleEdit:
    """The :class:`HandleEdit` given by :func:`add_transform_args` flags, validated."""
    translate = _floats(args.translate, "--translate")
    axis = _floats(args.rotate_axis, "--rotate-axis")
    (deg,) = _floats([args.rotate_deg], "--rotate-deg")
    (scale,) = _floats([args.scale], "--scale")
    if scale <= 0:
        raise HandlesError(f"--scale: expected a positive number, got {args.scale}")
    if deg != 0 and sum(a * a for a in axis) < 1e-24:
        raise HandlesError(f"--rotate-axis: expected a non-zero axis, got {' '.join(args.rotate_axis)}")
    return HandleEdit(tuple(translate), tuple(axis), deg, scale)


def fov_from_args(args: argparse.Namespace) -> float:
    (fov,) = _floats([args.fov], "--fov")
    if not 0 < fov < 180:
        raise HandlesError(f"--fov: expected degrees in (0, 180), got {args.fov}")
    return fov
