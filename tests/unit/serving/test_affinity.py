"""Conversation affinity: pinned, refreshed on use, bounded by count and TTL; shared through
Redis (a real server at 127.0.0.1:6379, a key prefix per test) by two workers, one GET per read
and one SET per pin, each worker's own map while Redis does not answer.

A private Redis killed and restarted, and two gateways sharing one: the integration tests
``tests/integration/serving/test_affinity.py``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from llmopt.event_log import EventLog
from llmopt.settings import Settings
from serving.affinity import (
    ConversationAffinity,
    RedisConversationAffinity,
    conversation_affinity,
    conversation_key,
)
from serving.health import readiness
from serving.runtime import ServingRuntime
from serving.shared_state import RedisHealth, SharedState, redis_client

DEAD_URL = "redis://127.0.0.1:1/0"
"""Nothing listens on port 1: connection refused at once."""


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_use_refreshes_and_the_oldest_is_forgotten() -> None:
    pins = ConversationAffinity(max_conversations=2)
    pins.pin("a", "m1")
    pins.pin("b", "m2")
    assert pins.model("a") == "m1"  # a is now the most recently used
    pins.pin("c", "m3")
    assert pins.model("b") is None and pins.model("a") == "m1" and len(pins) == 2
    pins.pin("a", "m4")  # a conversation moves to another model
    assert pins.model("a") == "m4"
    with pytest.raises(ValueError):
        ConversationAffinity(0)
    with pytest.raises(ValueError):
        ConversationAffinity(ttl_s=0)


def test_a_conversations_key_names_its_tenant_unambiguously() -> None:
    assert conversation_key("acme", "c1") != conversation_key("other", "c1")
    assert conversation_key("a:b", "c") != conversation_key("a", "b:c")


def test_a_conversation_is_forgotten_ttl_after_its_last_pin() -> None:
    clock = Clock()
    pins = ConversationAffinity(ttl_s=10, clock=clock)
    pins.pin("a", "m1")
    clock.t = 9.0
    assert pins.model("a") == "m1"  # a read does not extend it: only a turn's pin does
    pins.pin("a", "m1")
    clock.t = 18.0
    assert pins.model("a") == "m1"
    clock.t = 19.0
    assert pins.model("a") is None and len(pins) == 0


# -- shared through Redis -------------------------------------------------------------------------
@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis_client(redis_url)
    yield c
    c.close()


@pytest.fixture
def prefix(client: redis.Redis) -> Iterator[str]:
    """A key prefix of the test's own; its keys are deleted afterwards."""
    p = f"llmopt:test:{uuid.uuid4().hex[:12]}:"
    yield p
    keys = list(client.scan_iter(match=f"{p}*"))
    if keys:
        client.delete(*keys)


class Commands:
    """Counts a client's commands (round trips: no pipelines here)."""

    def __init__(self, client: redis.Redis, mp: pytest.MonkeyPatch) -> None:
        self.names: list[str] = []
        run = client.execute_command

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.names.append(str(args[0]))
            return run(*args, **kwargs)

        mp.setattr(client, "execute_command", counted)


