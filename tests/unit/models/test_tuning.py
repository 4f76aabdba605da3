"""The TPE parameter tuner: finds each task's optimum from noisy rewards, keeps its trials."""

from __future__ import annotations

import json
import math
import pickle
import random
from pathlib import Path
from typing import Any

import pytest

from models.state import StateError, Stateful
from models.tuning import (
    DEFAULT_SPACE,
    Choice,
    FloatRange,
    IntRange,
    ParameterTuner,
    ParamValue,
    parse_space,
)

TEMPLATES = ("plain", "step_by_step", "concise")
# Optimum of each task type: (temperature, template, max_tokens).
OPTIMUM = {
    "code": (0.1, "step_by_step", 1024),
    "math": (0.0, "step_by_step", 2048),
    "chat": (0.8, "plain", 256),
}
PEAK = 0.9
NOISE = 0.15


def true_reward(task: str, params: dict[str, ParamValue]) -> float:
    """Peak 0.9 at the task's optimum; a wrong template costs 0.25, temperature is quadratic."""
    t0, template, tokens = OPTIMUM[task]
    temperature, max_tokens = float(params["temperature"]), float(params["max_tokens"])
    r = PEAK - 0.8 * (temperature - t0) ** 2
    r -= 0.0 if params["prompt_template"] == template else 0.25
    return r - 0.05 * math.log2(max_tokens / tokens) ** 2


def random_params_mean(task: str, n: int = 4000) -> float:
    rng = random.Random(0)
    total = 0.0
    for _ in range(n):
        params: dict[str, ParamValue] = {
            "temperature": rng.uniform(0.0, 1.5),
            "prompt_template": rng.choice(TEMPLATES),
            "max_tokens": round(math.exp(rng.uniform(math.log(64), math.log(4096)))),
        }
        total += true_reward(task, params)
    return total / n


def feed(tuner: ParameterTuner, task: str, n: int, rng: random.Random) -> None:
    for _ in range(n):
        s = tuner.suggest(task)
        assert s.task_type == task
        tuner.observe(task, s.trial_number, true_reward(task, s.params) + rng.gauss(0, NOISE))


def trials_of(tuner: ParameterTuner) -> dict[str, Any]:
    return dict(tuner.to_dict()["state"]["studies"])


def timeless(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in t.items() if not k.startswith("datetime")} for t in trials]


@pytest.fixture(scope="module")
def fed() -> ParameterTuner:
    tuner = ParameterTuner(seed=0)
    rng = random.Random(1)
    for task in OPTIMUM:
        feed(tuner, task, 20, rng)
    return tuner


# -- learning -------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_best_is_near_each_task_optimum_after_60_noisy_rewards(seed: int) -> None:
    # Measured (seeds 0-3, noise sd 0.15, 60 rewards per task, peak 0.90): true reward of `best`
    # 0.85-0.90; random parameters average 0.04 (code), -0.22 (math), 0.38 (chat). The requests
    # served during trials 31-60 earned 0.68-0.78 on average. Pure random search (TPE with 60
    # startup trials) under the same budget: `best` 0.60-0.89, trials 31-60 earned -0.49-0.43.
    # With smoothing=0 (`best` = the single luckiest trial) TPE's `best` was 0.82-0.89.
    tuner = ParameterTuner(seed=seed)
    rng = random.Random(100 + seed)
    earned: dict[str, list[float]] = {task: [] for task in OPTIMUM}
    for _ in range(60):  # interleaved, as live traffic is
        for task in OPTIMUM:
            s = tuner.suggest(task)
            earned[task].append(true_reward(task, s.params))
            tuner.observe(task, s.trial_number, earned[task][-1] + rng.gauss(0, NOISE))
    for task, (t0, template, _) in OPTIMUM.items():
        best = tuner.best(task)
        assert tuner.n_trials(task) == 60
        assert best["prompt_template"] == template
        assert abs(float(best["temperature"]) - t0) < 0.25
        assert true_reward(task, best) > PEAK - 0.08
        assert true_reward(task, best) > random_params_mean(task) + 0.4
        # It also learns while serving: the later half of the traffic is already well tuned.
        assert sum(earned[task][30:]) / 30 > random_params_mean(task) + 0.3


