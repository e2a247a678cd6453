"""Benchmark metrics (Table 2 of the paper, plus ground-truth image metrics).

All images are ``(H, W, 3)`` float arrays in ``[0, 1]`` (sRGB); masks are ``(H, W)`` bool.

Edit adherence (``S_edit``, Sec. 6 / Table 2)
    ``IoU(seg(O), M_gt) = |seg(O) & M_gt| / |seg(O) | M_gt|`` where ``O`` is the method's output,
    ``M_gt`` the ground-truth mask of the moved object (ray-cast in the re-rendered scene) and
    ``seg`` segments the object in ``O`` **without looking at the method's own masks**.

    ``seg`` (:func:`segment_object`) is a colour classifier in CIELAB built from three renders
    of the same view that we have exactly: the ground truth (object = ``M_gt``), the input
    (object = ``M_src``) and the clean plate (the scene without the object, all background).
    A pixel ``u`` of ``O`` is *object* when its colour is strictly nearer to the object's colours
    (from anywhere in the ground truth or the input: the object may be anywhere) than to the
    background colours those renders show *at ``u``* (within one pixel). Why this and not a
    learned segmenter: the paper used SAM, whose weights we do not have; TinyWorld objects have
    known, distinctive colours and textures, and the background is known exactly at every pixel,
    so the classifier gives the known answers: output = ground truth gives ``seg = M_gt`` (up to
    an object colour that equals the background within a pixel of it), output = clean plate
    gives an empty segmentation (IoU 0), output = input finds the object at its old place (IoU
    of ``M_src`` and ``M_gt``). A purely global colour classifier failed on grey objects on grey
    floors (exact 8-bit colour collisions). Its limit: where a method repaints the background
    with object-like colours, those pixels count as object; we report the IoU of ``seg`` on
    the ground truth itself (the metric's ceiling) next to each result.

Identity preservation (cycle consistency, Table 2)
    Apply the edit, then its inverse (about the moved pivot) to the edited image with its edited
    depth, giving ``C``. ``E_L1 = 10 * mean_{u,c} |C(u) - I(u)|`` over the whole image (the
    paper's "L1 (x10)"); we also report it inside the input object mask ``M_src``. LPIPS needs
    pretrained AlexNet/VGG weights: it is computed only when those are on disk
    (:func:`lpips_status`), otherwise reported as ``None`` ("n/a"), never with a random backbone.

Fidelity to the ground-truth render ``G``
    ``PSNR_R = 10 log10(1 / MSE_R)`` with ``MSE_R`` the mean over pixels of region ``R`` and
    the three channels of ``(O - G)^2``; capped at :data:`PSNR_CAP` dB when ``MSE_R = 0``.
    ``SSIM_R`` = mean over ``R`` of skimage's SSIM map (7x7 window, data range 1, per channel,
    averaged over channels). Regions: object ``R = M_gt``; background
    ``R = ~(M_gt | M_src)`` (the background visible both before and after the edit); full
    image; *effects* ``R = ~(M_gt | M_src) & (max_c |G - I| > 0.03)``: background pixels the
    edit changes in the truth (moved shadows, contact shading, interreflections); *disocclusion*
    ``R = M_src & ~M_gt``: where the object was and the truth now shows what was behind it.
    The effects region splits by the sign of the luminance change ``L(G) - L(I)`` (Rec. 709
    weights, beyond the same 0.03): *old shadow* (the truth is brighter: a shadow that must go)
    and *new shadow* (the truth is darker: a shadow that must appear).

Sharpness of the edit region (``sharpness_edit``)
    ``sqrt(sum_R |h(O)|^2 / sum_R |h(G)|^2)`` with ``h(x) = x - gauss_1(x)`` the high-pass of
    each channel (Gaussian of sigma 1 pixel) and ``R = M_gt | M_src | effects`` grown by 2
    pixels: 1.0 = as much fine detail as the truth, below 1 = blurrier (a 3x3 box blur of the
    truth scores about 0.4), above 1 = more high frequencies than the truth (noise, ringing).

Aggregates: mean over edits with a percentile-bootstrap 95% confidence interval
(:func:`bootstrap_ci`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from diffusion_handles.errors import HandlesError
from diffusion_handles.stats import bootstrap_ci  # noqa: F401  (re-exported: the benchmarks' aggregates)

PSNR_CAP = 100.0  # dB, reported when the region is reproduced exactly (MSE = 0)
EFFECT_THRESHOLD = 0.03  # an effects pixel: truth and input differ by more than this (~8/255) in a channel
LUMA = (0.2126, 0.7152, 0.0722)  # Rec. 709 luminance weights of the shadow split
SHARPNESS_SIGMA = 1.0  # px, the Gaussian whose residual is the high-pass of sharpness_edit
SHARPNESS_GROW = 2  # px the edit region of sharpness_edit is grown by


def _check_image(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[2] != 3:
        raise HandlesError(f"{name}: expected an (H, W, 3) image, got shape {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float64) / 255.0
    return x.astype(np.float64)


def _check_mask(m: np.ndarray, shape: tuple[int, int], name: str) -> np.ndarray:
    m = np.asarray(m)
    if m.shape != shape:
        raise HandlesError(f"{name}: expected a mask of shape {shape}, got {m.shape}")
    return m.astype(bool)


def iou(pred: np.ndarray, target: np.ndarray) -> float:
    """``|pred & target| / |pred | target|`` of two bool masks; 1.0 when both are empty."""
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    if pred.shape != target.shape:
        raise HandlesError(f"pred: expected a mask of shape {target.shape}, got {pred.shape}")
    union = np.logical_or(pred, target).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, target).sum() / union)


def segment_object(output: np.ndarray, examples: Sequence[tuple[np.ndarray, np.ndarray]], radius: int = 1) -> np.ndarray:
    """Object pixels of ``output``: nearer to the object's colours than to the background there.

    Each example ``(image (H, W, 3), object_mask (H, W) bool)`` is a labelled render of the same
    view (ground truth, input, clean plate). In CIELAB, with ``d`` the Euclidean distance:

    * ``d_obj(u)`` = distance from ``output(u)`` to the nearest object colour of any example
      (``image(v)`` with ``mask(v)``, any ``v``): the object may be anywhere;
    * ``d_bg(u)`` = distance to the nearest *background* colour of any example within
      ``radius`` pixels of ``u`` (``image(v)`` with ``not mask(v)``, ``|v - u|_inf <= radius``):
      the background is where it is, up to a one-pixel shift.

    ``u`` is object iff ``d_obj(u) < d_bg(u)``. Returns ``(H, W)`` bool.
    """
    from scipy.spatial import cKDTree
    from skimage.color import rgb2lab

    out = _check_image(output, "output")
    h, w = out.shape[:2]
    q = rgb2lab(out)  # (H, W, 3)
    obj_cols = []
    d_bg = np.full((h, w), np.inf)
    for i, (img, m) in enumerate(examples):
        lab = rgb2lab(_check_image(img, f"examples[{i}].image"))
        if lab.shape != q.shape:
            raise HandlesError(f"examples[{i}].image: expected shape {q.shape[:2]} (the output's), got {lab.shape[:2]}")
        m = _check_mask(m, (h, w), f"examples[{i}].mask")
        obj_cols.append(lab[m])
        # background reference, padded so shifted windows stay in bounds; object pixels = inf
        ref = np.where(m[..., None], np.inf, lab)
        ref = np.pad(ref, ((radius, radius), (radius, radius), (0, 0)), constant_values=np.inf)
        for dy in range(2 * radius + 1):
            for dx in range(2 * radius + 1):
                diff = ref[dy : dy + h, dx : dx + w] - q  # (H, W, 3), +inf where no background
                d_bg = np.minimum(d_bg, np.sqrt((diff**2).sum(-1)))
    obj = np.unique(np.concatenate(obj_cols), axis=0) if obj_cols else np.zeros((0, 3))
    if len(obj) == 0:
        return np.zeros((h, w), bool)
    d_obj, _ = cKDTree(obj).query(q.reshape(-1, 3), k=1)
    return d_obj.reshape(h, w) < d_bg


def masked_psnr(output: np.ndarray, target: np.ndarray, region: np.ndarray) -> float | None:
    """PSNR (dB, data range 1) over ``region`` pixels; :data:`PSNR_CAP` if exact; None if empty."""
    o, t = _check_image(output, "output"), _check_image(target, "target")
    region = _check_mask(region, t.shape[:2], "region")
    if o.shape != t.shape:
        raise HandlesError(f"output: expected shape {t.shape} (the target's), got {o.shape}")
    if not region.any():
        return None
    mse = float(((o - t) ** 2)[region].mean())
    if mse <= 10 ** (-PSNR_CAP / 10):
        return PSNR_CAP
    return float(10.0 * math.log10(1.0 / mse))


def masked_ssim(output: np.ndarray, target: np.ndarray, region: np.ndarray) -> float | None:
    """Mean of skimage's SSIM map (7x7, data range 1, channels averaged) over ``region``."""
    from skimage.metrics import structural_similarity

    o, t = _check_image(output, "output"), _check_image(target, "target")
    region = _check_mask(region, t.shape[:2], "region")
    if o.shape != t.shape:
        raise HandlesError(f"output: expected shape {t.shape} (the target's), got {o.shape}")
    if not region.any():
        return None
    win = min(7, *(s - (1 - s % 2) for s in t.shape[:2]))  # odd, <= image side
    _, smap = structural_similarity(o, t, channel_axis=2, data_range=1.0, full=True, win_size=win)
    return float(smap.mean(axis=2)[region].mean())


