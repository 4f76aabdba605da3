"""Flow ``drift-report`` (daily): Evidently drift reports of recent traffic.

Runs monitoring's drift report (:func:`monitoring.reports.drift_report`) on the latest
``window`` events of the event log against the champion's training window: request features,
per-model quality and reward, decisions. Reports go to ``<home>/monitoring/reports`` (one folder
per run, ``index.html`` listing them) unless ``out_dir`` says otherwise, and the snapshots to
the Evidently UI workspace ``<home>/monitoring/workspace`` (``llmopt monitor ui``). An event log
too small for two windows skips the run and says so.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from llmopt.settings import get_settings
from monitoring.reports import NotEnoughEventsError
from pipelines.integrations import call_with_known, drift_function

NAME = "drift-report"


@task(name="drift", cache_policy=NO_CACHE, retries=1)
def drift(window: int, out_dir: str | None = None) -> dict[str, Any]:
    """Run monitoring's drift report on the last ``window`` events; its summary, or why not."""
    fn = drift_function()
    logger = get_run_logger()
    if fn is None:
        message = "monitoring has no drift report (issue #7): nothing to do"
        logger.info(message)
        return {"status": "skipped", "reason": message}
    available: dict[str, Any] = {"settings": get_settings(), "window": window}
    if out_dir is not None:
        available["out_dir"] = out_dir
    try:
        result = call_with_known(fn, **available)
    except NotEnoughEventsError as exc:  # a young deployment: not a failure
        logger.info("drift report skipped: %s", exc)
        return {"status": "skipped", "reason": str(exc)}
    if hasattr(result, "describe"):
        logger.info("%s", result.describe())
    summary = result.to_dict() if hasattr(result, "to_dict") else repr(result)[:500]
    return {"status": "done", "result": summary}


@flow(name=NAME, description=__doc__)
def drift_report(window: int = 5000, out_dir: str | None = None) -> dict[str, Any]:
    """Drift reports of the last ``window`` logged events (into ``out_dir`` if given)."""
    return drift(window, out_dir)
