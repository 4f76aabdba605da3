"""The service's Prometheus metrics, in a registry of their own (served at ``GET /metrics``).

Created on first use, never at import. The serving code reports through the small ``observe_*`` /
``sync_*`` / ``set_*`` methods of :class:`ServingMetrics` (one line per call site); gauges that
mirror state (circuit breakers, traffic mode, feature store, lineup) are refreshed by hooks the
service registers, when the metrics are scraped. ``infra/prometheus/alerts.yml`` and
``infra/grafana/llmopt-dashboard.json`` are written over exactly these names (a test checks it).

The design's metrics (all prefixed ``llmopt_``):

=====================================================  ==========================================
``inference_latency_seconds`` (histogram)              time to decide one request in the service
                                                       (policy, guards, features, event-log write)
``predictions_total{algorithm,result}``                decisions: ``served``, ``fallback`` (the
                                                       static default answered), ``refused``
                                                       (402: budget), ``error`` (503)
``reward_total{algorithm,sign}``                       reward accumulated: ``gain`` adds positive
                                                       rewards, ``loss`` the size of negative ones
                                                       (a counter cannot go down; net = gain - loss)
``reward_observations_total{algorithm}``               rewards counted (stored feedback)
``estimated_regret_total{algorithm}``                  see :class:`RegretEstimator`
``exploration_rate``                                   see :class:`ExplorationWindow`
``drift_detections_total{model,stream,detector}``      drift detections (monitoring's detectors)
``drift_unrecovered{model,stream}``                    1 from a detection until the reward has
                                                       recovered (:class:`RecoveryTracker`)
``feature_cache_hits_total`` / ``..._misses_total``    online-feature cache (hit rate = h / (h + m))
``feature_store_degraded_reads_total``                 store reads that gave stale values/defaults
``feature_store_up{profile}``                          1 open and answering, 0 down or not open yet
``hot_swap_duration_seconds{trigger}`` (histogram)     reload: check aliases, load, swap
``training_examples_total{source}``                    examples the serving policies learned
``training_lag_seconds``                               seconds since this worker last caught up
                                                       with the shared event log (0 when it learns
                                                       all feedback itself: one worker)
``model_available{role}``                              1 while a learned policy serves the role
``requests_total{endpoint}`` / ``errors_total{...}``   the error-rate alert's denominator and
                                                       numerator (``decide``, ``feedback``)
=====================================================  ==========================================

Also exposed: ``decisions_total{served_by,model}``, ``feedback_total{status}``,
``refusals_total{endpoint,status}``, ``model_swaps_total{role}`` (``role``: the swap's trigger),
``circuit_open{model}``, ``shadow_agreement``, ``canary_rollbacks``. The former
``llmopt_decide_seconds`` is now ``llmopt_inference_latency_seconds`` (the attribute
``decide_seconds`` still names it).

One registry per worker process: with several BentoML workers behind one port each scrape would
reach one of them at random, which is why the service runs one worker per port.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from functools import lru_cache
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from llmopt.schemas import Decision

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.0125,
    0.015,
    0.02,
    0.03,
    0.05,
    0.1,
    0.25,
    1.0,
)
"""Seconds; fine between 0.5 and 50 ms, with edges at the alerts' 10 and 15 ms."""
SWAP_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
UNKNOWN = "unknown"
"""Algorithm label of feedback whose decision this worker no longer remembers."""


class FeatureCacheStats(Protocol):
    """What :meth:`ServingMetrics.sync_features` reads (``serving.live_features.LiveFeatures``)."""

    hits: int
    misses: int
    degraded_reads: int


class ExplorationWindow:
    """Share of the last ``size`` decisions that explored (did not take the greedy model).

    A decision explored when its explanation says so (``Explanation.explored``: the chosen
    model's expected reward is below the best one's, by the policy's own estimates at decision
    time); decisions without an explanation (the static default) count as greedy. With no
    decision yet the rate is 0.

    Parameters
    ----------
    size
        Decisions remembered.

    Examples
    --------
    >>> w = ExplorationWindow(size=4)
    >>> for explored in (True, False, False, False, True):
    ...     w.add(explored)
    >>> w.rate
    0.25
    """

    def __init__(self, size: int = 1000) -> None:
        self.size = size
        self._flags: deque[int] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, explored: bool) -> None:
        """Remember one decision."""
        with self._lock:
            self._flags.append(int(explored))

    @property
    def rate(self) -> float:
        """Explored share of the remembered decisions (0 with none)."""
        with self._lock:
            n = len(self._flags)
            return sum(self._flags) / n if n else 0.0


