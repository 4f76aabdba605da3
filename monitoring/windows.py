"""Which feedback events a drift report compares: the current window and its reference.

The *current* window is the latest ``window`` feedback events. The reference is the champion's
training window: the feedback ids the registry version aliased ``prod`` learned from, read from
its tags (``data_window`` ``feedback (a, b]``, ``last_feedback_id``, ``n_events``; see
:func:`champion_window_from_tags`), without the current window's events and capped to the latest
``window`` of them. Without a champion, or when fewer than ``min_rows`` of its events lie before
the current window, the last ``2 * window`` events are split in half: the older half is the
reference, the newer half the current window. :class:`Reference` says which reference was used
and why.

The ids, counts and events come from :class:`llmopt.event_log.EventLog`; one high-water mark per
report, so events logged meanwhile wait for the next one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from llmopt.event_log import EventLog, LoggedEvent
from llmopt.settings import Settings
from registry import CHAMPION_ALIAS, MODEL_NAME, registry_exists

_DATA_WINDOW = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\]")


class NotEnoughEventsError(ValueError):
    """The event log holds too few feedback events for a drift report; the message says how many."""


@dataclass(frozen=True)
class ChampionWindow:
    """The feedback ids ``(after_id, until_id]`` the champion version learned from."""

    version: str
    after_id: int
    until_id: int
    source: str
    """The tags the window was read from."""


def champion_window_from_tags(version: str, tags: Mapping[str, str]) -> ChampionWindow | None:
    """The training window of a registry version from its tags, or None if they name none.

    ``data_window`` (``feedback (a, b]``) is the last training increment; ``last_feedback_id``
    and ``n_events`` (events learned since the policy was created) widen it to everything the
    version learned.

    >>> w = champion_window_from_tags("3", {"data_window": "feedback (100, 400]"})
    >>> (w.version, w.after_id, w.until_id, w.source)
    ('3', 100, 400, "data_window='feedback (100, 400]'")
    >>> w = champion_window_from_tags("4", {"data_window": "feedback (380, 400]",
    ...                                     "last_feedback_id": "400", "n_events": "400"})
    >>> (w.after_id, w.until_id)
    (0, 400)
    >>> champion_window_from_tags("1", {"data_window": "demo"}) is None
    True
    """
    found = _DATA_WINDOW.search(tags.get("data_window", ""))
    after, until = (int(found[1]), int(found[2])) if found else (None, None)
    last = tags.get("last_feedback_id", "")
    n_events = tags.get("n_events", "")
    if last.isdigit():
        until = int(last)
        if n_events.isdigit():
            start = max(int(last) - int(n_events), 0)
            after = start if after is None else min(after, start)
    if after is None or until is None or until <= after:
        return None
    used = {k: tags[k] for k in ("data_window", "last_feedback_id", "n_events") if k in tags}
    return ChampionWindow(
        str(version), after, until, ", ".join(f"{k}={v!r}" for k, v in used.items())
    )


def find_champion_window(settings: Settings) -> tuple[ChampionWindow | None, str]:
    """The champion's training window from the MLflow registry, or None and why not."""
    if not registry_exists(settings):
        return None, "no MLflow registry (nothing registered yet)"
    try:
        from registry import mlflow_registry  # noqa: PLC0415 - heavy, only when a registry exists

        client = mlflow_registry.configure(settings)
        mv = client.get_model_version_by_alias(MODEL_NAME, CHAMPION_ALIAS)
    except Exception as exc:  # MlflowException (no such model/alias) or an unreachable store
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, f"no {MODEL_NAME}@{CHAMPION_ALIAS} in the registry ({first[:200]})"
    tags = dict(mv.tags or {})
    window = champion_window_from_tags(str(mv.version), tags)
    if window is None:
        return None, (
            f"champion {MODEL_NAME} version {mv.version} has no feedback-id window in its "
            f"tags (data_window={tags.get('data_window')!r})"
        )
    return window, ""


def duration(seconds: float) -> str:
    """A duration in its two largest units.

    >>> [duration(s) for s in (0.4, 59, 61, 3600, 90061)]
    ['0 s', '59 s', '1 min 1 s', '1 h 0 min', '1 d 1 h']
    """
    s = int(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60)):
        if s >= size:
            return f"{s // size} {unit} {(s % size) // sub_size} {sub}"
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


