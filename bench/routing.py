"""Our policies against peer libraries on every routing file: quality, cost and speed.

For each routing file (:func:`bench._common.routing_files`: those of ``bench/data/routing``, or of
the folder ``LLMOPT_ROUTING_DATA_DIR`` names, and the AlpacaEval file shipped in the package), one
:func:`llmopt.replay.run_replay` replays every policy of the registry (read at run time, with the
project's defaults) and every peer of :mod:`bench.peers` over the default willingness-to-pay sweep:
same seed, same prompt order, same request features, bandit feedback only, cold start. Per (file,
policy) it reports:

* the points (average quality and cost per prompt at each willingness to pay);
* ``lift_over_zero_router``: the largest quality margin of any point over the zero router (the
  upper convex hull of the single models) at the same cost (:func:`llmopt.frontier.
  lift_over_zero_router`);
* ``cost_fraction_to_95pct_best``: the least cost at which the policy's hull reaches 95% of the
  best single model's quality, as a fraction of that model's cost (None: never); the zero
  router's own fraction is reported alongside;
* ``quality_gain_vs_random_at_equal_cost`` (from :func:`llmopt.replay.summarize_policy`);
* ``elapsed_s``: wall time of the policy's part of the shared run (features, which the run
  computes once for all, are not in it). The run calls each factory just before replaying its
  policy at one willingness to pay, so the time between a policy's first factory call and the
  next policy's is that policy's replay.

Targets for the recommended policy (reported, not asserted): lift > 0 on every file, cost
fraction <= 1/3 on the RouterBench file, and a lift at least every peer's.

``--quick`` replays the first ``QUICK_PROMPTS`` prompts of each file at ``QUICK_WTPS``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from bench._common import RESULTS_DIR, SEED, display_path, routing_files
from bench.peers import PEERS, peer_factories
from llmopt.catalog import load_catalog
from llmopt.frontier import cost_to_reach, lift_over_zero_router
from llmopt.policy import Policy
from llmopt.replay import DEFAULT_WTP_SWEEP, PolicyFactory, compute_features, run_replay
from llmopt.routing_data import RoutingData, load_routing_data
from models.kinds import POLICIES, RECOMMENDED, make_policy

NAME = "routing"
QUICK_PROMPTS = 600
QUICK_WTPS: tuple[float, ...] = (0.001, 0.01, 0.1)
TARGET_QUALITY_SHARE = 0.95
"""Quality to reach, as a share of the best single model's."""
TARGET_COST_FRACTION = 1 / 3
TARGET_COST_FILE = "routerbench_arc_winogrande"
"""The file on which the recommended policy must reach the quality at <= 1/3 of the cost."""


def _ours(name: str) -> PolicyFactory:
    def factory(seed: int) -> Policy:
        return make_policy(name, seed=seed)

    return factory


def _subsample(data: RoutingData, n: int) -> RoutingData:
    """The first ``n`` prompts of ``data``."""
    if n >= data.n_prompts:
        return data
    return dataclasses.replace(
        data,
        sample_ids=data.sample_ids[:n],
        prompts=data.prompts[:n],
        quality=data.quality[:n],
        cost_usd=data.cost_usd[:n],
        output_chars=data.output_chars[:n],
    )


def _smoke(factory: PolicyFactory, data: RoutingData) -> str | None:
    """None if a fresh policy can pull and learn a few rewards, else the error.

    Replay rewards are ``quality - cost / willingness to pay``: at most 1, often negative (a
    cost-aware policy is taught the quality instead, in [0, 1]). A policy that fails is reported
    instead of sinking the whole run.
    """
    try:
        policy = factory(SEED)
        ctx = compute_features(_subsample(data, 1))[0]
        targets = (0.5, 0.0, 1.0) if getattr(policy, "cost_aware", False) else (0.5, -0.5, 1.0)
        for r in targets:
            decision = policy.pull(data.models, ctx)
            policy.update(decision.model, ctx, r)
    except Exception as exc:  # noqa: BLE001 - reported in the results
        return f"{type(exc).__name__}: {exc}"
    return None


