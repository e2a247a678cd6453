"""The cases of the benchmark kinds beyond the paper's object edits (:mod:`.new_kinds`,
:mod:`.restyle`): the kinds and their methods, the case record, the draw limits and the per-seed
draw state that every kind's case maker shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffusion_handles.errors import HandlesError

NEW_KINDS = ("camera", "remove", "multi", "restyle")  # the index is the kind's random stream: append only
# the methods each kind can run (the first of each is the library's)
KIND_METHODS = {"camera": ("ours", "warp_only"), "remove": ("ours", "warp_only"), "multi": ("ours", "warp_only"),
                "restyle": ("ours", "warp_only", "depth_only", "chain")}
EFFECT_THRESHOLD = 0.03


@dataclass
class KindCase:
    """A case of a new kind (images ``(H, W, 3)`` uint8, depths ``(H, W)`` float32).

    ``masks``: ``(K, H, W)`` bool, the objects the edit moves or removes (``K = 0`` for a camera
    move); ``edits``: one :meth:`HandleEdit.to_dict` per object, or the camera's one;
    ``prompt``: what the methods are given (for a removal: the caption without the object).
    """

    case_id: str
    seed: int
    kind: str
    prompt: str
    fov_deg: float
    image: np.ndarray
    depth: np.ndarray
    gt: np.ndarray
    gt_depth: np.ndarray
    masks: np.ndarray
    clean_depth: np.ndarray
    edits: list[dict]
    stats: dict = field(default_factory=dict)

    def save(self, folder: str | Path) -> Path:
        from diffusion_handles.bench.cases import write_case_folder

        meta = {"case_id": self.case_id, "seed": self.seed, "kind": self.kind, "prompt": self.prompt,
                "fov_deg": self.fov_deg, "edits": self.edits, "stats": self.stats}
        return write_case_folder(folder, {"input": self.image, "gt": self.gt},
                                 {"depth": self.depth, "gt_depth": self.gt_depth, "masks": self.masks,
                                  "clean_depth": self.clean_depth}, meta)

    @staticmethod
    def load(folder: str | Path) -> KindCase:
        from diffusion_handles.bench.cases import read_case_folder

        meta, arr, png = read_case_folder(folder, ("input", "gt"))
        return KindCase(case_id=meta["case_id"], seed=int(meta["seed"]), kind=meta["kind"], prompt=meta["prompt"],
                        fov_deg=float(meta["fov_deg"]), image=png["input"], depth=arr["depth"], gt=png["gt"],
                        gt_depth=arr["gt_depth"], masks=arr["masks"].astype(bool), clean_depth=arr["clean_depth"],
                        edits=meta["edits"], stats=meta["stats"])


def _candidates(src, size: int, min_fraction: float, min_pixels: int) -> list[int]:
    areas = src.masks.reshape(src.masks.shape[0], -1).sum(1) if src.masks.size else np.zeros(0)
    return [k for k, a in enumerate(areas) if a >= max(min_fraction * size * size, min_pixels)]


@dataclass(frozen=True)
class KindLimits:
    """When :func:`make_kind_case` refuses a drawn edit, and how often it draws.

    ``max_holes_camera``: most of the image a camera move may disocclude; ``min_pixels`` /
    ``min_object_fraction``: the smallest object that can be moved or removed (and that must stay
    visible after a move); ``max_tries``: draws before the seed is skipped.
    """

    max_holes_camera: float = 0.15
    min_pixels: int = 30
    min_object_fraction: float = 0.01
    max_tries: int = 60


@dataclass
class _Draw:
    """The scene of one seed as :func:`make_kind_case` draws edits in it: the render ``src``, its
    camera, z-depth ``(1, 1, H, W)`` float64, the kind's random stream and the rejections so far."""

    kind: str
    seed: int
    size: int
    spp: int
    scene: Any
    src: Any
    cam: Any
    depth_t: Any
    rng: np.random.Generator
    rejected: dict[str, int] = field(default_factory=dict)

    def reject(self, why: str) -> None:
        self.rejected[why] = self.rejected.get(why, 0) + 1

    def checked_edit(self, compute, args: tuple, max_holes: float):
        """``(geometry, holes fraction)`` of the 3D edit ``compute(*args)`` (``compute_edit`` or
        ``compute_multi_edit``), or ``None`` when it fails or uncovers more than ``max_holes`` of
        the image (the refusal counted: ``"geometry"``, ``"disocclusion"``)."""
        try:
            geom = compute(*args)
        except HandlesError:
            self.reject("geometry")
            return None
        holes = float((geom.valid < 0.5).double().mean())
        if holes > max_holes:
            self.reject("disocclusion")
            return None
        return geom, holes

    def case(self, gt, masks, edits, prompt, clean_depth, stats) -> KindCase:
        src, size = self.src, self.size
        return KindCase(case_id=f"{self.kind}_s{self.seed}", seed=int(self.seed), kind=self.kind, prompt=prompt,
                        fov_deg=float(self.scene.fov_deg), image=src.rgb, depth=src.depth.astype(np.float32), gt=gt.rgb,
                        gt_depth=gt.depth.astype(np.float32), masks=np.asarray(masks, bool).reshape(-1, size, size),
                        clean_depth=clean_depth.astype(np.float32), edits=edits, stats={**stats, "rejected": self.rejected})
