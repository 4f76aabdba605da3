"""Flow ``drift-report`` (daily): Evidently drift reports of recent traffic; drift -> retraining.

Runs monitoring's drift report (:func:`monitoring.reports.drift_report`) on the latest
``window`` events of the event log against the champion's training window: request features,
per-model quality and reward, decisions. Reports go to ``<home>/monitoring/reports`` (one folder
per run, ``index.html`` listing them) unless ``out_dir`` says otherwise, and the snapshots to
the Evidently UI workspace ``<home>/monitoring/workspace`` (``llmopt monitor ui``). An event log
too small for two windows skips the run and says so.

A report that finds drift alerts and runs the retraining deployment (``LLMOPT_RETRAIN_DEPLOYMENT``,
the nightly rebuild by default) through Prefect's API, unless a retraining was asked for within
``LLMOPT_RETRAIN_COOLDOWN_S`` (by this flow or by serving's detectors): :mod:`monitoring.
retraining`. The run's result says what happened under ``retraining``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from llmopt.settings import get_settings
from monitoring import reports
from monitoring.alerts import Alerter
from monitoring.retraining import RetrainTrigger
from monitoring.windows import NotEnoughEventsError

NAME = "drift-report"


@task(name="drift", cache_policy=NO_CACHE, retries=1)
def drift(window: int, out_dir: str | None = None) -> dict[str, Any]:
    """Run monitoring's drift report on the last ``window`` events; its summary, or why not."""
    logger = get_run_logger()
    try:
        summary = reports.drift_report(settings=get_settings(), window=window, out_dir=out_dir)
    except NotEnoughEventsError as exc:  # a young deployment: not a failure
        logger.info("drift report skipped: %s", exc)
        return {"status": "skipped", "reason": str(exc)}
    logger.info("%s", summary.describe())
    return {"status": "done", "result": summary.to_dict()}


def drift_reason(result: dict[str, Any]) -> str:
    """Why a drifted report asks for retraining, in one line (its drifted reports and columns).

    >>> drift_reason({"current": {"feedback_ids": "(150, 300]"}, "reports": {
    ...     "features": {"drift_detected": True, "drifted_columns": ["quality", "reward"]},
    ...     "decisions": {"drift_detected": False, "drifted_columns": []}}})
    'drift report: features (quality, reward) drifted in feedback (150, 300]'
    """
    drifted = [
        f"{name} ({', '.join(r.get('drifted_columns', [])) or '-'})"
        for name, r in result.get("reports", {}).items()
        if r.get("drift_detected")
    ]
    where = result.get("current", {}).get("feedback_ids", "?")
    return f"drift report: {'; '.join(drifted)} drifted in feedback {where}"


@task(name="request-retraining", cache_policy=NO_CACHE)
def request_retraining(reason: str) -> dict[str, Any]:
    """Run the retraining deployment through Prefect (cooldown, alert); what happened."""
    settings = get_settings()
    logger = get_run_logger()
    if not settings.retrain_deployment:
        logger.warning(
            "drift found; no retraining deployment configured (LLMOPT_RETRAIN_DEPLOYMENT)"
        )
        return {"status": "off", "reason": reason}
    trigger = RetrainTrigger(
        settings.retrain_deployment,
        cooldown_s=settings.retrain_cooldown_s,
        source="report",
        alerter=Alerter(webhook_url=settings.alert_webhook_url),
        allow_ephemeral=True,  # the flow run's own API in the embedded profile
    )
    outcome = trigger.request(reason)
    log = logger.info if outcome.status in ("triggered", "cooldown") else logger.warning
    log("%s", outcome.detail)
    return outcome.to_dict()


@flow(name=NAME, description=__doc__)
def drift_report(window: int = 5000, out_dir: str | None = None) -> dict[str, Any]:
    """Drift reports of the last ``window`` logged events (into ``out_dir`` if given); on drift,
    a retraining request (``retraining`` in the result)."""
    out = drift(window, out_dir)
    if out["status"] == "done" and out["result"]["drift_detected"]:
        out["retraining"] = request_retraining(drift_reason(out["result"]))
    return out
