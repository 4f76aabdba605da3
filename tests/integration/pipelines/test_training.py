"""Incremental training: checkpoints make a crash and a rerun lose and double-count nothing."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from llmopt.event_log import EventLog
from llmopt.settings import Settings
from models.kinds import RECOMMENDED, make_policy
from pipelines.checkpoint import CheckpointStore
from pipelines.training import incremental_update, rebuild

pytestmark = pytest.mark.integration


def _fresh() -> tuple[object, int, int]:
    return make_policy(RECOMMENDED, seed=0), 0, 0


def test_crash_midway_then_rerun_learns_every_feedback_exactly_once(
    env: Settings, filled: Callable[..., int]
) -> None:
    total = filled(230)
    log = EventLog(env.event_log_url)
    store = CheckpointStore(log.engine)

    class Killed(RuntimeError):
        pass

    def crash_after_two(batch: int, cursor: int) -> None:
        if batch == 1:
            raise Killed(f"killed after feedback #{cursor}")

    with pytest.raises(Killed):
        incremental_update(
            log, store, name="inc", initial=_fresh, batch_size=50, on_batch=crash_after_two
        )
    saved = store.load("inc")
    assert saved is not None and saved.last_feedback_id == 100 and saved.n_events == 100

    resumed = incremental_update(log, store, name="inc", initial=_fresh, batch_size=50)
    assert (resumed.after_id, resumed.last_feedback_id) == (100, total)
    assert resumed.n_events == total - 100 and resumed.n_total == total
    assert resumed.policy.n_updates == total  # nothing lost, nothing learned twice

    # Same state as one uninterrupted run over the same feedback.
    other = CheckpointStore(log.engine)
    straight = incremental_update(log, other, name="straight", initial=_fresh, batch_size=50)
    assert straight.policy.to_dict() == resumed.policy.to_dict()

    # New feedback arrives: the next run learns only that.
    more = filled(40, seed=1)
    nxt = incremental_update(log, store, name="inc", initial=_fresh, batch_size=50)
    assert (nxt.after_id, nxt.n_events, nxt.n_total) == (total, more - total, more)
    again = incremental_update(log, store, name="inc", initial=_fresh, batch_size=50)
    assert again.n_events == 0 and again.last_feedback_id == more
    log.close()


def test_rebuild_learns_the_whole_history_and_a_quality_model(
    env: Settings, filled: Callable[..., int]
) -> None:
    total = filled(120)
    log = EventLog(env.event_log_url)
    result, quality = rebuild(log, make_policy(RECOMMENDED, seed=0), batch_size=40)
    assert result.n_events == total == result.policy.n_updates
    assert result.data_window == f"feedback (0, {total}]"
    assert sum(quality.counts.values()) == total
    assert log.last_feedback_id() == total
    assert sum(len(b) for b in log.training_batches(0, 7, until_id=50)) == 50
    log.close()
