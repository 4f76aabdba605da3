"""Decisions written by the group writer: committed before the caller answers, grouped under
concurrency, duplicates refused one by one, spooled together while the database is down."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from llmopt.event_log import DuplicateDecisionError, EventLog
from llmopt.schemas import Decision, Feedback, RequestContext
from llmopt.spool import SpooledEventLog

CTX = RequestContext(tenant="acme", prompt="hello")


def decision(model: str = "m") -> Decision:
    return Decision(model=model, propensity=0.5, policy_name="t")


def test_a_write_outside_a_deferred_block_is_committed_on_return(tmp_path: Path) -> None:
    log = EventLog(f"sqlite:///{tmp_path / 'e.db'}", group_commit=True)
    d = decision()
    log.record_decision(d, CTX, features={"x": 1.0})
    assert log.get_decision(d.decision_id) is not None  # no wait needed
    assert log.record_feedback(Feedback(decision_id=d.decision_id, quality=1.0)).status == (
        "stored"
    )
    log.close()


def test_deferred_writes_are_committed_when_waited_for(tmp_path: Path) -> None:
    log = EventLog(f"sqlite:///{tmp_path / 'e.db'}", group_commit=True)
    ds = [decision() for _ in range(5)]
    with log.deferred_writes() as writes:
        for d in ds:
            log.record_decision(d, CTX, features={})
        with log.deferred_writes() as inner:  # nested: the outer block waits for it too
            extra = decision()
            log.record_decision(extra, CTX, features={})
    assert inner.wait() == 1
    assert writes.wait() == 6
    assert all(log.get_decision(d.decision_id) is not None for d in [*ds, extra])
    log.close()


def test_wait_async_lets_the_event_loop_run(tmp_path: Path) -> None:
    log = EventLog(f"sqlite:///{tmp_path / 'e.db'}", group_commit=True)

    async def one() -> str:
        d = decision()
        with log.deferred_writes() as writes:
            log.record_decision(d, CTX, features={})
        await writes.wait_async()
        return d.decision_id

    async def many() -> list[str]:
        return await asyncio.gather(*(one() for _ in range(40)))

    ids = asyncio.run(many())
    assert log.counts()["decisions"] == 40
    assert all(log.get_decision(i) is not None for i in ids)
    assert log.group is not None and log.group.groups < 40  # they shared commits
    log.close()


def test_without_group_commit_a_deferred_block_writes_at_once(tmp_path: Path) -> None:
    log = EventLog(f"sqlite:///{tmp_path / 'e.db'}")
    d = decision()
    with log.deferred_writes() as writes:
        log.record_decision(d, CTX, features={})
        assert log.get_decision(d.decision_id) is not None
    assert writes.wait() == 0


def test_concurrent_threads_all_land_once(tmp_path: Path) -> None:
    log = EventLog(f"sqlite:///{tmp_path / 'e.db'}", group_commit=True)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(50):
                log.record_decision(decision(), CTX, features={"x": 0.5})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert log.counts()["decisions"] == 300
    log.close()


def test_a_duplicate_in_a_group_is_refused_alone(tmp_path: Path) -> None:
    log = EventLog(f"sqlite:///{tmp_path / 'e.db'}", group_commit=True)
    dup = decision()
    log.record_decision(dup, CTX, features={})
    others = [decision() for _ in range(3)]
    with log.deferred_writes() as writes:
        log.record_decision(others[0], CTX, features={})
        log.record_decision(dup, CTX, features={})
        log.record_decision(others[1], CTX, features={})
        log.record_decision(others[2], CTX, features={})
    with pytest.raises(DuplicateDecisionError):
        writes.wait()
    for f in writes.futures:  # the others were written all the same
        f.exception(timeout=5)
    assert all(log.get_decision(d.decision_id) is not None for d in others)
    assert log.counts()["decisions"] == 4
    log.close()


def _down(tmp_path: Path, sqlite_outage: Any) -> tuple[SpooledEventLog, Any]:
    """A spooled group-commit log whose SQLite database is down (the outage started)."""
    db = tmp_path / "db"
    db.mkdir()
    log = SpooledEventLog(
        f"sqlite:///{db / 'events.db'}", spool_dir=tmp_path / "spool", group_commit=True
    )
    outage = sqlite_outage(db, log)
    outage.start()
    return log, outage


def test_a_group_that_finds_the_database_down_is_spooled_and_replayed(
    tmp_path: Path, sqlite_outage: Any
) -> None:
    log, outage = _down(tmp_path, sqlite_outage)
    ds = [decision() for _ in range(4)]
    with log.deferred_writes() as writes:
        for d in ds:
            log.record_decision(d, CTX, features={"x": 1.0})
    assert writes.wait() == 4  # acknowledged: in the spool
    assert log.spooled_records() == 4 and not log.available
    # feedback for them is joined from memory meanwhile
    fb = Feedback(decision_id=ds[0].decision_id, quality=0.9)
    assert log.record_feedback(fb, reward=0.5).status == "spooled"
    outage.end()
    assert log.replay() == 5
    assert log.counts() == {"decisions": 4, "feedback": 1}
    log.close()


def test_calls_queued_while_the_database_is_down_are_spooled_after_their_decisions(
    tmp_path: Path, sqlite_outage: Any
) -> None:
    """A gateway's call records share the decisions' group; down, both are spooled in order,
    the call is visible on the remembered decision at once and lands after it at replay."""
    log, outage = _down(tmp_path, sqlite_outage)
    d = decision()
    with log.deferred_writes() as writes:
        log.record_decision(d, CTX, features={})
    writes.wait()
    with log.deferred_writes() as writes:
        assert log.record_call(d.decision_id, {"latency_ms": 42.0})
    assert writes.wait() == 1  # acknowledged: in the spool
    assert log.spooled_records() == 2
    row = log.get_decision(d.decision_id)
    assert row is not None and row["context"]["call"] == {"latency_ms": 42.0}
    outage.end()
    assert log.replay() == 2
    row = log.get_decision(d.decision_id)
    assert row is not None and row["context"]["call"] == {"latency_ms": 42.0}
    log.close()


def test_a_cancelled_request_does_not_cancel_its_write(tmp_path: Path) -> None:
    log = EventLog(f"sqlite:///{tmp_path / 'e.db'}", group_commit=True)
    gate = threading.Event()  # the write waits for the cancel (else it may finish first)
    write_group = log._write_group

    def gated(rows: list[dict[str, Any]], calls: list[Any]) -> None:
        gate.wait(5)
        write_group(rows, calls)

    log._write_group = gated  # type: ignore[method-assign]

    async def cancelled_then_more() -> None:
        d = decision()
        with log.deferred_writes() as writes:
            log.record_decision(d, CTX, features={})
        task = asyncio.ensure_future(writes.wait_async())
        await asyncio.sleep(0)
        task.cancel()  # the client went away while its decision was being written
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()
        log.record_decision(decision(), CTX, features={})  # the writer still answers

    asyncio.run(cancelled_then_more())
    assert log.counts()["decisions"] == 2
    log.close()


@pytest.mark.parametrize("group_commit", [True, False])
def test_held_writes_wait_for_release_and_take_their_call_along(
    tmp_path: Path, group_commit: bool
) -> None:
    """``deferred_writes(hold=True)``: nothing is written until the release, which keeps each
    call in its own decision's context (as ``record_call`` would), one write per decision."""
    log = EventLog(f"sqlite:///{tmp_path / 'e.db'}", group_commit=group_commit)
    served, shadow = decision("a"), decision("b")
    with log.deferred_writes(hold=True) as writes:
        log.record_decision(served, CTX, features={"x": 1.0})
        log.record_decision(shadow, CTX, features={"x": 1.0})
    assert log.get_decision(served.decision_id) is None  # held back
    assert log.counts()["decisions"] == 0
    call = {"latency_ms": 12.5, "source": "gateway", "output_tokens": 7}
    writes.release({served.decision_id: call})
    assert writes.wait() == (2 if group_commit else 0)
    row = log.get_decision(served.decision_id)
    assert row is not None and row["context"]["call"] == call
    other = log.get_decision(shadow.decision_id)
    assert other is not None and "call" not in other["context"]
    if group_commit:
        assert log.group is not None and log.group.items == 2  # no second write for the call
    log.close()


