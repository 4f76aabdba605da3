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
    Quality and reward of each model, current vs reference, for the models with at least
    ``min_model_rows`` events in both windows: a model getting worse shows here even when the
    router's overall quality hides it. Flags drift when any column drifts.
``decisions``
    Which model the router chose, and with what propensity. Flags drift when any column drifts.

The reference is the champion's training window: the feedback ids the registry version aliased
``prod`` learned from, read from its tags (``data_window`` ``feedback (a, b]``,
``last_feedback_id``, ``n_events``; see :func:`champion_window_from_tags`), without the
current window's events and capped to the latest ``window`` of them. Without a champion, or
when fewer than ``min_rows`` of its events lie before the current window, the last
``2 * window`` events are split in half: the older half is the reference, the newer half the
current window. The summary says which reference was used and why.

Each column's drift test is Evidently's default for its type and size: up to 1000 rows, K-S
(numerical), chi-square or Z-test (categorical, or numerical with at most 5 values), drifted at
p < 0.05; above, the normed Wasserstein distance (numerical) or the Jensen-Shannon distance
(categorical), drifted at >= 0.1. One exception: Evidently's chi-square is a goodness-of-fit
test against the reference counts, so a single event of a category the reference lacks (a
rarely explored model, a new template) gives p = 0; it is replaced by a chi-square test of
homogeneity of the two windows (``chi2_homogeneity``, categories seen fewer than 5 times pooled).
Columns that are empty in one window, or hold the same single value in both, are left out and
listed in the summary.

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
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa

from llmopt.event_log import EventLog, LoggedEvent, feedback
from llmopt.settings import Settings
from registry import CHAMPION_ALIAS, MODEL_NAME, registry_exists

if TYPE_CHECKING:
    import pandas as pd


REQUEST_NUMERIC: tuple[str, ...] = (
    "input_tokens",
    "len_chars",
    "len_words",
    "n_lines",
    "digits",
    "code",
    "math",
    "choices",
    "lang_en",
    "script_latin",
    "script_cyrillic",
    "script_cjk",
    "script_arabic",
    "script_other",
    "q_mark",
    "willingness_to_pay",
)
"""Numerical request features compared by the ``features`` report (see ``llmopt.features``)."""
REQUEST_CATEGORICAL: tuple[str, ...] = ("question_type", "task_hint", "prompt_template", "tenant")
"""Categorical request features: one column each instead of a block of one-hot features."""
OUTCOME_NUMERIC: tuple[str, ...] = ("quality", "reward", "cost_usd", "latency_ms")
OUTCOME_COLUMNS: tuple[str, ...] = (*OUTCOME_NUMERIC, "error_kind")
PER_MODEL_OUTCOMES: tuple[str, ...] = ("quality", "reward")

_FROM_CONTEXT = frozenset({"input_tokens", "willingness_to_pay"})
"""Request columns read from the logged context, not from the policy's features."""
_DATA_WINDOW = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\]")


class NotEnoughEventsError(ValueError):
    """The event log holds too few feedback events for a drift report; the message says how many."""


# -- windows -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChampionWindow:
    """The feedback ids ``(after_id, until_id]`` the champion version learned from."""

    version: str
    after_id: int
    until_id: int
    source: str
    """The tags the window was read from."""


def champion_window_from_tags(version: str, tags: Mapping[str, str]) -> ChampionWindow | None:
    """The training window of a registry version from its tags, or None if they name none.

    ``data_window`` (``feedback (a, b]``) is the last training increment; ``last_feedback_id``
    and ``n_events`` (events learned since the policy was created) widen it to everything the
    version learned.

    >>> w = champion_window_from_tags("3", {"data_window": "feedback (100, 400]"})
    >>> (w.version, w.after_id, w.until_id, w.source)
    ('3', 100, 400, "data_window='feedback (100, 400]'")
    >>> w = champion_window_from_tags("4", {"data_window": "feedback (380, 400]",
    ...                                     "last_feedback_id": "400", "n_events": "400"})
    >>> (w.after_id, w.until_id)
    (0, 400)
    >>> champion_window_from_tags("1", {"data_window": "demo"}) is None
    True
    """
    found = _DATA_WINDOW.search(tags.get("data_window", ""))
    after, until = (int(found[1]), int(found[2])) if found else (None, None)
    last = tags.get("last_feedback_id", "")
    n_events = tags.get("n_events", "")
    if last.isdigit():
        until = int(last)
        if n_events.isdigit():
            start = max(int(last) - int(n_events), 0)
            after = start if after is None else min(after, start)
    if after is None or until is None or until <= after:
        return None
    used = {k: tags[k] for k in ("data_window", "last_feedback_id", "n_events") if k in tags}
    return ChampionWindow(
        str(version), after, until, ", ".join(f"{k}={v!r}" for k, v in used.items())
    )


