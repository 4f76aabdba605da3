"""Budget pacing by willingness to pay, on a seeded simulated day of traffic."""

from __future__ import annotations

import json
import math
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest

from models.forecast import WorkloadForecaster
from models.pacer import BudgetPacer, profile_from_forecast
from models.state import Stateful

MENU = [(0.60, 0.0005), (0.80, 0.003), (0.90, 0.015)]  # (quality, mean cost USD) of 3 models
BUDGET = 24.0  # 4000 calls/day: all-medium ~12 USD, all-large ~60 USD
N_CALLS = 4000
DAY0 = datetime(2025, 3, 1, tzinfo=UTC)


def _choose(w: float) -> float:
    """Expected cost of the model a router picks at willingness to pay ``w``."""
    return max(MENU, key=lambda m: m[0] - m[1] / w)[1]


def _uniform_rate(_: float) -> float:
    return 1.0


def _peaky_rate(tau: float) -> float:
    """Busy afternoons, quiet nights (peak at 15:00 UTC)."""
    return 1.0 + 0.8 * math.sin(2 * math.pi * (tau - 0.375))


def _arrivals(rng: random.Random, rate: Callable[[float], float], n: int) -> list[float]:
    times: list[float] = []
    while len(times) < n:  # thinning
        tau = rng.random()
        if rng.random() * 1.8 < rate(tau):
            times.append(tau)
    return sorted(times)


@dataclass
class Day:
    spent: float
    spent_by: dict[float, float]  # day fraction -> spend so far
    calls_by: dict[float, int]


def _simulate_day(
    wtp: Callable[[datetime], float],
    observe: Callable[[float, datetime], object],
    *,
    day: int = 0,
    seed: int = 0,
    rate: Callable[[float], float] = _uniform_rate,
) -> Day:
    rng = random.Random(seed)
    marks = [0.25, 0.5, 0.8]
    spent, spent_by, calls_by = 0.0, {}, {}
    times = _arrivals(rng, rate, N_CALLS)
    for i, tau in enumerate(times):
        for m in marks:
            if tau >= m and m not in spent_by:
                spent_by[m], calls_by[m] = spent, i
        at = DAY0 + timedelta(days=day, seconds=tau * 86_400)
        cost = _choose(wtp(at)) * rng.lognormvariate(-0.125, 0.5)  # token counts vary
        observe(cost, at)
        spent += cost
    return Day(spent, spent_by, calls_by)


def _unpaced(w: float, seed: int = 0) -> Day:
    return _simulate_day(lambda _: w, lambda c, t: None, seed=seed)


@pytest.mark.parametrize("start_wtp", [0.5, 0.02])
@pytest.mark.parametrize("seed", [0, 1])
def test_pacer_hits_the_budget_where_a_fixed_wtp_misses(start_wtp: float, seed: int) -> None:
    fixed = _unpaced(start_wtp, seed)
    pacer = BudgetPacer(BUDGET, initial_wtp=start_wtp)
    paced = _simulate_day(pacer.willingness_to_pay, pacer.observe, seed=seed)
    # Measured: fixed 0.5 -> +150% (all-large), fixed 0.02 -> -50% (all-medium); paced <= 1%.
    assert abs(fixed.spent / BUDGET - 1) > 0.4
    assert abs(paced.spent / BUDGET - 1) < 0.1
    # Spread over the day: on plan at each checkpoint, budget not exhausted before 80%.
    assert paced.spent_by[0.8] < BUDGET
    for mark, spent in paced.spent_by.items():
        assert spent / BUDGET == pytest.approx(mark, abs=0.1), mark


def test_fixed_wtp_exhausts_early_and_the_pacer_does_not() -> None:
    fixed = _unpaced(0.5)
    assert fixed.spent_by[0.5] > BUDGET  # an unpaced tenant is out of money by noon
    pacer = BudgetPacer(BUDGET, initial_wtp=0.5)
    paced = _simulate_day(pacer.willingness_to_pay, pacer.observe)
    assert paced.spent_by[0.5] < 0.6 * BUDGET


def test_next_day_starts_from_the_learned_wtp() -> None:
    pacer = BudgetPacer(BUDGET, initial_wtp=0.5)
    _simulate_day(pacer.willingness_to_pay, pacer.observe, day=0, seed=0)
    second = _simulate_day(pacer.willingness_to_pay, pacer.observe, day=1, seed=1)
    assert pacer.day == (DAY0 + timedelta(days=1)).date()
    assert abs(second.spent / BUDGET - 1) < 0.03
    assert pacer.spent_today == pytest.approx(second.spent)
    # The break-even between medium (0.8, 0.003) and large (0.9, 0.015) is w = 0.12.
    assert 0.08 < pacer.to_dict()["state"]["w_day"] < 0.2


