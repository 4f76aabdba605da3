"""The autopilot with a real MLflow registry: a staging version gets canary traffic with no
operator, and a rollback (of a canary or of a fresh prod) is made durable in the registry."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from llmopt.schemas import ErrorKind, Feedback, RequestContext
from llmopt.settings import AutopilotRules, Settings
from models.kinds import make_policy
from registry import mlflow_registry as registry
from serving.metrics import get_metrics
from serving.runtime import ServingRuntime

pytestmark = pytest.mark.integration


def settings_for(tmp_path: Path, **rules: object) -> Settings:
    settings = Settings(
        home=tmp_path / "h",
        serving_features="off",
        serving_poll_s=0,
        serving_drift_watch=False,
        autopilot=AutopilotRules(**rules),  # type: ignore[arg-type]
    )
    settings.ensure_home()
    return settings


def answer(rt: ServingRuntime, n: int, *, failing: str | None = None) -> dict[str, int]:
    """``n`` decisions answered with quality 0.8; decisions by ``failing`` time out."""
    served: dict[str, int] = {}
    for i in range(n):
        routed = rt.router.decide(RequestContext(tenant=f"t{i % 5}", prompt="What is 2 + 2?"))
        label = routed.slot.label
        served[label] = served.get(label, 0) + 1
        error = ErrorKind.TIMEOUT if label == failing else None
        rt.router.feedback(
            Feedback(decision_id=routed.decision.decision_id, quality=0.8, error_kind=error)
        )
    return served


def test_a_staging_version_gets_a_canary_and_a_failing_one_is_withdrawn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tmp_path, start_percent=30, steps=(), min_feedback=15)
    v1 = registry.register_policy(make_policy("cost_aware_linucb", seed=1), settings=settings)
    rt = ServingRuntime(settings, background=False)
    try:
        client = registry.configure(settings)
        v2 = registry.register_policy(
            make_policy("cost_aware_linucb", seed=2), settings=settings, aliases=("staging",)
        )
        result = rt.reload()
        assert any("canary of llm-router/" in n for n in result.notes)  # no operator action
        assert rt.router.traffic.mode == "canary" and rt.router.traffic.assignment == "decision"
        before = get_metrics().autopilot_rollbacks.labels("challenger", "error_rate")._value.get()
        with caplog.at_level(logging.ERROR, logger="llmopt.monitoring"):
            served = answer(rt, 300, failing=registry.version_label(v2))
        assert 15 <= served[registry.version_label(v2)] < 80
        assert rt.router.traffic.mode == "champion"
        # Durable: the staging alias left the bad version, which says why.
        assert registry.version_for_alias(client, "staging") is None
        tags = registry.client_model_version(client, v2, registry.MODEL_NAME).tags
        assert tags["validation_status"] == "rolled_back"
        assert tags["rollback_reason"].startswith("error_rate: error rate")
        assert registry.version_for_alias(client, "prod") == v1
        after = get_metrics().autopilot_rollbacks.labels("challenger", "error_rate")._value.get()
        assert after == before + 1
        alerts = [r.alert for r in caplog.records if getattr(r, "alert", None)]  # type: ignore[attr-defined]
        assert alerts[-1]["kind"] == "autopilot_rollback" and alerts[-1]["role"] == "challenger"
        # A later poll does not bring it back.
        rt.reload()
        assert rt.router.lineup.challenger is None and rt.router.traffic.mode == "champion"
    finally:
        rt.close()


def test_a_fresh_prod_that_fails_is_rolled_back_in_the_registry(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, min_feedback=15, prod_watch_s=3600)
    v1 = registry.register_policy(make_policy("cost_aware_linucb", seed=1), settings=settings)
    rt = ServingRuntime(settings, background=False)
    try:
        answer(rt, 30)  # the champion's record: no errors
        client = registry.configure(settings)
        v2 = registry.register_policy(make_policy("cost_aware_linucb", seed=2), settings=settings)
        assert registry.version_for_alias(client, "prod") == v2
        rt.reload()
        assert rt.router.lineup.champion.label == registry.version_label(v2)
        answer(rt, 40, failing=registry.version_label(v2))
        assert registry.version_for_alias(client, "prod") == v1  # moved back, no operator
        assert registry.version_for_alias(client, "staging") is None
        tags = registry.client_model_version(client, v2, registry.MODEL_NAME).tags
        assert tags["validation_status"] == "rolled_back"
        assert rt.router.lineup.champion.label == registry.version_label(v1)
        rt.reload()  # the registry agrees: nothing changes, nothing is watched again
        assert rt.router.lineup.champion.label == registry.version_label(v1)
        assert [r.label for r in rt.router.rolled_back] == [registry.version_label(v2)]
    finally:
        rt.close()
