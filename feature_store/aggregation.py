"""Windowed statistics of feedback events: the rows the feature views are filled with.

Written once, used live (``FeatureWriter`` pushes as feedback arrives) and for backfills and
training sets (``aggregate_rows`` over the event log): the same rows reach the online store and the
offline store.

Why bucketed windows and not River's running statistics: the windows here are *time* windows over
*event* time (a backfill replays yesterday's feedback at yesterday's timestamps; feedback arrives
out of order), and a window's statistics must drop what falls out of it. River's
``stats.RollingQuantile`` windows by count, not time, and ``utils.TimeRolling`` needs revertible
statistics (a quantile is not). So each window is a ring of fixed-width buckets holding additive
sufficient statistics (counts, sums, a log-spaced latency histogram); a window keeps their running
total, adding a bucket as it fills and subtracting it as it expires, so an update is O(1) and a
read O(histogram bins). The same statistics merge across workers by addition. A window's edge is
exact to one bucket width (10 s for 5 min, 1 min for 1 h, 15 min for 24 h); quantiles are exact to
``LATENCY_GAMMA`` (1% relative error), like DDSketch.

Point in time: a row's ``event_timestamp`` is the aggregator's watermark (the newest feedback time
it has seen) and it includes only feedback received at or before it; a decision joined to the
latest row at or before its own time therefore sees no feedback from its future.

Examples
--------
>>> from datetime import datetime, timedelta, UTC
>>> agg = FeedbackAggregator()
>>> t0 = datetime(2025, 1, 1, tzinfo=UTC)
>>> for k, lat in enumerate([100.0, 200.0, 300.0, 400.0]):
...     _ = agg.update(Observation(model="m", task_type="code", tenant="acme",
...         received_at=t0 + timedelta(seconds=k), decided_at=t0, quality=0.8,
...         latency_ms=lat, cost_usd=0.001, error=False))
>>> row = agg.emit()["model_performance"][0]
>>> row["request_count_5m"], row["quality_mean_5m"], abs(row["latency_p50_ms_5m"] / 200 - 1) < 0.01
(4, 0.8, True)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Self

from feature_store import names
from llmopt.event_log import LoggedEvent
from llmopt.tasks import task_type

LATENCY_GAMMA = 1.02
"""Ratio between consecutive latency histogram bins: quantiles within 1% relative error."""
_LOG_GAMMA = math.log(LATENCY_GAMMA)


class MalformedEventError(ValueError):
    """A feedback event the aggregation refuses; the message names the field and the value."""


@dataclass(frozen=True)
class Observation:
    """One feedback event as the aggregation sees it (validated on construction)."""

    model: str
    task_type: str
    tenant: str
    received_at: datetime
    decided_at: datetime
    quality: float
    latency_ms: float | None
    cost_usd: float | None
    error: bool
    willingness_to_pay: float | None = None
    latency_weight: float | None = None
    event_id: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``MalformedEventError`` naming the first bad field (the aggregator checks every
        observation again, so one built around the constructor cannot poison a window)."""
        where = f"event {self.event_id!r}: " if self.event_id else ""
        for name in ("model", "task_type", "tenant"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise MalformedEventError(
                    f"{where}{name} must be a non-empty string, got {value!r}"
                )
        for name in ("received_at", "decided_at"):
            ts = getattr(self, name)
            if not isinstance(ts, datetime) or ts.tzinfo is None:
                raise MalformedEventError(f"{where}{name} must be a timezone-aware datetime")
        q = self.quality
        if not isinstance(q, int | float) or not math.isfinite(q) or not 0 <= q <= 1:
            raise MalformedEventError(f"{where}quality must be a number in [0, 1], got {q!r}")
        for name in ("latency_ms", "cost_usd", "willingness_to_pay", "latency_weight"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int | float) or not math.isfinite(v) or v < 0):
                raise MalformedEventError(f"{where}{name} must be a finite number >= 0, got {v!r}")

    @classmethod
    def from_logged(cls, event: LoggedEvent) -> Observation:
        """The observation of a feedback joined with its decision (``EventLog.iter_events``)."""
        ctx = event.context if isinstance(event.context, Mapping) else {}
        hints = ctx.get("task_hints") or []
        return cls(
            model=event.model,
            task_type=task_type(hints if isinstance(hints, list) else []),
            tenant=event.tenant,
            received_at=event.received_at,
            decided_at=event.decided_at,
            quality=event.quality,
            latency_ms=event.latency_ms,
            cost_usd=event.cost_usd,
            error=event.error_kind is not None,
            willingness_to_pay=ctx.get("willingness_to_pay"),
            latency_weight=ctx.get("latency_weight"),
            event_id=event.decision_id,
        )


