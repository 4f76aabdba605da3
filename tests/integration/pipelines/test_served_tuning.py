"""Nightly training fits the served tuning from a real event log and versions it with the policy."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from llmopt.catalog import load_catalog
from llmopt.event_log import EventLog
from llmopt.schemas import Feedback, RequestContext
from llmopt.settings import Settings
from pipelines.nightly_training import nightly_training
from pipelines.tasks import fit_served_tuning
from registry import mlflow_registry as registry
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
