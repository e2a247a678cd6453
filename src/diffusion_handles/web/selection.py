"""Selecting the object to edit in a session: one of its masks, or a click or text query
answered by a segmenter (the new mask is added and selected)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from diffusion_handles.errors import HandlesError
from diffusion_handles.web.context import ApiError
from diffusion_handles.web.perception import Perception
from diffusion_handles.web.schemas import SelectRequest
from diffusion_handles.web.sessions import Session


def select_object(s: Session, req: SelectRequest, perception: Perception) -> None:
    """Select the object of ``req`` in ``s``: a mask index, or a click / text query segmented by
    ``perception``. Raises :class:`ApiError` 422 for a request missing what its mode needs."""
    if req.mode == "mask":
        if req.index is None or req.index >= len(s.masks):
            raise ApiError(422, f"index: expected a mask index in [0, {len(s.masks)}), got {req.index}")
        with s.lock:
            s.selected = req.index
        return
    name, m = _segment_click(s, req, perception) if req.mode == "click" else _segment_text(s, req, perception)
    with s.lock:
        s.add_mask(name, m)


def _segment_click(s: Session, req: SelectRequest, perception: Perception) -> tuple[str, np.ndarray]:
    """The mask ``(H, W)`` bool a point-prompted segmenter gives for the clicked pixel, and its name."""
    if req.x is None or req.y is None:
        raise ApiError(422, "x, y: expected the clicked pixel's coordinates, got none")
    h, w = s.size_hw
    if not (0 <= req.x < w and 0 <= req.y < h):
        raise ApiError(422, f"x, y: expected a pixel inside the {w}x{h} image, got ({req.x}, {req.y})")
    with _way_round():
        m = perception.segment_click(s.image, req.x, req.y)
    return f"click ({req.x:.0f}, {req.y:.0f})", m


def _segment_text(s: Session, req: SelectRequest, perception: Perception) -> tuple[str, np.ndarray]:
    """The mask ``(H, W)`` bool the text-prompted segmenter gives for the query, and its name."""
    if not req.query or not req.query.strip():
        raise ApiError(422, "query: expected a text query such as 'the red cube', got nothing")
    with _way_round():
        m = perception.segment_text(s.image, req.query.strip())
    return f"text: {req.query.strip()[:40]}", m


@contextmanager
def _way_round() -> Iterator[None]:
    """A selection tool's failure (e.g. its weights are missing) says how to do without it."""
    try:
        yield
    except HandlesError as e:
        msg = str(e)
        if "mask" not in msg:
            msg += "; select a scene object or upload a mask instead"
        raise HandlesError(msg) from None
