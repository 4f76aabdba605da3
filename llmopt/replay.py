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

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from llmopt.catalog import ModelCatalog
from llmopt.event_log import EventLog
from llmopt.features import request_features
from llmopt.frontier import area_under_hull, quality_at_cost, upper_hull
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
) -> SweepPoint:
    """Stream ``data`` once through ``policy`` at one willingness to pay."""
    loop = LearningLoop(
        policy,
        data.models,
        catalog=catalog,
        event_log=event_log,
        default_tradeoff=TradeOff(willingness_to_pay=willingness_to_pay),
    )
    col = {m: j for j, m in enumerate(data.models)}
    latency = _latency_matrix(data, catalog)
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


def run_replay(
    data: RoutingData,
    policies: dict[str, PolicyFactory],
    *,
    wtps: Sequence[float] = DEFAULT_WTP_SWEEP,
    seed: int = 0,
    catalog: ModelCatalog | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Replay every policy over the sweep; return the result document (see the CLI's JSON)."""
    if not wtps or any(w <= 0 for w in wtps):
        raise ValueError("willingness-to-pay values must be > 0")
    started = time.perf_counter()
    features = compute_features(data)
    order = np.random.default_rng(seed).permutation(data.n_prompts).tolist()
    base = baselines(data, wtps)
    total = len(policies) * len(wtps) * data.n_prompts
    result: dict[str, Any] = {
        "data": {
            "source": data.source,
            "n_prompts": data.n_prompts,
            "dropped_prompts_missing_models": data.dropped_prompts,
            "models": data.models,
        },
        "seed": seed,
        "feedback": "bandit (only the chosen model's logged outcome is revealed)",
        "latency": "modelled from the catalog, not measured" if catalog else "not available",
        "policies": {},
        "baselines": base,
    }
    with _progress(progress, total) as advance:
        for name, factory in policies.items():
            points = [
                replay_policy(
                    data,
                    factory(seed + k),
                    w,
                    order=order,
                    features=features,
                    catalog=catalog,
                    on_step=advance,
                )
                for k, w in enumerate(wtps)
            ]
            result["policies"][name] = {
                "points": [asdict(p) for p in points],
                "summary": summarize_policy(points, base),
            }
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
