"""Replay real per-prompt outcomes through the learning loop, with bandit feedback only.

For each willingness to pay of a sweep, prompts stream in a seeded random order through
decide -> feedback (the logged outcome of the *chosen* model only, never the others') -> learn,
from a cold start. Each policy yields one (average quality, average cost per prompt) point per
willingness to pay; baselines are every single model, uniform random, the zero router (convex hull
of the single models) and the oracle (per prompt, the model with the best reward in hindsight).

No source records latency: where the catalog knows every model, a modelled latency
(time to first token + output tokens / tokens per second, tokens = output chars / 4) is reported
as ``avg_latency_ms_modelled``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from llmopt.catalog import ModelCatalog
from llmopt.event_log import EventLog
from llmopt.features import estimate_tokens, request_features
from llmopt.frontier import (
    area_under_hull,
    cost_to_reach,
    lift_over_zero_router,
    quality_at_cost,
    upper_hull,
)
from llmopt.loop import LearningLoop
from llmopt.policy import Policy
from llmopt.reward import TradeOff
from llmopt.routing_data import RoutingData
from llmopt.schemas import Feedback, RequestContext

DEFAULT_WTP_SWEEP: tuple[float, ...] = (
    0.0001,
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
)
"""Willingness to pay (USD per unit quality) swept by default: from 'cost is everything' to
'quality is everything' for per-prompt costs between 1e-5 and 1e-2 USD, in steps of about 2x
(a router's best trade-offs sit where two models' rewards cross: a coarse sweep misses them)."""

PolicyFactory = Callable[[int], Policy]
"""Builds a fresh policy from a seed."""


@dataclass
class SweepPoint:
    """A policy's outcome at one willingness to pay."""

    willingness_to_pay: float
    avg_quality: float
    avg_cost_usd: float
    avg_reward: float
    avg_latency_ms_modelled: float | None
    model_share: dict[str, float] = field(default_factory=dict)


def compute_features(data: RoutingData) -> list[dict[str, float]]:
    """Request features of every prompt (computed once, reused across the sweep)."""
    return [request_features(p) for p in data.prompts]


def _latency_matrix(data: RoutingData, catalog: ModelCatalog | None) -> np.ndarray | None:
    """Modelled latency of every (prompt, model), or None if the catalog lacks a model."""
    if catalog is None or not all(m in catalog for m in data.models):
        return None
    ttft = np.array([catalog[m].ttft_ms for m in data.models])
    tps = np.array([catalog[m].tokens_per_second for m in data.models])
    out: np.ndarray = ttft[None, :] + (data.output_chars / 4.0) / tps[None, :] * 1000.0
    return out


def replay_policy(
    data: RoutingData,
    policy: Policy,
    willingness_to_pay: float,
    *,
    order: Sequence[int],
    features: Sequence[dict[str, float]],
    catalog: ModelCatalog | None = None,
    event_log: EventLog | None = None,
    on_step: Callable[[], None] | None = None,
    warm: Sequence[int] = (),
) -> SweepPoint:
    """Stream ``data`` once through ``policy`` at one willingness to pay.

    The prompts of ``warm`` are learnt first with *every* model's outcome (full information,
    like a user's offline evaluation: :meth:`LearningLoop.learn_outcome`); then the prompts
    of ``order`` go through decide -> feedback with bandit feedback, and only they are scored.
    """
    loop = LearningLoop(
        policy,
        data.models,
        catalog=catalog,
        event_log=event_log,
        default_tradeoff=TradeOff(willingness_to_pay=willingness_to_pay),
    )
    col = {m: j for j, m in enumerate(data.models)}
    latency = _latency_matrix(data, catalog)
    for i in warm:
        tokens = estimate_tokens(data.prompts[i])
        for j, m in enumerate(data.models):
            loop.learn_outcome(
                m,
                features[i],
                input_tokens=tokens,
                quality=float(data.quality[i, j]),
                cost_usd=float(data.cost_usd[i, j]),
                latency_ms=float(latency[i, j]) if latency is not None else None,
            )
    chosen = np.empty(len(order), dtype=np.intp)
    rewards = np.empty(len(order))
    for step, i in enumerate(order):
        ctx = RequestContext(tenant="replay", prompt=data.prompts[i])
        decision = loop.decide(ctx, features=features[i])
        j = col[decision.model]
        outcome = loop.feedback(
            Feedback(
                decision_id=decision.decision_id,
                quality=float(data.quality[i, j]),
                cost_usd=float(data.cost_usd[i, j]),
                latency_ms=float(latency[i, j]) if latency is not None else None,
            )
        )
        chosen[step] = j
        rewards[step] = outcome.reward
        if on_step is not None:
            on_step()
    rows = np.asarray(order)
    counts = np.bincount(chosen, minlength=len(data.models))
    return SweepPoint(
        willingness_to_pay=willingness_to_pay,
        avg_quality=float(data.quality[rows, chosen].mean()),
        avg_cost_usd=float(data.cost_usd[rows, chosen].mean()),
        avg_reward=float(rewards.mean()),
        avg_latency_ms_modelled=(
            float(latency[rows, chosen].mean()) if latency is not None else None
        ),
        model_share={
            m: round(float(c) / len(order), 4)
            for m, c in zip(data.models, counts, strict=True)
            if c
        },
    )


