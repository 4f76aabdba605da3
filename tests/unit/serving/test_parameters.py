"""Parameters in every served decision: safe default, then TPE per (task type x model)."""

from __future__ import annotations

import dataclasses
import random

import pytest

from llmopt.catalog import load_catalog
from llmopt.event_log import EventLog
from llmopt.schemas import Feedback, RequestContext
from models.tuning import ParameterTuner
from models.tuning_snapshot import TuningSnapshot
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


def test_a_finished_search_counts_rewards_but_keeps_no_more_trials() -> None:
    t = ServedTuning(min_feedback=2, max_trials=6, seed=0)
    for _ in range(10):
        s = t.suggest("code", "m", CATALOG_PARAMS)
        t.observe(s.record, s.params, random.random())
    assert t.n_feedback("code/m") == 10  # every reward counted
    assert t.tuner.n_trials("code/m") == 6  # memory bounded by max_trials
    s = t.suggest("code", "m", CATALOG_PARAMS)
    assert s.reason.startswith("tuned: best of 10 feedback") and "search finished" in s.reason
    assert not t.observe(s.record, s.params, 1.0)  # not learned: the search is over


def test_deferred_tuning_leaves_tpe_to_refresh() -> None:
    t = ServedTuning(min_feedback=2, explore=1.0, seed=0)
    t.deferred = True
    for _ in range(3):
        s = t.suggest("code", "m", CATALOG_PARAMS)
        assert t.observe(s.record, s.params, 0.5)
    assert t.stale == 1  # the feedback path only recorded the rewards
    s = t.suggest("code", "m", CATALOG_PARAMS)
    assert s.reason.startswith("default")  # no best computed yet: still the safe default
    assert t.refresh() == 1 and t.stale == 0
    s = t.suggest("code", "m", CATALOG_PARAMS)  # explore=1: the ready TPE suggestion
    assert s.reason.startswith("tuning: TPE trial") and isinstance(s.record["trial"], int)
    assert t.observe(s.record, s.params, 0.9)
    assert t.stale == 1 and t.refresh(limit=0) == 0 and t.stale == 1


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


def taught(min_feedback: int = 3, n: int = 12, seed: int = 0) -> ServedTuning:
    """A tuning taught ``n`` rewards of pair code/m, best at temperature 0.2."""
    t = ServedTuning(min_feedback=min_feedback, explore=0.5, seed=seed)
    rng = random.Random(seed)
    for _ in range(n):
        s = t.suggest("code", "m", CATALOG_PARAMS)
        t.observe(
            s.record,
            s.params,
            1.0 - (float(s.params["temperature"]) - 0.2) ** 2 + rng.random() / 50,
        )
    return t


def test_snapshot_round_trip_restores_counts_best_and_serves_tuned() -> None:
    t = taught()
    snap = t.snapshot(until_feedback_id=7)
    restored = ServedTuning.from_snapshot(TuningSnapshot.from_json(snap.to_json()))
    assert restored.min_feedback == 3 and restored.explore == 0.5
    assert restored.n_feedback("code/m") == 12
    assert restored.tuner.results("code/m") == t.tuner.results("code/m")
    assert restored._best["code/m"] == t._best["code/m"]
    assert "code/m" in restored._ready  # one TPE suggestion ready: the decision is a lookup
    assert restored.snapshot(until_feedback_id=7) == snap
    reasons = {
        restored.suggest("code", "m", CATALOG_PARAMS).reason.split(":")[0] for _ in range(20)
    }
    assert "tuned" in reasons and "default" not in reasons
    # a pair the snapshot does not know starts from the safe default
    assert restored.suggest("chat", "m", CATALOG_PARAMS).reason.startswith("default: 0 of 3")


def test_a_restored_tuning_keeps_learning_online() -> None:
    restored = ServedTuning.from_snapshot(taught().snapshot())
    s = restored.suggest("code", "m", CATALOG_PARAMS)
    assert restored.observe(s.record, s.params, 0.9)
    assert restored.n_feedback("code/m") == 13 and restored.tuner.n_trials("code/m") == 13


def test_a_pair_below_min_feedback_stays_on_the_default_after_restore() -> None:
    restored = ServedTuning.from_snapshot(taught(min_feedback=20, n=5).snapshot())
    s = restored.suggest("code", "m", CATALOG_PARAMS)
    assert s.reason.startswith("default: 5 of 20 feedback needed")


def test_trials_outside_todays_space_are_skipped_and_the_best_recomputed() -> None:
    snap = taught().snapshot()
    pair = snap.pairs["code/m"]
    bad = {**pair.best, "prompt_template": "retired"}
    changed = dataclasses.replace(
        snap,
        pairs={"code/m": dataclasses.replace(pair, best=bad, trials=((bad, 9.0), *pair.trials))},
    )
    restored = ServedTuning.from_snapshot(changed)
    assert restored.tuner.n_trials("code/m") == 12
    assert restored._best["code/m"]["prompt_template"] != "retired"


def test_router_slots_serve_and_learn_their_own_versions_tuning() -> None:
    r = Router(load_catalog(), EventLog("sqlite://"), arms=["gpt-4o-mini"])
    snap = taught().snapshot()
    pairs = {"code/gpt-4o-mini": snap.pairs["code/m"]}  # the same rewards, for the served model
    champion_tuning = ServedTuning.from_snapshot(dataclasses.replace(snap, pairs=pairs))
    r.swap((r.lineup.champion.loop.policy, "v-champion"), champion_tuning=champion_tuning)
    r.swap(challenger=(r.lineup.champion.loop.policy, "v-challenger"))
    assert r.lineup.champion.loop.tuning is champion_tuning
    assert r.lineup.challenger is not None and r.lineup.challenger.loop.tuning is r.tuning
    ctx = RequestContext(tenant="acme", prompt="write a sort", task_hints=["code"])
    d = r.decide(ctx).decision
    assert d.policy_version == "v-champion"
    assert d.parameters_reason.startswith(("tuned", "tuning"))
    r.feedback(Feedback(decision_id=d.decision_id, quality=0.9))
    assert champion_tuning.n_feedback("code/gpt-4o-mini") == 13  # the slot's own tuning learned
    assert r.tuning.n_feedback("code/gpt-4o-mini") == 0  # not the shared one
