"""Alerts: a structured log record, an optional webhook POST, and counts for Prometheus.

Every :class:`~monitoring.detectors.DriftEvent` becomes one JSON-serialisable record, logged at
WARNING on the ``llmopt.monitoring`` logger with the record under ``extra={"alert": record}``
(a JSON log formatter writes ``record.alert`` as is), and, if a webhook URL is configured,
POSTed to it as JSON. Other alerts (a retraining triggered or not,
:mod:`monitoring.retraining`) go the same way through :meth:`Alerter.notify`. Alerts are rare
(a detector restarts after each detection), so the POST is synchronous with a short timeout; a
webhook that fails, times out or answers an error is logged and never raises into the feedback
path that raised the alert.

Examples
--------
>>> from datetime import UTC, datetime
>>> from monitoring.detectors import DriftEvent
>>> alerter = Alerter()  # no webhook: log and count only
>>> event = DriftEvent("gpt-4o", "quality", "adwin", 512, 0.0, datetime(2025, 1, 1, tzinfo=UTC))
>>> record = alerter.alert(event)
>>> record["kind"], record["model"], record["time"], record["count"]
('drift', 'gpt-4o', '2025-01-01T00:00:00+00:00', 1)
>>> alerter.counts
{('gpt-4o', 'quality', 'adwin'): 1}
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from monitoring.detectors import DriftEvent

if TYPE_CHECKING:
    import httpx

LOGGER_NAME = "llmopt.monitoring"
"""Logger of drift alerts and of webhook failures."""


class Alerter:
    """Turns drift events into alerts: log record, webhook POST, per-detector counts.

    Parameters
    ----------
    webhook_url
        Where to POST each alert as JSON (None: no webhook). The service passes
        ``Settings``' alert webhook URL.
    timeout_s
        Timeout of the POST (connect and read), in seconds.
    client
        The ``httpx.Client`` to POST with (tests pass one with a mock transport); by default
        one is created on the first POST and kept (:meth:`close` closes it).
    on_alert
        Called with every alert record (e.g. to increment a Prometheus counter); an exception
        it raises is logged, never propagated.
    """

    def __init__(
        self,
        webhook_url: str | None = None,
        *,
        timeout_s: float = 2.0,
        client: httpx.Client | None = None,
        on_alert: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.webhook_url = webhook_url or None
        self.timeout_s = timeout_s
        self.on_alert = on_alert
        self._client = client
        self._owns_client = client is None
        self._counts: dict[tuple[str, str, str], int] = {}
        self._logger = logging.getLogger(LOGGER_NAME)
        self.webhook_failures = 0

    @property
    def counts(self) -> dict[tuple[str, str, str], int]:
        """Alerts so far per (model, stream, detector): the ``drift detections`` metric."""
        return dict(self._counts)

    def alert(self, event: DriftEvent) -> dict[str, Any]:
        """Log, count and (if configured) POST one drift event; returns the alert record."""
        key = (event.model, event.stream, event.detector)
        self._counts[key] = self._counts.get(key, 0) + 1
        record: dict[str, Any] = {"kind": "drift", **event.to_dict(), "count": self._counts[key]}
        self._logger.warning(
            "drift detected: model=%s stream=%s detector=%s after %d values (value %.6g)",
            event.model,
            event.stream,
            event.detector,
            event.n_seen,
            event.value,
            extra={"alert": record},
        )
        self._dispatch(record)
        return record

    def notify(
        self, kind: str, message: str, *, level: int = logging.WARNING, **fields: Any
    ) -> dict[str, Any]:
        """Log and (if configured) POST an alert of another ``kind``; returns its record.

        >>> Alerter().notify("retrain_triggered", "retraining run abc", deployment="a/b")
        {'kind': 'retrain_triggered', 'message': 'retraining run abc', 'deployment': 'a/b'}
        """
        record: dict[str, Any] = {"kind": kind, "message": message, **fields}
        self._logger.log(level, "%s", message, extra={"alert": record})
        self._dispatch(record)
        return record

    def _dispatch(self, record: dict[str, Any]) -> None:
        if self.on_alert is not None:
            try:
                self.on_alert(record)
            except Exception:  # a metrics hook must not break the feedback path
                self._logger.exception("on_alert hook failed for %s", record["kind"])
        if self.webhook_url is not None:
            self._post(self.webhook_url, record)

    def handle(self, events: Iterable[DriftEvent]) -> list[dict[str, Any]]:
        """:meth:`alert` on each event (what a :class:`StreamMonitor` returned)."""
        return [self.alert(e) for e in events]

    def _post(self, url: str, record: dict[str, Any]) -> None:
        import httpx  # noqa: PLC0415 (only a configured webhook needs it)

        try:
            if self._client is None:
                self._client = httpx.Client(timeout=self.timeout_s)
            response = self._client.post(url, json=record, timeout=self.timeout_s)
            response.raise_for_status()
        except Exception as exc:  # the webhook is best effort: log, count, carry on
            self.webhook_failures += 1
            self._logger.error(
                "alert webhook failed (%s: %s)",
                type(exc).__name__,
                exc,
                extra={"alert": record, "webhook_url": url},
            )

    def close(self) -> None:
        """Close the HTTP client this alerter created (a client passed in is left open)."""
        if self._client is not None and self._owns_client:
            self._client.close()
            self._client = None
