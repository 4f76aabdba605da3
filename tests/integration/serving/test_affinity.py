"""Conversation affinity over processes' worth of state: a private Redis killed and restarted
under two workers' maps (each answers from its own, says so, and shares again once Redis
answers), and two in-process gateway services sharing one Redis: a conversation's turns keep
their model whichever service answers them.

The single-object behaviours: ``tests/unit/serving/test_affinity.py``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from llmopt.event_log import EventLog, decisions
from serving.affinity import RedisConversationAffinity, conversation_key
from serving.shared_state import RedisHealth, redis_client
from tests.integration.serving.conftest import asgi_service
from tests.integration.serving.test_fault_redis import PrivateRedis

pytestmark = [pytest.mark.integration, pytest.mark.services]

ASK = {"model": "auto", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.kill()


def test_redis_killed_and_restarted_under_two_workers(private_redis: PrivateRedis) -> None:
    url = f"redis://127.0.0.1:{private_redis.port}/0"
    a, b = (
        RedisConversationAffinity(redis_client(url), health=RedisHealth(url, retry_s=0.0))
        for _ in range(2)
    )
    a.pin("c1", "gpt-4o")
    assert b.model("c1") == "gpt-4o"

    private_redis.kill()
    started = time.monotonic()
    assert a.model("c1") == "gpt-4o"  # a pinned it: its own map answers, no exception
    assert b.model("c1") is None  # b never served it: decided again there
    b.pin("c1", "o3-mini")
    assert b.model("c1") == "o3-mini"
    assert time.monotonic() - started < 2.0  # refused at once, not a hang
    for pins in (a, b):
        assert not pins.shared and pins.degraded is not None
        assert pins.degraded.startswith("shared state unavailable") and url in pins.degraded

    private_redis.start()  # an empty Redis: the pins of before are gone
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (a.model("c2") is None and a.shared):
        time.sleep(0.1)
    assert a.shared and a.degraded is None
    a.pin("c2", "gpt-4o-mini")
    assert b.model("c2") == "gpt-4o-mini" and b.shared  # shared again
    assert b.model("c1") == "o3-mini"  # unknown to the new Redis: b's own pin ...
    b.pin("c1", "o3-mini")  # ... which its next answered turn puts back for every worker
    assert a.model("c1") == "o3-mini"


def propensity(home: Path, decision_id: str) -> float:
    log = EventLog(f"sqlite:///{home}/llmopt/events.db")
    with log.engine.connect() as conn:
        p = conn.execute(
            sa.select(decisions.c.propensity).where(decisions.c.decision_id == decision_id)
        ).scalar_one()
    log.close()
    return float(p)


def test_two_gateways_on_one_redis_keep_a_conversations_model(
    tmp_path: Path, upstream: str, redis_url: str, prefix: str
) -> None:
    env = {
        "LLMOPT_UPSTREAM_URL": upstream,
        "LLMOPT_GATEWAY_TIMEOUT_S": "5",
        "LLMOPT_SERVING_FEATURES": "off",
        "LLMOPT_SERVING_SHARED_STATE": "redis",
        "LLMOPT_REDIS_URL": redis_url,
        "LLMOPT_SERVING_SHARED_STATE_PREFIX": prefix,
    }
    store = redis.Redis.from_url(redis_url)
    with asgi_service(tmp_path / "a", **env) as a, asgi_service(tmp_path / "b", **env) as b:
        services = {"a": (a, tmp_path / "a"), "b": (b, tmp_path / "b")}
        for n in range(4):
            conversation = f"conv-{n}"
            models = []
            for turn, name in enumerate("abab"):  # the turns alternate between the services
                service, home = services[name]
                r = service.post(
                    "/v1/chat/completions", json={**ASK, "llmopt": {"conversation": conversation}}
                )
                assert r.status_code == 200, r.text
                models.append(r.headers["x-llmopt-model"])
                if turn > 0:  # pinned: the only model offered, whichever service decided
                    assert propensity(home, r.headers["x-llmopt-decision-id"]) == 1.0
            assert len(set(models)) == 1, (conversation, models)
            key = f"{prefix}affinity:{conversation_key('default', conversation)}"
            assert store.get(key) == models[0].encode()
            assert store.pttl(key) > 86_000_000
        # the same conversation id from another tenant is another conversation
        other = {**ASK, "llmopt": {"conversation": "conv-0", "tenant": "other"}}
        r = b.post("/v1/chat/completions", json=other)
        assert r.status_code == 200, r.text
        assert propensity(tmp_path / "b", r.headers["x-llmopt-decision-id"]) < 1.0
        assert a.get("/readyz").json() == {"status": "ok", "reasons": []}
    store.close()
