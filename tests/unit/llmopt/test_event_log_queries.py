"""EventLog's reads: cursors, counts and windows of feedback ids, batches, A/B rewards."""

from __future__ import annotations

import pytest

from llmopt.event_log import EventLog, LogCursor, LogCursorError
from llmopt.schemas import Decision, Feedback, RequestContext


def _log(n: int, *, skip: tuple[int, ...] = ()) -> EventLog:
    """``n`` decisions, each with a feedback (ids 1..n) except those at the indexes ``skip``.

    Decision ``i`` is made by model ``m{i % 2}``, policy version ``v{i % 3}``; the feedback of
    every fifth decision has no reward.
    """
    log = EventLog("sqlite://")
    for i in range(n):
        d = Decision(
            model=f"m{i % 2}",
            propensity=0.5,
            policy_name="t",
            policy_version=f"v{i % 3}",
            scores={"m0": 0.1, "m1": 0.2},
        )
        log.record_decision(d, RequestContext(tenant="acme"), features={"x": float(i)})
        if i not in skip:
            reward = None if i % 5 == 0 else i / 100
            log.record_feedback(Feedback(decision_id=d.decision_id, quality=0.5), reward=reward)
    return log


def test_an_empty_log_has_no_cursor_count_window_or_batch() -> None:
    log = _log(0)
    assert log.last_feedback_id() == 0
    assert log.count_feedback() == 0 and log.count_feedback(0, 10) == 0
    assert log.cursor_before_latest(5) == 0
    assert list(log.training_batches(0, 10)) == []
    assert log.latest_training_events(5) == []
    assert log.rewards_by_policy_version(["v0"]) == {"v0": []}


def test_counts_and_events_between_two_feedback_ids() -> None:
    log = _log(10)
    assert log.last_feedback_id() == 10
    assert log.count_feedback() == 10 == log.counts()["feedback"]
    assert log.count_feedback(3) == 7 and log.count_feedback(3, 6) == 3
    assert log.count_feedback(6, 3) == 0
    assert [e.feedback_id for e in log.feedback_since(3, until_id=6)] == [4, 5, 6]
    assert [e.feedback_id for e in log.feedback_since(8)] == [9, 10]
    assert [e.feedback_id for e in log.feedback_since(0, until_id=6, limit=2)] == [1, 2]


def test_the_cursor_before_the_latest_n_feedback_ids() -> None:
    log = _log(10)
    assert log.cursor_before_latest(3) == 7  # (7, 10] holds the last 3
    assert log.cursor_before_latest(3, until_id=6) == 3
    assert log.cursor_before_latest(0) == 10
    assert log.cursor_before_latest(10) == 0 and log.cursor_before_latest(50) == 0
    assert log.count_feedback(log.cursor_before_latest(4, until_id=9), 9) == 4


def test_training_batches_page_through_a_window_oldest_first() -> None:
    log = _log(10)
    sizes = [len(b) for b in log.training_batches(2, 3)]
    assert sizes == [3, 3, 2]
    ids = [e.feedback_id for b in log.training_batches(2, 3, until_id=7) for e in b]
    assert ids == [3, 4, 5, 6, 7]
    (first,) = next(log.training_batches(0, 1))
    assert (first.model, first.features, first.arms, first.context) == (
        "m0",
        {"x": 0.0},
        ("m0",),
        {},
    )
    assert first.reward is None and first.policy_version == "v0"
    (ctx,) = next(log.training_batches(1, 1, with_context=True))
    assert ctx.arms == ("m0", "m1") and ctx.context["tenant"] == "acme"
    with pytest.raises(ValueError, match="batch_size"):
        next(log.training_batches(0, 0))


def test_latest_training_events_are_the_last_n_with_context() -> None:
    log = _log(10)
    assert [e.feedback_id for e in log.latest_training_events(3)] == [8, 9, 10]
    assert len(log.latest_training_events(50)) == 10
    assert [e.feedback_id for e in log.latest_training_events(0)] == [10]  # at least the last
    assert log.latest_training_events(2)[0].arms == ("m0", "m1")
    assert log.latest_training_events(2, with_context=False)[0].context == {}


def test_gaps_in_the_feedback_ids_change_no_window() -> None:
    log = _log(6)
    with log.engine.begin() as conn:  # feedback 3 and 4 gone: ids 1, 2, 5, 6
        conn.exec_driver_sql("DELETE FROM feedback WHERE feedback_id IN (3, 4)")
    assert log.last_feedback_id() == 6 and log.count_feedback(0, 6) == 4
    assert log.cursor_before_latest(2) == 2
    assert [e.feedback_id for e in log.latest_training_events(3)] == [2, 5, 6]


def test_rewards_by_policy_version_leave_out_missing_rewards() -> None:
    log = _log(9, skip=(8,))
    rewards = log.rewards_by_policy_version(["v0", "v1", "v9"])
    # v0: decisions 0, 3, 6 (0 has no reward); v1: 1, 4, 7; decision 8 (v2) has no feedback.
    assert rewards == {"v0": [0.03, 0.06], "v1": [0.01, 0.04, 0.07], "v9": []}


def test_a_log_over_an_open_engine_reads_the_same_tables() -> None:
    log = _log(4)
    shared = EventLog(log.engine, migrate=False)
    assert shared.engine is log.engine and shared.url == "sqlite://"
    assert shared.last_feedback_id() == 4 and shared.counts() == log.counts()


def test_the_log_cursor_on_sqlite_is_the_feedback_id() -> None:
    """SQLite serialises writers: every row's tx_id is 0, so cursor order is id order."""
    log = _log(10)
    assert log.stable_cursor() == LogCursor(0, 10)
    assert log.stable_cursor(LogCursor(0, 12)) == LogCursor(0, 12)  # never before its argument
    assert log.count_between(LogCursor(0, 3)) == 7
    assert log.count_between(LogCursor(0, 3), LogCursor(0, 6)) == 3
    pages = list(log.training_batches_after(LogCursor(0, 2), 3, until=LogCursor(0, 9)))
    assert [[e.feedback_id for e in b] for b in pages] == [[3, 4, 5], [6, 7, 8], [9]]
    assert pages[-1][-1].position == LogCursor(0, 9)
    (ctx,) = next(
        log.training_batches_after(LogCursor(), 1, until=LogCursor(0, 1), with_context=True)
    )
    assert ctx.arms == ("m0", "m1") and ctx.context["tenant"] == "acme"
    follow = log.feedback_after(LogCursor(0, 7))
    assert [e.position for e in follow] == [LogCursor(0, 8), LogCursor(0, 9), LogCursor(0, 10)]
    assert [e.feedback_id for e in log.feedback_after(LogCursor(), limit=2)] == [1, 2]
    with pytest.raises(ValueError, match="batch_size"):
        next(log.training_batches_after(LogCursor(), 0, until=LogCursor(0, 1)))


def test_a_cursor_is_written_and_read_as_text() -> None:
    assert LogCursor.parse(str(LogCursor(123456789012, 5))) == LogCursor(123456789012, 5)
    assert LogCursor.parse(" 42 ") == LogCursor(0, 42)
    with pytest.raises(LogCursorError, match="not a log cursor: 'a:b'"):
        LogCursor.parse("a:b")
