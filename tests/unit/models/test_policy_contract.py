"""One contract test over every policy (River's check_estimator, docs/style.md #19)."""

from __future__ import annotations

import json
import math
import pickle
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from models.base import BasePolicy
from models.kinds import POLICIES, make_policy
from models.state import StateError, Stateful

ARMS = ["a", "b", "c", "d"]

VARIANTS: dict[str, Callable[[int | None], BasePolicy]] = {
    name: (lambda seed, name=name: make_policy(name, seed=seed)) for name in sorted(POLICIES)
}
VARIANTS.update(
    {
        "linucb_discounted": lambda seed: make_policy("linucb", seed=seed, discount=0.95),
        "lin_thompson_capped": lambda seed: make_policy(
            "lin_thompson", seed=seed, max_reward=1.0, exploration_floor=0.1
        ),
        "ucb1_window": lambda seed: make_policy("ucb1", seed=seed, window=10),
        "thompson_gaussian_discounted": lambda seed: make_policy(
            "thompson_gaussian", seed=seed, discount=0.9
        ),
    }
)


def _ctx(rng: random.Random) -> dict[str, float]:
    return {"bias": 1.0, "x": rng.random(), "y": rng.random()}


def _drive(policy: BasePolicy, steps: int, seed: int = 0) -> list[str]:
    """Pull and learn ``steps`` times; rewards in [0, 1], arm c is best."""
    rng = random.Random(seed)
    chosen = []
    for _ in range(steps):
        ctx = _ctx(rng)
        d = policy.pull(ARMS, ctx)
        policy.update(d.model, ctx, 0.5 * rng.random() + (0.5 if d.model == "c" else 0.0))
        chosen.append(d.model)
    return chosen


@pytest.fixture(params=sorted(VARIANTS))
def make(request: pytest.FixtureRequest) -> Callable[[int | None], BasePolicy]:
    return VARIANTS[str(request.param)]


def test_decisions_are_well_formed(make: Callable[[int | None], BasePolicy]) -> None:
    policy = make(1)
    _drive(policy, 30)
    d = policy.pull(ARMS, {"bias": 1.0, "x": 0.2, "y": 0.1})
    assert d.model in ARMS and 0 < d.propensity <= 1
    assert d.policy_name == policy.name
    assert set(d.scores) == set(ARMS) and all(math.isfinite(s) for s in d.scores.values())
    assert d.policy_version == "30"
    e = d.explanation
    assert e is not None and e.reason in {"greedy", "optimism", "random exploration", "burn-in"}
    assert e.expected_reward == pytest.approx(e.estimate - e.penalty)
    assert e.explored == (e.reason in {"optimism", "random exploration"}) or e.reason == "burn-in"


def test_seeded_runs_are_identical(make: Callable[[int | None], BasePolicy]) -> None:
    assert _drive(make(7), 60) == _drive(make(7), 60)


def test_pickle_round_trip_continues_identically(make: Callable[[int | None], BasePolicy]) -> None:
    policy = make(3)
    _drive(policy, 40)
    copy = pickle.loads(pickle.dumps(policy))
    assert _drive(policy, 40, seed=9) == _drive(copy, 40, seed=9)


def test_dict_round_trip_is_json_and_continues_identically(
    make: Callable[[int | None], BasePolicy],
) -> None:
    policy = make(3)
    _drive(policy, 40)
    state = json.loads(json.dumps(policy.to_dict()))
    assert state["kind"] == policy.name and state["format"] == 1
    copy = Stateful.from_dict(state)
    assert type(copy) is type(policy) and repr(copy) == repr(policy)
    assert _drive(policy, 40, seed=9) == _drive(copy, 40, seed=9)


def test_clone_is_unfitted_with_same_hyperparameters(
    make: Callable[[int | None], BasePolicy],
) -> None:
    policy = make(3)
    _drive(policy, 40)
    fresh = policy.clone()
    assert repr(fresh) == repr(policy) and fresh.n_updates == 0


def test_update_after_pull_changes_the_estimate(make: Callable[[int | None], BasePolicy]) -> None:
    policy = make(0)
    ctx = {"bias": 1.0, "x": 0.5, "y": 0.5}
    before = policy.pull(ARMS, ctx)
    for _ in range(5):
        policy.update(before.model, ctx, 1.0)
    after = policy.pull(ARMS, ctx)
    assert policy.n_updates == 5
    if policy.name == "random":  # learns nothing, by design
        assert after.scores == before.scores and after.propensity == before.propensity
    else:
        assert after.scores[before.model] != before.scores[before.model]


