"""Microseconds per pull + update: every registry policy against the peer libraries.

A synthetic, seeded world with ``N_ARMS`` arms and dense random features (uniform in [0, 1),
every feature present at every step) for each ``d`` in ``FEATURE_COUNTS``: the request's
structural markers (:data:`llmopt.features.STRUCTURE_FEATURES`, 18) and ``d - 18`` embedding
dimensions (``emb_0`` ..), named like the router's so that the recommended policy places its cells
on them as it does in serving (without the markers it would keep to its global statistics, a
cheaper path); the
reward of arm ``a`` is a Bernoulli draw with probability ``w_a . x / sum(w_a)`` (so it is in [0, 1]
and every policy accepts it), drawn once per step and shared by every policy. Each policy first
learns ``WARMUP_STEPS`` untimed steps (burn-ins done, matrices allocated), then ``REPEATS`` blocks
of ``BLOCK_STEPS`` timed steps each; within a repeat every policy runs its block, the order of the
policies alternating forwards and backwards between repeats so all share the machine's load.
Reported: the median over repeats of the block's mean microseconds per step, and ratios
``peer time / our time`` (above 1: ours is faster). Peers run through :mod:`bench.peers`'s
adapters, whose overhead (building the Decision, copying the context) ours pays too; River's
Thompson sampling runs with ``propensity_draws=0`` here, so the table times River itself and not
the adapter's Monte Carlo propensity estimate.

Memory: bytes of ``pickle.dumps(policy)`` after all the steps (VW's Workspace cannot be pickled:
the size of its saved model instead).

Targets (reported, not asserted) at 11 arms x 32 features: the recommended policy at least 4x
faster than VW and 10x faster than River's LinUCB.
"""

from __future__ import annotations

import pickle
from statistics import median
from time import perf_counter_ns
from typing import Any

import numpy as np

from bench._common import SEED, gc_paused
from bench.peers import PEERS, make_peer
from llmopt.features import STRUCTURE_FEATURES
from llmopt.policy import Policy
from models.kinds import POLICIES, RECOMMENDED, make_policy

NAME = "peer_speed"
N_ARMS = 11
FEATURE_COUNTS = (32, 64)
WARMUP_STEPS = 200
FULL_REPEATS, FULL_BLOCK = 9, 400
QUICK_REPEATS, QUICK_BLOCK = 3, 60
TARGETS = {"vw_cb_adf": 4.0, "river_linucb": 10.0}
"""Peer -> how many times faster than it the recommended policy should be (at 32 features)."""
TARGET_FEATURES = 32


def _world(
    n_features: int, steps: int, seed: int
) -> tuple[list[str], list[dict[str, float]], np.ndarray]:
    """Arms, contexts and every arm's reward at every step."""
    rng = np.random.default_rng(seed)
    arms = [f"arm{a}" for a in range(N_ARMS)]
    x = rng.random((steps, n_features))
    w = rng.random((N_ARMS, n_features))
    p = x @ w.T / w.sum(axis=1)
    rewards = (rng.random((steps, N_ARMS)) < p).astype(float)
    n_emb = n_features - len(STRUCTURE_FEATURES)  # named like the router's features
    keys = [f"emb_{j}" for j in range(n_emb)] + list(STRUCTURE_FEATURES)
    contexts = [dict(zip(keys, row.tolist(), strict=True)) for row in x]
    return arms, contexts, rewards


def _policies() -> tuple[dict[str, Policy], dict[str, str]]:
    """Every registry policy and every peer, fresh; and errors of those that cannot be built."""
    out: dict[str, Policy] = {}
    errors: dict[str, str] = {}
    builders: dict[str, Any] = {n: (lambda n=n: make_policy(n, seed=SEED)) for n in POLICIES}
    builders["river_ts"] = lambda: make_peer("river_ts", seed=SEED, propensity_draws=0)
    for n in PEERS:
        builders.setdefault(n, lambda n=n: make_peer(n, seed=SEED))
    for name, build in builders.items():
        try:
            out[name] = build()
        except Exception as exc:  # noqa: BLE001 - reported in the results
            errors[name] = f"{type(exc).__name__}: {exc}"
    return out, errors


