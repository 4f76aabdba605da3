"""Streaming drift detection on the serving feedback path (:mod:`monitoring` wired into the router).

Every stored feedback feeds :class:`monitoring.detectors.StreamMonitor` with the served model's
reward, quality, latency and cost. When a detector fires:

- an alert: a structured log record on ``llmopt.monitoring`` and, if ``LLMOPT_ALERT_WEBHOOK_URL``
  is set, a JSON POST to it, sent from a short-lived thread so that a slow webhook never holds
  up a decision;
- ``on_drift`` (the service counts it in Prometheus: ``llmopt_drift_detections_total``);
- :class:`monitoring.drift_response.DriftResponder` discounts the drifted model in the policy that
  served it (its statistics keep the weight of at most 20 observations) and appends a retraining
  request to ``retrain_log`` (``$LLMOPT_HOME/monitoring/retrain_requests.jsonl``). **Not wired
  yet:** no flow reads that file today; operators can. Issue 15 (autopilot) makes a drift
  request trigger retraining.

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
from pathlib import Path
from typing import Any

from monitoring.alerts import Alerter
from monitoring.detectors import DriftEvent, StreamMonitor
from monitoring.drift_response import DriftResponder

log = logging.getLogger("llmopt.serving")


class DriftWatch:
    """Detectors, alerts and responses of one serving worker.

    Parameters
    ----------
    webhook_url
        Where alerts are POSTed (None: structured logs only).
    on_drift
        Called with every drift event (metrics).
    retrain_log
        JSON-lines file of retraining requests (None: kept in memory only).
    """

    def __init__(
        self,
        *,
        webhook_url: str | None = None,
        on_drift: Callable[[DriftEvent], None] | None = None,
        retrain_log: Path | None = None,
    ) -> None:
        self.monitor = StreamMonitor()
        self.alerter = Alerter(webhook_url=webhook_url)
        self.on_drift = on_drift
        self.retrain_log = retrain_log
        self._responders: dict[str, DriftResponder] = {}
        self.events = 0

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
            responder = self._responders[label] = DriftResponder(loop, retrain_log=self.retrain_log)
        responder.handle(events)
        threading.Thread(
            target=self.alerter.handle, args=(events,), name="drift-alert", daemon=True
        ).start()
        return events
