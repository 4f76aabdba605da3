"""The outcomes report: traffic and outcomes per model and policy version, and drift shares.

Each drift report run (:func:`monitoring.reports.drift_report_from_log`) also writes
``outcomes``: on the current window against the reference, the traffic share and the mean
reward, quality and cost of each model, the traffic share and mean reward of each policy
version, and the share of each (version, model) pair (the metrics of
:func:`monitoring.workspace.outcome_metrics`, on :func:`monitoring.frames.outcomes_frame`).
Its snapshot, and :func:`drift_share_snapshot` (each drift report's drift share), feed the
dashboard of the Evidently UI workspace (:mod:`monitoring.workspace`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitoring.frames import OUTCOMES_BY_MODEL, outcomes_frame
from monitoring.report_index import add_header

if TYPE_CHECKING:
    import pandas as pd


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


@dataclass(frozen=True)
class OutcomesResult:
    """The ``outcomes`` report: traffic and outcomes per model and per policy version.

    ``by_model`` and ``by_version`` hold the current window's values (``events``, ``share``,
    and the mean ``reward``, ``quality``, ``cost_usd`` per model or ``reward`` per version;
    None where no event had the value), the numbers the dashboard plots.
    """

    title: str
    html: Path
    snapshot_json: Path
    by_model: dict[str, dict[str, float | None]]
    by_version: dict[str, dict[str, float | None]]

    def to_dict(self, root: Path | None = None) -> dict[str, Any]:
        """JSON-ready summary; file paths relative to ``root`` when given."""

        def rel(p: Path) -> str:
            return str(p.relative_to(root)) if root is not None else str(p)

        return {
            "title": self.title,
            "html": rel(self.html),
            "snapshot_json": rel(self.snapshot_json),
            "by_model": self.by_model,
            "by_version": self.by_version,
        }


def _grouped(frame: pd.DataFrame, by: str, means: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Events, traffic share and means of ``means`` per value of ``by``, most events first."""
    counts = frame[by].value_counts()
    total = int(counts.sum())
    out: dict[str, dict[str, Any]] = {}
    for key in sorted(counts.index, key=lambda k: (-int(counts[k]), str(k))):
        rows = frame[frame[by] == key]
        out[str(key)] = {
            "events": int(counts[key]),
            "share": round(int(counts[key]) / total, 6),
            **{m: _nan_to_none(float(rows[m].mean())) for m in means},
        }
    return out


def run_outcomes(
    ref: pd.DataFrame,
    cur: pd.DataFrame,
    *,
    folder: Path,
    metadata: Mapping[str, str],
    tags: Sequence[str],
    timestamp: datetime,
    header: str = "",
) -> tuple[OutcomesResult, Any]:
    """Traffic and outcomes per model and policy version, current vs reference (the metrics of
    :func:`monitoring.workspace.outcome_metrics`); save HTML and snapshot JSON.

    ``header`` (HTML) goes at the top of the page. Returns the result and Evidently's snapshot
    (the dashboard reads the current values).
    """
    import numpy as np  # noqa: PLC0415
    from evidently import DataDefinition, Dataset, Report  # noqa: PLC0415

    from monitoring.workspace import TRAFFIC_COLUMNS, outcome_metrics  # noqa: PLC0415

    definition = DataDefinition(
        numerical_columns=list(OUTCOMES_BY_MODEL), categorical_columns=list(TRAFFIC_COLUMNS)
    )

    def dataset(frame: pd.DataFrame) -> Any:
        data = outcomes_frame(frame)
        for col in TRAFFIC_COLUMNS:
            data[col] = data[col].astype("string")
        return Dataset.from_pandas(data, data_definition=definition)

    title = "Traffic and outcomes per model and policy version"
    report = Report(outcome_metrics(), metadata=dict(metadata), tags=list(tags))
    html, snap_json = folder / "outcomes.html", folder / "outcomes.json"
    # A model or version absent from the reference has no reference mean (0/0): numpy warns.
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = report.run(
            current_data=dataset(cur), reference_data=dataset(ref), name=title, timestamp=timestamp
        )
        snapshot.save_html(str(html))
    snapshot.save_json(str(snap_json))
    if header:
        add_header(html, header)
    frame = outcomes_frame(cur)
    result = OutcomesResult(
        title,
        html,
        snap_json,
        by_model=_grouped(frame, "model", OUTCOMES_BY_MODEL),
        by_version=_grouped(frame, "policy_version", ("reward",)),
    )
    return result, snapshot


def drift_share_snapshot(
    shares: Mapping[str, float],
    *,
    metadata: Mapping[str, str],
    tags: Sequence[str],
    timestamp: datetime,
) -> Any:
    """An Evidently snapshot of each drift report's drift share (``shares``: report name to the
    share of its tested columns that drifted; one row per report), for the dashboard's drift
    share panel (:func:`monitoring.workspace.drift_share_metrics`)."""
    import pandas as pd  # noqa: PLC0415
    from evidently import DataDefinition, Dataset, Report  # noqa: PLC0415

    from monitoring.workspace import drift_share_metrics  # noqa: PLC0415

    frame = pd.DataFrame(
        {
            "report": pd.Series(list(shares), dtype="string"),
            "drift_share": [float(v) for v in shares.values()],
        }
    )
    definition = DataDefinition(numerical_columns=["drift_share"], categorical_columns=["report"])
    report = Report(drift_share_metrics(), metadata=dict(metadata), tags=list(tags))
    return report.run(
        current_data=Dataset.from_pandas(frame, data_definition=definition),
        name="Drift share per report",
        timestamp=timestamp,
    )
