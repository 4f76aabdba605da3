"""Online features on the decision path: cache, staleness, exclusions, degraded flags."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from feature_store import names
from feature_store.reader import RouterFeatures
from llmopt.schemas import RequestContext
from llmopt.settings import Settings
from serving.live_features import (
    ERROR_RATE,
    LATENCY_P95,
    MODEL_LIVE,
    REQUESTS_1H,
    TASK_LIVE,
    TASK_QUALITY_24H,
    TASK_REQUESTS_24H,
    LiveFeatures,
    live_exclusions,
    live_penalties,
    live_priors,
)
from serving.router import Routed
from serving.runtime import ServingRuntime


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class ScriptedReader:
    """Answers with the values the test sets (a broken store when ``degraded``)."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, float]] = {}
        self.degraded = False
        self.calls = 0

    def read(
        self,
        models: Sequence[str],
        *,
        tenant: str,
        task_type: str,
        budget_ms: float | None = None,
    ) -> RouterFeatures:
        self.calls += 1
        values = {m: dict(self.values.get(m, {})) for m in models}
        if self.degraded:
            return RouterFeatures(
                values=values,
                degraded=True,
                reason="online store failed: ConnectionError",
                defaulted=frozenset(models),
            )
        return RouterFeatures(values=values)


def bad(error_rate: float = 0.9, p95: float = 100.0, n: float = 50.0) -> dict[str, float]:
    return {ERROR_RATE: error_rate, LATENCY_P95: p95, REQUESTS_1H: n}


def test_cache_per_tenant_and_task_stale_served_while_refreshed() -> None:
    reader, clock = ScriptedReader(), Clock()
    live = LiveFeatures(reader, ttl_s=1.0, clock=clock)
    reader.values["a"] = {"x": 1.0}
    live.get(["a"], tenant="t1", task_type="general")
    live.get(["a"], tenant="t1", task_type="general")
    assert reader.calls == 1
    live.get(["a"], tenant="t2", task_type="general")
    live.get(["a"], tenant="t1", task_type="code")
    assert reader.calls == 3
    reader.values["a"] = {"x": 2.0}
    clock.t = 1.01
    # past the ttl: the old value is served at once and the key refreshed in the background
    assert live.get(["a"], tenant="t1", task_type="general").values["a"] == {"x": 1.0}
    assert live.settle()
    assert reader.calls == 4
    assert live.get(["a"], tenant="t1", task_type="general").values["a"] == {"x": 2.0}
    assert live.hits == 3 and live.misses == 3
    assert live.hit_rate == 0.5
    live.close()


def test_a_late_first_read_is_refreshed_at_the_next_decision_not_a_ttl_later() -> None:
    """A key's first read is on the decision path, within a few milliseconds: when the store
    answers late, that decision gets the flagged fallback, and the next one starts a
    background refresh at once (the time has not moved) instead of a ttl later."""
    reader, clock = ScriptedReader(), Clock()
    live = LiveFeatures(reader, ttl_s=60.0, clock=clock)
    reader.values["a"] = {"x": 1.0}
    reader.degraded = True
    assert live.get(["a"], tenant="t", task_type="general").degraded
    reader.degraded = False
    assert live.get(["a"], tenant="t", task_type="general").degraded  # served, while ...
    assert live.settle() and reader.calls == 2  # ... refreshed in the background
    fresh = live.get(["a"], tenant="t", task_type="general")
    assert not fresh.degraded and fresh.values["a"] == {"x": 1.0}
    assert live.settle() and reader.calls == 2  # a good read lives for its ttl
    live.close()


def test_a_new_candidate_model_is_a_miss() -> None:
    reader = ScriptedReader()
    live = LiveFeatures(reader, ttl_s=60)
    live.get(["a"], tenant="t", task_type="general")
    live.get(["a", "b"], tenant="t", task_type="general")
    assert reader.calls == 2


def test_exclusions_need_enough_requests_and_ignore_defaults() -> None:
    f = RouterFeatures(
        values={"few": bad(n=2), "many": bad(), "slow": bad(0.0, p95=5000), "dflt": bad()},
        defaulted=frozenset({"dflt"}),
    )
    out = live_exclusions(["few", "many", "slow", "dflt"], f, max_latency_ms=None)
    assert list(out) == ["many"]
    out = live_exclusions(["few", "many", "slow", "dflt"], f, max_latency_ms=1000)
    assert sorted(out) == ["many", "slow"]
    assert "p95 latency 5000 ms" in out["slow"]


def test_the_router_service_reads_exactly_what_serving_uses() -> None:
    served = {
        names.feature_ref(v, f) for v, fields in names.ROUTER_FEATURES.items() for f in fields
    }
    assert served == {*MODEL_LIVE, *TASK_LIVE}
    assert names.ROUTER_SERVICE == "router_v2"


