"""The instant 3D preview: the geometry of an edit without diffusion (used by the CLI and web app).

``preview_edit`` works on tensors; ``make_preview`` reads files, validates them and writes the
output folder atomically.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry import (
    Camera,
    EditGeometry,
    HandleEdit,
    background_depth_fill,
    camera_move,
    camera_move_depth,
    compute_camera_move,
    compute_edit,
    edited_depth,
    render_preview,
)

if TYPE_CHECKING:
    from diffusion_handles.io import DepthReading


@dataclass
class PreviewResult:
    """Tensors of one preview, all ``(1, C, H, W)`` at the image's resolution.

    ``preview`` is the re-rendered image (holes magenta), ``edited_mask`` is M'_o, ``valid`` is
    M_v, ``edited_depth`` is d' (z-depth, scene units), ``timings_ms`` per stage.
    """

    geometry: EditGeometry
    preview: torch.Tensor
    edited_mask: torch.Tensor
    valid: torch.Tensor
    background_depth: torch.Tensor
    edited_depth: torch.Tensor
    timings_ms: dict[str, float] = field(default_factory=dict)


def preview_edit(
    image: torch.Tensor,
    depth: torch.Tensor,
    mask: torch.Tensor,
    edit: HandleEdit,
    fov_deg: float = 55.0,
    background_depth: torch.Tensor | None = None,
    with_depth: bool = True,
    move_camera: bool = False,
) -> PreviewResult:
    """Compute the 3D edit and re-render the image.

    Args:
        image: ``(1, 3, H, W)`` in [0, 1]; depth: ``(1, 1, H, W)`` z-depth; mask: ``(1, 1, H, W)``.
        edit: the object's transform (about its centroid).
        background_depth: d'_b if known (e.g. from an inpainter); else the depth with the object
            filled harmonically (:func:`~diffusion_handles.geometry.background_depth_fill`).
        with_depth: skip the Poisson composite (the slow part) when False; ``edited_depth``
            is then the z-buffer with holes left at 0.
        move_camera: apply ``edit`` to the camera instead (a viewpoint change: every scene
            point moves by the inverse; rotation about the camera centre); ``mask`` is ignored.

    Raises:
        HandlesError: see :func:`~diffusion_handles.geometry.compute_edit`.
    """
    t = {}
    t0 = time.perf_counter()
    cam = Camera(depth.shape[-2], depth.shape[-1], fov_deg)
    if move_camera:
        geom = compute_camera_move(depth, camera_move(edit), cam)
    else:
        geom = compute_edit(depth, mask, edit, cam)
    t["geometry"] = (time.perf_counter() - t0) * 1e3
    t1 = time.perf_counter()
    preview = render_preview(image, geom)
    t["render"] = (time.perf_counter() - t1) * 1e3
    t2 = time.perf_counter()
    if with_depth and move_camera:
        bg = depth
        d_edit = camera_move_depth(geom)
    elif with_depth:
        bg = background_depth if background_depth is not None else background_depth_fill(depth, mask)
        d_edit = edited_depth(geom, bg)
    else:
        bg = depth
        d_edit = torch.where(torch.isfinite(geom.zbuffer), geom.zbuffer, torch.zeros_like(depth))
    t["edited_depth"] = (time.perf_counter() - t2) * 1e3
    t["total"] = (time.perf_counter() - t0) * 1e3
    return PreviewResult(geom, preview, geom.edited_mask, geom.valid, bg, d_edit, t)


def make_preview(
    image_path: str | Path,
    depth_path: str | Path,
    mask_path: str | Path,
    edit: HandleEdit,
    fov_deg: float,
    out_dir: str | Path,
    depth_scale: float | DepthReading = 1000.0,
    move_camera: bool = False,
) -> dict:
    """Read the inputs, run :func:`preview_edit` and write ``out_dir`` (all files or none).

    ``depth_scale`` is how the depth file is read: a number (the divisor of a 16-bit z-depth
    image) or a :class:`~diffusion_handles.io.DepthReading` (``--depth-kind`` and the rest). The
    image is read upright (its EXIF orientation applied), the depth resized to it.

    Returns the summary written to ``summary.json``.
    """
    t_load = time.perf_counter()
    image, depth, mask = _load_inputs(image_path, depth_path, mask_path, depth_scale, move_camera)
    load_ms = (time.perf_counter() - t_load) * 1e3

    res = preview_edit(image, depth, mask, edit, fov_deg, move_camera=move_camera)
    inputs = {
        "image": str(image_path),
        "depth": str(depth_path),
        "mask": None if mask_path is None else str(mask_path),
        "move_camera": move_camera,
    }
    summary = _summary(inputs, depth, mask, edit, fov_deg, res)
    summary["timings_ms"] = {"load": load_ms, **res.timings_ms}
    _write_outputs(out_dir, image, depth, res, summary)
    return summary


def _load_inputs(image_path: str | Path, depth_path: str | Path, mask_path: str | Path | None,
                 depth_scale: float | DepthReading, move_camera: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read and check the image ``(1, 3, H, W)`` (upright), z-depth ``(1, 1, H, W)`` (resized to
    it) and object mask ``(1, 1, H, W)`` (all ones for a camera move without a mask)."""
    from diffusion_handles.io import (
        check_mask_not_empty,
        check_matches_image,
        load_depth,
        load_mask,
        read_photo,
    )

    photo = read_photo(image_path, "IMAGE")
    image = photo.image
    depth = load_depth(depth_path, "--depth", depth_scale, fit_to=photo)
    if mask_path is None:
        if not move_camera:
            raise HandlesError("--mask: expected an object mask PNG (only --camera edits need none), got nothing")
        return image, depth, torch.ones_like(depth)
    mask = load_mask(mask_path, "--mask")
    check_matches_image(photo, "--mask", mask)
    check_mask_not_empty(mask)
    return image, depth, mask


