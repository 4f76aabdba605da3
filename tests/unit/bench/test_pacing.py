"""The pacing benchmark's simulation on a small synthetic file: pacing spends the budget without
refusals where the hard cap refuses, through serving's own loop, ledger and pacer."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench import pacing
from llmopt.features import request_features
from llmopt.routing_data import RoutingData, routing_data_from_frame

MODELS = {"cheap": (0.5, 0.0001), "mid": (0.7, 0.001), "top": (0.8, 0.01)}


def _data(n: int = 60) -> RoutingData:
    rng = np.random.default_rng(0)
    rows = [
        {
            "dataset": "synthetic",
            "split": "test",
            "sample_id": str(i),
            "prompt": f"question {i}",
            "model": m,
            "quality": float(np.clip(q + rng.normal(0, 0.05), 0, 1)),
            "cost_usd": c,
            "input_chars": 10,
            "output_chars": 100,
        }
        for i in range(n)
        for m, (q, c) in MODELS.items()
    ]
    return routing_data_from_frame(pd.DataFrame(rows))


def test_pacing_spends_the_budget_without_refusals_where_the_hard_cap_refuses() -> None:
    data = _data()
    features = [request_features(p) for p in data.prompts]
    rng = np.random.default_rng(1)
    times = pacing.arrivals(rng, 600)
    prompts = [int(x) for x in rng.integers(10, data.n_prompts, size=len(times))]
    warm = list(range(10))

    def run(budget: float | None, paced: bool) -> pacing.Day:
        return pacing.simulate(
            data, features, times, prompts, warm, wtp=0.05, budget=budget, pacing=paced, seed=0
        )

    free = run(None, False)
    budget = free.spend / 3
    paced, capped = run(budget, True), run(budget, False)
    assert free.refused == 0 and capped.refused > 0 and capped.first_refusal_h is not None
    assert paced.refused == 0
    assert abs(paced.spend / budget - 1) < 0.1
    assert paced.quality_sum > capped.quality_sum  # refused requests score 0


def test_arrivals_peak_in_the_afternoon() -> None:
    times = pacing.arrivals(np.random.default_rng(0), 3000)
    hours = np.array([t.hour for t in times])
    assert (hours == 15).sum() > 2 * (hours == 3).sum()
