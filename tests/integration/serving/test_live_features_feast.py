"""Serving with a real Feast store: another worker's feedback reaches this worker's decisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmopt.event_log import EventLog
from llmopt.schemas import Decision, ErrorKind, Feedback, RequestContext
from llmopt.settings import Settings
from serving.live_features import LiveFeatures
from serving.runtime import ServingRuntime

pytestmark = pytest.mark.integration


def test_fleet_wide_errors_pushed_through_feast_exclude_the_model(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "h",
        serving_model_source="fresh",
        serving_features="embedded",
        serving_features_ttl_s=0.001,
        serving_features_budget_ms=2000,  # the data path is under test here, not the budget
    )
    live = LiveFeatures.open(settings, None)  # copies and applies the embedded repo
    rt = ServingRuntime(settings, background=False)
    live.event_log = rt.event_log
    rt._features_ready(live)
    ctx = RequestContext(tenant="acme", prompt="What is 2 + 2?")
    try:
        routed = rt.router.decide(ctx)
        victim = routed.decision.model
        assert routed.features is not None and victim in routed.features.defaulted
        assert not routed.features.degraded, routed.features.reason  # warmed up at open
        # Another worker (its own connection to the shared log) serves `victim`, which fails.
        other = EventLog(settings.event_log_url)
        for _ in range(20):
            d = Decision(model=victim, propensity=1.0, policy_name="p", policy_version="w2")
            other.record_decision(d, ctx, features={})
            other.record_feedback(
                Feedback(decision_id=d.decision_id, quality=0.0, error_kind=ErrorKind.TIMEOUT)
            )
        other.close()
        assert rt.push_features_once() >= 20
        assert rt.push_features_once() == 0  # nothing new: nothing pushed twice
        rt.router.decide(ctx)  # serves the cached features, refreshes them in the background
        assert live.settle()
        routed = rt.router.decide(ctx)
        assert routed.decision.model != victim
        assert any(
            f"{victim} excluded: fleet-wide error rate 100%" in n for n in routed.decision.notes
        )
        assert routed.features is not None and not routed.features.degraded
        assert routed.features.elapsed_ms < 1000
        # This worker's own breaker saw none of it: the exclusion came through the store.
        assert rt.router.breaker.state(victim) != "open"
    finally:
        rt.close()
