"""Training logic of the flows, pure Python: incremental updates, rebuilds, the quality model.

The flows only orchestrate; what they run is here, testable without Prefect or MLflow.

- :func:`incremental_update` resumes from a :class:`~pipelines.checkpoint.Checkpoint`, learns the
  feedback after its cursor in batches, and checkpoints state and cursor together after each
  batch (see :mod:`pipelines.checkpoint` for why a crash then loses and double-counts nothing).
- :func:`rebuild` warm-starts a fresh policy from the whole history with ``learn_many``.
- :func:`fit_quality_model` refits the per-model quality regression (the reward model of
  doubly robust evaluation). The nightly flow logs it to MLflow as ``quality_model.json``;
  **not wired yet:** nothing loads that artifact (issue 16 decides whether serving uses it).

What a policy learns from one event is decided once, in :func:`training_target`: the quality
for cost-aware policies (cost is known before a call; the learning loop does the same), the
reward otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from llmopt.event_log import EventLog, TrainingEvent
from models.base import BasePolicy
from models.quality import QualityModel
from models.state import Stateful
from pipelines.checkpoint import CheckpointStore

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
    """Cursor the run started from (exclusive)."""
    last_feedback_id: int
    """Cursor after the run: every feedback up to it has been learned."""
    n_events: int
    """Events learned by this run."""
    n_total: int
    """Events learned by the policy since it was created (across runs)."""
    n_batches: int
    learn_seconds: float
    """Time spent reading and learning events, checkpoints included (not the initial load)."""
    warm_start: dict[str, str] = field(default_factory=dict)
    """What the policy learnt before the events (an evaluation file), as registry tags."""

    @property
    def data_window(self) -> str:
        """The feedback ids this version has learned, e.g. ``feedback (120, 480]``."""
        return f"feedback ({self.after_id}, {self.last_feedback_id}]"


def incremental_update(
    log: EventLog,
    store: CheckpointStore,
    *,
    name: str,
    initial: Callable[[], tuple[BasePolicy, int, int]],
    batch_size: int = DEFAULT_BATCH_SIZE,
    until_id: int | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> TrainingResult:
    """Learn the feedback after the checkpoint ``name``, checkpointing after every batch.

    Parameters
    ----------
    log
        The event log.
    store
        Where checkpoints live.
    name
        Checkpoint name (one per training lineage).
    initial
        Called when there is no checkpoint yet: ``(policy, cursor, n_total)`` to start from.
    batch_size
        Events per batch (and per checkpoint).
    until_id
        High-water mark of this run (default: the log's largest feedback id at the start).
    on_batch
        Called after each batch is checkpointed with ``(batch_index, cursor)`` (progress; tests
        inject crashes here).
    """
    cp = store.load(name)
    if cp is None:
        policy, cursor, n_total = initial()
    else:
        policy = Stateful.from_dict(cp.state)
        cursor, n_total = cp.last_feedback_id, cp.n_events
    started = time.perf_counter()
    top = log.last_feedback_id() if until_id is None else until_id
    after, n_events, n_batches = cursor, 0, 0
    for batch in log.training_batches(cursor, batch_size, until_id=top):
        policy.learn_many(_examples(policy, batch))
        cursor = batch[-1].feedback_id
        n_events += len(batch)
        n_total += len(batch)
        store.save(name, last_feedback_id=cursor, state=policy.to_dict(), n_events=n_total)
        if on_batch is not None:
            on_batch(n_batches, cursor)
        n_batches += 1
    return TrainingResult(
        policy=policy,
        after_id=after,
        last_feedback_id=cursor,
        n_events=n_events,
        n_total=n_total,
        n_batches=n_batches,
        learn_seconds=time.perf_counter() - started,
    )


def rebuild(
    log: EventLog,
    policy: BasePolicy,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    until_id: int | None = None,
) -> tuple[TrainingResult, QualityModel]:
    """Warm-start ``policy`` (fresh) and a new :class:`QualityModel` from the whole history.

    The features are those logged with each decision, i.e. the ones the router saw when it
    decided: point-in-time correct by construction.
    """
    started = time.perf_counter()
    top = log.last_feedback_id() if until_id is None else until_id
    quality = QualityModel()
    n_events, n_batches, cursor = 0, 0, 0
    for batch in log.training_batches(0, batch_size, until_id=top):
        policy.learn_many(_examples(policy, batch))
        for e in batch:
            quality.learn_one(e.features, e.quality, arm=e.model)
        cursor = batch[-1].feedback_id
        n_events += len(batch)
        n_batches += 1
    result = TrainingResult(
        policy=policy,
        after_id=0,
        last_feedback_id=cursor,
        n_events=n_events,
        n_total=n_events,
        n_batches=n_batches,
        learn_seconds=time.perf_counter() - started,
    )
    return result, quality
