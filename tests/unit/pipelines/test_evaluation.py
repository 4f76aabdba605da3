"""Promotion statistics: Welch's t-test, Student's t tail, the OPE and A/B gates (pure)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.ope import Estimate
from pipelines.evaluation import ab_gate, ope_gate, student_t_sf, welch_test


@pytest.mark.parametrize(
    ("t", "df", "expected"),
    [
        (2.0, 10.0, 0.036694),  # scipy.stats.t.sf(2, 10)
        (1.0, 1.0, 0.25),  # Cauchy: 1/2 - atan(1)/pi
        (-2.5, 4.0, 0.966617),
        (3.0, 30.0, 0.002695),
        (1.96, math.inf, 0.024998),
    ],
)
def test_student_t_tail_matches_reference_values(t: float, df: float, expected: float) -> None:
    assert student_t_sf(t, df) == pytest.approx(expected, abs=2e-6)


def test_welch_matches_the_textbook_formula() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.0, 1.0, 40), rng.normal(0.5, 2.0, 25)
    r = welch_test(a, b)
    va, vb = a.var(ddof=1) / 40, b.var(ddof=1) / 25
    assert r.t == pytest.approx((b.mean() - a.mean()) / math.sqrt(va + vb))
    assert r.df == pytest.approx((va + vb) ** 2 / (va**2 / 39 + vb**2 / 24))
    assert r.p_value == pytest.approx(student_t_sf(r.t, r.df))
    with pytest.raises(ValueError, match="at least 2"):
        welch_test([1.0], [1.0, 2.0])


def test_ab_gate_needs_significance_and_the_right_direction() -> None:
    rng = np.random.default_rng(0)
    champion = rng.normal(0.50, 0.25, 400)
    better = rng.normal(0.58, 0.25, 400)
    same = rng.normal(0.50, 0.25, 400)
    assert ab_gate(champion, better).passed
    worse = ab_gate(better, champion)
    assert not worse.passed and "not better" in worse.reason
    assert not ab_gate(champion, same + 0.001).passed  # a tiny gain is not significant
    few = ab_gate(champion[:50], better[:50], min_samples=100)
    assert not few.passed and "not enough" in few.reason
    # the scheduled gate is the always-valid sequential test; Welch is the one-look option
    assert ab_gate(champion, better).details["test"] == "mSPRT"
    assert ab_gate(champion, better, sequential=False).passed


def test_ab_gate_with_a_non_inferiority_margin_promotes_an_equal_challenger_only() -> None:
    rng = np.random.default_rng(1)
    champion, same = rng.normal(0.50, 0.25, 3000), rng.normal(0.50, 0.25, 3000)
    assert not ab_gate(champion, same, min_effect=0.01).passed  # superiority only: futility
    kept = ab_gate(champion, same, non_inferiority_margin=0.05)
    assert kept.passed and "not worse by more than 0.05" in kept.reason
    assert kept.details["decision"] == "non_inferior" and kept.details["ci_low"] > -0.05
    worse = ab_gate(champion, same - 0.1, non_inferiority_margin=0.05)
    assert not worse.passed and worse.details["decision"] == "champion"


def test_ab_gate_looked_at_on_every_schedule_keeps_its_false_positive_rate() -> None:
    # The promotion flow re-runs the gate as the A/B sample grows: 20 looks per A/A run.
    def promoted(sequential: bool, seed: int) -> bool:
        rng = np.random.default_rng(seed)
        a, b = rng.normal(0.5, 0.25, 2000), rng.normal(0.5, 0.25, 2000)
        return any(
            ab_gate(a[:n], b[:n], sequential=sequential).passed for n in range(100, 2001, 100)
        )

    runs = range(200)
    sequential = sum(promoted(True, s) for s in runs) / len(runs)
    repeated_welch = sum(promoted(False, s) for s in runs) / len(runs)
    assert sequential <= 0.05 + 0.02
    assert repeated_welch > 0.12  # the one-look test, looked at 20 times


def _est(value: float) -> Estimate:
    return Estimate(value, value - 0.05, value + 0.05, 500, "snips")


def test_ope_gate_with_a_better_and_a_worse_challenger() -> None:
    champion = _est(0.60)
    assert ope_gate(_est(0.70), champion, margin=0.01).passed
    assert ope_gate(_est(0.595), champion, margin=0.01).passed  # within the margin
    worse = ope_gate(_est(0.50), champion, margin=0.01)
    assert not worse.passed and "worse than the champion" in worse.reason
    assert ope_gate(_est(0.1), None).passed
    with pytest.raises(ValueError, match="margin"):
        ope_gate(_est(0.5), champion, margin=-1)
