"""Flow ``drift-report`` (daily): data and concept drift report of recent traffic.

Wired to monitoring (issue #7): calls its drift report when the package provides one, and
otherwise says so and does nothing.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from llmopt.settings import get_settings
from pipelines.integrations import call_with_known, drift_function

NAME = "drift-report"


@task(name="drift", cache_policy=NO_CACHE, retries=1)
def drift(window: int) -> dict[str, Any]:
    """Run monitoring's drift report on the last ``window`` events, if monitoring exists."""
    fn = drift_function()
    if fn is None:
        message = "monitoring has no drift report yet (issue #7): nothing to do"
        get_run_logger().info(message)
        return {"status": "skipped", "reason": message}
    result = call_with_known(fn, settings=get_settings(), window=window)
    return {"status": "done", "result": repr(result)[:500]}


@flow(name=NAME, description=__doc__)
def drift_report(window: int = 5000) -> dict[str, Any]:
    """Drift report of the last ``window`` logged events."""
    return drift(window)
