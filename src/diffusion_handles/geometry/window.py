"""The edit window: the part of a large photo the model works on (beyond the paper).

A phone photo is 4032x3024; the depth-conditioned model was trained at one size (512 for SD2-depth,
128 for TinyWorld). Running it on the whole photo scaled down spends most of its pixels on what
the edit does not touch and leaves the object small; running it at the photo's size is far outside
its training and its memory. The window is a square crop around everything the edit changes (the
object where it is and where it goes, with a margin for its shadow and context), scaled to the
model's size; the result is brought back into the full-resolution photo.

Boxes are ``(x0, y0, x1, y1)`` in input pixels, half-open. A window's camera is
:meth:`~diffusion_handles.geometry.camera.Camera.window` of the photo's (the principal point shifts
by ``(x0, y0)``; scaling the crop to the model's size scales the focal length).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from diffusion_handles.geometry.camera import Camera, lift, project

# The window's margin around the edit's box, as a fraction of the box's longer side. Measured on 8
# tuning edits at 512 px (benchmarks/window_margin.py --seed 1003100): 0.25 over 0.5 gains +0.30 dB
# [+0.19, +0.43] on the whole image and +0.69 dB on the uncovered pixels, IoU +0.03.
WINDOW_MARGIN = 0.25
WHOLE_FRACTION = 0.6  # a window covering more than this fraction of the image's area: use the whole image

Box = tuple[int, int, int, int]


def _bbox(mask: torch.Tensor) -> tuple[float, float, float, float] | None:
    """``(x0, y0, x1, y1)`` of ``mask > 0.5`` ``(H, W)`` in pixels (half-open), or ``None``."""
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    if ys.numel() == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1


def moved_box(depth: torch.Tensor, mask: torch.Tensor, transform, camera: Camera) -> tuple[float, float, float, float] | None:
    """The image box ``(x0, y0, x1, y1)`` (pixels of ``camera``) of the object's lifted pixels
    moved by ``transform`` (a resolved :class:`~diffusion_handles.geometry.transform.Similarity`),
    or ``None`` when none lands in front of the camera. ``depth``, ``mask``: ``(1, 1, H, W)``."""
    pts = lift(depth.double(), camera)[0].permute(1, 2, 0)[mask[0, 0] > 0.5]  # (n, 3)
    if pts.shape[0] == 0:
        return None
    px, z = project(transform.apply(pts), camera)
    px = px[z > 1e-6]
    if px.shape[0] == 0:
        return None
    return float(px[:, 0].min()), float(px[:, 1].min()), float(px[:, 0].max()) + 1, float(px[:, 1].max()) + 1


def choose_window(image_hw: tuple[int, int], boxes: list[tuple[float, float, float, float]],
                  margin: float = WINDOW_MARGIN) -> Box | None:
    """The square window around ``boxes`` (the edit's source and target, in input pixels), grown by
    ``margin`` of their union's longer side on every side, moved (not shrunk) to lie inside the
    image; ``None`` (use the whole image) when the square does not fit in the image or covers
    more than :data:`WHOLE_FRACTION` of it.

    Args:
        image_hw: ``(H, W)`` of the input; boxes: ``(x0, y0, x1, y1)`` each, pixels.
    """
    h, w = (int(v) for v in image_hw)
    if not boxes:
        return None
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)
    side = int(math.ceil(side))
    if side > min(h, w) or side * side > WHOLE_FRACTION * h * w:
        return None
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    left = int(round(min(max(cx - side / 2.0, 0), w - side)))
    top = int(round(min(max(cy - side / 2.0, 0), h - side)))
    return left, top, left + side, top + side


def crop(x: torch.Tensor, box: Box) -> torch.Tensor:
    """``x`` ``(B, C, H, W)`` cropped to ``box``."""
    x0, y0, x1, y1 = box
    return x[..., y0:y1, x0:x1]


def paste(part: torch.Tensor, canvas: torch.Tensor, box: Box, mode: str = "bilinear") -> torch.Tensor:
    """``canvas`` ``(B, C, H, W)`` with ``part`` ``(B, C, h, w)`` resized into ``box`` (a new tensor)."""
    x0, y0, x1, y1 = box
    size = (y1 - y0, x1 - x0)
    if tuple(part.shape[-2:]) != size:
        part = (F.interpolate(part, size=size, mode="nearest") if mode == "nearest"
                else F.interpolate(part, size=size, mode=mode, align_corners=False))
    out = canvas.clone()
    out[..., y0:y1, x0:x1] = part.to(out)
    return out


def _identity(hw: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """``(1, 2, h, w)`` normalised pixel-centre coordinates ``((j + .5) / w, (i + .5) / h)``."""
    h, w = hw
    ys = (torch.arange(h, dtype=like.dtype, device=like.device) + 0.5) / h
    xs = (torch.arange(w, dtype=like.dtype, device=like.device) + 0.5) / w
    return torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)])[None]


def resize_source(source: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Normalised source coordinates ``(1, 2, h, w)`` resampled on an ``H x W`` grid: the
    displacement from the identity is resized (bilinear) and added to the finer grid's identity,
    so the identity stays exact up to the borders (resizing the coordinates themselves would
    clamp them within half a pixel of the edge)."""
    if tuple(source.shape[-2:]) == tuple(hw):
        return source
    disp = source - _identity(tuple(source.shape[-2:]), source)
    disp = F.interpolate(disp, size=tuple(hw), mode="bilinear", align_corners=False)
    return _identity(tuple(hw), source) + disp


def source_to_image(source: torch.Tensor, box: Box, image_hw: tuple[int, int]) -> torch.Tensor:
    """A flow's source coordinates in the window, ``(1, 2, h, w)`` normalised to the window's
    ``[0, 1]^2``, as ``(1, 2, H, W)`` source coordinates of the whole image (normalised to its
    ``[0, 1]^2``): resampled on the box (:func:`resize_source`), shifted and scaled into the
    image, the identity outside."""
    h, w = (int(v) for v in image_hw)
    x0, y0, x1, y1 = box
    part = resize_source(source, (y1 - y0, x1 - x0))
    scale = torch.tensor([(x1 - x0) / w, (y1 - y0) / h], dtype=source.dtype, device=source.device).view(1, 2, 1, 1)
    shift = torch.tensor([x0 / w, y0 / h], dtype=source.dtype, device=source.device).view(1, 2, 1, 1)
    return paste(part * scale + shift, _identity((h, w), source), box)


def edit_boxes(depth: torch.Tensor, masks: list[torch.Tensor], edits: list, camera: Camera,
               side: int = 256) -> list[tuple[float, float, float, float]]:
    """The boxes an edit touches, in the input's pixels: each object where it is and where its
    edit moves it (lifted and moved on a copy scaled so its longer side is ``side`` px, which
    is enough for a box).

    Args:
        depth: ``(1, 1, H, W)`` z-depth; masks: ``(1, 1, H, W)`` per object; edits: one
            :class:`~diffusion_handles.geometry.transform.HandleEdit` (or ``Similarity``) per mask;
            camera: the photo's.
    """
    from diffusion_handles.geometry.edit import object_centroid
    from diffusion_handles.geometry.transform import HandleEdit

    h, w = depth.shape[-2:]
    s = min(1.0, side / max(h, w))
    hw = (max(1, round(h * s)), max(1, round(w * s)))
    small_cam = camera.resized(*hw)
    d = F.interpolate(depth.double(), size=hw, mode="nearest")
    boxes = []
    for m, e in zip(masks, edits, strict=True):
        ms = (F.interpolate((m > 0.5).double(), size=hw, mode="nearest") > 0.5).double()
        src = _bbox(ms[0, 0])
        if src is None:
            continue
        boxes.append(src)
        t = e
        if isinstance(e, HandleEdit):
            t = e.resolve(object_centroid(lift(d, small_cam), ms)[0])
        moved = moved_box(d, ms, t, small_cam)
        if moved is not None:
            boxes.append(moved)
    sx, sy = w / hw[1], h / hw[0]
    return [(max(0.0, b[0] * sx), max(0.0, b[1] * sy), min(float(w), b[2] * sx), min(float(h), b[3] * sy))
            for b in boxes]