def test_a_default_distrusts_only_its_own_features() -> None:
    """No model x task row (a task type new to the model): no prior from it, but its own
    fleet-wide error rate and latency still count; no model row: nothing counts."""
    row = {**bad(error_rate=0.6), TASK_QUALITY_24H: 0.0, TASK_REQUESTS_24H: 0.0}
    f = RouterFeatures(
        values={"new-task": row, "new-model": dict(row)},
        defaulted=frozenset({"new-task", "new-model"}),
        defaulted_features={
            "new-task": frozenset(TASK_LIVE),
            "new-model": frozenset({*MODEL_LIVE, *TASK_LIVE}),
        },
    )
    assert list(live_exclusions(["new-task", "new-model"], f, max_latency_ms=None)) == ["new-task"]
    pen, _ = live_penalties(
        ["new-task", "new-model"], f, latency_weight=0.0,
        catalog_latency_ms=lambda m: None, expected_quality=lambda m: 0.5,
    )  # fmt: skip
    assert pen == {"new-task": pytest.approx(0.3)}
    assert live_priors(["new-task", "new-model"], f, arm_mean=lambda m: None) == {}


def runtime(settings: Settings, live: LiveFeatures) -> ServingRuntime:
    settings.serving_model_source = "fresh"
    settings.serving_features = "embedded"
    return ServingRuntime(settings, background=False, features=live)


def test_router_leaves_out_models_the_fleet_sees_failing(tmp_path: Path) -> None:
    reader = ScriptedReader()
    live = LiveFeatures(reader, ttl_s=0.0)
    rt = runtime(Settings(home=tmp_path / "h"), live)
    ctx = RequestContext(tenant="acme", prompt="What is 2 + 2?")

    def decide() -> Routed:
        rt.router.decide(ctx)  # serves the cached value and refreshes it
        assert live.settle()
        return rt.router.decide(ctx)

    try:
        first = rt.router.decide(ctx).decision.model
        reader.values[first] = bad()
        routed = decide()
        assert routed.decision.model != first
        assert any(
            f"{first} excluded: fleet-wide error rate 90%" in n for n in routed.decision.notes
        )
        assert routed.features is not None and not routed.features.degraded
        # every candidate failing: the statistics are advice, not a reason to refuse
        for m in rt.router.arms:
            reader.values[m] = bad()
        routed = decide()
        assert "live statistics rule out every candidate: ignored" in routed.decision.notes
    finally:
        rt.close()


def test_degraded_read_is_flagged_in_the_decision(tmp_path: Path) -> None:
    reader = ScriptedReader()
    reader.degraded = True
    rt = runtime(Settings(home=tmp_path / "h"), LiveFeatures(reader, ttl_s=0.0))
    try:
        routed = rt.router.decide(RequestContext(tenant="acme", prompt="hi"))
        assert routed.features is not None and routed.features.degraded
        assert any("online features degraded" in n for n in routed.decision.notes)
        assert rt.features_state == "open"
    finally:
        rt.close()


def test_without_features_the_runtime_says_off(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "h", serving_model_source="fresh", serving_features="off")
    rt = ServingRuntime(s, background=False)
    try:
        routed = rt.router.decide(RequestContext(tenant="acme", prompt="hi"))
        assert routed.features is None and rt.features_state == "off"
    finally:
        rt.close()


def test_prompt_text_is_stored_only_for_tenants_that_opted_in(tmp_path: Path) -> None:
    s = Settings(
        home=tmp_path / "h",
        serving_model_source="fresh",
        serving_features="off",
        store_prompt_tenants=["optin"],
    )
    rt = ServingRuntime(s, background=False)
    try:
        kept = rt.router.decide(RequestContext(tenant="optin", prompt="secret plan A"))
        hashed = rt.router.decide(RequestContext(tenant="other", prompt="secret plan B"))
        row = rt.event_log.get_decision(kept.decision.decision_id)
        assert row is not None and row["context"]["prompt"] == "secret plan A"
        row = rt.event_log.get_decision(hashed.decision.decision_id)
        assert row is not None and "prompt" not in row["context"]
        assert len(row["context"]["prompt_sha256"]) == 64
        db = b"".join(p.read_bytes() for p in s.home.glob("events.db*"))  # with the WAL
        assert b"secret plan B" not in db and b"secret plan A" in db
    finally:
        rt.close()


def test_fresh_live_statistics_enter_the_choice_and_are_named(tmp_path: Path) -> None:
    """A model failing 40% of its calls (below the 50% exclusion) pays a risk penalty; a slow
    one pays its observed p95 for a tenant who weighs latency; stale or thin values do not."""
    reader = ScriptedReader()
    live = LiveFeatures(reader, ttl_s=0.0)
    rt = runtime(Settings(home=tmp_path / "h"), live)
    loop = rt.router.lineup.champion.loop
    try:
        arms = list(rt.router.default_arms)
        a, b = arms[0], arms[1]
        reader.values = {a: bad(error_rate=0.4, p95=500.0), b: bad(error_rate=0.0, p95=9000.0)}
        for m in arms:
            loop.learn_outcome(m, {"bias": 1.0}, input_tokens=10, quality=0.8, cost_usd=0.001)
        ctx = RequestContext(tenant="acme", prompt="hi", latency_weight=0.05)
        rt.router.decide(ctx)
        assert live.settle()
        routed = rt.router.decide(ctx)
        note = next(n for n in routed.decision.notes if n.startswith("live features used: "))
        assert f"{a} error rate 40%" in note and f"{b} p95 9000 ms" in note
        base = super(type(loop), loop).penalties([a, b], 10, loop.tradeoff_for(ctx))
        pen = loop.penalties([a, b], 10, loop.tradeoff_for(ctx))
        assert pen[a] > base[a] and pen[b] > base[b]
        # too few requests in the last hour: the values change nothing
        reader.values = {a: bad(error_rate=0.4, n=2.0), b: bad(error_rate=0.0, p95=9000.0, n=2.0)}
        rt.router.decide(ctx)
        assert live.settle()
        routed = rt.router.decide(ctx)
        assert not any(n.startswith("live features used") for n in routed.decision.notes)
        assert loop.penalties([a, b], 10, loop.tradeoff_for(ctx)) == base
    finally:
        rt.close()


