"""Benchmark kind ``restyle`` (issue 39): one object moved in 3D *and* given another look.

Drawn only when asked for (``handles bench --kinds restyle``), with its own random stream
(``numpy.random.default_rng([seed, 12, 3])``, 3 = its index in
:data:`~diffusion_handles.bench.new_kinds.NEW_KINDS`), so no other kind's cases change.

Case. The TinyWorld scene of the seed; one object, uniform among those covering >= 1% of the
image whose phrase occurs once in the caption (so the words that name it are unambiguous), is
moved, turned or scaled by :func:`.cases.draw_edit` (its kind drawn uniformly from
:data:`.cases.EDIT_KINDS` at each draw), and given another colour, uniform among the world's
:data:`~diffusion_handles.world.scene.COLOURS` other than its own; in a share
:data:`PATTERN_SHARE` of the draws also another pattern, uniform among the
:data:`~diffusion_handles.world.scene.PATTERNS` other than its own. The ground truth is the
scene re-rendered with both changes. A draw is rejected as :func:`.cases.make_case` rejects
(the moved object's box leaves the frustum, the 3D edit fails, the disocclusion exceeds
``max_holes``, the moved object shows fewer than ``min_pixels`` pixels in the truth).

What the methods get: the input image, its z-depth, the object's mask, the input's caption as
the prompt, the 3D edit, the clean depth d'_b (the render without the object, as the object
kinds), and the restyle text: ``restyle``, the object's new phrase as the world writes it
(``"a red striped cube"``: :meth:`SceneObject.describe` with the caption's article) and
``restyle_words``, its old phrase as the caption has it (passed explicitly).

Methods (:data:`RESTYLE_METHODS`):

* ``ours``: :meth:`DiffusionHandles.edit` with ``restyle=<new phrase>, restyle_words=<old>``;
* ``warp_only``: the 3D preview, holes filled by OpenCV Telea (right place, old look);
* ``depth_only``: the generation from the inverted noise with the edited depth and the
  restyled prompt, no activation guidance (the object benchmark's ``depth_only``:
  ``grad_steps=0``, no composite, no identity transfer, no effects, here with ``restyle``);
* ``chain``: the two-step workflow a user has today. First ``ours`` without restyle (the plain
  3D edit). Then the edited image is inverted with the *new* caption
  (:func:`~diffusion_handles.diffusion.prompts.restyle_prompt`), the edited depth d' and the
  edited mask M'_o, and :meth:`DiffusionHandles.remove` regenerates the region (M'_o grown,
  extended downwards for its shadow: :func:`~diffusion_handles.geometry.removal_region`) over
  d' itself (``background_depth=d'``, so the object's shape stays in the depth), from fresh
  noise in the region, with the new caption; the input of that step is kept outside the region.
  Its cost is both edits plus the second inversion (``fwd_eq``, ``seconds``); the input's
  inversion, shared with ``ours`` and ``depth_only``, is ``*_inversion`` as elsewhere.

References in the same rows: ``input`` (no edit) and ``truth`` (the ground truth scored against
itself: each metric's ceiling).

Scores (:func:`restyle_metrics`; images sRGB in [0, 1], ``M_gt`` the moved object's mask in the
truth render):

* ``psnr`` / ``ssim``: the whole image against the truth;
* ``psnr_obj`` / ``ssim_obj``: over ``M_gt``;
* ``colour_err_obj``: ``|mean_{M_gt} O - mean_{M_gt} G| * 255`` (Euclidean, sRGB 0-255), the
  world eval's ``colour_err`` (:func:`diffusion_handles.world.evaluate.image_metrics`);
* ``pattern_obj``: SSIM (7x7, data range 1) of the object's high-pass luminance against the
  truth's, averaged over ``M_gt``. The high-pass is ``L - blur_M(L)`` with ``L`` the Rec. 709
  luminance and ``blur_M`` a Gaussian (sigma :data:`PATTERN_SIGMA` px) normalized inside
  ``M_gt`` (``blur(L M) / blur(M)``), zero outside: the silhouette's edge against the
  background, which a colour change alone alters, is left out, and what remains is the
  object's pattern and shading. 1 = the same pattern layout; a solid object against a solid
  truth scores near 1 whatever the colours;
* ``iou_obj``: the IoU of the object's silhouette *in the output* with ``M_gt``. The silhouette
  is :func:`~diffusion_handles.bench.metrics.segment_object` (the object benchmark's colour
  classifier, blind to the method's own masks) with the object's colours taken from both the
  truth (new look) and the input (old look) and the background from the truth, input and the
  clean plate at each pixel: it scores where an object of either look is, not its colour (that
  is ``colour_err_obj``), so ``warp_only``'s old-look object is not penalized for its colour
  and an old-look ghost left where the object was counts against a method;
* ``iou_mask``: the IoU of the method's own edited mask (``EditOutput.edited_mask``; warp_only:
  the preview's moved mask) with ``M_gt``, for reference: the 3D edit's geometry, the same for
  every method that has one (``depth_only`` reports the generation's ``edited_mask`` too).
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffusion_handles.bench.kind_cases import KIND_METHODS, KindCase, KindLimits, _Draw
from diffusion_handles.errors import HandlesError

RESTYLE_METHODS = KIND_METHODS["restyle"]
RESTYLE_REFERENCES = ("input", "truth")
RESTYLE_KEYS = ("psnr_obj", "ssim_obj", "colour_err_obj", "pattern_obj", "iou_obj", "iou_mask")
PATTERN_SHARE = 1.0 / 3.0  # share of the draws that also change the pattern
PATTERN_SIGMA = 2.0  # px, the Gaussian whose residual inside the object is pattern_obj's high-pass
LUMA = (0.2126, 0.7152, 0.0722)  # Rec. 709


def object_phrase(obj) -> str:
    """An object's phrase as the caption writes it: its words with the article (``"an orange
    striped cube"``, :meth:`~diffusion_handles.world.scene.Scene.caption`)."""
    words = obj.describe()
    return ("an " if words[0] in "aeiou" else "a ") + words


