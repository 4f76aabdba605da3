"""Group commit: writes submitted by many requests, committed together by one writer thread.

A request that logs a decision hands the row to :class:`GroupCommit` and waits for its
:class:`~concurrent.futures.Future` before it answers, so the durability promise is unchanged
(an acknowledged decision is in the database, or in the spool). The writer takes whatever is
queued when it wakes and writes it in one transaction (one ``executemany``): no timer, so a
lone request waits for its own commit only, and under load the requests that arrive while a
commit runs share the next one. Per row, a group of 16 costs a third to a fifth of a
single-row transaction (SQLite and PostgreSQL; ``python -m bench.decide_profile`` and
``docs/benchmarks.md``).

:meth:`GroupCommit.submit_many` queues several items as one entry: the writer never splits
them between transactions (a ``/decide_batch`` batch is written whole, not in a group that
the writer happened to take while the batch was still being queued).

Why hand-written: it is a queue, a thread and a loop; SQLAlchemy has no group commit, and an
external queue would be a second moving part on the path of every decision.

Example
-------
>>> batches = []
>>> gc = GroupCommit(lambda rows: batches.append(list(rows)) or [None] * len(rows), name="doc")
>>> gc.submit("a").result(timeout=5), gc.submit("b").result(timeout=5)
(None, None)
>>> sorted(r for b in batches for r in b)
['a', 'b']
>>> gc.close()
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

log = logging.getLogger("llmopt.group_commit")

T = TypeVar("T")

Flush = Callable[[Sequence[T]], Sequence[BaseException | None]]
"""Writes a group; returns one entry per item: None (written) or the item's own error."""

_STOP = object()

_Entry = list[tuple[T, Future[None]]]
"""One queue entry: the items of one :meth:`GroupCommit.submit` or ``submit_many``, each with
its future; the writer never splits an entry between two groups."""