def test_held_writes_are_written_by_a_wait_without_release(tmp_path: Path) -> None:
    log = EventLog(f"sqlite:///{tmp_path / 'e.db'}", group_commit=True)
    d = decision()
    with log.deferred_writes(hold=True) as writes:
        log.record_decision(d, CTX, features={})
        with log.deferred_writes(hold=True):  # nested: the outer block writes what it held
            inner = decision()
            log.record_decision(inner, CTX, features={})

    async def waited() -> int:
        return await writes.wait_async()

    assert asyncio.run(waited()) == 2
    assert log.get_decision(d.decision_id) is not None
    assert log.get_decision(inner.decision_id) is not None
    log.close()


def test_a_hold_ends_with_its_block(tmp_path: Path) -> None:
    log = EventLog(f"sqlite:///{tmp_path / 'e.db'}", group_commit=True)
    with log.deferred_writes(hold=True):
        pass
    d = decision()
    log.record_decision(d, CTX, features={})  # after the block: written at once
    assert log.get_decision(d.decision_id) is not None
    log.close()


def test_the_writer_keeps_one_sqlite_connection_between_groups(tmp_path: Path) -> None:
    """On a SQLite file the writer holds its connection (no checkout per group); a duplicate
    keeps it, a broken connection is replaced by the next group, and close releases it."""
    import sqlalchemy as sa  # noqa: PLC0415

    log = EventLog(f"sqlite:///{tmp_path / 'e.db'}", group_commit=True)
    checkouts: list[int] = []
    sa.event.listen(log.engine.pool, "checkout", lambda *_: checkouts.append(1))
    first = decision()
    for d in [first, *(decision() for _ in range(19))]:
        log.record_decision(d, CTX, features={})  # one group each
    assert log.group is not None and log.group.groups == 20
    assert len(checkouts) == 1
    with pytest.raises(DuplicateDecisionError):
        log.record_decision(first, CTX, features={})
    held = log._writer_conn
    assert held is not None and not held.closed  # a duplicate is no reason to reconnect
    held.invalidate()  # the connection breaks (as if the file's handle were lost)
    d = decision()
    log.record_decision(d, CTX, features={})
    assert log.get_decision(d.decision_id) is not None
    assert log._writer_conn is not None and log._writer_conn is not held
    log.close()
    assert log._writer_conn is None


@pytest.mark.parametrize("group_commit", [True, False])
def test_released_rows_are_written_in_one_transaction(tmp_path: Path, group_commit: bool) -> None:
    """A held batch (``/decide_batch``) is one entry of the writer's queue: more rows than
    a group holds (512) still land in one transaction, never split by a writer that woke while
    the batch was being queued."""
    log = EventLog(f"sqlite:///{tmp_path / 'e.db'}", group_commit=group_commit)
    transactions = []
    write_group = log._write_group

    def counted(rows: list[dict[str, Any]], calls: list[Any]) -> None:
        transactions.append(len(rows))
        write_group(rows, calls)

    log._write_group = counted  # type: ignore[method-assign]
    with log.deferred_writes(hold=True) as writes:
        for _ in range(600):
            log.record_decision(decision(), CTX, features={})
    writes.wait()
    assert transactions == [600]
    assert log.counts()["decisions"] == 600
    log.close()