def _stream(n: int, seed: int) -> list[tuple[str, dict[str, float], float]]:
    rng = random.Random(seed)
    return [
        (rng.choice(ARMS), _ctx(rng), rng.random())  # logged events, arms chosen at random
        for _ in range(n)
    ]


@pytest.mark.parametrize(
    "name", ["epsilon_greedy", "ucb1", "thompson_gaussian", "linucb", "cost_aware_linucb"]
)  # exact merges; ogd_greedy's is an approximation (federated averaging), tested below
def test_merge_of_two_halves_equals_one_whole(name: str) -> None:
    events = _stream(200, seed=4)
    whole = make_policy(name, seed=0).learn_many(events)
    left = make_policy(name, seed=0).learn_many(events[:90])
    right = make_policy(name, seed=0).learn_many(events[90:])
    merged = left.merge(right)
    rng = random.Random(5)
    for _ in range(10):
        ctx = _ctx(rng)
        for arm in ARMS:
            assert merged.predict_one(arm, ctx) == pytest.approx(  # type: ignore[attr-defined]
                whole.predict_one(arm, ctx),  # type: ignore[attr-defined]
                abs=1e-9,
            )
    assert merged.n_updates == whole.n_updates == 200


@pytest.mark.parametrize("name", ["ucb1", "linucb", "lin_thompson"])
def test_merge_of_replicas_from_a_snapshot_counts_the_snapshot_once(name: str) -> None:
    events = _stream(300, seed=6)
    snapshot = make_policy(name, seed=0).learn_many(events[:100])
    r1 = pickle.loads(pickle.dumps(snapshot)).learn_many(events[100:180])
    r2 = pickle.loads(pickle.dumps(snapshot)).learn_many(events[180:])
    whole = make_policy(name, seed=0).learn_many(events)
    merged = r1.merge(r2, base=snapshot)
    ctx = {"bias": 1.0, "x": 0.3, "y": 0.9}
    for arm in ARMS:
        assert merged.predict_one(arm, ctx) == pytest.approx(  # type: ignore[attr-defined]
            whole.predict_one(arm, ctx),  # type: ignore[attr-defined]
            abs=1e-9,
        )
    assert merged.n_updates == 300


def test_merge_refuses_different_policies() -> None:
    with pytest.raises(ValueError, match="same class"):
        make_policy("linucb").merge(make_policy("linucb", alpha=2.0))


def test_arms_can_come_and_go(make: Callable[[int | None], BasePolicy]) -> None:
    policy = make(0)
    _drive(policy, 30)
    rng = random.Random(1)
    for _ in range(30):  # a new arm appears, an old one disappears
        ctx = _ctx(rng)
        d = policy.pull(["b", "c", "new"], ctx)
        assert d.model in {"b", "c", "new"}
        policy.update(d.model, ctx, 1.0)
    d = policy.pull(["a"], {"bias": 1.0, "z_new_feature": 0.5})
    assert d.model == "a"


def test_a_prohibitive_penalty_is_never_exploited(make: Callable[[int | None], BasePolicy]) -> None:
    policy = make(0)
    _drive(policy, 60)
    chosen = set()
    for seed in range(20):
        d = policy.pull(ARMS, _ctx(random.Random(seed)), penalties={"c": 100.0})
        chosen.add(d.model)
        assert d.scores["c"] == min(d.scores.values()) < -90
        assert d.explanation is not None
        if d.model == "c":  # only random exploration may still try it
            assert d.explanation.reason == "random exploration" and d.propensity < 0.5
    if (
        policy.exploration_floor == 0
        and policy.name != "random"
        and not getattr(policy, "epsilon", 0)
    ):
        assert "c" not in chosen


@pytest.mark.parametrize(
    ("arms", "context", "penalties", "match"),
    [
        ([], None, None, "at least one arm"),
        (["a", "a"], None, None, "unique"),
        (["a", ""], None, None, "non-empty"),
        (["a"], {"x": math.nan}, None, "not finite"),
        (["a"], {"x": math.inf}, None, "not finite"),
        (["a"], None, {"zz": 1.0}, "not offered"),
        (["a"], None, {"a": math.nan}, "finite"),
    ],
)
def test_bad_pulls_are_refused(
    make: Callable[[int | None], BasePolicy],
    arms: list[str],
    context: dict[str, float] | None,
    penalties: dict[str, float] | None,
    match: str,
) -> None:
    with pytest.raises(ValueError, match=match):
        make(0).pull(arms, context, penalties=penalties)


