"""The gateway's attempts: the upstream call overlaps the decision's log write."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future

import pytest

from llmopt.event_log import PendingWrites
from serving.gateway import Attempt


def _attempt(writes: PendingWrites | None) -> Attempt:
    return Attempt(None, "m", "http://upstream/v1/chat/completions", {}, {}, {}, writes=writes)


def test_an_attempt_answers_only_once_its_decision_is_logged() -> None:
    async def run() -> list[str]:
        fut: Future[None] = Future()
        writes = PendingWrites()
        writes.futures.append(fut)
        a = _attempt(writes)
        seen: list[str] = []

        async def answer() -> None:
            await a.logged()
            seen.append("answered")

        task = asyncio.create_task(answer())
        await asyncio.sleep(0.05)
        seen.append("still committing")  # the upstream call runs meanwhile
        fut.set_result(None)  # the group commit wrote the decision
        await task
        await a.logged()  # once: later waits return at once
        assert a.writes is None
        return seen

    assert asyncio.run(run()) == ["still committing", "answered"]


def test_a_failed_decision_write_fails_the_answer() -> None:
    async def run() -> None:
        fut: Future[None] = Future()
        fut.set_exception(OSError("disk full"))
        writes = PendingWrites()
        writes.futures.append(fut)
        await _attempt(writes).logged()

    with pytest.raises(OSError, match="disk full"):
        asyncio.run(run())
