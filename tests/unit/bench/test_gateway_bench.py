"""The gateway benchmark's pure helpers: windows of a model's share, the time it takes to fall,
added latency, and the feedback audit against a small event-log database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bench import gateway


def test_window_shares_counts_each_window_and_leaves_empty_ones_without_share() -> None:
    times = [0.1, 0.5, 1.9, 2.0, 5.5, 6.1]
    hits = [True, True, False, True, False, True]
    windows = gateway.window_shares(times, hits, start=0.0, end=6.0, width=2.0)
    assert [(w["requests"], w["hits"], w["share"]) for w in windows] == [
        (3, 2, pytest.approx(2 / 3, abs=1e-4)),
        (1, 1, 1.0),
        (1, 0, 0.0),
    ]  # 6.1 is past the end
    assert [(w["t_start_s"], w["t_end_s"]) for w in windows] == [(0, 2), (2, 4), (4, 6)]
    assert gateway.window_shares([0.5], [True], start=1.0, end=5.0, width=2.0)[0]["share"] is None


def test_window_shares_are_relative_to_the_start() -> None:
    windows = gateway.window_shares(
        [10.5, 11.0, 12.5], [True, False, True], start=10.0, end=13.0, width=2.0
    )
    assert [w["share"] for w in windows] == [0.5, 1.0]
    assert windows[1]["t_end_s"] == 4.0  # the last window is whole, though end cuts it


def test_time_to_fall_is_the_end_of_the_first_window_below_the_fraction() -> None:
    windows = [
        {"t_end_s": 2.0, "share": 0.4},
        {"t_end_s": 4.0, "share": None},  # no request: no verdict
        {"t_end_s": 6.0, "share": 0.19},
        {"t_end_s": 8.0, "share": 0.3},
    ]
    assert gateway.time_to_fall(windows, baseline=0.4) == 6.0
    assert gateway.time_to_fall(windows, baseline=0.4, fraction=0.25) is None
    assert gateway.time_to_fall(windows, baseline=0.0) is None  # nothing is below zero
    assert gateway.stays_below(windows, 6.0, 0.2) == 0.5
    assert gateway.stays_below(windows, None, 0.2) is None


def test_added_latency_and_ratios_tolerate_missing_percentiles() -> None:
    out = gateway.added({"p50_ms": 30.0, "p99_ms": 50.0}, {"p50_ms": 25.0, "p99_ms": 40.0})
    assert out == {"added_p50_ms": 5.0, "added_p99_ms": 10.0, "ratio_p50": 1.2, "ratio_p99": 1.25}
    assert (
        gateway.added({"p50_ms": None, "p99_ms": 1.0}, {"p50_ms": 1.0, "p99_ms": 1.0})[
            "added_p50_ms"
        ]
        is None
    )
    assert gateway.percentiles([]) == {"n": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None}


def _db(path: Path) -> Path:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE decisions (decision_id TEXT PRIMARY KEY, tenant TEXT)")
        conn.execute(
            "CREATE TABLE feedback (feedback_id INTEGER PRIMARY KEY, decision_id TEXT, "
            "quality REAL, error_kind TEXT, output_tokens INTEGER, latency_ms REAL)"
        )
        conn.executemany(
            "INSERT INTO decisions VALUES (?, ?)",
            [("a", "t"), ("b", "t"), ("c", "t"), ("f", "t"), ("g", "t"), ("x", "other")],
        )
        conn.executemany(
            "INSERT INTO feedback (decision_id, quality, error_kind, output_tokens) "
            "VALUES (?, ?, ?, ?)",
            [
                ("a", 0.9, None, 12),
                ("b", 0.5, None, None),  # stored before the call's measurements
                ("c", 0.1, None, 3),  # not the quality posted
                ("f", 0.0, "server_error", None),  # a failed attempt, fed back by the gateway
                ("x", 0.2, None, 1),
            ],
        )
    return path


def test_feedback_audit_finds_lost_wrong_unmeasured_and_failed_attempts(tmp_path: Path) -> None:
    answered = {"a": 0.9, "b": 0.5, "c": 0.7, "d": 0.4}  # d: never logged, its feedback lost
    posts = {"a": "stored", "b": "stored", "c": "duplicate", "d": "404"}
    audit = gateway.feedback_audit(_db(tmp_path / "events.db"), "t", answered, posts)
    assert audit["lost"] == 1
    assert audit["wrong_quality_or_kind"] == 1
    assert audit["duplicated"] == 1  # the service answered "duplicate" once
    assert audit["answered_without_measured_tokens"] == 1
    assert audit["failed_attempt_decisions"] == 2  # f and g
    assert audit["failed_attempts_with_error_feedback"] == 1
    assert audit["decisions_without_feedback"] == 1  # g
    assert audit["feedback_posts"] == {"stored": 2, "duplicate": 1, "404": 1}


def test_interleaved_gives_each_mode_once_per_block_in_a_seeded_order() -> None:
    order = gateway.interleaved(("direct", "bypass", "auto"), 50, seed=0)
    blocks = [order[i : i + 3] for i in range(0, len(order), 3)]
    assert all(sorted(b) == ["auto", "bypass", "direct"] for b in blocks)
    assert order == gateway.interleaved(("direct", "bypass", "auto"), 50, seed=0)
    follows = {(a, b) for a, b in zip(order, order[1:], strict=False) if a != b}
    assert len(follows) == 6  # every mode follows every other at some point
