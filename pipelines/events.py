"""The event log's training reads, for code that holds the log's engine.

Training and promotion share one engine between the event log and the checkpoint store
(:class:`pipelines.checkpoint.CheckpointStore`), so they pass the engine around; these functions
read through :class:`llmopt.event_log.EventLog`, which owns every query on the event tables.
Every run has an exact data window ``(after_id, until_id]``: the high-water mark is fixed when
the run starts, and the events are read by keyset pagination on ``feedback_id`` (the cursor
incremental training resumes from).

Examples
--------
>>> from llmopt.event_log import EventLog
>>> from llmopt.schemas import Decision, Feedback, RequestContext
>>> log = EventLog("sqlite://")
>>> d = Decision(model="a", propensity=0.5, policy_name="doc", scores={"a": 0.1, "b": 0.0})
>>> log.record_decision(d, RequestContext(tenant="t"), features={"bias": 1.0})
>>> _ = log.record_feedback(Feedback(decision_id=d.decision_id, quality=0.8), reward=0.7)
>>> high_water_mark(log.engine)
1
>>> [(e.model, e.quality, e.arms) for b in batches(log.engine, 0, 1, with_context=True) for e in b]
[('a', 0.8, ('a', 'b'))]
"""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy.engine import Engine

from llmopt.event_log import EventLog, TrainingEvent

__all__ = ["TrainingEvent", "batches", "high_water_mark", "recent", "rewards_by_policy_version"]


def _log(engine: Engine) -> EventLog:
    return EventLog(engine, migrate=False)


def high_water_mark(engine: Engine) -> int:
    """The largest feedback id in the log, 0 when there is none
    (:meth:`EventLog.last_feedback_id`)."""
    return _log(engine).last_feedback_id()


def batches(
    engine: Engine,
    after_id: int,
    batch_size: int,
    *,
    until_id: int | None = None,
    with_context: bool = False,
) -> Iterator[list[TrainingEvent]]:
    """Events with ``after_id < feedback_id <= until_id``, oldest first, ``batch_size`` at a time
    (:meth:`EventLog.training_batches`)."""
    return _log(engine).training_batches(
        after_id, batch_size, until_id=until_id, with_context=with_context
    )


def recent(engine: Engine, n: int, *, with_context: bool = True) -> list[TrainingEvent]:
    """The last ``n`` events of the log, oldest first: the evaluation window of promotion
    (:meth:`EventLog.latest_training_events`)."""
    return _log(engine).latest_training_events(n, with_context=with_context)


def rewards_by_policy_version(engine: Engine, versions: list[str]) -> dict[str, list[float]]:
    """Per-decision rewards of the decisions stamped with each ``policy_version`` (A/B test;
    :meth:`EventLog.rewards_by_policy_version`)."""
    return _log(engine).rewards_by_policy_version(versions)
