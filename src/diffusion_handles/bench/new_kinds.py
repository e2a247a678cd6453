"""Benchmark kinds beyond the paper's object edits: ``camera``, ``remove``, ``multi`` and ``restyle``.

Drawn only when asked for (``handles bench --kinds camera,remove,multi,restyle``), with their own random
streams (``numpy.random.default_rng([seed, 12, kind])``), so the object-edit cases of
:mod:`.cases` (``default_rng([seed, 6])``) and every existing run stay as they were.

* ``camera``: the camera moves (:meth:`~diffusion_handles.world.scene.Scene.with_camera_edit`):
  0.15-0.5 units sideways and -0.2-0.4 units forward (camera axes), and a turn of 2-8 degrees
  about the world's vertical axis through the camera centre, each with a random sign; the
  ground truth is the render from the moved camera. Rejected when the disocclusion (pixels no
  scene point lands on) covers more than ``max_holes_camera`` of the image.
* ``remove``: one object (uniform among those covering >= 1% of the image) is removed; the
  ground truth is the render without it (its shadow goes too); the prompt is that scene's
  caption; the background depth given to the methods is the clean render's (as the object
  kinds' d'_b).
* ``multi``: two distinct objects, each moved by an edit of :func:`.cases.draw_edit` (its kind
  drawn uniformly); the ground truth re-renders both moved
  (:meth:`~diffusion_handles.world.scene.Scene.with_object_edit` twice). Rejected as
  :func:`.cases.make_case` rejects (frustum, geometry, holes, hidden object).
* ``restyle``: one object moved by an edit of :func:`.cases.draw_edit` and given another colour
  (in a share of the cases another pattern too); its cases, methods (``ours``, ``warp_only``,
  ``depth_only``, ``chain``) and scores are in :mod:`.restyle`.

Methods of the first three kinds: ``ours`` (the library: :meth:`DiffusionHandles.edit` with a ``CameraMove`` or
``ObjectMove`` list, :meth:`DiffusionHandles.remove`), ``warp_only`` (the geometry alone: the 3D
preview with its holes, or for a removal its region, filled by OpenCV Telea inpainting) and the
``input`` reference (no edit). Scores: PSNR and SSIM against the ground truth over the whole
image and over the *changed* pixels (``max_c |G - I| > 0.03``: where the truth differs from
the input).
"""

from __future__ import annotations

import math
import time
import traceback
from pathlib import Path

import numpy as np

from diffusion_handles.bench.kind_cases import (  # noqa: F401 (re-exported: the kinds' names)
    EFFECT_THRESHOLD,
    KIND_METHODS,
    NEW_KINDS,
    KindCase,
    KindLimits,
    _candidates,
    _Draw,
)
from diffusion_handles.errors import HandlesError


def make_kind_case(kind: str, seed: int, size: int = 64, spp: int = 64, max_holes: float = 0.06,
                   limits: KindLimits | None = None) -> KindCase:
    """Render the scene of ``seed``, draw an acceptable edit of ``kind``, render its ground truth.

    ``max_holes``: most of the image a two-object edit may disocclude; ``limits``: the other
    refusals (default :class:`KindLimits`).

    Raises:
        NoEditFound: no acceptable edit in ``limits.max_tries`` draws (the seed is skipped).
        HandlesError: an unknown kind.
    """
    import torch

    from diffusion_handles.geometry import Camera
    from diffusion_handles.world.render import render, scene_for_seed

    if kind not in NEW_KINDS:
        raise HandlesError(f"--kinds: expected names from {', '.join(NEW_KINDS)}, got {kind!r}")
    limits = limits or KindLimits()
    scene = scene_for_seed(seed, size, size)
    src = render(scene, spp=spp, seed=seed)
    draw = _Draw(kind, seed, size, spp, scene, src, Camera(size, size, scene.fov_deg),
                 torch.from_numpy(src.depth.astype(np.float64))[None, None],
                 np.random.default_rng([seed, 12, NEW_KINDS.index(kind)]))
    if kind == "camera":
        return _camera_case(draw, limits)
    cands = _candidates(src, size, limits.min_object_fraction, limits.min_pixels)
    if kind == "remove":
        return _remove_case(draw, cands, limits)
    if kind == "restyle":
        from diffusion_handles.bench.restyle import restyle_case

        return restyle_case(draw, cands, max_holes, limits)
    return _multi_case(draw, cands, max_holes, limits)


