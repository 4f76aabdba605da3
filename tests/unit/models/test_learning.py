"""Learners on seeded synthetic worlds, with margins a broken learner would miss."""

from __future__ import annotations

import random

import pytest

from models.base import BasePolicy
from models.kinds import make_policy

ARMS = ["cheap", "coder", "writer"]
CONTEXTUAL = ["linucb", "lin_thompson", "cost_aware_linucb", "cost_aware_lin_thompson"]
NON_CONTEXTUAL = ["epsilon_greedy", "ucb1", "thompson_gaussian", "cost_aware_thompson"]


def contextual_world(ctx: dict[str, float], arm: str, rng: random.Random) -> float:
    """Coder is right on code, writer on prose, cheap half the time (0/1 quality)."""
    p = {
        "cheap": 0.5,
        "coder": 0.9 if ctx["code"] else 0.2,
        "writer": 0.2 if ctx["code"] else 0.9,
    }[arm]
    return float(rng.random() < p)


def average_reward(policy: BasePolicy, steps: int = 2000, seed: int = 0) -> float:
    rng = random.Random(seed + 1000)
    total = 0.0
    for _ in range(steps):
        ctx = {"bias": 1.0, "code": float(rng.random() < 0.5), "noise": rng.random()}
        d = policy.pull(ARMS, ctx)
        r = contextual_world(ctx, d.model, rng)
        policy.update(d.model, ctx, r)
        total += r
    return total / steps


@pytest.fixture(scope="module")
def scores() -> dict[str, float]:
    return {
        name: average_reward(make_policy(name, seed=0))
        for name in [*CONTEXTUAL, *NON_CONTEXTUAL, "random"]
    }


@pytest.mark.parametrize("name", CONTEXTUAL)
def test_contextual_policies_beat_random_and_every_non_contextual_one(
    name: str, scores: dict[str, float]
) -> None:
    # Oracle 0.9; the best single arm 0.55; uniform random 0.53.
    assert scores[name] > 0.78
    assert scores[name] > scores["random"] + 0.2
    for other in NON_CONTEXTUAL:
        assert scores[name] > scores[other] + 0.15, other


def test_non_contextual_policies_sit_near_the_best_single_arm(scores: dict[str, float]) -> None:
    for name in NON_CONTEXTUAL:
        assert 0.45 < scores[name] < 0.62, name
    assert scores["random"] == pytest.approx(0.533, abs=0.03)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("ucb1", {"c": 0.3}),
        ("thompson_gaussian", {}),
        ("epsilon_greedy", {"epsilon": 0.1}),
        ("linucb", {"alpha": 0.3}),
        ("cost_aware_linucb", {}),
    ],
)
def test_discounting_recovers_when_a_model_degrades(name: str, params: dict[str, float]) -> None:
    """Model a is best (0.8) until it silently degrades to 0.2 halfway; b stays at 0.5."""

    def run(discount: float) -> float:
        policy = make_policy(name, seed=0, discount=discount, **params)
        rng = random.Random(7)
        late = []
        for t in range(3000):
            p = {"a": 0.8 if t < 1500 else 0.2, "b": 0.5}
            d = policy.pull(["a", "b"], {"bias": 1.0})
            r = float(rng.random() < p[d.model])
            policy.update(d.model, {"bias": 1.0}, r)
            if t >= 2000:
                late.append(r)
        return sum(late) / len(late)

    plain, discounted = run(1.0), run(0.97)
    # After the change the best is 0.5: the discounted policy gets close, the plain one keeps
    # trusting 1,500 good rewards of a and stays near 0.2.
    assert discounted > 0.43
    assert plain < 0.35
    assert discounted > plain + 0.1


def test_context_gate_turns_noise_features_off_and_keeps_real_ones() -> None:
    noise = make_policy("cost_aware_linucb", seed=0)
    rng = random.Random(3)
    for _ in range(600):  # features carry no signal: each arm has a fixed quality
        ctx = {"bias": 1.0, **{f"n{j}": rng.random() for j in range(20)}}
        d = noise.pull(ARMS, ctx)
        noise.update(d.model, ctx, float(rng.random() < {"cheap": 0.3}.get(d.model, 0.6)))
    assert noise._context_off()  # type: ignore[attr-defined]

    signal = make_policy("cost_aware_linucb", seed=0)
    average_reward(signal, steps=600)
    assert not signal._context_off()  # type: ignore[attr-defined]


def test_a_cost_penalty_moves_choices_to_the_cheaper_model() -> None:
    """Same quality gap, two prices: a cost-aware policy pays for quality only when worth it."""
    rng = random.Random(5)
    for wtp, expected in [(0.001, "small"), (1.0, "large")]:
        policy = make_policy("cost_aware_linucb", seed=0)
        cost = {"small": 0.0001, "large": 0.002}
        chosen = []
        for _ in range(800):
            pen = {m: c / wtp for m, c in cost.items()}
            d = policy.pull(["small", "large"], {"bias": 1.0}, penalties=pen)
            q = float(rng.random() < {"small": 0.6, "large": 0.8}[d.model])
            policy.update(d.model, {"bias": 1.0}, q)
            chosen.append(d.model)
        late = chosen[400:]
        assert late.count(expected) / len(late) > 0.9, wtp


def test_a_prohibitively_priced_model_is_not_even_explored() -> None:
    """Quality is at most 1: a model whose price alone exceeds that is never worth a try."""
    policy = make_policy("cost_aware_linucb", seed=0, burn_in=0)
    rng = random.Random(0)
    for _ in range(300):
        d = policy.pull(["ok", "luxury"], {"bias": 1.0}, penalties={"ok": 0.1, "luxury": 1.2})
        assert d.model == "ok"
        policy.update(d.model, {"bias": 1.0}, float(rng.random() < 0.5))


def test_a_new_model_with_a_good_prior_gets_traffic_at_once() -> None:
    rng = random.Random(2)
    policy = make_policy("cost_aware_linucb", seed=0)
    for _ in range(300):
        d = policy.pull(["old"], {"bias": 1.0})
        policy.update(d.model, {"bias": 1.0}, float(rng.random() < 0.6))
    policy.set_prior("new", mean=0.9, weight=5.0)  # e.g. from its price tier or offline logs
    picks = []
    for _ in range(50):
        d = policy.pull(["old", "new"], {"bias": 1.0})
        policy.update(
            d.model, {"bias": 1.0}, float(rng.random() < 0.9 if d.model == "new" else 0.6)
        )
        picks.append(d.model)
    assert picks.count("new") > 40


def test_exploration_floor_keeps_a_written_off_model_in_play() -> None:
    rng = random.Random(4)
    policy = make_policy("linucb", seed=0, exploration_floor=0.1)
    picks = []
    for _ in range(2000):
        d = policy.pull(["a", "b"], {"bias": 1.0})
        policy.update(
            d.model, {"bias": 1.0}, float(rng.random() < (0.7 if d.model == "a" else 0.3))
        )
        picks.append(d.model)
    share_b = picks[1000:].count("b") / 1000
    assert 0.03 < share_b < 0.09  # floor / arms = 5%, and nothing more