def cycle_l1(cycled: np.ndarray, original: np.ndarray, region: np.ndarray | None = None) -> float | None:
    """The paper's identity error ``10 * mean |C - I|`` (images in [0, 1]), optionally in ``region``."""
    c, i = _check_image(cycled, "cycled"), _check_image(original, "original")
    if c.shape != i.shape:
        raise HandlesError(f"cycled: expected shape {i.shape} (the input's), got {c.shape}")
    diff = np.abs(c - i)
    if region is not None:
        region = _check_mask(region, i.shape[:2], "region")
        if not region.any():
            return None
        diff = diff[region]
    return float(10.0 * diff.mean())


def lpips_status() -> tuple[bool, str]:
    """Whether LPIPS can be computed with *real* weights: the ``lpips`` package (its linear
    heads ship inside it) and torchvision's pretrained AlexNet in the torch hub cache."""
    try:
        import lpips  # noqa: F401
        import torch
    except ImportError:
        return False, "the lpips package is not installed"
    ckpt = Path(torch.hub.get_dir()) / "checkpoints"
    if not any(ckpt.glob("alexnet-owt-*.pth")):
        return False, f"no pretrained AlexNet weights in {ckpt}"
    return True, "lpips (AlexNet) with pretrained weights"


class LPIPS:
    """LPIPS distance with pretrained weights only; construct after :func:`lpips_status` is True."""

    def __init__(self) -> None:
        ok, why = lpips_status()
        if not ok:
            raise HandlesError(f"lpips: expected pretrained weights on disk, got none ({why})")
        import lpips

        self.net = lpips.LPIPS(net="alex", pretrained=True, verbose=False).eval()

    def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
        import torch

        def t(x):
            return torch.from_numpy(_check_image(x, "image")).float().permute(2, 0, 1)[None] * 2 - 1

        with torch.no_grad():
            return float(self.net(t(a), t(b)).item())


