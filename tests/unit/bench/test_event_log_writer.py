"""The writer benchmark's plumbing (its figures come from ``python -m bench event_log_writer``)."""

from __future__ import annotations

import math

from bench import event_log_writer


def test_both_modes_write_single_row_groups_and_are_summarised() -> None:
    results = event_log_writer.run(quick=True)
    modes = [r for r in results if r["kind"] == "mode"]
    assert [r["mode"] for r in modes] == ["held", "pooled"]
    for r in modes:
        assert len(r["cpu_us_per_decision_each"]) == r["rounds"] == 2
        assert r["cpu_us_per_decision_median"] > 0
    ratio = results[-1]["held_over_pooled"]
    assert ratio > 0 and not math.isnan(ratio)
    lines = event_log_writer.summary(results)
    assert len(lines) == 3 and lines[0].startswith("held") and lines[2].startswith("held / pooled")
