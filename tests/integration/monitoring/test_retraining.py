"""Drift -> retraining through Prefect: a detector alarm in serving and a drifted report flow run
each create one run of the retraining deployment, registered on the session's Prefect API; a
burst of alarms within the cooldown creates no other; an unknown deployment fails nothing."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmopt.schemas import Feedback, RequestContext
from llmopt.settings import Settings, get_settings
from monitoring.retraining import RETRAIN_TAG, RetrainTrigger
from serving.metrics import get_metrics
from serving.runtime import ServingRuntime
from tests.integration.conftest import fill_log

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture
def retraining_deployment() -> tuple[str, Any]:
    """The nightly training flow registered as a deployment of its own (nobody runs it here):
    ``("flow/deployment", id)``."""
    from pipelines.deployments import get_spec  # noqa: PLC0415

    spec = get_spec("nightly-training")
    name = f"retrain-{uuid.uuid4().hex[:8]}"
    deployment_id = spec.load().to_deployment(name=name, tags=["llmopt"]).apply()
    return f"{spec.name}/{name}", deployment_id


def runs_of(deployment_id: Any) -> list[Any]:
    from prefect import get_client  # noqa: PLC0415
    from prefect.client.schemas.filters import (  # noqa: PLC0415
        DeploymentFilter,
        DeploymentFilterId,
    )

    with get_client(sync_client=True) as client:
        return list(
            client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )
        )


def alerts(caplog: pytest.LogCaptureFixture, kind: str) -> list[dict[str, Any]]:
    return [
        r.alert  # type: ignore[attr-defined]
        for r in caplog.records
        if getattr(r, "alert", {}).get("kind") == kind
    ]


def test_a_burst_of_detector_alarms_runs_the_retraining_deployment_once(
    tmp_path: Path,
    retraining_deployment: tuple[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    name, deployment_id = retraining_deployment
    settings = Settings(
        home=tmp_path / "h",
        serving_model_source="fresh",
        serving_features="off",
        retrain_deployment=name,
        retrain_cooldown_s=3600,
    )
    rt = ServingRuntime(settings, background=False)  # its trigger keeps this Prefect context
    ctx = RequestContext(tenant="acme", prompt="Summarise this memo.", models=["gpt-4o-mini"])
    counter = get_metrics().retrain_requests.labels("detector", "triggered")
    triggered_before = counter._value.get()
    try:
        watch = rt.router.drift
        assert watch is not None and watch.retrain is not None
        with caplog.at_level(logging.INFO, logger="llmopt.monitoring"):
            for i in range(500):  # at 250 gpt-4o-mini's quality collapses and its price rises
                d = rt.router.decide(ctx).decision
                before = i < 250
                fb = Feedback(
                    decision_id=d.decision_id,
                    quality=0.9 if before else 0.1,
                    cost_usd=0.0001 if before else 0.002,
                )
                assert rt.router.feedback(fb).status == "stored"
            watch.retrain.wait(60)
            requests = sum(len(r.retrain_requests) for r in watch._responders.values())
            assert requests >= 2, "a burst: two responses (policy, costs), many detectors"
            (run,) = runs_of(deployment_id)  # one flow run for the whole burst
            assert RETRAIN_TAG in run.tags and f"{RETRAIN_TAG}-detector" in run.tags
            assert run.state is not None and run.state.type.value == "SCHEDULED"
            # the burst's later requests were answered at once (cooldown), the first by Prefect
            (triggered,) = [o for o in watch.retrain.outcomes if o.status == "triggered"]
            assert {o.status for o in watch.retrain.outcomes} == {"triggered", "cooldown"}
            assert triggered.flow_run_id == str(run.id)
            (alert,) = alerts(caplog, "retrain_triggered")
            assert alert["flow_run_id"] == str(run.id) and alert["deployment"] == name
            assert alert["reason"].startswith("drift of gpt-4o-mini")
            assert counter._value.get() == triggered_before + 1

            # A second alarm within the cooldown: none.
            again = watch.retrain.request_in_background("drift again")
            assert again is not None and again.status == "cooldown"
            # Another worker (its own process-local cooldown is fresh) finds the run in Prefect.
            other = RetrainTrigger(name, cooldown_s=3600).request("drift seen by another worker")
            assert other.status == "cooldown" and other.flow_run_id == str(run.id)
            assert len(runs_of(deployment_id)) == 1
            # Once the cooldown is over, a new alarm runs it again.
            later = RetrainTrigger(name, cooldown_s=0).request("drift, an hour later")
            assert later.status == "triggered" and len(runs_of(deployment_id)) == 2
    finally:
        rt.close()


def test_an_isolated_trigger_runs_the_deployment_from_its_child_process(
    retraining_deployment: tuple[str, Any],
) -> None:
    """Serving's path: the child process reaches the same API and creates the run."""
    from monitoring.retraining import prefect_api_url  # noqa: PLC0415

    name, deployment_id = retraining_deployment
    trigger = RetrainTrigger(name, cooldown_s=3600, isolate=True)
    out = trigger._send_in_child("drift seen in serving", api_url=prefect_api_url())
    assert out.status == "triggered" and out.deployment == name, out.detail
    (run,) = runs_of(deployment_id)
    assert out.flow_run_id == str(run.id) and f"{RETRAIN_TAG}-detector" in run.tags
    again = trigger._send_in_child("drift again", api_url=prefect_api_url())
    assert again.status == "cooldown" and again.flow_run_id == str(run.id)  # Prefect's cooldown


