"""State contract over every learner kind in ``models/`` (policies have more in
test_policy_contract.py): a JSON dict round trip and pickle keep the learned state, ``clone`` is
unfitted, a corrupt state is refused, and no kind is left out of this file."""

from __future__ import annotations

import json
import pickle
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import models.cascade
import models.forecast
import models.pacer
import models.pareto
import models.quality
import models.tuning
from models.kinds import POLICIES, make_policy
from models.state import _KINDS, StateError, Stateful


def _policy(name: str) -> Callable[[], Stateful]:
    def build() -> Stateful:
        p = make_policy(name, seed=0)
        rng = random.Random(0)
        for _ in range(40):
            ctx = {"bias": 1.0, "x": rng.random()}
            d = p.pull(["a", "b", "c"], ctx)
            p.update(d.model, ctx, rng.random())
        return p

    return build


def _quality() -> Stateful:
    m = models.quality.QualityModel()
    rng = random.Random(0)
    for _ in range(50):
        x = {"len": rng.random(), "code": float(rng.random() < 0.5)}
        m.learn_one(x, 0.5 * x["code"] + 0.3, arm=rng.choice(["a", "b"]))
    return m


def _cascade() -> Stateful:
    c = models.cascade.EscalationCascade(["small", "large"], seed=0)
    rng = random.Random(0)

    def call(model: str) -> tuple[float, float, bool]:
        good = rng.random() < (0.5 if model == "small" else 0.9)
        return float(good), (0.0001 if model == "small" else 0.002), False

    for _ in range(30):
        c.run_episode({"bias": 1.0}, call)
    return c


def _tuner() -> Stateful:
    t = models.tuning.ParameterTuner(seed=0)
    for i in range(6):
        s = t.suggest("code")
        t.observe("code", s.trial_number, 0.1 * i)
    return t


def _pareto() -> Stateful:
    p = models.pareto.ParetoTracker(min_samples=1)
    for i in range(10):
        p.learn_one(f"cfg{i % 3}", quality=0.1 * (i % 3), cost_usd=0.001 * (i % 3), latency_ms=100)
    return p


def _forecaster() -> Stateful:
    f = models.forecast.WorkloadForecaster(seasonality=4)
    for t in range(16):
        f.learn_one({("gpt", "chat"): 10.0 + (t % 4)})
    return f


def _pacer() -> Stateful:
    p = models.pacer.BudgetPacer(10.0, initial_wtp=0.05)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for h in range(6):
        p.observe(0.2, start + timedelta(hours=h))
        p.willingness_to_pay(start + timedelta(hours=h))
    return p


BUILDERS: dict[str, Callable[[], Stateful]] = {
    "budget_pacer": _pacer,
    "param_tuner": _tuner,
    "pareto_tracker": _pareto,
    "q_cascade": _cascade,
    "quality_model": _quality,
    "workload_forecaster": _forecaster,
    **{cls.kind: _policy(name) for name, (cls, _) in POLICIES.items()},
    "thompson_beta": _policy("cost_aware_thompson"),
}


def test_every_learner_kind_is_covered() -> None:
    assert set(_KINDS) - {"doc_counter"} <= set(BUILDERS)


@pytest.fixture(params=sorted(BUILDERS))
def learner(request: pytest.FixtureRequest) -> Stateful:
    return BUILDERS[str(request.param)]()


def _canonical(obj: Stateful) -> Any:
    return json.loads(json.dumps(obj.to_dict(), sort_keys=True))


def test_dict_round_trip_keeps_everything(learner: Stateful) -> None:
    state = _canonical(learner)
    assert state["format"] == 1 and state["kind"] == learner.kind
    restored = Stateful.from_dict(state)
    assert type(restored) is type(learner)
    assert _canonical(restored) == state


def test_pickle_round_trip_keeps_everything(learner: Stateful) -> None:
    assert _canonical(pickle.loads(pickle.dumps(learner))) == _canonical(learner)


def test_clone_is_unfitted_with_the_same_hyperparameters(learner: Stateful) -> None:
    fresh = learner.clone()
    assert type(fresh) is type(learner)
    assert fresh.to_dict()["params"] == learner.to_dict()["params"]
    assert _canonical(fresh) != _canonical(learner)  # the learned state is gone


def test_corrupt_state_is_refused_with_a_clear_error(learner: Stateful) -> None:
    state = learner.to_dict()
    with pytest.raises(StateError, match="corrupt state"):
        Stateful.from_dict({**state, "state": {"nonsense": 1}})
