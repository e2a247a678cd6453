"""The 3DEditBench table (text) and ``report.html`` of a run's results.

:func:`format_table` prints each method's (and the input's and ground truth's) mean and 95 %
bootstrap interval of PSNR, SSIM, LPIPS and edit adherence at ``EVAL_SIZE x EVAL_SIZE`` pixels;
:func:`write_report` writes the table and per case input | methods | ground truth images.
"""

from __future__ import annotations

import os
from pathlib import Path

from diffusion_handles.bench.editbench3d.scoring import EVAL_SIZE

METRICS = (("psnr", "PSNR ↑"), ("ssim", "SSIM ↑"), ("lpips", "LPIPS ↓"), ("edit_adherence", "Edit adherence ↑"))


def _fmt(ci: dict) -> str:
    return "n/a" if not ci or ci.get("mean") is None else f"{ci['mean']:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}]"


def format_table(results: dict) -> str:
    """One row per method, then the input and ground truth: ``mean [lo, hi]`` of each score, ok/failed
    (over the cases that were read), then the number of cases that failed as a whole."""
    header = ["method", *[h for _, h in METRICS], "ok/failed"]
    rows = [header]
    for name, a in results["aggregate"].items():
        label = f"({name.replace('_', ' ')})" if name in ("input", "ground_truth") else name
        rows.append([label, *[_fmt(a[k]) for k, _ in METRICS], f"{a['ok']}/{a['failed']}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) for r in rows]
    cases = results.get("cases")
    if cases:  # a case that failed as a whole counts once here, in no row above
        lines.append(f"cases: {cases['total']}, {cases['ok']} read and run, {cases['failed']} failed as a whole "
                     "(could not be read or prepared)")
    seg = ", ".join(results["adherence"]["segmenter"]) or "-"
    lines.append(f"3DEditBench scores at {EVAL_SIZE}x{EVAL_SIZE}; edit adherence segmenter: {seg}, flow: OpenCV DIS"
                 + ("" if results["lpips"]["available"] else f"; LPIPS n/a ({results['lpips']['note']})"))
    return "\n".join(lines)


def write_report(results: dict, out: str | Path) -> Path:
    """``out/report.html``: the table, then per case input | methods | ground truth (relative links)."""
    import html

    out = Path(out)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>3DEditBench</title><style>"
             "body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:3px}figure{display:inline-block;margin:2px}"
             "figcaption{font-size:11px}.err{color:#a00}</style></head><body><h1>3DEditBench</h1><pre>",
             html.escape(format_table(results)), "</pre>"]
    for rec in results["edits"]:
        name = rec["case"]
        parts.append(f"<h3>{html.escape(name)}</h3>")
        if rec.get("error"):
            parts.append(f"<p class='err'>{html.escape(rec['error'])}</p>")
            continue
        figs = [("input.png", "input")]
        for m, e in rec["methods"].items():
            if e.get("error"):
                parts.append(f"<p class='err'>{html.escape(m)}: {html.escape(e['error'])}</p>")
            else:
                ea = e.get("edit_adherence")
                figs.append((f"{m}.png", f"{m} PSNR {e['psnr']:.2f}" + (f" EA {ea:.2f}" if ea is not None else "")))
        figs.append(("gt.png", "ground truth"))
        parts.append("<div>" + "".join(
            f"<figure><img src='images/{html.escape(name)}/{html.escape(f)}' width='160'><figcaption>"
            f"{html.escape(c)}</figcaption></figure>" for f, c in figs) + "</div>")
    parts.append("</body></html>")
    path = out / "report.html"
    tmp = path.with_name(f".report.html.{os.getpid()}.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(path)
    return path