def baselines(data: RoutingData, wtps: Sequence[float]) -> dict[str, Any]:
    """Single models, uniform random, the zero router and the oracle."""
    q_mean = data.quality.mean(axis=0)
    c_mean = data.cost_usd.mean(axis=0)
    single = {
        m: {"avg_quality": float(q), "avg_cost_usd": float(c)}
        for m, q, c in zip(data.models, q_mean, c_mean, strict=True)
    }
    hull = upper_hull(zip(c_mean.tolist(), q_mean.tolist(), strict=True))
    oracle_points = []
    n = np.arange(data.n_prompts)
    for w in wtps:
        best = np.argmax(data.quality - data.cost_usd / w, axis=1)
        oracle_points.append(
            {
                "willingness_to_pay": w,
                "avg_quality": float(data.quality[n, best].mean()),
                "avg_cost_usd": float(data.cost_usd[n, best].mean()),
            }
        )
    # Max-quality oracle: per prompt, the cheapest among the models with the best quality.
    qmax = data.quality.max(axis=1, keepdims=True)
    masked_cost = np.where(data.quality >= qmax, data.cost_usd, np.inf)
    best_q = np.argmin(masked_cost, axis=1)
    best_model = max(single, key=lambda m: (single[m]["avg_quality"], -single[m]["avg_cost_usd"]))
    return {
        "single_models": single,
        "best_single_model": best_model,
        "uniform_random": {
            "avg_quality": float(q_mean.mean()),
            "avg_cost_usd": float(c_mean.mean()),
        },
        "zero_router": {"hull": [{"avg_cost_usd": c, "avg_quality": q} for c, q in hull]},
        "oracle": {
            "points": oracle_points,
            "max_quality": {
                "avg_quality": float(data.quality[n, best_q].mean()),
                "avg_cost_usd": float(data.cost_usd[n, best_q].mean()),
            },
        },
    }


def summarize_policy(points: Sequence[SweepPoint], base: dict[str, Any]) -> dict[str, Any]:
    """How a policy's frontier compares with uniform random, the zero router and the best model."""
    own = upper_hull((p.avg_cost_usd, p.avg_quality) for p in points)
    zero = [(h["avg_cost_usd"], h["avg_quality"]) for h in base["zero_router"]["hull"]]
    rnd = base["uniform_random"]
    best = base["single_models"][base["best_single_model"]]
    q_at_rnd = quality_at_cost(own, rnd["avg_cost_usd"])
    lo, hi = zero[0][0], zero[-1][0]
    # Cheapest point of the policy that reaches the best single model's quality, if any.
    reaching = [p for p in points if p.avg_quality >= best["avg_quality"]]
    cheapest_reaching = min(reaching, key=lambda p: p.avg_cost_usd) if reaching else None
    return {
        "quality_at_random_cost": q_at_rnd,
        "quality_gain_vs_random_at_equal_cost": (
            None if q_at_rnd is None else q_at_rnd - rnd["avg_quality"]
        ),
        "quality_gain_vs_zero_router": [
            (
                None
                if (zq := quality_at_cost(zero, p.avg_cost_usd)) is None
                else round(p.avg_quality - zq, 6)
            )
            for p in points
        ],
        "aiq_over_zero_router_cost_range": area_under_hull(own, lo, hi),
        "zero_router_aiq": area_under_hull(zero, lo, hi),
        "cost_saving_vs_best_model_at_equal_quality": (
            None
            if cheapest_reaching is None
            else 1.0 - cheapest_reaching.avg_cost_usd / best["avg_cost_usd"]
        ),
    }