class RegretEstimator:
    """Estimated regret of each rewarded decision against the best-known model.

    Per model it keeps a running mean of the realised rewards (plain mean over the first
    ``horizon`` rewards, then an exponential moving average with weight ``1 / horizon``, so a
    drifting world is followed). When a decision of model ``a`` is rewarded, ``a``'s mean is
    updated and the regret of that decision is ``max_b mean_b - mean_a`` over the models with at
    least ``min_count`` rewards (0 while ``a`` has fewer): the plug-in estimate of the pseudo-regret
    against the best single model. It is never negative, so it accumulates in a counter.

    It is context-free (a router that rightly sends easy prompts to a cheap model pays
    "regret" here when the cheap model's pooled mean is lower), per worker, and pools tenants
    with different trade-offs; read it as a trend, not as the true regret. The model of a
    decision is remembered from :meth:`decided` for the last ``window`` decisions; feedback on an
    older decision (or one decided by another worker) gets ``None``.

    Parameters
    ----------
    horizon
        Rewards after which a model's mean becomes an exponential moving average.
    min_count
        Rewards a model needs before it counts.
    window
        Decisions whose model is remembered.

    Examples
    --------
    >>> est = RegretEstimator(min_count=1)
    >>> est.decided("d1", "good", "ucb"); est.decided("d2", "bad", "ucb")
    >>> est.rewarded("d1", 0.9)
    ('ucb', 0.0)
    >>> algorithm, regret = est.rewarded("d2", 0.3)
    >>> algorithm, round(regret, 6)
    ('ucb', 0.6)
    >>> est.rewarded("never-decided", 1.0) is None
    True
    """

    def __init__(self, *, horizon: int = 1000, min_count: int = 10, window: int = 50_000) -> None:
        self.horizon = horizon
        self.min_count = min_count
        self.window = window
        self._decisions: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._means: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def decided(self, decision_id: str, model: str, algorithm: str) -> None:
        """Remember which model (and algorithm) made ``decision_id``."""
        with self._lock:
            self._decisions[decision_id] = (model, algorithm)
            if len(self._decisions) > self.window:
                self._decisions.popitem(last=False)

    def rewarded(self, decision_id: str, reward: float) -> tuple[str, float] | None:
        """``(algorithm, regret)`` of a rewarded decision; None if it is not remembered."""
        with self._lock:
            made = self._decisions.pop(decision_id, None)
            if made is None:
                return None
            model, algorithm = made
            n = self._counts[model] = self._counts.get(model, 0) + 1
            mean = self._means.get(model, 0.0)
            mean = self._means[model] = mean + (reward - mean) / min(n, self.horizon)
            if n < self.min_count:
                return algorithm, 0.0
            best = max(m for k, m in self._means.items() if self._counts[k] >= self.min_count)
            return algorithm, max(best - mean, 0.0)


class RecoveryTracker:
    """Whether the service's reward recovered after each drift detection.

    At a detection the mean of the last ``window`` rewards is the baseline (none yet: no
    baseline). The drift counts as recovered once ``window`` rewards have come after it and their
    mean is back to at least the baseline minus ``tolerance`` (with no baseline: once they have
    come). Rewards are all the stored feedback this worker saw, every model pooled: what the
    router achieves, which is what has to recover (the drifted model may never be good again).

    Parameters
    ----------
    window
        Rewards averaged before and after a detection.
    tolerance
        How far below the baseline a recovered mean may be, in reward units.

    Examples
    --------
    >>> t = RecoveryTracker(window=3, tolerance=0.05)
    >>> for r in (0.8, 0.8, 0.8):
    ...     t.add(r)
    []
    []
    []
    >>> t.drift(("gpt-4o", "quality"))
    >>> [t.add(r) for r in (0.2, 0.3, 0.6, 0.8, 0.8, 0.8)]
    [[], [], [], [], [], [('gpt-4o', 'quality')]]
    """

    def __init__(self, *, window: int = 200, tolerance: float = 0.05) -> None:
        self.window = window
        self.tolerance = tolerance
        self._recent: deque[float] = deque(maxlen=window)
        self._sum = 0.0
        self._pending: dict[tuple[str, str], tuple[float | None, int]] = {}
        self._lock = threading.Lock()

    def drift(self, key: tuple[str, str]) -> None:
        """A drift of ``key`` (model, stream) was detected now."""
        with self._lock:
            n = len(self._recent)
            self._pending[key] = (self._sum / n if n == self.window else None, 0)

    def forget(self, key: tuple[str, str]) -> None:
        """Stop tracking ``key`` (recovered by other means)."""
        with self._lock:
            self._pending.pop(key, None)

    def add(self, reward: float) -> list[tuple[str, str]]:
        """One more reward; returns the drifts it completes the recovery of."""
        with self._lock:
            if len(self._recent) == self.window:
                self._sum -= self._recent[0]
            self._recent.append(reward)
            self._sum += reward
            if not self._pending:
                return []
            mean = self._sum / len(self._recent)
            done = []
            for key, (baseline, before) in list(self._pending.items()):
                seen = before + 1
                self._pending[key] = (baseline, seen)
                if seen >= self.window and (baseline is None or mean >= baseline - self.tolerance):
                    done.append(key)
                    del self._pending[key]
            return done


