"""The scheduled ``drift-report`` flow writes Evidently reports under the settings' home."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from llmopt.settings import Settings
from pipelines.deployments import get_spec
from pipelines.drift_report import drift_report
from registry import mlflow_registry as registry

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]


def test_flow_skips_a_young_log_then_reports_against_the_prod_champion(
    env: Settings, filled: Callable[..., int]
) -> None:
    skipped = drift_report(window=100)
    assert skipped["status"] == "skipped" and "0 feedback events" in skipped["reason"]

    filled(240)
    # The prod champion learned feedback (0, 140]: that is the reference, not a split.
    client = registry.configure(env)
    client.create_registered_model(registry.MODEL_NAME)
    version = client.create_model_version(
        registry.MODEL_NAME,
        source=(env.home / "no-artifacts").as_uri(),
        tags={"data_window": "feedback (0, 140]"},
    ).version
    client.set_registered_model_alias(registry.MODEL_NAME, "prod", version)
    out = drift_report(window=100)
    assert out["status"] == "done"
    summary = out["result"]
    assert summary["reference"]["kind"] == "champion"
    assert summary["reference"]["champion_version"] == str(version)
    assert summary["reference"]["feedback_ids"] == "(40, 140]"
    assert summary["current"]["feedback_ids"] == "(140, 240]"
    assert set(summary["reports"]) >= {"features", "decisions"}

    reports = env.home / "monitoring" / "reports"
    folders = [p for p in reports.iterdir() if p.is_dir()]
    assert len(folders) == 1 and (reports / "index.html").exists()
    assert json.loads((folders[0] / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert list((env.home / "monitoring" / "workspace").iterdir())  # the UI's workspace


def test_flow_writes_where_it_is_told_and_splits_without_a_champion(
    env: Settings, filled: Callable[..., int]
) -> None:
    assert set(get_spec("drift-report").load().parameters.properties) == {"window", "out_dir"}
    filled(120)
    out = drift_report(window=60, out_dir=str(env.home / "elsewhere"))
    assert out["status"] == "done"
    reference = out["result"]["reference"]
    assert reference["kind"] == "split" and "no llm-router@prod" in reference["description"]
    assert (env.home / "elsewhere" / "index.html").exists()
