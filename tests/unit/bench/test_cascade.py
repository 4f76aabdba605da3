"""bench/cascade.py: the verifiers, the cascade replay and its cost to reach 95% of the best."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pandas as pd
import pytest

from bench.cascade import (
    NOISY,
    NOISY_ACCURACY,
    OPTIMISTIC,
    SINGLE_SHOT,
    ZERO_ROUTER,
    CascadePoint,
    Verifier,
    compare,
    replay_cascade,
)
from llmopt.catalog import load_catalog
from llmopt.routing_data import RoutingData, routing_data_from_frame
from llmopt.schemas import Decision
from llmopt.types import ArmID, Features

CHEAP, BIG = "gpt-4o-mini", "gpt-4o"  # catalog models: priced before their first call
CHEAP_COST, BIG_COST = 0.0001, 0.005


class Picks:
    """A policy that always chooses ``model`` (the cascade's target)."""

    name = "picks"

    def __init__(self, model: ArmID) -> None:
        self.model = model

    def pull(self, arm_ids: Sequence[ArmID], context: Features | None = None) -> Decision:
        return Decision(model=self.model, propensity=1.0, policy_name=self.name)

    def update(self, arm_id: ArmID, context: Features | None, reward: float) -> Picks:
        return self


def world(cheap_right: Sequence[bool]) -> RoutingData:
    """One prompt per entry: the cheap model right (1) or wrong (0) as given, the big one right."""
    rows = [
        dict(dataset="t", split="s", sample_id=f"p{i:04d}", prompt=f"question {i}?", model=m,
             quality=q, cost_usd=c, input_chars=12, output_chars=40)
        for i, right in enumerate(cheap_right)
        for m, q, c in ((CHEAP, float(right), CHEAP_COST), (BIG, 1.0, BIG_COST))
    ]  # fmt: skip
    return routing_data_from_frame(pd.DataFrame(rows))


def replay(
    data: RoutingData, target: ArmID, verifier: Verifier = OPTIMISTIC, wtp: float = 1.0
) -> CascadePoint:
    return replay_cascade(
        data,
        Picks(target),
        wtp,
        verifier,
        order=range(data.n_prompts),
        features=[{"bias": 1.0} for _ in range(data.n_prompts)],
        seed=3,
        catalog=load_catalog(),
    )


def test_the_optimistic_verifier_reports_the_true_quality() -> None:
    rng = random.Random(0)
    assert [OPTIMISTIC.check(q, rng) for q in (0.0, 0.3, 0.7, 1.0)] == [0.0, 0.3, 0.7, 1.0]
    assert "optimistic verifier" in OPTIMISTIC.label


def test_the_noisy_verifier_is_right_at_its_configured_rate() -> None:
    rng = random.Random(0)
    truth = [rng.random() for _ in range(20_000)]
    verdicts = [NOISY.check(q, rng) for q in truth]
    assert set(verdicts) == {0.0, 1.0}
    right = sum((v == 1.0) == (q >= 0.5) for q, v in zip(truth, verdicts, strict=True))
    assert right / len(truth) == pytest.approx(NOISY_ACCURACY, abs=0.01)


def test_a_perfect_cheap_model_is_accepted_and_costs_its_price() -> None:
    data = world([True] * 400)
    point = replay(data, BIG)
    assert point.two_step == 1.0 and point.avg_quality == 1.0
    # it escalates only to explore (the learner tries each action; epsilon decays to 1%)
    assert point.escalated < 0.05
    assert point.avg_cost_usd == pytest.approx(CHEAP_COST + point.escalated * BIG_COST)
    assert point.wrong_escalations == point.escalated and point.missed_escalations is None


def test_a_one_step_plan_when_the_policy_picks_the_cheapest_model() -> None:
    point = replay(world([True, False] * 50), CHEAP)
    assert point.two_step == 0.0 and point.escalated == 0.0
    assert point.avg_cost_usd == pytest.approx(CHEAP_COST) and point.avg_quality == 0.5


def test_the_noisy_verifier_escalates_wrongly_at_about_its_error_rate() -> None:
    data = world([True, False] * 600)
    optimistic = replay(data, BIG)
    noisy = replay(data, BIG, NOISY)
    assert optimistic.check_errors == 0.0 and optimistic.wrong_escalations is not None
    assert optimistic.wrong_escalations < 0.05 and optimistic.avg_quality > 0.97
    assert noisy.check_errors == pytest.approx(1 - NOISY_ACCURACY, abs=0.04)
    # the learned rule escalates on "fail": a passing cheap answer is escalated when the check
    # wrongly fails it, a failing one accepted when it wrongly passes it
    assert noisy.wrong_escalations == pytest.approx(1 - NOISY_ACCURACY, abs=0.06)
    assert noisy.missed_escalations == pytest.approx(1 - NOISY_ACCURACY, abs=0.06)
    assert noisy.avg_quality < optimistic.avg_quality


def test_cost_to_95pct_of_the_best_model_beside_single_shot_and_the_zero_router() -> None:
    data = world([i % 10 != 0 for i in range(300)])  # cheap right 90%: best is BIG at 1.0
    rows = {r["variant"]: r for r in compare(data, wtps=(0.001, 0.01, 0.1, 1.0), seeds=[0])}
    assert set(rows) == {SINGLE_SHOT, OPTIMISTIC.variant, NOISY.variant, ZERO_ROUTER}
    # zero router: mixing (cheap 0.9) and (big 1.0) half and half reaches 0.95
    zero = rows[ZERO_ROUTER]["cost_fraction_to_95pct_best"]
    assert zero == pytest.approx((CHEAP_COST + BIG_COST) / 2 / BIG_COST)
    optimistic = rows[OPTIMISTIC.variant]["cost_fraction_to_95pct_best"]
    assert optimistic["per_seed"][0] is not None and optimistic["mean"] < zero
    assert rows[OPTIMISTIC.variant]["label"].startswith("optimistic verifier")
    for row in rows.values():
        assert row["best_single_model"] == BIG and row["target_quality"] == pytest.approx(0.95)
