"""Feedback events -> windowed rows -> the online store (push sources) and the offline store.

``FeatureWriter.add`` feeds each event to the aggregation and flushes when ``max_batch`` events
are waiting or ``max_delay_s`` has passed since the last flush: one ``push`` per view per flush
(a push costs ~8-40 ms whatever its size, so batching is what makes thousands of events per second
possible), and the same rows appended to the offline store. A malformed event is rejected on its
own, with the reason, before it touches any window. Callers that need freshness while idle call
``flush()`` on a timer (the pipelines' job).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from feature_store import store as fs_store
from feature_store.aggregation import FeedbackAggregator, MalformedEventError, Observation
from llmopt.event_log import LoggedEvent

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)


@dataclass
class AddResult:
    """What ``FeatureWriter.add`` did with a batch of events."""

    accepted: int = 0
    rejected: list[str] = field(default_factory=list)
    """One message per malformed event: which event, which field, which value."""
    flushed_rows: dict[str, int] = field(default_factory=dict)


class FeatureWriter:
    """Aggregate feedback events and push the rows online and offline.

    Parameters
    ----------
    store
        The Feast store (applied).
    aggregator
        The windowed statistics (a new one by default).
    max_batch
        Events that trigger a flush.
    max_delay_s
        Seconds after which the next ``add`` flushes whatever is waiting.
    offline
        Also append the rows to the offline store.
    direct
        Write online rows straight through the provider (see ``store.push_online``).
    """

    def __init__(
        self,
        store: FeatureStore,
        *,
        aggregator: FeedbackAggregator | None = None,
        max_batch: int = 2000,
        max_delay_s: float = 1.0,
        offline: bool = True,
        direct: bool = False,
    ) -> None:
        self.store = store
        self.aggregator = aggregator or FeedbackAggregator()
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.offline = offline
        self.direct = direct
        self._waiting = 0
        self._last_flush = time.monotonic()
        self.pushed_rows = 0

    def add(self, events: Iterable[Observation | LoggedEvent]) -> AddResult:
        """Aggregate ``events``; flush if due. Malformed events are counted, not raised."""
        result = AddResult()
        for event in events:
            try:
                self.aggregator.update(event)
            except MalformedEventError as exc:
                result.rejected.append(str(exc))
                continue
            result.accepted += 1
            self._waiting += 1
            if self._waiting >= self.max_batch:
                self._merge(result, self.flush())
        if self._waiting and time.monotonic() - self._last_flush >= self.max_delay_s:
            self._merge(result, self.flush())
        if result.rejected:
            log.warning(
                "rejected %d malformed feedback event(s): %s",
                len(result.rejected),
                result.rejected[0],
            )
        return result

    @staticmethod
    def _merge(result: AddResult, rows: dict[str, int]) -> None:
        for view, n in rows.items():
            result.flushed_rows[view] = result.flushed_rows.get(view, 0) + n

    def flush(self) -> dict[str, int]:
        """Push the rows of every key updated since the last flush; return rows per view."""
        out: dict[str, int] = {}
        for view, rows in self.aggregator.emit().items():
            if not rows:
                continue
            fs_store.push_online(self.store, view, rows, direct=self.direct)
            if self.offline:
                fs_store.write_offline(self.store, view, rows)
            out[view] = len(rows)
            self.pushed_rows += len(rows)
        self._waiting = 0
        self._last_flush = time.monotonic()
        return out