def find_champion_window(settings: Settings) -> tuple[ChampionWindow | None, str]:
    """The champion's training window from the MLflow registry, or None and why not."""
    if not registry_exists(settings):
        return None, "no MLflow registry (nothing registered yet)"
    try:
        from registry import mlflow_registry  # noqa: PLC0415 - heavy, only when a registry exists

        client = mlflow_registry.configure(settings)
        mv = client.get_model_version_by_alias(MODEL_NAME, CHAMPION_ALIAS)
    except Exception as exc:  # MlflowException (no such model/alias) or an unreachable store
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, f"no {MODEL_NAME}@{CHAMPION_ALIAS} in the registry ({first[:200]})"
    tags = dict(mv.tags or {})
    window = champion_window_from_tags(str(mv.version), tags)
    if window is None:
        return None, (
            f"champion {MODEL_NAME} version {mv.version} has no feedback-id window in its "
            f"tags (data_window={tags.get('data_window')!r})"
        )
    return window, ""


@dataclass(frozen=True)
class Window:
    """Feedback ids ``(after_id, until_id]`` and what they hold."""

    after_id: int
    until_id: int
    n_rows: int
    first_at: datetime | None = None
    last_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "feedback_ids": f"({self.after_id}, {self.until_id}]",
            "after_id": self.after_id,
            "until_id": self.until_id,
            "n_rows": self.n_rows,
            "first_received_at": self.first_at.isoformat() if self.first_at else None,
            "last_received_at": self.last_at.isoformat() if self.last_at else None,
        }


@dataclass(frozen=True)
class Reference:
    """Which reference a report used: the champion's training window or a split of recent events."""

    kind: Literal["champion", "split"]
    description: str
    champion_version: str | None = None


def _id_after_latest(log: EventLog, n: int, *, until: int | None = None) -> int:
    """The feedback id after which the latest ``n`` events (up to ``until``) lie; 0 if fewer."""
    query = sa.select(feedback.c.feedback_id).order_by(feedback.c.feedback_id.desc())
    if until is not None:
        query = query.where(feedback.c.feedback_id <= until)
    with log.engine.connect() as conn:
        row = conn.execute(query.offset(n).limit(1)).first()
    return int(row[0]) if row is not None else 0


def _count(log: EventLog, after: int, until: int | None = None) -> int:
    query = sa.select(sa.func.count()).select_from(feedback).where(feedback.c.feedback_id > after)
    if until is not None:
        query = query.where(feedback.c.feedback_id <= until)
    with log.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def _last_id(log: EventLog) -> int:
    with log.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.max(feedback.c.feedback_id))).scalar() or 0)


