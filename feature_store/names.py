"""The feature catalogue: every entity, window, view and field name, with its description.

One place that the Feast definitions (``feature_repo/``), the aggregation that fills them and the
serving-side reader all read, so a name or a window is written once. Pure Python: importing it
costs nothing (no Feast), which matters because ``feast apply`` imports it too.

Examples
--------
>>> perf_field_names()[:3]
['quality_mean_5m', 'success_rate_5m', 'error_rate_5m']
"""

from __future__ import annotations

from dataclasses import dataclass

PROJECT = "llmopt"

# Join keys of the entities (one column each in every push row and entity row).
MODEL_KEY = "model"
TASK_TYPE_KEY = "task_type"
TENANT_KEY = "tenant"
DEPLOYMENT_KEY = "deployment"
DEFAULT_DEPLOYMENT = "default"
"""The deployment (serving fleet) whose system features a single-fleet setup reads and writes."""

TIMESTAMP = "event_timestamp"
"""Event time of a feature row: the time of the newest feedback it includes (see aggregation)."""
CREATED = "created"
"""Processing time of a feature row (Feast's tie-breaker between rows of equal event time)."""


@dataclass(frozen=True)
class Window:
    """A sliding time window kept as a ring of fixed-width buckets."""

    name: str
    seconds: int
    bucket_seconds: int

    @property
    def n_buckets(self) -> int:
        """Buckets in the ring."""
        return self.seconds // self.bucket_seconds


PERF_WINDOWS = (
    Window("5m", 300, 10),
    Window("1h", 3600, 60),
    Window("24h", 86_400, 900),
)
"""Windows of the performance features; a window's edge is exact to one bucket."""

SYSTEM_WINDOWS = (Window("1m", 60, 5), Window("5m", 300, 10))
TENANT_WINDOW = Window("1h", 3600, 60)

PERF_METRICS: dict[str, str] = {
    "quality_mean": "mean normalised quality (0..1; a failed call counts 0) of answered requests",
    "success_rate": "share of requests that returned without error and with quality >= 0.5",
    "error_rate": "share of requests whose call failed (timeout, rate limit, server error, ...)",
    "latency_p50_ms": "median latency in ms (log-bucket histogram, within 1% relative error)",
    "latency_p95_ms": "95th percentile latency in ms (log-bucket histogram, within 1%)",
    "cost_per_request_usd": "mean cost in USD per request",
    "request_count": "number of requests with feedback",
}
"""Performance metrics, each computed over every window of ``PERF_WINDOWS``."""

SUCCESS_QUALITY = 0.5
"""Quality at or above which an answered request counts as a success."""


def perf_field_names() -> list[str]:
    """``<metric>_<window>`` for every metric and window, window-major."""
    return [f"{m}_{w.name}" for w in PERF_WINDOWS for m in PERF_METRICS]


def perf_fields() -> dict[str, str]:
    """Performance field name -> description."""
    return {
        f"{m}_{w.name}": f"{desc}, over the last {w.name}"
        for w in PERF_WINDOWS
        for m, desc in PERF_METRICS.items()
    }


TENANT_FIELDS: dict[str, str] = {
    "daily_budget_usd": "the tenant's daily budget in USD (0 when it has none)",
    "has_budget": "1 if the tenant has a daily budget, else 0",
    "spend_today_usd": "USD spent since 00:00 UTC of the row's day",
    "budget_left_usd": "daily budget minus today's spend in USD (0 when it has no budget)",
    "spend_rate_usd_per_h": "USD spent over the last hour",
    "request_count_1h": "requests with feedback over the last hour",
    "willingness_to_pay": "USD per unit of quality of the tenant's latest request (trade-off)",
    "latency_weight": "quality units per second of latency of the tenant's latest request",
}

SYSTEM_FIELDS: dict[str, str] = {
    "load_rps_1m": "feedback events per second over the last minute (all models)",
    "load_rps_5m": "feedback events per second over the last 5 minutes (all models)",
    "feedback_delay_s_5m": "mean seconds from decision to feedback over the last 5 minutes",
    "queue_depth": "requests in flight, by Little's law: load_rps_1m x feedback_delay_s_5m",
    "error_rate_5m": "share of failed calls over the last 5 minutes (all models)",
}

