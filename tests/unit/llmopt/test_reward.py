from __future__ import annotations

import math

import pytest

from llmopt.reward import TradeOff, reward


def test_formula_quality_minus_cost_and_latency_penalties() -> None:
    r = reward(0.8, 0.002, 1500.0, willingness_to_pay=0.01, latency_weight=0.2)
    assert r == pytest.approx(0.8 - 0.2 - 0.3)


def test_infinite_willingness_to_pay_ignores_cost() -> None:
    assert reward(0.7, 123.0, willingness_to_pay=math.inf) == pytest.approx(0.7)


def test_zero_latency_weight_ignores_latency_and_missing_latency_is_fine() -> None:
    assert reward(0.5, 0.0, 10_000.0, willingness_to_pay=1.0) == 0.5
    assert reward(0.5, 0.0, None, willingness_to_pay=1.0, latency_weight=5.0) == 0.5


def test_paying_exactly_the_willingness_costs_one_unit_of_quality() -> None:
    assert reward(1.0, 0.05, willingness_to_pay=0.05) == pytest.approx(0.0)
    assert reward(0.0, 0.05, willingness_to_pay=0.05) == pytest.approx(-1.0)


def test_higher_willingness_never_lowers_reward() -> None:
    values = [reward(0.6, 0.01, willingness_to_pay=w) for w in (0.001, 0.01, 0.1, 1.0)]
    assert values == sorted(values)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quality": 1.01}, "quality"),
        ({"quality": -0.1}, "quality"),
        ({"quality": math.nan}, "quality"),
        ({"cost_usd": -0.001}, "cost_usd"),
        ({"cost_usd": math.inf}, "cost_usd"),
        ({"latency_ms": -1.0}, "latency_ms"),
        ({"willingness_to_pay": 0.0}, "willingness_to_pay"),
        ({"willingness_to_pay": -1.0}, "willingness_to_pay"),
        ({"latency_weight": -0.1}, "latency_weight"),
    ],
)
def test_bad_inputs_are_refused_by_name(kwargs: dict[str, float], message: str) -> None:
    args: dict[str, float] = {
        "quality": 0.5,
        "cost_usd": 0.001,
        "latency_ms": 100.0,
        "willingness_to_pay": 0.1,
        "latency_weight": 0.1,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        reward(
            args["quality"],
            args["cost_usd"],
            args["latency_ms"],
            willingness_to_pay=args["willingness_to_pay"],
            latency_weight=args["latency_weight"],
        )


def test_tradeoff_validates() -> None:
    with pytest.raises(ValueError):
        TradeOff(willingness_to_pay=0)
    assert TradeOff(willingness_to_pay=0.1).latency_weight == 0.0
