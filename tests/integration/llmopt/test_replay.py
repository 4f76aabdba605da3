"""Replay on real routing data: bandit feedback only, and learning beats uniform random.

The data is the AlpacaEval file shipped in the package (``llmopt.routing_data.DEMO_DATA``: 802
prompts x 15 models, quality = probability of beating GPT-4-1106, list-price cost), so the test
needs nothing outside the repo.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

from llmopt.catalog import load_catalog
from llmopt.policy import Policy
from llmopt.replay import DEFAULT_WTP_SWEEP, run_replay
from llmopt.reward import reward
from llmopt.routing_data import DEMO_DATA, RoutingData, load_routing_data, routing_data_from_frame
from llmopt.schemas import Decision
from llmopt.types import ArmID, Features
from models.kinds import RECOMMENDED, make_policy

pytestmark = pytest.mark.integration


def factory(name: str):  # type: ignore[no-untyped-def]
    return lambda seed: make_policy(name, seed=seed)


@pytest.fixture(scope="module")
def alpaca() -> RoutingData:
    assert DEMO_DATA.is_file(), f"the shipped routing data is missing: {DEMO_DATA}"
    return load_routing_data(DEMO_DATA)


@pytest.fixture(scope="module")
def alpaca_result(alpaca: RoutingData) -> dict:  # type: ignore[type-arg]
    return run_replay(
        alpaca,
        {RECOMMENDED: factory(RECOMMENDED), "random": factory("random")},
        seed=42,
        catalog=load_catalog(),
    )


def test_recommended_policy_beats_uniform_random_at_equal_cost(alpaca_result: dict) -> None:  # type: ignore[type-arg]
    summary = alpaca_result["policies"][RECOMMENDED]["summary"]
    # Measured +0.055 quality (0.147 vs 0.092, i.e. +60%) at uniform random's cost, seed 42;
    # +0.053 to +0.056 over seeds 0-3. A policy that does not learn sits near +0.00: the
    # replayed random policy below measured +0.006 (seed 42), +0.006 to +0.016 (seeds 0-3).
    assert summary["quality_gain_vs_random_at_equal_cost"] > 0.035
    random_gain = alpaca_result["policies"]["random"]["summary"][
        "quality_gain_vs_random_at_equal_cost"
    ]
    assert random_gain is None or random_gain < 0.03


def test_result_document_contract(alpaca_result: dict, alpaca: RoutingData) -> None:  # type: ignore[type-arg]
    points = alpaca_result["policies"][RECOMMENDED]["points"]
    assert len(points) == len(DEFAULT_WTP_SWEEP)
    for p in points:
        assert {"willingness_to_pay", "avg_quality", "avg_cost_usd"} <= set(p)
        assert 0 <= p["avg_quality"] <= 1 and p["avg_cost_usd"] > 0
        # every AlpacaEval model is in the catalog, so a modelled latency is reported
        assert p["avg_latency_ms_modelled"] is not None and p["avg_latency_ms_modelled"] > 0
    singles = alpaca_result["baselines"]["single_models"]
    assert set(singles) == set(alpaca.models)
    for m, v in singles.items():
        j = alpaca.models.index(m)
        assert v["avg_quality"] == pytest.approx(alpaca.quality[:, j].mean())
        assert v["avg_cost_usd"] == pytest.approx(alpaca.cost_usd[:, j].mean())
    oracle = alpaca_result["baselines"]["oracle"]["max_quality"]
    assert oracle["avg_quality"] >= max(v["avg_quality"] for v in singles.values())
    # More willingness to pay buys more quality, in the large.
    assert points[-1]["avg_cost_usd"] > points[0]["avg_cost_usd"]
    assert points[-1]["avg_quality"] > points[0]["avg_quality"]


class Spy:
    """Wraps a policy; records every (arm, reward) it is taught."""

    name = "spy"

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.taught: list[tuple[ArmID, float]] = []

    def pull(self, arm_ids: Sequence[ArmID], context: Features | None = None) -> Decision:
        return self.inner.pull(arm_ids, context)

    def update(self, arm_id: ArmID, context: Features | None, reward: float) -> Spy:
        self.taught.append((arm_id, reward))
        self.inner.update(arm_id, context, reward)
        return self


def test_only_the_chosen_models_outcome_is_revealed() -> None:
    rng = np.random.default_rng(0)
    n, models = 60, ["alpha-x", "beta-y", "gamma-z"]  # names no catalog knows
    rows = [
        {
            "dataset": "synthetic",
            "split": "all",
            "sample_id": f"s{i}",
            "prompt": f"prompt {i}",
            "model": m,
            "quality": float(rng.random()),
            "cost_usd": float(rng.random() / 100),
            "input_chars": 10,
            "output_chars": 100,
        }
        for i in range(n)
        for m in models
    ]
    data = routing_data_from_frame(pd.DataFrame(rows))
    spies: list[Spy] = []

    def build(seed: int) -> Spy:
        spies.append(Spy(make_policy(RECOMMENDED, seed=seed)))
        return spies[-1]

    run_replay(data, {"spy": build}, wtps=(0.01,), seed=1)  # type: ignore[dict-item]
    (spy,) = spies
    assert len(spy.taught) == n  # one lesson per prompt: the chosen model's, nothing else
    order = np.random.default_rng(1).permutation(n)
    for i, (arm, r) in zip(order, spy.taught, strict=True):
        j = data.models.index(arm)
        expected = reward(data.quality[i, j], data.cost_usd[i, j], willingness_to_pay=0.01)
        assert r == pytest.approx(expected)


def test_bad_sweep_is_refused(alpaca: RoutingData) -> None:
    with pytest.raises(ValueError, match="willingness-to-pay"):
        run_replay(alpaca, {"random": factory("random")}, wtps=(0.0,))
