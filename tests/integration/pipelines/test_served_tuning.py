"""Nightly training fits the served tuning from a real event log and versions it with the policy;
incremental training continues the tuning of the version it replaces."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llmopt.catalog import load_catalog
from llmopt.event_log import EventLog, ParameterFeedback
from llmopt.schemas import Feedback, RequestContext
from llmopt.settings import Settings
from pipelines.incremental_training import NAME, incremental_training
from pipelines.nightly_training import nightly_training
from pipelines.tasks import fit_served_tuning
from registry import mlflow_registry as registry
from serving.model_source import RegistrySource
from serving.parameters import ServedTuning
from serving.router import Router

pytestmark = pytest.mark.integration

MODEL = "gpt-4o-mini"
KEY = f"code/{MODEL}"
CATALOG_PARAMS = {"temperature": 0.7, "max_tokens": 1024}


def serve_tuned(settings: Settings, n: int, *, seed: int = 0) -> int:
    """``n`` decisions of a tuning router on code prompts, each rewarded on a surface whose best
    temperature is 0.2, into the settings' event log; the log's feedback count."""
    log = EventLog(settings.event_log_url)
    router = Router(
        load_catalog(settings.catalog_path),
        log,
        arms=[MODEL],
        tuning=ServedTuning(min_feedback=5, explore=0.5, seed=seed),
    )
    rng = random.Random(seed)
    ctx = RequestContext(tenant="t", prompt="write a sort", task_hints=["code"])
    for _ in range(n):
        d = router.decide(ctx).decision
        q = 0.95 - (float(d.parameters["temperature"]) - 0.2) ** 2 + rng.gauss(0, 0.03)
        router.feedback(Feedback(decision_id=d.decision_id, quality=min(max(q, 0.0), 1.0)))
    count = log.counts()["feedback"]
    log.close()
    return count


def test_fit_from_the_event_log_serves_tuned_parameters_for_a_pair_with_enough_feedback(
    env: Settings, filled: Callable[..., int]
) -> None:
    untuned = filled(30)  # a plain learning loop's decisions: no tuning record, not learned
    total = serve_tuned(env, 80)
    assert total == untuned + 80
    snap = fit_served_tuning.fn(total)
    assert snap is not None and set(snap.pairs) == {KEY}
    assert snap.pairs[KEY].n_feedback == 80 and snap.until_feedback_id == total
    assert abs(float(snap.pairs[KEY].best["temperature"]) - 0.2) < 0.3

    served = ServedTuning.from_snapshot(snap)  # what a fresh serving worker starts from
    s = served.suggest("code", MODEL, CATALOG_PARAMS)
    assert s.reason.startswith(("tuned", "tuning")), s.reason
    assert served.suggest("chat", MODEL, CATALOG_PARAMS).reason.startswith("default")

    # the data window bounds the fit: up to the 40th tuned feedback only
    early = fit_served_tuning.fn(untuned + 40)
    assert early is not None and early.pairs[KEY].n_feedback == 40
    assert fit_served_tuning.fn(untuned) is None  # no tuning record yet: nothing to version


@pytest.mark.usefixtures("prefect_harness")
def test_nightly_training_registers_the_fitted_tuning_with_the_version(env: Settings) -> None:
    total = serve_tuned(env, 220)  # >= LLMOPT_REGISTER_MIN_EVENTS (200): a version
    summary = nightly_training(use_hpo=False, eval_window=100)
    assert summary["version"] is not None and summary["tuning_n_feedback"] == total
    client = registry.configure(env)
    mv = registry.client_model_version(client, summary["version"], registry.MODEL_NAME)
    assert mv.tags["tuning_n_feedback"] == str(total) and mv.tags["tuning_pairs"] == "1"
    assert f"Generation parameters tuned on {total} feedback" in (mv.description or "")
    run = client.get_run(mv.run_id)
    assert run.data.metrics["tuning_n_feedback"] == total
    snap = registry.load_tuning(client, summary["version"])
    assert snap is not None and snap == fit_served_tuning.fn(total)


@pytest.mark.usefixtures("prefect_harness")
def test_incremental_training_continues_the_tuning_of_the_version_it_replaces(
    env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[dict[str, int | None]] = []  # what each tuning fit read from the log
    read = EventLog.parameter_feedback

    def spy(self: EventLog, **kwargs: Any) -> Iterator[ParameterFeedback]:
        reads.append({"after_id": kwargs.get("after_id", 0), "until_id": kwargs.get("until_id")})
        return read(self, **kwargs)

    monkeypatch.setattr(EventLog, "parameter_feedback", spy)
    client = registry.configure(env)

    first_total = serve_tuned(env, 220)  # >= LLMOPT_REGISTER_MIN_EVENTS (200): a version
    first = incremental_training(batch_size=64, eval_window=100)
    assert first["version"] is not None and first["registration_reason"] == "min_events"
    # no previous version: fitted from the whole log, up to the policy's last feedback
    assert reads == [{"after_id": 0, "until_id": first_total}]
    assert first["tuning_n_feedback"] == first_total
    mv = registry.client_model_version(client, first["version"], registry.MODEL_NAME)
    assert mv.tags["tuning_n_feedback"] == str(first_total) and mv.tags["tuning_pairs"] == "1"
    assert f"Generation parameters tuned on {first_total} feedback" in (mv.description or "")
    assert client.get_run(mv.run_id).data.metrics["tuning_n_feedback"] == first_total

    total = serve_tuned(env, 210, seed=1)
    second = incremental_training(batch_size=64, eval_window=100)
    assert second["version"] is not None and second["registration_reason"] == "min_events"
    # the first version's tuning, continued with the 210 rewards after it: only those read
    assert reads[1:] == [{"after_id": first_total, "until_id": total}]
    assert second["tuning_n_feedback"] == total > first_total
    mv = registry.client_model_version(client, second["version"], registry.MODEL_NAME)
    assert mv.tags["tuning_n_feedback"] == str(total) and mv.tags["source_flow"] == NAME
    assert int(mv.tags["tuning_n_feedback"]) > first_total
    assert client.get_run(mv.run_id).data.metrics["tuning_n_feedback"] == total
    snap = registry.load_tuning(client, second["version"])
    assert snap is not None and snap.until_feedback_id == total
    assert snap == fit_served_tuning.fn(total)  # SQLite: what a full refit gives, exactly
    assert snap.pairs[KEY].n_feedback == total

    # what serving loads with the version, and serves from it
    loaded = RegistrySource(env).load("dev")
    assert loaded is not None and loaded.label.endswith(f"/{second['version']}")
    assert loaded.tuning == snap
    served = ServedTuning.from_snapshot(loaded.tuning)
    s = served.suggest("code", MODEL, CATALOG_PARAMS)
    assert s.reason.startswith(("tuned", "tuning")), s.reason
    assert served.suggest("chat", MODEL, CATALOG_PARAMS).reason.startswith("default")

    # a run that registers nothing fits no tuning (only versions carry one)
    serve_tuned(env, 5, seed=2)
    n_reads = len(reads)
    few = incremental_training(batch_size=64, eval_window=100)
    assert few["version"] is None and few["tuning_n_feedback"] == 0
    assert len(reads) == n_reads
