"""Flow ``incremental-training`` (every 5 minutes): new feedback -> policy update -> ``dev``.

Learns the feedback logged since the last checkpoint into the current policy (checkpointed
after every batch, so a crash and a rerun neither lose nor double-count feedback; read in the
event log's commit-safe order, so feedback that commits late is learned by a later run, never
skipped), then logs the run to MLflow and registers the policy as a new ``llm-router`` version
aliased ``dev``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from models.kinds import RECOMMENDED
from pipelines.tasks import log_model_version, registered_cursor, train_incremental
from pipelines.training import DEFAULT_BATCH_SIZE

NAME = "incremental-training"


@flow(name=NAME, description=__doc__)
def incremental_training(
    policy: str = RECOMMENDED, batch_size: int = DEFAULT_BATCH_SIZE, alias: str = "dev"
) -> dict[str, Any]:
    """Update the policy with new feedback and register a version under ``alias``."""
    result = train_incremental(policy, batch_size)
    summary: dict[str, Any] = {
        "data_window": result.data_window,
        "n_events": result.n_events,
        "n_total": result.n_total,
        "n_waiting": result.n_waiting,
        "last_feedback_id": result.last_feedback_id,
        "log_cursor": str(result.cursor),
        "learn_seconds": round(result.learn_seconds, 4),
        "version": None,
    }
    # No new feedback, and the alias's version has learned up to the checkpoint: nothing to
    # do. A run killed after its last checkpoint but before registering leaves the checkpoint
    # ahead of the alias: register then, or those events would reach no version.
    if result.n_events == 0 and result.cursor <= registered_cursor(alias):
        get_run_logger().info("no new feedback after %s: nothing to register", result.cursor)
        return summary
    summary["version"] = log_model_version(result, flow_name=NAME, alias=alias)
    return summary
