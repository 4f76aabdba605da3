"""WAL checkpoints off the commit path: the event log's commits leave the write-ahead log alone,
the checkpointer's thread copies it back and the log starts over, nothing written is lost."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from llmopt.event_log import EventLog
from llmopt.schemas import Decision, RequestContext
from llmopt.wal_checkpoint import WalCheckpointer

CTX = RequestContext(tenant="acme", prompt="a prompt long enough to fill some pages " * 20)


def write(log: EventLog, n: int) -> None:
    for _ in range(n):  # one transaction each: ~a few pages of log apiece
        log.record_decision(
            Decision(model="m", propensity=0.5, policy_name="t"), CTX, features={"x": 1.0}
        )


def autocheckpoint(log: EventLog) -> int:
    with log.engine.connect() as conn:
        return int(conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one())


def wal_db(path: Path) -> Path:
    """A database file in WAL mode with one table ``t``."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")
    return path


def count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM decisions").fetchone()[0])


def test_commits_leave_the_log_to_the_checkpointer(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    log = EventLog(f"sqlite:///{path}", checkpoint_s=3600)  # the thread never fires here
    assert log.checkpointer is not None and autocheckpoint(log) == 0
    write(log, 5)
    log.checkpointer.checkpoint()
    size = path.stat().st_size
    write(log, 600)  # well past SQLite's own 1,000-page checkpoint
    assert path.stat().st_size == size, "a commit checkpointed: the database file grew"
    done = log.checkpointer.checkpoint()
    assert done.caught_up and done.log_pages > 1000
    assert path.stat().st_size > size  # the log's pages are now in the database file
    log.close()
    assert count(path) == 605


def test_without_the_thread_sqlite_checkpoints_in_its_commits(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    log = EventLog(f"sqlite:///{path}")  # checkpoint_s=0: as before
    assert log.checkpointer is None and autocheckpoint(log) == 1000
    write(log, 5)
    size = path.stat().st_size
    write(log, 600)
    assert path.stat().st_size > size
    log.close()


def test_the_thread_checkpoints_and_the_log_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    log = EventLog(f"sqlite:///{path}", checkpoint_s=0.05)
    cp = log.checkpointer
    assert cp is not None
    pages: list[int] = []
    for _ in range(6):
        write(log, 100)
        runs = cp.runs
        deadline = time.monotonic() + 10
        while cp.runs < runs + 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cp.last is not None and cp.last.caught_up
        pages.append(cp.last.log_pages)
    wal = path.with_name("e.db-wal").stat().st_size
    assert wal < 2 * max(pages) * 4096 + 65536, "the log kept growing: it never started over"
    log.close()
    assert count(path) == 600


def steady_writes(path: Path, restart_pages: int, seconds: float) -> tuple[int, int, int]:
    """Write without pause through the group writer (as served) for ``seconds`` while the
    thread checkpoints every 100 ms; the WAL file's size at the end and the decisions written."""
    log = EventLog(f"sqlite:///{path}", checkpoint_s=0.1, group_commit=True)
    assert log.checkpointer is not None
    log.checkpointer.restart_pages = restart_pages
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        write(log, 10)
        n += 10
    wal = path.with_name(path.name + "-wal").stat().st_size
    restarts = log.checkpointer.restarts
    log.close()
    assert count(path) == n
    return wal, n, restarts


def test_under_steady_writes_the_log_still_starts_over(tmp_path: Path) -> None:
    wal, n, restarts = steady_writes(tmp_path / "a.db", restart_pages=200, seconds=1.5)
    # the group writer restarted it between two groups, several times
    never, m, _ = steady_writes(tmp_path / "b.db", restart_pages=10**9, seconds=1.5)
    # without RESTART checkpoints the log only grows: every commit's pages stay in the file
    assert never > 0.5 * m * 4096
    assert restarts >= 3, f"{wal} bytes of log after {n} decisions: it never started over"
    assert wal < never / 2


def test_memory_and_other_engines_get_no_thread(tmp_path: Path) -> None:
    assert EventLog("sqlite://", checkpoint_s=0.5).checkpointer is None
    shared = EventLog(f"sqlite:///{tmp_path / 'e.db'}").engine
    assert EventLog(shared, checkpoint_s=0.5).checkpointer is None  # its owner's choice


def test_a_failed_checkpoint_is_retried_on_a_fresh_connection(tmp_path: Path) -> None:
    path = wal_db(tmp_path / "x.db")
    cp = WalCheckpointer(path, interval_s=0)
    assert cp.checkpoint().caught_up
    assert cp._conn is not None
    cp._conn.close()  # as if the connection broke
    with pytest.raises(sqlite3.Error):
        cp.checkpoint()
    assert cp.checkpoint().caught_up  # reconnected
    cp.close()


def test_a_connection_opened_before_wal_mode_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    cp = WalCheckpointer(path, interval_s=0)
    assert cp.checkpoint().log_pages == -1  # no WAL yet: this connection sees none
    wal_db(path)
    assert cp.checkpoint().log_pages >= 0  # reconnected, sees the log
    cp.close()


def test_a_writer_never_waits_for_a_running_checkpoint(tmp_path: Path) -> None:
    path = wal_db(tmp_path / "x.db")
    cp = WalCheckpointer(path, interval_s=0)
    cp.restart_due = True
    with cp._lock:  # the thread's passive checkpoint is running
        started = time.monotonic()
        assert cp.restart_if_due() is None
        assert time.monotonic() - started < 0.05
    assert cp.restart_due  # still due: the next group's writer runs it
    done = cp.restart_if_due()
    assert done is not None and not done.busy and not cp.restart_due and cp.restarts == 1
    cp.close()


def test_without_the_writer_the_thread_restarts_the_log_itself(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    WalCheckpointer.configure(conn)
    conn.execute("CREATE TABLE t (x)")
    cp = WalCheckpointer(path, interval_s=0.01, restart_pages=50, restart_on_thread=False)
    deadline = time.monotonic() + 10
    while cp.restarts == 0 and time.monotonic() < deadline:  # writes, but not through a
        conn.executemany("INSERT INTO t VALUES (?)", [("x" * 500,)] * 100)  # group writer
        time.sleep(0.005)
    assert cp.restarts > 0, "nobody restarted the log"
    cp.close()
    conn.close()
