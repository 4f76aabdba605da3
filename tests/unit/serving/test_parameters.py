"""Parameters in every served decision: safe default, then TPE per (task type x model)."""

from __future__ import annotations

import random

import pytest

from llmopt.catalog import load_catalog
from llmopt.event_log import EventLog
from llmopt.schemas import Feedback, RequestContext
from models.tuning import ParameterTuner
from serving.parameters import SERVING_SPACE, ServedTuning
from serving.router import Router

CATALOG_PARAMS = {"temperature": 0.7, "max_tokens": 1024}


def test_record_adds_a_completed_trial_and_refuses_values_outside_the_space() -> None:
    t = ParameterTuner(SERVING_SPACE, seed=0)
    ok = {"temperature": 0.7, "top_p": 1.0, "max_tokens": 1024, "prompt_template": "plain"}
    t.record("k", ok, 0.5)
    assert t.n_trials("k") == 1 and t.best("k") == ok
    with pytest.raises(ValueError, match="outside"):
        t.record("k", {**ok, "temperature": 3.0}, 0.5)
    with pytest.raises(ValueError, match="outside"):
        t.record("k", {**ok, "prompt_template": "nope"}, 0.5)
    with pytest.raises(ValueError, match="name exactly"):
        t.record("k", {"temperature": 0.7}, 0.5)


def test_expire_fails_the_oldest_pending_suggestions() -> None:
    t = ParameterTuner(SERVING_SPACE, seed=0)
    asked = [t.suggest("k") for _ in range(5)]
    assert t.expire("k", keep=2) == 3
    with pytest.raises(ValueError, match="refused"):
        t.observe("k", asked[0].trial_number, 1.0)
    t.observe("k", asked[4].trial_number, 1.0)
    assert t.n_trials("k") == 1


def test_safe_default_until_enough_feedback_then_tuned() -> None:
    t = ServedTuning(min_feedback=3, explore=0.5, seed=1)
    for i in range(3):
        s = t.suggest("code", "m", CATALOG_PARAMS)
        assert s.params == {**CATALOG_PARAMS, "top_p": 1.0, "prompt_template": "plain"}
        assert s.reason.startswith(f"default: {i} of 3 feedback needed")
        assert t.observe(s.record, s.params, 0.5)
    reasons = set()
    for _ in range(20):
        s = t.suggest("code", "m", CATALOG_PARAMS)
        reasons.add(s.reason.split(":")[0])
        t.observe(s.record, s.params, random.random())
    assert reasons == {"tuned", "tuning"}
    # another pair has its own study and is still on its default
    assert t.suggest("code", "other", CATALOG_PARAMS).reason.startswith("default: 0 of 3")
    assert t.suggest("chat", "m", CATALOG_PARAMS).reason.startswith("default: 0 of 3")


def test_uninformative_failures_are_not_learned() -> None:
    t = ServedTuning(min_feedback=3, seed=0)
    s = t.suggest("code", "m", CATALOG_PARAMS)
    assert not t.observe(s.record, s.params, 0.0, error_kind="timeout")
    assert t.observe(s.record, s.params, 0.0, error_kind="context_length")
    assert not t.observe(None, s.params, 0.5)
    assert t.n_feedback("code/m") == 1


def test_max_tokens_is_capped_by_the_context_window_left() -> None:
    t = ServedTuning(seed=0)
    s = t.suggest("chat", "m", CATALOG_PARAMS, max_tokens_cap=300)
    assert s.params["max_tokens"] == 300 and "capped at 300" in s.reason


def tuned_temperature(seed: int) -> float:
    """Tune against a known response surface (best temperature 0.2) through the router."""
    r = Router(
        load_catalog(),
        EventLog("sqlite://"),
        arms=["gpt-4o-mini"],
        tuning=ServedTuning(min_feedback=5, explore=0.5, seed=seed),
    )
    rng = random.Random(seed)
    ctx = RequestContext(tenant="acme", prompt="write a sort", task_hints=["code"])
    for _ in range(120):
        d = r.decide(ctx).decision
        temperature = float(d.parameters["temperature"])
        q = 0.95 - (temperature - 0.2) ** 2 + rng.gauss(0, 0.03)
        r.feedback(Feedback(decision_id=d.decision_id, quality=min(max(q, 0.0), 1.0)))
    d = r.decide(ctx).decision
    assert d.parameters_reason.startswith(("tuned", "tuning"))
    return float(r.tuning.tuner.best("code/gpt-4o-mini")["temperature"])


def test_router_feedback_teaches_the_pair_the_decision_was_made_for() -> None:
    # the safe default is 0.7; 120 feedback move the best close to the optimum, 0.2
    assert abs(tuned_temperature(0) - 0.2) < 0.25


def test_every_decision_carries_parameters_and_their_reason() -> None:
    r = Router(load_catalog(), EventLog("sqlite://"))
    d = r.decide(RequestContext(tenant="acme", prompt="hi")).decision
    assert {"temperature", "max_tokens", "top_p", "prompt_template"} <= set(d.parameters)
    assert d.parameters_reason.startswith("default: 0 of 20 feedback needed")
    row = r.event_log.get_decision(d.decision_id)
    assert row is not None and row["context"]["tuning"]["key"] == f"general/{d.model}"
    assert row["parameters"] == d.parameters
