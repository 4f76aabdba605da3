"""Streaming drift detection on the serving feedback path (:mod:`monitoring` wired into the router).

Every stored feedback feeds :class:`monitoring.detectors.StreamMonitor` with the served model's
reward, quality, latency and cost. When a detector fires:

- an alert: a structured log record on ``llmopt.monitoring`` and, if ``LLMOPT_ALERT_WEBHOOK_URL``
  is set, a JSON POST to it, sent from a short-lived thread so that a slow webhook never holds
  up a decision;
- ``on_drift`` (the service counts it in Prometheus: ``llmopt_drift_detections_total``);
- :class:`monitoring.drift_response.DriftResponder` discounts the drifted model in the policy that
  served it (its statistics keep the weight of at most 20 observations) and requests a
  retraining: :class:`monitoring.retraining.RetrainTrigger` runs the retraining deployment
  (``LLMOPT_RETRAIN_DEPLOYMENT``) through Prefect's API on a thread of its own, at most once per
  ``LLMOPT_RETRAIN_COOLDOWN_S`` (a burst of alarms: one run), with an alert saying what it did
  (or why not: no Prefect API configured, the deployment not served) and the Prometheus counter
  ``llmopt_retrain_requests_total{source,outcome}``. The feedback request never waits for it
  and never fails because of it.

Detector state is per worker process: each worker watches the feedback it receives (with N
workers, each sees ~1/N of the stream, so detection takes ~N times as many events; the drift
flow's Evidently reports read the whole log).

Example
-------
>>> class Loop:
...     def reset_arm(self, arm, *, factor=0.0, max_weight=None, costs=False):
...         return True
>>> watch = DriftWatch()
>>> events = []
>>> for i in range(400):
...     events += watch.observe("v1", Loop(), "m", quality=0.9 if i < 200 else 0.1)
>>> sorted({e.detector for e in events}) != []
True
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from llmopt.settings import Settings
from monitoring.alerts import Alerter
from monitoring.detectors import DriftEvent, StreamMonitor
from monitoring.drift_response import DriftResponder
from monitoring.retraining import RetrainOutcome, RetrainTrigger
from serving.metrics import get_metrics

log = logging.getLogger("llmopt.serving")


class DriftWatch:
    """Detectors, alerts and responses of one serving worker.

    Parameters
    ----------
    webhook_url
        Where alerts are POSTed (None: structured logs only).
    on_drift
        Called with every drift event (metrics).
    retrain_deployment
        Prefect deployment (``"flow/deployment"``) a drift response runs (None: requests are
        kept in the responders' ``retrain_requests`` only).
    retrain_cooldown_s
        Seconds after a retraining request during which no new run is asked for.
    on_retrain
        Called with every retraining outcome (metrics).
    """

    def __init__(
        self,
        *,
        webhook_url: str | None = None,
        on_drift: Callable[[DriftEvent], None] | None = None,
        retrain_deployment: str | None = None,
        retrain_cooldown_s: float = 3600.0,
        on_retrain: Callable[[RetrainOutcome], None] | None = None,
    ) -> None:
        self.monitor = StreamMonitor()
        self.alerter = Alerter(webhook_url=webhook_url)
        self.on_drift = on_drift
        self.retrain = (
            RetrainTrigger(
                retrain_deployment,
                cooldown_s=retrain_cooldown_s,
                source="detector",
                alerter=self.alerter,
                on_outcome=on_retrain,
                isolate=True,  # serving never imports Prefect (see monitoring.retraining)
            )
            if retrain_deployment
            else None
        )
        self._responders: dict[str, DriftResponder] = {}
        self.events = 0

    @classmethod
    def from_settings(
        cls, settings: Settings, *, on_drift: Callable[[DriftEvent], None] | None = None
    ) -> DriftWatch:
        """The service's watch: alerts to ``alert_webhook_url``, retraining as configured,
        retraining outcomes counted in ``llmopt_retrain_requests_total``."""
        return cls(
            webhook_url=settings.alert_webhook_url,
            on_drift=on_drift,
            retrain_deployment=settings.retrain_deployment or None,
            retrain_cooldown_s=settings.retrain_cooldown_s,
            on_retrain=lambda o: get_metrics().retrain_requests.labels(o.source, o.status).inc(),
        )

    def _request_retraining(self, event: DriftEvent) -> None:
        if self.retrain is not None:
            self.retrain.request_in_background(
                f"drift of {event.model} {event.stream} ({event.detector}, after "
                f"{event.n_seen} values)"
            )

    def observe(
        self,
        label: str,
        loop: Any,
        model: str,
        *,
        reward: float | None = None,
        quality: float | None = None,
        latency_ms: float | None = None,
        cost_usd: float | None = None,
    ) -> list[DriftEvent]:
        """Feed one feedback of ``model`` served by the policy ``label`` (its ``loop``)."""
        events = self.monitor.observe(
            model, reward=reward, quality=quality, latency_ms=latency_ms, cost_usd=cost_usd
        )
        if not events:
            return events
        self.events += len(events)
        for event in events:
            if self.on_drift is not None:
                self.on_drift(event)
        responder = self._responders.get(label)
        if responder is None or responder.target is not loop:
            responder = self._responders[label] = DriftResponder(
                loop, on_retrain_request=self._request_retraining
            )
        responder.handle(events)
        threading.Thread(
            target=self.alerter.handle, args=(events,), name="drift-alert", daemon=True
        ).start()
        return events