def _camera_case(draw: _Draw, limits: KindLimits) -> KindCase:
    """A camera move whose disocclusion stays within ``limits.max_holes_camera``."""
    from diffusion_handles.bench.cases import NoEditFound
    from diffusion_handles.geometry import HandleEdit, camera_move, compute_camera_move
    from diffusion_handles.world.render import render

    scene, rng, size = draw.scene, draw.rng, draw.size
    up_cam = scene.w2c()[:3, :3] @ np.array([0.0, 1.0, 0.0])
    for attempt in range(limits.max_tries):
        sign = float(rng.choice([-1.0, 1.0]))
        edit = HandleEdit(translate=(sign * float(rng.uniform(0.15, 0.5)), 0.0, float(rng.uniform(-0.2, 0.4))),
                          rotate_axis=tuple(float(v) for v in up_cam),
                          rotate_deg=float(rng.uniform(2.0, 8.0) * rng.choice([-1.0, 1.0])))
        try:
            geom = compute_camera_move(draw.depth_t, camera_move(edit), draw.cam)
        except HandlesError:
            draw.reject("geometry")
            continue
        holes = float((geom.valid < 0.5).double().mean())
        if holes > limits.max_holes_camera:
            draw.reject("disocclusion")
            continue
        gt = render(scene.with_camera_edit(edit), spp=draw.spp, seed=draw.seed)
        return draw.case(gt, np.zeros((0, size, size), bool), [edit.to_dict()], draw.src.caption, draw.src.depth,
                         {"holes_fraction": holes, "attempt": attempt})
    raise NoEditFound(f"seed {draw.seed}: no acceptable camera move in {limits.max_tries} draws (rejected: {draw.rejected})")


def _remove_case(draw: _Draw, cands: list[int], limits: KindLimits) -> KindCase:
    """One of the candidate objects removed (uniformly drawn)."""
    from diffusion_handles.bench.cases import NoEditFound
    from diffusion_handles.world.render import render

    if not cands:
        raise NoEditFound(f"seed {draw.seed}: expected an object covering >= {limits.min_object_fraction:.0%} of the image, got none")
    k = int(draw.rng.choice(cands))
    empty = draw.scene.copy()
    empty.objects.pop(k)
    gt = render(empty, spp=draw.spp, seed=draw.seed)
    return draw.case(gt, draw.src.masks[k][None], [{"remove": k}], empty.caption(), gt.depth,
                     {"object_index": k, "object_pixels": int(draw.src.masks[k].sum())})


