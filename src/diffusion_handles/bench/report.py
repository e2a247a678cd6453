"""Aggregates, the printed table and ``report.html`` of a benchmark run."""

from __future__ import annotations

import html
from pathlib import Path

from diffusion_handles.stats import bootstrap_ci

# (key, header, higher is better)
COLUMNS = (
    ("psnr_full", "PSNR full ↑", True),
    ("ssim_full", "SSIM full ↑", True),
    ("psnr_obj", "PSNR obj ↑", True),
    ("psnr_effects", "PSNR effects ↑", True),
    ("psnr_disocc", "PSNR disocc ↑", True),
    ("psnr_bg", "PSNR bg ↑", True),
    ("iou", "IoU (S_edit) ↑", True),
    ("g_o_end", "G_o end ↓", False),
    ("cycle_l1", "E_L1 cycle x10 ↓", False),
    ("lpips", "LPIPS ↓", False),
    ("ssim_obj", "SSIM obj ↑", True),
    ("ssim_bg", "SSIM bg ↑", True),
    ("cycle_l1_obj", "E_L1 cycle obj x10 ↓", False),
    ("psnr_shadow_old", "PSNR old shadow ↑", True),
    ("psnr_shadow_new", "PSNR new shadow ↑", True),
    ("sharpness_edit", "sharpness edit (1 = truth)", True),
)
REFERENCES = ("ground_truth", "input")
# the cost of an edit, per method: UNet forward-equivalents (a backward counts 2) and seconds of the edit,
# and of the inversion it used
COST = ("fwd_eq", "seconds", "fwd_eq_inversion", "seconds_inversion")


def aggregate(records: list[dict], method_names: list[str]) -> dict:
    """``{row: {metric: {"mean","lo","hi","n"}, "ok": int, "failed": int, "seconds_total": float}}``
    over edits, for every method and the two reference rows. The metrics include the cost per
    edit (:data:`COST`: ``fwd_eq``, ``seconds``, ``fwd_eq_inversion``, ``seconds_inversion``;
    ``n`` is 0 for rows without one); ``seconds_total``: the wall time the rows took in all."""
    out: dict[str, dict] = {}
    for name in list(method_names) + list(REFERENCES):
        entries = []
        failed = 0
        total = 0.0
        for r in records:
            e = (r.get("references") or {}).get(name) if name in REFERENCES else r.get("methods", {}).get(name)
            if e is None:
                if r.get("error"):
                    failed += 1
                continue
            total += float(e.get("seconds_total", e.get("seconds")) or 0.0)
            if e.get("error"):
                failed += 1
            else:
                entries.append(e)
        row = {key: bootstrap_ci([e.get(key) for e in entries]) for key in (*(k for k, _, _ in COLUMNS), *COST)}
        row.update(ok=len(entries), failed=failed, seconds_total=total)
        out[name] = row
    return out


def _fmt(ci: dict, digits: int = 3) -> str:
    if not ci or ci.get("mean") is None:
        return "n/a"
    return f"{ci['mean']:.{digits}f} [{ci['lo']:.{digits}f}, {ci['hi']:.{digits}f}]"


def table_rows(results: dict, key: str = "aggregate") -> tuple[list[str], list[list[str]]]:
    """Header and rows (strings) of the Table-2-like summary of ``results[key]``."""
    agg = results[key]
    header = ["method", *[h for _, h, _ in COLUMNS], "UNet fwd-eq / edit", "s / edit", "ok/failed"]
    rows = []
    for name in list(results["methods"]) + list(REFERENCES):
        if name not in agg:
            continue
        a = agg[name]
        label = name if name not in REFERENCES else f"({name.replace('_', ' ')})"
        digits = {k: 2 for k in ("psnr_obj", "psnr_bg", "psnr_full", "psnr_effects", "psnr_disocc",
                                 "psnr_shadow_old", "psnr_shadow_new")}
        cells = []
        for key, _, _ in COLUMNS:
            if key == "lpips" and a[key]["mean"] is None:
                cells.append("n/a")
            else:
                cells.append(_fmt(a[key], digits.get(key, 3)))
        for key, digits_ in (("fwd_eq", 0), ("seconds", 2)):
            mean = (a.get(key) or {}).get("mean")
            cells.append("n/a" if mean is None or name in REFERENCES else f"{mean:.{digits_}f}")
        rows.append([label, *cells, f"{a['ok']}/{a['failed']}"])
    return header, rows


