"""Group commit: many submitters, one writer, per-item errors, nothing left waiting."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import pytest

from llmopt.group_commit import _STOP as _STOP_FOR_TEST
from llmopt.group_commit import GroupCommit


class SlowSink:
    """Writes groups slowly, so submitters pile up behind a running commit."""

    def __init__(self, delay_s: float = 0.002) -> None:
        self.delay_s = delay_s
        self.groups: list[list[int]] = []

    def __call__(self, items: Sequence[int]) -> list[BaseException | None]:
        time.sleep(self.delay_s)
        self.groups.append(list(items))
        return [ValueError(f"odd {i}") if i < 0 else None for i in items]


def test_concurrent_submitters_share_transactions_and_all_complete() -> None:
    sink = SlowSink()
    gc: GroupCommit[int] = GroupCommit(sink, name="t")

    def submit(base: int) -> None:
        for i in range(50):
            assert gc.submit(base + i).result(timeout=10) is None

    threads = [threading.Thread(target=submit, args=(1000 * k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    written = sorted(i for g in sink.groups for i in g)
    assert written == sorted(1000 * k + i for k in range(8) for i in range(50))
    assert gc.items == 400
    assert gc.groups < 400  # the point: some commits carried several requests' rows
    gc.close()


def test_an_item_error_fails_only_that_item() -> None:
    sink = SlowSink(delay_s=0.05)
    gc: GroupCommit[int] = GroupCommit(sink, name="t")
    first = gc.submit(1)  # the writer sleeps on this one; the next three queue up
    futs = [gc.submit(i) for i in (2, -3, 4)]
    first.result(timeout=5)
    assert futs[0].result(timeout=5) is None and futs[2].result(timeout=5) is None
    with pytest.raises(ValueError, match="odd -3"):
        futs[1].result(timeout=5)
    assert sorted(i for g in sink.groups for i in g) == [-3, 1, 2, 4]
    gc.close()


def test_a_failing_flush_fails_its_whole_group_and_the_writer_survives() -> None:
    calls = []

    def flush(items: Sequence[int]) -> list[BaseException | None]:
        calls.append(list(items))
        if len(calls) == 1:
            raise ConnectionError("database down")
        return [None] * len(items)

    gc: GroupCommit[int] = GroupCommit(flush, name="t")
    with pytest.raises(ConnectionError):
        gc.submit(1).result(timeout=5)
    assert gc.submit(2).result(timeout=5) is None  # the next group is written
    gc.close()


def test_close_writes_what_is_queued_and_refuses_later_submits() -> None:
    sink = SlowSink(delay_s=0.01)
    gc: GroupCommit[int] = GroupCommit(sink, name="t")
    futs = [gc.submit(i) for i in range(20)]
    gc.close()
    assert all(f.done() and f.exception() is None for f in futs)
    assert sorted(i for g in sink.groups for i in g) == list(range(20))
    with pytest.raises(RuntimeError, match="closed"):
        gc.submit(99)


def test_max_group_caps_a_transaction() -> None:
    sink = SlowSink(delay_s=0.02)
    gc: GroupCommit[int] = GroupCommit(sink, name="t", max_group=4)
    futs = [gc.submit(i) for i in range(13)]
    for f in futs:
        f.result(timeout=5)
    assert max(len(g) for g in sink.groups) <= 4
    gc.close()


def test_a_waiter_that_gives_up_never_stops_the_writer() -> None:
    """A request cancelled while it waits (client gone, timeout) cancels its future; the item
    is written all the same and the writer goes on with the next groups."""
    sink = SlowSink(delay_s=0.05)
    gc: GroupCommit[int] = GroupCommit(sink, name="t")
    first = gc.submit(1)  # the writer sleeps on this one
    gone = gc.submit(2)
    assert gone.cancel()  # still queued: cancellable
    first.result(timeout=5)
    assert gc.submit(3).result(timeout=5) is None  # the writer is alive
    assert sorted(i for g in sink.groups for i in g) == [1, 2, 3]
    gc.close()


def test_a_flush_with_the_wrong_number_of_results_fails_its_group_only() -> None:
    calls = []

    def flush(items: Sequence[int]) -> list[BaseException | None]:
        calls.append(list(items))
        return [] if len(calls) == 1 else [None] * len(items)

    gc: GroupCommit[int] = GroupCommit(flush, name="t")
    with pytest.raises(RuntimeError, match="results"):
        gc.submit(1).result(timeout=5)
    assert gc.submit(2).result(timeout=5) is None
    gc.close()


class CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts the wake-ups other threads ask of it."""

    def __init__(self) -> None:
        super().__init__()
        self.wakeups = 0

    def call_soon_threadsafe(self, *args: Any, **kwargs: Any) -> Any:
        self.wakeups += 1
        return super().call_soon_threadsafe(*args, **kwargs)


def test_asyncio_waiters_of_a_group_are_woken_once_per_loop() -> None:
    """Requests waiting on an event loop for items of one group are released together: one
    cross-thread wake-up for the group, where a wrapped future costs one per item. Each still
    gets its own item's outcome."""
    sink = SlowSink(delay_s=0.05)
    gc: GroupCommit[int] = GroupCommit(sink, name="t")
    loop = CountingLoop()

    async def main() -> list[str]:
        first = gc.submit(0)  # the writer sleeps on this one; the next six form one group
        futs = [gc.submit(i) for i in (1, 2, -3, 4, 5, 6)]

        async def wait(fut: Future[None]) -> str:
            waiter = gc.waiter(fut)
            assert waiter is not None
            await waiter
            try:
                fut.result()
            except ValueError as exc:
                return str(exc)
            return "ok"

        outcomes = await asyncio.gather(*(wait(f) for f in futs))
        first.result(timeout=5)
        return outcomes

    try:
        outcomes = loop.run_until_complete(main())
    finally:
        loop.close()
    assert outcomes == ["ok", "ok", "odd -3", "ok", "ok", "ok"]
    assert sum(len(g) for g in sink.groups) == 7 and len(sink.groups) <= 2  # [1, 6] or [7]
    assert loop.wakeups == 1  # the six waited items were in one group
    gc.close()


