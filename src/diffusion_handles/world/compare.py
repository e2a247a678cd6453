"""Paired comparison of two ``handles world eval`` runs on the same held-out scenes.

A trained model replaces the shipped one when it is better on the held-out figures. Over 32
scenes a mean moves by a few tenths of a dB from the choice of scenes alone, so each figure is
compared scene by scene: the differences ``candidate - base`` on the seeds both runs evaluated,
their mean and its 95 % percentile-bootstrap interval
(:func:`diffusion_handles.stats.bootstrap_ci`). A figure is ``better`` or ``worse`` when
that interval excludes 0, ``unchanged`` otherwise. Eight figures are tested at once, so one
verdict in twenty can come from chance alone.

The VAE target of the embedded model is per scene (every held-out scene >= 30 dB), which a mean
hides; :func:`compare` also reports each run's worst scene and its number of scenes below
:data:`VAE_FLOOR_DB`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from diffusion_handles.errors import HandlesError

VAE_FLOOR_DB = 30.0  # the per-scene target for the VAE round trip
FLOAT_NOISE = 1e-6  # relative differences below this are rounding (re-saved weights), not a change

# (figure key of ``metrics.json``, path to its per-scene value in ``scenes[i]``, higher is better)
FIGURES: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("vae_psnr", ("vae", "psnr"), True),
    ("vae_psnr_encoder", ("vae_encoder_psnr",), True),
    ("reconstruction_psnr", ("reconstruction_psnr",), True),
    ("generation_psnr", ("model", "psnr"), True),
    ("generation_ssim", ("model", "ssim"), True),
    ("generation_iou_obj", ("model", "iou_obj"), True),
    ("generation_iou_fg", ("model", "iou_fg"), True),
    ("generation_colour_err", ("model", "colour_err"), False),
    ("denoise_loss_heldout", ("denoise_loss",), False),
)


def load_metrics(path: str | Path, arg: str = "path") -> dict:
    """The ``metrics.json`` of a ``handles world eval`` run: ``path`` is the file or its folder.

    Raises :class:`HandlesError` naming ``arg`` for a missing file, bad JSON or no ``scenes``.
    """
    p = Path(path)
    f = p / "metrics.json" if p.is_dir() else p
    if not f.is_file():
        raise HandlesError(f"{arg}: expected a handles world eval folder or its metrics.json, got {str(path)!r}")
    try:
        data = json.loads(f.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HandlesError(f"{arg}: expected JSON in {f}, got a parse error ({e})") from None
    scenes = data.get("scenes") if isinstance(data, dict) else None
    if not isinstance(scenes, list) or not all(isinstance(s, dict) and isinstance(s.get("seed"), int) for s in scenes):
        raise HandlesError(f"{arg}: expected metrics.json of handles world eval (a 'scenes' list with seeds), got {f}")
    return data


def _value(scene: dict, path: tuple[str, ...]) -> float | None:
    v = scene
    for key in path:
        if not isinstance(v, dict) or key not in v:
            return None
        v = v[key]
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _tail(values: list[float]) -> dict:
    return {"mean": sum(values) / len(values), "min": min(values),
            "below_floor": sum(v < VAE_FLOOR_DB for v in values), "n": len(values)} if values else None


def compare(base: dict, candidate: dict, n_resamples: int = 2000, seed: int = 0,
            names: tuple[str, str] = ("base", "candidate")) -> dict:
    """Compare two eval results (:func:`load_metrics`) on the seeds both evaluated (``names``:
    how an error calls the two, e.g. the CLI's ``BASE`` and ``CANDIDATE``).

    Returns ``{"n_scenes", "seeds", "figures", "vae_tail"}``: ``figures[key]`` holds ``base`` and
    ``candidate`` (means over the scenes where both have the value), ``diff`` (mean of the
    paired differences, candidate - base), ``lo``/``hi`` (its 95 % bootstrap interval), ``n``,
    ``n_better`` (scenes where the candidate is better by more than :data:`FLOAT_NOISE`,
    relative), ``higher_is_better`` and ``verdict`` (``better``/``worse`` when the interval
    excludes 0 by more than :data:`FLOAT_NOISE`, else ``unchanged``; ``n/a`` without values). ``vae_tail`` has each run's mean, worst scene
    and number of scenes below :data:`VAE_FLOOR_DB`, on the shared seeds.
    """
    from diffusion_handles.stats import bootstrap_ci

    by_seed = {s["seed"]: s for s in base["scenes"]}
    pairs = [(by_seed[s["seed"]], s) for s in candidate["scenes"] if s["seed"] in by_seed]
    if not pairs:
        b, c = names
        raise HandlesError(f"{c}: expected scenes that {b} also evaluated, got none in common "
                           f"({b} seeds {_span(base)}, {c} seeds {_span(candidate)})")
    figures = {}
    for key, path, higher in FIGURES:
        both = [(_value(b, path), _value(c, path)) for b, c in pairs]
        both = [(b, c) for b, c in both if b is not None and c is not None]
        ci = bootstrap_ci([c - b for b, c in both], n_resamples=n_resamples, seed=seed)
        if not both:
            figures[key] = {"base": None, "candidate": None, "diff": None, "lo": None, "hi": None, "n": 0,
                            "n_better": 0, "higher_is_better": higher, "verdict": "n/a"}
            continue
        sign = 1.0 if higher else -1.0
        base_mean = sum(b for b, _ in both) / len(both)
        tol = FLOAT_NOISE * max(1.0, abs(base_mean))
        gain = sorted((sign * ci["lo"], sign * ci["hi"]))  # the interval of the improvement
        verdict = "better" if gain[0] > tol else "worse" if gain[1] < -tol else "unchanged"
        figures[key] = {"base": base_mean, "candidate": sum(c for _, c in both) / len(both),
                        "diff": ci["mean"], "lo": ci["lo"], "hi": ci["hi"], "n": ci["n"],
                        "n_better": sum(sign * (c - b) > FLOAT_NOISE * max(1.0, abs(b)) for b, c in both),
                        "higher_is_better": higher, "verdict": verdict}
    vae = [(_value(b, ("vae", "psnr")), _value(c, ("vae", "psnr"))) for b, c in pairs]
    vae = [(b, c) for b, c in vae if b is not None and c is not None]
    seeds = sorted(c["seed"] for _, c in pairs)
    return {"n_scenes": len(pairs), "seeds": [seeds[0], seeds[-1]], "figures": figures,
            "vae_tail": {"base": _tail([b for b, _ in vae]), "candidate": _tail([c for _, c in vae])}}


def _span(result: dict) -> str:
    seeds = sorted(s["seed"] for s in result["scenes"])
    return f"{seeds[0]}..{seeds[-1]}" if seeds else "none"


def format_table(result: dict, base_label: str = "base", candidate_label: str = "candidate") -> str:
    """A Markdown table of :func:`compare`'s result, one row a figure, then the VAE's tail."""
    n = result["n_scenes"]
    lines = [f"{n} held-out scenes in common (seeds {result['seeds'][0]}..{result['seeds'][1]}); "
             f"difference = {candidate_label} - {base_label}, mean [95% bootstrap CI]",
             "", f"| figure | {base_label} | {candidate_label} | difference | scenes better | verdict |",
             "|---|---|---|---|---|---|"]
    for key, f in result["figures"].items():
        if f["n"] == 0:
            lines.append(f"| {key} | - | - | - | - | n/a |")
            continue
        arrow = "↑" if f["higher_is_better"] else "↓"
        lines.append(f"| {key} {arrow} | {f['base']:.4g} | {f['candidate']:.4g} | {f['diff']:+.3g} "
                     f"[{f['lo']:+.3g}, {f['hi']:+.3g}] | {f['n_better']} of {f['n']} | {f['verdict']} |")
    tail = result["vae_tail"]
    if tail["base"] and tail["candidate"]:
        lines += ["", f"VAE round trip per scene (target >= {VAE_FLOOR_DB:g} dB on every scene):"]
        for label, t in ((base_label, tail["base"]), (candidate_label, tail["candidate"])):
            lines.append(f"- {label}: mean {t['mean']:.2f} dB, worst {t['min']:.2f} dB, "
                         f"{t['below_floor']} of {t['n']} below {VAE_FLOOR_DB:g}")
    return "\n".join(lines)