def _multi_case(draw: _Draw, cands: list[int], max_holes: float, limits: KindLimits) -> KindCase:
    """Two distinct candidate objects moved at once, refused as :func:`.cases.make_case` refuses."""
    import torch

    from diffusion_handles.bench.cases import EDIT_KINDS, NoEditFound, _bbox_in_frustum, draw_edit
    from diffusion_handles.geometry import compute_multi_edit
    from diffusion_handles.world.render import object_pivot, render

    scene, src, rng, seed = draw.scene, draw.src, draw.rng, draw.seed
    if len(cands) < 2:
        raise NoEditFound(f"seed {seed}: expected two objects covering >= {limits.min_object_fraction:.0%} of the image, got {len(cands)}")
    for attempt in range(limits.max_tries):
        ks = [int(v) for v in rng.choice(cands, size=2, replace=False)]
        edits, pivots, moved = [], [], scene
        for k in ks:
            pivot = object_pivot(src.depth, src.masks[k], scene)
            pivot_world = (scene.c2w() @ np.append(pivot, 1.0))[:3]
            e = draw_edit(rng, str(rng.choice(EDIT_KINDS)), scene.w2c(), pivot_world)
            edits.append(e)
            pivots.append(pivot)
            moved = moved.with_object_edit(k, e, pivot)
        if not all(_bbox_in_frustum(moved, k) for k in ks):
            draw.reject("frustum")
            continue
        masks_t = [torch.from_numpy(src.masks[k].astype(np.float64))[None, None] for k in ks]
        checked = draw.checked_edit(compute_multi_edit, (draw.depth_t, masks_t, edits, draw.cam), max_holes)
        if checked is None:
            continue
        _, holes = checked
        gt = render(moved, spp=draw.spp, seed=seed)
        if any(gt.masks[k].sum() < limits.min_pixels for k in ks):
            draw.reject("hidden")
            continue
        empty = scene.copy()
        for k in sorted(ks, reverse=True):
            empty.objects.pop(k)
        clean_depth = render(empty, spp=1, seed=seed).depth
        return draw.case(gt, src.masks[ks], [{**e.to_dict(), "object_index": k} for e, k in zip(edits, ks, strict=True)],
                         src.caption, clean_depth, {"holes_fraction": holes, "attempt": attempt, "objects": ks})
    raise NoEditFound(f"seed {seed}: no acceptable two-object edit in {limits.max_tries} draws (rejected: {draw.rejected})")


# ---------------------------------------------------------------------- methods and scores
def _edits_of(case: KindCase):
    from diffusion_handles.geometry import HandleEdit

    return [HandleEdit.from_dict({k: v for k, v in e.items() if k != "object_index"}) for e in case.edits]


def warp_only_kind(case: KindCase, image, depth, masks):
    """The geometry alone, holes (or the removal region) filled by OpenCV Telea (radius 3)."""
    import cv2
    import torch

    from diffusion_handles.bench.runner import _to_uint8
    from diffusion_handles.geometry import (
        Camera,
        camera_move,
        compute_camera_move,
        compute_multi_edit,
        removal_region,
        render_preview,
    )

    cam = Camera(image.shape[-2], image.shape[-1], case.fov_deg)
    if case.kind == "remove":
        hard, _ = removal_region(masks[0])
        holes = hard[0, 0] > 0.5
        preview = torch.where(hard > 0.5, torch.tensor([1.0, 0.0, 1.0]).view(1, 3, 1, 1), image)
    else:
        if case.kind == "camera":
            geom = compute_camera_move(depth.float(), camera_move(_edits_of(case)[0]), cam)
        else:
            geom = compute_multi_edit(depth.float(), masks, _edits_of(case), cam)
        preview = render_preview(image.float(), geom)
        holes = geom.valid[0, 0] < 0.5
    filled = cv2.inpaint(_to_uint8(preview), holes.numpy().astype(np.uint8), 3, cv2.INPAINT_TELEA)
    return torch.from_numpy(filled.astype(np.float32) / 255.0).permute(2, 0, 1)[None], preview


def kind_metrics(output: np.ndarray, case: KindCase) -> dict:
    """PSNR / SSIM of ``output`` (uint8) against the ground truth: whole image and changed pixels."""
    from diffusion_handles.bench.metrics import masked_psnr, masked_ssim

    gt = case.gt.astype(np.float64) / 255.0
    inp = case.image.astype(np.float64) / 255.0
    out = output.astype(np.float64) / 255.0
    full = np.ones(gt.shape[:2], bool)
    changed = np.abs(gt - inp).max(-1) > EFFECT_THRESHOLD
    return {"psnr": masked_psnr(out, gt, full), "ssim": masked_ssim(out, gt, full),
            "psnr_changed": masked_psnr(out, gt, changed) if changed.any() else None,
            "changed_fraction": float(changed.mean())}