def test_a_done_item_needs_no_waiter_and_a_cancelled_waiter_leaves_its_write() -> None:
    sink = SlowSink(delay_s=0.05)
    gc: GroupCommit[int] = GroupCommit(sink, name="t")

    async def main() -> None:
        done = gc.submit(1)
        done.result(timeout=5)
        assert gc.waiter(done) is None  # nothing to wait for
        busy = gc.submit(2)  # the writer sleeps on this one
        fut = gc.submit(3)
        waiter = gc.waiter(fut)
        assert waiter is not None
        task = asyncio.ensure_future(waiter)
        await asyncio.sleep(0)
        task.cancel()  # the request went away
        assert fut.result(timeout=5) is None and busy.result(timeout=5) is None
        await asyncio.sleep(0.01)  # the writer's wake-up of a cancelled waiter is harmless

    asyncio.run(main())
    assert sorted(i for g in sink.groups for i in g) == [1, 2, 3]
    assert not gc._waiters  # nothing kept once the group is written
    gc.close()


def test_close_releases_asyncio_waiters_of_refused_items() -> None:
    """An item queued behind the stop is refused at close; its waiter is released too."""
    gc: GroupCommit[int] = GroupCommit(SlowSink(delay_s=0.0), name="t")

    async def main() -> None:
        late: Future[None] = Future()
        gc._queue.put(_STOP_FOR_TEST)  # the writer stops before the late item
        gc._queue.put([(9, late)])
        waiter = gc.waiter(late)
        assert waiter is not None
        await asyncio.to_thread(gc.close)
        await asyncio.wait_for(waiter, timeout=5)
        with pytest.raises(RuntimeError, match="closed"):
            late.result()

    gc.submit(1).result(timeout=5)  # the writer runs
    asyncio.run(main())


def test_a_waiter_registering_while_its_group_completes_is_still_woken() -> None:
    """The race that hung a gateway request now and then: the waiter sees its item not done,
    and before it has registered, the writer completes the item and wakes the waiters. The
    writer must see the registration (the check and the wake-up are under the waiters' lock)."""
    gc: GroupCommit[int] = GroupCommit(lambda items: [None] * len(items), name="t")
    fut: Future[None] = Future()
    fut.set_running_or_notify_cancel()  # the writer has taken it
    writer_done = threading.Event()

    def writer() -> None:  # the writer's end of a group: the result, then the wake-up
        fut.set_result(None)
        gc._wake([fut])
        writer_done.set()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        create = loop.create_future

        def create_while_the_writer_runs() -> asyncio.Future[Any]:
            threading.Thread(target=writer).start()
            writer_done.wait(0.3)  # fixed: the writer waits for this registration instead
            return create()

        loop.create_future = create_while_the_writer_runs  # type: ignore[method-assign]
        waiter = gc.waiter(fut)
        loop.create_future = create  # type: ignore[method-assign]
        assert waiter is not None
        await asyncio.wait_for(waiter, timeout=5)  # before the fix: a timeout

    asyncio.run(main())
    assert writer_done.wait(5) and not gc._waiters
    gc.close()


class GatedSink:
    """Holds its first group until released, so what is queued meanwhile piles up."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.groups: list[list[int]] = []

    def __call__(self, items: Sequence[int]) -> list[BaseException | None]:
        if not self.groups:
            self.entered.set()
            self.gate.wait(5)
        self.groups.append(list(items))
        return [None] * len(items)


def test_submit_many_is_never_split_between_transactions() -> None:
    """Items queued one by one are cut at ``max_group``; a ``submit_many`` entry never is: it
    goes whole into the next group that has room, or alone when it is larger than a group."""
    sink = GatedSink()
    gc: GroupCommit[int] = GroupCommit(sink, name="t", max_group=4)
    first = gc.submit(0)  # the writer holds this group; the rest queue behind it
    assert sink.entered.wait(5)
    singles = [gc.submit(i) for i in (1, 2)]
    batch = gc.submit_many([10, 11, 12])  # 2 + 3 > 4: into the next group, whole
    big = gc.submit_many(list(range(20, 26)))  # larger than a group: alone, whole
    last = gc.submit(99)
    sink.gate.set()
    for fut in [first, *singles, *batch, *big, last]:
        assert fut.result(timeout=5) is None
    assert sink.groups == [[0], [1, 2], [10, 11, 12], [20, 21, 22, 23, 24, 25], [99]]
    assert gc.groups == 5 and gc.items == 13
    assert gc.submit_many([]) == []
    gc.close()


def test_close_refuses_a_late_batch_item_by_item() -> None:
    gc: GroupCommit[int] = GroupCommit(SlowSink(delay_s=0.0), name="t")
    gc.submit(1).result(timeout=5)
    gc._queue.put(_STOP_FOR_TEST)
    late: list[tuple[int, Future[None]]] = [(7, Future()), (8, Future())]
    gc._queue.put(late)
    gc.close()
    for _, fut in late:
        with pytest.raises(RuntimeError, match="closed"):
            fut.result(timeout=1)
    with pytest.raises(RuntimeError, match="closed"):
        gc.submit_many([1])
