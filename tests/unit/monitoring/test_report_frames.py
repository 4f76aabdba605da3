"""Drift report plumbing without Evidently: frames, windows, champion tags, tests, index."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmopt.event_log import EventLog, LoggedEvent
from llmopt.schemas import Decision, Feedback, RequestContext
from monitoring.frames import (
    REQUEST_CATEGORICAL,
    REQUEST_NUMERIC,
    comparable_models,
    event_row_columns,
    events_frame,
    left_out_models,
    outcomes_frame,
    per_model_frame,
    usable_columns,
)
from monitoring.report_index import add_header, windows_header, write_index
from monitoring.reports import _column_results
from monitoring.stattests import chi2_homogeneity, homogeneity_columns
from monitoring.windows import (
    ChampionWindow,
    NotEnoughEventsError,
    Window,
    champion_window_from_tags,
    select_windows,
)


def _event(i: int, model: str = "m1", **features: float) -> LoggedEvent:
    now = datetime.now(UTC)
    return LoggedEvent(
        feedback_id=i,
        decision_id=f"d{i}",
        decided_at=now,
        received_at=now,
        tenant="acme",
        model=model,
        propensity=0.8,
        policy_name="p",
        policy_version="1",
        context={"task_hints": ["math", "Code"], "input_tokens": 40, "willingness_to_pay": 0.05},
        features={"len_chars": 0.4, "q_imperative": 1.0, "pfx_5": 1.0, **features},
        quality=0.9,
        reward=0.85,
        cost_usd=0.001,
        latency_ms=None,
        error_kind=None,
    )


def _log(n: int, *, models: tuple[str, ...] = ("a", "b")) -> EventLog:
    log = EventLog("sqlite://")
    for i in range(n):
        d = Decision(model=models[i % len(models)], propensity=0.5, policy_name="t")
        log.record_decision(d, RequestContext(tenant="t"), features={"code": float(i % 2)})
        log.record_feedback(Feedback(decision_id=d.decision_id, quality=0.5), reward=0.4)
    return log


def test_events_frame_has_one_row_per_event_and_derived_categories() -> None:
    frame = events_frame([_event(1), _event(2, "m2", code=0.6)])
    assert tuple(frame.columns) == event_row_columns()
    assert len(REQUEST_NUMERIC) + len(REQUEST_CATEGORICAL) == 20
    row = frame.iloc[1]
    assert row["model"] == "m2" and row["code"] == 0.6 and math.isnan(frame.iloc[0]["code"])
    assert (row["question_type"], row["task_hint"], row["prompt_template"]) == (
        "imperative",
        "code+math",
        "pfx_5",
    )
    assert row["input_tokens"] == 40 and row["willingness_to_pay"] == 0.05
    assert math.isnan(row["latency_ms"]) and row["error_kind"] == "none"
    assert events_frame([]).empty


def test_per_model_columns_keep_only_that_models_outcomes() -> None:
    frame = pd.DataFrame({"model": ["a", "b", "a"], "quality": [0.1, 0.2, 0.3], "reward": 1.0})
    per = per_model_frame(frame, ["a", "b"])
    assert list(per.columns) == ["quality[a]", "reward[a]", "quality[b]", "reward[b]"]
    assert per["quality[a]"].tolist()[::2] == [0.1, 0.3] and math.isnan(per["quality[a]"][1])
    ref = pd.DataFrame({"model": ["a"] * 5 + ["b"] * 9 + ["c"] * 2})
    cur = pd.DataFrame({"model": ["a"] * 3 + ["b"] * 4 + ["c"] * 9})
    assert comparable_models(ref, cur, 3) == ["b", "a"]  # c: too few in the reference


def test_models_left_out_of_the_per_model_report_are_the_complement_with_their_counts() -> None:
    ref = pd.DataFrame({"model": ["a"] * 5 + ["b"] * 9 + ["c"] * 2 + ["d"]})
    cur = pd.DataFrame({"model": ["a"] * 3 + ["b"] * 4 + ["c"] * 9 + ["e"] * 2})
    kept = comparable_models(ref, cur, 3)
    left_out = left_out_models(ref, cur, 3)
    assert set(kept) | set(left_out) == set("abcde") and not set(kept) & set(left_out)
    assert list(left_out) == ["c", "e", "d"]  # most chosen first
    assert (
        left_out["c"] == "2 events in the reference window and 9 in the current one (fewer than 3)"
    )
    assert left_out["d"].startswith("1 event in the reference window and 0 in the current one")
    assert left_out_models(ref, cur, 1) == {
        "d": "1 event in the reference window and 0 in the current one (fewer than 1)",
        "e": "0 events in the reference window and 2 in the current one (fewer than 1)",
    }


def test_outcomes_frame_pairs_version_and_model() -> None:
    frame = events_frame([_event(1), _event(2, "m2")])
    out = outcomes_frame(frame)
    assert list(out.columns) == [
        "model",
        "policy_version",
        "version_model",
        "reward",
        "quality",
        "cost_usd",
    ]
    assert out["version_model"].tolist() == ["v1 m1", "v1 m2"]
    assert out["cost_usd"].tolist() == [0.001, 0.001]


def test_a_window_says_its_ids_count_and_time_span() -> None:
    first = datetime(2026, 5, 2, 8, 0, 0, tzinfo=UTC)
    last = datetime(2026, 5, 2, 8, 4, 30, tzinfo=UTC)
    w = Window(100, 300, 200, first, last)
    assert w.describe() == (
        "feedback ids (100, 300]: 200 events, received 2026-05-02 08:00:00 to "
        "2026-05-02 08:04:30 UTC (4 min 30 s)"
    )
    d = w.to_dict()
    assert d["span_s"] == 270.0 and d["time_span"].endswith("(4 min 30 s)")
    assert d["feedback_ids"] == "(100, 300]"


def test_the_header_goes_at_the_top_of_the_page_and_names_both_windows(tmp_path: Path) -> None:
    page = tmp_path / "r.html"
    page.write_text("<!DOCTYPE html><html><head></head><body class='x'><div id='root'></div>")
    ref = {"kind": "champion", "description": "v7 <training>", "feedback_ids": "(0, 9]"}
    header = windows_header("T", ref | {"n_rows": 9}, {"feedback_ids": "(9, 20]", "n_rows": 11})
    add_header(page, header)
    html = page.read_text()
    assert html.index("<body class='x'>") < html.index('id="llmopt-windows"') < html.index("root")
    text = " ".join(re.sub("<[^>]+>", " ", html).split())
    assert "Reference (champion) : feedback ids (0, 9], 9 events" in text
    assert "Current : feedback ids (9, 20], 11 events" in text
    assert "v7 &lt;training&gt;" in html  # escaped


def test_usable_columns_leave_out_empty_and_constant_ones_and_say_why() -> None:
    ref = pd.DataFrame({"x": [1.0, 2.0], "k": [0.0, 0.0], "e": [np.nan, np.nan], "n": [0.0, 0.0]})
    cur = pd.DataFrame({"x": [1.0, 3.0], "k": [0.0, 0.0], "e": [1.0, 2.0], "n": [0.0, 1.0]})
    kept, skipped = usable_columns(ref, cur, ["x", "k", "e", "n"])
    assert kept == ["x", "n"]  # n appears in the current window only: kept, that is drift
    assert skipped == {
        "k": "constant (0.0) in both windows",
        "e": "no values in the reference window",
    }


def test_homogeneity_test_ignores_a_rare_new_category_but_flags_a_shift() -> None:
    ref = pd.Series(["x"] * 390 + ["y"] * 10)
    assert chi2_homogeneity(ref, pd.Series(["x"] * 385 + ["y"] * 13 + ["new"] * 2)) > 0.05
    assert chi2_homogeneity(ref, pd.Series(["x"] * 300 + ["y"] * 100)) < 1e-6
    assert chi2_homogeneity(ref, pd.Series(["x"] * 100 + ["new"] * 300)) < 1e-6
    assert chi2_homogeneity(pd.Series(["x"] * 10), pd.Series(["x"] * 10)) == 1.0
    frame = pd.DataFrame({"c": list("abc") * 10, "n": [0.0, 0.5, 1.0] * 10, "k": np.arange(30.0)})
    assert homogeneity_columns(frame, frame, ["n", "k"], ["c"]) == ["n", "c"]


@pytest.mark.parametrize(
    ("tags", "window"),
    [
        ({"data_window": "feedback (100, 400]"}, (100, 400)),
        (
            {"data_window": "feedback (380, 400]", "last_feedback_id": "400", "n_events": "250"},
            (150, 400),
        ),
        ({"last_feedback_id": "90"}, None),
        ({"last_feedback_id": "90", "n_events": "90"}, (0, 90)),
        ({"data_window": "demo"}, None),
        ({}, None),
    ],
)
def test_champion_window_from_tags(tags: dict[str, str], window: tuple[int, int] | None) -> None:
    found = champion_window_from_tags("5", tags)
    assert (None if found is None else (found.after_id, found.until_id)) == window


def test_windows_split_the_recent_events_without_a_champion() -> None:
    log = _log(130)
    ref, (ra, ru), (ca, cu) = select_windows(log, 50, champion=None, min_rows=20, why="none")
    assert ref.kind == "split" and "none" in ref.description
    assert (ra, ru, ca, cu) == (30, 80, 80, 130)
    ref, (ra, ru), (ca, cu) = select_windows(log, 100, champion=None, min_rows=20)
    assert (ra, ru, ca, cu) == (0, 65, 65, 130)  # fewer than 2 windows: halves of everything
    assert [e.feedback_id for e in log.feedback_since(64, until_id=66)] == [65, 66]


def test_windows_use_the_champions_training_events_before_the_current_window() -> None:
    log = _log(130)
    champ = ChampionWindow("7", 0, 100, "data_window='feedback (0, 100]'")
    ref, (ra, ru), (ca, cu) = select_windows(log, 40, champion=champ, min_rows=20)
    assert ref.kind == "champion" and ref.champion_version == "7"
    assert (ra, ru, ca, cu) == (50, 90, 90, 130)  # latest 40 of (0, 90]: no overlap with current
    late = ChampionWindow("8", 100, 130, "data_window='feedback (100, 130]'")
    ref, _, _ = select_windows(log, 40, champion=late, min_rows=20)
    assert ref.kind == "split" and "version 8 learned only 0 events" in ref.description


def test_too_few_events_raise_a_clear_error() -> None:
    with pytest.raises(NotEnoughEventsError, match="has 30 feedback events; .* at least 40"):
        select_windows(_log(30), 100, champion=None, min_rows=20)
    with pytest.raises(ValueError, match="window"):
        select_windows(_log(1), 10, champion=None, min_rows=20)


def test_column_verdicts_come_from_evidentlys_value_drift_tests() -> None:
    snap = {
        "metrics": [{"id": "m1", "value": 0.01}, {"id": "m2", "value": 0.4}],
        "tests": [
            {
                "metric_config": {
                    "metric_id": mid,
                    "params": {
                        "type": "evidently:metric_v2:ValueDrift",
                        "column": col,
                        "method": "K-S p_value",
                        "threshold": 0.05,
                    },
                },
                "status": status,
            }
            for mid, col, status in (("m1", "x", "FAIL"), ("m2", "y", "SUCCESS"))
        ]
        + [{"metric_config": {"metric_id": "c", "params": {"type": "DriftedColumnsCount"}}}],
    }
    got = _column_results(snap)
    assert [(c.column, c.score, c.drifted) for c in got] == [("x", 0.01, True), ("y", 0.4, False)]


def test_index_lists_runs_newest_first_and_skips_unreadable_ones(tmp_path: Path) -> None:
    for name, when, drifted in (
        ("old", "2026-01-01T00:00:00+00:00", False),
        ("new", "2026-02-01T00:00:00+00:00", True),
    ):
        (tmp_path / name).mkdir()
        summary = {
            "created_at": when,
            "drift_detected": drifted,
            "reference": {
                "kind": "split",
                "n_rows": 10,
                "feedback_ids": "(0, 10]",
                "description": "<halves>",
            },
            "current": {"n_rows": 10, "feedback_ids": "(10, 20]"},
            "reports": {
                "features": {
                    "title": "Features",
                    "html": "features.html",
                    "drifted_columns": ["x"] if drifted else [],
                    "n_columns": 3,
                    "drift_detected": drifted,
                }
            },
            "skipped_reports": {},
        }
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary.json").write_text("{not json")
    page = write_index(tmp_path).read_text()
    assert page.index("new/features.html") < page.index("old/features.html")
    assert "2 run(s)" in page and "&lt;halves&gt;" in page and "1/3 drifted" in page
    header = page[page.index('<header id="llmopt-windows"') : page.index("</header>")]
    assert (
        "the latest run (new) compares" in header and "feedback ids (10, 20], 10 events" in header
    )


def test_an_empty_index_says_there_is_nothing_to_compare(tmp_path: Path) -> None:
    page = write_index(tmp_path).read_text()
    assert 'id="llmopt-windows"' in page and "no run yet" in page and "0 run(s)" in page
