"""Online features for the decision path: Feast's router features, cached, within a budget.

:class:`LiveFeatures` sits between the router and :class:`feature_store.reader.OnlineFeatureReader`:

- ``get(models, tenant=, task_type=)`` answers from a cache keyed by ``(tenant, task_type)``.
  An entry younger than ``ttl_s`` is served as is; an older one is served too (stale while
  revalidating) and a background thread reads the store again for that key, with a generous
  budget (``refresh_budget_ms``). Only a key never seen is read on the decision path, within the
  reader's budget (3 ms). So a decision never waits for the store after the first one of a
  tenant and task type, and a served value is at most ``ttl_s`` + one refresh old while the
  store answers. A slow or failed store gives the reader's last values or defaults, flagged
  ``degraded`` and cached like any answer: decisions say so until a refresh succeeds. A key's
  first read that came back degraded is cached already expired, so the next decision starts
  that refresh at once.
- ``follow_log_once()`` (called by :mod:`serving.feature_push`'s child process, or the runtime's
  thread with ``LLMOPT_SERVING_PUSH_PROCESS=false``) reads the feedback stored in
  the event log since the last call, aggregates it with :class:`feature_store.writer.FeatureWriter`
  and pushes the rows online (and offline). It reads the shared log rather than this worker's own
  feedback, so several workers push identical rows (the online store keeps the latest per key) and
  none of them publishes a partial view. In the production profile the pipelines' materialisation
  flow does the same; set ``LLMOPT_SERVING_PUSH_FEATURES=false`` to leave it to them.

Opening the store (importing Feast, ``feast apply`` of the embedded repo) takes seconds, so
:meth:`LiveFeatures.open` runs on a background thread: until it is done, decisions go on with
request features only and say so (``FeatureStatus.source == "starting"``).

Example
-------
>>> class Reader:  # any object with ``read`` works (the real one wraps Feast)
...     calls = 0
...     def read(self, models, *, tenant, task_type):
...         from feature_store.reader import RouterFeatures
...         Reader.calls += 1
...         return RouterFeatures(values={m: {"x": 1.0} for m in models})
>>> live = LiveFeatures(Reader(), ttl_s=60)
>>> live.get(["a", "b"], tenant="acme", task_type="general").values["a"]
{'x': 1.0}
>>> _ = live.get(["a", "b"], tenant="acme", task_type="general")
>>> Reader.calls, live.hits, live.misses
(1, 1, 1)
>>> live.close()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from feature_store import names
from feature_store.reader import RouterFeatures

if TYPE_CHECKING:
    from llmopt.event_log import EventLog
    from llmopt.settings import Settings

log = logging.getLogger("llmopt.serving")

ERROR_RATE = names.feature_ref(names.MODEL_PERF_VIEW, "error_rate_5m")
LATENCY_P95 = names.feature_ref(names.MODEL_PERF_VIEW, "latency_p95_ms_5m")
REQUESTS_1H = names.feature_ref(names.MODEL_PERF_VIEW, "request_count_1h")
TASK_QUALITY_24H = names.feature_ref(names.MODEL_TASK_PERF_VIEW, "quality_mean_24h")
TASK_REQUESTS_24H = names.feature_ref(names.MODEL_TASK_PERF_VIEW, "request_count_24h")
MODEL_LIVE = (ERROR_RATE, LATENCY_P95, REQUESTS_1H)
"""The per-model features exclusions and penalties use (Feast's ``model_performance`` view)."""
TASK_LIVE = (TASK_QUALITY_24H, TASK_REQUESTS_24H)
"""The per-model-and-task features a cold arm's prior uses (``model_task_performance``)."""
LIVE_NOTE = "live features used: "
"""How a decision's note naming the live features it used begins."""
LIVE_PRIOR_WEIGHT = 2.0
"""Weight, in observations, of the fleet's per-task quality as a cold arm's prior."""

LIVE_ERROR_EXCLUDE = 0.5
"""A model whose fleet-wide error rate over the last 5 minutes reaches this is left out."""
LIVE_MIN_REQUESTS = 5
"""Feedback a model needs in the last hour before its live statistics exclude it."""


class FeatureReader(Protocol):
    """What :class:`LiveFeatures` reads through (``OnlineFeatureReader`` or a test double)."""

    def read(
        self,
        models: Sequence[str],
        *,
        tenant: str,
        task_type: str,
        budget_ms: float | None = None,
    ) -> RouterFeatures: ...


@dataclass(frozen=True)
class Cached:
    """One cached read and when it was made (monotonic seconds)."""

    features: RouterFeatures
    at: float


class LiveFeatures:
    """Cached online features per ``(tenant, task_type)``; see the module docstring.

    Parameters
    ----------
    reader
        The online reader (with its latency budget).
    ttl_s
        Age at which a cached read is read again.
    writer
        A ``FeatureWriter`` that :meth:`follow_log_once` feeds (None: no pushes).
    event_log
        The log :meth:`follow_log_once` reads.
    refresh_budget_ms
        Budget of a background refresh.
    clock
        Monotonic time source.
    """

    def __init__(
        self,
        reader: FeatureReader,
        *,
        ttl_s: float = 1.0,
        writer: Any = None,
        event_log: EventLog | None = None,
        refresh_budget_ms: float = 1000.0,
        clock: Any = time.monotonic,
    ) -> None:
        self.reader = reader
        self.ttl_s = ttl_s
        self.refresh_budget_ms = refresh_budget_ms
        self._refresher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feature-refresh")
        self._refreshing: set[tuple[str, str]] = set()
        self.writer = writer
        self.event_log = event_log
        self._clock = clock
        self._cache: dict[tuple[str, str], Cached] = {}
        self.hits = 0
        self.misses = 0
        self.degraded_reads = 0
        self.pushed_events = 0
        self._cursor = 0

    def get(self, models: Sequence[str], *, tenant: str, task_type: str) -> RouterFeatures:
        """Features of ``models`` for one request (cached for ``ttl_s``); never raises.

        Cached per (tenant, task type), or per task type alone once the reader says its reads
        do not depend on the tenant (``tenant_keyed`` False, as for ``router_v2``): a new
        tenant's first decision then waits for no store read.
        """
        key = (tenant if getattr(self.reader, "tenant_keyed", True) else "", task_type)
        now = self._clock()
        entry = self._cache.get(key)
        if entry is not None and all(m in entry.features.values for m in models):
            self.hits += 1
            if now - entry.at >= self.ttl_s:
                self._refresh(key, models)
            return entry.features
        self.misses += 1
        features = self.reader.read(models, tenant=tenant, task_type=task_type)
        if features.degraded:
            self.degraded_reads += 1
        if len(self._cache) > 10_000:  # tenants x task types: bounded memory
            self._cache.clear()
        # A first read the store answered late (or not) is kept already expired: the next
        # decision refreshes it in the background, with the refresh's budget, instead of
        # serving the fallback for a whole ttl (the demo's ~33 requests a second did).
        self._cache[key] = Cached(features, now - self.ttl_s if features.degraded else now)
        return features

    def _refresh(self, key: tuple[str, str], models: Sequence[str]) -> None:
        if key in self._refreshing:
            return
        self._refreshing.add(key)
        models = list(models)

        def run() -> None:
            try:
                features = self.reader.read(
                    models, tenant=key[0], task_type=key[1], budget_ms=self.refresh_budget_ms
                )
                if features.degraded:
                    self.degraded_reads += 1
                self._cache[key] = Cached(features, self._clock())
            finally:
                self._refreshing.discard(key)

        try:
            self._refresher.submit(run)
        except RuntimeError:  # closed
            self._refreshing.discard(key)

    def settle(self, timeout_s: float = 5.0) -> bool:
        """Wait until no background refresh is running (tests, shutdown); True if none is."""
        deadline = time.monotonic() + timeout_s
        while self._refreshing and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self._refreshing

    @property
    def hit_rate(self) -> float:
        """Share of reads answered from the cache."""
        total = self.hits + self.misses
        return self.hits / total if total else 1.0

    @property
    def cursor(self) -> int:
        """The last feedback id pushed (or skipped as already in the store)."""
        return self._cursor

    def pushed_by_child(self, pushed: int, cursor: int) -> None:
        """A push made for this store by :mod:`serving.feature_push`'s child process."""
        self.pushed_events += pushed
        self._cursor = cursor

    def start_at(self, after_feedback_id: int) -> None:
        """Push only feedback stored after this id (earlier feedback is already in the store)."""
        self._cursor = after_feedback_id

    def follow_log_once(self, *, limit: int = 20_000) -> int:
        """Push the feedback stored since the last call to the online store; events pushed."""
        if self.writer is None or self.event_log is None:
            return 0
        events = self.event_log.feedback_since(self._cursor, limit=limit)
        if not events:
            return 0
        result = self.writer.add(events)
        self.writer.flush()
        self._cursor = events[-1].feedback_id
        self.pushed_events += result.accepted
        return int(result.accepted)

    @classmethod
    def open(cls, settings: Settings, event_log: EventLog | None) -> LiveFeatures:
        """Open the store that ``settings.serving_features`` names.

        ``embedded``: a copy of the repo under ``settings.home``, applied here (self-contained).
        ``production``: ``feature_repo/production`` as deployed (``make up`` or the deployment
        pipeline applies it; serving never changes a shared registry).
        """
        from feature_store import store as fs_store  # noqa: PLC0415 - Feast takes seconds
        from feature_store.reader import OnlineFeatureReader  # noqa: PLC0415

        if settings.serving_features == "production":
            store = fs_store.open_store("production")
        else:
            repo = fs_store.copy_repo(Path(settings.ensure_home()) / "feature_repo")
            store = fs_store.apply_repo("embedded", repo)
        reader = OnlineFeatureReader(store, budget_ms=10_000.0)
        # The first read resolves the feature service and opens the online store's connection
        # (hundreds of ms): do it here, off the decision path, then hold reads to the budget.
        reader.read(["warm-up"], tenant="warm-up", task_type="general")
        reader.budget_ms = settings.serving_features_budget_ms
        writer = (
            cls.push_writer(store, settings.serving_features_push_s)
            if settings.serving_push_features
            else None
        )
        return cls(
            reader, ttl_s=settings.serving_features_ttl_s, writer=writer, event_log=event_log
        )

    @staticmethod
    def push_writer(store: Any, interval_s: float) -> Any:
        """The ``FeatureWriter`` serving pushes with (in-process or in
        :mod:`serving.feature_push`'s child): online only (the offline store is the pipelines'
        job) and straight into the online table (Feast's push re-reads its registry per call,
        ~100 ms of held GIL per flush)."""
        from feature_store.writer import FeatureWriter  # noqa: PLC0415 - Feast takes seconds

        return FeatureWriter(
            store, max_batch=5000, max_delay_s=interval_s, offline=False, direct=True
        )

    def close(self) -> None:
        """Release the refresh thread and the reader's worker thread."""
        self._refresher.shutdown(wait=False, cancel_futures=True)
        close = getattr(self.reader, "close", None)
        if close is not None:
            close()


def live_exclusions(
    arms: Sequence[str], features: RouterFeatures, max_latency_ms: float | None
) -> dict[str, str]:
    """Arms the fleet's live statistics rule out, with the reason (kept with ``features`` per
    offer and cap, and shared by the decisions that read them: not to be changed).

    A model is left out when, over the last 5 minutes, its share of failed calls reached
    :data:`LIVE_ERROR_EXCLUDE`, or its observed 95th-percentile latency exceeds the request's
    ``max_latency_ms``, provided it had :data:`LIVE_MIN_REQUESTS` feedback in the last hour.
    Values that are defaults (unknown model, store down) never exclude anything; a default in
    another view (no row for this task type) does not stop the model's own values from doing so.

    >>> f = RouterFeatures(values={
    ...     "a": {ERROR_RATE: 0.9, LATENCY_P95: 100.0, REQUESTS_1H: 50.0},
    ...     "b": {ERROR_RATE: 0.0, LATENCY_P95: 900.0, REQUESTS_1H: 50.0},
    ...     "c": {ERROR_RATE: 0.0, LATENCY_P95: 100.0, REQUESTS_1H: 50.0}})
    >>> sorted(live_exclusions(["a", "b", "c"], f, max_latency_ms=500))
    ['a', 'b']
    """
    key = ("exclusions", tuple(arms), max_latency_ms)
    memo = features.memo
    hit = memo.get(key)
    if hit is not None:
        return hit  # type: ignore[no-any-return]
    out: dict[str, str] = {}
    for arm in arms:
        if arm not in features.stale and not features.known(arm, MODEL_LIVE):
            continue
        v = features.values.get(arm)
        if not v or v.get(REQUESTS_1H, 0.0) < LIVE_MIN_REQUESTS:
            continue
        err = v.get(ERROR_RATE, 0.0)
        p95 = v.get(LATENCY_P95, 0.0)
        if err >= LIVE_ERROR_EXCLUDE:
            out[arm] = f"{arm} excluded: fleet-wide error rate {err:.0%} over the last 5 minutes"
        elif max_latency_ms is not None and p95 > max_latency_ms:
            out[arm] = (
                f"{arm} excluded: observed p95 latency {p95:.0f} ms over the last 5 minutes > "
                "max_latency_ms"
            )
    _remember(memo, key, out)
    return out


MEMO_SIZE = 256
"""Entries a :class:`RouterFeatures` keeps of what was derived from it (cleared when full:
offers and latency caps vary per request, the features are replaced within seconds)."""


def _remember(memo: dict[Any, Any], key: Any, value: Any) -> None:
    if len(memo) >= MEMO_SIZE:
        memo.clear()
    memo[key] = value


def _fresh_values(features: RouterFeatures) -> dict[str, dict[str, float]]:
    """Every model's :func:`_fresh` values, of those it has (computed once per features)."""
    fresh = features.memo.get("fresh")
    if fresh is None:
        fresh = {}
        for arm in features.values:
            v = _fresh(arm, features)
            if v is not None:
                fresh[arm] = v
        features.memo["fresh"] = fresh
    return fresh


def _task_priors(features: RouterFeatures) -> dict[str, float]:
    """Each model's live prior quality on the task type, where :func:`live_priors` may use it
    (computed once per features; the policy's own means are checked per call)."""
    priors = features.memo.get("priors")
    if priors is None:
        priors = {}
        if not features.degraded:
            for arm, v in features.values.items():
                if arm in features.stale or not features.known(arm, TASK_LIVE):
                    continue
                q = v.get(TASK_QUALITY_24H)
                if q is None or v.get(TASK_REQUESTS_24H, 0.0) < LIVE_MIN_REQUESTS:
                    continue
                if 0.0 <= q <= 1.0:
                    priors[arm] = float(q)
        features.memo["priors"] = priors
    return priors


def open_in_background(
    settings: Settings, event_log: EventLog | None, on_ready: Any
) -> threading.Thread:
    """Open the store on a daemon thread and hand the :class:`LiveFeatures` to ``on_ready``."""

    def run() -> None:
        try:
            on_ready(LiveFeatures.open(settings, event_log))
        except Exception:  # serving goes on with request features only
            log.exception("feature store unavailable: deciding with request features only")
            on_ready(None)

    t = threading.Thread(target=run, name="feature-store-open", daemon=True)
    t.start()
    return t


def _fresh(arm: str, features: RouterFeatures) -> dict[str, float] | None:
    """The arm's live values if they can be trusted now: read (its :data:`MODEL_LIVE` values are
    not defaults, not stale), and backed by :data:`LIVE_MIN_REQUESTS` feedback in the last hour."""
    if features.degraded or arm in features.stale or not features.known(arm, MODEL_LIVE):
        return None
    v = features.values.get(arm)
    if not v or v.get(REQUESTS_1H, 0.0) < LIVE_MIN_REQUESTS:
        return None
    return v


def live_penalties(
    arms: Sequence[str],
    features: RouterFeatures,
    *,
    latency_weight: float,
    catalog_latency_ms: Callable[[str], float | None],
    expected_quality: Callable[[str], float | None],
) -> tuple[dict[str, float], str | None]:
    """What the fleet's fresh live statistics add to each arm's penalty (quality units), and a
    note naming the features used.

    - **Risk**: a call fails with the model's error rate over the last 5 minutes, and a failed
      call loses the answer: ``error_rate x expected quality`` (the policy's mean for the arm).
    - **Latency**: with a latency weight, the observed p95 latency over the last 5 minutes
      replaces the catalog's expected latency in the latency term.

    Values that are not fresh (defaults, stale, too few requests, a degraded read) change
    nothing: the catalog's figures and the policy alone decide.

    >>> f = RouterFeatures(values={
    ...     "a": {ERROR_RATE: 0.2, LATENCY_P95: 3000.0, REQUESTS_1H: 50.0},
    ...     "b": {ERROR_RATE: 0.0, LATENCY_P95: 900.0, REQUESTS_1H: 2.0}})
    >>> pen, note = live_penalties(["a", "b"], f, latency_weight=0.1,
    ...     catalog_latency_ms=lambda m: 1000.0, expected_quality=lambda m: 0.8)
    >>> {m: round(x, 3) for m, x in pen.items()}, note
    ({'a': 0.36}, 'live features used: a error rate 20%, p95 3000 ms (catalog 1000)')
    """
    out: dict[str, float] = {}
    used: list[str] = []
    fresh = _fresh_values(features)
    if not fresh:
        return out, None
    for arm in arms:
        v = fresh.get(arm)
        if v is None:
            continue
        delta, parts = 0.0, []
        err = v.get(ERROR_RATE, 0.0)
        if err > 0:
            q = expected_quality(arm)
            if q is not None and q > 0:
                delta += err * q
                parts.append(f"error rate {err:.0%}")
        p95 = v.get(LATENCY_P95, 0.0)
        if latency_weight > 0 and p95 > 0:
            base = catalog_latency_ms(arm) or 0.0
            delta += latency_weight * (p95 - base) / 1000.0
            parts.append(f"p95 {p95:.0f} ms (catalog {base:.0f})")
        if parts:
            out[arm] = delta
            used.append(f"{arm} {', '.join(parts)}")
    return out, (LIVE_NOTE + "; ".join(used)) if used else None


def recent_risk(
    arms: Sequence[str],
    error_rate: Callable[[str], float | None],
    features: RouterFeatures | None,
    *,
    expected_quality: Callable[[str], float | None],
) -> tuple[dict[str, float], list[str]]:
    """The risk term from this worker's own recent calls (the circuit breaker's window), where
    it says more than the fleet's 5-minute error rate: ``(recent - fleet) x expected quality``
    (the fleet's rate, when fresh, is already in :func:`live_penalties`). A model that starts
    failing one call in five is penalised from its next decisions, not after the next feature
    push and a 5-minute window, and long before its breaker opens. The note's parts.

    >>> pen, parts = recent_risk(["a", "b"], {"a": 0.2, "b": 0.0}.get, None,
    ...     expected_quality=lambda m: 0.8)
    >>> {m: round(x, 3) for m, x in pen.items()}, parts
    ({'a': 0.16}, ['a recent error rate 20%'])
    """
    out: dict[str, float] = {}
    parts: list[str] = []
    for arm in arms:
        rate = error_rate(arm)
        if not rate:
            continue
        fresh = _fresh_values(features).get(arm) if features is not None else None
        fleet = fresh.get(ERROR_RATE, 0.0) if fresh is not None else 0.0
        q = expected_quality(arm)
        if rate > fleet and q is not None and q > 0:
            out[arm] = (rate - fleet) * q
            parts.append(f"{arm} recent error rate {rate:.0%}")
    return out, parts


def live_priors(
    arms: Sequence[str],
    features: RouterFeatures,
    *,
    arm_mean: Callable[[str], float | None],
) -> dict[str, float]:
    """Prior quality of the arms the policy knows nothing about, from the fleet's live
    statistics: the model's mean quality on this task type over the last 24 hours (Feast's
    ``model_task_performance`` view), when read (its :data:`TASK_LIVE` values are not defaults,
    not stale, not degraded) and
    backed by :data:`LIVE_MIN_REQUESTS` feedback. An arm with a learned mean (or a catalog
    prior) gets none: its own evidence speaks.

    >>> f = RouterFeatures(values={
    ...     "new": {TASK_QUALITY_24H: 0.72, TASK_REQUESTS_24H: 40.0},
    ...     "thin": {TASK_QUALITY_24H: 0.9, TASK_REQUESTS_24H: 2.0},
    ...     "known": {TASK_QUALITY_24H: 0.5, TASK_REQUESTS_24H: 400.0}})
    >>> live_priors(["new", "thin", "known"], f,
    ...     arm_mean=lambda m: 0.6 if m == "known" else None)
    {'new': 0.72}
    """
    priors = _task_priors(features)
    if not priors:
        return {}
    return {arm: q for arm in arms if (q := priors.get(arm)) is not None and arm_mean(arm) is None}
