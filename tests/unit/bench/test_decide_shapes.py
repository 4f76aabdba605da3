"""The shapes benchmark's plumbing (its figures come from ``python -m bench decide_shapes``)."""

from __future__ import annotations

import pytest

from bench import decide_shapes


@pytest.mark.slow
def test_both_modes_are_measured_each_round_and_summarised() -> None:
    results = decide_shapes.run(quick=True)
    modes = [r for r in results if r["kind"] == "mode"]
    assert [r["mode"] for r in modes] == list(decide_shapes.MODES)
    for r in modes:
        assert len(r["cpu_us_per_decision_each"]) == r["rounds"] == 2
        assert r["cpu_us_per_decision_median"] > 0
    assert len(results[-1]["per_round"]) == 2
    assert results[-1]["shared_over_alone_per_round_median"] > 0
    lines = decide_shapes.summary(results)
    assert len(lines) == 3 and lines[0].startswith("alone") and lines[2].startswith("shared /")
