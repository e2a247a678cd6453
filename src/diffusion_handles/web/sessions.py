"""Server-side editing sessions: one image with its depth, object mask and prompt.

Sessions live in memory, keyed by a random server-generated token; nothing a client sends is
ever used as a file path. The store keeps at most ``max_sessions`` (least recently used are
dropped).
"""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from diffusion_handles.errors import HandlesError


class NotFound(Exception):
    """An unknown id (answered with HTTP 404)."""


def new_id() -> str:
    """A random URL-safe token (128 bits)."""
    return secrets.token_urlsafe(16)


def fit_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    """``(h, w)`` scaled down (never up) so that the longer side is at most ``max_side``."""
    s = min(1.0, max_side / max(h, w))
    return max(1, round(h * s)), max(1, round(w * s))


@dataclass
class Session:
    """An image being edited.

    Attributes:
        image: ``(H, W, 3)`` uint8; depth: ``(H, W)`` float32 z-depth (scene units).
        masks: named candidate object masks ``(H, W)`` bool (from a scene, an upload or a
            segmenter); ``selected`` indexes the one being edited (None: nothing selected).
        fov_deg: horizontal field of view (degrees).
    """

    id: str
    image: np.ndarray
    depth: np.ndarray
    prompt: str
    fov_deg: float
    source: str
    masks: list[tuple[str, np.ndarray]] = field(default_factory=list)
    selected: int | None = None
    created: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def size_hw(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    @property
    def mask(self) -> np.ndarray | None:
        return None if self.selected is None else self.masks[self.selected][1]

    def require_mask(self) -> np.ndarray:
        m = self.mask
        if m is None:
            raise HandlesError("mask: no object is selected; pick a scene object, upload a mask or use a selection tool first")
        if not m.any():
            raise HandlesError("mask: expected at least one object pixel, got an empty mask")
        return m

    def add_mask(self, name: str, mask: np.ndarray) -> int:
        h, w = self.size_hw
        if mask.shape != (h, w):
            mask = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        if not mask.any():
            raise HandlesError("mask: expected at least one object pixel (value >= 128), got an empty mask")
        self.masks.append((name, mask.astype(bool)))
        self.selected = len(self.masks) - 1
        return self.selected

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``image (1, 3, H, W)`` in [0, 1], ``depth (1, 1, H, W)`` z-depth, ``mask (1, 1, H, W)``."""
        m = self.require_mask()
        image = torch.from_numpy(self.image).permute(2, 0, 1)[None].float() / 255.0
        depth = torch.from_numpy(self.depth)[None, None].float()
        mask = torch.from_numpy(m)[None, None].float()
        return image, depth, mask

    def content_key(self, prompt: str, model: str, mask: np.ndarray | None = None) -> str:
        """Hash of image, depth, the inversion's mask (default: the selected one), prompt and
        model: the inversion cache key."""
        h = hashlib.sha256()
        for arr in (self.image, self.depth, self.require_mask() if mask is None else mask):
            h.update(str(arr.shape).encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update(prompt.encode())
        h.update(b"\0" + model.encode() + b"\0" + repr(self.fov_deg).encode())
        return h.hexdigest()


def make_session(image: np.ndarray, depth: np.ndarray, prompt: str, fov_deg: float, source: str,
                 max_side: int) -> Session:
    """A session at working resolution (longer side at most ``max_side``).

    ``image`` (H, W, 3) uint8 and ``depth`` (h, w) float32 may differ in size only by a resize
    of the same aspect ratio; depth is resized with nearest neighbour (no mixed edges).
    """
    h, w = image.shape[:2]
    dh, dw = depth.shape
    if abs(dh / dw - h / w) > 0.02:
        raise HandlesError(f"depth: expected the image's aspect ratio ({w}x{h}), got {dw}x{dh}")
    H, W = fit_size(h, w, max_side)
    if (H, W) != (h, w):
        image = cv2.resize(image, (W, H), interpolation=cv2.INTER_AREA)
    if (H, W) != (dh, dw):
        depth = cv2.resize(depth, (W, H), interpolation=cv2.INTER_NEAREST)
    if not (math.isfinite(fov_deg) and 0 < fov_deg < 180):
        raise HandlesError(f"fov_deg: expected a finite number of degrees in (0, 180), got {fov_deg}")
    return Session(new_id(), np.array(image, dtype=np.uint8), np.array(depth, dtype=np.float32),
                   prompt, float(fov_deg), source)


class SessionStore:
    """Thread-safe in-memory sessions, at most ``max_sessions`` (LRU eviction)."""

    def __init__(self, max_sessions: int = 32):
        self.max_sessions = max_sessions
        self._items: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, s: Session) -> Session:
        with self._lock:
            self._items[s.id] = s
            while len(self._items) > self.max_sessions:
                self._items.popitem(last=False)
        return s

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def get(self, sid: str) -> Session:
        with self._lock:
            s = self._items.get(sid)
            if s is None:
                raise NotFound(f"session: no session with id {sid!r} (unknown or expired; open the image again)")
            self._items.move_to_end(sid)
            return s