def test_task_types_learn_independently() -> None:
    tuner = ParameterTuner(seed=3)
    feed(tuner, "chat", 40, random.Random(3))
    assert float(tuner.best("chat")["temperature"]) > 0.5
    assert tuner.best("code") == tuner.defaults() == DEFAULT_SPACE_DEFAULTS
    assert tuner.n_trials("code") == 0
    assert tuner.task_types == ["chat"]


DEFAULT_SPACE_DEFAULTS = {"temperature": 0.7, "max_tokens": 1024, "prompt_template": "plain"}


# -- live traffic ---------------------------------------------------------------------------------
def test_many_pending_suggestions_and_refused_feedback() -> None:
    tuner = ParameterTuner(seed=0)
    pending = [tuner.suggest("code") for _ in range(5)]
    assert len({s.trial_number for s in pending}) == 5
    assert tuner.best("code") == tuner.defaults()  # pending trials are not feedback
    for s in reversed(pending):
        tuner.observe("code", s.trial_number, 0.5)
    assert tuner.n_trials("code") == 5
    with pytest.raises(ValueError, match="finished trial 4"):
        tuner.observe("code", pending[-1].trial_number, 0.1)
    with pytest.raises(ValueError, match="unknown trial 99"):
        tuner.observe("code", 99, 0.1)
    with pytest.raises(ValueError, match="unknown task type 'chat'"):
        tuner.observe("chat", 0, 0.1)
    assert tuner.task_types == ["code"]  # refused feedback created no study


# -- state ----------------------------------------------------------------------------------------
def test_dict_round_trip_keeps_trials_and_pending_suggestions(fed: ParameterTuner) -> None:
    tuner = Stateful.from_dict(fed.to_dict())
    pending = tuner.suggest("code")
    data = tuner.to_dict()
    assert data["kind"] == "param_tuner"
    assert json.loads(json.dumps(data)) == data
    restored = Stateful.from_dict(json.loads(json.dumps(data)))
    assert isinstance(restored, ParameterTuner)
    assert trials_of(restored) == trials_of(tuner)
    for task in OPTIMUM:
        assert restored.best(task) == fed.best(task)
        assert restored.n_trials(task) == 20
    # Trial numbers are preserved, so the suggestion pending at snapshot time can still be told.
    restored.observe("code", pending.trial_number, 0.7)
    assert restored.n_trials("code") == 21
    # A restored tuner is deterministic: two restores suggest the same next parameters.
    again = Stateful.from_dict(data)
    assert again.suggest("math") == restored.suggest("math")


def test_pickle_and_clone(fed: ParameterTuner) -> None:
    copy = pickle.loads(pickle.dumps(fed))
    assert trials_of(copy) == trials_of(fed)
    fresh = fed.clone()
    assert fresh.to_dict()["params"] == fed.to_dict()["params"]
    assert fresh.task_types == [] and fresh.best("code") == fresh.defaults()
    # Seeded: a clone replays the same suggestions as a new tuner with the same seed.
    a, b = fed.clone(), ParameterTuner(seed=0)
    feed(a, "code", 15, random.Random(7))
    feed(b, "code", 15, random.Random(7))
    assert timeless(trials_of(a)["code"]) == timeless(trials_of(b)["code"])


