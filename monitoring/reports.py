"""Evidently drift reports of the event log: request features, per-model outcomes, decisions.

Three reports compare the *current* window (the latest ``window`` feedback events) with a
*reference* window:

``features``
    The request features the policy sees (``REQUEST_NUMERIC``: lengths, code/math/choice
    markers, script shares, willingness to pay; ``REQUEST_CATEGORICAL``: question type, task
    hint, prompt template, tenant) and the outcomes (``OUTCOME_COLUMNS``: quality, reward,
    cost, latency, error kind). Flags drift when at least half of the columns drift
    (Evidently's default share).
``per_model``
    Quality and reward of each model, current vs reference, for every model with at least
    ``min_model_rows`` events in both windows: a model getting worse shows here even when the
    router's overall quality hides it. Flags drift when any column drifts. The models left out,
    and their counts, are listed in the page's header and the summary.
``decisions``
    Which model the router chose, and with what propensity. Flags drift when any column drifts.

Beside the drift reports, each run writes ``outcomes``: the traffic share, reward, quality and
cost per model and the traffic share and reward per policy version, current vs reference. Its
snapshot, and one of each drift report's drift share, feed the dashboard of the Evidently UI
workspace (:mod:`monitoring.workspace`). Every HTML page starts with a header naming the two
windows: feedback ids, event counts and time span (:mod:`monitoring.report_index`).

The reference and current windows are chosen by :mod:`monitoring.windows` (the champion's
training window, or a split of the recent events); the summary says which reference was used
and why. The rows come from :mod:`monitoring.frames`; each column's drift test is Evidently's
default for its type and size, except the chi-square of categorical columns, replaced by a test
of homogeneity (:mod:`monitoring.stattests`). Columns that are empty in one window, or hold the
same single value in both, are left out and listed in the summary.

Each run writes a folder named by its UTC time under ``out_dir`` holding, per report, a
self-contained HTML dashboard (``<name>.html``) and Evidently's snapshot (``<name>.json``),
plus ``summary.json``; ``out_dir/index.html`` lists every run, newest first.

Examples
--------
>>> from llmopt.event_log import EventLog
>>> try:
...     drift_report_from_log(EventLog("sqlite://"), "/tmp/llmopt-doc-reports", window=100)
... except NotEnoughEventsError as exc:
...     print(exc)  # doctest: +ELLIPSIS
the event log has 0 feedback events; a drift report needs at least 100 (50 in each ...
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from llmopt.event_log import EventLog
from llmopt.settings import Settings
from monitoring.frames import (
    OUTCOME_NUMERIC,
    REQUEST_CATEGORICAL,
    REQUEST_NUMERIC,
    comparable_models,
    events_frame,
    left_out_models,
    per_model_frame,
    usable_columns,
)
from monitoring.outcomes import OutcomesResult, drift_share_snapshot, run_outcomes
from monitoring.report_index import add_header, windows_header, write_index
from monitoring.stattests import HOMOGENEITY_TEST, homogeneity_columns, register_homogeneity_test
from monitoring.windows import (
    ChampionWindow,
    NotEnoughEventsError,
    Reference,
    Window,
    find_champion_window,
    select_windows,
)

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class ColumnDrift:
    """One column's drift test: method, score, threshold and verdict."""

    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class ReportResult:
    """One Evidently report: its files and which columns drifted."""

    name: str
    title: str
    html: Path
    snapshot_json: Path
    columns: tuple[ColumnDrift, ...]
    drift_share_threshold: float
    skipped_columns: dict[str, str] = field(default_factory=dict)

    @property
    def drifted_columns(self) -> list[str]:
        """Names of the drifted columns."""
        return [c.column for c in self.columns if c.drifted]

    @property
    def drift_share(self) -> float:
        """Share of tested columns that drifted."""
        return len(self.drifted_columns) / len(self.columns) if self.columns else 0.0

    @property
    def drift_detected(self) -> bool:
        """Whether the drift share reached this report's threshold."""
        return bool(self.columns) and self.drift_share >= self.drift_share_threshold

    def to_dict(self, root: Path | None = None) -> dict[str, Any]:
        """JSON-ready summary; file paths relative to ``root`` when given."""

        def rel(p: Path) -> str:
            return str(p.relative_to(root)) if root is not None else str(p)

        return {
            "name": self.name,
            "title": self.title,
            "html": rel(self.html),
            "snapshot_json": rel(self.snapshot_json),
            "drift_detected": self.drift_detected,
            "drift_share": round(self.drift_share, 4),
            "drift_share_threshold": round(self.drift_share_threshold, 4),
            "n_columns": len(self.columns),
            "drifted_columns": self.drifted_columns,
            "columns": {
                c.column: {
                    "method": c.method,
                    "score": c.score,
                    "threshold": c.threshold,
                    "drifted": c.drifted,
                }
                for c in self.columns
            },
            "skipped_columns": self.skipped_columns,
        }


