"""Budget pacing on a replayed day with a traffic peak: spend, refusals and quality.

A tenant with a daily budget sends replayed AlpacaEval prompts (shipped, ``llmopt/data``) for
three simulated UTC days; its traffic triples in a Gaussian peak around 15:00 UTC. Each answer's
quality and cost come from the data. The decisions go through serving's own parts on a
simulated clock: :class:`serving.router.ServingLoop` (the budget guard: only models whose
predicted cost fits what is left; nothing fits: a 402), :class:`serving.guards.BudgetLedger`
and :class:`serving.pacing.BudgetPacing` (the pacer, following the tenant's hourly traffic
forecast once two days are counted), with the recommended policy warm-started on 100 prompts
with every model's outcome (a user's evaluation: it teaches the prices too). Day 3 is measured.

Compared on the same prompts and arrival times:

- ``paced``: the default willingness to pay (0.05), paced;
- ``hard_cap``: the same, with the budget only as a hard cap (``LLMOPT_SERVING_BUDGET_PACING=0``);
- ``static``: 14 fixed willingness-to-pay values (0.001 to 0.05), uncapped; the best quality
  among those whose day-3 spend stays within the budget, chosen in hindsight, is the bar pacing
  must reach.

The budget is half of what the uncapped default spends on day 3 (measured in the same run).
Targets (issue 16): spend ends within 2% of the budget, no 402 before the day ends, quality at
least that of the best static willingness to pay within the same budget. Several seeds (prompt
order and arrival times); mean and spread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from statistics import mean
from typing import Any

import numpy as np

from bench._common import display_path
from llmopt.features import request_features
from llmopt.reward import TradeOff
from llmopt.routing_data import DEMO_DATA, RoutingData, load_routing_data
from llmopt.schemas import Feedback, RequestContext
from models.kinds import RECOMMENDED, make_policy
from serving.guards import BudgetExceededError, BudgetLedger
from serving.pacing import BudgetPacing
from serving.router import ServingLoop

NAME = "pacing"
TENANT = "acme"
DEFAULT_WTP = 0.05
DAYS = 3
WARM_PROMPTS = 100
STATIC_GRID = tuple(round(0.001 * (50 ** (k / 13)), 5) for k in range(14))
"""14 fixed willingness-to-pay values, geometric from 0.001 to 0.05 (steps of x1.35)."""
FULL: tuple[int, tuple[int, ...]] = (3000, (0, 1, 2))
QUICK: tuple[int, tuple[int, ...]] = (800, (0,))
"""(requests per day, seeds)."""
START = datetime(2025, 3, 3, tzinfo=UTC)


def hourly_rate(hour: float) -> float:
    """Relative traffic at ``hour`` (UTC): a base rate and a peak three times as high at 15:00."""
    return 1.0 + 2.0 * math.exp(-((hour - 15.0) ** 2) / (2 * 2.0**2))


def arrivals(rng: np.random.Generator, per_day: int) -> list[datetime]:
    """Arrival times of ``DAYS`` days, about ``per_day`` a day, following :func:`hourly_rate`."""
    grid = np.linspace(0, 24, 24 * 60, endpoint=False)
    weights = np.array([hourly_rate(h) for h in grid])
    weights /= weights.sum()
    out = []
    for day in range(DAYS):
        n = int(rng.poisson(per_day))
        minutes = np.sort(rng.choice(len(grid), size=n, p=weights) + rng.random(n))
        base = START + timedelta(days=day)
        out += [base + timedelta(minutes=float(m)) for m in minutes]
    return out


@dataclass
class Day:
    """What one simulated run did on the measured day."""

    spend: float
    quality_sum: float
    n: int
    refused: int
    first_refusal_h: float | None

    def as_dict(self, budget: float | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "spend_usd": round(self.spend, 5),
            "quality": round(self.quality_sum / self.n, 5),
            "requests": self.n,
            "refused_402": self.refused,
            "first_402_hour": None
            if self.first_refusal_h is None
            else round(self.first_refusal_h, 2),
        }
        if budget is not None:
            out["spend_over_budget"] = round(self.spend / budget, 4)
        return out


def simulate(
    data: RoutingData,
    features: Sequence[dict[str, float]],
    times: Sequence[datetime],
    prompts: Sequence[int],
    warm: Sequence[int],
    *,
    wtp: float,
    budget: float | None,
    pacing: bool,
    seed: int,
) -> Day:
    """Run the days; return the last day's figures (a refused request scores quality 0)."""
    clock = [times[0]]
    ledger = BudgetLedger(
        per_tenant={TENANT: budget} if budget is not None else None, now=lambda: clock[0]
    )
    pacer = BudgetPacing(ledger, base_wtp=wtp, now=lambda: clock[0]) if pacing else None
    loop = ServingLoop(
        make_policy(RECOMMENDED, seed=seed),
        data.models,
        default_tradeoff=TradeOff(willingness_to_pay=wtp),
    )
    for i in warm:
        for j, m in enumerate(data.models):
            loop.learn_outcome(
                m, features[i], input_tokens=0,
                quality=float(data.quality[i, j]), cost_usd=float(data.cost_usd[i, j]),
            )  # fmt: skip
    col = {m: j for j, m in enumerate(data.models)}
    last_day = (times[-1] - START).days
    day = Day(0.0, 0.0, 0, 0, None)
    for t, i in zip(times, prompts, strict=True):
        clock[0] = t
        measured = (t - START).days == last_day
        ctx = RequestContext(tenant=TENANT)
        if pacer is not None:
            paced = pacer.willingness_to_pay(TENANT, None)
            if paced is not None:
                ctx = RequestContext(tenant=TENANT, willingness_to_pay=paced[0])
        loop.budget_left = ledger.remaining(TENANT)
        try:
            decision = loop.decide(ctx, features=features[i])
        except BudgetExceededError:
            if measured:
                day.n += 1
                day.refused += 1
                if day.first_refusal_h is None:
                    day.first_refusal_h = (t - t.replace(hour=0, minute=0, second=0)).seconds / 3600
            continue
        j = col[decision.model]
        cost = float(data.cost_usd[i, j])
        predicted = loop.cost_model.predict(decision.model, 0) or 0.0
        ledger.reserve(TENANT, decision.decision_id, predicted)
        loop.feedback(
            Feedback(
                decision_id=decision.decision_id,
                quality=float(data.quality[i, j]),
                cost_usd=cost,
            )
        )
        ledger.settle(decision.decision_id, cost)
        if measured:
            day.n += 1
            day.spend += cost
            day.quality_sum += float(data.quality[i, j])
    return day