def test_sqlite_storage_survives_a_new_instance(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tuning.db'}"
    first = ParameterTuner(storage=url, seed=0)
    rng = random.Random(5)
    feed(first, "code", 6, rng)
    feed(first, "chat", 4, rng)
    pending = first.suggest("chat")

    second = ParameterTuner(storage=url, seed=0)
    assert second.task_types == ["chat", "code"]
    assert (second.n_trials("code"), second.n_trials("chat")) == (6, 4)
    assert second.best("code") == first.best("code")
    second.observe("chat", pending.trial_number, 0.9)  # feedback reaches any instance
    assert first.n_trials("chat") == 5
    with pytest.raises(ValueError, match="finished trial"):
        first.observe("chat", pending.trial_number, 0.9)

    # Loading a snapshot into the storage that already holds it adds no duplicates.
    snapshot = first.to_dict()
    assert snapshot["params"]["storage"] == url
    third = Stateful.from_dict(snapshot)
    assert (third.n_trials("code"), third.n_trials("chat")) == (6, 5)
    # ... and into memory it rebuilds every trial, times included.
    copy = Stateful.from_dict({**snapshot, "params": {**snapshot["params"], "storage": None}})
    assert trials_of(copy) == trials_of(first)


def test_merge_combines_completed_trials(fed: ParameterTuner) -> None:
    snapshot = fed.to_dict()
    a, b = Stateful.from_dict(snapshot), Stateful.from_dict(snapshot)
    feed(a, "code", 5, random.Random(1))
    feed(b, "code", 7, random.Random(2))
    b.suggest("code")  # pending trials are not merged
    for _ in range(3):
        b.observe("poetry", b.suggest("poetry").trial_number, 0.5)
    merged = a.merge(b)
    assert merged.n_trials("code") == 20 + 5 + 7  # the shared snapshot counted once
    assert merged.n_trials("poetry") == 3
    assert merged.n_trials("chat") == 20
    assert merged.storage is None
    assert a.n_trials("code") == 25 and b.n_trials("code") == 27  # inputs unchanged
    with pytest.raises(ValueError, match="same search space"):
        a.merge(ParameterTuner({"temperature": FloatRange(0.0, 1.0)}))


# -- search space ---------------------------------------------------------------------------------
def test_space_accepts_typed_specs_or_their_plain_form() -> None:
    plain = {name: spec.to_dict() for name, spec in DEFAULT_SPACE.items()}
    assert parse_space(plain) == DEFAULT_SPACE
    assert ParameterTuner(plain).space == ParameterTuner().space == plain
    space: dict[str, FloatRange | IntRange | Choice] = {
        "temperature": FloatRange(0.1, 1.0, log=True),
        "max_tokens": IntRange(16, 256, log=True),
        "template": Choice(("a", "b")),
    }
    tuner = ParameterTuner(space, seed=0)
    assert tuner.defaults() == {
        "temperature": pytest.approx(math.sqrt(0.1)),
        "max_tokens": 64,
        "template": "a",
    }
    s = tuner.suggest("x")
    assert 0.1 <= float(s.params["temperature"]) <= 1.0
    assert isinstance(s.params["max_tokens"], int) and 16 <= s.params["max_tokens"] <= 256
    assert s.params["template"] in ("a", "b")


# -- bad inputs -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: FloatRange(1.0, 0.5), "low < high"),
        (lambda: FloatRange(0.0, math.inf), "finite"),
        (lambda: FloatRange(0.0, 1.0, log=True), "log range"),
        (lambda: FloatRange(0.0, 1.0, default=2.0), "outside"),
        (lambda: IntRange(0, 10, log=True), "log range"),
        (lambda: Choice(()), "non-empty"),
        (lambda: Choice(("a", "a")), "unique"),
        (lambda: Choice(("a",), default="b"), "not one of"),
        (lambda: parse_space({}), "at least one"),
        (lambda: parse_space({"t": {"type": "gaussian"}}), "unknown type"),
        (lambda: ParameterTuner(storage="tuning.db"), "SQLAlchemy URL"),
        (lambda: ParameterTuner(smoothing=-1.0), "smoothing"),
        (lambda: ParameterTuner(n_startup_trials=-1), "n_startup_trials"),
    ],
)
def test_bad_specs_and_hyperparameters_are_refused(make: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_feedback_is_refused() -> None:
    tuner = ParameterTuner(seed=0)
    s = tuner.suggest("code")
    for reward in (math.nan, math.inf, True, "0.5"):
        with pytest.raises(ValueError, match="reward"):
            tuner.observe("code", s.trial_number, reward)  # type: ignore[arg-type]
    for number in ("0", 0.0, True):
        with pytest.raises(ValueError, match="trial_number"):
            tuner.observe("code", number, 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="task_type"):
        tuner.suggest("")
    tuner.observe("code", s.trial_number, 0.5)  # the trial was left intact by the refusals
    assert tuner.n_trials("code") == 1


def test_corrupt_state_is_refused(fed: ParameterTuner) -> None:
    data = fed.to_dict()
    data["state"]["studies"]["code"][3]["value"] = None
    with pytest.raises(StateError, match="no value"):
        Stateful.from_dict(data)