def _rows(data: RoutingData, rows: Sequence[int]) -> RoutingData:
    """``data`` restricted to ``rows`` (for the baselines of the scored prompts)."""
    idx = np.asarray(rows, dtype=np.intp)
    return dataclasses.replace(
        data,
        sample_ids=[data.sample_ids[i] for i in idx],
        prompts=[data.prompts[i] for i in idx],
        quality=data.quality[idx],
        cost_usd=data.cost_usd[idx],
        output_chars=data.output_chars[idx],
    )


def margins(points: Sequence[SweepPoint], base: dict[str, Any]) -> dict[str, float | None]:
    """The benchmark protocol's three figures for one run.

    * ``mean_margin``: quality minus the zero router's at the same cost, averaged over every
      willingness-to-pay point (not just the best one);
    * ``best_point_lift``: the largest such margin (:func:`llmopt.frontier.lift_over_zero_router`);
    * ``cost_fraction_to_95pct_best``: least cost at which the points' hull reaches 95% of the
      best single model's quality, as a fraction of that model's cost (None: never).
    """
    hull = [(h["avg_cost_usd"], h["avg_quality"]) for h in base["zero_router"]["hull"]]
    pts = [(p.avg_cost_usd, p.avg_quality) for p in points]
    per_point = []
    for cost, quality in pts:
        ref = hull[0][1] if hull and cost < hull[0][0] else quality_at_cost(hull, cost)
        if ref is not None:
            per_point.append(quality - ref)
    best = base["single_models"][base["best_single_model"]]
    reach = cost_to_reach(pts, 0.95 * best["avg_quality"])
    return {
        "mean_margin": float(np.mean(per_point)) if per_point else None,
        "best_point_lift": lift_over_zero_router(pts, hull),
        "cost_fraction_to_95pct_best": (
            None if reach is None or not best["avg_cost_usd"] else reach / best["avg_cost_usd"]
        ),
    }