@dataclass
class RestyleCase(KindCase):
    """A ``restyle`` case: a :class:`KindCase` (``masks``: ``(1, H, W)`` the object in the input;
    ``edits``: one edit with its ``object_index``; ``prompt``: the input's caption) with the
    truth's object mask ``mask_gt`` ``(H, W)`` bool, the clean plate ``clean`` ``(H, W, 3)``
    uint8 (the scene without the object), and the restyle text."""

    mask_gt: np.ndarray | None = None
    clean: np.ndarray | None = None
    restyle: str = ""
    restyle_words: str = ""

    def save(self, folder: str | Path) -> Path:
        from diffusion_handles.bench.cases import write_case_folder

        meta = {"case_id": self.case_id, "seed": self.seed, "kind": self.kind, "prompt": self.prompt,
                "fov_deg": self.fov_deg, "edits": self.edits, "stats": self.stats, "restyle": self.restyle,
                "restyle_words": self.restyle_words}
        return write_case_folder(folder, {"input": self.image, "gt": self.gt, "clean": self.clean},
                                 {"depth": self.depth, "gt_depth": self.gt_depth, "masks": self.masks,
                                  "clean_depth": self.clean_depth, "mask_gt": self.mask_gt}, meta)

    @staticmethod
    def load(folder: str | Path) -> RestyleCase:
        from diffusion_handles.bench.cases import read_case_folder

        meta, arr, png = read_case_folder(folder, ("input", "gt", "clean"))
        return RestyleCase(case_id=meta["case_id"], seed=int(meta["seed"]), kind=meta["kind"], prompt=meta["prompt"],
                           fov_deg=float(meta["fov_deg"]), image=png["input"], depth=arr["depth"], gt=png["gt"],
                           gt_depth=arr["gt_depth"], masks=arr["masks"].astype(bool), clean_depth=arr["clean_depth"],
                           edits=meta["edits"], stats=meta["stats"], mask_gt=arr["mask_gt"].astype(bool),
                           clean=png["clean"], restyle=meta["restyle"], restyle_words=meta["restyle_words"])

    @property
    def edit(self):
        """The 3D edit (a :class:`~diffusion_handles.geometry.HandleEdit`)."""
        from diffusion_handles.geometry import HandleEdit

        return HandleEdit.from_dict({k: v for k, v in self.edits[0].items() if k != "object_index"})


# ---------------------------------------------------------------------- drawing
def draw_look(rng: np.random.Generator, colour: str, pattern: str) -> tuple[str, str]:
    """``(colour, pattern)``: another colour of the world's (never ``colour``) and, with
    probability :data:`PATTERN_SHARE`, another pattern (never ``pattern``; else ``pattern``)."""
    from diffusion_handles.world.scene import COLOURS, PATTERNS

    new_colour = str(rng.choice([c for c in COLOURS if c != colour]))
    new_pattern = pattern
    if rng.random() < PATTERN_SHARE:
        new_pattern = str(rng.choice([p for p in PATTERNS if p != pattern]))
    return new_colour, new_pattern


