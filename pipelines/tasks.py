"""Prefect tasks: typed, retried steps; each wraps logic from the pure modules of this package.

Tasks read the settings themselves (``get_settings()``: ``LLMOPT_*`` variables), so flow
parameters stay small, JSON-friendly config. Test task logic through ``task.fn(...)``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import mlflow
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from feature_store.names import ROUTER_SERVICE
from llmopt.catalog import ModelCatalog, load_catalog
from llmopt.embeddings import embedding_version
from llmopt.event_log import EventLog, LogCursor
from llmopt.settings import Settings, get_settings
from models.base import BasePolicy
from models.kinds import make_policy
from models.quality import QualityModel
from pipelines.checkpoint import CheckpointStore
from pipelines.evaluation import ope_report
from pipelines.promotion import PromotionOutcome, PromotionPolicy, promote
from pipelines.training import TrainingResult, incremental_update, rebuild
from registry import mlflow_registry as registry

INCREMENTAL_CHECKPOINT = "incremental"


def _log(settings: Settings) -> EventLog:
    if not settings.database_url:
        settings.ensure_home()
    return EventLog(settings.event_log_url)


def _catalog(settings: Settings) -> ModelCatalog:
    return load_catalog(settings.catalog_path)


def version_cursor(tags: Mapping[str, str]) -> LogCursor | None:
    """The log cursor a version learned up to, from its tags (``log_cursor``, else the older
    ``last_feedback_id``), or None when it names none."""
    if "log_cursor" in tags:
        return LogCursor.parse(tags["log_cursor"])
    if "last_feedback_id" in tags:
        return LogCursor(0, int(tags["last_feedback_id"]))
    return None


def _initial_policy(settings: Settings, policy_name: str) -> tuple[BasePolicy, LogCursor, int]:
    """Where incremental training starts without a checkpoint: the ``dev`` version, else fresh."""
    client = registry.configure(settings)
    if registry.version_for_alias(client, "dev") is not None:
        version, policy = registry.load_policy(client, "dev")
        tags = client.get_model_version(registry.MODEL_NAME, version).tags
        cursor = version_cursor(tags)
        if cursor is not None:
            return policy, cursor, int(tags.get("n_events", 0))
    return make_policy(policy_name, seed=0), LogCursor(), 0


@task(name="train-incremental", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def train_incremental(
    policy_name: str, batch_size: int, checkpoint: str = INCREMENTAL_CHECKPOINT
) -> TrainingResult:
    """Learn the feedback after the checkpoint (a retry resumes from the last batch saved)."""
    settings = get_settings()
    log = _log(settings)
    try:
        store = CheckpointStore(log.engine)
        return incremental_update(
            log,
            store,
            name=checkpoint,
            initial=lambda: _initial_policy(settings, policy_name),
            batch_size=batch_size,
        )
    finally:
        log.close()


@task(name="registered-cursor", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def registered_cursor(alias: str = "dev") -> LogCursor:
    """The log cursor of the version ``alias`` points at (the log's start: no version, or no
    such tag)."""
    client = registry.configure(get_settings())
    version = registry.version_for_alias(client, alias)
    if version is None:
        return LogCursor()
    tags = client.get_model_version(registry.MODEL_NAME, version).tags
    return version_cursor(tags) or LogCursor()


@task(name="rebuild-from-history", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def rebuild_from_history(
    policy_name: str, params: dict[str, Any], batch_size: int
) -> tuple[TrainingResult, QualityModel]:
    """A fresh policy (and quality model) warm-started on the evaluation file of
    ``LLMOPT_WARM_START_EVALS`` (if set), then on every logged feedback."""
    settings = get_settings()
    policy = make_policy(policy_name, seed=0, **params)
    if settings.warm_start_evals is not None:
        from llmopt.routing_data import load_routing_data  # noqa: PLC0415
        from pipelines.warm_start import learn_evals  # noqa: PLC0415

        warm = learn_evals(
            policy,
            load_routing_data(settings.warm_start_evals),
            willingness_to_pay=settings.default_willingness_to_pay,
        )
    log = _log(settings)
    try:
        result, quality = rebuild(log, policy, batch_size=batch_size)
    finally:
        log.close()
    if settings.warm_start_evals is not None:
        result = dataclasses.replace(result, warm_start=warm.tags())
    return result, quality


@task(name="reset-checkpoint", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def reset_checkpoint(result: TrainingResult, checkpoint: str = INCREMENTAL_CHECKPOINT) -> None:
    """Make incremental training continue from a rebuilt policy."""
    log = _log(get_settings())
    try:
        CheckpointStore(log.engine).save(
            checkpoint,
            last_feedback_id=result.cursor.feedback_id,
            last_tx=result.cursor.tx_id,
            state=result.policy.to_dict(),
            n_events=result.n_total,
        )
    finally:
        log.close()


@task(name="evaluate-offline", cache_policy=NO_CACHE, retries=1)
def evaluate_offline(policy: BasePolicy, window: int) -> dict[str, Any] | None:
    """SNIPS/IPS report of ``policy`` on the last ``window`` logged decisions (None if none)."""
    settings = get_settings()
    log = _log(settings)
    try:
        events = log.latest_training_events(window)
        return ope_report(policy, events, catalog=_catalog(settings)) if events else None
    finally:
        log.close()


@task(name="log-model-version", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def log_model_version(
    result: TrainingResult,
    *,
    flow_name: str,
    alias: str = "dev",
    report: dict[str, Any] | None = None,
    quality: QualityModel | None = None,
    extra_metrics: dict[str, float] | None = None,
) -> str:
    """One MLflow run in the flow's experiment (params, metrics, artifacts) and a new version."""
    settings = get_settings()
    client = registry.configure(settings)
    exp = registry.experiment_id(client, settings, flow_name)
    state = result.policy.to_dict()
    with mlflow.start_run(experiment_id=exp, run_name=f"{flow_name}-{int(time.time())}"):
        mlflow.log_params({"policy": state["kind"], **_flat_params(state["params"])})
        metrics = {
            "n_events": float(result.n_events),
            "n_total": float(result.n_total),
            "last_feedback_id": float(result.last_feedback_id),
            "n_waiting": float(result.n_waiting),
            "learn_seconds": result.learn_seconds,
            **(extra_metrics or {}),
        }
        if result.learn_seconds > 0 and result.n_events:
            metrics["events_per_second"] = result.n_events / result.learn_seconds
        if report is not None:
            metrics["ope_snips"] = report["snips"]["value"]
            metrics["ope_ips"] = report["ips"]["value"]
            metrics["logged_value"] = report["logged_value"]
            mlflow.log_dict(report, "ope_report.json")
        if quality is not None:
            mlflow.log_dict(quality.to_dict(), "quality_model.json")
        mlflow.log_metrics(metrics)
        version = registry.log_policy_version(
            client,
            result.policy,
            tags={
                "data_window": result.data_window,
                "last_feedback_id": str(result.last_feedback_id),
                "log_cursor": str(result.cursor),
                "n_events": str(result.n_total),
                "feature_service_version": ROUTER_SERVICE,
                "source_flow": flow_name,
                "embedding": embedding_version(),
                **result.warm_start,
                **({"ope_snips": f"{report['snips']['value']:.6f}"} if report else {}),
            },
            aliases=[alias],
        )
    get_run_logger().info(
        "registered %s version %s (%s) as %r",
        registry.MODEL_NAME,
        version,
        result.data_window,
        alias,
    )
    return version


@task(name="promote-version", cache_policy=NO_CACHE, retries=1)
def promote_version(
    version: str, alias: str, rules: PromotionPolicy, force: bool = False
) -> PromotionOutcome:
    """Run the gate of ``alias`` for ``version`` and move the alias if it passes."""
    settings = get_settings()
    client = registry.configure(settings)
    log = _log(settings)
    try:
        return promote(
            client,
            version,
            alias,
            log=log,
            catalog=_catalog(settings),
            rules=rules,
            force=force,
        )
    finally:
        log.close()


def _flat_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if isinstance(v, int | float | str | bool) or v is None}
