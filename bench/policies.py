"""Per-step latency of every registered policy's ``pull`` and ``update``, against uniform random.

Contexts are the request features of real prompts; the arms are the 11 models of the RouterBench
file and the reward is the logged quality of the chosen model. After a warm-up of
``WARMUP_STEPS`` untimed steps, each timed step runs every policy (and the baseline,
:class:`models.random_policy.UniformRandom`) on the same context, in a seeded random order per
step, so all of them share the machine's noise and none always follows the same neighbour (whose
cache footprint would bias it). Ratios are against the baseline's mean pull + update time; the
registry's ``random`` policy is the same class as the baseline, so its ratio shows the noise floor.
"""

from __future__ import annotations

from time import perf_counter_ns
from typing import Any

import numpy as np

from bench._common import SEED, display_path, gc_paused, ratio, routing_file, stats_us
from llmopt.features import request_features
from llmopt.routing_data import load_routing_data
from models.base import BasePolicy
from models.kinds import POLICIES, make_policy
from models.random_policy import UniformRandom

NAME = "policies"
N_ARMS = 11
WARMUP_STEPS = 200
FULL_STEPS, QUICK_STEPS = 5000, 300
BASELINE = "baseline:UniformRandom"


def run(*, quick: bool = False) -> list[dict[str, Any]]:
    """Time ``pull`` and ``update`` of every policy per step; one row per policy."""
    path = routing_file("routerbench_arc_winogrande.parquet")
    data = load_routing_data(path)
    if len(data.models) < N_ARMS:
        raise ValueError(f"{path}: {len(data.models)} models, the benchmark needs {N_ARMS}")
    arms = data.models[:N_ARMS]
    steps = QUICK_STEPS if quick else FULL_STEPS
    rng = np.random.default_rng(SEED)
    order = rng.permutation(data.n_prompts)
    rows = [int(order[s % data.n_prompts]) for s in range(WARMUP_STEPS + steps)]
    contexts = {i: request_features(data.prompts[i]) for i in set(rows)}

    policies: dict[str, BasePolicy] = {BASELINE: UniformRandom(seed=SEED)}
    policies.update({name: make_policy(name, seed=SEED) for name in POLICIES})
    names = list(policies)
    pull_ns = {n: np.empty(steps, dtype=np.int64) for n in names}
    update_ns = {n: np.empty(steps, dtype=np.int64) for n in names}
    clock = perf_counter_ns

    def step(policy: BasePolicy, i: int) -> tuple[int, int]:
        ctx = contexts[i]
        t0 = clock()
        decision = policy.pull(arms, ctx)
        t1 = clock()
        reward = float(data.quality[i, arms.index(decision.model)])
        t2 = clock()
        policy.update(decision.model, ctx, reward)
        t3 = clock()
        return t1 - t0, t3 - t2

    for i in rows[:WARMUP_STEPS]:
        for policy in policies.values():
            step(policy, i)
    with gc_paused():
        for s, i in enumerate(rows[WARMUP_STEPS:]):
            for k in rng.permutation(len(names)):
                name = names[k]
                pull_ns[name][s], update_ns[name][s] = step(policies[name], i)

    base_mean = float(stats_us(pull_ns[BASELINE] + update_ns[BASELINE])["mean_us"])
    results = []
    for name in names:
        total = stats_us(pull_ns[name] + update_ns[name])
        results.append(
            {
                "policy": name,
                "data": display_path(path),
                "n_arms": N_ARMS,
                "n_features": len(contexts[rows[0]]),
                "warmup_steps": WARMUP_STEPS,
                "pull": stats_us(pull_ns[name]),
                "update": stats_us(update_ns[name]),
                "pull_update": total,
                "ratio_mean_vs_baseline": ratio(float(total["mean_us"]), base_mean),
            }
        )
    return results


def summary(results: list[dict[str, Any]]) -> list[str]:
    """One line per policy."""
    return [
        f"{r['policy']:<24} pull+update p50 {r['pull_update']['p50_us']:>7.1f} us  "
        f"p99 {r['pull_update']['p99_us']:>7.1f} us  mean {r['pull_update']['mean_us']:>7.1f} us"
        f"  x{r['ratio_mean_vs_baseline']:.2f} random  (n={r['pull_update']['iterations']})"
        for r in results
    ]
