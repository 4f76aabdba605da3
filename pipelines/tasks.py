"""Prefect tasks: typed, retried steps; each wraps logic from the pure modules of this package.

Tasks read the settings themselves (``get_settings()``: ``LLMOPT_*`` variables), so flow
parameters stay small, JSON-friendly config. Test task logic through ``task.fn(...)``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
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
from models.kinds import kind_of, make_policy
from models.tuning_snapshot import TuningSnapshot, continue_snapshot, fit_snapshot
from pipelines.checkpoint import CheckpointStore
from pipelines.evaluation import estimate_of, ope_report
from pipelines.promotion import PromotionOutcome, PromotionPolicy, promote
from pipelines.registration import RegistrationDecision, decide_registration
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
    policy_name: str,
    batch_size: int,
    checkpoint: str = INCREMENTAL_CHECKPOINT,
    respond_to_drift: bool = True,
) -> TrainingResult:
    """Learn the feedback after the checkpoint (a retry resumes from the last batch saved),
    discounting drifted models as serving does (``respond_to_drift``)."""
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
            respond_to_drift=respond_to_drift,
        )
    finally:
        log.close()


@dataclass(frozen=True)
class RegisteredVersion:
    """The version an alias points at and the log cursor it learned up to (the baseline of the
    next registration): ``version`` None when the alias points nowhere."""

    version: str | None
    cursor: LogCursor


@task(name="registered-version", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def registered_version(alias: str = "dev") -> RegisteredVersion:
    """The version ``alias`` points at and its cursor (the log's start: no version, or a
    version whose tags name no cursor)."""
    client = registry.configure(get_settings())
    version = registry.version_for_alias(client, alias)
    if version is None:
        return RegisteredVersion(None, LogCursor())
    tags = client.get_model_version(registry.MODEL_NAME, version).tags
    return RegisteredVersion(version, version_cursor(tags) or LogCursor())


@task(name="count-new-events", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def count_new_events(since: LogCursor, until: LogCursor) -> int:
    """Events in the log after ``since`` up to ``until`` (0 when ``until`` is not after it)."""
    if until <= since:
        return 0
    log = _log(get_settings())
    try:
        return log.count_between(since, until)
    finally:
        log.close()


@task(name="rebuild-from-history", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def rebuild_from_history(
    policy_name: str, params: dict[str, Any], batch_size: int
) -> TrainingResult:
    """A fresh policy warm-started on the evaluation file of
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
        result = rebuild(log, policy, batch_size=batch_size)
    finally:
        log.close()
    if settings.warm_start_evals is not None:
        result = dataclasses.replace(result, warm_start=warm.tags())
    return result


def _fit_tuning(settings: Settings, until_feedback_id: int) -> TuningSnapshot | None:
    log = _log(settings)
    try:
        snapshot = fit_snapshot(
            log.parameter_feedback(until_id=until_feedback_id),
            until_feedback_id=until_feedback_id,
        )
    finally:
        log.close()
    return snapshot if snapshot.pairs else None