def restyle_case(draw: _Draw, cands: list[int], max_holes: float, limits: KindLimits) -> RestyleCase:
    """One candidate object moved by a random edit and given a new look (see the module docstring).

    Raises:
        NoEditFound: no candidate object with an unambiguous phrase, or no acceptable draw in
            ``limits.max_tries``.
    """
    import torch

    from diffusion_handles.bench.cases import EDIT_KINDS, NoEditFound, _bbox_in_frustum, draw_edit
    from diffusion_handles.geometry import compute_edit
    from diffusion_handles.world.render import object_pivot, render

    scene, src, rng, seed = draw.scene, draw.src, draw.rng, draw.seed
    caption = src.caption
    named = [k for k in cands if caption.count(object_phrase(scene.objects[k])) == 1]
    if not named:
        raise NoEditFound(f"seed {seed}: expected an object covering >= {limits.min_object_fraction:.0%} of the image "
                          f"whose phrase occurs once in the caption, got none ({len(cands)} candidates)")
    for attempt in range(limits.max_tries):
        k = int(rng.choice(named))
        kind = str(rng.choice(EDIT_KINDS))
        pivot = object_pivot(src.depth, src.masks[k], scene)
        pivot_world = (scene.c2w() @ np.append(pivot, 1.0))[:3]
        edit = draw_edit(rng, kind, scene.w2c(), pivot_world)
        old = scene.objects[k]
        colour, pattern = draw_look(rng, old.colour, old.pattern)
        moved = scene.with_object_edit(k, edit, pivot)
        if not _bbox_in_frustum(moved, k):
            draw.reject("frustum")
            continue
        mask_t = torch.from_numpy(src.masks[k].astype(np.float64))[None, None]
        checked = draw.checked_edit(compute_edit, (draw.depth_t, mask_t, edit, draw.cam), max_holes)
        if checked is None:
            continue
        geom, holes = checked
        moved.objects[k].colour, moved.objects[k].pattern = colour, pattern
        gt = render(moved, spp=draw.spp, seed=seed)
        if gt.masks[k].sum() < limits.min_pixels:
            draw.reject("hidden")
            continue
        empty = scene.copy()
        empty.objects.pop(k)
        clean = render(empty, spp=draw.spp, seed=seed)
        pred = geom.edited_mask[0, 0].numpy() > 0.5
        from diffusion_handles.bench.metrics import iou

        stats = {"object_index": k, "edit_kind": kind, "holes_fraction": holes, "attempt": attempt,
                 "old": {"colour": old.colour, "pattern": old.pattern},
                 "new": {"colour": colour, "pattern": pattern},
                 "object_pixels_src": int(src.masks[k].sum()), "object_pixels_gt": int(gt.masks[k].sum()),
                 "geometry_iou": iou(pred, gt.masks[k]), "rejected": draw.rejected}
        size = draw.size
        return RestyleCase(case_id=f"restyle_s{seed}", seed=int(seed), kind="restyle", prompt=caption,
                           fov_deg=float(scene.fov_deg), image=src.rgb, depth=src.depth.astype(np.float32), gt=gt.rgb,
                           gt_depth=gt.depth.astype(np.float32), masks=src.masks[k].reshape(1, size, size).copy(),
                           clean_depth=clean.depth.astype(np.float32), edits=[{**edit.to_dict(), "object_index": k}],
                           stats=stats, mask_gt=gt.masks[k].copy(), clean=clean.rgb,
                           restyle=object_phrase(moved.objects[k]), restyle_words=object_phrase(old))
    raise NoEditFound(f"seed {seed}: no acceptable restyle edit in {limits.max_tries} draws (rejected: {draw.rejected})")


# ---------------------------------------------------------------------- metrics
def _float_image(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[2] != 3:
        raise HandlesError(f"image: expected an (H, W, 3) image, got shape {x.shape}")
    return x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)