def effects_region(gt: np.ndarray, source: np.ndarray, mask_gt: np.ndarray, mask_src: np.ndarray) -> np.ndarray:
    """Background pixels the edit changes in the truth: ``~(M_gt | M_src) & max_c |G - I| > 0.03``."""
    g, i = _check_image(gt, "gt"), _check_image(source, "source")
    if g.shape != i.shape:
        raise HandlesError(f"source: expected shape {g.shape} (the truth's), got {i.shape}")
    m_gt, m_src = _check_mask(mask_gt, g.shape[:2], "mask_gt"), _check_mask(mask_src, g.shape[:2], "mask_src")
    return ~(m_gt | m_src) & (np.abs(g - i).max(axis=2) > EFFECT_THRESHOLD)


def shadow_regions(gt: np.ndarray, source: np.ndarray, mask_gt: np.ndarray,
                   mask_src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(old, new)`` ``(H, W)`` bool: effects pixels where the truth's luminance is higher than
    the input's by more than :data:`EFFECT_THRESHOLD` (a shadow that must go) and lower by more
    than it (a shadow that must appear)."""
    effects = effects_region(gt, source, mask_gt, mask_src)
    luma = np.asarray(LUMA)
    change = _check_image(gt, "gt") @ luma - _check_image(source, "source") @ luma
    return effects & (change > EFFECT_THRESHOLD), effects & (change < -EFFECT_THRESHOLD)


def sharpness_ratio(output: np.ndarray, target: np.ndarray, region: np.ndarray) -> float | None:
    """``sqrt(sum_R |h(O)|^2 / sum_R |h(G)|^2)`` with ``h`` the residual of a Gaussian blur of
    sigma :data:`SHARPNESS_SIGMA` px per channel; ``None`` for an empty region or a truth with no
    detail there. Images ``(H, W, 3)`` in [0, 1], region ``(H, W)`` bool."""
    from scipy.ndimage import gaussian_filter

    o, g = _check_image(output, "output"), _check_image(target, "target")
    if not region.any():
        return None

    def high(x: np.ndarray) -> np.ndarray:
        return x - gaussian_filter(x, sigma=(SHARPNESS_SIGMA, SHARPNESS_SIGMA, 0), mode="nearest")

    e_out, e_gt = float((high(o)[region] ** 2).sum()), float((high(g)[region] ** 2).sum())
    return None if e_gt <= 1e-12 else math.sqrt(e_out / e_gt)


def _edit_area(mask_gt: np.ndarray, mask_src: np.ndarray, effects: np.ndarray) -> np.ndarray:
    """``M_gt | M_src | effects`` grown by :data:`SHARPNESS_GROW` pixels (the sharpness region)."""
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask_gt | mask_src | effects, iterations=SHARPNESS_GROW)


def edit_metrics(output: np.ndarray, gt: np.ndarray, mask_gt: np.ndarray, mask_src: np.ndarray,
                 examples: Sequence[tuple[np.ndarray, np.ndarray]], source: np.ndarray | None = None) -> dict:
    """Adherence and ground-truth fidelity of one output (see the module docstring).

    ``source`` is the unedited input (for the effects region; default ``examples[1][0]``).
    Returns ``{"iou", "psnr_obj", "ssim_obj", "psnr_bg", "ssim_bg", "psnr_full", "ssim_full",
    "psnr_effects", "psnr_disocc", "psnr_shadow_old", "psnr_shadow_new", "sharpness_edit"}``
    (``None`` for an empty region).
    """
    gt_f = _check_image(gt, "gt")
    shape = gt_f.shape[:2]
    mask_gt = _check_mask(mask_gt, shape, "mask_gt")
    mask_src = _check_mask(mask_src, shape, "mask_src")
    source = examples[1][0] if source is None else source
    seg = segment_object(output, examples)
    bg = ~(mask_gt | mask_src)
    full = np.ones(shape, bool)
    effects = effects_region(gt_f, source, mask_gt, mask_src)
    old, new = shadow_regions(gt_f, source, mask_gt, mask_src)
    return {
        "iou": iou(seg, mask_gt),
        "psnr_obj": masked_psnr(output, gt_f, mask_gt),
        "ssim_obj": masked_ssim(output, gt_f, mask_gt),
        "psnr_bg": masked_psnr(output, gt_f, bg),
        "ssim_bg": masked_ssim(output, gt_f, bg),
        "psnr_full": masked_psnr(output, gt_f, full),
        "ssim_full": masked_ssim(output, gt_f, full),
        "psnr_effects": masked_psnr(output, gt_f, effects),
        "psnr_disocc": masked_psnr(output, gt_f, mask_src & ~mask_gt),
        "psnr_shadow_old": masked_psnr(output, gt_f, old),
        "psnr_shadow_new": masked_psnr(output, gt_f, new),
        "sharpness_edit": sharpness_ratio(output, gt_f, _edit_area(mask_gt, mask_src, effects)),
    }
