"""Running a benchmark: cases -> every method -> metrics -> ``results.json`` + ``report.html``.

Output folder layout (``--out DIR``)::

    DIR/cases/<id>/        the rendered case (input, ground truth, clean plate, arrays, case.json)
    DIR/edits/<id>.json    per-edit results (one entry per method, errors included)
    DIR/images/<id>/*.png  input, preview (holes magenta), gt, <method>, <method>_cycle
    DIR/results.json       run settings, per-edit results and aggregates with 95% bootstrap CIs
    DIR/report.html        Table-2-like table + one row of images per edit (relative links)

Resuming: a case folder or an edit's JSON that exists is reused; rerunning the same command
only does the work that is missing (methods missing from an edit's JSON are run and merged).
Per-edit files are written atomically (temp file + rename), so an interrupted run never leaves
a half-written one. A failing case or method is recorded with its error message and the run
goes on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffusion_handles.bench.cases import Case, NoEditFound, bench_seeds, make_case
from diffusion_handles.bench.methods import Method, record_all_guidance, resolve_methods
from diffusion_handles.bench.metrics import (
    cycle_l1,
    edit_metrics,
    iou,
    lpips_status,
    segment_object,
)
from diffusion_handles.errors import HandlesError, first_line
from diffusion_handles.outputs import write_json

RESULTS_VERSION = 1


@dataclass
class BenchConfig:
    """Settings of a benchmark run (saved in ``results.json``).

    Attributes:
        model: ``"tinyworld"``, a diffusers folder or a hub id (the depth-to-image backbone).
        scenes: number of scenes (one edit each); seed: first scene seed (see ``bench_seeds``).
        methods: method names (None: all).
        size: image side in pixels (the TinyWorld model's native size: 128).
        steps: DDIM steps of inversion and generation (paper: 50).
        inversion: ``"null-text"`` (paper), ``"ddim"`` or ``"negative-prompt"``.
        null_inner_steps: Adam steps per timestep of null-text inversion (release: up to 5).
        null_lr: its Adam learning rate (release: 1e-2).
        encode_refine_steps: latent refinement after the VAE encoder (``InversionConfig``);
            ``None``: the model's own (TinyWorld: ``world.model.ENCODE_REFINE_STEPS``), which
            ``run_benchmark`` resolves and records in ``settings.json``.
        cycle: also run the inverse edit for the cycle-consistency metric.
        spp: path-tracer samples per pixel of the renders; device: torch device.
        shard: ``(i, k)``: this process does scenes ``i, i+k, i+2k, ...`` (several processes can
            share one GPU and one ``--out``; a final run without sharding aggregates them all).
        report_only: run nothing; aggregate the edits already in ``out`` (missing ones are left out).
        threads: torch CPU threads (None: torch's default; 1 is fastest on a busy machine).
        depth: ``"exact"`` (the renderer's z-depth) or ``"estimated"`` (the same degraded the way
            monocular estimators err, :func:`diffusion_handles.bench.depth_noise.degrade_depth`);
            the ground truth is the same on both tracks.
    """

    model: str = "tinyworld"
    scenes: int = 50
    seed: int = 1_000_500
    methods: list[str] | None = None
    size: int = 128
    steps: int = 50
    inversion: str = "null-text"
    null_inner_steps: int = 5
    null_lr: float = 1e-2
    encode_refine_steps: int | None = None
    cycle: bool = True
    spp: int = 128
    device: str = "cpu"
    max_holes: float = 0.06
    shard: tuple[int, int] = (0, 1)
    report_only: bool = False
    threads: int | None = None
    depth: str = "exact"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)




# What ``handles bench`` writes into ``--out`` (plus ``*.tmp`` files of a write in progress).
BENCH_ENTRIES = frozenset({"settings.json", "results.json", "report.html", "cases", "edits", "images",
                           # --kinds camera,remove,multi (bench.new_kinds)
                           "kinds", "kinds_edits", "kinds_images", "kinds_results.json"})


def is_bench_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder that holds only what a bench run writes (so it can be resumed)."""
    path = Path(path)
    if not path.is_dir():
        return False
    names = [p.name for p in path.iterdir()]
    return any(n in BENCH_ENTRIES for n in names) and all(n in BENCH_ENTRIES or n.endswith(".tmp") for n in names)


# per method and edit: UNet forward-equivalents (a backward counts 2) of the edit and of the inversion it
# used, and seconds of the edit (its five stages) and of that inversion; seconds_total: the method's wall time here
COST_KEYS = ("fwd_eq", "fwd_eq_inversion", "seconds_inversion", "seconds_total")


def edit_cost(res=None, inverted=None, inversion_seconds: float = 0.0) -> dict:
    """The cost fields of a result row: ``fwd_eq`` and ``seconds`` (with ``seconds_by_stage``) of
    the edit ``res`` (an ``EditOutput``; ``None``: no guided generation), ``fwd_eq_inversion`` and
    ``seconds_inversion`` of the inversion ``inverted`` it used (``None``: none)."""
    from diffusion_handles.progress import forward_equivalents

    stages = {k: float(v) for k, v in (res.timings if res is not None else {}).items()}
    return {"fwd_eq": forward_equivalents(res.unet_evals) if res is not None else 0,
            "fwd_eq_inversion": forward_equivalents(inverted.unet_evals) if inverted is not None else 0,
            "seconds": sum(stages.values()), "seconds_by_stage": stages,
            "seconds_inversion": inversion_seconds if inverted is not None else 0.0}


def _number_or_none(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _record_problem(rec, cid: str) -> str | None:
    """Why an ``edits/<id>.json`` cannot be used (None when it can): the fields the report reads."""
    from diffusion_handles.bench.report import COLUMNS

    if not isinstance(rec, dict):
        return f"expected a JSON object, got {type(rec).__name__}"
    if rec.get("case_id") != cid:
        return f"expected case_id {cid!r}, got {rec.get('case_id')!r}"
    for group in ("methods", "references"):
        entries = rec.get(group, {} if group == "references" else None)
        if entries is None and group == "references":
            continue
        if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
            return f"expected {group!r} to map names to objects"
        for name, e in entries.items():
            for key in ("seconds", "cycle_l1", *COST_KEYS, *(k for k, _, _ in COLUMNS)):
                if not _number_or_none(e.get(key)):
                    return f"{group}.{name}.{key}: expected a number, got {e.get(key)!r}"
            for key in ("error", "same_as"):
                if not (e.get(key) is None or isinstance(e.get(key), str)):
                    return f"{group}.{name}.{key}: expected text, got {e.get(key)!r}"
    for key in ("error", "caption", "kind"):
        if not (rec.get(key) is None or isinstance(rec.get(key), str)):
            return f"{key}: expected text, got {rec.get(key)!r}"
    return None


def _load_json(path: Path) -> tuple[object, str | None]:
    """``(parsed, None)``, or ``(None, why)`` when ``path`` cannot be read or parsed."""
    try:
        return json.loads(path.read_text()), None
    except (OSError, ValueError) as e:
        return None, first_line(e)


def _read_record(path: Path, cid: str) -> tuple[dict | None, str | None]:
    """``(record, None)``, ``(None, None)`` when there is none, or ``(None, why)`` when it is corrupt."""
    if not path.exists():
        return None, None
    rec, why = _load_json(path)
    why = why or _record_problem(rec, cid)
    return (None, why) if why else (rec, None)


def read_resume_record(path: Path) -> dict | None:
    """The record of finished work at ``path`` to resume from, or ``None`` when there is none or
    it is unreadable (not JSON, not an object, ``methods`` not an object); an unreadable one is
    named in a one-line note on stderr and its work is recomputed (used by ``--kinds`` and
    ``--suite 3deditbench``)."""
    if not path.exists():
        return None
    rec, why = _load_json(path)
    why = why or (f"expected a JSON object, got {type(rec).__name__}" if not isinstance(rec, dict) else
                  "methods: expected an object" if not isinstance(rec.get("methods", {}), dict) else None)
    if why is None:
        return rec
    print(f"handles bench: note: {path} is corrupt ({why}); recomputing it", file=sys.stderr)
    return None


def _save_png(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    Image.fromarray(arr).save(tmp)
    tmp.replace(path)


def _to_uint8(t) -> np.ndarray:
    """``(1, 3, H, W)`` tensor in [0, 1] -> ``(H, W, 3)`` uint8."""
    a = t.detach().float().cpu()[0].clamp(0, 1).permute(1, 2, 0).numpy()
    return (a * 255.0 + 0.5).astype(np.uint8)


def _tensors(image: np.ndarray, depth: np.ndarray, mask: np.ndarray):
    import torch

    img = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()
    d = torch.from_numpy(np.asarray(depth, np.float32))[None, None]
    m = torch.from_numpy(np.asarray(mask, np.float32))[None, None]
    return img, d, m


def _pivot(depth, mask, fov_deg: float):
    """The pivot the pipeline uses: centroid of the lifted object pixels (``(3,)`` float64)."""
    from diffusion_handles.geometry import Camera, mask_pivot

    return mask_pivot(depth.double(), mask, Camera(depth.shape[-2], depth.shape[-1], fov_deg))


# ---------------------------------------------------------------------- warp only
def warp_only(image, depth, mask, transform, background_depth, fov_deg: float):
    """The "warp only" baseline: the 3D preview with its holes inpainted (OpenCV Telea, radius 3).

    Args:
        image: ``(1, 3, H, W)`` in [0, 1]; depth, background_depth: ``(1, 1, H, W)`` z-depth;
        mask: ``(1, 1, H, W)`` object mask; transform: HandleEdit or Similarity.

    Returns:
        ``(edited (1, 3, H, W), preview with magenta holes, edited depth (1, 1, H, W), edited mask)``.
    """
    import cv2
    import torch

    from diffusion_handles.geometry import Camera, compute_edit, edited_depth, render_preview

    cam = Camera(image.shape[-2], image.shape[-1], fov_deg)
    geom = compute_edit(depth.float(), mask, transform, cam)
    preview = render_preview(image.float(), geom)
    holes = (geom.valid[0, 0] < 0.5).numpy().astype(np.uint8)
    filled = cv2.inpaint(_to_uint8(preview), holes, 3, cv2.INPAINT_TELEA)
    edited = torch.from_numpy(filled.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    d_edit = edited_depth(geom, background_depth.float())
    return edited, preview, d_edit, (geom.edited_mask > 0.5).float()


# ---------------------------------------------------------------------- one case
@dataclass
class _CaseWork:
    """What the methods of one case share: its tensors (``(1, C, H, W)``), the metric examples,
    the inverse edit (for the cycle), the image folder, and the results so far."""

    case: Case
    image: Any
    depth: Any
    mask: Any
    clean_depth: Any
    examples: list
    inverse: Any
    img_dir: Path
    done: dict  # {name: entry} finished before this call
    out: dict = field(default_factory=dict)  # {name: entry} of this call
    by_config: dict = field(default_factory=dict)  # resolved config -> first method name that ran it
    inversions: dict = field(default_factory=dict)  # inversion config (JSON) -> the input's inversion with it
    inversion_seconds: dict = field(default_factory=dict)  # the same key -> that inversion's wall time


class CaseRunner:
    """Runs methods on cases with one loaded pipeline (loaded lazily: warp-only runs need none)."""

    def __init__(self, cfg: BenchConfig) -> None:
        self.cfg = cfg
        self._pipe = None

    @property
    def pipe(self):
        if self._pipe is None:
            from diffusion_handles.pipeline import DiffusionHandles

            self._pipe = DiffusionHandles.from_pretrained(self.cfg.model, device=self.cfg.device)
            self._pipe.set_progress_bar_config(disable=True)
        return self._pipe

    def _inversion_config(self):
        from diffusion_handles.diffusion.config import InversionConfig

        return InversionConfig(method=self.cfg.inversion, num_steps=self.cfg.steps,
                               null_inner_steps=self.cfg.null_inner_steps, null_lr=self.cfg.null_lr,
                               encode_refine_steps=self.cfg.encode_refine_steps)

    def _invert(self, image, prompt, depth, mask, inversion=None):
        """Invert with ``inversion`` (default: the run's), recording every (layer, step) a method may guide."""
        inversion = inversion or self._inversion_config()
        return self.pipe.invert(image, prompt, depth, mask, inversion=inversion,
                                guidance=record_all_guidance(inversion.num_steps), seed=0)

    def run(self, case: Case, methods: list[Method], done: dict, img_dir: Path, on_method=None) -> dict:
        """Results of ``methods`` on ``case`` not already in ``done`` (``{name: entry}``).

        ``on_method(name, entry)`` is called after each method (the runner saves there, so an
        interrupted edit keeps the methods it finished).
        """
        work = self._work(case, done, img_dir)
        if any(m.kind != "warp" and m.name not in done for m in methods):
            try:
                _ = self.pipe  # load once, outside the per-method timers
            except Exception:
                pass  # reported per method below
        for name, entry in done.items():
            if entry.get("config_key"):
                work.by_config.setdefault(entry["config_key"], name)
        for m in methods:
            if m.name in done:
                continue
            entry = self._run_method(m, work)
            work.out[m.name] = entry
            if on_method is not None:
                on_method(m.name, entry)
        return work.out

    def _work(self, case: Case, done: dict, img_dir: Path) -> _CaseWork:
        """The inputs every method of ``case`` gets (depths degraded on the ``estimated`` track)."""
        import torch

        given_depth, given_clean = case.depth, case.clean_depth
        if self.cfg.depth == "estimated":
            from diffusion_handles.bench.depth_noise import degrade_depth

            given_depth = degrade_depth(case.depth, seed=case.seed)
            given_clean = degrade_depth(case.clean_depth, seed=case.seed)
        image, depth, mask = _tensors(case.image, given_depth, case.mask_src)
        clean_depth = torch.from_numpy(given_clean.astype(np.float32))[None, None]
        examples = [(case.gt, case.mask_gt), (case.image, case.mask_src),
                    (case.clean, np.zeros_like(case.mask_src))]
        pivot = _pivot(depth, mask, case.fov_deg)
        inverse = case.edit.resolve(pivot).inverse()  # = HandleEdit.inverse() about the moved pivot
        return _CaseWork(case, image, depth, mask, clean_depth, examples, inverse, img_dir, done)

    def _run_method(self, m: Method, work: _CaseWork) -> dict:
        """One method's entry: its images saved and scored, or its error (never raises)."""
        t0 = time.perf_counter()
        entry: dict = {"method": m.name, "error": None}
        try:
            if m.kind == "warp":
                edited, cycled = self._warp(work)
                entry.update(edit_cost(), seconds=time.perf_counter() - t0, config_key="warp")
            elif m.kind == "reconstruction":
                edited, cycled = self._reconstruction(work)
                entry.update(edit_cost(None, *self._inverted(work, with_seconds=True)), config_key="reconstruction")
            else:
                inversion = m.inversion_config(self._inversion_config())
                guidance = m.guidance(inversion.num_steps)
                resolved = guidance.to_dict()
                resolved["guide_until"] = guidance.resolved_guide_until(inversion.num_steps)
                window = None if m.whole_image else self.pipe.edit_window(work.depth, work.mask, work.case.edit,
                                                                          fov_deg=work.case.fov_deg)
                if window is not None:  # an image larger than the model's size: the edit window
                    inversion = dataclasses.replace(inversion, window=window)
                if m.inversion is not None or window is not None:  # its own inversion (the shared one keeps older keys)
                    resolved["inversion"] = inversion.to_dict()
                    entry["inversion"] = inversion.to_dict()
                key = json.dumps(resolved, sort_keys=True)
                entry["config_key"] = key
                entry["config"] = guidance.to_dict()
                ran = {**work.done, **work.out}
                if key in work.by_config and work.by_config[key] in ran:  # the same run under another name
                    src = ran[work.by_config[key]]
                    entry.update({k: v for k, v in src.items() if k not in ("method", "seconds_total")})
                    entry["same_as"] = work.by_config[key]  # its cost is its twin's; none was spent here
                    entry["seconds_total"] = 0.0
                    return entry
                edited, cycled = self._guided(work, guidance, entry, inversion)
                work.by_config.setdefault(key, m.name)
            self._score(work, m.name, edited, cycled, entry)
        except Exception as e:  # recorded, not fatal
            entry["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            entry["traceback"] = traceback.format_exc(limit=3)
        entry["seconds_total"] = time.perf_counter() - t0
        entry.setdefault("seconds", entry["seconds_total"])  # a failed method: its wall time
        return entry

    def _warp(self, work: _CaseWork):
        """``(edited, cycled or None)`` of the warp-only baseline."""
        image, depth, mask, case, clean_depth = work.image, work.depth, work.mask, work.case, work.clean_depth
        edited, _, d_edit, m_edit = warp_only(image, depth, mask, case.edit, clean_depth, case.fov_deg)
        cycled = None
        if self.cfg.cycle:
            cycled = warp_only(edited, d_edit, m_edit, work.inverse, clean_depth, case.fov_deg)[0]
        return edited, cycled

    def _inverted(self, work: _CaseWork, inversion=None, *, with_seconds: bool = False):
        """The inversion of the case's input with ``inversion`` (an ``InversionConfig``; default:
        the run's), computed once per configuration for all the case's methods; with
        ``with_seconds``, ``(inversion, its wall time)``."""
        inversion = inversion or self._inversion_config()
        key = json.dumps(inversion.to_dict(), sort_keys=True)
        if key not in work.inversions:
            t0 = time.perf_counter()
            work.inversions[key] = self._invert(work.image, work.case.caption, work.depth, work.mask, inversion)
            work.inversion_seconds[key] = time.perf_counter() - t0
        return (work.inversions[key], work.inversion_seconds[key]) if with_seconds else work.inversions[key]

    def _reconstruction(self, work: _CaseWork):
        """``(edited, cycled or None)`` of the identity edit: the run's inversion's reconstruction."""
        inverted, image = self._inverted(work), work.image
        edited = self.pipe.backbone.resize_to_work(inverted.reconstruction.float().cpu(), tuple(image.shape[-2:]))
        cycled = edited if self.cfg.cycle else None  # the identity edit's "cycle"
        return edited, cycled

    def _guided(self, work: _CaseWork, guidance, entry: dict, inversion=None):
        """``(edited, cycled or None)`` of a guided edit of the inversion with ``inversion`` (an
        ``InversionConfig``; default: the run's), and its inverse edit for the cycle; adds
        ``g_o_end``, ``unet_evals`` and the edit's cost (:func:`edit_cost`: the forward edit and
        the inversion it used, not the cycle's) to ``entry``."""
        inversion = inversion or self._inversion_config()
        inverted, inversion_seconds = self._inverted(work, inversion, with_seconds=True)
        case, image, clean_depth, inverse = work.case, work.image, work.clean_depth, work.inverse
        res = self.pipe.edit(inverted, case.edit, guidance=guidance, background_depth=clean_depth,
                             fov_deg=case.fov_deg, source_image=image, source_depth=work.depth,
                             source_mask=work.mask)
        edited, cycled = res.edited, None
        end = guidance.resolved_guide_until(inversion.num_steps) - 1  # the last step the default guides
        if end in res.monitor:
            entry["g_o_end"] = res.monitor[end]["G_o_rel"]
        entry["unet_evals"] = res.unet_evals.get("edit", {})
        entry.update(edit_cost(res, inverted, inversion_seconds))
        if self.cfg.cycle:
            m_edit = (res.edited_mask > 0.5).float()
            if not bool(m_edit.any()):
                raise HandlesError("cycle: the edited object mask is empty, the inverse edit has no object")
            inv2 = self._invert(edited.clamp(0, 1), case.caption, res.edited_depth, m_edit, inversion)
            back = self.pipe.edit(inv2, inverse, guidance=guidance, background_depth=clean_depth,
                                  fov_deg=case.fov_deg, source_image=edited.clamp(0, 1))
            cycled = back.edited
        return edited, cycled

    @staticmethod
    def _score(work: _CaseWork, name: str, edited, cycled, entry: dict) -> None:
        """Metrics of ``edited`` (and of the cycle, when there is one) into ``entry``; their PNGs saved."""
        case, img_dir = work.case, work.img_dir
        out_img = _to_uint8(edited)
        entry.update(edit_metrics(out_img, case.gt, case.mask_gt, case.mask_src, work.examples))
        _save_png(out_img, img_dir / f"{name}.png")
        if cycled is not None:
            cyc = _to_uint8(cycled)
            entry["cycle_l1"] = cycle_l1(cyc, case.image)
            entry["cycle_l1_obj"] = cycle_l1(cyc, case.image, case.mask_src)
            _save_png(cyc, img_dir / f"{name}_cycle.png")
        entry["lpips"] = None


def reference_rows(case: Case) -> dict:
    """Metrics of two references that need no method: the ground truth itself (the metric's
    ceiling) and the unedited input (a method that does nothing)."""
    examples = [(case.gt, case.mask_gt), (case.image, case.mask_src), (case.clean, np.zeros_like(case.mask_src))]
    gt = edit_metrics(case.gt, case.gt, case.mask_gt, case.mask_src, examples)
    gt["cycle_l1"] = 0.0
    gt["cycle_l1_obj"] = 0.0
    inp = edit_metrics(case.image, case.gt, case.mask_gt, case.mask_src, examples)
    inp["cycle_l1"] = 0.0
    inp["cycle_l1_obj"] = 0.0
    for r in (gt, inp):
        r["lpips"] = None
        r["error"] = None
    return {"ground_truth": gt, "input": inp}


# ---------------------------------------------------------------------- the whole run
def run_benchmark(cfg: BenchConfig, out: str | Path, progress: bool = True, log=print) -> dict:
    """Run (or resume) a benchmark into ``out``; returns the results dict also saved as JSON."""
    from diffusion_handles.bench.report import format_table, write_report

    out = Path(out)
    methods = _check_run(cfg, out, log)
    if cfg.encode_refine_steps is None:  # what the model will do, recorded so a resume cannot mix two
        from diffusion_handles.diffusion.backbone import model_settings

        cfg = dataclasses.replace(cfg, encode_refine_steps=model_settings(cfg.model).get("encode_refine_steps", 0))
    if not cfg.report_only:
        out.mkdir(parents=True, exist_ok=True)
    _check_settings(cfg, out)
    if not cfg.report_only:
        write_json(out / "settings.json", cfg.to_dict())
    lpips = lpips_status()
    if cfg.threads:
        import torch

        torch.set_num_threads(int(cfg.threads))
    t_start = time.perf_counter()
    records, skipped = _run_scenes(cfg, out, methods, progress)
    if cfg.report_only and not records:
        raise HandlesError(f"--report-only: {str(out)!r} holds no edits of these scenes (--seed {cfg.seed}, "
                           f"--scenes {cfg.scenes}); nothing written")
    results = _results(cfg, methods, records, skipped, lpips, time.perf_counter() - t_start)
    write_json(out / "results.json", results)
    write_report(results, out)
    log(format_table(results))
    n_common = sum(1 for r in records if all(m.name in r.get("methods", {}) for m in methods) and not r.get("error"))
    if 0 < n_common < sum(1 for r in records if not r.get("error")):
        log(f"\nOn the {n_common} edits that every method has run:")
        log(format_table(results, key="aggregate_common"))
    return results


def _check_run(cfg: BenchConfig, out: Path, log) -> list[Method]:
    """Refuse settings that cannot run (one line naming the flag); returns the methods."""
    if cfg.scenes < 1:
        raise HandlesError(f"--scenes: expected >= 1, got {cfg.scenes}")
    if cfg.steps < 1:
        raise HandlesError(f"--steps: expected >= 1, got {cfg.steps}")
    methods = resolve_methods(cfg.methods)
    i_shard, k_shard = cfg.shard
    if not (k_shard >= 1 and 0 <= i_shard < k_shard):
        raise HandlesError(f"--shard: expected I/K with 0 <= I < K, got {i_shard}/{k_shard}")
    from diffusion_handles.world.dataset import HELDOUT_SEED0

    if cfg.seed < HELDOUT_SEED0:
        log(f"handles bench: warning: --seed {cfg.seed} is below the held-out range (>= {HELDOUT_SEED0}); "
            "scenes may overlap TinyWorld training scenes")
    if cfg.report_only and not (out / "edits").is_dir():
        raise HandlesError(f"--report-only: expected a bench folder with edits/ to aggregate, got {str(out)!r} "
                           f"({'no edits/ in it' if out.is_dir() else 'no such folder'}); nothing written")
    return methods


def _check_settings(cfg: BenchConfig, out: Path) -> None:
    """Refuse to resume into ``out`` when its ``settings.json`` is corrupt or holds other settings."""
    settings = out / "settings.json"
    if not settings.exists():
        return
    try:
        prev = json.loads(settings.read_text())
        if not isinstance(prev, dict):
            raise ValueError(f"expected a JSON object, got {type(prev).__name__}")
    except (OSError, ValueError) as e:
        raise HandlesError(f"--out: {settings} is corrupt ({first_line(e)}); "
                           "delete it to resume with these settings, or use a new folder") from None
    keys = ("model", "size", "steps", "inversion", "null_inner_steps", "null_lr", "encode_refine_steps", "cycle",
            "spp", "max_holes", "depth")
    default = BenchConfig().to_dict()  # a key older runs did not save has its default value,
    default["encode_refine_steps"] = 0  # except the refinement: runs from before it had none
    diff = [k for k in keys if prev.get(k, default[k]) != cfg.to_dict().get(k)]
    if diff:
        raise HandlesError(f"--out: {out} holds a run with other settings ({', '.join(diff)}); use a new folder")


def _run_scenes(cfg: BenchConfig, out: Path, methods: list[Method], progress: bool) -> tuple[list[dict], list[dict]]:
    """``(records, skipped)``: this shard's scenes, each resumed, run, or (report only) read.

    Scenes are drawn from the seed sequence until ``scenes`` of them have an acceptable edit;
    seeds without one are skipped (recorded, not counted). A shard takes every k-th seed.
    """
    from tqdm import tqdm

    i_shard, k_shard = cfg.shard
    candidates = bench_seeds(cfg.scenes * 4, cfg.seed)[i_shard::k_shard]
    target = -(-cfg.scenes // k_shard) if k_shard > 1 else cfg.scenes
    runner = CaseRunner(cfg)
    records, skipped = [], []
    bar = tqdm(total=target, desc="bench", unit="edit", disable=not progress)
    for seed in candidates:
        if len(records) >= target:
            break
        bar.set_postfix_str(f"s{seed}")
        outcome = _run_scene(cfg, out, seed, methods, runner, bar)
        if outcome is None:
            continue
        kind, rec = outcome
        if kind == "skipped":
            skipped.append(rec)
        else:
            records.append(rec)
            bar.update(1)
    bar.close()
    return records, skipped


def _run_scene(cfg: BenchConfig, out: Path, seed: int, methods: list[Method], runner: CaseRunner,
               bar) -> tuple[str, dict] | None:
    """One scene: ``("skipped", record)`` (no acceptable edit), ``("edit", record)``, or None (a
    report-only run and no record). Its record is written after each method."""
    cid = f"s{seed}"
    rec_path = out / "edits" / f"{cid}.json"
    rec = _resumed_record(cfg, rec_path, cid)
    if rec is not None and rec.get("skipped"):
        return "skipped", rec
    done = rec["methods"] if rec else {}
    todo = [m for m in methods if m.name not in done]
    if cfg.report_only:
        return None if rec is None else ("edit", rec)
    if rec is not None and not todo:
        return "edit", rec
    try:
        case = _load_or_make_case(cfg, out / "cases" / cid, seed)
    except NoEditFound as e:
        rec = {"case_id": cid, "seed": seed, "error": str(e), "skipped": True, "methods": {}}
        write_json(rec_path, rec)
        return "skipped", rec
    except Exception as e:
        rec = {"case_id": cid, "seed": seed, "error": f"{type(e).__name__}: {e}", "methods": {}}
        write_json(rec_path, rec)
        return "edit", rec
    img_dir = out / "images" / cid
    _save_case_images(case, img_dir)
    rec = {
        "case_id": cid, "seed": seed, "kind": case.kind, "edit": case.edit.to_dict(),
        "object_index": case.object_index, "caption": case.caption, "stats": case.stats, "error": None,
        "references": reference_rows(case), "methods": dict(done),
    }

    def save(name: str, entry: dict) -> None:
        rec["methods"][name] = entry
        write_json(rec_path, rec)
        bar.set_postfix_str(f"{cid} {name}")

    runner.run(case, todo, done, img_dir, on_method=save)
    write_json(rec_path, rec)
    return "edit", rec


def _resumed_record(cfg: BenchConfig, rec_path: Path, cid: str) -> dict | None:
    """The edit's record from an earlier run, or None; a corrupt one is recomputed (with a note),
    or refused in a report-only run."""
    rec, corrupt = _read_record(rec_path, cid)
    if corrupt:
        if cfg.report_only:
            raise HandlesError(f"--report-only: {rec_path} is corrupt ({corrupt}); rerun without --report-only "
                               "to recompute that edit; nothing written")
        print(f"handles bench: note: {rec_path} is corrupt ({corrupt}); recomputing that edit", file=sys.stderr)
    return rec


def _load_or_make_case(cfg: BenchConfig, case_dir: Path, seed: int) -> Case:
    """The case saved in ``case_dir``, or (none there, or a damaged one) the case rendered afresh and saved."""
    case = None
    if (case_dir / "case.json").exists():
        try:
            case = Case.load(case_dir)
        except Exception as e:  # a damaged case folder is rendered again
            print(f"handles bench: note: {case_dir} is corrupt ({type(e).__name__}: "
                  f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); rendering it again",
                  file=sys.stderr)
    if case is None:
        case = make_case(seed, size=cfg.size, spp=cfg.spp, max_holes=cfg.max_holes)
        case.save(case_dir)
    return case


def _save_case_images(case: Case, img_dir: Path) -> None:
    """The input, ground truth, clean plate and 3D preview PNGs of ``case`` (those not there yet)."""
    for name, arr in (("input", case.image), ("gt", case.gt), ("clean", case.clean)):
        if not (img_dir / f"{name}.png").exists():
            _save_png(arr, img_dir / f"{name}.png")
    if not (img_dir / "preview.png").exists():
        try:
            image, depth, mask = _tensors(case.image, case.depth, case.mask_src)
            prev_img = warp_only(image, depth, mask, case.edit, _tensors(case.image, case.clean_depth, case.mask_src)[1],
                                 case.fov_deg)[1]
            _save_png(_to_uint8(prev_img), img_dir / "preview.png")
        except Exception:
            pass


def _results(cfg: BenchConfig, methods: list[Method], records: list[dict], skipped: list[dict],
             lpips: tuple[bool, str | None], wall: float) -> dict:
    """The ``results.json`` of a run: settings, per-edit records and their aggregates."""
    from diffusion_handles.bench.report import aggregate

    ok_lpips, lpips_why = lpips
    names = [m.name for m in methods]
    return {
        "version": RESULTS_VERSION,
        "settings": cfg.to_dict(),
        "lpips": {"available": ok_lpips, "note": lpips_why},
        "wall_time_s_this_invocation": wall,
        "methods": {m.name: {"kind": m.kind, "group": m.group, "description": m.description} for m in methods},
        "aggregate": aggregate(records, names),
        # the edits on which every requested method has a result (ok or failed): a like-for-like
        # comparison when a run was stopped before the slower methods covered every edit
        "aggregate_common": aggregate(
            [r for r in records if all(m.name in r.get("methods", {}) for m in methods)], names),
        "aggregate_by_kind": {
            kind: aggregate([r for r in records if r.get("kind") == kind], names)
            for kind in sorted({r["kind"] for r in records if r.get("kind")})
        },
        "skipped_seeds": [{"seed": r["seed"], "reason": r["error"]} for r in skipped],
        "edits": records,
    }


__all__ = ["BenchConfig", "CaseRunner", "run_benchmark", "is_bench_folder", "warp_only", "reference_rows", "iou", "segment_object"]