def _spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, standard deviation, range and the values of one figure over seeds."""
    known = [v for v in values if v is not None]
    if not known:
        return {"mean": None, "sd": None, "min": None, "max": None, "per_seed": list(values)}
    return {
        "mean": round(float(np.mean(known)), 6),
        "sd": round(float(np.std(known)), 6),
        "min": round(min(known), 6),
        "max": round(max(known), 6),
        "per_seed": [None if v is None else round(v, 6) for v in values],
    }


def _mean_points(runs: Sequence[Sequence[SweepPoint]]) -> list[SweepPoint]:
    """Point by point mean over seeds (model shares averaged too)."""
    out = []
    for same_wtp in zip(*runs, strict=True):
        lat = [p.avg_latency_ms_modelled for p in same_wtp]
        shares: dict[str, float] = {}
        for p in same_wtp:
            for m, v in p.model_share.items():
                shares[m] = shares.get(m, 0.0) + v / len(same_wtp)
        out.append(
            SweepPoint(
                willingness_to_pay=same_wtp[0].willingness_to_pay,
                avg_quality=float(np.mean([p.avg_quality for p in same_wtp])),
                avg_cost_usd=float(np.mean([p.avg_cost_usd for p in same_wtp])),
                avg_reward=float(np.mean([p.avg_reward for p in same_wtp])),
                avg_latency_ms_modelled=(
                    None if any(v is None for v in lat) else float(np.mean(lat))
                ),
                model_share={m: round(v, 4) for m, v in shares.items()},
            )
        )
    return out


def run_replay(
    data: RoutingData,
    policies: dict[str, PolicyFactory],
    *,
    wtps: Sequence[float] = DEFAULT_WTP_SWEEP,
    seed: int = 0,
    seeds: int = 1,
    warm_start: float = 0.0,
    catalog: ModelCatalog | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Replay every policy over the sweep; return the result document (see the CLI's JSON).

    ``seeds`` runs use the seeds ``seed`` .. ``seed + seeds - 1`` (prompt order and policies);
    each point is the mean over them and ``summary.protocol`` gives every figure's mean and
    spread. ``warm_start`` is the fraction of each run's prompts learnt first with every model's
    outcome; the points score only the prompts after it (and so do the baselines).
    """
    if not wtps or any(w <= 0 for w in wtps):
        raise ValueError("willingness-to-pay values must be > 0")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if not 0.0 <= warm_start < 1.0:
        raise ValueError(f"warm-start must be a fraction in [0, 1), got {warm_start}")
    started = time.perf_counter()
    features = compute_features(data)
    n_warm = int(round(warm_start * data.n_prompts))
    if data.n_prompts - n_warm < 1:
        raise ValueError("the warm start leaves no prompt to score")
    plans = []
    for k in range(seeds):
        order = np.random.default_rng(seed + k).permutation(data.n_prompts).tolist()
        warm, scored = order[:n_warm], order[n_warm:]
        plans.append((seed + k, warm, scored, baselines(_rows(data, scored), wtps)))
    base = plans[0][3]
    total = len(policies) * len(wtps) * seeds * (data.n_prompts + n_warm * (len(data.models) - 1))
    result: dict[str, Any] = {
        "data": {
            "source": data.source,
            "n_prompts": data.n_prompts,
            "dropped_prompts_missing_models": data.dropped_prompts,
            "models": data.models,
        },
        "seed": seed,
        "seeds": [p[0] for p in plans],
        "warm_start": {
            "fraction": warm_start,
            "prompts": n_warm,
            "scored_prompts": data.n_prompts - n_warm,
            "feedback": "full information: every model's outcome of each warm-start prompt",
        },
        "feedback": "bandit (only the chosen model's logged outcome is revealed)",
        "latency": "modelled from the catalog, not measured" if catalog else "not available",
        "policies": {},
        "baselines": base,
    }
    with _progress(progress, total) as advance:
        for name, factory in policies.items():
            runs: list[list[SweepPoint]] = []
            for run_seed, warm, scored, _ in plans:
                runs.append(
                    [
                        replay_policy(
                            data,
                            factory(run_seed * 100 + k),
                            w,
                            order=scored,
                            warm=warm,
                            features=features,
                            catalog=catalog,
                            on_step=advance,
                        )
                        for k, w in enumerate(wtps)
                    ]
                )
            points = _mean_points(runs) if seeds > 1 else runs[0]
            figures = [margins(run, plan[3]) for run, plan in zip(runs, plans, strict=True)]
            summary = summarize_policy(points, base)
            summary["protocol"] = {
                key: _spread([f[key] for f in figures])
                for key in ("mean_margin", "best_point_lift", "cost_fraction_to_95pct_best")
            }
            entry: dict[str, Any] = {"points": [asdict(p) for p in points], "summary": summary}
            if seeds > 1:
                entry["points_by_seed"] = [[asdict(p) for p in run] for run in runs]
            result["policies"][name] = entry
    result["elapsed_s"] = round(time.perf_counter() - started, 3)
    return result


class _progress:
    """A rich progress bar over ``total`` steps (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total
        self._bar: Any = None

    def __enter__(self) -> Callable[[], None] | None:
        if not self.enabled:
            return None
        from rich.progress import Progress  # noqa: PLC0415

        self._bar = Progress(transient=True)
        self._bar.__enter__()
        task = self._bar.add_task("replay", total=self.total)
        bar = self._bar
        counter = [0]

        def advance() -> None:
            counter[0] += 1
            if counter[0] % 200 == 0:
                bar.update(task, completed=counter[0])

        return advance

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