def test_a_drifted_report_runs_the_retraining_deployment(
    env: Settings,
    retraining_deployment: tuple[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipelines.drift_report import drift_report  # noqa: PLC0415

    name, deployment_id = retraining_deployment
    monkeypatch.setenv("LLMOPT_RETRAIN_DEPLOYMENT", name)
    get_settings.cache_clear()
    fill_log(env, 150, seed=0, floor=0.9)  # an exploring router...
    fill_log(env, 150, seed=1, floor=0.0)  # ...then a greedy one: other models, other outcomes
    out = drift_report(window=150)
    assert out["status"] == "done" and out["result"]["drift_detected"]
    retraining = out["retraining"]
    assert retraining["status"] == "triggered" and retraining["source"] == "report"
    assert retraining["reason"].startswith("drift report: ")
    (run,) = runs_of(deployment_id)
    assert str(run.id) == retraining["flow_run_id"] and f"{RETRAIN_TAG}-report" in run.tags
    # The next day's report within the cooldown: no second run.
    assert drift_report(window=150)["retraining"]["status"] == "cooldown"
    assert len(runs_of(deployment_id)) == 1


def test_an_unknown_deployment_is_an_alert_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    trigger = RetrainTrigger(f"nightly-training/missing-{uuid.uuid4().hex[:6]}")
    with caplog.at_level(logging.INFO, logger="llmopt.monitoring"):
        outcome = trigger.request("drift")
    assert outcome.status == "failed" and "is not registered there" in outcome.detail
    (alert,) = alerts(caplog, "retrain_not_triggered")
    assert alert["status"] == "failed" and "llmopt flows serve" in alert["message"]


def test_the_default_deployment_is_the_nightly_training_one() -> None:
    from pipelines.deployments import get_spec  # noqa: PLC0415

    flow_name, deployment = Settings().retrain_deployment.split("/")
    spec = get_spec("nightly-training")
    assert flow_name == spec.load().name == spec.name and deployment == spec.name


def test_a_report_without_drift_asks_for_nothing(env: Settings, filled: Callable[..., int]) -> None:
    from pipelines.drift_report import drift_report  # noqa: PLC0415

    assert "retraining" not in drift_report(window=100)  # skipped: an empty log
