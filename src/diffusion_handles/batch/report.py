"""The end of a batch: the summary table (stdout) and ``report.html`` (one row per job)."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path


def _seconds(r: dict) -> str:
    return f"{r['seconds']:.1f}" if isinstance(r.get("seconds"), (int, float)) else "-"


def format_table(state: dict) -> str:
    """A plain-text table: id, status, seconds, error; then the counts."""
    rows = [("id", "status", "time s", "error")]
    for r in state["jobs"]:
        rows.append((r["id"], r["status"], _seconds(r), (r.get("error") or "")[:100]))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=False)) + ("  " + row[3] if row[3] else "")
             for row in rows]
    counts = {s: sum(1 for r in state["jobs"] if r["status"] == s) for s in ("ok", "skipped", "failed")}
    lines.append(f"{counts['ok']} ok, {counts['skipped']} skipped (finished earlier), {counts['failed']} failed"
                 + (f"; wall time {state['wall_s']:.1f} s" if state.get("wall_s") is not None else ""))
    return "\n".join(lines)


def _job_input(out: Path, job_id: str) -> str | None:
    try:
        return json.loads((out / job_id / "summary.json").read_text())["inputs"]["image"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _img(src: str, alt: str) -> str:
    return f'<img src="{html.escape(src)}" alt="{html.escape(alt)}" height="96">'


def write_report(state: dict, out: str | Path) -> Path:
    """``out/report.html``: one row per job (id, status, error, time, input and edited thumbnails).

    Thumbnails are relative links: ``<id>/edited.png`` and the input image relative to ``out``.
    """
    out = Path(out)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>handles batch</title>",
        "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;vertical-align:top}"
        ".failed{color:#a00}img{image-rendering:pixelated}</style></head><body>",
        "<h1>handles batch</h1>",
        f"<p>{html.escape(format_table(state).splitlines()[-1])}. Jobs: {html.escape(state.get('jobs_file', ''))}</p>",
        "<table><tr><th>id</th><th>line</th><th>status</th><th>error</th><th>time s</th>"
        "<th>input</th><th>edited</th></tr>",
    ]
    for r in state["jobs"]:
        status = r["status"]
        cells = [html.escape(r["id"]), str(r.get("line", "")), html.escape(status),
                 f"<span class='failed'>{html.escape(r.get('error') or '')}</span>", _seconds(r)]
        inp = edited = ""
        if status in ("ok", "skipped") and (out / r["id"] / "edited.png").is_file():
            src = _job_input(out, r["id"])
            if src and Path(src).is_file():
                inp = _img(Path(os.path.relpath(Path(src).resolve(), out.resolve())).as_posix(), "input")
            edited = _img(f"{r['id']}/edited.png", "edited")
        cells += [inp, edited]
        parts.append(f"<tr class='{html.escape(status)}'>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts.append("</table></body></html>")
    path = out / "report.html"
    tmp = path.with_name(f".report.html.{os.getpid()}.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(path)
    return path
