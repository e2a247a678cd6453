"""3DEditBench's scores of one edited image: PSNR, SSIM, LPIPS and edit adherence.

Images ``(H, W, 3)`` uint8 are resized to ``EVAL_SIZE x EVAL_SIZE`` (256, as the benchmark)
before scoring; edit adherence is the IoU of two point-prompted segments, the prediction's
keypoints carried by the dense optical flow ``(H, W, 2)`` (pixels) from the input to the edit.
The definitions, and the two stand-ins (OpenCV DIS flow for DPFlow; SAM from local weights or a
colour segmenter for SAM ViT-H), are in the docstring of :mod:`diffusion_handles.bench.editbench3d`.
cv2, scikit-image, torch and SAM are imported inside the functions that use them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from diffusion_handles.bench.editbench3d.io import EditBenchCase

EVAL_SIZE = 256  # 3DEditBench scores at 256 x 256


def resize_uint8(img: np.ndarray, size: int = EVAL_SIZE) -> np.ndarray:
    """Resize an ``(H, W, 3)`` uint8 image to ``size x size`` (scikit-image, anti-aliased), as the benchmark."""
    from skimage.transform import resize

    return resize(img, (size, size), preserve_range=True).astype(np.uint8)


def _resize_mask(m: np.ndarray, size: int = EVAL_SIZE) -> np.ndarray:
    import cv2

    return cv2.resize(np.asarray(m, np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0


def dense_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Optical flow ``(H, W, 2)`` (dx, dy) from uint8 RGB ``a`` to ``b`` (OpenCV DIS, medium preset)."""
    import cv2

    ga = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
    gb = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis.calc(ga, gb, None)


class PointSegmenter:
    """Point-prompted segmentation for edit adherence: SAM from local weights, or the colour stand-in."""

    def __init__(self, sam_model: str | None = None, device: str = "cpu", loaded=None) -> None:
        """``loaded``: a :class:`~diffusion_handles.perception.segment.SamSegmenter` already loaded
        (the runner's, for the click path) to use instead of loading ``sam_model`` again."""
        self.sam = loaded
        self.kind = "sam" if loaded is not None else "colour"
        if sam_model and loaded is None:
            try:
                from diffusion_handles.perception.segment import SamSegmenter, SegmentConfig

                cfg = SegmentConfig(sam_model=sam_model, device=device)
                folder = Path(sam_model).expanduser()
                if folder.is_dir() or _in_hf_cache(sam_model):
                    self.sam = SamSegmenter.load(cfg, bypass=None)
                    self.kind = "sam"
            except Exception:
                self.sam = None

    def __call__(self, image: np.ndarray, points: np.ndarray, examples: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        h, w = image.shape[:2]
        pts = [(float(np.clip(x, 0, w - 1)), float(np.clip(y, 0, h - 1))) for x, y in np.asarray(points).reshape(-1, 2)]
        if not pts:
            return np.zeros((h, w), bool)
        if self.sam is not None:
            import torch

            t = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
            mask, _ = self.sam._run(t, True, input_points=[[[list(p) for p in pts]]], input_labels=[[[1] * len(pts)]])
            return mask[0, 0].numpy() > 0.5
        return colour_point_segment(image, pts, examples)


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


def colour_point_segment(image: np.ndarray, points, examples) -> np.ndarray:
    """The colour stand-in for SAM: object pixels (:func:`segment_object`) in components holding a point."""
    import cv2

    from diffusion_handles.bench.metrics import segment_object

    obj = segment_object(image, examples)
    n, labels = cv2.connectedComponents(obj.astype(np.uint8), connectivity=8)
    keep = set()
    h, w = obj.shape
    for x, y in points:
        i, j = int(np.clip(round(y), 0, h - 1)), int(np.clip(round(x), 0, w - 1))
        # a prompt that lands a pixel off the object still selects the component next to it
        win = labels[max(i - 1, 0): i + 2, max(j - 1, 0): j + 2]
        keep.update(int(v) for v in np.unique(win) if v != 0)
    return np.isin(labels, sorted(keep)) if keep else np.zeros_like(obj)


def edit_adherence(pred: np.ndarray, case: EditBenchCase, segmenter: PointSegmenter) -> float | None:
    """3DEditBench's edit adherence of ``pred`` (see :mod:`diffusion_handles.bench.editbench3d`); None without keypoints."""
    from diffusion_handles.bench.metrics import iou

    p1, p2 = case.object_points_image1, case.object_points_image2
    if p1 is None or p2 is None or len(p1) == 0 or len(p2) == 0:
        return None
    s = EVAL_SIZE / case.image1.shape[1]
    im1, im2, pr = resize_uint8(case.image1), resize_uint8(case.image2), resize_uint8(pred)
    examples = [(im1, _resize_mask(case.gt_segment))]
    if case.gt_segment_image2 is not None:
        examples.append((im2, _resize_mask(case.gt_segment_image2)))
    flow = dense_flow(im1, pr)
    q = np.clip(np.floor(p1 * s).astype(int), 0, EVAL_SIZE - 1)
    moved = q + flow[q[:, 1], q[:, 0]]
    seg_gt = segmenter(im2, p2 * s, examples)
    seg_pred = segmenter(pr, moved, examples)
    return iou(seg_pred, seg_gt)


def score_edit(pred: np.ndarray, case: EditBenchCase, segmenter: PointSegmenter, lpips=None) -> dict:
    """``{"psnr", "ssim", "lpips", "edit_adherence", "mse"}`` of ``pred`` against ``case.image2``."""
    from skimage.metrics import structural_similarity

    a = resize_uint8(pred).astype(np.float64) / 255.0
    b = resize_uint8(case.image2).astype(np.float64) / 255.0
    mse = float(((a - b) ** 2).mean())
    return {
        "mse": mse,
        "psnr": 100.0 if mse == 0 else float(10.0 * math.log10(1.0 / mse)),
        "ssim": float(structural_similarity(a, b, channel_axis=2, data_range=1.0)),
        "lpips": None if lpips is None else float(lpips(resize_uint8(pred), resize_uint8(case.image2))),
        "edit_adherence": edit_adherence(pred, case, segmenter),
    }

