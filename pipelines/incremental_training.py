"""Flow ``incremental-training`` (every 5 minutes): new feedback -> policy update -> ``dev``.

Learns the feedback logged since the last checkpoint into the current policy (checkpointed
after every batch, so a crash and a rerun neither lose nor double-count feedback; read in the
event log's commit-safe order, so feedback that commits late is learned by a later run, never
skipped), then logs the run to MLflow and registers the policy as a new ``llm-router`` version
aliased ``dev`` **only when it has something to show** (:mod:`pipelines.registration`): at least
``LLMOPT_REGISTER_MIN_EVENTS`` events learned since the ``dev`` version, or an off-policy
estimate outside that version's confidence interval. Every run that learned something logs its
metrics and its ``registration_reason``, registered or not.

A version it registers carries the served generation-parameter tuning
(:mod:`models.tuning_snapshot`) as nightly's do: the tuning of the version it would replace
(the alias's) continued with the tuned rewards logged after that snapshot's last feedback id,
up to this run's last feedback id (:func:`pipelines.tasks.continue_served_tuning`; the same
snapshot a refit would give, reading only the new rows), or, when that version has none, fitted
from the whole log up to the same id. So promoting an incrementally trained version keeps its
tuning instead of falling back to serving's shared one, learned from scratch. Runs that do not
register fit no tuning.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from models.kinds import RECOMMENDED
from pipelines.tasks import (
    continue_served_tuning,
    count_new_events,
    decide,
    evaluate_against_previous,
    log_training_run,
    registered_version,
    train_incremental,
)
from pipelines.training import DEFAULT_BATCH_SIZE

NAME = "incremental-training"


@flow(name=NAME, description=__doc__)
def incremental_training(
    policy: str = RECOMMENDED,
    batch_size: int = DEFAULT_BATCH_SIZE,
    alias: str = "dev",
    eval_window: int = 2000,
    respond_to_drift: bool = True,
) -> dict[str, Any]:
    """Update the policy with new feedback; register a version under ``alias`` if it earns one.

    With ``respond_to_drift`` a model is discounted where serving's drift detectors fire on
    the feedback, as the live policy is (:mod:`pipelines.drift_replay`), so a version trained
    after a change does not keep preferring the model that was best before it."""
    result = train_incremental(policy, batch_size, respond_to_drift=respond_to_drift)
    summary: dict[str, Any] = {
        "data_window": result.data_window,
        "n_events": result.n_events,
        "n_total": result.n_total,
        "n_waiting": result.n_waiting,
        "drift_responses": result.drift_responses,
        "last_feedback_id": result.last_feedback_id,
        "log_cursor": str(result.cursor),
        "learn_seconds": round(result.learn_seconds, 4),
        "version": None,
    }
    previous = registered_version(alias)
    # Counted from the alias's version, not from this run's start: a run killed after its
    # last checkpoint but before registering leaves learned events that no version holds.
    n_new = count_new_events(previous.cursor, result.cursor)
    summary["n_new_since_version"] = n_new
    if n_new == 0:  # nothing learned since the alias's version: no run to log
        decision = decide(0, None, previous.version)
        get_run_logger().info("%s: nothing to log or register", decision.detail)
        summary["registration_reason"] = decision.reason
        return summary
    evaluation = evaluate_against_previous(result.policy, previous.version, eval_window)
    decision = decide(n_new, evaluation, previous.version)
    # Only a version carries the tuning (the next run continues the alias version's, not an
    # unregistered run's): fitted when registering, so most runs read no tuning at all.
    tuning = (
        continue_served_tuning(previous.version, result.last_feedback_id)
        if decision.register
        else None
    )
    summary["tuning_n_feedback"] = tuning.n_feedback if tuning is not None else 0
    summary["registration_reason"] = decision.reason
    summary["registration_detail"] = decision.detail
    summary["ope_lift"] = decision.lift
    summary["version"] = log_training_run(
        result,
        decision,
        flow_name=NAME,
        alias=alias,
        evaluation=evaluation,
        params={"batch_size": batch_size},
        tuning=tuning,
    )
    return summary