def _summary(inputs: dict, depth: torch.Tensor, mask: torch.Tensor, edit: HandleEdit, fov_deg: float,
             res: PreviewResult) -> dict:
    """The JSON summary of a preview (without its timings): inputs, transform, camera, results."""
    geom = res.geometry
    cam = geom.camera
    return {
        "command": "preview",
        "inputs": {
            **inputs,
            "size_hw": [cam.height, cam.width],
            "depth_range": [float(depth.min()), float(depth.max())],
            "object_pixels": int(mask.sum()),
        },
        "transform": {
            "edit": edit.to_dict(),
            "pivot": geom.pivots[0].tolist(),
            "matrix": geom.transforms[0].to_list(),
            "axes": "camera: x right, y down, z forward; scene units = depth units",
        },
        "camera": {"fov_deg": fov_deg, "fx": cam.fx, "fy": cam.fy, "cx": cam.cx, "cy": cam.cy},
        "results": {
            "edited_object_pixels": int((res.edited_mask > 0.5).sum()),
            "hole_pixels": int((res.valid < 0.5).sum()),
            "edited_depth_range": [float(res.edited_depth.min()), float(res.edited_depth.max())],
        },
    }


def _write_outputs(out_dir: str | Path, image: torch.Tensor, depth: torch.Tensor, res: PreviewResult,
                   summary: dict) -> None:
    """Write the preview's images, edited depth and ``summary.json`` into ``out_dir`` atomically."""
    from diffusion_handles.io import save_image
    from diffusion_handles.outputs import atomic_output_dir
    from diffusion_handles.viz import colorize_depth, side_by_side

    with atomic_output_dir(out_dir) as tmp:
        save_image(tmp / "preview.png", res.preview)
        save_image(tmp / "edited_mask.png", (res.edited_mask > 0.5).float())
        save_image(tmp / "valid_mask.png", res.valid)
        np.save(tmp / "edited_depth.npy", res.edited_depth[0, 0].numpy().astype(np.float32))
        depth_rgb = colorize_depth(res.edited_depth)
        save_image(tmp / "edited_depth.png", depth_rgb)
        save_image(
            tmp / "comparison.png",
            side_by_side([
                ("input", image),
                ("3D preview (holes magenta)", res.preview),
                ("input depth", colorize_depth(depth)),
                ("edited depth", depth_rgb),
            ]),
        )
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
