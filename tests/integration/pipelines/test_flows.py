"""Every flow runs for real under a session-scoped Prefect test harness on a small event log."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from llmopt.event_log import EventLog, LogCursor
from llmopt.settings import Settings
from models.kinds import RECOMMENDED, make_policy
from pipelines.checkpoint import CheckpointStore
from pipelines.deployments import FLOWS, get_spec
from pipelines.drift_report import drift_report
from pipelines.evaluate_and_promote import evaluate_and_promote
from pipelines.hpo import hpo
from pipelines.incremental_training import incremental_training
from pipelines.materialize_features import materialize_features
from pipelines.nightly_training import nightly_training
from pipelines.search_spaces import best_params
from pipelines.tasks import INCREMENTAL_CHECKPOINT, train_incremental
from pipelines.training import incremental_update
from registry import mlflow_registry as registry

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]


def test_incremental_flow_resumes_after_a_crash_and_registers_dev_versions(
    env: Settings, filled: Callable[..., int]
) -> None:
    total = filled(200)
    log = EventLog(env.event_log_url)
    store = CheckpointStore(log.engine)

    def crash(batch: int, cursor: LogCursor) -> None:
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):  # dies after its first batch of 64
        incremental_update(
            log,
            store,
            name=INCREMENTAL_CHECKPOINT,
            initial=lambda: (make_policy(RECOMMENDED, seed=0), 0, 0),
            batch_size=64,
            on_batch=crash,
        )
    out = incremental_training(batch_size=64)
    assert out["data_window"] == f"feedback (64, {total}]" and out["n_total"] == total
    client = registry.configure(env)
    version, policy = registry.load_policy(client, "dev")
    assert version == out["version"] and policy.n_updates == total
    tags = client.get_model_version(registry.MODEL_NAME, version).tags
    assert tags["last_feedback_id"] == str(total) and tags["n_events"] == str(total)
    assert tags["log_cursor"] == f"0:{total}"  # SQLite: no transaction part
    assert tags["source_flow"] == "incremental-training"
    assert tags["feature_service_version"]

    assert incremental_training()["version"] is None  # nothing new: no new version
    more = filled(30, seed=3)
    nxt = incremental_training()
    assert nxt["n_events"] == more - total and int(nxt["version"]) == int(version) + 1
    # The task's logic, without the engine:
    assert train_incremental.fn(RECOMMENDED, 50).n_events == 0
    log.close()


def test_nightly_hpo_and_promotion_flows(env: Settings, filled: Callable[..., int]) -> None:
    total = filled(300)
    found = hpo(n_trials=3, holdout=0.3)
    searched = {"sigma", "prior_weight", "n_clusters", "explore_decay"}  # the recommended policy's
    assert found["n_trials"] == 3 and set(found["best_params"]) == searched
    assert best_params(RECOMMENDED, env.optuna_storage) == found["best_params"]

    nightly = nightly_training(eval_window=200)
    assert nightly["n_events"] == total and nightly["params"] == found["best_params"]
    assert nightly["version"] is not None and nightly["ope_snips"] is not None
    store = CheckpointStore(EventLog(env.event_log_url).engine)
    cp = store.load(INCREMENTAL_CHECKPOINT)
    assert cp is not None and cp.last_feedback_id == total  # incremental continues from here

    promoted = evaluate_and_promote(eval_window=200)
    after = promoted["after"]
    assert after["staging"] == nightly["version"]  # no champion: the OPE gate passes
    assert after["prod"] == nightly["version"]  # no prod yet: staging suffices
    statuses = [o["passed"] for o in promoted["outcomes"]]
    assert statuses == [True, True]


def test_materialize_and_drift_flows_call_the_feature_store_and_monitoring(
    env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from feature_store import training  # noqa: PLC0415

    calls: list[dict[str, object]] = []

    def materialize_incremental(*, settings: Settings, end_date: datetime) -> dict[str, int]:
        calls.append({"settings": settings, "end_date": end_date})
        return {"rows": 3}

    # Not the real one: it writes into this checkout's feature_repo/ (tests/integration/
    # feature_store/test_embedded.py runs it on a store of its own).
    monkeypatch.setattr(training, "materialize_incremental", materialize_incremental)
    assert materialize_features() == {"status": "done", "result": "{'rows': 3}"}
    (call,) = calls
    assert isinstance(call["settings"], Settings)
    assert isinstance(call["end_date"], datetime) and call["end_date"].tzinfo is not None

    # Monitoring's own drift report: an empty event log is skipped, with its reason.
    young = drift_report(window=100)
    assert young["status"] == "skipped" and "0 feedback events" in young["reason"]


def test_every_flow_has_a_schedule_and_a_deployment() -> None:
    assert set(FLOWS) == {
        "incremental-training",
        "nightly-training",
        "hpo",
        "materialize-features",
        "evaluate-and-promote",
        "drift-report",
    }
    assert get_spec("incremental_training").interval_seconds == 300
    assert get_spec("nightly-training").cron == "0 2 * * *"
    from pipelines.deployments import deployments  # noqa: PLC0415

    deps = {d.name: d for d in deployments()}
    assert set(deps) == set(FLOWS)
    assert all(d.schedules for d in deps.values())


def test_prefect_yaml_lists_the_same_deployments_and_schedules() -> None:
    import yaml  # noqa: PLC0415

    doc = yaml.safe_load((Path(__file__).resolve().parents[3] / "prefect.yaml").read_text())
    found = {d["name"]: d for d in doc["deployments"]}
    assert set(found) == set(FLOWS)
    for name, spec in FLOWS.items():
        module, attr = found[name]["entrypoint"].split(":")
        assert module == spec.module.replace(".", "/") + ".py" and attr == spec.attribute
        (schedule,) = found[name]["schedules"]
        assert schedule.get("interval") == spec.interval_seconds
        assert schedule.get("cron") == spec.cron


def test_cli_runs_one_flow_once_and_lists_them(env: Settings, filled: Callable[..., int]) -> None:
    from typer.testing import CliRunner  # noqa: PLC0415

    from llmopt.app.cli import app  # noqa: PLC0415

    filled(40)
    runner = CliRunner()
    listed = runner.invoke(app, ["flows", "list"])
    assert listed.exit_code == 0 and "incremental-training" in listed.output
    assert "every 5 min" in listed.output and "cron 0 2 * * *" in listed.output
    res = runner.invoke(app, ["flows", "run", "incremental-training", "--param", "batch_size=16"])
    assert res.exit_code == 0, res.output
    out, _ = json.JSONDecoder().raw_decode(res.output[res.output.index("{") :])
    assert out["n_events"] == 40 and out["version"] == "1"
    res = runner.invoke(app, ["registry", "list"])
    assert "llm-router version 1  aliases: dev" in res.output


def _rewards(settings: Settings, means: dict[str, float], n: int, seed: int = 0) -> None:
    """``n`` logged decisions per version label, rewarded around ``means[label]``."""
    import numpy as np  # noqa: PLC0415

    from llmopt.schemas import Decision, Feedback, RequestContext  # noqa: PLC0415

    log = EventLog(settings.event_log_url)
    rng = np.random.default_rng(seed)
    for label, mean in means.items():
        for _ in range(n):
            d = Decision(
                model="gpt-4.1-mini", propensity=1.0, policy_name="x", policy_version=label
            )
            log.record_decision(d, RequestContext(tenant="t"), features={"bias": 1.0})
            q = float(np.clip(mean + rng.normal(0, 0.2), 0, 1))
            log.record_feedback(Feedback(decision_id=d.decision_id, quality=q), reward=q)
    log.close()


def test_one_ab_test_at_a_time_queued_dev_versions_and_a_rejected_challenger(
    env: Settings, filled: Callable[..., int]
) -> None:
    filled(60)
    policy = make_policy(RECOMMENDED, seed=0)
    v1 = registry.register_policy(policy, settings=env)  # prod
    client = registry.configure(env)
    v2 = registry.log_version_in_run(client, env, policy, aliases=("dev", "staging"))
    v3 = registry.log_version_in_run(client, env, policy, aliases=("dev",))  # newer dev
    label = registry.version_label
    # Too few live decisions yet: the test continues and the newer dev version waits.
    _rewards(env, {label(v1): 0.5, label(v2): 0.5}, 20)
    first = evaluate_and_promote(eval_window=200, min_samples=100)
    assert first["after"]["staging"] == v2 and first["after"]["prod"] == v1
    assert first["notes"] == [f"dev version {v3} queued: staging version {v2} is under test"]
    # The challenger is clearly worse: the mSPRT decides for the champion and withdraws it.
    _rewards(env, {label(v1): 0.6, label(v2): 0.35}, 400, seed=1)
    second = evaluate_and_promote(eval_window=200, min_samples=100)
    assert second["outcomes"][0]["details"]["decision"] == "champion"
    assert second["after"]["staging"] is None and second["after"]["prod"] == v1
    tags = client.get_model_version(registry.MODEL_NAME, v2).tags
    assert tags["validation_status"] == "rejected_ab" and "not better" in tags["rollback_reason"]
    # Now the queued dev version may enter (its OPE gate decides).
    third = evaluate_and_promote(eval_window=200, min_samples=100)
    assert [o["alias"] for o in third["outcomes"]] == ["staging"]
    assert third["outcomes"][0]["version"] == v3
