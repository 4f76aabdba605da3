"""Drift on the serving feedback path: detected, counted, alerted, the model discounted."""

from __future__ import annotations

import json
from pathlib import Path

from llmopt.schemas import Feedback, RequestContext
from llmopt.settings import Settings
from serving.metrics import get_metrics
from serving.runtime import ServingRuntime


def test_a_quality_drop_of_the_served_model_is_detected_and_acted_on(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "h", serving_model_source="fresh", serving_features="off")
    rt = ServingRuntime(settings, background=False)
    models = ["gpt-4o-mini", "claude-3-5-haiku"]
    ctx = RequestContext(tenant="acme", prompt="Summarise this memo.", models=models)
    before = get_metrics().drift_detections.collect()[0].samples
    drop_at, first_event_at = 300, None
    try:
        assert rt.router.drift is not None
        for i in range(700):
            d = rt.router.decide(ctx).decision
            good = d.model == "gpt-4o-mini" and i < drop_at
            rt.router.feedback(
                Feedback(decision_id=d.decision_id, quality=0.9 if good else 0.2, latency_ms=800)
            )
            if first_event_at is None and i >= drop_at and rt.router.drift.events:
                first_event_at = i
        assert first_event_at is not None and first_event_at - drop_at < 150
        requests = [
            json.loads(line)
            for line in (settings.home / "monitoring" / "retrain_requests.jsonl")
            .read_text()
            .splitlines()
        ]
        assert any(r["model"] == "gpt-4o-mini" for r in requests)
        after = get_metrics().drift_detections.collect()[0].samples
        assert sum(s.value for s in after) > sum(s.value for s in before)
    finally:
        rt.close()


def test_drift_watch_can_be_turned_off(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "h",
        serving_model_source="fresh",
        serving_features="off",
        serving_drift_watch=False,
    )
    rt = ServingRuntime(settings, background=False)
    try:
        assert rt.router.drift is None
    finally:
        rt.close()
