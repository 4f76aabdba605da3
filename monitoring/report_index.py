"""The HTML around the drift reports: the header of every page, and the index of the runs.

Every page says which windows it compares: :func:`windows_header` renders the reference and
current windows (feedback ids, event counts, time span) as a visible header, which
:func:`add_header` puts at the top of each of Evidently's standalone HTML reports and
:func:`write_index` at the top of ``index.html``. The index lists the runs newest first, from
each run's ``summary.json`` (written by :func:`monitoring.reports.drift_report_from_log`), with
links to its HTML dashboards and summary.

Examples
--------
>>> ref = {"kind": "split", "feedback_ids": "(0, 50]", "n_rows": 50, "time_span": "no events"}
>>> cur = {"feedback_ids": "(50, 100]", "n_rows": 50}
>>> text = re.sub("<[^>]+>", "", windows_header("Decisions", ref, cur))
>>> "Reference (split): feedback ids (0, 50], 50 events, no events" in text
True
>>> "Current: feedback ids (50, 100], 50 events" in text
True
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

HEADER_ID = "llmopt-windows"
"""The ``id`` of the header element on every page."""

_HEADER_STYLE = (
    "font-family: system-ui, sans-serif; background: #f4f6f8; border-bottom: 1px solid #cfd6dd; "
    "padding: .8rem 1.5rem; color: #222; line-height: 1.45; font-size: 15px"
)
_INDEX_STYLE = """
body { font-family: system-ui, sans-serif; margin: 0; color: #222; } main { margin: 2rem; }
table { border-collapse: collapse; } td, th { padding: .4rem .8rem; border-bottom: 1px solid #ddd;
text-align: left; vertical-align: top; } .drift { color: #b00020; font-weight: 600; }
.ok { color: #1b7f3b; } small { color: #666; }
"""
_BODY = re.compile(r"<body[^>]*>", re.IGNORECASE)


def window_line(window: Mapping[str, Any]) -> str:
    """One window as text: ``feedback ids (a, b], N events, received ... (span)``.

    >>> window_line({"feedback_ids": "(3, 9]", "n_rows": 6})
    'feedback ids (3, 9], 6 events'
    """
    line = f"feedback ids {window.get('feedback_ids')}, {window.get('n_rows')} events"
    span = window.get("time_span")
    return f"{line}, {span}" if span else line


def windows_header(
    title: str,
    reference: Mapping[str, Any],
    current: Mapping[str, Any],
    notes: Sequence[str] = (),
) -> str:
    """A visible HTML header naming the two windows a page compares, and optional notes.

    ``reference`` and ``current`` are the windows as ``summary.json`` holds them
    (:meth:`monitoring.windows.Window.to_dict`; the reference also has ``kind`` and
    ``description``).
    """
    kind = reference.get("kind")
    description = reference.get("description")
    parts = [
        f'<header id="{HEADER_ID}" style="{_HEADER_STYLE}">',
        f'<div style="font-size: 1.25rem; font-weight: 600">{escape(title)}</div>',
        f"<div><b>Reference{f' ({escape(str(kind))})' if kind else ''}</b>: "
        f"{escape(window_line(reference))}"
        + (
            f'<br><small style="color: #555">{escape(str(description))}</small>'
            if description
            else ""
        )
        + "</div>",
        f"<div><b>Current</b>: {escape(window_line(current))}</div>",
        *(f'<div><small style="color: #555">{escape(n)}</small></div>' for n in notes),
        "</header>",
    ]
    return "".join(parts)


def add_header(page: Path, header: str) -> None:
    """Put ``header`` at the top of the body of the HTML file ``page`` (rewritten in place)."""
    text = page.read_text(encoding="utf-8")
    found = _BODY.search(text)
    at = found.end() if found else 0
    tmp = page.with_suffix(page.suffix + ".tmp")
    tmp.write_text(text[:at] + header + text[at:], encoding="utf-8")
    tmp.replace(page)


def _run_rows(runs: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
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
        left_out = s.get("per_model_coverage", {}).get("left_out", {})
        if left_out:
            cells.append(
                "<small>per_model left out: "
                + escape("; ".join(f"{m}: {why}" for m, why in left_out.items()))
                + "</small>"
            )
        outcomes = s.get("outcomes")
        if outcomes and outcomes.get("html"):
            cells.append(
                f'<a href="{escape(name)}/{escape(outcomes["html"])}">'
                f"{escape(outcomes.get('title', 'Traffic and outcomes'))}</a>"
            )
        rows.append(
            "<tr>"
            f"<td>{escape(when)}<br>{verdict}<br>"
            f'<small><a href="{escape(name)}/summary.json">summary.json</a></small></td>'
            f"<td>{escape(str(ref.get('kind')))}: {escape(window_line(ref))}<br><small>"
            f"{escape(str(ref.get('description')))}</small></td>"
            f"<td>{escape(window_line(cur))}</td>"
            f"<td>{'<br>'.join(cells)}</td></tr>"
        )
    return rows


def write_index(out_dir: Path) -> Path:
    """(Re)write ``out_dir/index.html``: every run's reports, newest first, with links.

    Its header names the windows of the latest run; each row names its own.
    """
    runs = []
    for path in out_dir.glob("*/summary.json"):
        try:
            runs.append((path.parent.name, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue  # a run being written, or a foreign file: not listed
    runs.sort(key=lambda r: (str(r[1].get("created_at", "")), r[0]), reverse=True)
    if runs:
        latest_name, latest = runs[0]
        header = windows_header(
            f"Drift reports: the latest run ({latest_name}) compares",
            latest.get("reference", {}),
            latest.get("current", {}),
            [f"{len(runs)} run(s), newest first; each row names the windows it compares."],
        )
    else:
        header = (
            f'<header id="{HEADER_ID}" style="{_HEADER_STYLE}"><b>Drift reports</b>: no run yet, '
            "so no windows compared.</header>"
        )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>llm-auto-optimizer: drift "
        f"reports</title><style>{_INDEX_STYLE}</style></head><body>{header}<main>"
        f"<h1>Drift reports</h1><p>{len(runs)} run(s), newest first.</p>"
        "<table><tr><th>Run (UTC)</th><th>Reference</th><th>Current</th><th>Reports</th></tr>"
        + "".join(_run_rows(runs))
        + "</table></main></body></html>"
    )
    index = out_dir / "index.html"
    tmp = index.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(index)
    return index