class _CounterMirror:
    """Turns a monotone count kept elsewhere into increments of a Prometheus counter."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.last = 0

    def sync(self, value: int) -> int:
        """Add what ``value`` grew since the last call (a smaller value: a new source); delta."""
        delta = value - self.last if value >= self.last else value
        self.last = value
        if delta > 0:
            self.counter.inc(delta)
        return delta


class ServingMetrics:
    """Counters, gauges and histograms of the decision service, in their own registry.

    Parameters
    ----------
    exploration_window
        Decisions over which the exploration rate is measured.
    clock
        Wall-clock time source (training lag).

    Examples
    --------
    >>> from llmopt.schemas import Decision
    >>> m = ServingMetrics()
    >>> d = Decision(model="gpt-4o-mini", propensity=0.9, policy_name="linucb")
    >>> m.observe_decision(d, served_by="champion", fallback=False, seconds=0.002)
    >>> m.observe_feedback("stored", decision_id=d.decision_id, reward=0.7)
    >>> text = m.render().decode()
    >>> 'llmopt_predictions_total{algorithm="linucb",result="served"} 1.0' in text
    True
    >>> 'llmopt_reward_total{algorithm="linucb",sign="gain"} 0.7' in text
    True

    References
    ----------
    Prometheus, "Metric and label naming" and "Instrumentation" best practices.
    """

    def __init__(
        self, *, exploration_window: int = 1000, clock: Callable[[], float] = time.time
    ) -> None:
        self.registry = CollectorRegistry()
        self._clock = clock
        r = self.registry
        # -- decisions ------------------------------------------------------------------------
        self.decisions = Counter(
            "llmopt_decisions", "Decisions served", ["served_by", "model"], registry=r
        )
        self.inference_latency = Histogram(
            "llmopt_inference_latency_seconds",
            "Time to decide one request in the service (policy, guards, features, event log)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decide_seconds = self.inference_latency  # the older attribute name
        self.predictions = Counter(
            "llmopt_predictions",
            "Decision requests by algorithm and result (served, fallback, refused, error)",
            ["algorithm", "result"],
            registry=r,
        )
        self.exploration = ExplorationWindow(exploration_window)
        self.exploration_rate = Gauge(
            "llmopt_exploration_rate",
            f"Share of the last {exploration_window} decisions not taking the greedy model",
            registry=r,
        )
        self.exploration_rate.set_function(lambda: self.exploration.rate)
        self.requests = Counter(
            "llmopt_requests", "Decide and feedback requests handled", ["endpoint"], registry=r
        )
        self.errors = Counter(
            "llmopt_errors",
            "Decide and feedback requests failed by the service (503)",
            ["endpoint"],
            registry=r,
        )
        for endpoint in ("decide", "feedback"):  # both series exist from the start: rates work
            self.requests.labels(endpoint)
            self.errors.labels(endpoint)
        self.refusals = Counter(
            "llmopt_refusals", "Requests refused", ["endpoint", "status"], registry=r
        )
        # -- feedback, reward, regret, training -----------------------------------------------
        self.feedback = Counter("llmopt_feedback", "Feedback received", ["status"], registry=r)
        self.reward = Counter(
            "llmopt_reward",
            "Reward accumulated: sign=gain adds positive rewards, sign=loss negative ones' size",
            ["algorithm", "sign"],
            registry=r,
        )
        self.reward_observations = Counter(
            "llmopt_reward_observations",
            "Rewards accumulated (stored feedback)",
            ["algorithm"],
            registry=r,
        )
        self.regret_estimator = RegretEstimator()
        self.recovery = RecoveryTracker()
        self.regret = Counter(
            "llmopt_estimated_regret",
            "Estimated regret against the best-known model (serving.metrics.RegretEstimator)",
            ["algorithm"],
            registry=r,
        )
        self.training_examples = Counter(
            "llmopt_training_examples",
            "Examples the serving policies learned (feedback: this worker's; log: other workers')",
            ["source"],
            registry=r,
        )
        self.training_examples.labels("feedback")
        self.training_lag = Gauge(
            "llmopt_training_lag_seconds",
            "Seconds since this worker last caught up with the shared event log (0: one worker)",
            registry=r,
        )
        self._caught_up_at: float | None = None
        self.training_lag.set_function(self._training_lag)
        # -- drift ------------------------------------------------------------------------------
        self.drift_detections = Counter(
            "llmopt_drift_detections",
            "Drift detections",
            ["model", "stream", "detector"],
            registry=r,
        )
        self.drift_unrecovered = Gauge(
            "llmopt_drift_unrecovered",
            "1 from a drift detection until the reward recovers (serving.metrics.RecoveryTracker)",
            ["model", "stream"],
            registry=r,
        )
        # -- features ---------------------------------------------------------------------------
        self.feature_hits = Counter(
            "llmopt_feature_cache_hits", "Online-feature reads answered by the cache", registry=r
        )
        self.feature_misses = Counter(
            "llmopt_feature_cache_misses", "Online-feature reads sent to the store", registry=r
        )
        self.feature_degraded = Counter(
            "llmopt_feature_store_degraded_reads",
            "Store reads that timed out or failed (stale values or defaults)",
            registry=r,
        )
        self.feature_store_up = Gauge(
            "llmopt_feature_store_up",
            "1 while the online feature store is open and answering",
            ["profile"],
            registry=r,
        )
        self._mirrors = {
            "hits": _CounterMirror(self.feature_hits),
            "misses": _CounterMirror(self.feature_misses),
            "degraded": _CounterMirror(self.feature_degraded),
        }
        self._store_state = "off"
        # -- lineup and swaps -----------------------------------------------------------------
        self.swaps = Counter("llmopt_model_swaps", "Model swaps", ["role"], registry=r)
        self.swap_seconds = Histogram(
            "llmopt_hot_swap_duration_seconds",
            "Reload that changed the lineup: check the aliases, load, swap",
            ["trigger"],
            buckets=SWAP_BUCKETS,
            registry=r,
        )
        self.model_available = Gauge(
            "llmopt_model_available",
            "1 while a learned policy serves the role (champion 0: the static default answers)",
            ["role"],
            registry=r,
        )
        self.breaker_open = Gauge(
            "llmopt_circuit_open",
            "1 while a model's circuit breaker is open",
            ["model"],
            registry=r,
        )
        self.shadow_agreement = Gauge(
            "llmopt_shadow_agreement", "Share of shadow decisions equal to the served", registry=r
        )
        self.rollbacks = Gauge(
            "llmopt_canary_rollbacks", "Automatic canary rollbacks since start", registry=r
        )
        self.artifact_rejections = Counter(
            "llmopt_artifact_rejections",
            "Model artifacts refused at load: SHA-256 mismatch or missing hash",
            ["alias"],
            registry=r,
        )
        self.hooks: list[Callable[[ServingMetrics], None]] = []
        self._children: dict[tuple[int | str, ...], Counter] = {}

    def _inc(self, counter: Counter, *labels: str, amount: float = 1.0) -> None:
        """``counter.labels(*labels).inc(amount)``, with the child cached (the hot path)."""
        key: tuple[int | str, ...] = (id(counter), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(*labels)
        child.inc(amount)

    # -- decisions ------------------------------------------------------------------------------
    def observe_decision(
        self, decision: Decision, *, served_by: str, fallback: bool, seconds: float
    ) -> None:
        """One decision served, after ``seconds``."""
        algorithm = decision.policy_name
        self.inference_latency.observe(seconds)
        self._inc(self.decisions, served_by, decision.model)
        self._inc(self.predictions, algorithm, "fallback" if fallback else "served")
        self._inc(self.requests, "decide")
        explained = decision.explanation
        self.exploration.add(explained is not None and explained.explored)
        self.regret_estimator.decided(decision.decision_id, decision.model, algorithm)

    def observe_failed_decision(self, status: int, *, algorithm: str = "none") -> None:
        """A decide request answered ``status`` (402 refused, else an error) with no decision."""
        refused = status < 500
        self.refusals.labels("decide", str(status)).inc()
        self.predictions.labels(algorithm, "refused" if refused else "error").inc()
        self.requests.labels("decide").inc()
        if not refused:
            self.errors.labels("decide").inc()

    # -- feedback -------------------------------------------------------------------------------
    def observe_feedback(
        self, status: str, *, decision_id: str | None = None, reward: float | None = None
    ) -> None:
        """One feedback request: ``stored``, ``duplicate``, ``unknown``, ``conflict``, ``error``.

        Stored feedback with its ``reward`` counts as reward, regret and a training example.
        """
        self._inc(self.feedback, status)
        self._inc(self.requests, "feedback")
        if status == "error":
            self._inc(self.errors, "feedback")
        if status not in ("stored", "spooled") or reward is None:
            return
        self._inc(self.training_examples, "feedback")
        made = self.regret_estimator.rewarded(decision_id, reward) if decision_id else None
        algorithm = made[0] if made is not None else UNKNOWN
        self._inc(self.reward, algorithm, "gain", amount=max(reward, 0.0))
        self._inc(self.reward, algorithm, "loss", amount=max(-reward, 0.0))
        self._inc(self.reward_observations, algorithm)
        if made is not None:
            self._inc(self.regret, algorithm, amount=made[1])
        for model, stream in self.recovery.add(reward):
            self.drift_unrecovered.labels(model, stream).set(0)

    def observe_training(self, examples: int, *, source: str = "log") -> None:
        """``examples`` learned outside a feedback request (other workers' log, warm start)."""
        if examples > 0:
            self.training_examples.labels(source).inc(examples)

    def sync_training_examples(self, source: str, total: int) -> None:
        """Mirror a running total of examples learned from ``source`` (called when scraped)."""
        mirror = self._mirrors.get(f"training:{source}")
        if mirror is None:
            mirror = self._mirrors[f"training:{source}"] = _CounterMirror(
                self.training_examples.labels(source)
            )
        mirror.sync(total)

    def caught_up(self, at: float | None = None) -> None:
        """This worker has learned everything the event log held at ``at`` (default: now)."""
        self._caught_up_at = self._clock() if at is None else at

    def _training_lag(self) -> float:
        if self._caught_up_at is None:
            return 0.0
        return max(self._clock() - self._caught_up_at, 0.0)

    # -- drift ----------------------------------------------------------------------------------
    def observe_drift(self, model: str, stream: str, detector: str) -> None:
        """A detector flagged drift in ``stream`` (e.g. reward, quality, latency) of ``model``."""
        self.drift_detections.labels(model, stream, detector).inc()
        self.drift_unrecovered.labels(model, stream).set(1)
        self.recovery.drift((model, stream))

    def observe_drift_recovered(self, model: str, stream: str) -> None:
        """``stream`` of ``model`` recovered (the monitor says so; :class:`RecoveryTracker` too)."""
        self.drift_unrecovered.labels(model, stream).set(0)
        self.recovery.forget((model, stream))

    # -- features, lineup, swaps ----------------------------------------------------------------
    def sync_features(self, profile: str, state: str, cache: FeatureCacheStats | None) -> None:
        """Mirror the online features' state and cache counts (called when scraped).

        ``state`` is the runtime's: ``off``, ``starting``, ``open`` or ``unavailable``.

        ``feature_store_up`` is 0 unless the store is open, and 0 too while every store read
        since the previous call was degraded; with no read since, it keeps its value. With
        features ``off`` the series is absent.
        """
        if cache is not None:
            self._mirrors["hits"].sync(cache.hits)
            misses = self._mirrors["misses"].sync(cache.misses)
            degraded = self._mirrors["degraded"].sync(cache.degraded_reads)
        else:
            misses = degraded = 0
        if state == "off":
            self.feature_store_up.remove(profile)
        elif state != "open":
            self.feature_store_up.labels(profile).set(0)
        elif misses > 0:
            self.feature_store_up.labels(profile).set(0 if degraded >= misses else 1)
        elif self._store_state != "open":
            self.feature_store_up.labels(profile).set(1)  # just opened, no read yet
        self._store_state = state

    def set_model_available(self, role: str, available: bool | None) -> None:
        """1/0 for ``role``; None removes the series (e.g. no challenger configured)."""
        if available is None:
            self.model_available.remove(role)
        else:
            self.model_available.labels(role).set(1 if available else 0)

    def observe_swap(self, seconds: float, *, trigger: str = "reload") -> None:
        """A reload changed the lineup in ``seconds`` (``trigger``: reload, poll, ...)."""
        self.swaps.labels(trigger).inc()
        self.swap_seconds.labels(trigger).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition, after refreshing the state gauges."""
        for hook in self.hooks:
            hook(self)
        return generate_latest(self.registry)


@lru_cache(maxsize=1)
def get_metrics() -> ServingMetrics:
    """The process's metrics (one per worker process)."""
    return ServingMetrics()
