"""The finish's refilled old silhouette, its inpainting behind the moved object and the light's
rival check, on the warp baseline.

These choices act on pixels the warp keeps or inpaints, so they are measured without the model:
for each tuning edit (``handles bench``'s cases, ``--seed``/``--scenes``; not the held-out seeds
the benchmark reports) the 3D preview with its holes inpainted (OpenCV Telea, as ``warp_only``)
is scored against the rendered truth, then, in the finish's order (the shadows moved on the warp,
then its holes filled):

* ``rims``: the same with :func:`diffusion_handles.stages.s6_finish.old_rim` (the old footprint
  and its 1-px rim, outside the moved object grown by 1 px and outside occluders) added to the
  holes; ``rims_2px`` with a 2-px ring; ``rims_beside_0`` without keeping the pixel beside the
  moved silhouette;
* ``rims+shadows``: ``rims`` with the shadows moved
  (:func:`diffusion_handles.geometry.shadow.find_shadows`, the light kept only without a rival,
  ``MAX_RIVAL``); ``rims+shadows_any_light``: every found light used (``max_rival=1``);
  ``rims+shadows_rival_0.2``: the check at 0.2; ``rims+shadows_lift_uncapped``: the old
  shadow's lift without its cap (``shadow.LIFT_CAP_PX = 0``); ``rims+shadows_any_tint``: a
  shadow of any colour kept (no ``shadow.MAX_TINT`` check);
* ``finish_no_shell``: ``rims+shadows`` with the holes outside the moved object (with the gaps
  it encloses, :func:`diffusion_handles.stages.s6_finish.object_cover`) inpainted from the
  background alone (:func:`diffusion_handles.stages.s6_finish.inpaint` with the moved object
  as foreground);
* ``finish_no_front``: the same with the moved object's shell added to the foreground
  (:func:`diffusion_handles.geometry.shadow.shell_footprint`: its unseen sides are object, not
  background);
* ``finish_no_turn``: the same with whatever stands in front of the uncovered ground (another
  object beside it, :func:`diffusion_handles.stages.s6_finish.in_front`) left out as a source too;
* ``finish``: the same with a turned object relit under the found light
  (:attr:`diffusion_handles.geometry.shadow.Effects.turn`, moved by the flow before the holes are
  filled), as the finish does.

Prints the mean of each metric (``bench.metrics``: the pixels the truth brightens / darkens,
background, whole image, the uncovered footprint, the object (PSNR, SSIM), sharpness of the edit
region) per variant; with ``--depth estimated`` on the benchmark's degraded depth.

Usage::

    python benchmarks/silhouette_light.py --seed 1003100 --scenes 32 --out runs/silhouette-light \\
        --json benchmarks/results/silhouette_light_1003100_32.json
    python benchmarks/silhouette_light.py --seed 1003100 --scenes 32 --out runs/silhouette-light \\
        --depth estimated
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

KEYS = ("psnr_shadow_old", "psnr_shadow_new", "psnr_bg", "psnr_full", "psnr_disocc", "psnr_obj", "ssim_obj",
        "sharpness_edit")


def _tensor(a: np.ndarray):
    import torch

    a = np.asarray(a, np.float32)
    return torch.from_numpy(a.transpose(2, 0, 1) if a.ndim == 3 else a[None])[None]


def variants(case, depth_kind: str = "exact") -> dict[str, np.ndarray]:
    """``{name: (H, W, 3) output in [0, 1]}`` of one benchmark case (see the module docstring);
    ``depth_kind`` ``"estimated"``: the benchmark's degraded depth (``bench.depth_noise``), as
    ``handles bench --depth estimated`` gives the methods."""
    import torch

    from diffusion_handles.geometry import (
        Camera,
        compute_edit,
        edited_depth,
        render_preview,
        shadow,
        warp,
    )
    from diffusion_handles.geometry.poisson import background_depth_fill
    from diffusion_handles.stages.s6_finish import in_front, inpaint, object_cover, old_rim

    given = case.depth
    if depth_kind == "estimated":
        from diffusion_handles.bench.depth_noise import degrade_depth

        given = degrade_depth(case.depth, seed=case.seed)
    image, depth = _tensor(case.image.astype(np.float32) / 255.0), _tensor(given)
    mask = _tensor(case.mask_src.astype(np.float32))
    cam = Camera(image.shape[-2], image.shape[-1], case.fov_deg)
    geom = compute_edit(depth.float(), mask, case.edit, cam)
    preview = render_preview(image.float(), geom)
    holes = geom.valid[0, 0].numpy() < 0.5
    moved = object_cover(geom.edited_mask)[0, 0].numpy() > 0.5

    def fill(extra, warped=preview, behind=False) -> np.ndarray:
        h = holes if extra is None else holes | (extra[0, 0].numpy() > 0.5)
        return inpaint(warped, h, moved if behind else None)[0].permute(1, 2, 0).numpy()

    ring = old_rim(mask, geom.edited_mask, depth)
    out = {"warp": fill(None), "rims": fill(ring), "rims_2px": fill(old_rim(mask, geom.edited_mask, depth, ring=2)),
           "rims_beside_0": fill(old_rim(mask, geom.edited_mask, depth, beside=0))}
    receiver = background_depth_fill(depth.float(), mask)
    cap = shadow.LIFT_CAP_PX

    tint = shadow.MAX_TINT

    def moved_shadows(max_rival=None, lift_cap=cap, max_tint=tint, relit=False):
        shadow.LIFT_CAP_PX, shadow.MAX_TINT = lift_cap, max_tint
        try:
            kw = {} if max_rival is None else {"max_rival": max_rival}
            fx = shadow.find_shadows(image, depth, [mask], receiver, cam, [geom.transforms[0]], geom.edited_mask, **kw)
        finally:
            shadow.LIFT_CAP_PX, shadow.MAX_TINT = cap, tint
        out = fx.apply(preview)
        if relit and fx.any and fx.turn is not None:  # the finish's relighting, moved by the flow
            out = out * (1.0 + warp(fx.turn - 1.0, geom.source))
        return out

    shadows = moved_shadows()
    out["rims+shadows"] = fill(ring, shadows)
    out["rims+shadows_any_light"] = fill(ring, moved_shadows(1.0))
    out["rims+shadows_rival_0.2"] = fill(ring, moved_shadows(0.2))
    out["rims+shadows_lift_uncapped"] = fill(ring, moved_shadows(lift_cap=0))
    out["rims+shadows_any_tint"] = fill(ring, moved_shadows(max_tint=float("inf")))
    out["finish_no_shell"] = fill(ring, shadows, behind=True)
    shell = shadow.shell_footprint(geom.transforms[0].apply(shadow.occluder_points(depth, mask, cam).double()), cam)
    cover = object_cover(torch.maximum(object_cover(geom.edited_mask), shell), 0)
    valid = geom.valid * (1.0 - ring)
    out["finish_no_front"] = inpaint(shadows, valid[0, 0].numpy() < 0.5, cover[0, 0].numpy() > 0.5)
    cover = torch.maximum(cover, in_front(edited_depth(geom, receiver), valid, cover))
    out["finish_no_turn"] = inpaint(shadows, valid[0, 0].numpy() < 0.5, cover[0, 0].numpy() > 0.5)
    out["finish"] = inpaint(moved_shadows(relit=True), valid[0, 0].numpy() < 0.5, cover[0, 0].numpy() > 0.5)
    for k in ("finish_no_front", "finish_no_turn", "finish"):
        out[k] = out[k][0].permute(1, 2, 0).numpy()
    return out


def scores(case, output: np.ndarray) -> dict:
    from diffusion_handles.bench.metrics import (
        _edit_area,
        effects_region,
        masked_psnr,
        masked_ssim,
        shadow_regions,
        sharpness_ratio,
    )

    gt, src = case.gt.astype(np.float32) / 255.0, case.image.astype(np.float32) / 255.0
    old, new = shadow_regions(gt, src, case.mask_gt, case.mask_src)
    bg = ~(case.mask_gt | case.mask_src)
    area = _edit_area(case.mask_gt, case.mask_src, effects_region(gt, src, case.mask_gt, case.mask_src))
    return {"psnr_shadow_old": masked_psnr(output, gt, old), "psnr_shadow_new": masked_psnr(output, gt, new),
            "psnr_bg": masked_psnr(output, gt, bg), "psnr_full": masked_psnr(output, gt, np.ones_like(bg)),
            "psnr_disocc": masked_psnr(output, gt, case.mask_src & ~case.mask_gt),
            "psnr_obj": masked_psnr(output, gt, case.mask_gt), "ssim_obj": masked_ssim(output, gt, case.mask_gt),
            "sharpness_edit": sharpness_ratio(output, gt, area)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1003100, help="first tuning seed (default 1003100)")
    p.add_argument("--scenes", type=int, default=32)
    p.add_argument("--out", type=Path, default=Path("runs/silhouette-light"), help="case folder (reused)")
    p.add_argument("--json", type=Path, default=None, help="also write the per-case scores here")
    p.add_argument("--depth", choices=("exact", "estimated"), default="exact",
                   help="the depth the variants get: exact, or the benchmark's degraded (estimated-like) depth")
    args = p.parse_args()

    import torch

    from diffusion_handles.bench.cases import Case, NoEditFound, bench_seeds, make_case

    torch.set_num_threads(1)
    rows = []
    for seed in bench_seeds(args.scenes, args.seed):
        folder = args.out / "cases" / f"s{seed}"
        try:
            case = Case.load(folder) if (folder / "case.json").exists() else make_case(seed, size=128, spp=128)
        except NoEditFound:
            continue
        if not (folder / "case.json").exists():
            case.save(folder)
        rows.append({"case": case.case_id, **{k: scores(case, v) for k, v in variants(case, args.depth).items()}})
    print(f"{len(rows)} tuning edits from seed {args.seed}, {args.depth} depth; means (None-free):")
    for name in rows[0]:
        if name == "case":
            continue
        means = {k: np.mean([r[name][k] for r in rows if r[name][k] is not None]) for k in KEYS}
        print(f"  {name:<28}" + "  ".join(f"{k} {v:.2f}" for k, v in means.items()))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
