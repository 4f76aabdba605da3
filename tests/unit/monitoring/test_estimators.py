"""The streaming estimators behind the service's regret, exploration and recovery metrics."""

from __future__ import annotations

import doctest

import pytest

import monitoring.estimators
from monitoring.estimators import ExplorationWindow, RecoveryTracker, RegretEstimator


def test_doctests_pass():
    result = doctest.testmod(monitoring.estimators)
    assert result.attempted > 0 and result.failed == 0


def test_exploration_window_forgets_old_decisions():
    w = ExplorationWindow(size=2)
    for explored in (True, True, False, False):
        w.add(explored)
    assert w.rate == 0


def test_regret_is_the_gap_to_the_best_known_model_and_never_negative():
    est = RegretEstimator(min_count=2, window=10)
    rewards = {"good": 0.9, "bad": 0.4}
    total = 0.0
    for i in range(6):
        model = "good" if i % 2 else "bad"
        est.decided(f"d{i}", model, "ucb")
        made = est.rewarded(f"d{i}", rewards[model])
        assert made is not None
        assert made[1] >= 0
        total += made[1]
    # Only once both models have 2 rewards does "bad" (its 3rd) cost 0.9 - 0.4.
    assert total == pytest.approx(0.5)
    assert est.rewarded("d0", 1.0) is None  # already rewarded: forgotten


def test_regret_estimator_forgets_beyond_its_window_and_tracks_drift():
    est = RegretEstimator(min_count=1, window=2, horizon=2)
    for i in range(3):
        est.decided(f"d{i}", "a", "ucb")
    assert est.rewarded("d0", 1.0) is None
    est.decided("x1", "a", "ucb")
    est.rewarded("x1", 0.0)
    est.decided("x2", "a", "ucb")
    est.rewarded("x2", 1.0)
    est.decided("x3", "a", "ucb")
    est.rewarded("x3", 1.0)
    # horizon 2: after the first 2 rewards an EMA with weight 1/2: 0.5 -> 0.75
    assert est._means["a"] == pytest.approx(0.75)


def test_a_drift_without_a_baseline_recovers_after_a_window():
    t = RecoveryTracker(window=2)
    t.drift(("a", "reward"))
    assert t.add(0.1) == []
    assert t.add(0.1) == [("a", "reward")]
    t.drift(("a", "reward"))
    t.forget(("a", "reward"))
    assert t.add(0.1) == [] and t.add(0.1) == []
