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
``retrain_requests_total{source,outcome}``             drift -> retraining requests: ``triggered``
                                                       (a Prefect flow run), ``cooldown``,
                                                       ``no_api``, ``failed``
``requests_total{endpoint}`` / ``errors_total{...}``   the error-rate alert's denominator and
                                                       numerator (``decide``, ``feedback``)
=====================================================  ==========================================

The three estimators behind regret, exploration and recovery are monitoring's
(:mod:`monitoring.estimators`); this module only exposes them.

Also exposed: ``decisions_total{served_by,model}``, ``feedback_total{status}``,
``refusals_total{endpoint,status}``, ``model_swaps_total{role}`` (``role``: the swap's trigger),
``circuit_open{model}``, ``shadow_agreement``, ``canary_rollbacks``, ``canary_percent``,
``autopilot_rollbacks_total{role,guard}`` (:mod:`serving.autopilot`). The former
``llmopt_decide_seconds`` is now ``llmopt_inference_latency_seconds`` (the attribute
``decide_seconds`` still names it).

One registry per worker process: with several BentoML workers behind one port each scrape would
reach one of them at random, which is why the service runs one worker per port.
"""

from __future__ import annotations

import time
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
from monitoring.estimators import ExplorationWindow, RecoveryTracker, RegretEstimator

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
            "Estimated regret against the best-known model (monitoring.estimators.RegretEstimator)",
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
            "1 from a drift detection until the reward recovers "
            "(monitoring.estimators.RecoveryTracker)",
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
        self.autopilot_rollbacks = Counter(
            "llmopt_autopilot_rollbacks",
            "Automatic rollbacks of a canary (role challenger) or a fresh prod (role champion), "
            "by the guard that failed",
            ["role", "guard"],
            registry=r,
        )
        self.canary_percent = Gauge(
            "llmopt_canary_percent", "Share of traffic the challenger serves (%)", registry=r
        )
        self.artifact_rejections = Counter(
            "llmopt_artifact_rejections",
            "Model artifacts refused at load: SHA-256 mismatch or missing hash",
            ["alias"],
            registry=r,
        )
        self.retrain_requests = Counter(  # monitoring.retraining: drift -> Prefect deployment
            "llmopt_retrain_requests",
            "Retraining requests after drift, by outcome (triggered, cooldown, no_api, failed)",
            ["source", "outcome"],
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