def _timed(factories: dict[str, PolicyFactory]) -> tuple[dict[str, PolicyFactory], list[Any]]:
    """Wrap factories so each call records (name, time); the calls partition the run's time."""
    calls: list[tuple[str, float]] = []

    def wrap(name: str, factory: PolicyFactory) -> PolicyFactory:
        def timed(seed: int) -> Policy:
            calls.append((name, time.perf_counter()))
            return factory(seed)

        return timed

    return {n: wrap(n, f) for n, f in factories.items()}, calls


def _elapsed(calls: list[tuple[str, float]], end: float) -> dict[str, float]:
    first: dict[str, float] = {}
    for name, t in calls:
        first.setdefault(name, t)
    names = list(first)
    bounds = [first[n] for n in names] + [end]
    return {n: round(bounds[k + 1] - bounds[k], 3) for k, n in enumerate(names)}


def _run_file(path: Any, *, quick: bool) -> list[dict[str, Any]]:
    data = load_routing_data(path)
    if quick:
        data = _subsample(data, QUICK_PROMPTS)
    wtps = QUICK_WTPS if quick else DEFAULT_WTP_SWEEP
    ours = {name: _ours(name) for name in POLICIES}  # the registry as it is now
    peers = peer_factories()
    candidates = {**ours, **peers}
    errors = {n: e for n, f in candidates.items() if (e := _smoke(f, data)) is not None}
    catalog = load_catalog()
    while True:  # one run for all; a policy failing mid-run is reported and the run repeated
        factories, calls = _timed({n: f for n, f in candidates.items() if n not in errors})
        try:
            result = run_replay(data, factories, wtps=wtps, seed=SEED, catalog=catalog)
        except Exception as exc:
            if not calls:
                raise
            errors[calls[-1][0]] = f"{type(exc).__name__} during the replay: {exc}"
            continue
        elapsed = _elapsed(calls, time.perf_counter())
        break
    file = path.stem
    plot = _plot(result, file)

    base = result["baselines"]
    singles = base["single_models"]
    best = singles[base["best_single_model"]]
    target_q = TARGET_QUALITY_SHARE * best["avg_quality"]
    hull = [(h["avg_cost_usd"], h["avg_quality"]) for h in base["zero_router"]["hull"]]
    single_pts = [(v["avg_cost_usd"], v["avg_quality"]) for v in singles.values()]
    zero_cost = cost_to_reach(single_pts, target_q)
    zero_fraction = None if zero_cost is None else round(zero_cost / best["avg_cost_usd"], 4)
    common = {
        "file": file,
        "data": display_path(path),
        "n_prompts": data.n_prompts,
        "n_models": len(data.models),
        "wtp_sweep": list(wtps),
        "seed": SEED,
        "best_single_model": base["best_single_model"],
        "best_single_model_quality": round(best["avg_quality"], 6),
        "best_single_model_cost_usd": best["avg_cost_usd"],
        "target_quality": round(target_q, 6),
        "zero_router_cost_fraction_to_95pct_best": zero_fraction,
        "plot": plot,
    }
    steps = data.n_prompts * len(wtps)
    rows: list[dict[str, Any]] = []
    for name in candidates:
        kind = "peer" if name in PEERS else "ours"
        if name in errors:
            rows.append({**common, "policy": name, "kind": kind, "error": errors[name]})
            continue
        pol = result["policies"][name]
        points = [(p["avg_cost_usd"], p["avg_quality"]) for p in pol["points"]]
        cost = cost_to_reach(points, target_q)
        gain = pol["summary"]["quality_gain_vs_random_at_equal_cost"]
        rows.append(
            {
                **common,
                "policy": name,
                "kind": kind,
                "recommended": name == RECOMMENDED,
                "points": [
                    {
                        "willingness_to_pay": p["willingness_to_pay"],
                        "avg_quality": round(p["avg_quality"], 6),
                        "avg_cost_usd": p["avg_cost_usd"],
                        "avg_reward": round(p["avg_reward"], 6),
                    }
                    for p in pol["points"]
                ],
                "lift_over_zero_router": _round(lift_over_zero_router(points, hull)),
                "cost_fraction_to_95pct_best": (
                    None if cost is None else round(cost / best["avg_cost_usd"], 4)
                ),
                "quality_gain_vs_random_at_equal_cost": _round(gain),
                "elapsed_s": elapsed[name],
                "us_per_step": round(elapsed[name] / steps * 1e6, 1),
            }
        )
    rows.append(
        {
            **common,
            "policy": "zero_router",
            "kind": "baseline",
            "lift_over_zero_router": 0.0,
            "cost_fraction_to_95pct_best": zero_fraction,
        }
    )
    _add_targets(rows, file)
    return rows


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def _add_targets(rows: list[dict[str, Any]], file: str) -> None:
    """Mark, on the recommended policy's row, whether it meets its targets on this file."""
    rec = next((r for r in rows if r["policy"] == RECOMMENDED and "error" not in r), None)
    if rec is None:
        return
    lift = rec["lift_over_zero_router"]
    peer_lifts = [
        r["lift_over_zero_router"] for r in rows if r["kind"] == "peer" and "error" not in r
    ]
    frac = rec["cost_fraction_to_95pct_best"]
    targets: dict[str, bool | None] = {
        "lift_positive": lift is not None and lift > 0,
        "lift_ge_every_peer": lift is not None and all(p is None or lift >= p for p in peer_lifts),
        "cost_fraction_le_one_third": (
            (frac is not None and frac <= TARGET_COST_FRACTION)
            if file == TARGET_COST_FILE
            else None  # not a target on this file
        ),
    }
    rec["targets"] = targets
    rec["meets_targets"] = all(v is not False for v in targets.values())