@task(name="fit-served-tuning", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def fit_served_tuning(until_feedback_id: int) -> TuningSnapshot | None:
    """The served generation-parameter tuning fitted from the log's rewarded decisions that
    carry a tuning record, up to ``until_feedback_id`` (the policy's data window), or None when
    there are none (:mod:`models.tuning_snapshot`)."""
    return _fit_tuning(get_settings(), until_feedback_id)


@task(name="continue-served-tuning", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def continue_served_tuning(
    previous_version: str | None, until_feedback_id: int
) -> TuningSnapshot | None:
    """The served tuning of the registry version ``previous_version`` continued with the
    log's tuned rewards after its last feedback id, up to ``until_feedback_id``
    (:func:`models.tuning_snapshot.continue_snapshot`: what a refit would give, reading only
    the new rows). Without a previous snapshot (no version, a version without tuning, or one
    that cannot be read: a warning), fitted from the log up to ``until_feedback_id`` as
    :func:`fit_served_tuning` does. None when there is no tuned feedback at all."""
    settings = get_settings()
    previous = None
    if previous_version is not None:
        try:
            previous = registry.load_tuning(registry.configure(settings), previous_version)
        except (registry.RegistryError, ValueError) as exc:  # tampered, or a newer format
            get_run_logger().warning(
                "version %s: served tuning unreadable (%s); refitting it from the log",
                previous_version,
                exc,
            )
    if previous is None or previous.until_feedback_id is None:
        return _fit_tuning(settings, until_feedback_id)
    after = previous.until_feedback_id
    log = _log(settings)
    try:
        rows = (
            log.parameter_feedback(after_id=after, until_id=until_feedback_id)
            if until_feedback_id > after
            else iter(())
        )
        snapshot = continue_snapshot(
            previous, rows, until_feedback_id=max(after, until_feedback_id)
        )
    finally:
        log.close()
    return snapshot if snapshot.pairs else None


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


@dataclass(frozen=True)
class Evaluation:
    """Off-policy reports of a run's policy and of the version it would replace, on the same
    latest logged decisions, and one of those decisions' features (the model's input example)."""

    report: dict[str, Any] | None
    previous: dict[str, Any] | None
    previous_version: str | None
    window: int
    example_features: dict[str, float] | None


@task(name="evaluate-against-previous", cache_policy=NO_CACHE, retries=1)
def evaluate_against_previous(
    policy: BasePolicy, previous_version: str | None, window: int
) -> Evaluation:
    """SNIPS/IPS reports of ``policy`` and of the registry version ``previous_version`` (if
    any) on the same last ``window`` logged decisions."""
    settings = get_settings()
    log = _log(settings)
    try:
        events = log.latest_training_events(window)
    finally:
        log.close()
    if not events:
        return Evaluation(None, None, previous_version, window, None)
    catalog = _catalog(settings)
    report = ope_report(policy, events, catalog=catalog)
    previous = None
    if previous_version is not None:
        _, old = registry.load_policy(registry.configure(settings), previous_version)
        previous = ope_report(old, events, catalog=catalog)
    return Evaluation(report, previous, previous_version, window, dict(events[-1].features))


def decide(n_new: int, evaluation: Evaluation | None, previous: str | None) -> RegistrationDecision:
    """The registration rule (:mod:`pipelines.registration`) with ``LLMOPT_REGISTER_MIN_EVENTS``."""
    report = evaluation.report if evaluation is not None else None
    prev = evaluation.previous if evaluation is not None else None
    return decide_registration(
        n_new,
        min_events=get_settings().register_min_events,
        estimate=estimate_of(report) if report is not None else None,
        previous=estimate_of(prev) if prev is not None else None,
        previous_version=previous,
    )


def _ope_metrics(prefix: str, report: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for method in ("snips", "ips"):
        est = report[method]
        out |= {
            f"{prefix}{method}": float(est["value"]),
            f"{prefix}{method}_lower": float(est["lower"]),
            f"{prefix}{method}_upper": float(est["upper"]),
        }
    return out


def run_metrics(
    result: TrainingResult, decision: RegistrationDecision, evaluation: Evaluation | None
) -> dict[str, float]:
    """What every training run logs to MLflow, registered or not."""
    metrics = {
        "n_events": float(result.n_events),
        "n_new_since_version": float(decision.n_new),
        "n_total": float(result.n_total),
        "n_waiting": float(result.n_waiting),
        "last_feedback_id": float(result.last_feedback_id),
        "learn_seconds": result.learn_seconds,
        "registered": float(decision.register),
        "drift_responses": float(result.drift_responses),
    }
    if result.learn_seconds > 0 and result.n_events:
        metrics["events_per_second"] = result.n_events / result.learn_seconds
    report = evaluation.report if evaluation is not None else None
    if report is not None:
        metrics |= _ope_metrics("ope_", report)
        metrics["logged_value"] = float(report["logged_value"])
        metrics["match_rate"] = float(report["match_rate"])
        metrics["ope_lift_over_logged"] = float(report["snips"]["value"] - report["logged_value"])
    if evaluation is not None and evaluation.previous is not None:
        metrics |= _ope_metrics("previous_ope_", evaluation.previous)
    if decision.lift is not None:
        metrics["ope_lift"] = decision.lift
    return metrics


def version_description(
    result: TrainingResult,
    decision: RegistrationDecision,
    evaluation: Evaluation | None,
    *,
    flow_name: str,
    policy_name: str,
    tuning: TuningSnapshot | None = None,
) -> str:
    """What a registered version learned from and why it was registered, in a few sentences."""
    since = f"version {decision.previous_version}" if decision.previous_version else "the start"
    lines = [
        f"{policy_name}, trained by the {flow_name} flow.",
        f"Learned from: {result.data_window} ({result.n_events} events in this run, "
        f"{decision.n_new} new since {since}, {result.n_total} since the policy was created; "
        f"log cursor {result.cursor}).",
    ]
    if result.warm_start:
        warm = result.warm_start
        lines.append(
            f"Warm start: {warm.get('warm_start_evals_outcomes', '?')} outcomes of "
            f"{warm.get('warm_start_evals_prompts', '?')} prompts from "
            f"{warm.get('warm_start_evals', '?')} (sha256 "
            f"{warm.get('warm_start_evals_sha256', '?')[:12]}), before the event log."
        )
    else:
        lines.append("Warm start: none.")
    if result.drift_responses:
        lines.append(
            f"Drift: {result.drift_responses} model(s) discounted where serving's detectors "
            "fired on these events."
        )
    if tuning is not None:
        lines.append(f"Generation parameters tuned on {tuning.summary()}.")
    lines.append(f"Registered because: {decision.detail}.")
    if evaluation is not None and evaluation.report is not None:
        est = evaluation.report["snips"]
        text = (
            f"Off-policy estimate (SNIPS, last {evaluation.report['n']} logged decisions): "
            f"{est['value']:.4f} [{est['lower']:.4f}, {est['upper']:.4f}]; logged policy "
            f"{evaluation.report['logged_value']:.4f}"
        )
        if evaluation.previous is not None and decision.lift is not None:
            prev = evaluation.previous["snips"]
            text += (
                f"; version {decision.previous_version} {prev['value']:.4f} "
                f"[{prev['lower']:.4f}, {prev['upper']:.4f}], lift {decision.lift:+.4f}"
            )
        lines.append(text + ".")
    return " ".join(lines)


@task(name="log-training-run", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def log_training_run(
    result: TrainingResult,
    decision: RegistrationDecision,
    *,
    flow_name: str,
    alias: str = "dev",
    evaluation: Evaluation | None = None,
    params: dict[str, Any] | None = None,
    tuning: TuningSnapshot | None = None,
) -> str | None:
    """One MLflow run in the flow's experiment: the run's parameters, learning metrics (OPE
    with its interval, lift over the previous version, events learned) and why it did or did
    not register (tags ``registered``, ``registration_reason``, ``registration_detail``); and,
    when ``decision.register``, a new version aliased ``alias`` with its description. With
    ``tuning`` (the served-tuning snapshot), the run logs it (``tuning/served_tuning.json``,
    metrics ``tuning_n_feedback`` and ``tuning_pairs``) and the version carries it
    (:func:`registry.mlflow_registry.log_policy_version`). The version number, or None."""
    settings = get_settings()
    client = registry.configure(settings)
    exp = registry.experiment_id(client, settings, flow_name)
    state = result.policy.to_dict()
    kind = kind_of(result.policy)
    version = None
    with mlflow.start_run(experiment_id=exp, run_name=f"{flow_name}-{int(time.time())}"):
        mlflow.log_params(
            {
                "policy": kind,
                **_flat_params(state["params"]),
                "register_min_events": decision.min_events,
                **({"eval_window": evaluation.window} if evaluation is not None else {}),
                **(params or {}),
            }
        )
        mlflow.set_tags(
            {
                "policy_name": kind,
                "source_flow": flow_name,
                "data_window": result.data_window,
                "log_cursor": str(result.cursor),
                "registered": str(decision.register).lower(),
                "registration_reason": decision.reason,
                "registration_detail": decision.detail,
                "previous_version": decision.previous_version or "",
                **result.warm_start,
            }
        )
        mlflow.log_metrics(run_metrics(result, decision, evaluation))
        if tuning is not None:
            mlflow.log_metrics(
                {
                    "tuning_n_feedback": float(tuning.n_feedback),
                    "tuning_pairs": float(len(tuning.pairs)),
                    "tuning_pairs_tuned": float(tuning.n_tuned),
                }
            )
            if not decision.register:  # a registered version logs it with the model
                mlflow.log_dict(tuning.to_dict(), "tuning/served_tuning.json")
        if evaluation is not None and evaluation.report is not None:
            mlflow.log_dict(evaluation.report, "ope_report.json")
            if evaluation.previous is not None:
                mlflow.log_dict(evaluation.previous, "ope_report_previous_version.json")
        if decision.register:
            report = evaluation.report if evaluation is not None else None
            ope_tags: dict[str, str] = {}
            if report is not None:
                est = report["snips"]
                ope_tags = {
                    "ope_snips": f"{est['value']:.6f}",
                    "ope_snips_ci": f"[{est['lower']:.6f}, {est['upper']:.6f}]",
                }
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
                    "registration_reason": decision.reason,
                    **result.warm_start,
                    **ope_tags,
                },
                aliases=[alias],
                example_features=evaluation.example_features if evaluation else None,
                description=version_description(
                    result,
                    decision,
                    evaluation,
                    flow_name=flow_name,
                    policy_name=kind,
                    tuning=tuning,
                ),
                tuning=tuning,
            )
            mlflow.set_tag("registered_version", version)
    logger = get_run_logger()
    if version is not None:
        logger.info(
            "registered %s version %s (%s) as %r: %s",
            registry.MODEL_NAME,
            version,
            result.data_window,
            alias,
            decision.detail,
        )
    else:
        logger.info("no new version (%s): %s", decision.reason, decision.detail)
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
