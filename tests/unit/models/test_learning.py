"""Learners beat uniform random on seeded synthetic worlds, by a margin a broken one would miss."""

from __future__ import annotations

import random

import numpy as np
import pytest

from models.base import Policy
from models.linucb import LinUCB
from models.registry import make_policy

ARMS = ["cheap", "coder", "writer"]


def world(ctx: dict[str, float], arm: str, rng: random.Random) -> float:
    """Coder is best on code, writer on prose, cheap is mediocre everywhere (noisy rewards)."""
    base = {
        "cheap": 0.5,
        "coder": 0.9 if ctx["code"] else 0.2,
        "writer": 0.2 if ctx["code"] else 0.9,
    }
    return base[arm] + rng.gauss(0, 0.1)


def average_reward(policy: Policy, steps: int = 1500, seed: int = 0) -> float:
    rng = random.Random(seed)
    total = 0.0
    for _ in range(steps):
        ctx = {"bias": 1.0, "code": float(rng.random() < 0.5)}
        d = policy.pull(ARMS, ctx)
        r = world(ctx, d.model, rng)
        policy.update(d.model, ctx, r)
        total += r
    return total / steps


def test_linucb_learns_the_context() -> None:
    # Oracle: 0.9; best single arm: 0.55; uniform random: 0.53.
    assert average_reward(make_policy("linucb", seed=0)) > 0.8


def test_epsilon_greedy_finds_the_best_single_arm() -> None:
    means = {"cheap": 0.3, "coder": 0.5, "writer": 0.7}
    rng = random.Random(0)
    policy = make_policy("epsilon_greedy", seed=0)
    total = 0.0
    for _ in range(1500):
        d = policy.pull(ARMS)
        r = means[d.model] + rng.gauss(0, 0.2)
        policy.update(d.model, None, r)
        total += r
    # Best arm 0.7, uniform random 0.5: a learner must get most of the way there.
    assert total / 1500 > 0.65


def test_random_is_the_floor() -> None:
    assert average_reward(make_policy("random", seed=0)) == pytest.approx(0.533, abs=0.03)


def test_sherman_morrison_matches_direct_inverse() -> None:
    rng = np.random.default_rng(0)
    policy = LinUCB(alpha=0.1, ridge=2.0, burn_in=0)
    xs = []
    for _ in range(50):
        x = {"bias": 1.0, "u": float(rng.normal()), "v": float(rng.normal())}
        policy.update("a", x, float(rng.normal()))
        xs.append([x["bias"], x["u"], x["v"]])
    mat = np.array(xs)
    a = 2.0 * np.eye(3) + mat.T @ mat
    np.testing.assert_allclose(policy._a_inv[0], np.linalg.inv(a), rtol=1e-8, atol=1e-10)


def test_new_feature_keeps_what_was_learned() -> None:
    policy = LinUCB(alpha=0.0, burn_in=0)
    for _ in range(100):
        policy.update("a", {"bias": 1.0}, 1.0)
    before = policy.predict_one("a", {"bias": 1.0})
    policy.update("a", {"bias": 1.0, "new": 0.0}, 1.0)  # grows the feature space
    assert policy.predict_one("a", {"bias": 1.0}) == pytest.approx(before, abs=0.01)
    assert policy.predict_one("never-seen", {"bias": 1.0}) == 0.0