@dataclass(frozen=True)
class Window:
    """Feedback ids ``(after_id, until_id]`` and what they hold."""

    after_id: int
    until_id: int
    n_rows: int
    first_at: datetime | None = None
    last_at: datetime | None = None

    @property
    def feedback_ids(self) -> str:
        """The id range as text: ``(after_id, until_id]``."""
        return f"({self.after_id}, {self.until_id}]"

    @property
    def span_s(self) -> float | None:
        """Seconds from the first to the last event's receipt (None when empty)."""
        if self.first_at is None or self.last_at is None:
            return None
        return (self.last_at - self.first_at).total_seconds()

    def time_span(self) -> str:
        """When the events were received, in UTC, and for how long.

        >>> from datetime import UTC, datetime
        >>> w = Window(0, 90, 90, datetime(2026, 3, 1, 9, 0, tzinfo=UTC),
        ...            datetime(2026, 3, 1, 11, 30, 5, tzinfo=UTC))
        >>> w.time_span()
        'received 2026-03-01 09:00:00 to 2026-03-01 11:30:05 UTC (2 h 30 min)'
        >>> Window(5, 5, 0).time_span()
        'no events'
        """
        if self.first_at is None or self.last_at is None or self.span_s is None:
            return "no events"
        fmt = "%Y-%m-%d %H:%M:%S"
        first = self.first_at.astimezone(UTC).strftime(fmt)
        last = self.last_at.astimezone(UTC).strftime(fmt)
        return f"received {first} to {last} UTC ({duration(self.span_s)})"

    def describe(self) -> str:
        """Ids, count and time span in one line.

        >>> Window(10, 20, 10).describe()
        'feedback ids (10, 20]: 10 events, no events'
        """
        return f"feedback ids {self.feedback_ids}: {self.n_rows} events, {self.time_span()}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "feedback_ids": self.feedback_ids,
            "after_id": self.after_id,
            "until_id": self.until_id,
            "n_rows": self.n_rows,
            "first_received_at": self.first_at.isoformat() if self.first_at else None,
            "last_received_at": self.last_at.isoformat() if self.last_at else None,
            "span_s": None if self.span_s is None else round(self.span_s, 3),
            "time_span": self.time_span(),
        }

    @classmethod
    def of_events(cls, events: Sequence[LoggedEvent], after: int, until: int) -> Window:
        """The window ``(after, until]`` holding ``events`` (oldest first)."""
        return cls(
            after,
            until,
            len(events),
            events[0].received_at if events else None,
            events[-1].received_at if events else None,
        )


@dataclass(frozen=True)
class Reference:
    """Which reference a report used: the champion's training window or a split of recent events."""

    kind: Literal["champion", "split"]
    description: str
    champion_version: str | None = None


def select_windows(
    log: EventLog, window: int, *, champion: ChampionWindow | None, min_rows: int, why: str = ""
) -> tuple[Reference, tuple[int, int], tuple[int, int]]:
    """The reference, its id range and the current id range (see the module docstring).

    Raises :class:`NotEnoughEventsError` when the log cannot fill two windows of ``min_rows``.
    """
    if window < min_rows:
        raise ValueError(f"window ({window}) must be at least min_rows ({min_rows})")
    last = log.last_feedback_id()  # one snapshot: events logged meanwhile wait for the next report
    total = log.count_feedback(0, last)
    if total < 2 * min_rows:
        raise NotEnoughEventsError(
            f"the event log has {total} feedback events; a drift report needs at least "
            f"{2 * min_rows} ({min_rows} in each of the reference and current windows). "
            "Route traffic and send feedback first (or run `llmopt demo`)."
        )
    cur_after = log.cursor_before_latest(window, until_id=last)
    if champion is not None:
        until = min(champion.until_id, cur_after)
        n_ref = log.count_feedback(champion.after_id, until)
        if n_ref >= min_rows:
            after = max(champion.after_id, log.cursor_before_latest(window, until_id=until))
            ref = Reference(
                "champion",
                f"training window of champion {MODEL_NAME} version {champion.version} "
                f"({champion.source}): feedback ({champion.after_id}, {champion.until_id}], "
                f"restricted to the events before the current window and the latest {window}",
                champion.version,
            )
            return ref, (after, until), (cur_after, last)
        why = (
            f"champion {MODEL_NAME} version {champion.version} learned only {n_ref} "
            f"events before the current window (feedback ({champion.after_id}, "
            f"{champion.until_id}]), fewer than {min_rows}"
        )
    n_split = min(total, 2 * window)
    start = log.cursor_before_latest(n_split, until_id=last)
    middle = log.cursor_before_latest(n_split - n_split // 2, until_id=last)
    ref = Reference(
        "split",
        f"no usable champion window ({why or 'registry not consulted'}): the last {n_split} "
        f"events split in half, the older {n_split // 2} as reference",
    )
    return ref, (start, middle), (middle, last)
