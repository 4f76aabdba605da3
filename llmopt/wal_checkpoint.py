"""SQLite WAL checkpoints on a thread of their own, off the commit path.

In WAL mode, SQLite copies the write-ahead log back into the database file (a *checkpoint*)
whenever a commit finds the log longer than ``wal_autocheckpoint`` pages (1,000 by default).
That copy, with its ``fsync``, runs inside the commit that crossed the line: on the event log
at 500 decisions/s it came every ~0.3 s and held the commit ~8-10 ms, and every request
waiting for that commit (an answer waits for its decision's) with it; it was the served p99
(``docs/benchmarks.md``, "WAL checkpoints").

:class:`WalCheckpointer` turns the automatic checkpoint off for the connections it is given
(``PRAGMA wal_autocheckpoint=0``, per connection: other processes keep SQLite's default) and
runs ``PRAGMA wal_checkpoint(PASSIVE)`` every ``interval_s`` on a daemon thread with a
connection of its own. A passive checkpoint never waits for readers or writers and writers
never wait for it: commits go on appending to the log while it copies the bulk. The log must
also *start over*, or it grows for ever under steady writes: SQLite restarts it only for a
writer that begins while every page is copied back, a moment a checkpoint on another
connection never leaves. So once a passive checkpoint has caught up with a long enough log, a
``RESTART`` checkpoint copies the few pages committed meanwhile, holding writers off for that
short copy (and at most ``restart_wait_ms`` for readers to leave the log), and the next commit
starts the log over. The ``sqlite3`` module releases the GIL while SQLite works, so the copy
costs the event loop nothing.

Why hand-written: SQLite has no checkpoint thread of its own, and SQLAlchemy none either; it is
a thread, a timer and two PRAGMAs.

Example
-------
>>> import pathlib, sqlite3, tempfile
>>> path = pathlib.Path(tempfile.mkdtemp()) / "x.db"
>>> conn = sqlite3.connect(path)
>>> _ = conn.execute("PRAGMA journal_mode=WAL")
>>> WalCheckpointer.configure(conn)  # on every connection that commits
>>> with conn:
...     _ = conn.execute("CREATE TABLE t (x)")
...     _ = conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(1000)])
>>> cp = WalCheckpointer(path, interval_s=60)
>>> cp.checkpoint().caught_up
True
>>> cp.close(); conn.close()
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("llmopt.wal_checkpoint")


@dataclass(frozen=True)
class Checkpoint:
    """What one ``PRAGMA wal_checkpoint(PASSIVE)`` answered."""

    busy: bool
    """Another checkpoint (another process's) held the checkpoint lock."""
    log_pages: int
    """Pages in the write-ahead log (-1: the database is not in WAL mode)."""
    checkpointed_pages: int
    """Of those, pages now copied into the database file."""

    @property
    def caught_up(self) -> bool:
        """Every page of the log is in the database file: the next commit restarts the log."""
        return not self.busy and self.checkpointed_pages >= self.log_pages


def _lowest_priority() -> None:
    """Nice 19 for the calling thread (Linux: a thread's id is a process id to
    ``setpriority``): a checkpoint's ~10-15 ms of copying then runs in the gaps the event loop
    and the writer leave, not in their time slices. Elsewhere: nothing."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # no setpriority, or not allowed
        pass


class WalCheckpointer:
    """Checkpoint the SQLite database at ``path`` every ``interval_s`` on a daemon thread.

    Parameters
    ----------
    path
        The database file.
    interval_s
        Seconds between checkpoints; 0: none on a thread (:meth:`checkpoint` still works).
    restart_pages
        Once a passive checkpoint has caught up with a log at least this long, a ``RESTART``
        checkpoint copies the few pages committed meanwhile and makes the next commit start
        the log over. Without it the log would never start over under steady writes: SQLite
        restarts it only for a writer that begins while every page is copied back, and a
        checkpoint on another connection never leaves one that moment.
    restart_wait_ms
        The longest a ``RESTART`` holds new writers off waiting for a reader to leave the log.
    restart_on_thread
        Run the ``RESTART`` on this class's thread. False: it only sets :attr:`restart_due`,
        and the process's own writer calls :meth:`restart_if_due` between two of its
        transactions (the event log's group writer does): a writer that commits without pause
        leaves the thread's ``RESTART`` no moment to take the write lock, and the log would
        grow again. If the writer has not restarted it after :attr:`WRITER_GRACE` passive
        checkpoints (it stopped writing), the thread does.
    warn_pages
        A log this long that did not start over (a reader that never lets go) is logged at
        WARNING, at most once a minute.
    """

    WRITER_GRACE = 4
    """Passive checkpoints a due restart waits for the process's writer before the thread
    runs it (with ``restart_on_thread`` off)."""

    def __init__(
        self,
        path: str | Path,
        *,
        interval_s: float = 0.5,
        restart_pages: int = 1000,
        restart_wait_ms: float = 10.0,
        restart_on_thread: bool = True,
        warn_pages: int = 250_000,
    ) -> None:
        self.path = str(path)
        self.interval_s = interval_s
        self.restart_pages = restart_pages
        self.restart_wait_ms = restart_wait_ms
        self.restart_on_thread = restart_on_thread
        self.restart_due = False
        """A passive checkpoint caught up with a long log: :meth:`restart_if_due` restarts it."""
        self.restarts = 0
        """``RESTART`` checkpoints that made the log start over."""
        self._due_runs = 0
        self.warn_pages = warn_pages
        self.runs = 0
        """Checkpoints run so far."""
        self.last: Checkpoint | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._warned_at = float("-inf")
        self._thread: threading.Thread | None = None
        if interval_s > 0:
            self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
            self._thread.start()

    @staticmethod
    def configure(dbapi_conn: Any) -> None:
        """Turn SQLite's own checkpoint-on-commit off for ``dbapi_conn`` (a ``sqlite3``
        connection that commits to a database this class checkpoints)."""
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA wal_autocheckpoint=0")
        cur.close()

    def checkpoint(self, mode: Literal["PASSIVE", "RESTART"] = "PASSIVE") -> Checkpoint:
        """One checkpoint now (on the calling thread).

        ``PASSIVE`` copies what it can and waits for nobody. ``RESTART`` holds new writers
        off while it copies the rest and until every reader has left the log (at most
        ``restart_wait_ms``; then it gives up, busy), so the next commit starts the log over.
        """
        with self._lock:
            return self._checkpoint(mode)

    def _checkpoint(self, mode: Literal["PASSIVE", "RESTART"]) -> Checkpoint:
        """:meth:`checkpoint` with the lock held."""
        if self._conn is None:
            # isolation_level=None: no implicit transaction around the PRAGMA; the busy
            # timeout bounds how long a RESTART holds writers off waiting for readers
            self._conn = sqlite3.connect(
                self.path,
                timeout=self.restart_wait_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        try:
            busy, pages, done = self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error:
            self._conn.close()  # a fresh connection next time
            self._conn = None
            raise
        if pages < 0:  # this connection sees no WAL (it opened before the log was in WAL
            self._conn.close()  # mode): a fresh one next time
            self._conn = None
        self.runs += 1
        self.last = Checkpoint(bool(busy), int(pages), int(done))
        return self.last

    def _run(self) -> None:
        _lowest_priority()
        while not self._stop.wait(self.interval_s):
            try:
                done = self.checkpoint()
                if done.caught_up and done.log_pages >= self.restart_pages:
                    # due since how many passive checkpoints: a writer that stopped writing
                    # (feedback only) leaves it to this thread after a few
                    self._due_runs = self._due_runs + 1 if self.restart_due else 1
                    self.restart_due = True
                    if self.restart_on_thread or self._due_runs > self.WRITER_GRACE:
                        done = self.restart_if_due(wait=True) or done
            except sqlite3.Error as exc:
                log.warning("WAL checkpoint of %s failed: %r (retried)", self.path, exc)
                continue
            now = time.monotonic()
            if done.log_pages >= self.warn_pages and now - self._warned_at >= 60:
                self._warned_at = now
                log.warning(
                    "WAL of %s: %d pages and not started over (a long-running reader holds an "
                    "old snapshot?); it grows until that reader lets go",
                    self.path,
                    done.log_pages,
                )

    def restart_if_due(self, *, wait: bool = False) -> Checkpoint | None:
        """If :attr:`restart_due`, a ``RESTART`` checkpoint now (on the calling thread): the
        pages committed since the passive one are copied and the next commit starts the log
        over. Busy (a reader stayed longer than ``restart_wait_ms``): due again after the next
        passive checkpoint. Without ``wait``, a checkpoint already running (the thread's
        passive one) is not waited for: the restart stays due (a writer never stalls here)."""
        if not self.restart_due:
            return None
        if not self._lock.acquire(blocking=wait):
            return None
        try:
            self.restart_due, self._due_runs = False, 0
            done = self._checkpoint("RESTART")
        except sqlite3.Error as exc:
            log.warning("WAL restart of %s failed: %r (retried)", self.path, exc)
            return None
        finally:
            self._lock.release()
        if not done.busy:
            self.restarts += 1
        return done

    def close(self) -> None:
        """Stop the thread, run a last checkpoint and close the connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.checkpoint()
        except sqlite3.Error as exc:
            log.warning("last WAL checkpoint of %s failed: %r", self.path, exc)
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