def test_traffic_profile_from_a_forecast_follows_traffic() -> None:
    forecaster = WorkloadForecaster(seasonality=24)
    rng = random.Random(11)
    for day in range(7):  # a week of hourly call counts of the same daily pattern
        times = _arrivals(random.Random(100 + day), _peaky_rate, N_CALLS)
        for h in range(24):
            forecaster.learn_one({"tenant": sum(h <= t * 24 < h + 1 for t in times)})
    midnight = DAY0 + timedelta(days=7)
    profile = profile_from_forecast(forecaster.forecast(24)["tenant"], midnight)
    assert max(profile) / min(profile) > 3  # the forecast saw the quiet nights

    shaped = BudgetPacer(BUDGET, initial_wtp=0.12, traffic_profile=profile)
    uniform = BudgetPacer(BUDGET, initial_wtp=0.12)
    seed = rng.randrange(1000)
    res_shaped = _simulate_day(
        shaped.willingness_to_pay, shaped.observe, day=7, seed=seed, rate=_peaky_rate
    )
    res_uniform = _simulate_day(
        uniform.willingness_to_pay, uniform.observe, day=7, seed=seed, rate=_peaky_rate
    )
    assert abs(res_shaped.spent / BUDGET - 1) < 0.1
    assert abs(res_uniform.spent / BUDGET - 1) < 0.1

    def worst_gap(res: Day) -> float:  # spend share vs traffic share at the checkpoints
        return max(abs(res.spent_by[m] / BUDGET - res.calls_by[m] / N_CALLS) for m in res.spent_by)

    # Spending in step with traffic keeps the price steady; the uniform plan fights traffic.
    assert worst_gap(res_shaped) < 0.05
    assert worst_gap(res_shaped) < worst_gap(res_uniform) - 0.03


def test_control_direction_and_clipping() -> None:
    noon = DAY0 + timedelta(hours=12)
    ahead = BudgetPacer(10.0, initial_wtp=1.0, integral_gain=0.0).observe(7.0, noon)
    behind = BudgetPacer(10.0, initial_wtp=1.0, integral_gain=0.0).observe(3.0, noon)
    assert ahead.willingness_to_pay(noon) == pytest.approx(math.exp(-20 * 0.2))
    assert behind.willingness_to_pay(noon) == pytest.approx(math.exp(20 * 0.2))
    clipped = BudgetPacer(10.0, initial_wtp=1.0, min_wtp=0.5, max_wtp=2.0)
    assert clipped.observe(9.0, noon).willingness_to_pay(noon) == 0.5
    late = DAY0 + timedelta(hours=23)
    assert BudgetPacer(10.0, initial_wtp=1.0, max_wtp=2.0).willingness_to_pay(late) == 2.0


def test_query_frequency_does_not_change_the_trajectory() -> None:
    a = BudgetPacer(BUDGET, initial_wtp=0.3)
    b = BudgetPacer(BUDGET, initial_wtp=0.3)
    rng = random.Random(5)
    for tau in sorted(rng.random() for _ in range(300)):
        at = DAY0 + timedelta(seconds=tau * 86_400)
        for _ in range(rng.randrange(1, 4)):  # b is asked more often than a
            wb = b.willingness_to_pay(at - timedelta(seconds=rng.uniform(0, 60)))
        wa = a.willingness_to_pay(at)
        wb = b.willingness_to_pay(at)
        assert wa == pytest.approx(wb, rel=1e-9)
        a.observe(0.02, at)
        b.observe(0.02, at)


def test_day_rollover_resets_spend_and_keeps_wtp() -> None:
    pacer = BudgetPacer(10.0, initial_wtp=1.0, integral_gain=0.0)
    pacer.observe(12.0, DAY0 + timedelta(hours=23))  # 20% over at the end of the day
    next_day = DAY0 + timedelta(days=1, minutes=1)
    w = pacer.willingness_to_pay(next_day)
    assert pacer.spent_today == 0.0 and pacer.day == next_day.date()
    assert pacer.to_dict()["state"]["w_day"] == pytest.approx(math.exp(-20 * 0.2))
    assert w == pytest.approx(math.exp(-20 * 0.2) * math.exp(20 / 1440), rel=1e-3)
    other_tz = timezone(timedelta(hours=-5))  # same instant in another zone: same UTC day
    assert pacer.willingness_to_pay(next_day.astimezone(other_tz)) == pytest.approx(w)


@pytest.mark.parametrize("how", ["pickle", "dict"])
def test_round_trip_continues_identically(how: str) -> None:
    pacer = BudgetPacer(BUDGET, initial_wtp=0.4, traffic_profile=[1.0] * 12 + [2.0] * 12)
    rng = random.Random(0)
    stamps = [DAY0 + timedelta(seconds=rng.uniform(0, 2 * 86_400)) for _ in range(400)]
    stamps.sort()
    for at in stamps[:200]:
        pacer.observe(_choose(pacer.willingness_to_pay(at)), at)
    if how == "pickle":
        copy = pickle.loads(pickle.dumps(pacer))
    else:
        copy = Stateful.from_dict(json.loads(json.dumps(pacer.to_dict())))
    assert isinstance(copy, BudgetPacer)
    for at in stamps[200:]:
        w = pacer.willingness_to_pay(at)
        assert copy.willingness_to_pay(at) == w
        pacer.observe(_choose(w), at)
        copy.observe(_choose(w), at)
    assert copy.to_dict() == pacer.to_dict()