def _column_results(snapshot_dict: Mapping[str, Any]) -> list[ColumnDrift]:
    """Per-column verdicts from a snapshot's ``ValueDrift`` metrics and their tests."""
    scores = {m["id"]: m["value"] for m in snapshot_dict.get("metrics", [])}
    out = []
    for test in snapshot_dict.get("tests", []):
        params = test.get("metric_config", {}).get("params", {})
        if not str(params.get("type", "")).endswith("ValueDrift"):
            continue
        score = scores.get(test["metric_config"]["metric_id"])
        out.append(
            ColumnDrift(
                column=str(params["column"]),
                method=str(params.get("method")),
                score=float(score) if isinstance(score, int | float) else math.nan,
                threshold=float(params.get("threshold") or math.nan),
                drifted=test.get("status") == "FAIL",
            )
        )
    return out


def run_drift(
    name: str,
    title: str,
    ref: pd.DataFrame,
    cur: pd.DataFrame,
    *,
    numerical: Sequence[str],
    categorical: Sequence[str],
    folder: Path,
    drift_share: float,
    metadata: Mapping[str, str],
    timestamp: datetime,
) -> tuple[tuple[ReportResult, Any] | None, dict[str, str]]:
    """Run Evidently's data drift preset on the usable columns; save HTML and snapshot JSON.

    Returns the result and Evidently's snapshot, or None when no column is worth testing,
    and the columns left out with why.
    """
    import numpy as np  # noqa: PLC0415
    from evidently import DataDefinition, Dataset, Report  # noqa: PLC0415
    from evidently.presets import DataDriftPreset  # noqa: PLC0415

    columns, skipped = usable_columns(ref, cur, [*numerical, *categorical])
    num = [c for c in columns if c in numerical]
    cat = [c for c in columns if c in categorical]
    if not columns:
        return None, skipped
    definition = DataDefinition(numerical_columns=num, categorical_columns=cat)
    register_homogeneity_test()
    methods = dict.fromkeys(homogeneity_columns(ref, cur, num, cat), HOMOGENEITY_TEST)

    def dataset(frame: pd.DataFrame) -> Any:
        data = frame[columns].copy()
        for col in cat:
            data[col] = data[col].astype("string")
        return Dataset.from_pandas(data, data_definition=definition)

    report = Report(
        [
            DataDriftPreset(
                columns=columns, drift_share=drift_share, per_column_method=methods or None
            )
        ],
        include_tests=True,
        metadata=dict(metadata),
        tags=["llm-auto-optimizer", name],
    )
    html, snap_json = folder / f"{name}.html", folder / f"{name}.json"
    # Evidently correlates the numerical columns for its dashboard: a column constant in one
    # window makes numpy warn about 0/0 there; the drift tests themselves are unaffected.
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = report.run(
            current_data=dataset(cur), reference_data=dataset(ref), name=title, timestamp=timestamp
        )
        snapshot.save_html(str(html))
    snapshot.save_json(str(snap_json))
    results = tuple(_column_results(snapshot.dict()))
    result = ReportResult(name, title, html, snap_json, results, drift_share, skipped)
    return (result, snapshot), skipped