class GroupCommit(Generic[T]):
    """Commit submitted items in groups on one writer thread (started at the first submit).

    Parameters
    ----------
    flush
        Writes a group in one transaction and returns, per item, None or the error for that
        item (e.g. a duplicate key). An exception it raises fails the whole group.
    name
        The writer thread's name.
    max_group
        Most items per transaction.
    after
        Called on the writer thread after each group, once its waiters are woken (e.g. work
        that must not run inside a transaction, such as a WAL restart); its errors are logged.
    """

    def __init__(
        self,
        flush: Flush[T],
        *,
        name: str,
        max_group: int = 512,
        after: Callable[[], None] | None = None,
    ) -> None:
        self._flush = flush
        self._after = after
        self.name = name
        self.max_group = max_group
        self._queue: queue.SimpleQueue[_Entry[T] | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self.groups = 0
        """Transactions written so far."""
        self.items = 0
        """Items written so far (``items / groups`` is the mean group size)."""
        self._waiters: dict[Future[None], tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]
        self._waiters = {}
        self._waiters_lock = threading.Lock()

    def submit(self, item: T) -> Future[None]:
        """Queue ``item``; the future completes when its group is written (or failed)."""
        return self.submit_many([item])[0]

    def submit_many(self, items: Sequence[T]) -> list[Future[None]]:
        """Queue ``items`` together: they are written in one transaction, never split
        between two (with other items only while the group stays within ``max_group``; more
        items than ``max_group`` make a group of their own). One future per item.

        >>> groups = []
        >>> gc = GroupCommit(lambda rows: groups.append(list(rows)) or [None] * len(rows),
        ...                  name="doc", max_group=2)
        >>> [f.result(timeout=5) for f in gc.submit_many("abc")]
        [None, None, None]
        >>> groups
        [['a', 'b', 'c']]
        >>> gc.close()
        """
        if self._closed:
            raise RuntimeError(f"{self.name}: closed")
        entry: _Entry[T] = [(item, Future()) for item in items]
        if not entry:
            return []
        if self._thread is None:
            self._start()
        self._queue.put(entry)
        return [fut for _, fut in entry]

    def waiter(self, fut: Future[None]) -> asyncio.Future[None] | None:
        """An asyncio future of the running loop, done once ``fut`` (a :meth:`submit` future)
        is; None if it is done already. Then read ``fut.result()``.

        The writer wakes each event loop once per group, for all of the group's waiters on it,
        where ``asyncio.wrap_future`` costs a cross-thread wake-up (a write to the loop's
        self-pipe) and two more futures per item. Cancelling the returned future (the request
        was cancelled) leaves the write alone.
        """
        loop = asyncio.get_running_loop()
        with self._waiters_lock:
            if fut.done():
                return None
            waiting = self._waiters[fut] = (loop, loop.create_future())
        return waiting[1]

    def _wake(self, futures: list[Future[None]]) -> None:
        """Wake the asyncio waiters of ``futures`` (done): one call per event loop.

        The check for waiters is under the lock: a :meth:`waiter` that saw its future not done
        yet may still be registering (it holds the lock until it has), and a check outside the
        lock could miss it and leave that request waiting for ever.
        """
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        with self._waiters_lock:
            if not self._waiters:
                return
            for fut in futures:
                waiting = self._waiters.pop(fut, None)
                if waiting is not None:
                    by_loop.setdefault(waiting[0], []).append(waiting[1])
        for loop, waiters in by_loop.items():
            try:
                loop.call_soon_threadsafe(_release, waiters)
            except RuntimeError:  # that loop is closed: nobody waits there any more
                pass

    def on_writer(self) -> bool:
        """Whether the caller runs on the writer thread (that is, inside ``flush``)."""
        return self._thread is not None and threading.current_thread() is self._thread

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                t = threading.Thread(target=self._run, name=self.name, daemon=True)
                t.start()
                self._thread = t

    def _run(self) -> None:
        q = self._queue
        carried: _Entry[T] | None = None  # an entry that did not fit in the last group
        while True:
            first = carried if carried is not None else q.get()
            carried = None
            if first is _STOP:
                return
            group: _Entry[T] = first  # type: ignore[assignment]  # the entry's own list, extended
            stop = False
            while len(group) < self.max_group:
                try:
                    nxt = q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                entry: _Entry[T] = nxt  # type: ignore[assignment]
                if len(group) + len(entry) > self.max_group:
                    carried = entry  # whole, in the next group
                    break
                group += entry
            self._write(group)
            if self._after is not None:
                try:
                    self._after()
                except Exception:
                    log.exception("%s: after a group", self.name)
            if stop:
                return

    def _write(self, group: list[tuple[T, Future[None]]]) -> None:
        # Running from here on: a waiter that gives up (its request cancelled) can no longer
        # cancel the future, so setting its result below cannot fail and kill the writer. Its
        # item is written all the same (a decision made is logged, answered or not).
        waiting = [fut.set_running_or_notify_cancel() for _, fut in group]
        items = [item for item, _ in group]
        try:
            errors = list(self._flush(items))
            if len(errors) != len(items):
                got = f"{len(errors)} results for {len(items)} items"
                raise RuntimeError(f"{self.name}: the flush gave {got}")
        except BaseException as exc:  # the whole group failed: every waiter hears it
            log.debug("%s: group of %d failed: %r", self.name, len(items), exc)
            errors = [exc] * len(items)
        self.groups += 1
        self.items += len(items)
        for (_, fut), err, live in zip(group, errors, waiting, strict=True):
            if not live:  # cancelled before the writer took it
                continue
            if err is None:
                fut.set_result(None)
            else:
                fut.set_exception(err)
        self._wake([fut for _, fut in group])

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer (submits after this raise)."""
        self._closed = True
        t = self._thread
        if t is not None:
            self._queue.put(_STOP)
            t.join(timeout)
        while True:  # submitted after the stop (a race with close): refused, never left waiting
            try:
                late = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(late, list):
                for _, fut in late:
                    fut.set_exception(RuntimeError(f"{self.name}: closed"))
                self._wake([fut for _, fut in late])


def _release(waiters: list[asyncio.Future[None]]) -> None:
    """On the waiters' event loop: mark each done (its write's outcome is in its own future)."""
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
