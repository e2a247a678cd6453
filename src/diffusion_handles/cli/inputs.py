"""The inputs of the edit-like commands (``edit``, ``remove``, ``animate``): their flags, and IMAGE,
depth, mask(s) and background depth loaded and validated (not a sub-command).

* one object: ``--mask`` / ``--object`` / ``--click`` (:func:`load_edit_inputs`);
* ``--camera``: no object, the whole image is the inversion's mask (:func:`load_camera_inputs`);
* ``--edits FILE.json``: several objects (:func:`load_multi_inputs`).

Missing depth or masks come from the perception stages (Sec. 5); every model loads before any runs.
IMAGE is read upright (its EXIF orientation applied); masks must have its upright size; a depth
file of another size (same aspect ratio) is resized to it; ``--depth-kind`` says what the depth
file's values are (:class:`~diffusion_handles.io.DepthReading`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from diffusion_handles.cli.edit_modes import EditEntry
from diffusion_handles.cli.perception_args import (
    add_object_args,
    add_perception_args,
    check_one_object_source,
    clicks_from_args,
    perception_config_from_args,
)
from diffusion_handles.errors import HandlesError

IMAGE_HELP = "input image (PNG, JPEG, WebP, TIFF or HEIC; turned upright by its EXIF orientation)"
DEPTH_HELP = ("depth map: .npy (H, W), 16-bit PNG or TIFF (value / --depth-scale), float TIFF, PFM or OpenEXR, of "
              "IMAGE's aspect ratio (resized to it, bilinear); its values are z-depth in scene units unless "
              "--depth-kind says otherwise")
DEPTH_SCALE_HELP = "16-bit PNG or TIFF z-depth: scene units = value / depth-scale (default 1000: millimetres -> metres)"


def add_edit_input_args(p: argparse.ArgumentParser, *, prompt_help: str, mask_help: str,
                        background_help: str | None = None) -> None:
    """IMAGE, ``--prompt``, ``--depth``, ``--depth-scale``, ``--mask`` / ``--object`` / ``--click``,
    the perception models and (with ``background_help``) ``--background-depth``: the inputs every
    edit-like command reads with :func:`load_edit_inputs`."""
    p.add_argument("image", metavar="IMAGE", help=IMAGE_HELP)
    p.add_argument("--prompt", required=True, metavar="TEXT", help=prompt_help)
    p.add_argument("--depth", default=None, help=DEPTH_HELP + " (default: estimated with --depth-model)")
    p.add_argument("--depth-scale", default="1000", help=DEPTH_SCALE_HELP)
    p.add_argument("--mask", default=None, help=mask_help)
    add_object_args(p, mask=False)
    add_perception_args(p, depth=True, segment=True, inpaint=True, device=False)
    if background_help is not None:
        p.add_argument("--background-depth", default=None, help=background_help)


def depth_reading_from_args(args: argparse.Namespace):
    """How ``--depth`` (and ``--background-depth``) files are read: ``--depth-kind`` (``z`` unless
    given), ``--depth-scale``, ``--depth-range``, checked (:class:`~diffusion_handles.io.DepthReading`)."""
    from diffusion_handles.io import DEFAULT_DEPTH_RANGE, DepthReading

    try:
        scale = float(args.depth_scale)
    except ValueError:
        raise HandlesError(f"--depth-scale: expected a number, got {args.depth_scale!r}") from None
    near, far = getattr(args, "depth_range", None) or DEFAULT_DEPTH_RANGE
    return DepthReading(kind=getattr(args, "depth_kind", None) or "z", scale=scale, near=near, far=far)


def _read_image_and_depth(args: argparse.Namespace) -> tuple:
    """IMAGE upright (a :class:`~diffusion_handles.io.Photo`), ``--depth`` resized to it (None
    when not given) and how depth files are read."""
    from diffusion_handles.io import load_depth, read_photo

    reading = depth_reading_from_args(args)
    photo = read_photo(args.image, "IMAGE")
    depth = None if args.depth is None else load_depth(args.depth, "--depth", reading, fit_to=photo)
    return photo, depth, reading


def _note_orientation(command: str, photo) -> None:
    """Say that IMAGE was turned upright (once every input file was read and checked)."""
    if photo.orientation != 1:
        (sw, sh), (w, h) = photo.stored_size, photo.size
        _print_notes(command, [f"IMAGE: turned upright by its EXIF orientation {photo.orientation} (stored {sw}x{sh}, "
                               f"edited and written as {w}x{h})"])


def _print_notes(command: str, notes: list[str]) -> None:
    for note in notes:
        print(f"handles {command}: note: {note}", file=sys.stderr)


def _background_depth(args: argparse.Namespace, photo, reading):
    """``--background-depth`` (``None`` when not given), resized to IMAGE; z-depth only: a relative
    map's scale and shift are unknown, so it could not be put in the frame of ``--depth``."""
    from diffusion_handles.io import kind_flag, load_depth

    if getattr(args, "background_depth", None) is None:
        return None
    if reading.relative:
        raise HandlesError(f"--background-depth: expected no background depth with --depth-kind {kind_flag(reading.kind)} "
                           "(a relative map's scale and shift are unknown, so it cannot be put in the frame of --depth), "
                           "got a file; leave it out (it is filled from the depth) or give z-depth maps")
    return load_depth(args.background_depth, "--background-depth", reading, fit_to=photo)


