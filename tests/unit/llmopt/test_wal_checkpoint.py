"""WAL checkpoints off the commit path: the group-commit event log on a SQLite file turns
SQLite's automatic checkpoint off and checkpoints on its own thread instead."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from llmopt.event_log import EventLog
from llmopt.schemas import Decision, RequestContext
from llmopt.wal_checkpoint import WalCheckpointer


def _autocheckpoint(log: EventLog) -> int:
    with log.engine.connect() as conn:
        return int(conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one())


def _decide(log: EventLog, n: int) -> None:
    with log.deferred_writes() as writes:
        for _ in range(n):
            d = Decision(model="m", propensity=1.0, policy_name="t")
            log.record_decision(d, RequestContext(tenant="acme"), features={"x": 1.0})
    writes.wait()


def test_the_group_commit_log_checkpoints_on_its_own_thread(tmp_path: Path) -> None:
    log = EventLog(f"sqlite:///{tmp_path / 'e.db'}", group_commit=True)
    assert log.checkpointer is not None
    assert _autocheckpoint(log) == 0  # no commit pays for a checkpoint
    _decide(log, 50)
    busy, frames, done = log.checkpointer.checkpoint()
    assert busy == 0 and frames > 0 and done == frames  # nothing left in the log
    assert log.counts()["decisions"] == 50
    thread = log.checkpointer._thread
    log.close()
    assert not thread.is_alive()


def test_the_thread_keeps_the_log_checkpointed_while_writes_go_on(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        conn.exec_driver_sql("CREATE TABLE t (x BLOB)")
    ck = WalCheckpointer(engine, interval_s=0.02)
    for _ in range(20):
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (randomblob(20000))")
    deadline = time.monotonic() + 10
    while ck.runs < 3 and time.monotonic() < deadline:  # the writes are over: let it catch up
        time.sleep(0.02)
    assert ck.runs >= 3
    assert ck.last is not None and ck.last[1] > 0 and ck.last[1] == ck.last[2]
    ck.close()
    engine.dispose()
    with engine.connect() as conn:  # after close, new connections checkpoint as SQLite does
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() == 1000


@pytest.mark.parametrize("url", ["sqlite://", None])
def test_no_thread_without_group_commit_or_in_memory(tmp_path: Path, url: str | None) -> None:
    group = url is not None  # in memory with group commit; a file without it
    log = EventLog(url or f"sqlite:///{tmp_path / 'e.db'}", group_commit=group)
    assert log.checkpointer is None
    if url is None:
        assert _autocheckpoint(log) == 1000  # SQLite's default, untouched
    log.close()


def test_a_bad_interval_is_refused(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(ValueError, match="interval_s"):
        WalCheckpointer(engine, interval_s=0)
