"""Flow ``nightly-training`` (02:00): rebuild the policy from the full event history.

A fresh policy (with the best hyperparameters the HPO study found, if any) is warm-started on
every logged feedback with ``learn_many``, using the features logged with each decision (what
the router saw then: point-in-time correct); the result is
evaluated off-policy on the recent logs next to the current ``dev`` version and logged to
MLflow. It is registered as ``dev``, and becomes the checkpoint incremental training continues
from, under the same rule as incremental training (:mod:`pipelines.registration`; the rebuilt
policy learned every event anew, so on any log of ``LLMOPT_REGISTER_MIN_EVENTS`` events or
more it registers). A rebuild that does not register leaves incremental training's lineage as
it was.

It also fits the served generation-parameter tuning (:mod:`models.tuning_snapshot`) from the
rewards of the logged decisions that carried a tuning record, over the same data window, when
there are any: the run logs it, and a registered version carries it (its tag
``tuning_n_feedback`` says how many rewards it was fitted on), so serving loads each version's
tuning with its policy instead of tuning from scratch on every restart.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from llmopt.settings import get_settings
from models.kinds import RECOMMENDED
from pipelines.tasks import (
    decide,
    evaluate_against_previous,
    fit_served_tuning,
    log_training_run,
    rebuild_from_history,
    registered_version,
    reset_checkpoint,
)

NAME = "nightly-training"


@task(name="best-hyperparameters", cache_policy=NO_CACHE, retries=1)
def best_hyperparameters(policy: str) -> dict[str, Any]:
    """Best parameters of the policy's HPO study ({} when there is none)."""
    from pipelines.search_spaces import best_params  # noqa: PLC0415 - Optuna only when asked

    return best_params(policy, get_settings().optuna_storage)


@flow(name=NAME, description=__doc__)
def nightly_training(
    policy: str = RECOMMENDED,
    batch_size: int = 5000,
    eval_window: int = 2000,
    use_hpo: bool = True,
) -> dict[str, Any]:
    """Rebuild and evaluate the policy; register it and reset the incremental checkpoint to it
    if it earns a version."""
    params = best_hyperparameters(policy) if use_hpo else {}
    result = rebuild_from_history(policy, params, batch_size)
    summary: dict[str, Any] = {
        "n_events": result.n_events,
        "data_window": result.data_window,
        "params": params,
        "version": None,
    }
    if result.n_events == 0:
        get_run_logger().info("the event log has no feedback yet: nothing to train")
        return summary
    tuning = fit_served_tuning(result.last_feedback_id)
    summary["tuning_n_feedback"] = tuning.n_feedback if tuning is not None else 0
    previous = registered_version("dev")
    evaluation = evaluate_against_previous(result.policy, previous.version, eval_window)
    decision = decide(result.n_events, evaluation, previous.version)
    summary["version"] = log_training_run(
        result,
        decision,
        flow_name=NAME,
        alias="dev",
        evaluation=evaluation,
        params={"batch_size": batch_size, "use_hpo": use_hpo},
        tuning=tuning,
    )
    if summary["version"] is not None:
        reset_checkpoint(result)
    summary["registration_reason"] = decision.reason
    summary["ope_snips"] = evaluation.report["snips"]["value"] if evaluation.report else None
    return summary
