"""One contract test over every policy (River's check_estimator, STYLE.md #19)."""

from __future__ import annotations

import math
import pickle
import random

import pytest

from models.base import Policy
from models.registry import POLICIES, make_policy

ARMS = ["a", "b", "c", "d"]


def _ctx(rng: random.Random) -> dict[str, float]:
    return {"bias": 1.0, "x": rng.random(), "y": rng.random()}


def _drive(policy: Policy, steps: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    chosen = []
    for _ in range(steps):
        ctx = _ctx(rng)
        d = policy.pull(ARMS, ctx)
        policy.update(d.model, ctx, rng.random() + (0.5 if d.model == "c" else 0.0))
        chosen.append(d.model)
    return chosen


@pytest.fixture(params=sorted(POLICIES))
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_decisions_are_well_formed(name: str) -> None:
    policy = make_policy(name, seed=1)
    _drive(policy, 30)
    d = policy.pull(ARMS, {"bias": 1.0, "x": 0.2, "y": 0.1})
    assert d.model in ARMS and 0 < d.propensity <= 1
    assert d.policy_name == policy.name == name
    assert set(d.scores) == set(ARMS) and all(math.isfinite(s) for s in d.scores.values())
    assert d.policy_version == "30"


def test_seeded_runs_are_identical(name: str) -> None:
    assert _drive(make_policy(name, seed=7), 60) == _drive(make_policy(name, seed=7), 60)


def test_pickle_round_trip_continues_identically(name: str) -> None:
    policy = make_policy(name, seed=3)
    _drive(policy, 40)
    copy = pickle.loads(pickle.dumps(policy))
    assert _drive(policy, 40, seed=9) == _drive(copy, 40, seed=9)


def test_clone_is_unfitted_with_same_hyperparameters(name: str) -> None:
    policy = make_policy(name, seed=3)
    _drive(policy, 40)
    fresh = policy.clone()
    assert repr(fresh) == repr(policy) and fresh.n_updates == 0


def test_arms_can_come_and_go(name: str) -> None:
    policy = make_policy(name, seed=0)
    _drive(policy, 30)
    rng = random.Random(1)
    for _ in range(30):  # a new arm appears, an old one disappears
        ctx = _ctx(rng)
        d = policy.pull(["b", "c", "new"], ctx)
        assert d.model in {"b", "c", "new"}
        policy.update(d.model, ctx, 1.0)
    d = policy.pull(["a"], {"bias": 1.0, "z_new_feature": 0.5})
    assert d.model == "a"


@pytest.mark.parametrize(
    ("arms", "context", "match"),
    [
        ([], None, "at least one arm"),
        (["a", "a"], None, "unique"),
        (["a", ""], None, "non-empty"),
        (["a"], {"x": math.nan}, "not finite"),
        (["a"], {"x": math.inf}, "not finite"),
    ],
)
def test_bad_pulls_are_refused(
    name: str, arms: list[str], context: dict[str, float] | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        make_policy(name).pull(arms, context)


def test_bad_updates_are_refused_and_change_nothing(name: str) -> None:
    policy = make_policy(name, seed=0)
    _drive(policy, 10)
    before = pickle.dumps(policy)
    with pytest.raises(ValueError, match="reward"):
        policy.update("a", {"bias": 1.0}, math.nan)
    with pytest.raises(ValueError, match="arm_id"):
        policy.update("", {"bias": 1.0}, 1.0)
    assert pickle.dumps(policy) == before


def test_bad_hyperparameters_are_refused() -> None:
    with pytest.raises(ValueError):
        make_policy("linucb", alpha=-1)
    with pytest.raises(ValueError):
        make_policy("linucb", ridge=0)
    with pytest.raises(ValueError):
        make_policy("epsilon_greedy", epsilon=2.0)
    with pytest.raises(ValueError, match="unknown policy 'x'"):
        make_policy("x")


def test_burn_in_tries_every_arm_first() -> None:
    policy = make_policy("linucb", seed=0, burn_in=2)
    chosen = _drive(policy, 8)
    assert sorted(chosen) == sorted(ARMS * 2)