def _state_bytes(policy: Any) -> int | None:
    try:
        if hasattr(policy, "state_bytes"):
            return int(policy.state_bytes())
        return len(pickle.dumps(policy))
    except Exception:  # noqa: BLE001 - not every library's object pickles
        return None


def _block(
    policy: Policy, arms: list[str], contexts: list[dict[str, float]], rewards: np.ndarray
) -> int:
    """Nanoseconds for pull + update over the given steps."""
    col = {a: j for j, a in enumerate(arms)}
    t0 = perf_counter_ns()
    for ctx, row in zip(contexts, rewards, strict=True):
        d = policy.pull(arms, ctx)
        policy.update(d.model, ctx, float(row[col[d.model]]))
    return perf_counter_ns() - t0


def _measure(n_features: int, *, quick: bool) -> list[dict[str, Any]]:
    repeats, block = (QUICK_REPEATS, QUICK_BLOCK) if quick else (FULL_REPEATS, FULL_BLOCK)
    warmup = WARMUP_STEPS // 4 if quick else WARMUP_STEPS
    arms, contexts, rewards = _world(n_features, warmup + repeats * block, SEED)
    policies, errors = _policies()
    for name, policy in list(policies.items()):
        try:
            _block(policy, arms, contexts[:warmup], rewards[:warmup])
        except Exception as exc:  # noqa: BLE001 - reported in the results
            errors[name] = f"{type(exc).__name__}: {exc}"
            del policies[name]
    names = list(policies)
    us: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        lo = warmup + r * block
        ctxs, rews = contexts[lo : lo + block], rewards[lo : lo + block]
        for name in names if r % 2 == 0 else names[::-1]:
            with gc_paused():
                ns = _block(policies[name], arms, ctxs, rews)
            us[name].append(ns / block / 1000.0)
    med = {n: median(v) for n, v in us.items()}
    ours = [n for n in names if n not in PEERS]
    rows: list[dict[str, Any]] = []
    for name in [*POLICIES, *PEERS]:
        kind = "peer" if name in PEERS else "ours"
        row: dict[str, Any] = {
            "policy": name,
            "kind": kind,
            "recommended": name == RECOMMENDED,
            "n_arms": N_ARMS,
            "n_features": n_features,
            "warmup_steps": warmup,
            "repeats": repeats,
            "block_steps": block,
        }
        if name in errors:
            rows.append({**row, "error": errors[name]})
            continue
        row["us_per_step_runs"] = [round(x, 2) for x in us[name]]
        row["us_per_step"] = round(med[name], 2)
        row["state_bytes"] = _state_bytes(policies[name])
        if kind == "peer":
            row["ratio_vs_ours"] = {o: round(med[name] / med[o], 2) for o in ours}
            if RECOMMENDED in med:
                ratio = med[name] / med[RECOMMENDED]
                row["ratio_vs_recommended"] = round(ratio, 2)
                if name in TARGETS and n_features == TARGET_FEATURES:
                    row["target_ratio"] = TARGETS[name]
                    row["meets_target"] = ratio >= TARGETS[name]
        rows.append(row)
    return rows


def run(*, quick: bool = False) -> list[dict[str, Any]]:
    """Time every policy and peer at each feature count; one row per (features, policy)."""
    rows: list[dict[str, Any]] = []
    for d in FEATURE_COUNTS:
        rows.extend(_measure(d, quick=quick))
    return rows


def summary(results: list[dict[str, Any]]) -> list[str]:
    """One line per (feature count, policy)."""
    lines = []
    for r in results:
        head = f"{r['n_arms']} arms x {r['n_features']:>2} feats  {r['policy']:<18}"
        if "error" in r:
            lines.append(f"{head} ERROR {r['error'][:80]}")
            continue
        size = r["state_bytes"]
        line = f"{head} {r['us_per_step']:>8.1f} us/step  {'-' if size is None else size:>8} B"
        if r["recommended"]:
            line += "  (recommended)"
        if "ratio_vs_recommended" in r:
            line += f"  x{r['ratio_vs_recommended']:.1f} {RECOMMENDED}'s time"
        if "meets_target" in r:
            verdict = "meets" if r["meets_target"] else "MISSES"
            line += f"  [{verdict} target >= x{r['target_ratio']:.0f}]"
        lines.append(line)
    return lines
