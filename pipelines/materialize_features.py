"""Flow ``materialize-features`` (every 10 minutes): refresh the feature store's online store.

Calls the feature store's ``materialize_incremental`` (package ``feature_store``, issue #4) when
it is installed; otherwise logs that the feature store is not configured and returns.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from llmopt.settings import get_settings
from pipelines.integrations import call_with_known, materialize_function

NAME = "materialize-features"


@task(name="materialize", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def materialize() -> dict[str, Any]:
    """Materialize up to now, or report that there is no feature store."""
    fn = materialize_function()
    if fn is None:
        message = "feature store not configured (package feature_store not installed): skipped"
        get_run_logger().warning(message)
        return {"status": "skipped", "reason": message}
    result = call_with_known(fn, settings=get_settings(), end_date=datetime.now(UTC))
    return {"status": "done", "result": repr(result)[:500]}


@flow(name=NAME, description=__doc__)
def materialize_features() -> dict[str, Any]:
    """Refresh online features from the offline store."""
    return materialize()
