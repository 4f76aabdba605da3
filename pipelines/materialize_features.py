"""Flow ``materialize-features`` (every 10 minutes): refresh the feature store's online store.

Calls the feature store's :func:`feature_store.training.materialize_incremental`: the offline
rows gained since the last run go to the online store of the profile ``LLMOPT_FEATURE_PROFILE``
names.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from llmopt.settings import get_settings

NAME = "materialize-features"


@task(name="materialize", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def materialize() -> dict[str, Any]:
    """Materialize up to now; what the feature store did."""
    from feature_store import training  # noqa: PLC0415 - Feast and pyarrow: only when it runs

    result = training.materialize_incremental(settings=get_settings(), end_date=datetime.now(UTC))
    return {"status": "done", "result": repr(result)[:500]}


@flow(name=NAME, description=__doc__)
def materialize_features() -> dict[str, Any]:
    """Refresh online features from the offline store."""
    return materialize()
