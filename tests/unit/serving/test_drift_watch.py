"""Drift on the serving feedback path: detected, counted, alerted, the model discounted, and
retraining asked for (without a Prefect API: not sent, and the alert says why)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from llmopt.schemas import Feedback, RequestContext
from llmopt.settings import Settings
from serving.metrics import get_metrics
from serving.runtime import ServingRuntime


def retrain_count(outcome: str) -> float:
    samples = get_metrics().retrain_requests.collect()[0].samples
    return sum(
        s.value
        for s in samples
        if s.name.endswith("_total") and s.labels == {"source": "detector", "outcome": outcome}
    )


def test_a_quality_drop_is_detected_and_acted_on_and_feedback_never_fails_without_prefect(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(home=tmp_path / "h", serving_model_source="fresh", serving_features="off")
    with temporary_settings(restore_defaults={PREFECT_API_URL}):  # the embedded default
        rt = ServingRuntime(settings, background=False)  # its trigger keeps these settings
    models = ["gpt-4o-mini", "claude-3-5-haiku"]
    ctx = RequestContext(tenant="acme", prompt="Summarise this memo.", models=models)
    before = get_metrics().drift_detections.collect()[0].samples
    no_api_before = retrain_count("no_api")
    drop_at, first_event_at = 300, None
    try:
        watch = rt.router.drift
        assert watch is not None and watch.retrain is not None
        with caplog.at_level(logging.INFO, logger="llmopt.monitoring"):
            for i in range(700):
                d = rt.router.decide(ctx).decision
                good = d.model == "gpt-4o-mini" and i < drop_at
                fb = Feedback(
                    decision_id=d.decision_id, quality=0.9 if good else 0.2, latency_ms=800
                )
                assert rt.router.feedback(fb).status == "stored"  # never failed by the trigger
                if first_event_at is None and i >= drop_at and watch.events:
                    first_event_at = i
            watch.retrain.wait(60)
        assert first_event_at is not None and first_event_at - drop_at < 150
        after = get_metrics().drift_detections.collect()[0].samples
        assert sum(s.value for s in after) > sum(s.value for s in before)
        # One request reached the trigger's thread; the rest of the burst stayed in its cooldown.
        statuses = [o.status for o in watch.retrain.outcomes]
        assert statuses.count("no_api") == 1 and set(statuses) <= {"no_api", "cooldown"}
        (alert,) = [
            r.alert  # type: ignore[attr-defined]
            for r in caplog.records
            if getattr(r, "alert", {}).get("kind") == "retrain_not_triggered"
        ]
        assert alert["status"] == "no_api" and alert["source"] == "detector"
        assert "no Prefect API is configured (PREFECT_API_URL is unset" in alert["message"]
        assert alert["reason"].startswith("drift of ")
        assert retrain_count("no_api") == no_api_before + 1
        assert not (settings.home / "monitoring" / "retrain_requests.jsonl").exists()
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


def test_no_retraining_deployment_means_no_trigger(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "h",
        serving_model_source="fresh",
        serving_features="off",
        retrain_deployment="",
    )
    rt = ServingRuntime(settings, background=False)
    try:
        assert rt.router.drift is not None and rt.router.drift.retrain is None
    finally:
        rt.close()
