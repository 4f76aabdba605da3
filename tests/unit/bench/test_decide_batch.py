"""The batch benchmark's plumbing (its figures come from ``python -m bench decide_batch``)."""

from __future__ import annotations

import pytest

from bench import decide_batch


@pytest.mark.slow
def test_every_mode_is_measured_each_round_and_summarised() -> None:
    results = decide_batch.run(quick=True)
    modes = [r for r in results if r["kind"] == "mode"]
    assert [r["mode"] for r in modes] == list(decide_batch.MODES)
    for r in modes:
        assert len(r["cpu_us_per_decision_each"]) == r["rounds"] == 2
        assert r["cpu_us_per_decision_median"] > 0
    assert modes[0]["ratio_to_one_by_one_median"] is None
    assert all(r["ratio_to_one_by_one_median"] > 0 for r in modes[1:])
    assert results[-1]["held_shared_over_one_by_one"] > 0
    assert results[-1]["held_shared_ahead_over_one_by_one"] > 0
    lines = decide_batch.summary(results)
    assert len(lines) == 5 and lines[0].startswith("one_by_one")
    assert "held_shared /" in lines[4] and "held_shared_ahead /" in lines[4]