@dataclass(frozen=True)
class DriftSummary:
    """What one drift report run found and where it wrote it."""

    created_at: datetime
    folder: Path
    index: Path
    event_log: str
    reference: Reference
    reference_window: Window
    current_window: Window
    reports: tuple[ReportResult, ...]
    skipped_reports: dict[str, str]
    elapsed_s: float
    workspace: Path | None = None
    min_model_rows: int = 30
    per_model_models: tuple[str, ...] = ()
    """Models the ``per_model`` report compares (at least ``min_model_rows`` in each window)."""
    left_out_models: dict[str, str] = field(default_factory=dict)
    """Models seen in the windows but left out of ``per_model``, with their counts."""
    outcomes: OutcomesResult | None = None

    @property
    def drift_detected(self) -> bool:
        """Whether any report flags drift."""
        return any(r.drift_detected for r in self.reports)

    @property
    def summary_json(self) -> Path:
        """Our compact summary of the run (``summary.json`` in its folder)."""
        return self.folder / "summary.json"

    def report(self, name: str) -> ReportResult:
        """A report by name (``features``, ``per_model``, ``decisions``)."""
        for r in self.reports:
            if r.name == name:
                return r
        raise KeyError(f"no report {name!r} in this run; have: {[r.name for r in self.reports]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what ``summary.json`` holds)."""
        return {
            "created_at": self.created_at.isoformat(),
            "event_log": self.event_log,
            "drift_detected": self.drift_detected,
            "reference": {
                "kind": self.reference.kind,
                "description": self.reference.description,
                "champion_version": self.reference.champion_version,
                **self.reference_window.to_dict(),
            },
            "current": self.current_window.to_dict(),
            "reports": {r.name: r.to_dict(self.folder) for r in self.reports},
            "skipped_reports": self.skipped_reports,
            "per_model_coverage": {
                "min_model_rows": self.min_model_rows,
                "models": list(self.per_model_models),
                "left_out": self.left_out_models,
            },
            "outcomes": self.outcomes.to_dict(self.folder) if self.outcomes else None,
            "elapsed_s": round(self.elapsed_s, 3),
            "workspace": str(self.workspace) if self.workspace else None,
        }

    def describe(self) -> str:
        """A few human-readable lines: reference, windows, each report's verdict, files."""
        lines = [
            f"drift report {self.folder.name}: reference = {self.reference.kind} "
            f"({self.reference_window.n_rows} events, feedback ({self.reference_window.after_id}, "
            f"{self.reference_window.until_id}]) vs current {self.current_window.n_rows} events "
            f"(feedback ({self.current_window.after_id}, {self.current_window.until_id}])",
            f"  reference: {self.reference.description}",
            f"  reference window: {self.reference_window.describe()}",
            f"  current window:   {self.current_window.describe()}",
        ]
        for r in self.reports:
            verdict = "DRIFT" if r.drift_detected else "no drift"
            drifted = ", ".join(r.drifted_columns) or "-"
            lines.append(
                f"  {r.name:<10} {verdict:<8} {len(r.drifted_columns)}/{len(r.columns)} columns "
                f"drifted: {drifted}"
            )
        lines += [f"  {name:<10} skipped: {why}" for name, why in self.skipped_reports.items()]
        if self.per_model_models:
            lines.append(f"  per_model covers {', '.join(self.per_model_models)}")
        lines += [f"  per_model leaves out {m}: {why}" for m, why in self.left_out_models.items()]
        if self.outcomes is not None:
            traffic = ", ".join(
                f"{m} {v['share']:.0%}" for m, v in self.outcomes.by_model.items() if v["share"]
            )
            versions = ", ".join(
                f"{'v' + k if k.isdigit() else k} {v['share']:.0%}"
                for k, v in self.outcomes.by_version.items()
                if v["share"]
            )
            lines.append(f"  traffic (current window): {traffic}; policy versions: {versions}")
        lines.append(f"  wrote {self.folder} (index: {self.index})")
        return "\n".join(lines)


def _new_folder(out_dir: Path, created: datetime) -> Path:
    stem = created.strftime("%Y-%m-%dT%H-%M-%SZ")
    for i in range(1000):
        folder = out_dir / (stem if i == 0 else f"{stem}-{i}")
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(f"{out_dir}: too many report folders named {stem}")


def _safe_url(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def _metadata(reference: Reference, ref: Window, cur: Window) -> dict[str, str]:
    """The windows as snapshot metadata (text values, as Evidently's UI shows them)."""
    meta = {
        "reference": reference.kind,
        "reference_ids": ref.feedback_ids,
        "reference_events": str(ref.n_rows),
        "reference_span": ref.time_span(),
        "current_ids": cur.feedback_ids,
        "current_events": str(cur.n_rows),
        "current_span": cur.time_span(),
    }
    if reference.champion_version is not None:
        meta["champion_version"] = reference.champion_version
    return meta


def _coverage_notes(models: Sequence[str], left_out: Mapping[str, str], min_rows: int) -> list[str]:
    """What the ``per_model`` page says about the models it covers and leaves out."""
    return [
        f"Models compared ({len(models)}, each chosen at least {min_rows} times in both "
        f"windows): {', '.join(models)}.",
        *(f"Left out: {m}: {why}." for m, why in left_out.items()),
    ]


def _to_workspace(
    workspace: Path,
    snapshots: Sequence[Any],
    results: Sequence[ReportResult],
    meta: Mapping[str, str],
    created: datetime,
) -> None:
    """Add the run's snapshots, and one of its drift shares, to the Evidently UI workspace."""
    from monitoring.workspace import DRIFT_SHARE_TAG, PROJECT_TAG, add_snapshots  # noqa: PLC0415

    shares = drift_share_snapshot(
        {r.name: r.drift_share for r in results},
        metadata=meta,
        tags=[PROJECT_TAG, DRIFT_SHARE_TAG],
        timestamp=created,
    )
    add_snapshots(workspace, [*snapshots, shares])


def drift_report_from_log(
    log: EventLog,
    out_dir: Path | str,
    *,
    window: int = 5000,
    champion: ChampionWindow | None = None,
    champion_note: str = "",
    min_rows: int = 50,
    min_model_rows: int = 30,
    workspace: Path | None = None,
) -> DriftSummary:
    """Write the three drift reports and the outcomes report of ``log`` into a new folder of
    ``out_dir``.

    ``champion`` is the reference to use when it holds enough events (see
    :func:`find_champion_window`); ``per_model`` compares every model chosen at least
    ``min_model_rows`` times in each window. ``workspace``, when given, also receives the
    snapshots (an Evidently UI workspace, project ``llm-auto-optimizer``, whose dashboard they
    feed; see :mod:`monitoring.workspace`).
    """
    from monitoring.workspace import OUTCOMES_TAG, PROJECT_TAG  # noqa: PLC0415

    started = time.perf_counter()
    reference, (r_after, r_until), (c_after, c_until) = select_windows(
        log, window, champion=champion, min_rows=min_rows, why=champion_note
    )
    ref_events = log.feedback_since(r_after, until_id=r_until)
    cur_events = log.feedback_since(c_after, until_id=c_until)
    ref_window = Window.of_events(ref_events, r_after, r_until)
    cur_window = Window.of_events(cur_events, c_after, c_until)
    ref, cur = events_frame(ref_events), events_frame(cur_events)
    created = datetime.now(UTC)
    out = Path(out_dir)
    folder = _new_folder(out, created)
    meta = _metadata(reference, ref_window, cur_window)
    ref_dict = {"kind": reference.kind, "description": reference.description}
    ref_dict |= ref_window.to_dict()
    cur_dict = cur_window.to_dict()
    common: dict[str, Any] = {"folder": folder, "metadata": meta, "timestamp": created}
    results: list[ReportResult] = []
    snapshots: list[Any] = []
    skipped: dict[str, str] = {}
    models = comparable_models(ref, cur, min_model_rows)
    left_out = left_out_models(ref, cur, min_model_rows)

    def add(name: str, title: str, r: pd.DataFrame, c: pd.DataFrame, **kw: Any) -> None:
        notes = kw.pop("notes", [])
        done, columns_left_out = run_drift(name, title, r, c, **kw, **common)
        untested = "; ".join(f"{k}: {v}" for k, v in columns_left_out.items())
        if done is None:
            skipped[name] = f"nothing varies: {untested}"
            return
        untested_note = [f"Columns not tested: {untested}"] if untested else []
        add_header(done[0].html, windows_header(title, ref_dict, cur_dict, notes + untested_note))
        results.append(done[0])
        snapshots.append(done[1])

    add(
        "features",
        "Request features and outcomes",
        ref,
        cur,
        numerical=[*REQUEST_NUMERIC, *OUTCOME_NUMERIC],
        categorical=[*REQUEST_CATEGORICAL, "error_kind"],
        drift_share=0.5,
    )
    if models:
        per_ref, per_cur = per_model_frame(ref, models), per_model_frame(cur, models)
        cols = list(per_ref.columns)
        add(
            "per_model",
            "Quality and reward per model",
            per_ref,
            per_cur,
            numerical=cols,
            categorical=(),
            drift_share=1 / len(cols),  # any column
            notes=_coverage_notes(models, left_out, min_model_rows),
        )
    else:
        skipped["per_model"] = f"no model was chosen {min_model_rows} times in both windows" + (
            " (" + "; ".join(f"{m}: {why}" for m, why in left_out.items()) + ")" if left_out else ""
        )
    add(
        "decisions",
        "Decisions: chosen model and propensity",
        ref,
        cur,
        numerical=["propensity"],
        categorical=["model"],
        drift_share=0.5,  # any of its (at most) two columns
    )
    versions = sorted({str(v) for v in cur["policy_version"].dropna()})
    outcomes, outcomes_snapshot = run_outcomes(
        ref,
        cur,
        folder=folder,
        metadata=meta,
        tags=[PROJECT_TAG, OUTCOMES_TAG, *(f"policy_version={v}" for v in versions)],
        timestamp=created,
        header=windows_header(
            "Traffic and outcomes per model and policy version",
            ref_dict,
            cur_dict,
            ["The Evidently UI's dashboard plots the current window's values, run by run."],
        ),
    )
    if workspace is not None:
        _to_workspace(workspace, [*snapshots, outcomes_snapshot], results, meta, created)
    summary = DriftSummary(
        created_at=created,
        folder=folder,
        index=out / "index.html",
        event_log=_safe_url(log.url),
        reference=reference,
        reference_window=ref_window,
        current_window=cur_window,
        reports=tuple(results),
        skipped_reports=skipped,
        elapsed_s=time.perf_counter() - started,
        workspace=workspace,
        min_model_rows=min_model_rows,
        per_model_models=tuple(models) if "per_model" not in skipped else (),
        left_out_models=left_out,
        outcomes=outcomes,
    )
    summary.summary_json.write_text(json.dumps(summary.to_dict(), indent=2, default=str))
    write_index(out)
    return summary


def default_reports_dir(settings: Settings) -> Path:
    """Where scheduled reports go: ``<home>/monitoring/reports``."""
    return settings.home / "monitoring" / "reports"


def drift_report(
    *,
    settings: Settings | None = None,
    window: int = 5000,
    out_dir: Path | str | None = None,
    workspace: Path | str | None = None,
    add_to_workspace: bool = True,
    use_registry: bool = True,
    min_rows: int = 50,
    min_model_rows: int = 30,
) -> DriftSummary:
    """Drift reports of the settings' event log: the entry point of the CLI and the flow.

    Reports go to ``out_dir`` (default :func:`default_reports_dir`); snapshots also go to the
    Evidently workspace ``workspace`` (default ``<home>/monitoring/workspace``) unless
    ``add_to_workspace`` is off. The champion's window is looked up unless ``use_registry`` is
    off.
    """
    from llmopt.settings import get_settings  # noqa: PLC0415

    settings = settings or get_settings()
    champion, note = (
        find_champion_window(settings) if use_registry else (None, "registry not consulted")
    )
    ws: Path | None = None
    if add_to_workspace:
        from monitoring.workspace import default_workspace  # noqa: PLC0415

        ws = Path(workspace) if workspace is not None else default_workspace(settings)
    if not settings.database_url:
        path = (settings.home / "events.db").resolve()
        if not path.exists():  # say so rather than create an empty log
            raise NotEnoughEventsError(
                f"no event log at {path} yet (0 feedback events): route traffic and send "
                "feedback first (or run `llmopt demo`), or point LLMOPT_HOME at the right folder"
            )
    log = EventLog(settings.event_log_url)
    try:
        return drift_report_from_log(
            log,
            Path(out_dir) if out_dir is not None else default_reports_dir(settings),
            window=window,
            champion=champion,
            champion_note=note,
            min_rows=min_rows,
            min_model_rows=min_model_rows,
            workspace=ws,
        )
    finally:
        log.close()
