"""``/decide_batch`` answers only once its decisions are durable: a batch whose commit fails, or
whose rows the writer no longer takes, is a 503 in the one error shape, never a 200 for
decisions that were not logged and never a 500. Fast path and BentoML's machinery alike (in a
module of its own: the fast path finds the one service alive)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import bentoml
import pytest
from starlette.testclient import TestClient

from tests.integration.serving.conftest import asgi_service

pytestmark = pytest.mark.integration

BATCH = {"requests": [{"tenant": "acme", "prompt": f"What is {i} + {i}?"} for i in range(5)]}


@pytest.fixture(params=["true", "false"], ids=["fast", "bentoml"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    with asgi_service(
        tmp_path, LLMOPT_SERVING_FAST_PATH=request.param, LLMOPT_SERVING_RATE_LIMIT_PER_S="0"
    ) as c:
        yield c


def _decisions_logged() -> int:
    log = bentoml.get_current_service().runtime.event_log
    return int(log.counts()["decisions"])


def test_a_batch_is_answered_once_durable(client: TestClient) -> None:
    before = _decisions_logged()
    r = client.post("/decide_batch", json=BATCH)
    assert r.status_code == 200
    ids = [d["decision_id"] for d in r.json()["decisions"]]
    assert len(ids) == 5
    assert _decisions_logged() == before + 5  # committed before the answer left


def test_a_failed_commit_is_a_503_not_a_200(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = bentoml.get_current_service().runtime.event_log.group
    assert group is not None

    def failing(items: Sequence[Any]) -> list[BaseException | None]:
        raise OSError("disk full")

    monkeypatch.setattr(group, "_flush", failing)  # the writer's transaction fails
    r = client.post("/decide_batch", json=BATCH)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "unavailable"
    assert "OSError" in r.json()["error"]["message"]


def test_a_writer_that_takes_no_rows_is_a_503(client: TestClient) -> None:
    group = bentoml.get_current_service().runtime.event_log.group
    assert group is not None
    group.close()  # submits raise from now on
    r = client.post("/decide_batch", json=BATCH)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "unavailable"
