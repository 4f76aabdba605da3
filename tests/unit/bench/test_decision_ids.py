"""The decision-id benchmark's plumbing (its figures come from ``python -m bench decision_ids``)."""

from __future__ import annotations

from bench import decision_ids


def test_both_id_kinds_fill_a_real_event_log_and_are_summarised() -> None:
    rows = [
        {"kind": "ids", "ids": kind, "round": 0, **decision_ids._run(make, 800)}
        for kind, make in decision_ids.IDS.items()
    ]
    for r in rows:
        assert r["rows"] == 800 and r["db_mb"] > 0
        assert 0 < r["first_sixth_ms_mean"] <= r["first_sixth_ms_p99"] * 10
    lines = decision_ids.summary(rows)
    assert len(lines) == 2 and lines[0].startswith("random") and "time_ordered" in lines[1]
