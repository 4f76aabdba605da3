"""Every flow runs for real under a session-scoped Prefect test harness on a small event log."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import mlflow
import pytest

from llmopt.event_log import EventLog, LogCursor
from llmopt.settings import Settings, get_settings
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

from ..conftest import log_rewards

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]


def test_incremental_flow_resumes_after_a_crash_and_registers_only_with_a_reason(
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
    # No version yet: the 200 events learned since the start (64 of them by the crashed run)
    # reach LLMOPT_REGISTER_MIN_EVENTS (200).
    assert out["n_new_since_version"] == total and out["registration_reason"] == "min_events"
    client = registry.configure(env)
    version, policy = registry.load_policy(client, "dev")
    assert version == out["version"] and policy.n_updates == total
    mv = client.get_model_version(registry.MODEL_NAME, version)
    tags = mv.tags
    assert tags["last_feedback_id"] == str(total) and tags["n_events"] == str(total)
    assert tags["log_cursor"] == f"0:{total}"  # SQLite: no transaction part
    assert tags["source_flow"] == "incremental-training"
    assert tags["feature_service_version"]
    assert tags["policy_name"] == RECOMMENDED == "cost_aware_cluster_thompson"
    assert tags["registration_reason"] == "min_events" and tags["ope_snips_ci"].startswith("[")
    assert mv.description.startswith("cost_aware_cluster_thompson, trained by the incremental")
    assert f"Learned from: feedback (64, {total}] (136 events in this run, 200 new" in (
        mv.description
    )
    assert "Warm start: none." in mv.description
    assert "Registered because: learned 200 new events (at least 200" in mv.description
    assert "Off-policy estimate (SNIPS, last 200 logged decisions)" in mv.description
    example = mlflow.models.Model.load(f"models:/{registry.MODEL_NAME}/{version}")
    assert example.saved_input_example_info is not None  # one logged request's features
    assert set(example.get_input_schema().input_names()) == {"bias", "code"}
    run = client.get_run(mv.run_id)
    assert run.data.params["policy"] == RECOMMENDED
    assert run.data.tags["registration_reason"] == "min_events"
    assert run.data.tags["registered"] == "true" and run.data.tags["registered_version"] == version
    m = run.data.metrics
    assert m["n_events"] == total - 64 and m["n_new_since_version"] == total
    assert m["ope_snips_lower"] <= m["ope_snips"] <= m["ope_snips_upper"]
    assert "ope_lift" not in m  # no previous version to compare with

    nothing = incremental_training()  # nothing new: no run, no version
    assert nothing["version"] is None and nothing["registration_reason"] == "nothing_new"

    more = filled(30, seed=3)
    few = incremental_training()
    assert few["n_events"] == more - total and few["version"] is None
    assert few["registration_reason"] == "too_few_events"  # 30 < 200, and the estimate...
    assert "within version 1's interval" in few["registration_detail"]  # ...did not move
    (latest, *_), n_runs = _runs(client), len(_runs(client))
    assert n_runs == 2  # the run that learned nothing logged nothing; this one did
    assert latest.data.tags["registered"] == "false"
    assert latest.data.tags["registration_reason"] == "too_few_events"
    assert latest.data.tags["previous_version"] == version
    assert latest.data.metrics["n_new_since_version"] == 30
    assert "ope_lift" in latest.data.metrics and "previous_ope_snips_upper" in latest.data.metrics

    # A worse policy becomes dev (as a hand-registered version would): the next run learned few
    # events, but its estimate lies above that version's interval: it registers.
    worse = make_policy(RECOMMENDED, seed=1)
    for batch in log.training_batches(0, 1000):
        worse.learn_many((e.model, e.features, 1.0 - e.quality) for e in batch)
    v_worse = registry.log_version_in_run(
        client, env, worse, aliases=["dev"], tags={"log_cursor": few["log_cursor"]}
    )
    filled(20, seed=4)
    moved = incremental_training()
    assert moved["n_new_since_version"] == 20 and moved["registration_reason"] == "ope_moved"
    assert int(moved["version"]) == int(v_worse) + 1 and moved["ope_lift"] > 0
    assert registry.version_for_alias(client, "dev") == moved["version"]
    desc = client.get_model_version(registry.MODEL_NAME, moved["version"]).description
    assert f"moved above version {v_worse}'s confidence interval" in desc
    # The task's logic, without the engine:
    assert train_incremental.fn(RECOMMENDED, 50).n_events == 0
    log.close()


def _runs(client: Any) -> list[Any]:
    """The incremental-training experiment's runs, newest first."""
    exp = client.get_experiment_by_name("incremental-training")
    return list(client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"]))


def test_nightly_hpo_and_promotion_flows(env: Settings, filled: Callable[..., int]) -> None:
    total = filled(300)
    found = hpo(n_trials=3, holdout=0.3)
    searched = {"sigma", "prior_weight", "n_clusters", "explore_decay"}  # the recommended policy's
    assert found["n_trials"] == 3 and set(found["best_params"]) == searched
    assert best_params(RECOMMENDED, env.optuna_storage) == found["best_params"]

    nightly = nightly_training(eval_window=200)
    assert nightly["n_events"] == total and nightly["params"] == found["best_params"]
    assert nightly["version"] is not None and nightly["ope_snips"] is not None
    assert nightly["registration_reason"] == "min_events"  # 300 events rebuilt >= 200
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


def test_cli_runs_one_flow_once_and_lists_them(
    env: Settings, filled: Callable[..., int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner  # noqa: PLC0415

    from llmopt.app.cli import app  # noqa: PLC0415

    filled(40)
    runner = CliRunner()
    listed = runner.invoke(app, ["flows", "list"])
    assert listed.exit_code == 0 and "incremental-training" in listed.output
    assert "every 5 min" in listed.output and "cron 0 2 * * *" in listed.output

    def run() -> dict[str, Any]:
        args = ["flows", "run", "incremental-training", "--param", "batch_size=16"]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        out, _ = json.JSONDecoder().raw_decode(res.output[res.output.index("{") :])
        return dict(out)

    first = run()  # 40 events: fewer than LLMOPT_REGISTER_MIN_EVENTS (200), nothing to compare
    assert first["n_events"] == 40 and first["version"] is None
    assert first["registration_reason"] == "too_few_events"
    assert "no previous version to compare" in first["registration_detail"]
    monkeypatch.setenv("LLMOPT_REGISTER_MIN_EVENTS", "40")
    get_settings.cache_clear()
    second = run()  # learned nothing more, but the 40 learned since the start now suffice
    assert second["n_events"] == 0 and second["n_new_since_version"] == 40
    assert second["registration_reason"] == "min_events" and second["version"] == "1"
    res = runner.invoke(app, ["registry", "list"])
    assert "llm-router version 1  aliases: dev" in res.output


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
    log_rewards(env, {label(v1): 0.5, label(v2): 0.5}, 20)
    first = evaluate_and_promote(eval_window=200, min_samples=100)
    assert first["after"]["staging"] == v2 and first["after"]["prod"] == v1
    assert first["notes"] == [f"dev version {v3} queued: staging version {v2} is under test"]
    # The challenger is clearly worse: the mSPRT decides for the champion and withdraws it.
    log_rewards(env, {label(v1): 0.6, label(v2): 0.35}, 400, seed=1)
    second = evaluate_and_promote(eval_window=200, min_samples=100)
    assert second["outcomes"][0]["details"]["decision"] == "champion"
    assert second["after"]["staging"] is None and second["after"]["prod"] == v1
    tags = client.get_model_version(registry.MODEL_NAME, v2).tags
    assert tags["validation_status"] == "rejected_ab" and "not better" in tags["rollback_reason"]
    # Now the queued dev version may enter (its OPE gate decides).
    third = evaluate_and_promote(eval_window=200, min_samples=100)
    assert [o["alias"] for o in third["outcomes"]] == ["staging"]
    assert third["outcomes"][0]["version"] == v3
