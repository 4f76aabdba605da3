"""The service's Prometheus metrics, in a registry of their own (served at ``GET /metrics``).

Created on first use, never at import. Gauges that mirror state (circuit breakers, traffic
mode) are refreshed by hooks the service registers, when the metrics are scraped.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)


class ServingMetrics:
    """Counters and histograms of decisions, feedback, errors and swaps."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.decisions = Counter(
            "llmopt_decisions", "Decisions served", ["served_by", "model"], registry=r
        )
        self.decide_seconds = Histogram(
            "llmopt_decide_seconds",
            "Time to decide one request (policy, guards, event log)",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.feedback = Counter("llmopt_feedback", "Feedback received", ["status"], registry=r)
        self.refusals = Counter(
            "llmopt_refusals", "Requests refused", ["endpoint", "status"], registry=r
        )
        self.swaps = Counter("llmopt_model_swaps", "Model swaps", ["role"], registry=r)
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
        self.hooks: list[Callable[[ServingMetrics], None]] = []

    def render(self) -> bytes:
        """The Prometheus text exposition, after refreshing the state gauges."""
        for hook in self.hooks:
            hook(self)
        return generate_latest(self.registry)


@lru_cache(maxsize=1)
def get_metrics() -> ServingMetrics:
    """The process's metrics (one per worker process)."""
    return ServingMetrics()