def test_a_cold_arm_starts_at_the_fleets_live_quality_on_the_task(tmp_path: Path) -> None:
    """An arm the policy knows nothing about takes the fleet's 24 h quality of the model on
    this task type as its prior (once), named in the notes; a thin statistic gives none."""
    reader = ScriptedReader()
    live = LiveFeatures(reader, ttl_s=0.0)
    rt = runtime(Settings(home=tmp_path / "h"), live)
    policy: Any = rt.router.lineup.champion.loop.policy  # the wrapped policy: set_prior, arm_mean
    try:
        cold, thin = list(rt.router.default_arms)[:2]
        for arm in (cold, thin):
            policy.discount_arm(arm, 0.0)  # forget its catalog prior: nothing known
        assert policy.arm_mean(cold) is None and policy.arm_mean(thin) is None
        reader.values = {
            cold: {TASK_QUALITY_24H: 0.93, TASK_REQUESTS_24H: 50.0},
            thin: {TASK_QUALITY_24H: 0.99, TASK_REQUESTS_24H: 2.0},
        }
        ctx = RequestContext(tenant="acme", prompt="What is 2 + 2?")
        routed = rt.router.decide(ctx)  # a key never seen is read on the decision path
        note = next(n for n in routed.decision.notes if n.startswith("live features used: "))
        assert f"{cold} task quality 0.93 (24 h) as its prior" in note and thin not in note
        assert policy.arm_mean(cold) == pytest.approx(0.93)
        assert policy.arm_mean(thin) is None
        again = rt.router.decide(ctx)  # seeded once: the prior is not added twice
        assert not any("as its prior" in n for n in again.decision.notes)
        assert policy.arm_mean(cold) == pytest.approx(0.93)
    finally:
        rt.close()


def test_reads_that_do_not_depend_on_the_tenant_are_cached_per_task_type_alone() -> None:
    reader = ScriptedReader()
    live = LiveFeatures(reader, ttl_s=60.0)
    reader.values["a"] = {"x": 1.0}
    live.get(["a"], tenant="t1", task_type="general")
    live.get(["a"], tenant="t2", task_type="general")
    assert reader.calls == 2  # a reader that does not say: per tenant
    reader.tenant_keyed = False  # type: ignore[attr-defined]
    live.get(["a"], tenant="t3", task_type="general")
    live.get(["a"], tenant="t4", task_type="general")
    live.get(["a"], tenant="t4", task_type="code")
    assert reader.calls == 4  # one read for every tenant of "general", one for "code"
    assert live.get(["a"], tenant="t5", task_type="general").values["a"] == {"x": 1.0}
    assert reader.calls == 4


def test_what_is_derived_from_a_read_follows_the_read() -> None:
    """Exclusions, penalties and priors are worked out once per read and kept with it: a
    later read (the refresher's next one) is worked out again, and a different offer or
    latency cap on the same read gets its own answer."""
    healthy = {ERROR_RATE: 0.0, LATENCY_P95: 400.0, REQUESTS_1H: 50.0}
    first = RouterFeatures(values={"a": dict(healthy), "b": dict(healthy)})
    assert live_exclusions(["a", "b"], first, None) == {}
    assert live_exclusions(["a", "b"], first, None) == {}  # the kept answer
    assert sorted(live_exclusions(["a", "b"], first, max_latency_ms=300)) == ["a", "b"]
    assert list(live_exclusions(["b"], first, max_latency_ms=300)) == ["b"]
    failing = RouterFeatures(values={"a": {**healthy, ERROR_RATE: 0.9}, "b": dict(healthy)})
    assert list(live_exclusions(["a", "b"], failing, None)) == ["a"]
    pen, note = live_penalties(
        ["a", "b"],
        failing,
        latency_weight=0.0,
        catalog_latency_ms=lambda m: None,
        expected_quality=lambda m: 0.5,
    )
    assert pen == pytest.approx({"a": 0.45}) and note is not None and "a error rate 90%" in note
    priors = RouterFeatures(values={"a": {TASK_QUALITY_24H: 0.7, TASK_REQUESTS_24H: 40.0}})
    assert live_priors(["a"], priors, arm_mean=lambda m: None) == {"a": 0.7}
    # the policy's own mean is checked on every call, not kept with the read
    assert live_priors(["a"], priors, arm_mean=lambda m: 0.6) == {}