def format_table(results: dict, key: str = "aggregate") -> str:
    """The summary as a plain-text (Markdown) table plus a line of settings."""
    header, rows = table_rows(results, key)
    s = results["settings"]
    n_edits = sum(1 for r in results["edits"] if not r.get("error"))
    lines = [
        f"Diffusion Handles benchmark: {n_edits} edits, model {s['model']}, {s['size']}x{s['size']}, "
        f"{s['steps']} steps, {s['inversion']} inversion; mean [95% bootstrap CI]; LPIPS: "
        f"{'computed' if results['lpips']['available'] else 'n/a (' + results['lpips']['note'] + ')'}",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def kind_table(results: dict, key: str = "iou") -> tuple[list[str], list[list[str]]]:
    """Mean of one metric per method (rows) and edit kind (columns), with the number of edits."""
    by_kind = results.get("aggregate_by_kind", {})
    kinds = sorted(by_kind)
    header = ["method", *[f"{k} (n={by_kind[k].get('ground_truth', {}).get('ok', 0)})" for k in kinds]]
    rows = []
    for name in list(results["methods"]) + list(REFERENCES):
        cells = []
        for k in kinds:
            ci = by_kind[k].get(name, {}).get(key)
            cells.append("n/a" if not ci or ci.get("mean") is None else f"{ci['mean']:.3f}")
        rows.append([name if name not in REFERENCES else f"({name.replace('_', ' ')})", *cells])
    return header, rows


def format_kind_table(results: dict, key: str = "iou") -> str:
    header, rows = kind_table(results, key)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _img(path: str, title: str) -> str:
    return (f'<figure><img src="{html.escape(path)}" alt="{html.escape(title)}" width="128" height="128">'
            f"<figcaption>{html.escape(title)}</figcaption></figure>")


def write_report(results: dict, out: str | Path) -> Path:
    """Write ``out/report.html``: the table, then per edit input | preview | methods | ground truth.

    Images are referenced by relative paths under ``images/`` so the folder is viewable offline.
    """
    out = Path(out)
    header, rows = table_rows(results)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Diffusion Handles benchmark</title>",
        "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}"
        "figure{display:inline-block;margin:2px;text-align:center}figcaption{font-size:11px}"
        "img{image-rendering:pixelated}.err{color:#a00;font-size:11px}</style></head><body>",
        "<h1>Diffusion Handles benchmark</h1>",
        f"<p>{html.escape(format_table(results).splitlines()[0])}</p>",
        "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>",
    ]
    for r in rows:
        parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
    parts.append("</table>")
    if "aggregate_common" in results:
        ch, cr = table_rows(results, "aggregate_common")
        n = results["aggregate_common"].get("ground_truth", {}).get("ok", 0)
        parts.append(f"<h3>On the {n} edits that every method has run</h3><table><tr>"
                     + "".join(f"<th>{html.escape(h)}</th>" for h in ch) + "</tr>")
        for r in cr:
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
        parts.append("</table>")
    for key, title in (("iou", "IoU by edit kind"), ("cycle_l1", "Cycle L1 x10 by edit kind")):
        kh, kr = kind_table(results, key)
        parts.append(f"<h3>{title}</h3><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in kh) + "</tr>")
        for r in kr:
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
        parts.append("</table>")
    if results.get("skipped_seeds"):
        parts.append("<p>Skipped seeds (no acceptable edit): "
                     + html.escape(", ".join(str(r["seed"]) for r in results["skipped_seeds"])) + "</p>")
    parts.append("<p>Metric definitions: see <code>diffusion_handles/bench/metrics.py</code> and docs/benchmark.md. "
                 "(ground truth) = the metric on the ground-truth render itself (its ceiling); "
                 "(input) = the unedited input.</p><h2>Edits</h2>")
    names = list(results["methods"])
    for rec in results["edits"]:
        cid = rec["case_id"]
        parts.append(f"<h3>{html.escape(cid)}: {html.escape(str(rec.get('kind', '')))}</h3>")
        if rec.get("error"):
            parts.append(f"<p class='err'>case failed: {html.escape(rec['error'])}</p>")
            continue
        parts.append(f"<p>{html.escape(rec.get('caption', ''))}; edit {html.escape(str(rec.get('edit')))}</p><div>")
        parts.append(_img(f"images/{cid}/input.png", "input"))
        parts.append(_img(f"images/{cid}/preview.png", "target preview"))
        for name in names:
            e = rec["methods"].get(name)
            if e is None:
                continue
            if e.get("error"):
                parts.append(f"<figure><figcaption>{html.escape(name)}</figcaption>"
                             f"<div class='err'>{html.escape(e['error'][:160])}</div></figure>")
                continue
            img_name = e.get("same_as") or name
            iou = e.get("iou")
            cap = f"{name} IoU {iou:.2f}" if iou is not None else name
            parts.append(_img(f"images/{cid}/{img_name}.png", cap))
        parts.append(_img(f"images/{cid}/gt.png", "ground truth"))
        parts.append("</div>")
        cyc = [n for n in names if rec["methods"].get(n, {}).get("cycle_l1") is not None]
        if cyc:
            parts.append("<div>")
            for name in cyc:
                e = rec["methods"][name]
                parts.append(_img(f"images/{cid}/{e.get('same_as') or name}_cycle.png",
                                  f"{name} cycle L1x10 {e['cycle_l1']:.2f}"))
            parts.append("</div>")
    parts.append("</body></html>")
    path = out / "report.html"
    tmp = path.with_name("report.html.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(path)
    return path


def failures(results: dict) -> dict:
    """The failed edits of a run: ``{"failed": n, "edits": n, "by_method": {name: n}, "first": text}``.

    An edit failed when its case could not be made, or when any method asked for in this run
    recorded an error on it. Skipped seeds (no acceptable edit) are not edits.
    """
    names = list(results.get("methods", {}))
    failed, by_method, first = 0, {}, None
    for rec in results.get("edits", []):
        bad = [n for n in names if (rec.get("methods", {}).get(n) or {}).get("error")]
        if rec.get("error") or bad:
            failed += 1
            first = first or (f"{rec.get('case_id')}: {rec['error']}" if rec.get("error")
                              else f"{bad[0]} on {rec.get('case_id')}: {rec['methods'][bad[0]]['error']}")
        for n in bad:
            by_method[n] = by_method.get(n, 0) + 1
    return {"failed": failed, "edits": len(results.get("edits", [])), "by_method": by_method, "first": first}