def run_kind_case(case: KindCase, methods: list[str], pipe_factory, inversion, guidance, img_dir: Path) -> dict:
    """Results of ``methods`` (``ours``, ``warp_only``) and the ``input`` reference on ``case``."""
    import dataclasses

    import torch

    from diffusion_handles.bench.runner import _save_png, _tensors, _to_uint8, edit_cost
    from diffusion_handles.pipeline import CameraMove, edit_target

    mask_union = case.masks.any(0) if case.masks.shape[0] else np.ones(case.depth.shape, bool)
    image, depth, mask = _tensors(case.image, case.depth, mask_union)
    masks = [torch.from_numpy(m.astype(np.float32))[None, None] for m in case.masks]
    clean = torch.from_numpy(case.clean_depth.astype(np.float32))[None, None]
    out = {"input": {**kind_metrics(case.image, case), "error": None}}
    for name in methods:
        t0 = time.perf_counter()
        entry: dict = {"error": None}
        try:
            if name == "warp_only":
                edited, preview = warp_only_kind(case, image, depth, masks)
                entry.update(edit_cost(), seconds=time.perf_counter() - t0)
                _save_png(_to_uint8(preview), img_dir / "preview.png")
            elif name == "ours":
                pipe = pipe_factory()
                g = dataclasses.replace(guidance, identity_transfer=None) if case.kind == "remove" else guidance
                t_inv = time.perf_counter()
                inv = pipe.invert(image, case.prompt, depth, mask, inversion=inversion, guidance=g, seed=0)
                t_inv = time.perf_counter() - t_inv
                if case.kind == "remove":
                    res = pipe.remove(inv, guidance=g, background_depth=clean, source_image=image)
                elif case.kind == "camera":
                    res = pipe.edit(inv, CameraMove(_edits_of(case)[0]), guidance=g, fov_deg=case.fov_deg,
                                    source_image=image)
                else:
                    res = pipe.edit(inv, edit_target(_edits_of(case), object_masks=masks), guidance=g,
                                    background_depth=clean, fov_deg=case.fov_deg, source_image=image)
                edited = res.edited
                entry.update(edit_cost(res, inv, t_inv))  # seconds: the edit's stages; the inversion apart
            else:
                raise HandlesError(f"method {name}: not available for the {case.kind} kind (ours, warp_only)")
            img = _to_uint8(edited)
            entry.update(kind_metrics(img, case))
            _save_png(img, img_dir / f"{name}.png")
        except Exception as e:  # recorded, not fatal
            entry["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            entry["traceback"] = traceback.format_exc(limit=3)
        entry["seconds_total"] = time.perf_counter() - t0
        entry.setdefault("seconds", entry["seconds_total"])
        out[name] = entry
    return out


def run_kinds_benchmark(cfg, kinds: list[str], out: str | Path, preset_name: str = "default",
                        progress: bool = True, log=print) -> dict:
    """``cfg.scenes`` cases of each of ``kinds`` into ``out`` (resumable per case), scored.

    Writes ``out/kinds/<kind>_s<seed>/`` (case), ``out/kinds_images/<id>/`` (input, gt,
    per-method PNGs), ``out/kinds_edits/<id>.json`` and ``out/kinds_results.json`` with the
    mean per method and kind.
    """
    from tqdm import tqdm

    from diffusion_handles.bench.cases import bench_seeds
    from diffusion_handles.outputs import write_json

    methods = _kinds_methods(cfg, kinds)
    by_kind = {kind: [m for m in methods if m in KIND_METHODS[kind]] for kind in kinds}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    inversion, guidance = _kinds_settings(cfg, preset_name)
    pipe_factory = _pipe_factory(cfg)

    def run_case(case: KindCase, img_dir: Path) -> dict:
        if case.kind == "restyle":
            from diffusion_handles.bench.restyle import run_restyle_case

            return run_restyle_case(case, by_kind[case.kind], pipe_factory, inversion, guidance, img_dir)
        return run_kind_case(case, by_kind[case.kind], pipe_factory, inversion, guidance, img_dir)

    if cfg.threads:
        import torch

        torch.set_num_threads(int(cfg.threads))
    records, skipped = [], []
    t_start = time.perf_counter()
    bar = tqdm(total=cfg.scenes * len(kinds), desc="bench kinds", unit="edit", disable=not progress)
    for kind in kinds:
        n = 0
        for seed in bench_seeds(cfg.scenes * 6, cfg.seed):
            if n >= cfg.scenes:
                break
            bar.set_postfix_str(f"{kind}_s{seed}")
            what, rec = _kind_scene(cfg, out, kind, seed, by_kind[kind], run_case)
            if what == "skipped":
                skipped.append(rec)
                continue
            records.append(rec)
            n += 1
            bar.update(1)
    bar.close()
    results = {"settings": {**cfg.to_dict(), "kinds": kinds, "preset": preset_name,
                            "inversion": inversion.to_dict(), "guidance": guidance.to_dict()},
               "wall_time_s_this_invocation": time.perf_counter() - t_start,
               "aggregate": _kinds_aggregate(records, kinds, by_kind),
               "skipped_seeds": [{"case_id": r["case_id"], "reason": r["error"]} for r in skipped], "edits": records}
    write_json(out / "kinds_results.json", results)
    log(format_kinds_table(results))
    return results


def kinds_methods(kinds: list[str], methods: list[str] | None) -> list[str]:
    """The methods to run on ``kinds`` (``None``: every method of each kind,
    :data:`KIND_METHODS`); each kind runs those of them it has.

    Raises:
        HandlesError: an unknown kind or method, or a method none of ``kinds`` has.
    """
    unknown = [k for k in kinds if k not in NEW_KINDS]
    if unknown or not kinds:
        raise HandlesError(f"--kinds: expected names from {', '.join(NEW_KINDS)}, got {', '.join(unknown) or 'none'}")
    offered = list(dict.fromkeys(m for k in kinds for m in KIND_METHODS[k]))
    if not methods:
        return offered
    bad = [m for m in methods if m not in offered]
    if bad:
        where = {m: [k for k in NEW_KINDS if m in KIND_METHODS[k]] for m in bad}
        detail = "; ".join(f"{m} runs with --kinds {','.join(w)}" for m, w in where.items() if w)
        raise HandlesError(f"--methods: with --kinds {','.join(kinds)}, expected names from {', '.join(offered)}, "
                           f"got {', '.join(bad)}" + (f" ({detail})" if detail else ""))
    return [m for m in offered if m in methods]


def _kinds_methods(cfg, kinds: list[str]) -> list[str]:
    """The methods to run (:func:`kinds_methods` of ``cfg.methods``)."""
    return kinds_methods(kinds, cfg.methods)


def _kinds_settings(cfg, preset_name: str):
    """``(inversion, guidance)``: the preset's, with the run's inversion settings."""
    import dataclasses

    from diffusion_handles.diffusion.config import preset

    inversion, guidance = preset(preset_name, cfg.steps)
    inversion = dataclasses.replace(inversion, method=cfg.inversion, null_inner_steps=cfg.null_inner_steps,
                                    null_lr=cfg.null_lr, encode_refine_steps=cfg.encode_refine_steps)
    return inversion, guidance


def _pipe_factory(cfg):
    """A function that loads the pipeline on its first call and returns that one afterwards."""
    pipe: list = []

    def pipe_factory():
        if not pipe:
            from diffusion_handles.pipeline import DiffusionHandles

            pipe.append(DiffusionHandles.from_pretrained(cfg.model, device=cfg.device))
            pipe[0].set_progress_bar_config(disable=True)
        return pipe[0]

    return pipe_factory


def _kind_scene(cfg, out: Path, kind: str, seed: int, methods: list[str], run_case) -> tuple[str, dict]:
    """One case of ``kind``: ``("skipped", record)`` when the seed has no acceptable edit, else
    ``("edit", record)``, resumed from ``kinds_edits/`` when it holds every method."""
    from diffusion_handles.bench.cases import NoEditFound
    from diffusion_handles.bench.restyle import RestyleCase
    from diffusion_handles.bench.runner import _save_png, read_resume_record
    from diffusion_handles.outputs import write_json

    cid = f"{kind}_s{seed}"
    rec_path = out / "kinds_edits" / f"{cid}.json"
    if (rec := read_resume_record(rec_path)) is not None:
        if rec.get("skipped"):
            return "skipped", rec
        if all(m in rec.get("methods", {}) for m in methods):
            return "edit", rec
    case_dir = out / "kinds" / cid
    try:
        loader = RestyleCase.load if kind == "restyle" else KindCase.load
        case = loader(case_dir) if (case_dir / "case.json").exists() else None
        if case is None:
            case = make_kind_case(kind, seed, size=cfg.size, spp=cfg.spp, max_holes=cfg.max_holes)
            case.save(case_dir)
    except NoEditFound as e:
        rec = {"case_id": cid, "seed": seed, "kind": kind, "skipped": True, "error": str(e)}
        write_json(rec_path, rec)
        return "skipped", rec
    img_dir = out / "kinds_images" / cid
    _save_png(case.image, img_dir / "input.png")
    _save_png(case.gt, img_dir / "gt.png")
    res = run_case(case, img_dir)
    rec = {"case_id": cid, "seed": seed, "kind": kind, "prompt": case.prompt, "edits": case.edits,
           "stats": case.stats, "methods": res, "error": None}
    if isinstance(case, RestyleCase):
        rec.update(restyle=case.restyle, restyle_words=case.restyle_words)
    write_json(rec_path, rec)
    return "edit", rec


def _kinds_aggregate(records: list[dict], kinds: list[str], methods: dict[str, list[str]]) -> dict:
    """``{kind: {method: {"n", "failed", "psnr", "psnr_changed", "ssim", "seconds", "fwd_eq",
    "seconds_inversion", "fwd_eq_inversion"}}}``: means over the cases without an error (the
    ``input`` reference included; ``restyle``: the ``truth`` reference too, and its scores
    :data:`~diffusion_handles.bench.restyle.RESTYLE_KEYS`) of each kind's ``methods[kind]``; the
    cost keys as in :func:`~diffusion_handles.bench.runner.edit_cost`."""
    from diffusion_handles.bench.restyle import RESTYLE_KEYS, RESTYLE_REFERENCES

    aggregate: dict = {}
    for kind in kinds:
        rows = [r for r in records if r["kind"] == kind]
        aggregate[kind] = {}
        refs, extra = (RESTYLE_REFERENCES, RESTYLE_KEYS) if kind == "restyle" else (("input",), ())
        for name in [*refs, *methods[kind]]:
            entries = [r["methods"].get(name, {}) for r in rows]
            ok = [e for e in entries if not e.get("error")]
            agg = {"n": len(ok), "failed": len(entries) - len(ok)}
            for key in ("psnr", "psnr_changed", "ssim", *extra, "seconds", "fwd_eq", "seconds_inversion",
                        "fwd_eq_inversion"):
                vals = [e[key] for e in ok if e.get(key) is not None]
                agg[key] = float(np.mean(vals)) if vals else None
            aggregate[kind][name] = agg
    return aggregate


def format_kinds_table(results: dict) -> str:
    lines = [f"{'kind':8s} {'method':10s} {'n':>3s} {'PSNR':>7s} {'PSNR chg':>9s} {'SSIM':>6s} {'s/edit':>7s}"]

    def f(v, p=2):
        return "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{p}f}"

    for kind, per in results["aggregate"].items():
        for name, a in per.items():
            lines.append(f"{kind:8s} {name:10s} {a['n']:3d} {f(a['psnr']):>7s} {f(a['psnr_changed']):>9s} "
                         f"{f(a['ssim'], 3):>6s} {f(a['seconds'], 1):>7s}")
    if "restyle" in results["aggregate"]:
        from diffusion_handles.bench.restyle import format_restyle_table

        lines += ["", format_restyle_table(results["aggregate"]["restyle"])]
    return "\n".join(lines)
