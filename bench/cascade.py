"""Cascades in replay, FrugalGPT-style: cost to reach 95% of the best model's quality (issue 16).

Each prompt of a routing file goes through what ``/decide`` with ``"mode": "cascade"`` does
(:meth:`serving.router.Router._plan` over :class:`serving.cascade.ServedCascades`): the
recommended policy picks the model it would serve (the *target*); when a cheaper model is priced
(the loop's cost model, learnt from the costs seen so far), the plan first calls the cheapest
one, and a **check** of its answer decides, through the plan's ``escalate_on`` buckets (the
Q-learning rule, sampled epsilon-greedily per request), whether to escalate to the target. The
feedback is what a client of the service sends, and nothing else (bandit feedback, cold start):

* step 0 (the cheap call): the check's result as its quality, with its cost; the policy learns it
  as an ordinary feedback of the cheap model and the cascade as step 0's feedback;
* step 1 (only if escalated): the target answer's quality from the data, with its cost.

A cascade's cost is the sum of every call's cost; its quality is the returned answer's quality
in the data. Two checks:

* ``optimistic`` (**optimistic verifier**): the check sees the cheap answer's *true* quality in
  the data. No real check is that good: it is an upper bound of what a cascade can do;
* ``noisy``: a pass/fail check (pass: quality >= ``PASS_QUALITY``) right ``NOISY_ACCURACY`` (80%)
  of the time: its verdict is flipped with probability 0.2, and it reports 1.0 (pass) or 0.0.

The willingness to pay is swept (:data:`llmopt.replay.DEFAULT_WTP_SWEEP`): it sets both the
policy's trade-off and the cascade's (escalate where the expected quality gain beats the extra
cost / willingness to pay). Per seed, the sweep's points give the cost to reach 95% of the best
single model's quality as a fraction of that model's cost (:func:`llmopt.replay.margins`, the
definition every routing benchmark uses: least cost on the points' upper hull). Beside it:
single-shot routing (the recommended policy through :func:`llmopt.replay.run_replay`, same
seeds, prompt orders and policy seeds) and the zero router (the single models' hull). Also
reported: the same fraction for 90% of the best model's quality (for variants that never reach
95%), the highest quality any point reaches as a share of the best model's, and, per point, how
often the plan had a cheap step, escalated, escalated a passing answer or accepted a failing one.

Target (issue 16; reported, not asserted): on RouterBench, the optimistic-verifier cascade reaches
95% of the best model's quality at <= 1/4 of its cost (mean over seeds); the noisy-verifier
figure is reported beside it. ``SEEDS`` seeds (mean and spread); ``--quick``: one seed, the first
``QUICK_PROMPTS`` prompts, ``QUICK_WTPS``. A routing file that is missing is skipped with a note.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import SEED, SHIPPED_DATA, _missing, _note, display_path, routing_dir
from bench.routing import QUICK_PROMPTS, QUICK_WTPS, _subsample
from llmopt.catalog import ModelCatalog, load_catalog
from llmopt.features import estimate_tokens
from llmopt.frontier import cost_to_reach
from llmopt.loop import LearningLoop
from llmopt.policy import Policy
from llmopt.replay import (
    DEFAULT_WTP_SWEEP,
    SweepPoint,
    _spread,
    baselines,
    compute_features,
    margins,
    run_replay,
)
from llmopt.reward import TradeOff, reward
from llmopt.routing_data import RoutingData, load_routing_data
from llmopt.schemas import Feedback, RequestContext
from llmopt.tasks import task_type
from llmopt.types import ArmID
from models.kinds import RECOMMENDED, make_policy
from serving.cascade import ServedCascades

NAME = "cascade"
FILES = ("routerbench_arc_winogrande.parquet", SHIPPED_DATA.name)
"""The routing files replayed: RouterBench (not shipped) and the shipped AlpacaEval file."""
TARGET_FILE = "routerbench_arc_winogrande"
TARGET_QUALITY_SHARE = 0.95
LOWER_QUALITY_SHARE = 0.90
"""A second bar, for variants that never reach 95% (same definition, lower quality)."""
TARGET_COST_FRACTION = 0.25
"""Optimistic-verifier cascade on RouterBench: 95% of the best model's quality at <= 1/4 of its
cost (single-shot zero router: 0.45)."""
SEEDS = 5
PASS_QUALITY = 0.5
"""A cheap answer passes the check when its quality is at least this (the lowest quality bucket
of serving's cascades is ``[0, 0.5)``)."""
NOISY_ACCURACY = 0.8
SINGLE_SHOT = "single_shot"
ZERO_ROUTER = "zero_router"
FIGURES = ("cost_fraction_to_95pct_best", "mean_margin", "best_point_lift")


@dataclass(frozen=True)
class Verifier:
    """The client's check of the cheap answer: what it reports as step 0's quality.

    ``accuracy`` None: the true quality (the optimistic verifier); otherwise a pass/fail verdict
    (1.0 or 0.0; pass: quality >= :data:`PASS_QUALITY`) that is right with that probability.
    """

    name: str
    label: str
    accuracy: float | None = None

    def check(self, quality: float, rng: random.Random) -> float:
        """The quality the check reports for an answer whose true quality is ``quality``."""
        if self.accuracy is None:
            return quality
        passed = quality >= PASS_QUALITY
        if rng.random() >= self.accuracy:
            passed = not passed
        return 1.0 if passed else 0.0

    @property
    def variant(self) -> str:
        """The variant's name in the results, e.g. ``cascade_optimistic_verifier``."""
        return f"cascade_{self.name}_verifier"


OPTIMISTIC = Verifier(
    "optimistic",
    "optimistic verifier: the check sees the cheap answer's true quality (an upper bound)",
)
NOISY = Verifier(
    "noisy",
    f"noisy verifier: a pass/fail check (quality >= {PASS_QUALITY}) right "
    f"{NOISY_ACCURACY:.0%} of the time",
    NOISY_ACCURACY,
)
VERIFIERS = (OPTIMISTIC, NOISY)


@dataclass
class CascadePoint(SweepPoint):
    """A cascade's outcome at one willingness to pay, with how often it escalated.

    Shares of all prompts: ``two_step`` (the plan had a cheap step before the target),
    ``escalated``. Rates over the two-step prompts: ``wrong_escalations``, of those whose cheap
    answer passed in truth (quality >= :data:`PASS_QUALITY`), the share escalated anyway;
    ``missed_escalations``, of those whose cheap answer failed in truth, the share accepted;
    ``check_errors``, the share of checks whose pass/fail verdict was wrong (None: no such
    prompt).
    """

    two_step: float = 0.0
    escalated: float = 0.0
    wrong_escalations: float | None = None
    missed_escalations: float | None = None
    check_errors: float | None = None


def cheapest_first(loop: LearningLoop, ctx: RequestContext, target: ArmID) -> ArmID | None:
    """The plan's first model, as :meth:`serving.router.Router._plan` picks it.

    The cheapest eligible model by the loop's predicted cost (unpriced models are left out);
    None (a one-step plan) when it is the target or not cheaper than the target.
    """
    in_tokens = estimate_tokens(ctx.prompt or "")
    priced = {
        a: c
        for a in loop.candidates(ctx)
        if (c := loop.cost_model.predict(a, in_tokens)) is not None
    }
    if not priced:
        return None
    cheap = min(priced, key=priced.__getitem__)
    target_cost = priced.get(target)
    if cheap == target or (target_cost is not None and priced[cheap] >= target_cost):
        return None
    return cheap


def replay_cascade(
    data: RoutingData,
    policy: Policy,
    willingness_to_pay: float,
    verifier: Verifier,
    *,
    order: Sequence[int],
    features: Sequence[dict[str, float]],
    seed: int,
    catalog: ModelCatalog | None = None,
) -> CascadePoint:
    """Stream ``data`` once through cascade mode at one willingness to pay (cold start).

    ``policy`` picks each target; :class:`serving.cascade.ServedCascades` (seeded with ``seed``)
    plans the cheap step and learns from the steps' feedback; ``verifier`` checks the cheap
    answers (its noise drawn from its own generator, also seeded by ``seed``).
    """
    loop = LearningLoop(
        policy,
        data.models,
        catalog=catalog,
        default_tradeoff=TradeOff(willingness_to_pay=willingness_to_pay),
    )
    cascades = ServedCascades(willingness_to_pay=willingness_to_pay, seed=seed)
    noise = random.Random(f"verifier:{seed}")
    col = {m: j for j, m in enumerate(data.models)}
    quality = np.empty(len(order))
    cost = np.empty(len(order))
    final = np.empty(len(order), dtype=np.intp)
    two_step = escalated = passed = wrong = missed = check_errors = 0
    for step, i in enumerate(order):
        ctx = RequestContext(tenant="replay", prompt=data.prompts[i])
        decision = loop.decide(ctx, features=features[i])
        target = col[decision.model]
        q_target, c_target = float(data.quality[i, target]), float(data.cost_usd[i, target])
        cheap = cheapest_first(loop, ctx, decision.model)
        if cheap is None:  # a one-step plan: the target, as in single-shot routing
            loop.feedback(
                Feedback(decision_id=decision.decision_id, quality=q_target, cost_usd=c_target)
            )
            quality[step], cost[step], final[step] = q_target, c_target, target
            continue
        two_step += 1
        task = task_type(ctx.task_hints)
        rule = cascades.rule(task, cheap, decision.model)
        first_id = f"{decision.decision_id}:step0"
        cascades.start(task, first_id, decision.decision_id, rule)
        j = col[cheap]
        q_cheap, c_cheap = float(data.quality[i, j]), float(data.cost_usd[i, j])
        reported = verifier.check(q_cheap, noise)
        truly_passed = q_cheap >= PASS_QUALITY
        passed += truly_passed
        check_errors += (reported >= PASS_QUALITY) != truly_passed
        # step 0's feedback: the policy learns the cheap model (router: Router.feedback of the
        # step-0 decision), then the cascade (ServedCascades.observe)
        loop.learn_outcome(
            cheap,
            features[i],
            input_tokens=estimate_tokens(ctx.prompt or ""),
            quality=reported,
            cost_usd=c_cheap,
        )
        cascades.observe(first_id, quality=reported, cost_usd=c_cheap, error=False)
        bucket = cascades.cascade(task, cheap, decision.model).observe(
            None, cheap, quality=reported
        )
        if bucket.quality in rule.escalate_on:
            escalated += 1
            wrong += truly_passed
            loop.feedback(
                Feedback(decision_id=decision.decision_id, quality=q_target, cost_usd=c_target)
            )
            cascades.observe(decision.decision_id, quality=q_target, cost_usd=c_target, error=False)
            quality[step], cost[step], final[step] = q_target, c_cheap + c_target, target
        else:
            missed += not truly_passed
            quality[step], cost[step], final[step] = q_cheap, c_cheap, j
    n = len(order)
    counts = np.bincount(final, minlength=len(data.models))
    rewards = [
        reward(float(q), float(c), willingness_to_pay=willingness_to_pay)
        for q, c in zip(quality, cost, strict=True)
    ]
    return CascadePoint(
        willingness_to_pay=willingness_to_pay,
        avg_quality=float(quality.mean()),
        avg_cost_usd=float(cost.mean()),
        avg_reward=float(np.mean(rewards)),
        avg_latency_ms_modelled=None,
        model_share={
            m: round(float(c) / n, 4) for m, c in zip(data.models, counts, strict=True) if c
        },
        two_step=two_step / n,
        escalated=escalated / n,
        wrong_escalations=wrong / passed if passed else None,
        missed_escalations=missed / (two_step - passed) if two_step > passed else None,
        check_errors=check_errors / two_step if two_step else None,
    )


def _orders(data: RoutingData, seeds: Sequence[int]) -> list[list[int]]:
    """Each seed's prompt order, exactly as :func:`llmopt.replay.run_replay` draws it."""
    return [np.random.default_rng(s).permutation(data.n_prompts).tolist() for s in seeds]


def _mean_points(runs: Sequence[Sequence[CascadePoint]]) -> list[dict[str, Any]]:
    """Point by point mean over seeds (rounded), model shares left out."""
    out = []
    for same_wtp in zip(*runs, strict=True):
        row: dict[str, Any] = {"willingness_to_pay": same_wtp[0].willingness_to_pay}
        for key in (
            "avg_quality",
            "avg_cost_usd",
            "two_step",
            "escalated",
            "wrong_escalations",
            "missed_escalations",
            "check_errors",
        ):
            values = [getattr(p, key) for p in same_wtp if getattr(p, key) is not None]
            row[key] = round(float(np.mean(values)), 8) if values else None
        out.append(row)
    return out


def compare(
    data: RoutingData,
    *,
    wtps: Sequence[float] = DEFAULT_WTP_SWEEP,
    seeds: Sequence[int] = tuple(range(SEED, SEED + SEEDS)),
    catalog: ModelCatalog | None = None,
) -> list[dict[str, Any]]:
    """Single-shot routing, both cascades and the zero router on ``data``: one row each."""
    seeds = list(seeds)
    features = compute_features(data)
    base = baselines(data, wtps)
    best = base["single_models"][base["best_single_model"]]
    target_q = TARGET_QUALITY_SHARE * best["avg_quality"]
    singles = [(v["avg_cost_usd"], v["avg_quality"]) for v in base["single_models"].values()]
    zero_cost = cost_to_reach(singles, target_q)
    common = {
        "n_prompts": data.n_prompts,
        "n_models": len(data.models),
        "policy": RECOMMENDED,
        "wtp_sweep": list(wtps),
        "seeds": seeds,
        "feedback": "bandit, cold start",
        "best_single_model": base["best_single_model"],
        "best_single_model_quality": round(best["avg_quality"], 6),
        "best_single_model_cost_usd": best["avg_cost_usd"],
        "target_quality": round(target_q, 6),
    }
    rows: list[dict[str, Any]] = []

    started = time.perf_counter()
    single = run_replay(
        data,
        {RECOMMENDED: lambda s: make_policy(RECOMMENDED, seed=s)},
        wtps=wtps,
        seed=seeds[0],
        seeds=len(seeds),
        catalog=catalog,
    )["policies"][RECOMMENDED]
    single_runs = single.get("points_by_seed") or [single["points"]]

    def lower(points: Sequence[tuple[float, float]]) -> float | None:
        reach = cost_to_reach(points, LOWER_QUALITY_SHARE * best["avg_quality"])
        return None if reach is None else reach / best["avg_cost_usd"]

    rows.append(
        {
            **common,
            "variant": SINGLE_SHOT,
            "label": f"single-shot routing ({RECOMMENDED}, llmopt.replay.run_replay)",
            **{key: single["summary"]["protocol"][key] for key in FIGURES},
            "cost_fraction_to_90pct_best": _spread(
                [lower([(p["avg_cost_usd"], p["avg_quality"]) for p in r]) for r in single_runs]
            ),
            "max_quality_share_of_best": _spread(
                [max(p["avg_quality"] for p in run) / best["avg_quality"] for run in single_runs]
            ),
            "points": [
                {k: p[k] for k in ("willingness_to_pay", "avg_quality", "avg_cost_usd")}
                for p in single["points"]
            ],
            "elapsed_s": round(time.perf_counter() - started, 1),
        }
    )

    orders = _orders(data, seeds)
    for verifier in VERIFIERS:
        started = time.perf_counter()
        runs = [
            [
                replay_cascade(
                    data,
                    make_policy(RECOMMENDED, seed=s * 100 + k),  # run_replay's policy seeds
                    w,
                    verifier,
                    order=order,
                    features=features,
                    seed=s * 100 + k,
                    catalog=catalog,
                )
                for k, w in enumerate(wtps)
            ]
            for s, order in zip(seeds, orders, strict=True)
        ]
        figures = [margins(run, base) for run in runs]
        rows.append(
            {
                **common,
                "variant": verifier.variant,
                "label": verifier.label,
                **{key: _spread([f[key] for f in figures]) for key in FIGURES},
                "cost_fraction_to_90pct_best": _spread(
                    [lower([(p.avg_cost_usd, p.avg_quality) for p in run]) for run in runs]
                ),
                "max_quality_share_of_best": _spread(
                    [max(p.avg_quality for p in run) / best["avg_quality"] for run in runs]
                ),
                "points": _mean_points(runs),
                "points_by_seed": [[asdict(p) for p in run] for run in runs],
                "elapsed_s": round(time.perf_counter() - started, 1),
            }
        )

    rows.append(
        {
            **common,
            "variant": ZERO_ROUTER,
            "label": "zero router (the single models' upper hull; no learning, no seed)",
            "cost_fraction_to_95pct_best": (
                None if zero_cost is None else round(zero_cost / best["avg_cost_usd"], 6)
            ),
            "cost_fraction_to_90pct_best": _spread([lower(singles)])["mean"],
            "max_quality_share_of_best": 1.0,
        }
    )
    return rows


def _run_file(path: Path, *, quick: bool, catalog: ModelCatalog) -> list[dict[str, Any]]:
    data = load_routing_data(path)
    if quick:
        data = _subsample(data, QUICK_PROMPTS)
    rows = compare(
        data,
        wtps=QUICK_WTPS if quick else DEFAULT_WTP_SWEEP,
        seeds=[SEED + k for k in range(1 if quick else SEEDS)],
        catalog=catalog,
    )
    rows = [{"file": path.stem, "data": display_path(path), **r} for r in rows]
    if path.stem == TARGET_FILE:
        _add_targets(rows)
    return rows


def _add_targets(rows: list[dict[str, Any]]) -> None:
    """Mark, on the optimistic cascade's row, whether it meets the target."""
    row = next(r for r in rows if r["variant"] == OPTIMISTIC.variant)
    noisy = next(r for r in rows if r["variant"] == NOISY.variant)
    frac = row["cost_fraction_to_95pct_best"]
    never = sum(v is None for v in frac["per_seed"])
    row["targets"] = {
        "cost_fraction_le_one_quarter": (
            frac["mean"] is not None and never == 0 and frac["mean"] <= TARGET_COST_FRACTION
        ),
    }
    row["meets_targets"] = all(row["targets"].values())
    row["noisy_verifier_cost_fraction_to_95pct_best"] = noisy["cost_fraction_to_95pct_best"]


def run(*, quick: bool = False) -> list[dict[str, Any]]:
    """Cascades (optimistic and noisy verifier), single-shot routing and the zero router, per
    routing file; a file that is missing gives a row that says so."""
    folder = routing_dir()
    catalog = load_catalog()
    rows: list[dict[str, Any]] = []
    for name in FILES:
        path = folder / name
        if not path.is_file() and name == SHIPPED_DATA.name:
            path = SHIPPED_DATA
        if not path.is_file():
            note = _missing(name, folder, "skipped")
            _note(note)
            rows.append({"file": Path(name).stem, "skipped": note})
            continue
        rows.extend(_run_file(path, quick=quick, catalog=catalog))
    return rows


def _fmt(spread: dict[str, Any] | float | None) -> str:
    if spread is None:
        return "never"
    if isinstance(spread, dict):
        if spread["mean"] is None:
            return "never"
        never = sum(v is None for v in spread["per_seed"])
        out = f"{spread['mean']:.3f} ± {spread['sd']:.3f}"
        return out + (f" ({never} seed(s) never)" if never else "")
    return f"{spread:.3f}"


def summary(results: list[dict[str, Any]]) -> list[str]:
    """Cost to 95% of the best model's quality (fraction of its cost) per file and variant."""
    lines = []
    for r in results:
        if "skipped" in r:
            lines.append(f"{r['file'][:26]:<26} skipped (file missing)")
            continue
        line = (
            f"{r['file'][:26]:<26} {r['variant']:<27} "
            f"cost@95% {_fmt(r['cost_fraction_to_95pct_best'])}"
            f"  cost@90% {_fmt(r['cost_fraction_to_90pct_best'])}"
            f"  max quality {_fmt(r['max_quality_share_of_best'])} of best"
        )
        if "elapsed_s" in r:
            line += f"  {r['elapsed_s']:.0f} s"
        if "targets" in r:
            line += f"  [target <= 1/4: {'ok' if r['meets_targets'] else 'NO'}]"
        lines.append(line)
    return lines
