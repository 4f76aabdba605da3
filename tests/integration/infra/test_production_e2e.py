"""The production profile end to end, on one stack of our own started as ``make up`` does.

Feedback in over HTTP (real AlpacaEval prompts and the outcome of the model the service chose,
through :class:`llmopt.client.DecisionClient`) -> rows in the event log in PostgreSQL -> the
service's feature pusher -> Feast's online store in Redis (read back through Feast) -> the
``incremental-training`` deployment run by the Prefect worker -> a new ``llm-router`` version
in the PostgreSQL-backed MLflow registry (read through the MLflow server) -> the promotion
gates move it to ``staging`` and ``prod`` -> the service's alias poller swaps it in (timed
from the alias move to the first decision it makes) -> an Evidently drift report of the
traffic it served against the events it learned from. Each hop is asserted with numbers and
printed as one line.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from feature_store.reader import OnlineFeatureReader
from feature_store.store import open_store
from llmopt.app.processes import drive_service
from llmopt.catalog import load_catalog
from llmopt.event_log import EventLog
from llmopt.routing_data import load_routing_data
from llmopt.settings import Settings

from .conftest import POLL_S, Stack, http, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.services, pytest.mark.slow]

DEMO_DATA = Path(__file__).resolve().parents[3] / "llmopt" / "data" / "alpaca_eval.parquet"
TENANT = "e2e"
N_BEFORE = 300
"""Decide + feedback round trips the first version learns from."""
N_AFTER = 100
"""Round trips served by the promoted version (the drift report's current window)."""


def counts(engine: sa.Engine) -> dict[str, float]:
    """Rows of the event log in PostgreSQL."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM decisions), count(*), coalesce(max(feedback_id), 0),"
                " coalesce(avg(quality), 0) FROM feedback"
            )
        ).one()
    return {"decisions": row[0], "feedback": row[1], "last_feedback_id": row[2], "quality": row[3]}


def online_counts(reader: OnlineFeatureReader, models: list[str]) -> dict[str, float]:
    """Feedback counted by the online features in Redis, read through Feast, summed over models:
    per model (last hour) and per model and task type (``general``: no hints; last 24 h)."""
    got = reader.read(models, tenant=TENANT, task_type="general")
    assert not got.degraded, got.reason
    hour = [got.values[m]["model_performance__request_count_1h"] for m in models]
    day = [got.values[m]["model_task_performance__request_count_24h"] for m in models]
    return {
        "models_1h": sum(hour),
        "models_seen": sum(1 for v in hour if v > 0),
        "task_24h": sum(day),
    }


@pytest.mark.timeout(600)
def test_feedback_features_training_registry_swap_and_drift(stack: Stack, tmp_path: Path) -> None:
    print(f"\nmake up: {stack.up_seconds:.0f} s (serving, MLflow, Prefect on free ports)")
    routing = load_routing_data(DEMO_DATA)
    events = sa.create_engine(stack.events_url)
    fresh = stack.policy_version()
    assert fresh.startswith("fresh/"), fresh  # nothing registered yet: a fresh policy serves

    # Feast's store, opened before the traffic (its imports take seconds)
    reader = OnlineFeatureReader(open_store("production", env=stack.feast_env()), budget_ms=5000)

    # 1. feedback in over HTTP -> event log in PostgreSQL
    before = counts(events)
    served = drive_service(stack.serving_url, routing, n=N_BEFORE, seed=1, tenant=TENANT)
    after = counts(events)
    stored = after["feedback"] - before["feedback"]
    print(
        f"feedback in: {served['requests']} decide+feedback round trips, {served['failed']} "
        f"failed, p50 {served['round_trip_p50_ms']:.1f} ms, p99 "
        f"{served['round_trip_p99_ms']:.1f} ms; event log: +{stored} feedback, "
        f"+{after['decisions'] - before['decisions']} decisions, quality "
        f"{after['quality']:.4f} (client {served['avg_quality']:.4f})"
    )
    assert served["requests"] == N_BEFORE and served["failed"] == 0
    assert served["features"] == {"open": N_BEFORE}  # every decision read the online store
    assert stored == N_BEFORE
    assert after["decisions"] - before["decisions"] >= N_BEFORE
    assert after["quality"] == pytest.approx(served["avg_quality"], abs=1e-9)

    # 2. features pushed to Redis by the service, read back through Feast
    models = list(routing.models)
    started = time.monotonic()
    online = wait_until(
        "online features to count every feedback",
        # both views: the pusher writes the per-model and the per-task one in turn
        lambda: (
            (c := online_counts(reader, models))["models_1h"] == N_BEFORE
            and c["task_24h"] == N_BEFORE
            and c
        ),
        60,
        every_s=0.2,
    )
    reader.close()
    _, decision = http(
        f"{stack.serving_url}/decide", {"tenant": TENANT, "prompt": "Hi there", "models": models}
    )
    print(
        f"online features (Redis via Feast): {online['models_1h']:.0f} feedback over "
        f"{online['models_seen']} models in the last hour, {online['task_24h']:.0f} by task "
        f"(visible {time.monotonic() - started:.1f} s after the last feedback); /decide "
        f"features {decision['features']}"
    )
    assert online["task_24h"] == N_BEFORE and online["models_seen"] >= 2
    assert decision["features"]["state"] == "open" and not decision["features"]["degraded"]

    # 3. the incremental training flow, run by the stack's Prefect worker
    started = time.monotonic()
    run_id = stack.start_flow_run("incremental-training/incremental-training")
    run = stack.wait_flow_run(run_id, timeout_s=240)
    flow_s = time.monotonic() - started
    tasks = {t["name"].rsplit("-", 1)[0]: t["state_type"] for t in stack.task_runs(run_id)}
    print(f"training flow: {run['state_type']} in {flow_s:.0f} s (worker), tasks {tasks}")
    assert run["state_type"] == "COMPLETED", run["state"]
    assert set(tasks.values()) == {"COMPLETED"}

    # 4. the new version in the PostgreSQL-backed registry, through the MLflow server
    from pipelines.promotion import promote  # noqa: PLC0415
    from registry import mlflow_registry as registry  # noqa: PLC0415 - MLflow imports take seconds

    settings = stack.settings(tmp_path / "client")
    client = registry.configure(settings)
    versions = [
        v
        for v in registry.list_versions(client)
        if v.tags.get("source_flow") == "incremental-training"
    ]
    every = [
        (v.version, v.aliases, v.tags.get("source_flow")) for v in registry.list_versions(client)
    ]
    assert versions, f"the flow registered no version; the registry holds {every}"
    new = versions[0]
    print(
        f"registry ({stack.mlflow_url}): {registry.MODEL_NAME} version {new.version} "
        f"aliases {new.aliases}, n_events {new.tags['n_events']}, "
        f"data_window {new.tags['data_window']!r}"
    )
    assert new.aliases == ("dev",), every
    assert int(new.tags["n_events"]) == after["feedback"]
    assert int(new.tags["last_feedback_id"]) == after["last_feedback_id"]
    assert len(new.tags["artifact_sha256"]) == 64

    # 5. the gates promote it (dev -> staging: OPE; -> prod: no champion yet) -> hot swap
    catalog = load_catalog(Settings().catalog_path)
    event_log = EventLog(events, migrate=False)
    to_staging = promote(client, new.version, "staging", log=event_log, catalog=catalog)
    assert to_staging.moved, to_staging.gate.reason
    to_prod = promote(client, new.version, "prod", log=event_log, catalog=catalog)
    assert to_prod.moved, to_prod.gate.reason
    label = registry.version_label(new.version)
    swap_s = stack.wait_for_version(label, timeout_s=60)
    print(
        f"promotion: staging ({to_staging.gate.reason}), prod ({to_prod.gate.reason}); "
        f"hot swap {fresh} -> {label} in {swap_s:.2f} s (alias poll every {POLL_S:g} s)"
    )
    assert swap_s < POLL_S + 15

    served_new = drive_service(stack.serving_url, routing, n=N_AFTER, seed=2, tenant=TENANT)
    print(
        f"after the swap: {served_new['requests']} round trips, {served_new['failed']} failed, "
        f"policy versions {served_new['policy_versions']}"
    )
    assert served_new["failed"] == 0 and served_new["policy_versions"] == {label: N_AFTER}

    # 6. drift report of the served traffic against the champion's training window
    from monitoring.reports import drift_report  # noqa: PLC0415 - Evidently imports take seconds

    summary = drift_report(
        settings=settings, window=N_AFTER, out_dir=tmp_path / "reports", add_to_workspace=False
    )
    html = sorted(summary.folder.glob("*.html"))
    snapshots = sorted(p for p in summary.folder.glob("*.json") if p.name != "summary.json")
    print(
        f"drift report: reference {summary.reference.kind} ({summary.reference_window.n_rows} "
        f"rows), current {summary.current_window.n_rows} rows; reports "
        f"{[r.name for r in summary.reports]}, drift {summary.drift_detected}; "
        f"{len(html)} HTML, {len(snapshots)} JSON in {summary.elapsed_s:.1f} s"
    )
    assert summary.reference.kind == "champion", summary.reference.description
    assert summary.current_window.n_rows == N_AFTER
    assert summary.reference_window.n_rows >= 50
    assert html and all(p.stat().st_size > 10_000 for p in html)
    assert snapshots and all(p.stat().st_size > 100 for p in snapshots)
    events.dispose()