def _ts(t: datetime) -> float:
    return t.timestamp()


@dataclass
class _Stats:
    """Additive sufficient statistics of a set of feedback events."""

    n: int = 0
    n_error: int = 0
    n_success: int = 0
    sum_quality: float = 0.0
    n_cost: int = 0
    sum_cost: float = 0.0
    sum_delay_s: float = 0.0
    latency: dict[int, int] = field(default_factory=dict)

    def add(self, obs: Observation, sign: int = 1) -> None:
        self.n += sign
        self.n_error += sign * obs.error
        self.n_success += sign * (not obs.error and obs.quality >= names.SUCCESS_QUALITY)
        self.sum_quality += sign * obs.quality
        if obs.cost_usd is not None:
            self.n_cost += sign
            self.sum_cost += sign * obs.cost_usd
        self.sum_delay_s += sign * max(_ts(obs.received_at) - _ts(obs.decided_at), 0.0)
        if obs.latency_ms is not None:
            b = _latency_bin(obs.latency_ms)
            left = self.latency.get(b, 0) + sign
            if left:
                self.latency[b] = left
            else:
                del self.latency[b]

    def merge(self, other: _Stats, sign: int = 1) -> None:
        self.n += sign * other.n
        self.n_error += sign * other.n_error
        self.n_success += sign * other.n_success
        self.sum_quality += sign * other.sum_quality
        self.n_cost += sign * other.n_cost
        self.sum_cost += sign * other.sum_cost
        self.sum_delay_s += sign * other.sum_delay_s
        for b, c in other.latency.items():
            left = self.latency.get(b, 0) + sign * c
            if left:
                self.latency[b] = left
            else:
                del self.latency[b]

    def quantile(self, q: float) -> float:
        """Latency quantile (ms) from the histogram; 0 when no latency was reported."""
        total = sum(self.latency.values())
        if total == 0:
            return 0.0
        rank = q * (total - 1)
        seen = 0
        for b in sorted(self.latency):
            seen += self.latency[b]
            if seen > rank:
                return _bin_value(b)
        return _bin_value(max(self.latency))  # pragma: no cover - rank < total always


def _latency_bin(latency_ms: float) -> int:
    return -(10**6) if latency_ms <= 0 else round(math.log(latency_ms) / _LOG_GAMMA)


def _bin_value(b: int) -> float:
    return 0.0 if b == -(10**6) else float(LATENCY_GAMMA**b)


