from __future__ import annotations

import math
import pickle
import random

import pytest

from llmopt.catalog import load_catalog
from llmopt.cost_model import CostModel


def test_an_unpriced_model_is_learned_from_observed_costs() -> None:
    cm = CostModel(None)
    assert cm.predict("private-model", 1000) is None
    rng = random.Random(0)
    for _ in range(50):  # cost = 2e-6 per input token + 1e-4 per call, with noise
        t = rng.randint(100, 3000)
        cm.learn("private-model", t, 2e-6 * t + 1e-4 + rng.gauss(0, 1e-6))
    for t in (200, 1000, 2500):
        assert cm.predict("private-model", t) == pytest.approx(2e-6 * t + 1e-4, rel=0.02)


def test_a_priced_model_starts_at_list_price_and_follows_the_workload() -> None:
    cm = CostModel(load_catalog())
    spec = load_catalog()["gpt-4o-mini"]
    assert cm.predict("gpt-4o-mini", 500) == pytest.approx(spec.expected_cost_usd(500, 256))
    for t in range(100, 2100, 100):  # multiple-choice answers: 2 output tokens
        cm.learn("gpt-4o-mini", t, spec.expected_cost_usd(t, 2))
    assert cm.predict("gpt-4o-mini", 1500) == pytest.approx(
        spec.expected_cost_usd(1500, 2), rel=0.1
    )
    # The shared correction reaches a priced model never observed (same workload).
    other = load_catalog()["gpt-4.1"]
    assert cm.predict("gpt-4.1", 1000) == pytest.approx(other.expected_cost_usd(1000, 2), rel=0.1)
    assert cm.output_tokens() < 20


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_bad_costs_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="cost_usd"):
        CostModel(None).learn("m", 100, bad)


def test_predictions_are_never_negative() -> None:
    rng = random.Random(1)
    for _ in range(50):  # noisy, even decreasing cost-length relations
        cm = CostModel(None)
        for _ in range(rng.randint(1, 6)):
            cm.learn("m", rng.randint(10, 5000), rng.random() * 0.01)
        for t in (0, 1, 100, 10_000, 1_000_000):
            assert cm.predict("m", t) >= 0.0  # type: ignore[operator]


def test_cached_coefficients_follow_every_learn_forget_and_pickle() -> None:
    cm = CostModel(load_catalog())
    list_price = cm.predict("gpt-4o-mini", 2000)
    other = cm.predict("gpt-4o", 2000)
    assert cm.predict("gpt-4o-mini", 2000) == list_price  # cached: the same number
    for t in (500, 1000, 2000, 4000):  # short answers: cheaper than the list-price prior
        cm.learn("gpt-4o-mini", t, 0.15e-6 * t + 0.6e-6 * 10)
    learned = cm.predict("gpt-4o-mini", 2000)
    assert learned is not None and list_price is not None and learned < list_price
    # the answer length learned from one priced model moves every priced model's prior
    assert cm.predict("gpt-4o", 2000) != other
    clone = pickle.loads(pickle.dumps(cm))
    assert clone.predict("gpt-4o-mini", 2000) == learned
    cm.forget("gpt-4o-mini")
    forgot = cm.predict("gpt-4o-mini", 2000)
    assert forgot is not None and forgot != learned  # its own fit is gone
    assert clone.predict("gpt-4o-mini", 2000) == learned  # the copy kept its own
