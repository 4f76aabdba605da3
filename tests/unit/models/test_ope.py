"""Off-policy estimators on seeded synthetic worlds whose target value is known exactly."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from llmopt.schemas import Decision
from llmopt.types import Features
from models.epsilon_greedy import EpsilonGreedy
from models.ope import (
    Estimate,
    LoggedBandit,
    direct_method,
    doubly_robust,
    ips,
    replay,
    reward_matrix,
    snips,
)
from models.quality import QualityModel

# -- a world with 5 context types and 4 actions --------------------------------------------------
P_CONTEXT = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
MU = np.array(  # expected reward of each action in each context type
    [
        [0.2, 0.5, 0.7, 0.3],
        [0.6, 0.2, 0.4, 0.8],
        [0.3, 0.9, 0.1, 0.5],
        [0.7, 0.4, 0.6, 0.2],
        [0.5, 0.5, 0.3, 0.9],
    ]
)
_scores = np.random.default_rng(123).normal(size=(2, 5, 4))
LOGGING = np.exp(_scores[0]) / np.exp(_scores[0]).sum(axis=1, keepdims=True)
LOGGING = 0.8 * LOGGING + 0.2 / 4  # every action at least 5%
TARGET = np.exp(5 * MU + _scores[1]) / np.exp(5 * MU + _scores[1]).sum(axis=1, keepdims=True)
TRUE_VALUE = float(P_CONTEXT @ (TARGET * MU).sum(axis=1))
LOGGING_VALUE = float(P_CONTEXT @ (LOGGING * MU).sum(axis=1))
ESTIMATORS: dict[str, Callable[..., Estimate]] = {
    "ips": ips,
    "snips": snips,
    "dm": direct_method,
    "dr": doubly_robust,
}


@dataclass
class World:
    logs: LoggedBandit
    target: np.ndarray
    context_type: np.ndarray


def simulate(n: int, rng: np.random.Generator) -> World:
    c = rng.choice(5, size=n, p=P_CONTEXT)
    u = rng.random(n)[:, None]
    a = (u > np.cumsum(LOGGING[c], axis=1)).sum(axis=1)
    r = MU[c, a] + rng.uniform(-0.1, 0.1, size=n)  # a quality score in [0, 1], mean MU
    logs = LoggedBandit(a, r, LOGGING[c, a], contexts=np.eye(5)[c])
    return World(logs, TARGET[c], c)


def run(name: str, world: World, q_hat: np.ndarray | None = None, **kw: object) -> Estimate:
    if name in ("dm", "dr"):
        return ESTIMATORS[name](world.logs, world.target, q_hat, **kw)
    return ESTIMATORS[name](world.logs, world.target, **kw)


def test_the_world_is_a_real_off_policy_problem() -> None:
    assert abs(TRUE_VALUE - LOGGING_VALUE) > 0.1  # naive averaging of the logs would fail
    assert LOGGING.min() >= 0.05


# -- hand-checked values ----------------------------------------------------------------------
def test_point_estimates_match_hand_computation() -> None:
    logs = LoggedBandit([0, 1, 1], [1.0, 0.5, 1.0], [0.5, 0.25, 0.5])
    pi = np.array([[0.2, 0.8], [0.5, 0.5], [1.0, 0.0]])
    q = np.array([[0.4, 0.6], [0.1, 0.3], [0.9, 0.5]])
    w = np.array([0.2 / 0.5, 0.5 / 0.25, 0.0])
    r = np.array([1.0, 0.5, 1.0])
    dm_terms = np.array([0.2 * 0.4 + 0.8 * 0.6, 0.5 * 0.1 + 0.5 * 0.3, 0.9])
    dr_terms = dm_terms + w * (r - np.array([0.4, 0.3, 0.5]))
    assert ips(logs, pi, seed=0).value == pytest.approx((w * r).mean())
    assert snips(logs, pi, seed=0).value == pytest.approx((w * r).sum() / w.sum())
    assert direct_method(logs, pi, q, seed=0).value == pytest.approx(dm_terms.mean())
    assert doubly_robust(logs, pi, q, seed=0).value == pytest.approx(dr_terms.mean())


def test_snips_is_shift_invariant_and_ips_is_not() -> None:
    world = simulate(500, np.random.default_rng(0))
    shifted = World(
        LoggedBandit(world.logs.actions, world.logs.rewards + 10.0, world.logs.propensities),
        world.target,
        world.context_type,
    )
    s0, s1 = snips(world.logs, world.target, seed=0), snips(shifted.logs, world.target, seed=0)
    assert s1.value == pytest.approx(s0.value + 10.0)
    assert s1.lower == pytest.approx(s0.lower + 10.0) and s1.upper == pytest.approx(s0.upper + 10.0)
    i0, i1 = ips(world.logs, world.target, seed=0), ips(shifted.logs, world.target, seed=0)
    assert abs(i1.value - (i0.value + 10.0)) > 0.05  # mean weight != 1 on a finite sample


# -- bias and variance over many seeded datasets -------------------------------------------------
def _many(
    name: str, reps: int, n: int, q_of: Callable[[World], np.ndarray] | None = None
) -> np.ndarray:
    rng = np.random.default_rng(2024)
    out = []
    for _ in range(reps):
        world = simulate(n, rng)
        q = q_of(world) if q_of is not None else None
        out.append(run(name, world, q, n_bootstrap=1, seed=0).value)
    return np.array(out)


def _oracle(world: World) -> np.ndarray:
    return MU[world.context_type]


def _wrong(world: World) -> np.ndarray:
    return np.clip(MU[world.context_type][:, ::-1] + 0.2, 0, 1)  # actions swapped, shifted


@pytest.mark.parametrize(
    ("name", "q_of"),
    [("ips", None), ("snips", None), ("dr", _oracle), ("dr", _wrong), ("dm", _oracle)],
    ids=["ips", "snips", "dr-good-model", "dr-wrong-model", "dm-good-model"],
)
def test_estimators_are_unbiased_when_they_should_be(
    name: str, q_of: Callable[[World], np.ndarray] | None
) -> None:
    values = _many(name, reps=300, n=300, q_of=q_of)
    se = values.std() / np.sqrt(values.size)
    assert abs(values.mean() - TRUE_VALUE) < max(4 * se, 0.005)
    assert abs(values.mean() - TRUE_VALUE) < 0.02


def test_direct_method_is_biased_by_a_wrong_model_and_dr_corrects_it() -> None:
    dm = _many("dm", reps=50, n=300, q_of=_wrong)
    dr = _many("dr", reps=50, n=300, q_of=_wrong)
    assert abs(dm.mean() - TRUE_VALUE) > 0.05
    assert abs(dr.mean() - TRUE_VALUE) < 0.03


def test_dr_has_lower_variance_than_ips_with_a_good_reward_model() -> None:
    ips_values = _many("ips", reps=200, n=300)
    dr_oracle = _many("dr", reps=200, n=300, q_of=_oracle)

    def fitted(world: World) -> np.ndarray:  # the direct method learned on the logs themselves
        return reward_matrix(world.logs, QualityModel(lr=0.05), arm_ids=["a", "b", "c", "d"])

    dr_fitted = _many("dr", reps=200, n=300, q_of=fitted)
    assert dr_oracle.std() < 0.3 * ips_values.std()  # measured: 0.14
    assert dr_fitted.std() < 0.4 * ips_values.std()  # measured: 0.18
    assert abs(dr_fitted.mean() - TRUE_VALUE) < 0.02


# -- confidence intervals ---------------------------------------------------------------------
def _coverage(name: str, alpha: float, reps: int = 200, n: int = 500) -> float:
    rng = np.random.default_rng(7)
    hits = 0
    for i in range(reps):
        world = simulate(n, rng)
        est = run(name, world, _oracle(world), n_bootstrap=400, alpha=alpha, seed=i)
        assert est.lower <= est.value <= est.upper
        hits += est.covers(TRUE_VALUE)
    return hits / reps


@pytest.mark.parametrize("name", ["ips", "snips", "dr"])
def test_95_percent_intervals_cover_about_95_percent_of_the_time(name: str) -> None:
    assert 0.88 <= _coverage(name, alpha=0.05) <= 0.995


def test_50_percent_intervals_cover_about_half_of_the_time() -> None:
    assert 0.35 <= _coverage("dr", alpha=0.5) <= 0.65


def test_interval_narrows_with_more_data_and_is_reproducible() -> None:
    rng = np.random.default_rng(3)
    small, large = simulate(500, rng), simulate(8000, rng)
    w_small = ips(small.logs, small.target, seed=0)
    w_large = ips(large.logs, large.target, seed=0)
    assert (w_large.upper - w_large.lower) < (w_small.upper - w_small.lower) / 2.5
    assert ips(small.logs, small.target, seed=1) == ips(small.logs, small.target, seed=1)
    assert ips(small.logs, small.target, seed=1) != ips(small.logs, small.target, seed=2)
    gen = np.random.default_rng(5)
    assert isinstance(ips(small.logs, small.target, seed=gen), Estimate)


# -- validation -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"actions": [0, 1], "rewards": [1.0], "propensities": [0.5, 0.5]}, "rewards must have"),
        ({"actions": [0, 1], "rewards": [1.0, 0.0], "propensities": [0.5]}, "propensities must"),
        ({"actions": [0, 1], "rewards": [1.0, 0.0], "propensities": [0.5, 0.0]}, r"\(0, 1\]"),
        ({"actions": [0, 1], "rewards": [1.0, 0.0], "propensities": [0.5, 1.5]}, r"\(0, 1\]"),
        ({"actions": [0, 1], "rewards": [1.0, np.nan], "propensities": [0.5, 0.5]}, "NaN"),
        ({"actions": [0, 1], "rewards": [1.0, 0.0], "propensities": [np.nan, 0.5]}, "NaN"),
        ({"actions": [0, -1], "rewards": [1.0, 0.0], "propensities": [0.5, 0.5]}, ">= 0"),
        ({"actions": [0, 0.5], "rewards": [1.0, 0.0], "propensities": [0.5, 0.5]}, "integer"),
        ({"actions": [], "rewards": [], "propensities": []}, "non-empty"),
        (
            {"actions": [0, 1], "rewards": [1, 0], "propensities": [0.5, 0.5], "contexts": [[1.0]]},
            "contexts must have shape",
        ),
        (
            {
                "actions": [0, 1],
                "rewards": [1, 0],
                "propensities": [0.5, 0.5],
                "contexts": [[1.0], [np.inf]],
            },
            "contexts contain",
        ),
    ],
)
def test_bad_logs_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LoggedBandit(**kwargs)  # type: ignore[arg-type]


LOGS = LoggedBandit([0, 1, 1], [1.0, 0.0, 1.0], [0.5, 0.5, 0.5])
GOOD_PI = np.full((3, 2), 0.5)


@pytest.mark.parametrize(
    ("pi", "match"),
    [
        (np.full((2, 2), 0.5), r"shape \(n=3"),
        (np.full(3, 0.5), r"shape \(n=3"),
        (np.array([[0.5, 0.5], [0.6, 0.6], [0.5, 0.5]]), "row 1 sums to 1.2"),
        (np.array([[1.5, -0.5], [0.5, 0.5], [0.5, 0.5]]), ">= 0"),
        (np.array([[np.nan, 0.5], [0.5, 0.5], [0.5, 0.5]]), "NaN"),
        (np.ones((3, 1)), "has 1 actions"),
    ],
)
@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_bad_target_probabilities_are_refused(name: str, pi: np.ndarray, match: str) -> None:
    q = np.zeros((3, 2)) if pi.ndim != 2 else np.zeros(pi.shape)
    world = World(LOGS, pi, np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match=match):
        run(name, world, q, seed=0)


@pytest.mark.parametrize("name", ["dm", "dr"])
@pytest.mark.parametrize(
    ("q", "match"), [(np.zeros((3, 3)), "shape of target_probs"), (np.full((3, 2), np.nan), "NaN")]
)
def test_bad_reward_estimates_are_refused(name: str, q: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        run(name, World(LOGS, GOOD_PI, np.zeros(3, dtype=int)), q, seed=0)


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"alpha": 0.0}, "alpha"), ({"alpha": 1.0}, "alpha"), ({"n_bootstrap": 0}, "n_bootstrap")],
)
def test_bad_interval_settings_are_refused(kw: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ips(LOGS, GOOD_PI, **kw)  # type: ignore[arg-type]


def test_snips_refuses_a_target_with_no_logged_support() -> None:
    with pytest.raises(ValueError, match="probability 0 to every logged action"):
        snips(LoggedBandit([0, 0], [1.0, 0.0], [0.5, 0.5]), np.tile([0.0, 1.0], (2, 1)))


# -- reward_matrix ----------------------------------------------------------------------------
def test_reward_matrix_fits_a_quality_model_and_recovers_the_world() -> None:
    world = simulate(6000, np.random.default_rng(11))
    q = reward_matrix(world.logs, QualityModel(lr=0.02), arm_ids=["a", "b", "c", "d"])
    assert q.shape == (6000, 4)
    assert np.abs(q - MU[world.context_type]).mean() < 0.03  # measured: 0.006


def test_reward_matrix_with_a_callable_and_feature_names() -> None:
    seen: list[dict[str, float]] = []

    def f(x: dict[str, float], arm: str) -> float:
        seen.append(x)
        return x["size"] * (2.0 if arm == "big" else 1.0)

    logs = LoggedBandit([0, 1, 0], [0.1, 0.2, 0.3], [0.5] * 3, contexts=[[1.0], [3.0], [1.0]])
    q = reward_matrix(logs, f, arm_ids=["small", "big"], feature_names=["size"])
    assert q.tolist() == [[1.0, 2.0], [3.0, 6.0], [1.0, 2.0]]
    assert len(seen) == 4  # two distinct contexts x two arms, each evaluated once


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"arm_ids": ["a"]}, ValueError, "only 1 arm_ids"),
        ({"arm_ids": ["a", "a"]}, ValueError, "unique"),
        ({"arm_ids": ["a", "b"], "feature_names": ["x", "y"]}, ValueError, "2 names for 1"),
    ],
)
def test_reward_matrix_bad_arguments(kwargs: dict[str, object], error: type, match: str) -> None:
    logs = LoggedBandit([0, 1], [0.1, 0.2], [0.5] * 2, contexts=[[1.0], [3.0]])
    with pytest.raises(error, match=match):
        reward_matrix(logs, lambda x, arm: 0.0, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        reward_matrix(logs, 3.0, arm_ids=["a", "b"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        reward_matrix(logs, lambda x, arm: float("nan"), arm_ids=["a", "b"])


# -- replay -----------------------------------------------------------------------------------
BERNOULLI = {"a": 0.2, "b": 0.5, "c": 0.8}


def uniform_logs(n: int, seed: int, contexts: bool = False) -> LoggedBandit:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 3, size=n)
    r = (rng.random(n) < np.array(list(BERNOULLI.values()))[a]).astype(float)
    ctx = rng.random((n, 2)) if contexts else None
    return LoggedBandit(a, r, np.full(n, 1 / 3), contexts=ctx)


@dataclass
class Spy:
    """A fixed policy that records what replay shows it."""

    arm: str
    name: str = "spy"
    contexts: list[Features | None] = field(default_factory=list)
    updates: list[tuple[str, float]] = field(default_factory=list)

    def pull(self, arm_ids: Sequence[str], context: Features | None = None) -> Decision:
        self.contexts.append(context)
        return Decision(model=self.arm, propensity=1.0, policy_name=self.name)

    def update(self, arm_id: str, context: Features | None, reward: float) -> Spy:
        self.updates.append((arm_id, reward))
        return self


def test_replay_of_a_fixed_policy_estimates_its_arm_mean() -> None:
    logs = uniform_logs(9000, seed=0, contexts=True)
    spy = Spy("b")
    est = replay(logs, spy, arm_ids=list(BERNOULLI), feature_names=["p", "q"], seed=0)
    kept = logs.actions == 1
    assert est.n == kept.sum() == len(spy.updates)
    assert est.value == pytest.approx(logs.rewards[kept].mean())
    assert est.covers(0.5) and est.method == "replay"
    assert all(arm == "b" for arm, _ in spy.updates)
    assert [r for _, r in spy.updates] == logs.rewards[
        kept
    ].tolist()  # the logged rewards, in order
    assert len(spy.contexts) == logs.n
    first = spy.contexts[0]
    assert first is not None and set(first) == {"p", "q"}
    assert first["p"] == pytest.approx(float(logs.contexts[0, 0]))  # type: ignore[index]


def test_replay_of_a_learning_policy_matches_running_it_online() -> None:
    arms = list(BERNOULLI)
    replayed, online = [], []
    for seed in range(8):
        est = replay(
            uniform_logs(6000, seed), EpsilonGreedy(epsilon=0.1, seed=seed), arm_ids=arms, seed=0
        )
        replayed.append(est.value)
        # the same policy played for the same number of steps in the real world
        rng = np.random.default_rng(100 + seed)
        policy = EpsilonGreedy(epsilon=0.1, seed=seed)
        total = 0.0
        for _ in range(est.n):
            arm = policy.pull(arms).model
            reward = float(rng.random() < BERNOULLI[arm])
            policy.update(arm, None, reward)
            total += reward
        online.append(total / est.n)
    assert np.mean(replayed) == pytest.approx(np.mean(online), abs=0.02)
    assert np.mean(replayed) > 0.7  # it learned that "c" is best


def test_replay_refuses_non_uniform_logs_unless_forced() -> None:
    logs = LoggedBandit([0, 1, 2], [1.0, 0.0, 1.0], [0.5, 0.25, 0.25])
    with pytest.raises(ValueError, match="uniformly random policy"):
        replay(logs, Spy("a"), arm_ids=["a", "b", "c"])
    with pytest.raises(ValueError, match="uniformly random policy"):  # uniform over 2, not 3 arms
        replay(LoggedBandit([0, 1], [1.0, 0.0], [0.5, 0.5]), Spy("a"), arm_ids=["a", "b", "c"])
    assert replay(logs, Spy("a"), arm_ids=["a", "b", "c"], force=True, seed=0).value == 1.0


def test_replay_refuses_bad_arguments() -> None:
    logs = uniform_logs(30, seed=1)
    with pytest.raises(ValueError, match="not one of arm_ids"):
        replay(logs, Spy("z"), arm_ids=list(BERNOULLI))
    with pytest.raises(ValueError, match="only 2 arm_ids"):
        replay(logs, Spy("a"), arm_ids=["a", "b"], force=True)
    with pytest.raises(ValueError, match="never chose a logged action"):
        replay(LoggedBandit([1, 2], [1.0, 1.0], [1 / 3] * 2), Spy("a"), arm_ids=list(BERNOULLI))