@pytest.mark.services
def test_two_workers_see_each_others_pins_one_round_trip_each(
    client: redis.Redis, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = redis_client(redis_url)
    a = RedisConversationAffinity(client, prefix=prefix)
    b = RedisConversationAffinity(other, prefix=prefix)  # another worker (or replica)
    sent = Commands(client, monkeypatch)
    assert a.model("c1") is None
    a.pin("c1", "gpt-4o")
    assert sent.names == ["GET", "SET"]  # one round trip for the read, one for the pin
    assert b.model("c1") == "gpt-4o" and len(b) == 0  # from Redis, not b's own map
    b.pin("c1", "o3-mini")  # b's turn failed over: the conversation moves, for a too
    assert a.model("c1") == "o3-mini"
    assert a.shared and a.degraded is None
    assert client.get(f"{prefix}affinity:c1") == b"o3-mini"
    other.close()


@pytest.mark.services
def test_the_key_expires_ttl_after_the_last_pin(client: redis.Redis, prefix: str) -> None:
    pins = RedisConversationAffinity(client, prefix=prefix, ttl_s=0.3)
    pins.pin("c1", "gpt-4o")
    assert 0 < client.pttl(pins.key("c1")) <= 300
    time.sleep(0.2)
    pins.pin("c1", "gpt-4o")  # the next turn: 0.3 s again
    time.sleep(0.2)
    assert RedisConversationAffinity(client, prefix=prefix).model("c1") == "gpt-4o"
    time.sleep(0.25)
    assert client.exists(pins.key("c1")) == 0
    assert pins.model("c1") is None  # the worker's own copy expired with it
    day = RedisConversationAffinity(client, prefix=prefix)
    day.pin("c2", "gpt-4o")
    assert 86_390_000 < client.pttl(day.key("c2")) <= 86_400_000  # the default: 24 h


@pytest.mark.services
def test_prefixes_keep_two_deployments_apart(client: redis.Redis, prefix: str) -> None:
    mine = RedisConversationAffinity(client, prefix=f"{prefix}a:")
    theirs = RedisConversationAffinity(client, prefix=f"{prefix}b:")
    mine.pin("c1", "gpt-4o")
    theirs.pin("c1", "o3-mini")
    assert mine.model("c1") == "gpt-4o" and theirs.model("c1") == "o3-mini"
    assert RedisConversationAffinity(client, prefix=f"{prefix}c:").model("c1") is None


class Outage:
    """Makes a client's commands fail like a Redis that does not answer, and answer again."""

    def __init__(self, client: redis.Redis, mp: pytest.MonkeyPatch) -> None:
        self.client, self.mp = client, mp

    def start(self) -> None:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise redis.ConnectionError("Connection refused (simulated outage)")

        self.mp.setattr(self.client, "execute_command", refuse)

    def end(self) -> None:
        self.mp.undo()


@pytest.mark.services
def test_redis_down_answers_from_the_workers_own_map_and_recovers(
    client: redis.Redis, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    health = RedisHealth(redis_url, retry_s=0.0)
    a = RedisConversationAffinity(client, prefix=prefix, health=health)
    b = RedisConversationAffinity(redis_client(redis_url), prefix=prefix)
    a.pin("served-here", "gpt-4o")
    b.pin("served-there", "o3-mini")
    outage = Outage(client, monkeypatch)
    outage.start()
    assert a.model("served-here") == "gpt-4o"  # this worker's own pins: no exception
    assert a.model("served-there") is None  # another worker's: decided again here
    a.pin("during", "gpt-4o-mini")
    assert a.model("during") == "gpt-4o-mini"
    assert not a.shared and a.degraded is not None
    assert a.degraded.startswith("shared state unavailable")
    assert "conversation affinity" in a.degraded
    outage.end()
    assert a.model("served-there") == "o3-mini"  # Redis again
    assert a.shared and a.degraded is None
    assert b.model("during") is None  # pinned during the outage: not in Redis yet ...
    assert a.model("during") == "gpt-4o-mini"  # ... but its next turn here keeps the model
    a.pin("during", "gpt-4o-mini")  # ... and pins it in Redis for every worker
    assert b.model("during") == "gpt-4o-mini"


def test_redis_unreachable_from_the_start_is_no_error() -> None:
    pins = RedisConversationAffinity(redis_client(DEAD_URL))
    assert pins.model("c1") is None
    pins.pin("c1", "gpt-4o")
    assert pins.model("c1") == "gpt-4o" and not pins.shared
    assert pins.degraded is not None and "redis://127.0.0.1:1/0" in pins.degraded


def test_the_settings_choose_the_map() -> None:
    local = conversation_affinity(Settings(serving_affinity_ttl_s=60))
    assert type(local) is ConversationAffinity and local.ttl_s == 60
    state = SharedState(DEAD_URL, prefix="llmopt:test:x:")
    shared = conversation_affinity(Settings(serving_affinity_ttl_s=60), state)
    assert isinstance(shared, RedisConversationAffinity)
    assert shared.health is state.health and shared.prefix == "llmopt:test:x:"
    assert shared.key("c") == "llmopt:test:x:affinity:c" and shared.ttl_s == 60
    state.close()


def test_the_runtime_gives_the_gateway_the_shared_map(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        serving_poll_s=0,
        serving_model_source="fresh",
        serving_features="off",
        serving_shared_state="redis",
        redis_url=DEAD_URL,
        upstream_url="http://127.0.0.1:9/v1",
    )
    rt = ServingRuntime(settings, event_log=EventLog("sqlite://"), background=False)
    try:
        assert rt.gateway is not None and rt.shared_state is not None
        affinity = rt.gateway.affinity
        assert isinstance(affinity, RedisConversationAffinity)
        assert affinity.health is rt.shared_state.health  # one health: one degraded reason
        affinity.pin("c1", "gpt-4o")
        assert affinity.model("c1") == "gpt-4o"
        ready = readiness(rt)
        assert ready.status == "degraded" and ready.http_status == 200
    finally:
        rt.close()
    local = ServingRuntime(
        Settings(
            home=tmp_path,
            serving_poll_s=0,
            serving_features="off",
            upstream_url="http://127.0.0.1:9/v1",
        ),
        event_log=EventLog("sqlite://"),
        background=False,
    )
    try:
        assert local.gateway is not None
        assert type(local.gateway.affinity) is ConversationAffinity
    finally:
        local.close()