def load_edit_inputs(args: argparse.Namespace, command: str) -> tuple:
    """IMAGE, ``--depth``, ``--mask`` (or ``--object``/``--click``) and ``--background-depth`` of an
    edit-like command, validated; missing depth or mask come from the perception stages (Sec. 5).

    Checks ``--depth-scale`` and that exactly one object source is given first.

    Returns:
        ``(image (1,3,H,W), depth (1,1,H,W), mask (1,1,H,W), background (1,1,H,W) or None,
        prepared)``; ``prepared`` is the :func:`~diffusion_handles.perception.prepare_inputs`
        result when a perception stage ran, else ``None``.
    """
    from diffusion_handles.io import check_mask_not_empty, check_matches_image, load_mask
    from diffusion_handles.perception import prepare_inputs

    check_one_object_source(args)
    photo, depth, reading = _read_image_and_depth(args)
    image = photo.image
    mask = None if args.mask is None else load_mask(args.mask, "--mask")
    if mask is not None:
        check_matches_image(photo, "--mask", mask)
        check_mask_not_empty(mask)
    background = _background_depth(args, photo, reading)
    _note_orientation(command, photo)
    prepared = None
    if depth is None or mask is None:  # perception stages (Sec. 5): all models load before any runs
        prepared = prepare_inputs(image, depth=depth, mask=mask, object_text=args.object,
                                  clicks=clicks_from_args(args), models=perception_config_from_args(args),
                                  need_background=background is None)
        _print_notes(command, prepared.info["notes"])
        depth, mask = prepared.depth, prepared.mask
        background = prepared.background_depth if background is None else background
    return image, depth, mask, background, prepared


def load_camera_inputs(args: argparse.Namespace, command: str = "edit") -> tuple:
    """IMAGE and its depth (given or estimated) for ``--camera``; the mask is the whole image.

    Returns ``(image (1,3,H,W), depth (1,1,H,W), mask (1,1,H,W) ones, info dict or None)``.
    """
    import torch

    photo, depth, _ = _read_image_and_depth(args)
    image = photo.image
    _note_orientation(command, photo)
    info = None
    if depth is None:
        from diffusion_handles.perception.depth import DepthEstimator

        cfg = perception_config_from_args(args)
        est = DepthEstimator.load(cfg.depth, bypass="give --depth FILE to skip depth estimation").estimate(image)
        depth = est.depth.float()
        info = {"depth": {"source": "estimated", "model": est.model, "kind": est.kind}, "notes": []}
    return image, depth, torch.ones_like(depth), info


def _entry_masks(photo, entries: list[EditEntry]) -> list:
    """The masks of the entries that name a ``"mask"`` file, validated; ``None`` for the others."""
    from diffusion_handles.io import check_mask_not_empty, check_matches_image, load_mask

    masks: list = [None] * len(entries)
    for e in entries:
        if e.mask_path is not None:
            arg = f"--edits [{e.index}].mask"
            m = load_mask(e.mask_path, arg)
            check_matches_image(photo, arg, m)
            check_mask_not_empty(m, arg)
            masks[e.index] = m
    return masks