def select_windows(
    log: EventLog, window: int, *, champion: ChampionWindow | None, min_rows: int, why: str = ""
) -> tuple[Reference, tuple[int, int], tuple[int, int]]:
    """The reference, its id range and the current id range (see the module docstring).

    Raises :class:`NotEnoughEventsError` when the log cannot fill two windows of ``min_rows``.
    """
    if window < min_rows:
        raise ValueError(f"window ({window}) must be at least min_rows ({min_rows})")
    last = _last_id(log)  # one snapshot: events logged meanwhile wait for the next report
    total = _count(log, 0, last)
    if total < 2 * min_rows:
        raise NotEnoughEventsError(
            f"the event log has {total} feedback events; a drift report needs at least "
            f"{2 * min_rows} ({min_rows} in each of the reference and current windows). "
            "Route traffic and send feedback first (or run `llmopt demo`)."
        )
    cur_after = _id_after_latest(log, window, until=last)
    if champion is not None:
        until = min(champion.until_id, cur_after)
        n_ref = _count(log, champion.after_id, until)
        if n_ref >= min_rows:
            after = max(champion.after_id, _id_after_latest(log, window, until=until))
            ref = Reference(
                "champion",
                f"training window of champion {MODEL_NAME} version {champion.version} "
                f"({champion.source}): feedback ({champion.after_id}, {champion.until_id}], "
                f"restricted to the events before the current window and the latest {window}",
                champion.version,
            )
            return ref, (after, until), (cur_after, last)
        why = (
            f"champion {MODEL_NAME} version {champion.version} learned only {n_ref} "
            f"events before the current window (feedback ({champion.after_id}, "
            f"{champion.until_id}]), fewer than {min_rows}"
        )
    n_split = min(total, 2 * window)
    start = _id_after_latest(log, n_split, until=last)
    middle = _id_after_latest(log, n_split - n_split // 2, until=last)
    ref = Reference(
        "split",
        f"no usable champion window ({why or 'registry not consulted'}): the last {n_split} "
        f"events split in half, the older {n_split // 2} as reference",
    )
    return ref, (start, middle), (middle, last)


def load_window(log: EventLog, after: int, until: int) -> list[LoggedEvent]:
    """The events with ``after < feedback_id <= until``, oldest first."""
    return log.feedback_since(after, limit=_count(log, after, until))


# -- frames --------------------------------------------------------------------------------------
def _question_type(f: Mapping[str, float]) -> str:
    for key, name in (("q_wh", "wh"), ("q_yesno", "yes/no"), ("q_imperative", "imperative")):
        if f.get(key, 0.0) > 0:
            return name
    return "other"


def _template(f: Mapping[str, float]) -> str:
    hits = [k for k, v in f.items() if k.startswith("pfx_") and v > 0]
    return hits[0] if hits else "none"


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else math.nan


def event_row(e: LoggedEvent) -> dict[str, Any]:
    """One event as a flat row: ids, decision, request features and outcomes (NaN: absent).

    >>> from datetime import datetime, UTC
    >>> e = LoggedEvent(7, "d7", datetime.now(UTC), datetime.now(UTC), "acme", "m1", 0.9, "p", "1",
    ...     {"task_hints": ["Code"], "input_tokens": 12, "willingness_to_pay": 0.05},
    ...     {"len_chars": 0.3, "q_wh": 1.0, "pfx_2": 1.0}, 0.8, 0.7, 0.001, None, None)
    >>> row = event_row(e)
    >>> row["question_type"], row["task_hint"], row["prompt_template"], row["input_tokens"]
    ('wh', 'code', 'pfx_2', 12.0)
    >>> math.isnan(row["latency_ms"]), row["error_kind"], math.isnan(row["code"])
    (True, 'none', True)
    """
    f = e.features
    ctx = e.context
    hints = sorted({str(h).strip().lower() for h in ctx.get("task_hints") or []})
    row: dict[str, Any] = {
        "feedback_id": e.feedback_id,
        "received_at": e.received_at,
        "model": e.model,
        "propensity": e.propensity,
        "policy_version": e.policy_version,
    }
    for name in REQUEST_NUMERIC:
        row[name] = _number(ctx.get(name) if name in _FROM_CONTEXT else f.get(name))
    row["question_type"] = _question_type(f)
    row["task_hint"] = "+".join(hints) if hints else "none"
    row["prompt_template"] = _template(f)
    row["tenant"] = e.tenant
    for name in OUTCOME_NUMERIC:
        row[name] = _number(getattr(e, name))
    row["error_kind"] = e.error_kind or "none"
    return row


def events_frame(events: Sequence[LoggedEvent]) -> pd.DataFrame:
    """The events as a frame, one row each (see :func:`event_row`)."""
    import pandas as pd  # noqa: PLC0415

    columns = list(event_row_columns())
    return pd.DataFrame([event_row(e) for e in events], columns=columns)


def event_row_columns() -> tuple[str, ...]:
    """Columns of :func:`events_frame`, in order."""
    head = ("feedback_id", "received_at", "model", "propensity", "policy_version")
    return (*head, *REQUEST_NUMERIC, *REQUEST_CATEGORICAL, *OUTCOME_COLUMNS)


def per_model_frame(frame: pd.DataFrame, models: Sequence[str]) -> pd.DataFrame:
    """Columns ``quality[model]`` and ``reward[model]``: the outcome where ``model`` was chosen.

    Rows of other models are NaN there (Evidently drops NaN per column before testing).
    """
    import pandas as pd  # noqa: PLC0415

    out = {
        f"{outcome}[{m}]": frame[outcome].where(frame["model"] == m)
        for m in models
        for outcome in PER_MODEL_OUTCOMES
    }
    return pd.DataFrame(out, index=frame.index)


def comparable_models(ref: pd.DataFrame, cur: pd.DataFrame, min_rows: int) -> list[str]:
    """Models chosen at least ``min_rows`` times in both frames, most chosen first."""
    r, c = ref["model"].value_counts(), cur["model"].value_counts()
    both = [m for m in r.index if r[m] >= min_rows and c.get(m, 0) >= min_rows]
    return sorted(both, key=lambda m: (-int(r[m] + c[m]), str(m)))


def usable_columns(
    ref: pd.DataFrame, cur: pd.DataFrame, columns: Sequence[str]
) -> tuple[list[str], dict[str, str]]:
    """Columns worth testing, and why the others are left out (empty, or one same value)."""
    kept: list[str] = []
    skipped: dict[str, str] = {}
    for col in columns:
        r, c = ref[col].dropna(), cur[col].dropna()
        if r.empty or c.empty:
            skipped[col] = "no values in the " + ("reference" if r.empty else "current") + " window"
            continue
        values = set(r.unique()) | set(c.unique())
        if len(values) == 1:
            value = next(iter(values))
            value = value.item() if hasattr(value, "item") else value  # numpy scalar -> Python
            skipped[col] = f"constant ({value!r}) in both windows"
            continue
        kept.append(col)
    return kept, skipped


# -- Evidently -----------------------------------------------------------------------------------
HOMOGENEITY_TEST = "chi2_homogeneity"
RARE_COUNT = 5
"""Categories seen fewer times than this in both windows together are pooled before testing."""
SMALL_SAMPLE = 1000
"""Evidently tests up to this many reference rows with p-values, above with distances."""


def chi2_homogeneity(reference: pd.Series, current: pd.Series) -> float:
    """p-value of a chi-square test that both samples come from one categorical distribution.

    >>> import pandas as pd
    >>> same = chi2_homogeneity(pd.Series(list("aab" * 50)), pd.Series(list("aab" * 50 + "c")))
    >>> moved = chi2_homogeneity(pd.Series(list("aab" * 50)), pd.Series(list("abb" * 50)))
    >>> same > 0.5, moved < 0.001
    (True, True)
    """
    import numpy as np  # noqa: PLC0415
    from scipy.stats import chi2_contingency  # type: ignore[import-untyped]  # noqa: PLC0415

    r, c = reference.value_counts(), current.value_counts()
    keys = sorted(set(r.index) | set(c.index), key=str)
    table = np.array([[r.get(k, 0) for k in keys], [c.get(k, 0) for k in keys]], dtype=float)
    rare = table.sum(axis=0) < RARE_COUNT
    if rare.any():
        table = np.column_stack([table[:, ~rare], table[:, rare].sum(axis=1)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 1.0
    return float(chi2_contingency(table, correction=table.shape[1] == 2).pvalue)


_registered = False


def _register_homogeneity_test() -> None:
    """Make ``chi2_homogeneity`` known to Evidently (once per process)."""
    global _registered  # noqa: PLW0603 - one registration per process
    if _registered:
        return
    from evidently.legacy.calculations.stattests import registry  # noqa: PLC0415
    from evidently.legacy.core import ColumnType  # noqa: PLC0415

    def impl(
        reference: pd.Series, current: pd.Series, feature_type: Any, threshold: float
    ) -> tuple[float, bool]:
        p = chi2_homogeneity(reference, current)
        return p, p < threshold

    test = registry.StatTest(
        name=HOMOGENEITY_TEST,
        display_name="chi-square homogeneity p_value",
        allowed_feature_types=[ColumnType.Categorical, ColumnType.Numerical],
    )
    registry.register_stattest(test, default_impl=impl)
    _registered = True


def homogeneity_columns(
    ref: pd.DataFrame, cur: pd.DataFrame, numerical: Sequence[str], categorical: Sequence[str]
) -> list[str]:
    """Columns Evidently would test with its chi-square: they get ``chi2_homogeneity`` instead."""
    out = []
    for col in [*numerical, *categorical]:
        r = ref[col].dropna()
        n_values = len(set(r.unique()) | set(cur[col].dropna().unique()))
        limit = 5 if col in numerical else math.inf
        if len(r) <= SMALL_SAMPLE and 2 < n_values <= limit:
            out.append(col)
    return out


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
    _register_homogeneity_test()
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


# -- the whole run -------------------------------------------------------------------------------
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
        ]
        for r in self.reports:
            verdict = "DRIFT" if r.drift_detected else "no drift"
            drifted = ", ".join(r.drifted_columns) or "-"
            lines.append(
                f"  {r.name:<10} {verdict:<8} {len(r.drifted_columns)}/{len(r.columns)} columns "
                f"drifted: {drifted}"
            )
        lines += [f"  {name:<10} skipped: {why}" for name, why in self.skipped_reports.items()]
        lines.append(f"  wrote {self.folder} (index: {self.index})")
        return "\n".join(lines)


def _window(events: Sequence[LoggedEvent], after: int, until: int) -> Window:
    return Window(
        after,
        until,
        len(events),
        events[0].received_at if events else None,
        events[-1].received_at if events else None,
    )


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
    """Write the three drift reports of ``log`` into a new folder of ``out_dir``.

    ``champion`` is the reference to use when it holds enough events (see
    :func:`find_champion_window`); ``workspace``, when given, also receives the snapshots (an
    Evidently UI workspace, project ``llm-auto-optimizer``).
    """
    started = time.perf_counter()
    reference, (r_after, r_until), (c_after, c_until) = select_windows(
        log, window, champion=champion, min_rows=min_rows, why=champion_note
    )
    ref_events, cur_events = load_window(log, r_after, r_until), load_window(log, c_after, c_until)
    ref, cur = events_frame(ref_events), events_frame(cur_events)
    created = datetime.now(UTC)
    out = Path(out_dir)
    folder = _new_folder(out, created)
    meta = {
        "reference": reference.kind,
        "reference_ids": f"({r_after}, {r_until}]",
        "current_ids": f"({c_after}, {c_until}]",
    }
    common: dict[str, Any] = {"folder": folder, "metadata": meta, "timestamp": created}
    results: list[ReportResult] = []
    snapshots: list[Any] = []
    skipped: dict[str, str] = {}

    def add(name: str, title: str, r: pd.DataFrame, c: pd.DataFrame, **kw: Any) -> None:
        done, left_out = run_drift(name, title, r, c, **kw, **common)
        if done is None:
            skipped[name] = "nothing varies: " + "; ".join(f"{k}: {v}" for k, v in left_out.items())
        else:
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
    models = comparable_models(ref, cur, min_model_rows)
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
        )
    else:
        skipped["per_model"] = f"no model was chosen {min_model_rows} times in both windows"
    add(
        "decisions",
        "Decisions: chosen model and propensity",
        ref,
        cur,
        numerical=["propensity"],
        categorical=["model"],
        drift_share=0.5,  # any of its (at most) two columns
    )
    if workspace is not None:
        from monitoring.workspace import add_snapshots  # noqa: PLC0415

        add_snapshots(workspace, snapshots)
    summary = DriftSummary(
        created_at=created,
        folder=folder,
        index=out / "index.html",
        event_log=_safe_url(log.url),
        reference=reference,
        reference_window=_window(ref_events, r_after, r_until),
        current_window=_window(cur_events, c_after, c_until),
        reports=tuple(results),
        skipped_reports=skipped,
        elapsed_s=time.perf_counter() - started,
        workspace=workspace,
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
            workspace=ws,
        )
    finally:
        log.close()


# -- index ---------------------------------------------------------------------------------------
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
