"""A/B statistics: Welch against scipy, the mixture SPRT's error rates under continuous
monitoring (against a naive repeated t-test), its power and futility stops, sample sizes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from monitoring.ab_test import MixtureSPRT, sample_size, student_t_sf, welch_test
from pipelines import evaluation

ALPHA = 0.05
BATCH = 50
LOOKS = 40
"""Continuous monitoring: a look after every batch of 50 decisions per arm, up to 2000 each."""


# -- Welch --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_welch_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(0.5, 0.2, 40 + 17 * seed)
    b = rng.normal(0.55, 0.35, 25 + 9 * seed)
    ours = welch_test(a, b)
    ref = stats.ttest_ind(b, a, equal_var=False, alternative="greater")
    assert ours.t == pytest.approx(ref.statistic, rel=1e-10)
    assert ours.df == pytest.approx(ref.df, rel=1e-10)
    assert ours.p_value == pytest.approx(ref.pvalue, abs=1e-9)


@pytest.mark.parametrize("df", [1.0, 2.5, 7.0, 30.0, 500.0])
def test_student_t_tail_matches_scipy(df: float) -> None:
    for t in (-4.0, -1.0, 0.0, 0.3, 2.0, 6.0):
        assert student_t_sf(t, df) == pytest.approx(stats.t.sf(t, df), abs=1e-10)


def test_old_names_still_import_from_pipelines_evaluation() -> None:
    assert evaluation.welch_test is welch_test
    assert evaluation.student_t_sf is student_t_sf


# -- mixture SPRT: type-I error under continuous monitoring --------------------------------------
def feed(test: MixtureSPRT, a: np.ndarray, b: np.ndarray, look: int) -> None:
    chunk = slice(look * BATCH, (look + 1) * BATCH)
    test.update_many("champion", a[chunk])
    test.update_many("challenger", b[chunk])


def test_msprt_keeps_type_one_error_under_continuous_monitoring_a_repeated_t_test_does_not() -> (
    None
):
    """500 A/A tests, N(0.5, 0.2) rewards, a look after every batch: measured false-positive
    rates 0.018 for the mSPRT and 0.284 for a two-sided Welch test repeated at every look."""
    runs = 500
    msprt_rejects = naive_rejects = 0
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        a, b = rng.normal(0.5, 0.2, LOOKS * BATCH), rng.normal(0.5, 0.2, LOOKS * BATCH)
        test = MixtureSPRT(ALPHA, tau=0.05)
        naive = False
        for look in range(LOOKS):
            feed(test, a, b, look)
            if not naive and look >= 1:
                p = welch_test(a[: (look + 1) * BATCH], b[: (look + 1) * BATCH]).p_value
                naive = 2 * min(p, 1 - p) < ALPHA
        msprt_rejects += test.decision in ("challenger", "champion")
        naive_rejects += naive
    assert msprt_rejects / runs <= ALPHA + 0.01
    assert naive_rejects / runs >= 3 * ALPHA


def test_msprt_type_one_error_on_binary_rewards() -> None:
    """300 A/A tests on 0/1 rewards (80% success) with the plug-in variance: measured 0.03."""
    runs = 300
    rejects = 0
    for seed in range(runs):
        rng = np.random.default_rng(50_000 + seed)
        a = (rng.random(LOOKS * BATCH) < 0.8).astype(float)
        b = (rng.random(LOOKS * BATCH) < 0.8).astype(float)
        test = MixtureSPRT(ALPHA, tau=0.05)
        for look in range(LOOKS):
            feed(test, a, b, look)
        rejects += test.decision != "continue"
    assert rejects / runs <= ALPHA + 0.01


# -- power, confidence sequence, futility ----------------------------------------------------------
def test_msprt_detects_a_real_gain_early_and_its_confidence_sequence_covers_it() -> None:
    """Gain 0.05 (a quarter of a standard deviation), 200 runs: measured power 1.0, median stop
    at 300 decisions per arm (a fixed-horizon test needs 252, chosen in advance), 90th
    percentile 605; the confidence sequence missed the true gain at some look in 2% of runs."""
    runs, gain = 200, 0.05
    stops, wins, misses = [], 0, 0
    for seed in range(runs):
        rng = np.random.default_rng(10_000 + seed)
        a, b = rng.normal(0.5, 0.2, LOOKS * BATCH), rng.normal(0.5 + gain, 0.2, LOOKS * BATCH)
        test = MixtureSPRT(ALPHA, tau=0.05, max_samples=LOOKS * BATCH)
        covered = True
        for look in range(LOOKS):
            feed(test, a, b, look)
            lo, hi = test.confidence_interval
            covered = covered and lo <= gain <= hi
            if test.decision != "continue":
                break
        wins += test.decision == "challenger"
        stops.append(test.n_challenger)
        misses += not covered
    assert wins / runs >= 0.95
    assert np.median(stops) <= 2 * sample_size(0.2, gain)
    assert misses / runs <= ALPHA
    assert sample_size(0.2, gain) == 252


def test_msprt_stops_an_aa_test_for_futility() -> None:
    """A/A with min_effect 0.05, 200 runs: measured 98.5% stop for futility (median 300
    decisions per arm, at most 900), 1.5% for a (false) winner."""
    runs = 200
    decisions = []
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        a, b = rng.normal(0.5, 0.2, LOOKS * BATCH), rng.normal(0.5, 0.2, LOOKS * BATCH)
        test = MixtureSPRT(ALPHA, tau=0.05, min_effect=0.05)
        for look in range(LOOKS):
            feed(test, a, b, look)
            if test.decision != "continue":
                break
        decisions.append(test.decision)
        if test.decision == "futility":
            assert test.result().ci_high < 0.05
    assert decisions.count("futility") / runs >= 0.95
    assert decisions.count("challenger") + decisions.count("champion") <= ALPHA * runs


def _non_inferiority_run(seed: int, loss: float, margin: float = 0.03) -> str:
    rng = np.random.default_rng(20_000 + seed)
    a = rng.normal(0.5, 0.2, LOOKS * BATCH)
    b = rng.normal(0.5 - loss, 0.2, LOOKS * BATCH)
    test = MixtureSPRT(ALPHA, tau=0.05, min_effect=0.05, non_inferiority_margin=margin)
    for look in range(LOOKS):
        feed(test, a, b, look)
        if test.decision != "continue":
            break
    if test.decision == "non_inferior":
        assert test.result().ci_low > -margin
    return test.decision


def test_msprt_non_inferiority_passes_an_equal_challenger_and_rarely_a_worse_one() -> None:
    """Margin 0.03 (0.15 standard deviation), 200 runs each, up to 2000 decisions per arm,
    measured: an equal challenger is declared non-inferior in 193 runs (futility does not stop
    it); one worse by exactly the margin in 5 (2.5%: the error rate at the boundary stays below
    alpha, however often the test is looked at); one worse by 0.1 never."""
    runs = 200
    equal = [_non_inferiority_run(seed, 0.0) for seed in range(runs)]
    at_margin = [_non_inferiority_run(seed, 0.03) for seed in range(runs)]
    assert equal.count("non_inferior") / runs >= 0.9
    assert at_margin.count("non_inferior") / runs <= ALPHA
    assert "non_inferior" not in [_non_inferiority_run(seed, 0.1) for seed in range(50)]


def test_msprt_worse_challenger_cap_and_sticky_decision() -> None:
    rng = np.random.default_rng(7)
    test = MixtureSPRT(tau=0.05)
    while test.decision == "continue":
        test.update_many("champion", rng.normal(0.6, 0.2, BATCH))
        test.update_many("challenger", rng.normal(0.5, 0.2, BATCH))
    assert test.decision == "champion" and test.result().ci_high < 0
    test.update_many("challenger", np.ones(500))  # the decision is kept once made
    assert test.decision == "champion"

    capped = MixtureSPRT(tau=0.05, min_samples=100, max_samples=200)
    for _ in range(4):
        capped.update_many("champion", rng.normal(0.5, 0.2, BATCH))
        capped.update_many("challenger", rng.normal(0.5, 0.2, BATCH))
    assert capped.decision == "max_samples" and capped.n_champion == 200


def test_msprt_with_known_sigma_and_single_updates() -> None:
    rng = np.random.default_rng(1)
    test = MixtureSPRT(tau=0.1, sigma=0.2, min_samples=10)
    for _ in range(99):
        test.update("champion", float(rng.normal(0.5, 0.2)))
        test.update("challenger", float(rng.normal(0.7, 0.2)))
    assert test.p_value < 1e-6 and test.decision == "challenger"
    assert test.result().diff == pytest.approx(0.2, abs=0.06)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": 0.0},
        {"tau": 0.0},
        {"sigma": -1.0},
        {"min_effect": -0.1},
        {"min_samples": 1},
        {"max_samples": 10},
        {"non_inferiority_margin": -0.01},
    ],
)
def test_msprt_refuses_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        MixtureSPRT(**kwargs)  # type: ignore[arg-type]


def test_msprt_refuses_bad_input() -> None:
    test = MixtureSPRT()
    with pytest.raises(ValueError, match="group"):
        test.update("treatment", 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        test.update_many("champion", [1.0, float("nan")])


# -- sample size ---------------------------------------------------------------------------------
def test_sample_size_matches_textbook_values() -> None:
    # 2 (z_.975 + z_.8)^2 / d^2 with d in standard deviations: 1569.8 for d = 0.1; 62.8 for
    # d = 0.5 (Cohen's table gives 64 with the t correction); one-sided d = 0.1: 1236.5.
    assert sample_size(1.0, 0.1) == 1570
    assert sample_size(2.0, 0.2) == 1570  # only the ratio matters
    assert sample_size(1.0, 0.5) == 63
    assert sample_size(1.0, 0.1, two_sided=False) == 1237
    assert sample_size(1.0, 0.1, power=0.9) == 2102
    z = stats.norm.ppf
    assert sample_size(1.0, 0.1) == int(np.ceil(2 * (z(0.975) + z(0.8)) ** 2 / 0.01))
    with pytest.raises(ValueError):
        sample_size(0.0, 0.1)
    with pytest.raises(ValueError):
        sample_size(1.0, 0.1, power=1.0)