def _segment_entries(image, entries: list[EditEntry], masks: list, cfg) -> tuple[dict, list[str]]:
    """Fill in ``masks`` for the entries with an ``"object"`` or ``"click"`` (every segmentation
    model loads before any runs); returns the selections' summaries and notes."""
    notes: list[str] = []
    selections: dict = {}
    if all(e.mask_path is not None for e in entries):
        return selections, notes
    from diffusion_handles.perception.segment import SamSegmenter, TextDetector, select_object

    detector = TextDetector.load(cfg.segment) if any(e.text is not None for e in entries) else None
    sam = SamSegmenter.load(cfg.segment, bypass='give "mask" files in --edits instead of "object"/"click"')
    for e in entries:
        if e.mask_path is None:
            sel = select_object(image, text=e.text, clicks=e.clicks, config=cfg.segment, detector=detector, sam=sam)
            masks[e.index] = (sel.mask > 0.5).float()
            selections[str(e.index)] = sel.summary()
            notes += sel.notes
    return selections, notes


def load_multi_inputs(args: argparse.Namespace, entries: list[EditEntry], command: str = "edit") -> tuple:
    """IMAGE, depth, one mask per entry, the background depth of the scene without *all* the
    objects, and the perception info. Segmentation models load before any runs; the depth and
    d'_b come from :func:`~diffusion_handles.perception.prepare_inputs` with the union mask.

    Returns ``(image, depth, masks [(1,1,H,W)], union, background, prepared)``.
    """
    import torch

    from diffusion_handles.geometry.multi import disjoint_masks
    from diffusion_handles.io import check_mask_not_empty
    from diffusion_handles.perception import prepare_inputs

    photo, depth, reading = _read_image_and_depth(args)
    image = photo.image
    background = _background_depth(args, photo, reading)
    masks = _entry_masks(photo, entries)
    _note_orientation(command, photo)
    cfg = perception_config_from_args(args)
    selections, notes = _segment_entries(image, entries, masks, cfg)
    masks = disjoint_masks(masks)
    union = torch.stack([m > 0.5 for m in masks]).any(0).float()
    check_mask_not_empty(union, "--edits")
    prepared = prepare_inputs(image, depth=depth, mask=union, models=cfg, need_background=background is None)
    _print_notes(command, notes + prepared.info["notes"])
    prepared.info["objects"] = selections
    depth = prepared.depth
    background = prepared.background_depth if background is None else background
    return image, depth, masks, union, background, prepared


@dataclass
class ModeInputs:
    """What :func:`load_mode_inputs` read: every tensor (1,C,H,W); ``mask`` is the inversion's mask
    (the object's, the union of the objects' with ``--edits``, all ones with ``--camera``)."""

    image: Any
    depth: Any
    mask: Any
    background: Any = None  # d'_b, None with --camera
    object_masks: list | None = None  # --edits: one mask per entry
    prepared: Any = None  # the perception stages' result when one ran
    perception_info: dict | None = None  # --camera: the depth estimate's description


def load_mode_inputs(args: argparse.Namespace, mode: str, entries: list[EditEntry] | None,
                     command: str) -> ModeInputs:
    """The inputs of an edit of ``mode`` (``"object"``, ``"camera"`` or ``"multi"``, as returned by
    :func:`~diffusion_handles.cli.edit_modes.check_mode_args`)."""
    if mode == "camera":
        image, depth, mask, info = load_camera_inputs(args, command)
        return ModeInputs(image, depth, mask, perception_info=info)
    if mode == "multi":
        image, depth, object_masks, mask, background, prepared = load_multi_inputs(args, entries, command)
        return ModeInputs(image, depth, mask, background, object_masks, prepared)
    image, depth, mask, background, prepared = load_edit_inputs(args, command)
    return ModeInputs(image, depth, mask, background, prepared=prepared)


def check_models(args: argparse.Namespace, mode: str) -> None:
    """Every model the command will load from a hub id, in the order it loads them (the perception
    models the flags call for, then ``--model``), checked before transformers or diffusers are
    imported: an unavailable one fails at once with its loader's one line
    (:func:`~diffusion_handles.hub.check_available`). ``--edits`` entries' segmentation models are
    left to their loaders."""
    from diffusion_handles.cli.common import check_model
    from diffusion_handles.hub import check_available

    if mode == "object":
        check_one_object_source(args)  # conflicting flags are named before any model
    if args.depth is None:
        check_available(args.depth_model, what="depth", option="--depth-model",
                        bypass="give --depth FILE to skip depth estimation")
    if mode == "object" and args.object:
        check_available(args.detector_model, what="text detection", option="--detector-model",
                        bypass="give --click X,Y or --mask FILE instead of --object")
    if mode == "object" and (args.object or args.click):
        check_available(args.sam_model, what="SAM", option="--sam-model",
                        bypass="give --mask FILE instead of --object/--click")
    check_model(args.model)