class _Ring:
    """One sliding window: buckets by index, and their running total."""

    def __init__(self, window: names.Window) -> None:
        self.window = window
        self.buckets: dict[int, _Stats] = {}
        self.total = _Stats()

    def add(self, obs: Observation, now: float) -> None:
        idx = int(_ts(obs.received_at) // self.window.bucket_seconds)
        if idx <= int(now // self.window.bucket_seconds) - self.window.n_buckets:
            return  # older than the window at the watermark: never counted
        self.buckets.setdefault(idx, _Stats()).add(obs)
        self.total.add(obs)

    def advance(self, now: float) -> _Stats:
        """Expire the buckets that left the window at ``now``; return the window's total."""
        oldest = int(now // self.window.bucket_seconds) - self.window.n_buckets
        for idx in [i for i in self.buckets if i <= oldest]:
            self.total.merge(self.buckets.pop(idx), sign=-1)
        return self.total


def _perf_fields(rings: list[_Ring], now: float) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for ring in rings:
        s, w = ring.advance(now), ring.window.name
        n = s.n
        row[f"quality_mean_{w}"] = s.sum_quality / n if n else 0.0
        row[f"success_rate_{w}"] = s.n_success / n if n else 0.0
        row[f"error_rate_{w}"] = s.n_error / n if n else 0.0
        row[f"latency_p50_ms_{w}"] = s.quantile(0.5)
        row[f"latency_p95_ms_{w}"] = s.quantile(0.95)
        row[f"cost_per_request_usd_{w}"] = s.sum_cost / s.n_cost if s.n_cost else 0.0
        row[f"request_count_{w}"] = n
    return row


@dataclass
class _TenantState:
    ring: _Ring
    spend_by_day: dict[int, float] = field(default_factory=dict)
    latest_at: float = -math.inf
    willingness_to_pay: float = 0.0
    latency_weight: float = 0.0


class FeedbackAggregator:
    """Per-key windowed statistics of feedback events, emitted as feature view rows.

    Parameters
    ----------
    tenant_budgets
        Daily budget in USD per tenant (tenants without one get ``has_budget`` 0).
    deployment
        Deployment key of the system features this aggregator produces.
    """

    def __init__(
        self,
        tenant_budgets: Mapping[str, float] | None = None,
        *,
        deployment: str = names.DEFAULT_DEPLOYMENT,
    ) -> None:
        self.tenant_budgets = dict(tenant_budgets or {})
        self.deployment = deployment
        self._models: dict[str, list[_Ring]] = {}
        self._model_tasks: dict[tuple[str, str], list[_Ring]] = {}
        self._tenants: dict[str, _TenantState] = {}
        self._system = [_Ring(w) for w in names.SYSTEM_WINDOWS]
        self._watermark = -math.inf
        self._dirty: dict[str, set[Any]] = {view: set() for view in names.PUSH_SOURCES}
        self.n_seen = 0

    @property
    def watermark(self) -> datetime | None:
        """The newest feedback time seen (the event time of the rows emitted next)."""
        return (
            None if self._watermark == -math.inf else datetime.fromtimestamp(self._watermark, UTC)
        )

    def update(self, obs: Observation | LoggedEvent) -> Self:
        """Add one feedback event; a malformed one raises ``MalformedEventError`` and changes
        nothing."""
        if isinstance(obs, LoggedEvent):
            obs = Observation.from_logged(obs)
        elif not isinstance(obs, Observation):
            raise MalformedEventError(f"expected an Observation or LoggedEvent, got {obs!r}")
        else:
            obs.validate()
        t = _ts(obs.received_at)
        self._watermark = max(self._watermark, t)
        now = self._watermark
        for ring in self._models.setdefault(obs.model, [_Ring(w) for w in names.PERF_WINDOWS]):
            ring.add(obs, now)
        key = (obs.model, obs.task_type)
        for ring in self._model_tasks.setdefault(key, [_Ring(w) for w in names.PERF_WINDOWS]):
            ring.add(obs, now)
        tenant = self._tenants.get(obs.tenant)
        if tenant is None:
            tenant = self._tenants[obs.tenant] = _TenantState(_Ring(names.TENANT_WINDOW))
        tenant.ring.add(obs, now)
        day = int(t // 86_400)
        tenant.spend_by_day[day] = tenant.spend_by_day.get(day, 0.0) + (obs.cost_usd or 0.0)
        if t >= tenant.latest_at:
            tenant.latest_at = t
            if obs.willingness_to_pay is not None:
                tenant.willingness_to_pay = obs.willingness_to_pay
            if obs.latency_weight is not None:
                tenant.latency_weight = obs.latency_weight
        for ring in self._system:
            ring.add(obs, now)
        self._dirty[names.MODEL_PERF_VIEW].add(obs.model)
        self._dirty[names.MODEL_TASK_PERF_VIEW].add(key)
        self._dirty[names.TENANT_VIEW].add(obs.tenant)
        self._dirty[names.SYSTEM_VIEW].add(self.deployment)
        self.n_seen += 1
        return self

    def emit(self, *, created: datetime | None = None) -> dict[str, list[dict[str, Any]]]:
        """Rows of every key updated since the last emit, at the watermark, per view."""
        if self._watermark == -math.inf:
            return {view: [] for view in names.PUSH_SOURCES}
        now = self._watermark
        stamp = {
            names.TIMESTAMP: datetime.fromtimestamp(now, UTC),
            names.CREATED: created or datetime.now(UTC),
        }
        out: dict[str, list[dict[str, Any]]] = {}
        out[names.MODEL_PERF_VIEW] = [
            {names.MODEL_KEY: m, **_perf_fields(self._models[m], now), **stamp}
            for m in sorted(self._dirty[names.MODEL_PERF_VIEW])
        ]
        out[names.MODEL_TASK_PERF_VIEW] = [
            {
                names.MODEL_KEY: m,
                names.TASK_TYPE_KEY: task,
                **_perf_fields(self._model_tasks[(m, task)], now),
                **stamp,
            }
            for m, task in sorted(self._dirty[names.MODEL_TASK_PERF_VIEW])
        ]
        out[names.TENANT_VIEW] = [
            {names.TENANT_KEY: t, **self._tenant_fields(t, now), **stamp}
            for t in sorted(self._dirty[names.TENANT_VIEW])
        ]
        out[names.SYSTEM_VIEW] = (
            [{names.DEPLOYMENT_KEY: self.deployment, **self._system_fields(now), **stamp}]
            if self._dirty[names.SYSTEM_VIEW]
            else []
        )
        for keys in self._dirty.values():
            keys.clear()
        return out

    def _tenant_fields(self, tenant: str, now: float) -> dict[str, Any]:
        state = self._tenants[tenant]
        hour = state.ring.advance(now)
        today = state.spend_by_day.get(int(now // 86_400), 0.0)
        for day in [d for d in state.spend_by_day if d < int(now // 86_400) - 1]:
            del state.spend_by_day[day]
        budget = self.tenant_budgets.get(tenant)
        return {
            "daily_budget_usd": budget or 0.0,
            "has_budget": float(budget is not None),
            "spend_today_usd": today,
            "budget_left_usd": max(budget - today, 0.0) if budget is not None else 0.0,
            "spend_rate_usd_per_h": hour.sum_cost,
            "request_count_1h": hour.n,
            "willingness_to_pay": state.willingness_to_pay,
            "latency_weight": state.latency_weight,
        }

    def _system_fields(self, now: float) -> dict[str, Any]:
        one, five = (ring.advance(now) for ring in self._system)
        rps_1m = one.n / names.SYSTEM_WINDOWS[0].seconds
        delay = five.sum_delay_s / five.n if five.n else 0.0
        return {
            "load_rps_1m": rps_1m,
            "load_rps_5m": five.n / names.SYSTEM_WINDOWS[1].seconds,
            "feedback_delay_s_5m": delay,
            "queue_depth": rps_1m * delay,
            "error_rate_5m": five.n_error / five.n if five.n else 0.0,
        }


def aggregate_rows(
    events: Iterable[Observation | LoggedEvent],
    *,
    emit_every: timedelta = timedelta(seconds=10),
    aggregator: FeedbackAggregator | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Rows for a stream of events in feedback-time order, one emit per ``emit_every`` of event
    time (a backfill's rows then change as often as a live writer's would)."""
    agg = aggregator or FeedbackAggregator()
    out: dict[str, list[dict[str, Any]]] = {view: [] for view in names.PUSH_SOURCES}
    step = emit_every.total_seconds()
    boundary = -math.inf
    for event in events:
        obs = Observation.from_logged(event) if isinstance(event, LoggedEvent) else event
        t = _ts(obs.received_at)
        if t >= boundary:
            if boundary != -math.inf:
                for view, rows in agg.emit().items():
                    out[view].extend(rows)
            boundary = (t // step + 1) * step
        agg.update(obs)
    for view, rows in agg.emit().items():
        out[view].extend(rows)
    return out
