"""The registration rule: every reason, and its edges."""

from __future__ import annotations

import pytest

from models.ope import Estimate
from pipelines.registration import decide_registration


def _est(value: float, half: float = 0.02) -> Estimate:
    return Estimate(value, value - half, value + half, 500, "snips")


def test_enough_events_register_whatever_the_estimate() -> None:
    d = decide_registration(
        200, min_events=200, estimate=_est(0.5), previous=_est(0.5), previous_version="3"
    )
    assert (d.register, d.reason, d.n_new, d.lift) == (True, "min_events", 200, 0.0)
    assert d.detail == "learned 200 new events (at least 200, LLMOPT_REGISTER_MIN_EVENTS)"


@pytest.mark.parametrize(("value", "direction"), [(0.53, "above"), (0.47, "below")])
def test_few_events_register_when_the_estimate_leaves_the_previous_interval(
    value: float, direction: str
) -> None:
    d = decide_registration(
        5, min_events=200, estimate=_est(value), previous=_est(0.5), previous_version="3"
    )
    assert (d.register, d.reason) == (True, "ope_moved")
    assert f"moved {direction} version 3's confidence interval" in d.detail
    assert d.lift == pytest.approx(value - 0.5)


def test_few_events_within_the_interval_do_not_register() -> None:
    d = decide_registration(
        199, min_events=200, estimate=_est(0.52), previous=_est(0.5), previous_version="3"
    )
    assert (d.register, d.reason) == (False, "too_few_events")
    assert d.detail.startswith("only 199 new events since version 3 (fewer than 200)")
    assert "within version 3's interval (0.5000 [0.4800, 0.5200])" in d.detail


def test_without_a_previous_version_only_the_count_decides() -> None:
    d = decide_registration(
        10, min_events=200, estimate=_est(0.9), previous=None, previous_version=None
    )
    assert (d.register, d.reason, d.lift) == (False, "too_few_events", None)
    assert "since the start" in d.detail and "no previous version to compare" in d.detail


def test_nothing_new_never_registers_and_min_events_is_checked() -> None:
    d = decide_registration(
        0, min_events=1, estimate=_est(0.9), previous=_est(0.1), previous_version="7"
    )
    assert (d.register, d.reason, d.detail) == (
        False,
        "nothing_new",
        "no new events since version 7",
    )
    with pytest.raises(ValueError, match="min_events must be >= 1"):
        decide_registration(5, min_events=0, estimate=None, previous=None, previous_version=None)
