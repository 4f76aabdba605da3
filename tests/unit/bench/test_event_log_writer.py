"""The writer benchmark's plumbing (its figures come from ``python -m bench event_log_writer``)."""

from __future__ import annotations

import math

from bench import event_log_writer


def test_every_mode_and_group_size_is_measured_and_summarised() -> None:
    results = event_log_writer.run(quick=True)
    modes = [r for r in results if r["kind"] == "mode"]
    assert [(r["mode"], r["rows_per_transaction"]) for r in modes] == [
        (m, g) for g in event_log_writer.GROUPS for m in event_log_writer.MODES
    ]
    for r in modes:
        assert len(r["cpu_us_per_decision_each"]) == r["rounds"] == 2
        assert r["cpu_us_per_decision_median"] > 0
    ratios = [r for r in results if r["kind"] == "ratio"]
    assert [r["rows_per_transaction"] for r in ratios] == list(event_log_writer.GROUPS)
    for r in ratios:
        for key in ("held_over_pooled", "insert_over_sqlalchemy_insert_paired"):
            assert r[key] > 0 and not math.isnan(r[key])
    lines = event_log_writer.summary(results)
    assert len(lines) == len(modes) + len(ratios)
    assert lines[0].startswith("held ") and "insert / SQLAlchemy's" in lines[-1]