def _one_seed(
    data: RoutingData, features: list[dict[str, float]], seed: int, per_day: int
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    times = arrivals(rng, per_day)
    warm = list(rng.choice(data.n_prompts, size=WARM_PROMPTS, replace=False))
    rest = np.setdiff1d(np.arange(data.n_prompts), warm)
    prompts = [int(x) for x in rng.choice(rest, size=len(times))]

    def run(wtp: float, budget: float | None, pacing: bool) -> Day:
        return simulate(
            data, features, times, prompts, warm, wtp=wtp, budget=budget, pacing=pacing, seed=seed
        )

    free = run(DEFAULT_WTP, None, False)
    budget = free.spend / 2
    paced = run(DEFAULT_WTP, budget, True)
    capped = run(DEFAULT_WTP, budget, False)
    statics = {w: run(w, None, False) for w in STATIC_GRID}
    within = {w: d for w, d in statics.items() if d.spend <= budget}
    best_w = max(within, key=lambda w: within[w].quality_sum / within[w].n) if within else None
    best = within[best_w] if best_w is not None else None
    return {
        "seed": seed,
        "budget_usd": round(budget, 5),
        "uncapped_default": free.as_dict(None),
        "paced": paced.as_dict(budget),
        "hard_cap": capped.as_dict(budget),
        "static": {str(w): d.as_dict(budget) for w, d in statics.items()},
        "best_static_within_budget": {
            "willingness_to_pay": best_w,
            **(best.as_dict(budget) if best else {}),
        },
        "quality_paced_minus_best_static": (
            round(paced.quality_sum / paced.n - best.quality_sum / best.n, 5) if best else None
        ),
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": round(mean(values), 5),
        "min": round(min(values), 5),
        "max": round(max(values), 5),
    }


def run(*, quick: bool = False) -> list[dict[str, Any]]:
    """One row per seed, then a summary row (means and spreads over the seeds)."""
    per_day, seeds = QUICK if quick else FULL
    data = load_routing_data(DEMO_DATA)
    features = [request_features(p) for p in data.prompts]
    rows = [_one_seed(data, features, seed, per_day) for seed in seeds]
    paced_ratio = [r["paced"]["spend_over_budget"] for r in rows]
    gains = [
        r["quality_paced_minus_best_static"]
        for r in rows
        if r["quality_paced_minus_best_static"] is not None
    ]
    summary = {
        "summary": True,
        "data": display_path(DEMO_DATA),
        "policy": RECOMMENDED,
        "requests_per_day": per_day,
        "seeds": list(seeds),
        "paced_spend_over_budget": _spread(paced_ratio),
        "paced_402": sum(r["paced"]["refused_402"] for r in rows),
        "hard_cap_402": _spread([float(r["hard_cap"]["refused_402"]) for r in rows]),
        "hard_cap_first_402_hour": [r["hard_cap"]["first_402_hour"] for r in rows],
        "quality_paced_minus_hard_cap": _spread(
            [r["paced"]["quality"] - r["hard_cap"]["quality"] for r in rows]
        ),
        "quality_paced_minus_best_static": _spread(gains) if gains else None,
        "targets": {
            "spend_within_2pct": all(abs(x - 1) <= 0.02 for x in paced_ratio),
            "no_402": all(r["paced"]["refused_402"] == 0 for r in rows),
            "quality_at_least_best_static": bool(gains) and all(g >= 0 for g in gains),
        },
    }
    return [*rows, summary]


def summary(results: list[dict[str, Any]]) -> list[str]:
    """Lines for the console: the summary row's figures."""
    s = results[-1]
    q = s["quality_paced_minus_best_static"]
    return [
        f"paced spend / budget {s['paced_spend_over_budget']['mean']:.4f} "
        f"[{s['paced_spend_over_budget']['min']:.4f}, {s['paced_spend_over_budget']['max']:.4f}], "
        f"402s paced {s['paced_402']}, hard cap {s['hard_cap_402']['mean']:.0f} a day",
        "quality paced - best static within budget: "
        + (f"{q['mean']:+.4f} [{q['min']:+.4f}, {q['max']:+.4f}]" if q else "no static fits"),
        f"targets: {s['targets']}",
    ]