def _plot(result: dict[str, Any], file: str) -> str | None:
    """Quality vs cost of every policy and peer, single models and the zero-router hull."""
    try:
        from llmopt.plot import plot_frontier  # noqa: PLC0415 - matplotlib is heavy
    except ImportError:  # pragma: no cover - matplotlib missing
        return None
    n = result["data"]["n_prompts"]
    title = f"{file}: policies and peers, bandit feedback, cold start ({n} prompts)"
    return display_path(plot_frontier(result, RESULTS_DIR / f"routing_{file}.png", title=title))


def run(*, quick: bool = False) -> list[dict[str, Any]]:
    """Replay every policy and peer on every routing file; one row per (file, policy)."""
    rows: list[dict[str, Any]] = []
    for path in routing_files():
        rows.extend(_run_file(path, quick=quick))
    return rows


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def summary(results: list[dict[str, Any]]) -> list[str]:
    """One line per (file, policy), then whether the recommended policy meets its targets."""
    lines = []
    for r in results:
        head = f"{r['file'][:26]:<26} {r['policy']:<18}"
        if "error" in r:
            lines.append(f"{head} ERROR {r['error'][:80]}")
            continue
        line = (
            f"{head} lift {_fmt(r['lift_over_zero_router'], '+.4f')}  "
            f"cost@95% {_fmt(r['cost_fraction_to_95pct_best'], '.3f')}"
        )
        if r["kind"] != "baseline":
            line += (
                f"  vs random {_fmt(r['quality_gain_vs_random_at_equal_cost'], '+.4f')}"
                f"  {r['elapsed_s']:.1f} s ({r['us_per_step']:.0f} us/step)"
            )
        if "targets" in r:
            t = r["targets"]
            marks = ", ".join(f"{k} {'ok' if v else 'NO'}" for k, v in t.items() if v is not None)
            line += f"  [{RECOMMENDED} targets: {marks}]"
        lines.append(line)
    recs = [r for r in results if "meets_targets" in r]
    files = {r["file"] for r in results}
    every = len(recs) == len(files) and all(r["meets_targets"] for r in recs)
    lines.append(
        f"recommended ({RECOMMENDED}) meets every target on every file: {'yes' if every else 'NO'}"
    )
    return lines
