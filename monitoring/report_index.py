"""The HTML index of the drift report runs: ``index.html`` in the reports folder, newest first.

It reads each run's ``summary.json`` (written by :func:`monitoring.reports.drift_report_from_log`)
and links its HTML dashboards and summary.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

_INDEX_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; } td, th { padding: .4rem .8rem; border-bottom: 1px solid #ddd;
text-align: left; vertical-align: top; } .drift { color: #b00020; font-weight: 600; }
.ok { color: #1b7f3b; } small { color: #666; }
"""


def write_index(out_dir: Path) -> Path:
    """(Re)write ``out_dir/index.html``: every run's reports, newest first, with links."""
    from html import escape  # noqa: PLC0415

    runs = []
    for path in out_dir.glob("*/summary.json"):
        try:
            runs.append((path.parent.name, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue  # a run being written, or a foreign file: not listed
    runs.sort(key=lambda r: (str(r[1].get("created_at", "")), r[0]), reverse=True)
    rows = []
    for name, s in runs:
        try:
            when = datetime.fromisoformat(str(s["created_at"])).strftime("%Y-%m-%d %H:%M:%S UTC")
        except (KeyError, ValueError):
            when = name
        verdict = (
            '<span class="drift">drift</span>'
            if s.get("drift_detected")
            else '<span class="ok">no drift</span>'
        )
        ref, cur = s.get("reference", {}), s.get("current", {})
        cells = []
        for rep in s.get("reports", {}).values():
            cls = "drift" if rep.get("drift_detected") else "ok"
            drifted = ", ".join(rep.get("drifted_columns", [])) or "none"
            cells.append(
                f'<a href="{escape(name)}/{escape(rep["html"])}">{escape(rep["title"])}</a> '
                f'<span class="{cls}">{len(rep.get("drifted_columns", []))}/'
                f"{rep.get('n_columns', 0)} drifted</span><br><small>{escape(drifted)}</small>"
            )
        cells += [
            f"{escape(k)}: <small>{escape(v)}</small>"
            for k, v in s.get("skipped_reports", {}).items()
        ]
        rows.append(
            "<tr>"
            f"<td>{escape(when)}<br>{verdict}<br>"
            f'<small><a href="{escape(name)}/summary.json">summary.json</a></small></td>'
            f"<td>{escape(str(ref.get('kind')))}: {ref.get('n_rows')} events "
            f"{escape(str(ref.get('feedback_ids')))}<br><small>"
            f"{escape(str(ref.get('description')))}</small></td>"
            f"<td>{cur.get('n_rows')} events {escape(str(cur.get('feedback_ids')))}</td>"
            f"<td>{'<br>'.join(cells)}</td></tr>"
        )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>llm-auto-optimizer: drift "
        f"reports</title><style>{_INDEX_STYLE}</style></head><body>"
        f"<h1>Drift reports</h1><p>{len(runs)} run(s), newest first.</p>"
        "<table><tr><th>Run (UTC)</th><th>Reference</th><th>Current</th><th>Reports</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )
    index = out_dir / "index.html"
    tmp = index.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(index)
    return index
