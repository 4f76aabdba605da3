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
from monitoring import reports
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


@flow(name=NAME, description=__doc__)
def drift_report(window: int = 5000, out_dir: str | None = None) -> dict[str, Any]:
    """Drift reports of the last ``window`` logged events (into ``out_dir`` if given)."""
    return drift(window, out_dir)