def mean_colour_error(output: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float | None:
    """``|mean_M output - mean_M target| * 255`` (Euclidean over RGB; images in [0, 1] or uint8):
    the world eval's ``colour_err`` of one object; ``None`` for an empty mask."""
    o, t, m = _float_image(output), _float_image(target), np.asarray(mask, bool)
    if not m.any():
        return None
    return float(np.linalg.norm((o[m].mean(0) - t[m].mean(0)) * 255.0))


def object_high_pass(image: np.ndarray, mask: np.ndarray, sigma: float = PATTERN_SIGMA) -> np.ndarray:
    """``(L - blur(L M) / blur(M)) M``: the luminance's high-pass inside ``mask`` ``(H, W)``, with
    the local mean taken over the mask's pixels only (the background does not leak in); 0 outside."""
    from scipy.ndimage import gaussian_filter

    lum = _float_image(image) @ np.asarray(LUMA)
    m = np.asarray(mask, bool).astype(np.float64)
    num = gaussian_filter(lum * m, sigma, mode="nearest")
    den = gaussian_filter(m, sigma, mode="nearest")
    local = np.divide(num, den, out=np.zeros_like(num), where=den > 1e-6)
    return (lum - local) * m


def pattern_agreement(output: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float | None:
    """SSIM (7x7, data range 1) of :func:`object_high_pass` of ``output`` and of ``target`` (both
    inside ``mask``, the truth's object), averaged over ``mask``; ``None`` for an empty mask."""
    from skimage.metrics import structural_similarity

    m = np.asarray(mask, bool)
    if not m.any():
        return None
    ho, ht = object_high_pass(output, m), object_high_pass(target, m)
    win = min(7, *(s - (1 - s % 2) for s in m.shape))
    _, smap = structural_similarity(ho, ht, data_range=1.0, full=True, win_size=win)
    return float(smap[m].mean())


def restyle_metrics(output: np.ndarray, case: RestyleCase, own_mask: np.ndarray | None = None) -> dict:
    """The scores of ``output`` (``(H, W, 3)`` uint8) on ``case`` (module docstring);
    ``own_mask``: the method's own edited mask ``(H, W)`` bool, when it has one."""
    from diffusion_handles.bench.metrics import iou, masked_psnr, masked_ssim, segment_object

    gt, m = case.gt, case.mask_gt
    full = np.ones(m.shape, bool)
    examples = [(case.gt, m), (case.image, case.masks[0]), (case.clean, np.zeros_like(m))]
    return {"psnr": masked_psnr(output, gt, full), "ssim": masked_ssim(output, gt, full),
            "psnr_obj": masked_psnr(output, gt, m), "ssim_obj": masked_ssim(output, gt, m),
            "colour_err_obj": mean_colour_error(output, gt, m), "pattern_obj": pattern_agreement(output, gt, m),
            "iou_obj": iou(segment_object(output, examples), m),
            "iou_mask": None if own_mask is None else iou(np.asarray(own_mask, bool), m)}


# ---------------------------------------------------------------------- methods
def new_caption(case: RestyleCase) -> str:
    """The input's caption with the object's old phrase replaced by its new one."""
    from diffusion_handles.diffusion.prompts import restyle_prompt

    return restyle_prompt(case.prompt, case.restyle, case.restyle_words)


def depth_only_guidance(guidance):
    """The object benchmark's ``depth_only`` (:data:`~diffusion_handles.bench.methods.METHODS`):
    no gradient steps, no composite, no identity transfer, no effects."""
    from diffusion_handles.bench.methods import METHODS

    return dataclasses.replace(guidance, **METHODS["depth_only"].overrides(0))


@dataclass
class _Shared:
    """What the methods of one case share: the input's inversion (and its seconds) and the
    plain 3D edit (chain's first step), computed on first use."""

    inverted: object = None
    inversion_seconds: float = 0.0


def run_restyle_case(case: RestyleCase, methods: list[str], pipe_factory, inversion, guidance, img_dir: Path) -> dict:
    """Results of ``methods`` (:data:`RESTYLE_METHODS`) and the ``input`` / ``truth`` references
    on ``case``; the images into ``img_dir`` (``preview.png``: the 3D preview, holes magenta;
    ``<method>.png``; ``chain_edit.png``: chain's first step)."""
    import torch

    from diffusion_handles.bench.runner import _save_png, _tensors, _to_uint8, edit_cost, warp_only

    image, depth, mask = _tensors(case.image, case.depth, case.masks[0])
    clean = torch.from_numpy(case.clean_depth.astype(np.float32))[None, None]
    edit = case.edit
    warped, preview, _, warp_mask = warp_only(image, depth, mask, edit, clean, case.fov_deg)
    _save_png(_to_uint8(preview), img_dir / "preview.png")
    out = {"input": {**restyle_metrics(case.image, case), "error": None},
           "truth": {**restyle_metrics(case.gt, case, case.mask_gt), "error": None}}
    shared = _Shared()

    def inverted():
        if shared.inverted is None:
            t0 = time.perf_counter()
            shared.inverted = pipe_factory().invert(image, case.prompt, depth, mask, inversion=inversion,
                                                    guidance=guidance, seed=0)
            shared.inversion_seconds = time.perf_counter() - t0
        return shared.inverted

    def edit_of(g, **restyle):
        inv = inverted()
        res = pipe_factory().edit(inv, edit, guidance=g, background_depth=clean, fov_deg=case.fov_deg,
                                  source_image=image, source_depth=depth, source_mask=mask, **restyle)
        return res, edit_cost(res, inv, shared.inversion_seconds)

    restyle = {"restyle": case.restyle, "restyle_words": case.restyle_words}
    for name in methods:
        t0 = time.perf_counter()
        entry: dict = {"error": None}
        try:
            if name == "warp_only":
                edited, own = warped, warp_mask
                entry.update(edit_cost(), seconds=time.perf_counter() - t0)
            elif name == "ours":
                res, cost = edit_of(guidance, **restyle)
                edited, own = res.edited, res.edited_mask
                entry.update(cost)
            elif name == "depth_only":
                res, cost = edit_of(depth_only_guidance(guidance), **restyle)
                edited, own = res.edited, res.edited_mask
                entry.update(cost)
            elif name == "chain":
                edited, own = _chain(case, pipe_factory(), edit_of, inversion, guidance, entry, img_dir)
            else:
                raise HandlesError(f"method {name}: not available for the restyle kind ({', '.join(RESTYLE_METHODS)})")
            img = _to_uint8(edited)
            entry.update(restyle_metrics(img, case, (own[0, 0] > 0.5).numpy()))
            _save_png(img, img_dir / f"{name}.png")
        except Exception as e:  # recorded, not fatal
            entry["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            entry["traceback"] = traceback.format_exc()
        entry["seconds_total"] = time.perf_counter() - t0
        entry.setdefault("seconds", entry["seconds_total"])
        out[name] = entry
    return out


def _chain(case: RestyleCase, pipe, edit_of, inversion, guidance, entry: dict, img_dir: Path):
    """``(edited, its object mask)`` of the two-step chain (module docstring); its cost into ``entry``."""
    from diffusion_handles.bench.runner import _save_png, _to_uint8, edit_cost

    res1, cost1 = edit_of(guidance)
    first = res1.edited.clamp(0, 1)
    _save_png(_to_uint8(first), img_dir / "chain_edit.png")
    m_edit = (res1.edited_mask > 0.5).float()
    if not bool(m_edit.any()):
        raise HandlesError("chain: the edited object mask is empty, there is no region to regenerate")
    g = dataclasses.replace(guidance, identity_transfer=None)  # as a removal: nothing to transfer
    t0 = time.perf_counter()
    inv2 = pipe.invert(first, new_caption(case), res1.edited_depth, m_edit, inversion=inversion, guidance=g, seed=0)
    t_inv2 = time.perf_counter() - t0
    res2 = pipe.remove(inv2, guidance=g, background_depth=res1.edited_depth, source_image=first)
    cost2 = edit_cost(res2, inv2, t_inv2)
    entry.update(cost1)  # the input's inversion (shared) and the first edit's stages ...
    entry["fwd_eq"] = cost1["fwd_eq"] + cost2["fwd_eq"] + cost2["fwd_eq_inversion"]  # ... plus the second pass
    entry["seconds"] = cost1["seconds"] + cost2["seconds"] + t_inv2
    entry["seconds_by_stage"] = {**{f"edit.{k}": v for k, v in cost1["seconds_by_stage"].items()},
                                 "invert_edited": t_inv2,
                                 **{f"regenerate.{k}": v for k, v in cost2["seconds_by_stage"].items()}}
    return res2.edited, res1.edited_mask


def format_restyle_table(aggregate: dict) -> str:
    """The restyle scores per method (``aggregate["restyle"]`` of ``kinds_results.json``)."""
    import math

    def f(v, p=2):
        return "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{p}f}"

    lines = [f"{'restyle':10s} {'n':>3s} {'PSNR':>6s} {'PSNR obj':>8s} {'SSIM obj':>8s} {'colour err':>10s} "
             f"{'pattern':>7s} {'IoU obj':>7s} {'s/edit':>7s}"]
    for name, a in aggregate.items():
        lines.append(f"{name:10s} {a['n']:3d} {f(a.get('psnr')):>6s} {f(a.get('psnr_obj')):>8s} "
                     f"{f(a.get('ssim_obj'), 3):>8s} {f(a.get('colour_err_obj'), 1):>10s} {f(a.get('pattern_obj'), 3):>7s} "
                     f"{f(a.get('iou_obj'), 3):>7s} {f(a.get('seconds'), 1):>7s}")
    return "\n".join(lines)
