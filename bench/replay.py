"""Wall time of ``run_replay`` for the recommended policy, against the uniform random policy.

One full default willingness-to-pay sweep on the RouterBench file (``n_prompts`` steps per
willingness to pay), timed end to end (features, baselines and every step included). Runs of the
recommended policy and of the ``random`` policy alternate (``FULL_REPEATS`` each, in alternating
order) and the median of each is reported, so both see the same machine load. Target from the
issue: a replay "under a minute".
"""

from __future__ import annotations

from statistics import median
from time import perf_counter_ns
from typing import Any

from bench._common import SEED, display_path, ratio, routing_file
from llmopt.catalog import load_catalog
from llmopt.replay import DEFAULT_WTP_SWEEP, PolicyFactory, run_replay
from llmopt.routing_data import load_routing_data
from models.base import BasePolicy
from models.kinds import RECOMMENDED, make_policy

NAME = "replay"
BASELINE = "random"
TARGET_S = 60.0
FULL_REPEATS, QUICK_REPEATS = 3, 1


def _factories(name: str) -> dict[str, PolicyFactory]:
    def factory(seed: int) -> BasePolicy:
        return make_policy(name, seed=seed)

    return {name: factory}


def run(*, quick: bool = False) -> list[dict[str, Any]]:
    """Time the replay of the recommended policy and of the baseline; one row per policy."""
    path = routing_file("routerbench_arc_winogrande.parquet")
    data = load_routing_data(path)
    catalog = load_catalog()
    repeats = QUICK_REPEATS if quick else FULL_REPEATS
    elapsed: dict[str, list[float]] = {RECOMMENDED: [], BASELINE: []}
    rewards: dict[str, list[float]] = {}
    for r in range(repeats):
        names = [BASELINE, RECOMMENDED] if r % 2 == 0 else [RECOMMENDED, BASELINE]
        for name in names:
            t0 = perf_counter_ns()
            out = run_replay(data, _factories(name), seed=SEED, catalog=catalog)
            elapsed[name].append((perf_counter_ns() - t0) / 1e9)
            rewards[name] = [p["avg_reward"] for p in out["policies"][name]["points"]]
    steps = data.n_prompts * len(DEFAULT_WTP_SWEEP)
    base_s = median(elapsed[BASELINE])
    results = []
    for name in (RECOMMENDED, BASELINE):
        secs = median(elapsed[name])
        results.append(
            {
                "policy": name,
                "recommended": name == RECOMMENDED,
                "data": display_path(path),
                "n_prompts": data.n_prompts,
                "n_models": len(data.models),
                "wtp_sweep": list(DEFAULT_WTP_SWEEP),
                "steps": steps,
                "repeats": repeats,
                "elapsed_s_runs": [round(s, 3) for s in elapsed[name]],
                "elapsed_s": round(secs, 3),
                "steps_per_s": round(steps / secs, 1),
                "mean_us_per_step": round(secs / steps * 1e6, 3),
                "ratio_vs_random": ratio(secs, base_s),
                "target_s": TARGET_S,
                "meets_target": secs < TARGET_S,
                "avg_reward_per_wtp": [round(x, 6) for x in rewards[name]],
            }
        )
    return results


def summary(results: list[dict[str, Any]]) -> list[str]:
    """One line per policy."""
    return [
        f"{r['policy']:<24} {r['elapsed_s']:>6.2f} s for {r['steps']} steps "
        f"({r['steps_per_s']:.0f} steps/s)  x{r['ratio_vs_random']:.2f} random  "
        f"{'meets' if r['meets_target'] else 'MISSES'} <{r['target_s']:.0f} s  "
        f"(median of {r['repeats']})"
        for r in results
    ]
