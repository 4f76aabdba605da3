"""Feature views, grouped as the design's catalogue groups them.

- performance per model, and per model x task type, over 5 min, 1 h and 24 h windows;
- tenant features: budget left, spend rate, trade-off preference;
- contextual / system features: load, queue depth, recent error rate;
- request features, computed on demand from the request by ``llmopt.features.request_features``
  (the one implementation the router, the replay and training use).

Field names and descriptions come from ``feature_store.names``, which the aggregation that fills
these views reads too.
"""

import inspect
from datetime import timedelta
from typing import Any

from entities import deployment, model, task_type, tenant
from feast import FeatureView, Field
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.types import Float64, Int64
from sources import (
    model_performance_push_source,
    model_task_performance_push_source,
    request_source,
    system_push_source,
    tenant_push_source,
)

from feature_store import names
from feature_store.request_view import REQUEST_FEATURE_DESCRIPTIONS, request_feature_columns


def _fields(view: str) -> list[Field]:
    return [
        Field(
            name=name,
            dtype=Int64 if name.startswith("request_count") else Float64,
            description=desc,
        )
        for name, desc in names.view_fields(view).items()
    ]


model_performance_fv = FeatureView(
    name=names.MODEL_PERF_VIEW,
    entities=[model],
    ttl=timedelta(days=2),
    schema=_fields(names.MODEL_PERF_VIEW),
    source=model_performance_push_source,
    online=True,
    description="How each model has been doing: quality, success, errors, latency, cost.",
    tags={"group": "performance", "owner": "llmopt"},
)

model_task_performance_fv = FeatureView(
    name=names.MODEL_TASK_PERF_VIEW,
    entities=[model, task_type],
    ttl=timedelta(days=2),
    schema=_fields(names.MODEL_TASK_PERF_VIEW),
    source=model_task_performance_push_source,
    online=True,
    description="How each model has been doing on each task type (same metrics and windows).",
    tags={"group": "performance", "owner": "llmopt"},
)

tenant_fv = FeatureView(
    name=names.TENANT_VIEW,
    entities=[tenant],
    ttl=timedelta(days=2),
    schema=_fields(names.TENANT_VIEW),
    source=tenant_push_source,
    online=True,
    description="Each tenant's budget left, spend rate and cost/quality trade-off.",
    tags={"group": "tenant", "owner": "llmopt"},
)

system_fv = FeatureView(
    name=names.SYSTEM_VIEW,
    entities=[deployment],
    ttl=timedelta(hours=1),
    schema=_fields(names.SYSTEM_VIEW),
    source=system_push_source,
    online=True,
    description="Load, queue depth and recent error rate of a serving fleet.",
    tags={"group": "system", "owner": "llmopt"},
)


class _DescribedOnDemandFeatureView(OnDemandFeatureView):  # type: ignore[misc]
    """An on-demand view whose declared fields may carry descriptions.

    Feast 0.67 checks each declared field against the fields it infers by running the function,
    with ``Field.__eq__``, which also compares descriptions; inferred fields have none, so a
    described field fails ``feast apply`` (SpecifiedFeaturesNotPresentError). Name and type are
    what the check is for.
    """

    def _feature_exists_in_inferred(self, specified: Field, inferred: list[Field]) -> bool:
        return any(f.name == specified.name and f.dtype == specified.dtype for f in inferred)


def _request_features(inputs: dict[str, Any]) -> dict[str, Any]:
    """Features of each request row (one computation per distinct prompt and hints)."""
    from feature_store.request_view import transform  # noqa: PLC0415 - runs under feast serve

    return transform(inputs)


_request_features.__module__ = "__main__"  # as Feast's decorator does, for dill to serialise it

request_features = _DescribedOnDemandFeatureView(
    name=names.REQUEST_VIEW,
    sources=[request_source],
    schema=[
        Field(name=name, dtype=Float64, description=REQUEST_FEATURE_DESCRIPTIONS[name])
        for name in request_feature_columns()
    ],
    udf=_request_features,
    udf_string=inspect.getsource(_request_features),
    mode="python",
    description="Request features computed by llmopt.features.request_features (one code path).",
    tags={"group": "request", "owner": "llmopt"},
)
