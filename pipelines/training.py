"""Training logic of the flows, pure Python: incremental updates, rebuilds, the quality model.

The flows only orchestrate; what they run is here, testable without Prefect or MLflow.

- :func:`incremental_update` resumes from a :class:`~pipelines.checkpoint.Checkpoint`, learns the
  feedback after its cursor in batches, and checkpoints state and cursor together after each
  batch (see :mod:`pipelines.checkpoint` for why a crash then loses and double-counts nothing,
  and :class:`llmopt.event_log.LogCursor` for why feedback that commits late is not skipped).
- :func:`rebuild` warm-starts a fresh policy from the whole history with ``learn_many``.

The nightly flow used to refit a per-model quality regression beside the policy and log it to
MLflow, where nothing loaded it. It is gone: the policy is the decision's model of quality, and
doubly robust evaluation fits its own reward model on the window it evaluates
(:func:`models.ope.reward_matrix` with :class:`models.quality.QualityModel`).

What a policy learns from one event is decided once, in :func:`training_target`: the quality
for cost-aware policies (cost is known before a call; the learning loop does the same), the
reward otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from llmopt.event_log import EventLog, LogCursor, TrainingEvent
from models.base import BasePolicy
from models.state import Stateful
from pipelines.checkpoint import CheckpointStore
from pipelines.drift_replay import WARMUP_EVENTS, DriftReplay

DEFAULT_BATCH_SIZE = 5000


def training_target(policy: BasePolicy, event: TrainingEvent) -> float:
    """What ``policy`` learns from ``event``: quality if it is cost-aware, else the reward."""
    if policy.cost_aware or event.reward is None:
        return event.quality
    return event.reward


def _examples(
    policy: BasePolicy, events: Iterable[TrainingEvent]
) -> Iterator[tuple[str, dict[str, float], float]]:
    for e in events:
        yield e.model, e.features, training_target(policy, e)


@dataclass(frozen=True)
class TrainingResult:
    """What one training run learned: the data window, counts and timings."""

    policy: BasePolicy
    after_id: int
    """Feedback ids learned by this run are above this (exclusive)."""
    last_feedback_id: int
    """Largest feedback id the policy has learned. On PostgreSQL a smaller id may still be in
    flight and be learned later: resume from :attr:`cursor`, never from this."""
    n_events: int
    """Events learned by this run."""
    n_total: int
    """Events learned by the policy since it was created (across runs)."""
    n_batches: int
    learn_seconds: float
    """Time spent reading and learning events, checkpoints included (not the initial load)."""
    warm_start: dict[str, str] = field(default_factory=dict)
    """What the policy learnt before the events (an evaluation file), as registry tags."""
    after: LogCursor = LogCursor()
    """Log cursor the run started from (exclusive)."""
    cursor: LogCursor = LogCursor()
    """Log cursor after the run: every feedback up to it has been learned, and every feedback
    committed later lies after it (:class:`~llmopt.event_log.LogCursor`)."""
    n_waiting: int = 0
    """Feedback already committed but not yet final when the run started (an older write
    transaction was still in flight, PostgreSQL): the next run learns it."""
    drift_responses: int = 0
    """Models discounted by this run where serving's drift detectors fire
    (:mod:`pipelines.drift_replay`)."""

    @property
    def data_window(self) -> str:
        """The feedback ids this run learned lie in this range, e.g. ``feedback (120, 480]`` (on
        SQLite exactly those ids; on PostgreSQL, where ids commit out of order, the range may
        also hold ids learned by a neighbouring run)."""
        return f"feedback ({self.after_id}, {self.last_feedback_id}]"


def _as_cursor(value: int | LogCursor) -> LogCursor:
    """A cursor; a bare int is a feedback id (a SQLite-era cursor, where ``tx_id`` is 0)."""
    return value if isinstance(value, LogCursor) else LogCursor(0, int(value))


def incremental_update(
    log: EventLog,
    store: CheckpointStore,
    *,
    name: str,
    initial: Callable[[], tuple[BasePolicy, int | LogCursor, int]],
    batch_size: int = DEFAULT_BATCH_SIZE,
    until_id: int | LogCursor | None = None,
    on_batch: Callable[[int, LogCursor], None] | None = None,
    respond_to_drift: bool = False,
) -> TrainingResult:
    """Learn the feedback after the checkpoint ``name``, checkpointing after every batch.

    The events are read in the log's commit-safe order, up to :meth:`EventLog.stable_cursor`
    when the run starts: on PostgreSQL a feedback whose transaction commits after a larger id
    was learned is learned by a later run, never skipped (see :class:`LogCursor` for why this
    design). On SQLite the cursor is the largest feedback id learned.

    Parameters
    ----------
    log
        The event log.
    store
        Where checkpoints live.
    name
        Checkpoint name (one per training lineage).
    initial
        Called when there is no checkpoint yet: ``(policy, cursor, n_total)`` to start from (a
        bare int cursor is a feedback id).
    batch_size
        Events per batch (and per checkpoint).
    until_id
        High-water mark of this run (default, and at most: the log's stable cursor at the
        start; a bare int is a feedback id, exact on SQLite).
    on_batch
        Called after each batch is checkpointed with ``(batch_index, cursor)`` (progress; tests
        inject crashes here).
    respond_to_drift
        Discount a model where serving's drift detectors fire on the events, as the live
        policy does (:mod:`pipelines.drift_replay`; the detectors are warmed up on the
        events before the cursor).
    """
    cp = store.load(name)
    if cp is None:
        policy, start, n_total = initial()
        cursor = _as_cursor(start)
    else:
        policy = Stateful.from_dict(cp.state)
        cursor, n_total = cp.cursor, cp.n_events
    started = time.perf_counter()
    top = log.stable_cursor(cursor)
    n_waiting = log.count_between(top)
    if until_id is not None:
        top = max(cursor, min(top, _as_cursor(until_id)))
    after, n_events, n_batches = cursor, 0, 0
    low, high = cursor.feedback_id, cursor.feedback_id
    drift = _drift_replay(log, cursor) if respond_to_drift else None
    for batch in log.training_batches_after(cursor, batch_size, until=top):
        if drift is not None:
            drift.learn(policy, batch, lambda e: training_target(policy, e))
        else:
            policy.learn_many(_examples(policy, batch))
        cursor = batch[-1].position
        ids = [e.feedback_id for e in batch]
        low, high = min(low, min(ids) - 1), max(high, *ids)
        n_events += len(batch)
        n_total += len(batch)
        store.save(
            name,
            last_feedback_id=cursor.feedback_id,
            last_tx=cursor.tx_id,
            state=policy.to_dict(),
            n_events=n_total,
        )
        if on_batch is not None:
            on_batch(n_batches, cursor)
        n_batches += 1
    return TrainingResult(
        policy=policy,
        after_id=low,
        last_feedback_id=high,
        n_events=n_events,
        n_total=n_total,
        n_batches=n_batches,
        learn_seconds=time.perf_counter() - started,
        after=after,
        cursor=cursor,
        n_waiting=n_waiting,
        drift_responses=drift.responses if drift is not None else 0,
    )


def _drift_replay(log: EventLog, cursor: LogCursor) -> DriftReplay:
    """Detectors warmed up on the last events learned before ``cursor``."""
    if cursor.feedback_id <= 0:
        return DriftReplay()
    start = log.cursor_before_latest(WARMUP_EVENTS, until_id=cursor.feedback_id)
    return DriftReplay(
        e
        for b in log.training_batches(start, DEFAULT_BATCH_SIZE, until_id=cursor.feedback_id)
        for e in b
    )


def rebuild(
    log: EventLog,
    policy: BasePolicy,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    until_id: int | LogCursor | None = None,
) -> TrainingResult:
    """Warm-start ``policy`` (fresh) from the whole history.

    The features are those logged with each decision, i.e. the ones the router saw when it
    decided: point-in-time correct by construction. The history is read up to the log's stable
    cursor, so incremental training can continue from the result's :attr:`~TrainingResult.cursor`
    without skipping feedback still in flight.
    """
    started = time.perf_counter()
    top = log.stable_cursor()
    n_waiting = log.count_between(top)
    if until_id is not None:
        top = min(top, _as_cursor(until_id))
    n_events, n_batches, cursor, high = 0, 0, LogCursor(), 0
    for batch in log.training_batches_after(LogCursor(), batch_size, until=top):
        policy.learn_many(_examples(policy, batch))
        cursor = batch[-1].position
        high = max(high, *(e.feedback_id for e in batch))
        n_events += len(batch)
        n_batches += 1
    return TrainingResult(
        policy=policy,
        after_id=0,
        last_feedback_id=high,
        n_events=n_events,
        n_total=n_events,
        n_batches=n_batches,
        learn_seconds=time.perf_counter() - started,
        cursor=cursor,
        n_waiting=n_waiting,
    )