def test_clone_starts_over_with_same_hyperparameters() -> None:
    pacer = BudgetPacer(5.0, initial_wtp=0.3, gain=10.0, traffic_profile=[1.0, 3.0])
    pacer.observe(4.0, DAY0 + timedelta(hours=1))
    fresh = pacer.clone()
    assert fresh.to_dict()["params"] == pacer.to_dict()["params"]
    assert fresh.spent_today == 0.0 and fresh.day is None
    assert pacer.to_dict()["kind"] == "budget_pacer"


def test_target_curve() -> None:
    pacer = BudgetPacer(10.0, initial_wtp=1.0, traffic_profile=[1.0, 3.0])
    assert pacer.target_share(DAY0 + timedelta(hours=6)) == pytest.approx(0.125)
    assert pacer.target_spend(DAY0 + timedelta(hours=18)) == pytest.approx(6.25)
    assert BudgetPacer(10.0, initial_wtp=1.0).target_share(DAY0 + timedelta(hours=6)) == 0.25


def test_profile_from_forecast() -> None:
    at = datetime(2025, 1, 1, 20, 30, tzinfo=UTC)
    prof = profile_from_forecast([float(h) for h in range(30)], at)
    assert prof[20] == 0.0 and prof[0] == 4.0 and len(prof) == 24
    with pytest.raises(ValueError, match="24 hourly"):
        profile_from_forecast([1.0] * 23, at)
    with pytest.raises(ValueError, match="traffic forecast"):
        profile_from_forecast([-1.0] * 24, at)


def test_bad_input_is_refused_and_changes_nothing() -> None:
    pacer = BudgetPacer(10.0, initial_wtp=1.0)
    pacer.observe(1.0, DAY0 + timedelta(days=1, hours=2))
    before = pacer.to_dict()
    t = DAY0 + timedelta(days=1, hours=3)
    for cost, match in [(math.nan, "cost_usd"), (-0.1, "cost_usd"), (math.inf, "cost_usd")]:
        with pytest.raises(ValueError, match=match):
            pacer.observe(cost, t)
    with pytest.raises(ValueError, match="timezone-aware"):
        pacer.observe(0.1, datetime(2025, 3, 2, 3))  # noqa: DTZ001
    with pytest.raises(ValueError, match="timezone-aware"):
        pacer.willingness_to_pay(datetime(2025, 3, 2, 3))  # noqa: DTZ001
    with pytest.raises(ValueError, match="time went backwards"):
        pacer.observe(0.1, DAY0)
    with pytest.raises(ValueError, match="datetime"):
        pacer.willingness_to_pay("2025-03-02")  # type: ignore[arg-type]
    assert pacer.to_dict() == before


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"daily_budget_usd": 0.0}, "daily_budget_usd"),
        ({"daily_budget_usd": math.nan}, "daily_budget_usd"),
        ({"initial_wtp": -1.0}, "initial_wtp"),
        ({"initial_wtp": 1000.0}, "min_wtp <= initial_wtp <= max_wtp"),
        ({"min_wtp": 0.0}, "min_wtp"),
        ({"max_wtp": math.inf}, "max_wtp"),
        ({"gain": -1.0}, "gain"),
        ({"integral_gain": math.nan}, "integral_gain"),
        ({"traffic_profile": []}, "traffic_profile"),
        ({"traffic_profile": [0.0, 0.0]}, "traffic_profile"),
        ({"traffic_profile": [1.0, -1.0]}, "traffic_profile"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"daily_budget_usd": 10.0, "initial_wtp": 1.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        BudgetPacer(**args)  # type: ignore[arg-type]


def test_plan_from_first_call_spends_over_the_rest_of_the_first_day_only() -> None:
    noon = datetime(2025, 1, 1, 12, tzinfo=UTC)
    late = BudgetPacer(24.0, initial_wtp=0.1, plan_from_first_call=True)
    midnight = BudgetPacer(24.0, initial_wtp=0.1)
    for pacer in (late, midnight):
        pacer.willingness_to_pay(noon)
    # created at noon with nothing spent: on plan, versus half a day behind
    assert late.target_share(noon) == 0.0 and late.willingness_to_pay(noon) == pytest.approx(0.1)
    assert midnight.target_share(noon) == pytest.approx(0.5)
    assert midnight.willingness_to_pay(noon) > 1.0
    assert late.target_share(noon + timedelta(hours=6)) == pytest.approx(0.5)
    # the state keeps the offset; the next day starts at midnight again
    copy = Stateful.from_dict(json.loads(json.dumps(late.to_dict())))
    assert copy.target_share(noon + timedelta(hours=6)) == pytest.approx(0.5)
    next_day = datetime(2025, 1, 2, 6, tzinfo=UTC)
    late.willingness_to_pay(next_day)
    assert late.target_share(next_day) == pytest.approx(0.25)