# Feature view names (the Feast objects live in feature_repo/views.py).
MODEL_PERF_VIEW = "model_performance"
MODEL_TASK_PERF_VIEW = "model_task_performance"
TENANT_VIEW = "tenant_features"
SYSTEM_VIEW = "system_features"
REQUEST_VIEW = "request_features"
ROUTER_SERVICE = "router_v2"  # v2: only what the router uses, model-keyed views only
ROUTER_V1_SERVICE = "router_v1"
TRAINING_SERVICE = "training_v1"
REQUEST_SERVICE = "request_v2"  # v2: + the prompt embedding (emb_0 .. emb_31)

ROUTER_FEATURES: dict[str, tuple[str, ...]] = {
    MODEL_PERF_VIEW: ("error_rate_5m", "latency_p95_ms_5m", "request_count_1h"),
    MODEL_TASK_PERF_VIEW: ("quality_mean_24h", "request_count_24h"),
}
"""What the router reads per decision, for every candidate model (``router_v2``): the fresh
signals a learned policy lacks, each used by ``serving/live_features.py``. Over the last 5 minutes
the error rate and p95 latency (exclusions and penalties), backed by the request count over the
last hour; the quality on the request's task type over the last 24 hours and its request count
(a cold arm's prior). Every view is keyed by the model (and the task type), so an entity row is
``(model, task_type)``: a tenant or a fleet without a row of its own costs the models nothing.
Each value read costs; the full catalogue is in ``training_v1``."""

ROUTER_V1_FEATURES: dict[str, tuple[str, ...]] = {
    MODEL_PERF_VIEW: ("error_rate_5m", "latency_p95_ms_5m", "quality_mean_1h", "request_count_1h"),
    MODEL_TASK_PERF_VIEW: ("quality_mean_24h", "request_count_24h"),
    TENANT_VIEW: ("budget_left_usd", "spend_rate_usd_per_h", "willingness_to_pay"),
    SYSTEM_VIEW: ("queue_depth", "error_rate_5m"),
}
"""Superseded by ``router_v2`` (issue 16): the router never used six of these eleven features,
and the tenant and system ones made every model look ``defaulted`` for a tenant or fleet without
a row. Still defined in ``feature_repo/services.py``, so that routers of the previous release
(which read it by name from the shared registry) keep working through a rolling deployment;
nothing in this repository reads it. Remove it once no such router runs."""

PUSH_SOURCES = {
    MODEL_PERF_VIEW: "model_performance_push_source",
    MODEL_TASK_PERF_VIEW: "model_task_performance_push_source",
    TENANT_VIEW: "tenant_push_source",
    SYSTEM_VIEW: "system_push_source",
}
"""Push source of every stored view (the aggregation pushes one batch to each)."""

VIEW_KEYS: dict[str, tuple[str, ...]] = {
    MODEL_PERF_VIEW: (MODEL_KEY,),
    MODEL_TASK_PERF_VIEW: (MODEL_KEY, TASK_TYPE_KEY),
    TENANT_VIEW: (TENANT_KEY,),
    SYSTEM_VIEW: (DEPLOYMENT_KEY,),
}


def view_fields(view: str) -> dict[str, str]:
    """Field name -> description of a stored view."""
    if view in (MODEL_PERF_VIEW, MODEL_TASK_PERF_VIEW):
        return perf_fields()
    return {TENANT_VIEW: TENANT_FIELDS, SYSTEM_VIEW: SYSTEM_FIELDS}[view]


def feature_ref(view: str, field: str) -> str:
    """Feast's full name of ``field`` of ``view`` (``<view>__<field>``), the key of every read.

    A stored view's field is checked against this catalogue.

    >>> feature_ref(MODEL_PERF_VIEW, "error_rate_5m")
    'model_performance__error_rate_5m'
    >>> feature_ref(MODEL_PERF_VIEW, "no_such_field")
    Traceback (most recent call last):
    ...
    ValueError: view 'model_performance' has no field 'no_such_field'
    """
    if view in VIEW_KEYS and field not in view_fields(view):
        raise ValueError(f"view {view!r} has no field {field!r}")
    return f"{view}__{field}"


def view_columns(view: str) -> list[str]:
    """Columns of a view's rows in order: join keys, fields, event and processing time."""
    return [*VIEW_KEYS[view], *view_fields(view), TIMESTAMP, CREATED]


OFFLINE_TABLES = {view: f"llmopt_{view}" for view in PUSH_SOURCES}
"""PostgreSQL tables of the production profile's offline store."""
OFFLINE_FILES = {view: f"data/{view}" for view in PUSH_SOURCES}
"""Folders of parquet parts (relative to the repo): the embedded profile's offline store."""
