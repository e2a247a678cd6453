"""Running a configuration on 3DEditBench: methods on each case, scores, ``results.json``.

:class:`EditBenchRunner` turns a case into the pipeline's inputs at the camera window (image,
depth, mask, background depth, pivot and the HandleEdit of the case's ``R, T``) and runs each
method on it; :func:`run_editbench` runs (or resumes) a whole folder into ``out`` (per-case JSON
records and images written atomically, then the aggregate with bootstrap confidence intervals and
the report). The pipeline, SAM, torch and tqdm are imported when first needed.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffusion_handles.bench.editbench3d.camera import camera_from_K, handle_edit_from_rt
from diffusion_handles.bench.editbench3d.io import EditBenchCase, list_cases, read_case
from diffusion_handles.bench.editbench3d.report import METRICS, format_table, write_report
from diffusion_handles.bench.editbench3d.scoring import PointSegmenter, resize_uint8, score_edit
from diffusion_handles.bench.runner import _save_png, read_resume_record
from diffusion_handles.errors import HandlesError
from diffusion_handles.outputs import write_json
from diffusion_handles.stats import bootstrap_ci

RESULTS_VERSION = 1


@dataclass
class EditBenchConfig:
    """Settings of a 3DEditBench run (saved in ``results.json``).

    ``gt_mask``: select the object by ``GT_segment`` (else SAM at ``point_prompt``);
    ``prompt``: the text prompt for files without our ``caption`` extension.
    """

    model: str = "tinyworld"
    methods: list[str] | None = None
    steps: int = 50
    inversion: str = "null-text"
    null_inner_steps: int = 5
    gt_mask: bool = False
    sam_model: str | None = None
    prompt: str = ""
    device: str = "cpu"
    threads: int | None = None

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def _tensor_image(img: np.ndarray):
    import torch

    return torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


class EditBenchRunner:
    """Runs methods on cases with one lazily loaded pipeline (and SAM when ``gt_mask`` is off)."""

    def __init__(self, cfg: EditBenchConfig) -> None:
        from diffusion_handles.bench.methods import resolve_methods

        self.cfg = cfg
        self.methods = resolve_methods(cfg.methods or ["ours"])
        self._pipe = None
        self.sam = None
        if not cfg.gt_mask:  # the click path, as `handles edit --click`: fails at once without weights
            from diffusion_handles.perception.segment import (
                DEFAULT_SAM_MODEL,
                SamSegmenter,
                SegmentConfig,
            )

            self.sam = SamSegmenter.load(SegmentConfig(sam_model=cfg.sam_model or DEFAULT_SAM_MODEL, device=cfg.device),
                                         bypass="pass --gt-mask to select the object by the files' GT_segment")

    @property
    def pipe(self):
        if self._pipe is None:
            from diffusion_handles.pipeline import DiffusionHandles

            self._pipe = DiffusionHandles.from_pretrained(self.cfg.model, device=self.cfg.device)
            self._pipe.set_progress_bar_config(disable=True)
        return self._pipe

    def inputs(self, case: EditBenchCase):
        """``(window, image, depth, mask, background, pivot, edit)`` at the camera window."""
        import torch

        from diffusion_handles.bench.runner import _pivot
        from diffusion_handles.geometry import background_depth_fill

        h, w = case.image1.shape[:2]
        win = camera_from_K(case.K, h, w)
        y0, y1, x0, x1 = win.box
        image = _tensor_image(case.image1[y0:y1, x0:x1])
        if self.sam is not None:
            x, y = case.point_prompt
            if not (x0 <= x < x1 and y0 <= y < y1):
                raise HandlesError(f"point_prompt: expected a point inside the camera window {win.box}, got {x:g},{y:g}")
            mask, _ = self.sam.mask_from_clicks(image, [(float(x - x0), float(y - y0))])
        else:
            mask = torch.from_numpy(case.gt_segment[y0:y1, x0:x1].astype(np.float32))[None, None]
        if not bool((mask > 0.5).any()):
            raise HandlesError("mask: expected object pixels inside the camera window, got none")
        if case.depth is not None:
            depth = torch.from_numpy(case.depth[y0:y1, x0:x1].astype(np.float32))[None, None]
        else:
            from diffusion_handles.perception import PerceptionConfig, prepare_inputs

            depth = prepare_inputs(image, mask=mask, models=PerceptionConfig(), need_background=False).depth
        background = background_depth_fill(depth.double(), (mask > 0.5).double()).float()
        pivot = _pivot(depth, mask, win.fov_deg)
        edit = handle_edit_from_rt(case.R, case.T, pivot.numpy())
        return win, image, depth, mask, background, pivot, edit

    def run(self, case: EditBenchCase, done: dict, on_method=None) -> dict[str, tuple[dict, np.ndarray | None]]:
        """``{method: (entry, edited uint8 full frame)}`` for methods not in ``done``."""
        from diffusion_handles.bench.methods import record_all_guidance
        from diffusion_handles.bench.runner import _to_uint8, warp_only
        from diffusion_handles.diffusion.config import InversionConfig

        todo = [m for m in self.methods if m.name not in done]
        out: dict = {}
        if not todo:
            return out
        win, image, depth, mask, background, _, edit = self.inputs(case)
        y0, y1, x0, x1 = win.box
        run_inversion = InversionConfig(method=self.cfg.inversion, num_steps=self.cfg.steps,
                                        null_inner_steps=self.cfg.null_inner_steps)
        inversions: dict = {}  # one inversion per configuration (ours_draft has its own)
        for m in todo:
            t0 = time.perf_counter()
            entry: dict = {"method": m.name, "error": None, "edit": edit.to_dict(), "fov_deg": win.fov_deg,
                           "window": list(win.box)}
            full = None
            try:
                if m.kind == "warp":
                    edited = warp_only(image, depth, mask, edit, background, win.fov_deg)[0]
                else:
                    inv_cfg = m.inversion_config(run_inversion) if m.kind == "diffusion" else run_inversion
                    key = repr(inv_cfg)
                    if key not in inversions:
                        prompt = case.caption if case.caption is not None else self.cfg.prompt
                        inversions[key] = self.pipe.invert(image, prompt, depth, mask, inversion=inv_cfg,
                                                           guidance=record_all_guidance(inv_cfg.num_steps), seed=0)
                    inverted = inversions[key]
                    if m.kind == "reconstruction":
                        edited = self.pipe.backbone.resize_to_work(inverted.reconstruction.float().cpu(),
                                                                   tuple(image.shape[-2:]))
                    else:
                        res = self.pipe.edit(inverted, edit, guidance=m.guidance(inv_cfg.num_steps),
                                             background_depth=background, fov_deg=win.fov_deg, source_image=image,
                                             source_depth=depth, source_mask=mask)
                        edited = res.edited
                full = case.image1.copy()
                full[y0:y1, x0:x1] = _to_uint8(edited)
            except Exception as e:  # recorded, not fatal
                entry["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                entry["traceback"] = traceback.format_exc(limit=3)
            entry["seconds"] = time.perf_counter() - t0
            out[m.name] = (entry, full)
            if on_method is not None:
                on_method(m.name, entry, full)
        return out


def run_editbench(cfg: EditBenchConfig, data: str | Path, out: str | Path, *, only: list[str] | None = None,
                  report_only: bool = False, progress: bool = True, log=print) -> dict:
    """Run (or resume) ``cfg`` on the 3DEditBench files of ``data`` into ``out``; returns the results.

    ``out/edits/<case>.json`` (per method: scores, seconds, error), ``out/images/<case>/*.png``
    (input, gt, one per method, at the evaluation size), ``out/results.json``, ``out/report.html``.
    ``only``: the case names to run (a Ray task runs one); ``report_only``: aggregate what exists.
    """
    from tqdm import tqdm

    from diffusion_handles.bench.methods import resolve_methods
    from diffusion_handles.bench.metrics import LPIPS, lpips_status

    files = list_cases(data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(cfg, data, out, report_only)
    ok_lpips, lpips_why = lpips_status()
    runner = None if report_only else EditBenchRunner(cfg)
    methods = resolve_methods(cfg.methods or ["ours"])
    segmenter = None
    if not report_only:  # one SAM for both: the click path's (when --gt-mask is off) also scores adherence
        from diffusion_handles.perception.segment import DEFAULT_SAM_MODEL

        segmenter = PointSegmenter(cfg.sam_model or DEFAULT_SAM_MODEL, cfg.device, loaded=runner.sam)
    lp = LPIPS() if ok_lpips and not report_only else None
    if cfg.threads:
        import torch

        torch.set_num_threads(int(cfg.threads))
    records = []
    t_start = time.perf_counter()
    todo_files = [p for p in files if only is None or p.stem in only]
    bar = tqdm(todo_files, desc="3deditbench", unit="case", disable=not progress)
    for path in bar:
        rec = _run_case(path, out, runner, methods, segmenter, lp, report_only)
        if rec is not None:
            records.append(rec)
    bar.close()
    segs = sorted({r.get("segmenter") for r in records if r.get("segmenter")})
    agg = _aggregate(records, methods)
    results = {
        "version": RESULTS_VERSION, "suite": "3deditbench", "settings": cfg.to_dict(),
        "data": str(Path(data).resolve()), "lpips": {"available": ok_lpips, "note": lpips_why},
        "adherence": {"segmenter": segs, "flow": "opencv-dis",
                      "definition": "IoU of SAM-style point-prompted segments: GT image2 from object_points_image2, "
                                    "edited image from object_points_image1 moved by the input->edited flow "
                                    "(neuroailab/3DEditBench edit_bench/utils.py get_iou_score)"},
        "wall_time_s_this_invocation": time.perf_counter() - t_start,
        "methods": [m.name for m in methods], "aggregate": agg, **_totals(records, agg), "edits": records,
    }
    if only is None:
        write_json(out / "results.json", results)
        write_report(results, out)
        log(format_table(results))
    return results


def _check_settings(cfg: EditBenchConfig, data: str | Path, out: Path, report_only: bool) -> None:
    """Refuse to resume a run of other settings in ``out``; record these (unless ``report_only``)."""
    settings = out / "settings.json"
    keys = ("model", "steps", "inversion", "null_inner_steps", "gt_mask", "prompt")
    if settings.exists():
        prev = json.loads(settings.read_text())
        diff = [k for k in keys if prev.get(k) != cfg.to_dict().get(k)]
        if diff:
            raise HandlesError(f"--out: {out} holds a run with other settings ({', '.join(diff)}); use a new folder")
    if not report_only:
        write_json(settings, {**cfg.to_dict(), "suite": "3deditbench", "data": str(Path(data).resolve())})


def _run_case(path: Path, out: Path, runner: EditBenchRunner | None, methods: list, segmenter, lp,
              report_only: bool) -> dict | None:
    """The record of one file: resumed when it holds every method (or in a report-only run: None
    when there is none), else the missing methods run and scored (an error is recorded, not raised)."""
    name = path.stem
    rec_path = out / "edits" / f"{name}.json"
    rec = read_resume_record(rec_path)
    done = dict(rec["methods"]) if rec and not rec.get("error") else {}
    if report_only or (rec is not None and not rec.get("error") and all(m.name in done for m in methods)):
        return rec
    img_dir = out / "images" / name
    try:
        case = read_case(path)
        rec = {"case": name, "error": None, "methods": done, "segmenter": segmenter.kind, "flow": "opencv-dis",
               "references": {}}
        _save_png(resize_uint8(case.image1), img_dir / "input.png")
        _save_png(resize_uint8(case.image2), img_dir / "gt.png")
        rec["references"]["input"] = {**score_edit(case.image1, case, segmenter, lp), "error": None}
        rec["references"]["ground_truth"] = {**score_edit(case.image2, case, segmenter, lp), "error": None}

        def save(mname: str, entry: dict, full) -> None:
            if full is not None:
                entry.update(score_edit(full, case, segmenter, lp))
                _save_png(resize_uint8(full), img_dir / f"{mname}.png")
            rec["methods"][mname] = entry
            write_json(rec_path, rec)

        runner.run(case, done, on_method=save)
    except HandlesError as e:
        rec = {"case": name, "error": str(e), "methods": {}}
    except Exception as e:
        rec = {"case": name, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}",
               "methods": {}}
    write_json(rec_path, rec)
    return rec


def _aggregate(records: list[dict], methods: list) -> dict:
    """Per method and reference: each metric's mean with its bootstrap interval, ``ok`` and ``failed``
    over the cases that were read (a case that failed as a whole is counted once, in :func:`_totals`)."""
    agg = {}
    refs = ("input", "ground_truth")
    cases = [r for r in records if not r.get("error")]
    for row in [m.name for m in methods] + list(refs):
        entries = [(r.get("references", {}) if row in refs else r.get("methods", {})).get(row) for r in cases]
        good = [e for e in entries if e and not e.get("error")]
        failed = sum(1 for e in entries if e and e.get("error"))
        agg[row] = {k: bootstrap_ci([e.get(k) for e in good]) for k, _ in METRICS}
        agg[row].update(ok=len(good), failed=failed)
    return agg


def _totals(records: list[dict], agg: dict) -> dict:
    """``cases``: files run (``ok``) or failed as a whole (unreadable, or refused before any method
    ran: each counts once, whatever the number of methods); ``failed``: those cases plus the failed
    method and reference results of the cases that were read."""
    bad = sum(1 for r in records if r.get("error"))
    cases = {"total": len(records), "ok": len(records) - bad, "failed": bad}
    return {"cases": cases, "failed": bad + sum(a["failed"] for a in agg.values())}