def test_bad_updates_are_refused_and_change_nothing(
    make: Callable[[int | None], BasePolicy],
) -> None:
    policy = make(0)
    _drive(policy, 10)
    before = pickle.dumps(policy)
    with pytest.raises(ValueError, match="reward"):
        policy.update("a", {"bias": 1.0}, math.nan)
    with pytest.raises(ValueError, match="reward"):
        policy.update("a", {"bias": 1.0}, "0.5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="arm_id"):
        policy.update("", {"bias": 1.0}, 1.0)
    with pytest.raises(ValueError, match="not finite"):
        policy.update("a", {"bias": np.inf}, 1.0)
    assert pickle.dumps(policy) == before


def test_beta_thompson_refuses_rewards_outside_unit_interval() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_policy("cost_aware_thompson").update("a", None, 1.5)


def test_bad_state_dicts_are_refused() -> None:
    good = make_policy("linucb", seed=0).to_dict()
    with pytest.raises(StateError, match="unknown learner kind"):
        Stateful.from_dict({**good, "kind": "nope"})
    with pytest.raises(StateError, match="format"):
        Stateful.from_dict({**good, "format": 99})
    with pytest.raises(StateError, match="corrupt"):
        Stateful.from_dict({**good, "state": {}})
    with pytest.raises(StateError, match="not a"):
        type(make_policy("ucb1")).from_dict(good)


def test_bad_hyperparameters_are_refused() -> None:
    for name, params in [
        ("linucb", {"alpha": -1}),
        ("linucb", {"ridge": 0}),
        ("linucb", {"discount": 0}),
        ("epsilon_greedy", {"epsilon": 2.0}),
        ("ucb1", {"c": -1}),
        ("ucb1", {"window": 0}),
        ("ucb1", {"window": 5, "discount": 0.9}),
        ("thompson_gaussian", {"sigma": 0}),
        ("lin_thompson", {"exploration_floor": 1.5}),
    ]:
        with pytest.raises(ValueError):
            make_policy(name, **params)
    with pytest.raises(ValueError, match="unknown policy 'x'"):
        make_policy("x")


def test_burn_in_tries_every_arm_first() -> None:
    policy = make_policy("linucb", seed=0, burn_in=2)
    chosen = _drive(policy, 8)
    assert sorted(chosen) == sorted(ARMS * 2)
    assert policy.pull(ARMS, {"bias": 1.0}).explanation is not None


def test_exploration_floor_bounds_every_propensity() -> None:
    policy = make_policy("linucb", seed=0, exploration_floor=0.2)
    _drive(policy, 50)
    d = policy.pull(ARMS, {"bias": 1.0, "x": 0.5, "y": 0.5})
    assert d.propensity >= 0.2 / len(ARMS) - 1e-12


def test_ogd_greedy_merge_of_halves_predicts_close_to_the_whole() -> None:
    events = _stream(600, seed=4)
    whole = make_policy("ogd_greedy", seed=0).learn_many(events)
    merged = make_policy("ogd_greedy", seed=0).learn_many(events[:300])
    merged = merged.merge(make_policy("ogd_greedy", seed=0).learn_many(events[300:]))
    ctx = {"bias": 1.0, "x": 0.3, "y": 0.9}
    for arm in ARMS:
        assert merged.predict_one(arm, ctx) == pytest.approx(  # type: ignore[attr-defined]
            whole.predict_one(arm, ctx),  # type: ignore[attr-defined]
            abs=0.1,
        )
    assert merged.n_updates == 600


def _decision_view(d: Any) -> tuple[Any, ...]:
    """What a decision says, but for its id and timestamp."""
    return (d.model, d.propensity, d.policy_version, d.scores, d.explanation, d.notes)


def test_pull_many_is_that_many_pulls(make: Callable[[int | None], BasePolicy]) -> None:
    a, b = make(5), make(5)
    _drive(a, 40)
    _drive(b, 40)
    rng = random.Random(3)
    contexts: list[dict[str, float] | None] = [_ctx(rng) for _ in range(12)] + [None]
    penalties: list[dict[str, float] | None] = [
        {arm: rng.random() * 0.2 for arm in ARMS[:2]} for _ in contexts
    ]
    penalties[4] = None
    many = a.pull_many(ARMS, contexts, penalties=penalties)
    one_by_one = [b.pull(ARMS, c, penalties=p) for c, p in zip(contexts, penalties, strict=True)]
    assert [_decision_view(d) for d in many] == [_decision_view(d) for d in one_by_one]
    assert len({d.decision_id for d in many}) == len(many)
    with pytest.raises(ValueError, match="2 penalties for 3 contexts"):
        a.pull_many(ARMS, contexts[:3], penalties=penalties[:2])
    assert a.pull_many(ARMS, []) == []
