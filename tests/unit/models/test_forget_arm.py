"""Discounting one arm (``BasePolicy.discount_arm``) and the loop's ``reset_arm`` (drift)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from llmopt.catalog import load_catalog
from llmopt.loop import LearningLoop
from models.base import BasePolicy
from models.kinds import POLICIES, make_policy
from models.linucb import LinUCB
from models.ucb import UCB1

ARMS = ["a", "b", "c"]
CANNOT = {"ogd_greedy", "random"}
"""Policies without per-arm statistics to discount (River models; nothing learned)."""


def trained(policy: BasePolicy, steps: int = 300, seed: int = 0) -> BasePolicy:
    rng = random.Random(seed)
    for t in range(steps):
        arm = ARMS[t % 3]
        x = rng.random()
        policy.update(arm, {"bias": 1.0, "x": x}, 0.2 + 0.3 * ARMS.index(arm) + 0.1 * x)
    return policy


@pytest.mark.parametrize("name", sorted(set(POLICIES) - CANNOT))
def test_discount_keeps_other_arms_and_shrinks_the_weight(name: str) -> None:
    policy = trained(make_policy(name, seed=0))
    before = {a: policy.predict_one(a, {"bias": 1.0, "x": 0.5}) for a in ARMS}  # type: ignore[attr-defined]
    state = policy.to_dict()
    assert policy.discount_arm("c", 1.0).to_dict() == state  # factor 1: nothing changes
    policy.discount_arm("c", 0.0)
    after = {a: policy.predict_one(a, {"bias": 1.0, "x": 0.5}) for a in ARMS}  # type: ignore[attr-defined]
    assert after["a"] == pytest.approx(before["a"]) and after["b"] == pytest.approx(before["b"])
    assert after["c"] != pytest.approx(before["c"])
    # Forgotten: the arm is burnt in again (burn_in >= 1 for every discountable policy).
    if policy.burn_in:
        assert policy.pull(ARMS, {"bias": 1.0, "x": 0.5}).model == "c"


@pytest.mark.parametrize("name", sorted(CANNOT))
def test_policies_without_arm_statistics_say_so(name: str) -> None:
    with pytest.raises(NotImplementedError):
        trained(make_policy(name, seed=0)).discount_arm("a")


def test_arm_stats_max_weight_keeps_the_mean_with_less_weight() -> None:
    policy = UCB1(seed=0)
    for _ in range(100):
        policy.update("a", None, 0.9)
    policy.discount_arm("a", 1.0, max_weight=10)
    assert policy._stats["a"][0] == pytest.approx(10.0)
    assert policy.arm_mean("a") == pytest.approx(0.9)
    for _ in range(10):  # ten new rewards now weigh as much as the whole past
        policy.update("a", None, 0.1)
    assert policy.arm_mean("a") == pytest.approx(0.5)


def test_windowed_arm_keeps_its_latest_rewards() -> None:
    policy = UCB1(window=10, seed=0)
    for r in range(10):
        policy.update("a", None, r / 10)
    policy.discount_arm("a", 0.3)
    assert list(policy._recent["a"]) == [0.7, 0.8, 0.9]
    assert policy.arm_mean("a") == pytest.approx(0.8)
    for r in range(100):  # the weight cap counts what the window holds, not every update
        policy.update("b", None, r / 100)
    policy.discount_arm("b", 1.0, max_weight=4)
    assert list(policy._recent["b"]) == [0.96, 0.97, 0.98, 0.99]


def test_discounted_policy_max_weight_counts_the_effective_weight() -> None:
    policy = UCB1(discount=0.9, seed=0)
    for _ in range(200):
        policy.update("a", None, 0.7)
    assert policy._stats["a"][0] == pytest.approx(10.0)  # 1 / (1 - 0.9)
    policy.discount_arm("a", 1.0, max_weight=5)
    assert policy._stats["a"][0] == pytest.approx(5.0)


def test_linear_discount_is_a_ridge_fit_on_down_weighted_data() -> None:
    rng = np.random.default_rng(0)
    policy = LinUCB(alpha=0.1, ridge=2.0, seed=0)
    xs = rng.random((50, 2))
    ys = xs @ np.array([0.3, 0.6]) + rng.normal(0, 0.05, 50)
    for x, y in zip(xs, ys, strict=True):
        policy.update("a", {"u": float(x[0]), "v": float(x[1])}, float(y))
    policy.discount_arm("a", 0.25)
    theta = np.linalg.solve(0.25 * xs.T @ xs + 2.0 * np.eye(2), 0.25 * xs.T @ ys)
    assert policy.predict_one("a", {"u": 0.4, "v": 0.7}) == pytest.approx(theta @ [0.4, 0.7])
    assert policy.arm_mean("a") == pytest.approx(ys.mean())  # context-free counts scaled alike


def test_unseen_arms_and_bad_factors() -> None:
    policy = trained(make_policy("cost_aware_linucb", seed=0))
    state = policy.to_dict()
    assert policy.discount_arm("never-seen").to_dict() == state
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="factor"):
            policy.discount_arm("a", bad)
    with pytest.raises(ValueError, match="max_weight"):
        policy.discount_arm("a", 1.0, max_weight=-1)


# -- the loop -----------------------------------------------------------------------------------
def test_loop_reset_arm_discounts_the_policy() -> None:
    loop = LearningLoop(trained(make_policy("ucb1", seed=0)), ARMS)
    assert loop.reset_arm("c", factor=1.0, max_weight=5)
    assert loop.policy._stats["c"][0] == pytest.approx(5.0)  # type: ignore[attr-defined]
    # A policy that cannot discount, or has no discount_arm at all: False, nothing raised.
    assert not LearningLoop(make_policy("random", seed=0), ARMS).reset_arm("a")

    class Bare:
        name = "bare"

        def pull(self, arm_ids, context=None):  # type: ignore[no-untyped-def]
            raise NotImplementedError

        def update(self, arm_id, context, reward):  # type: ignore[no-untyped-def]
            return self

    assert not LearningLoop(Bare(), ARMS).reset_arm("a")


def test_loop_reset_arm_costs_forgets_observed_costs() -> None:
    arms = ["gpt-4o", "house-model"]  # the catalog does not price the second
    loop = LearningLoop(make_policy("cost_aware_linucb", seed=0), arms, catalog=load_catalog())
    for _ in range(50):
        loop.cost_model.learn("house-model", 1000, 0.001)
    assert loop.cost_model.predict("house-model", 1000) == pytest.approx(0.001)
    trained(loop.policy, steps=30)  # type: ignore[arg-type]
    state = loop.policy.to_dict()  # type: ignore[attr-defined]
    # A cost-aware policy learns quality alone: its statistics stay, the costs go.
    assert not loop.reset_arm("house-model", costs=True)
    assert loop.cost_model.predict("house-model", 1000) is None  # as if never seen
    assert loop.policy.to_dict() == state  # type: ignore[attr-defined]
    loop.cost_model.learn("house-model", 1000, 0.003)  # the new price, learned at once
    assert loop.cost_model.predict("house-model", 1000) == pytest.approx(0.003)
    # A policy that learns the reward (old price inside) is discounted too.
    reward_loop = LearningLoop(trained(make_policy("ucb1", seed=0)), ARMS)
    assert reward_loop.reset_arm("a", costs=True)
