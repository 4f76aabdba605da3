"""Flow ``hpo`` (weekly): Optuna study over the router policy's hyperparameters.

Trials are scored by off-policy evaluation (SNIPS) on a temporal holdout of the logged
decisions (:mod:`pipelines.search_spaces`);
the study is stored in the Optuna storage of the settings
(``optuna-dashboard <LLMOPT_OPTUNA_STORAGE_URL>`` shows it); the best trial is logged to
MLflow's ``hpo`` experiment, and ``nightly-training`` builds the next policy with it.
"""

from __future__ import annotations

from typing import Any

import mlflow
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from llmopt.catalog import load_catalog
from llmopt.event_log import EventLog, TrainingEvent
from llmopt.settings import get_settings
from models.kinds import RECOMMENDED
from registry import mlflow_registry as registry

NAME = "hpo"


@task(name="load-events", cache_policy=NO_CACHE, retries=1)
def load_events(max_events: int) -> list[TrainingEvent]:
    """The most recent ``max_events`` logged feedback events, oldest first."""
    settings = get_settings()
    log = EventLog(settings.event_log_url)
    try:
        if max_events > 0:
            return log.latest_training_events(max_events)
        return [e for b in log.training_batches(0, 5000, with_context=True) for e in b]
    finally:
        log.close()


@task(name="run-study", cache_policy=NO_CACHE)
def run_study(
    events: list[TrainingEvent], policy: str, n_trials: int, holdout: float, seed: int
) -> dict[str, Any]:
    """Run the trials; return the study's best value and parameters."""
    from pipelines.search_spaces import run_study as study_run  # noqa: PLC0415
    from pipelines.search_spaces import study_name  # noqa: PLC0415

    settings = get_settings()
    study = study_run(
        events,
        policy=policy,
        storage=settings.optuna_storage,
        n_trials=n_trials,
        holdout=holdout,
        seed=seed,
        catalog=load_catalog(settings.catalog_path),
    )
    return {
        "study": study_name(policy),
        "storage": settings.optuna_storage,
        "n_trials": len(study.trials),
        "best_value": study.best_value,
        "best_params": study.best_params,
    }


@task(name="log-study", cache_policy=NO_CACHE, retries=2)
def log_study(best: dict[str, Any], policy: str, n_events: int) -> str:
    """Log the best trial to MLflow (experiment ``hpo``); return the run id."""
    settings = get_settings()
    client = registry.configure(settings)
    exp = registry.experiment_id(client, settings, NAME)
    with mlflow.start_run(experiment_id=exp, run_name=best["study"]) as run:
        mlflow.log_params({"policy": policy, "n_events": n_events, **best["best_params"]})
        mlflow.log_metrics({"best_snips": best["best_value"], "n_trials": best["n_trials"]})
        mlflow.log_dict(best, "best_trial.json")
        return str(run.info.run_id)


@flow(name=NAME, description=__doc__)
def hpo(
    policy: str = RECOMMENDED,
    n_trials: int = 20,
    holdout: float = 0.3,
    max_events: int = 20_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Search the policy's hyperparameters by off-policy evaluation; log the best trial."""
    events = load_events(max_events)
    if len(events) < 10:
        return {"status": "skipped", "reason": f"only {len(events)} logged feedback events"}
    best = run_study(events, policy, n_trials, holdout, seed)
    best["mlflow_run_id"] = log_study(best, policy, len(events))
    return best
