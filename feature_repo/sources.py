"""Data sources: one push source per stored view, over the profile's offline table.

The aggregation (``feature_store.aggregation``) pushes its rows to the push sources; the batch
source behind each is where the same rows land for training (a parquet file in the embedded
profile, a PostgreSQL table in production) and what ``materialize_incremental`` reads. Which of the
two this module builds follows the ``feature_store.yaml`` being applied (see
``feature_store.profile``), so one set of definitions serves both profiles.
"""

from feast import Field, FileSource, PushSource, RequestSource
from feast.data_source import DataSource
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import (
    PostgreSQLSource,
)
from feast.types import Array, String

from feature_store import names
from feature_store.profile import offline_store_type


def _batch_source(view: str) -> DataSource:
    if offline_store_type() == "postgres":
        return PostgreSQLSource(
            name=f"{view}_source",
            query=f"SELECT * FROM {names.OFFLINE_TABLES[view]}",
            timestamp_field=names.TIMESTAMP,
            created_timestamp_column=names.CREATED,
            description=f"PostgreSQL table {names.OFFLINE_TABLES[view]}.",
        )
    return FileSource(
        name=f"{view}_source",
        path=names.OFFLINE_FILES[view],
        timestamp_field=names.TIMESTAMP,
        created_timestamp_column=names.CREATED,
        description=f"Parquet parts under {names.OFFLINE_FILES[view]}/ (relative to the repo).",
    )


model_performance_source = _batch_source(names.MODEL_PERF_VIEW)
model_task_performance_source = _batch_source(names.MODEL_TASK_PERF_VIEW)
tenant_source = _batch_source(names.TENANT_VIEW)
system_source = _batch_source(names.SYSTEM_VIEW)

model_performance_push_source = PushSource(
    name=names.PUSH_SOURCES[names.MODEL_PERF_VIEW],
    batch_source=model_performance_source,
    description="Windowed performance per model, pushed as feedback arrives.",
)
model_task_performance_push_source = PushSource(
    name=names.PUSH_SOURCES[names.MODEL_TASK_PERF_VIEW],
    batch_source=model_task_performance_source,
    description="Windowed performance per model and task type, pushed as feedback arrives.",
)
tenant_push_source = PushSource(
    name=names.PUSH_SOURCES[names.TENANT_VIEW],
    batch_source=tenant_source,
    description="Tenant budget, spend and trade-off, pushed as feedback arrives.",
)
system_push_source = PushSource(
    name=names.PUSH_SOURCES[names.SYSTEM_VIEW],
    batch_source=system_source,
    description="System load, queue depth and error rate, pushed as feedback arrives.",
)

request_source = RequestSource(
    name="request_source",
    schema=[
        Field(name="prompt", dtype=String, description="Prompt text of the request."),
        Field(name="task_hints", dtype=Array(String), description="Client task labels."),
    ],
    description="What the client sends with a request (never stored by Feast).",
)
