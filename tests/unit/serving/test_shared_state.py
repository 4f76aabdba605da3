"""Shared state in Redis (a real server at 127.0.0.1:6379, a key prefix per test): the budget
ledger's atomic reservation and exactly-once settle, day roll, the shared circuit breaker and
rate limit, the router on a shared ledger, and the local fallback while Redis is down.

The contention of several processes: ``tests/integration/serving/test_shared_state.py``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from llmopt.catalog import ModelCatalog, load_catalog
from llmopt.event_log import EventLog
from llmopt.schemas import Decision, Feedback, RequestContext
from llmopt.settings import Settings
from serving.guards import BudgetExceededError, BudgetLedger, CircuitBreaker, TokenBucket
from serving.health import readiness
from serving.router import Router
from serving.runtime import ServingRuntime
from serving.shared_state import (
    NANO,
    RedisBudgetLedger,
    RedisCircuitBreaker,
    RedisHealth,
    RedisTokenBucket,
    SharedState,
    redis_client,
)

pytestmark = pytest.mark.services

DEAD_URL = "redis://127.0.0.1:1/0"
"""Nothing listens on port 1: connection refused at once."""


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


class Clock:
    """A settable clock (monotonic seconds or a UTC datetime)."""

    def __init__(self, t: Any) -> None:
        self.t = t

    def __call__(self) -> Any:
        return self.t


def ledger(client: redis.Redis, prefix: str, budget: float = 1.0, **kw: Any) -> RedisBudgetLedger:
    return RedisBudgetLedger(client, per_tenant={"acme": budget}, prefix=prefix, **kw)


# -- budget ledger ----------------------------------------------------------------------------
def test_reserve_if_it_fits_and_settle_replaces_the_reservation_exactly_once(client, prefix):
    a, b = ledger(client, prefix), ledger(client, prefix)  # two workers
    assert a.shared and a.degraded is None
    assert a.try_reserve("acme", "d1", 0.75)
    assert b.remaining("acme") == pytest.approx(0.25)
    assert not b.try_reserve("acme", "d2", 0.5)  # does not fit: refused, nothing reserved
    assert a.remaining("acme") == pytest.approx(0.25)
    assert b.try_reserve("acme", "d3", 0.25)  # exactly what is left fits
    assert a.remaining("acme") == 0.0
    b.settle("d1", 0.1)  # another worker receives d1's feedback
    assert a.remaining("acme") == pytest.approx(0.65)
    a.settle("d1", 0.9)  # a second settle of d1, anywhere: ignored
    b.settle("d1", 0.2)
    assert a.spent("acme") == pytest.approx(0.35)
    b.settle("unknown", 5.0)  # an unknown decision: ignored
    assert a.remaining("acme") == pytest.approx(0.65)
    assert a.try_reserve("other", "d4", 1e9)  # tenants without a budget always fit
    assert a.remaining("other") is None


def test_reserving_the_same_decision_twice_counts_it_once(client, prefix):
    a = ledger(client, prefix)
    assert a.try_reserve("acme", "d1", 0.4) and a.try_reserve("acme", "d1", 0.4)
    a.reserve("acme", "d1", 0.4)
    assert a.spent("acme") == pytest.approx(0.4)


def test_spend_is_counted_in_exact_nano_usd(client, prefix):
    a = ledger(client, prefix, budget=1e-6)
    for i in range(10):
        assert a.try_reserve("acme", f"d{i}", 1e-7)  # 10 x 0.1 (floats: 0.9999999999999999)
    assert client.get(a.spend_key("acme")) == b"1000"
    assert a.remaining("acme") == 0.0
    assert not a.try_reserve("acme", "d10", 1e-9)


def test_each_utc_day_has_its_own_spend_and_keys_expire(client, prefix):
    today = datetime.now(UTC).date()  # (a counter of a day long gone would expire at once)
    day = Clock(datetime(today.year, today.month, today.day, 23, 59, tzinfo=UTC))
    a = ledger(client, prefix, now=day)
    assert a.try_reserve("acme", "d1", 0.9)
    ttl = client.ttl(a.reservation_key("d1"))
    assert 0 < ttl <= a.reservation_ttl_s
    expire_at = client.expiretime(a.spend_key("acme"))  # the end of the next UTC day
    assert expire_at == int((day.t + timedelta(minutes=1, days=1)).timestamp())
    day.t += timedelta(minutes=2)  # a new UTC day: the full budget again
    assert a.remaining("acme") == 1.0
    assert a.try_reserve("acme", "d2", 0.5)
    a.settle("d1", 0.2)  # yesterday's feedback moves yesterday's spend, not today's
    assert a.spent("acme") == pytest.approx(0.5)
    assert a.spent("acme", today.isoformat()) == pytest.approx(0.2)
    a.add("acme", 0.3, decided_at=day.t - timedelta(days=1))  # yesterday's: not counted
    a.add("acme", 0.1, decided_at=day.t)
    assert a.spent("acme") == pytest.approx(0.6)


def test_an_expired_reservation_is_not_settled(client, prefix):
    a = ledger(client, prefix, reservation_ttl_s=1)
    assert a.try_reserve("acme", "d1", 0.5)
    client.delete(a.reservation_key("d1"))  # what its TTL does after a second
    a.settle("d1", 0.1)
    assert a.spent("acme") == pytest.approx(0.5)  # the predicted cost stands


# -- router on a shared ledger ------------------------------------------------------------------
@pytest.fixture(scope="module")
def catalog() -> ModelCatalog:
    return load_catalog()


class RacedLedger(RedisBudgetLedger):
    """Another worker spends ``steal`` USD between this router's read and its reservation."""

    def __init__(self, *args: Any, other: RedisBudgetLedger, steal: list[float], **kw: Any):
        super().__init__(*args, **kw)
        self.other, self.steal = other, steal

    def try_reserve(self, tenant: str, decision_id: str, usd: float) -> bool:
        if self.steal:
            assert self.other.try_reserve(tenant, f"other-{decision_id}", self.steal.pop(0))
        return super().try_reserve(tenant, decision_id, usd)


def ctx(tenant: str = "acme") -> RequestContext:
    return RequestContext(tenant=tenant, prompt="What is 2 + 2?")


class Wants:
    """A policy that chooses ``model`` when it is offered, else the first model offered."""

    name = "wants"

    def __init__(self, model: str) -> None:
        self.model = model

    def pull(self, arm_ids: Sequence[str], context: Any = None) -> Decision:
        model = self.model if self.model in arm_ids else arm_ids[0]
        return Decision(model=model, propensity=1.0, policy_name=self.name)

    def update(self, arm_id: str, context: Any, reward: float) -> Wants:
        return self


def test_a_refused_reservation_decides_again_with_what_is_left(client, prefix, catalog):
    other = ledger(client, prefix, budget=0.01)
    mine = RacedLedger(client, per_tenant={"acme": 0.01}, prefix=prefix, other=other, steal=[])
    router = Router(catalog, EventLog("sqlite://"), ledger=mine)
    router.swap(champion=(Wants("gpt-4o"), "v1"))
    assert router.decide(ctx()).decision.model == "gpt-4o"  # ~0.0026 USD predicted: it fits
    mine.steal = [0.006]  # between this router's read and its reservation: 0.0014 left
    routed = router.decide(ctx())
    assert routed.decision.model != "gpt-4o"  # refused, decided again within what is left
    refused = [n for n in routed.decision.notes if "no longer fit" in n]
    assert len(refused) == 1 and "decided again with 0.001" in refused[0], refused
    assert mine.spent("acme") <= 0.01


def test_when_others_spend_everything_the_router_refuses_with_402(client, prefix, catalog):
    other = ledger(client, prefix, budget=0.001)
    mine = RacedLedger(client, per_tenant={"acme": 0.001}, prefix=prefix, other=other, steal=[])
    router = Router(catalog, EventLog("sqlite://"), ledger=mine)
    router.decide(ctx())
    left = mine.remaining("acme") or 0.0
    mine.steal = [left - 1e-7]  # leaves less than any model costs: refused, then nothing fits
    with pytest.raises(BudgetExceededError, match="daily budget"):
        router.decide(ctx())
    assert mine.spent("acme") == pytest.approx(0.001 - 1e-7)


def test_a_reservation_that_still_fits_after_others_spent_is_kept(client, prefix, catalog):
    other = ledger(client, prefix, budget=1.0)
    mine = RacedLedger(client, per_tenant={"acme": 1.0}, prefix=prefix, other=other, steal=[])
    router = Router(catalog, EventLog("sqlite://"), ledger=mine)
    cost = router.decide(ctx()).predicted_cost_usd or 0.0
    mine.steal = [0.1]
    routed = router.decide(ctx())
    assert mine.spent("acme") == pytest.approx(2 * cost + 0.1)
    assert not [n for n in routed.decision.notes if "no longer fit" in n]


def test_learning_from_the_log_adds_nothing_to_a_shared_ledger_or_breaker(client, prefix, catalog):
    log = EventLog("sqlite://")
    health = RedisHealth("redis://127.0.0.1:6379/0")
    worker_a = Router(
        catalog,
        log,
        ledger=ledger(client, prefix, health=health),
        breaker=RedisCircuitBreaker(client, prefix=prefix, health=health),
    )
    worker_b = Router(
        catalog,
        log,
        ledger=ledger(client, prefix, health=health),
        breaker=RedisCircuitBreaker(client, prefix=prefix, health=health),
    )
    for _ in range(3):
        d = worker_a.decide(ctx()).decision
        worker_a.feedback(Feedback(decision_id=d.decision_id, quality=0.7, cost_usd=0.01))
    spent = worker_a.ledger.spent("acme")  # type: ignore[attr-defined]
    assert spent == pytest.approx(0.03)
    worker_b.learn_from_log(0, set())
    assert worker_b.ledger.spent("acme") == pytest.approx(spent)  # type: ignore[attr-defined]
    outcomes = client.llen(f"{prefix}breaker:outcomes:{d.model}")
    assert outcomes == 3  # recorded once each, by the worker that received the feedback


# -- circuit breaker ----------------------------------------------------------------------------
def test_a_breaker_opened_on_one_worker_is_seen_by_another_within_the_cache(client, prefix):
    shared_now, mono = Clock(1_000.0), Clock(0.0)
    kw: dict[str, Any] = {"min_calls": 2, "cooldown_s": 10, "prefix": prefix, "now": shared_now}
    a = RedisCircuitBreaker(client, clock=mono, **kw)
    b = RedisCircuitBreaker(client, clock=mono, cache_s=0.5, **kw)
    assert b.blocked() == frozenset()  # read and cached for 0.5 s
    a.record("m", ok=False)
    a.record("m", ok=False)
    assert a.blocked() == {"m"}  # its own outcomes: at once
    assert b.blocked() == frozenset()  # cached
    mono.t = 0.6
    assert b.blocked() == {"m"} and b.state("m") == "open"  # within the staleness bound
    shared_now.t += 11  # cooled down: half-open everywhere
    mono.t = 1.2
    assert a.blocked() == frozenset() and b.state("m") == "half_open"
    b.record("m", ok=False)  # a failed probe on b re-opens it
    mono.t = 1.8
    assert a.blocked() == {"m"}
    shared_now.t += 11
    a.record("m", ok=True)  # a successful probe closes it
    mono.t = 2.4
    assert b.blocked() == frozenset() and b.state("m") == "closed"
    assert client.llen(f"{prefix}breaker:outcomes:m") == 1  # history restarts after a probe


def test_the_shared_breaker_needs_min_calls_over_every_worker(client, prefix):
    mono = Clock(0.0)
    workers = [
        RedisCircuitBreaker(client, min_calls=4, error_rate=0.5, prefix=prefix, clock=mono)
        for _ in range(4)
    ]
    for w in workers[:3]:
        w.record("m", ok=False)
    assert workers[0].blocked() == frozenset()  # 3 outcomes, fewer than min_calls
    workers[3].record("m", ok=True)  # 3 of 4 failed, over every worker
    mono.t = 1.0
    assert all(w.blocked() == {"m"} for w in workers)


def test_the_shared_breaker_opens_after_consecutive_errors_over_every_worker(client, prefix):
    mono = Clock(0.0)
    a, b = (
        RedisCircuitBreaker(client, min_calls=5, consecutive_errors=3, prefix=prefix, clock=mono)
        for _ in range(2)
    )
    for _ in range(10):
        a.record("m", ok=True)
    a.record("m", ok=False)
    b.record("m", ok=False)
    assert a.blocked() == frozenset()  # 2 in a row, 2 of 12 failed
    b.record("m", ok=False)  # the third in a row, over both workers
    mono.t = 1.0
    assert a.blocked() == {"m"} and b.blocked() == {"m"}


def test_the_server_clock_is_used_by_default(client, prefix):
    b = RedisCircuitBreaker(client, min_calls=1, cooldown_s=30, prefix=prefix)
    b.record("m", ok=False)
    assert b.blocked() == {"m"}
    open_until = client.zscore(f"{prefix}breaker:open", "m")
    server_now = float(client.time()[0])
    assert open_until is not None and 25 < open_until - server_now <= 31


# -- rate limit ---------------------------------------------------------------------------------
def test_the_rate_limit_is_shared_by_two_workers(client, prefix):
    now = Clock(5_000.0)
    a = RedisTokenBucket(client, rate=1.0, burst=2.0, prefix=prefix, now=now)
    b = RedisTokenBucket(client, rate=1.0, burst=2.0, prefix=prefix, now=now)
    assert a.take("key") == 0.0 and b.take("key") == 0.0  # the burst, over both
    assert a.take("key") == pytest.approx(1.0) and b.take("key") == pytest.approx(1.0)
    assert a.take("other") == 0.0  # per key
    now.t += 1.0  # one token back, for one of them
    assert b.take("key") == 0.0 and a.take("key") == pytest.approx(1.0)
    now.t += 10.0
    assert [a.take("key"), b.take("key"), a.take("key")] == [0.0, 0.0, pytest.approx(1.0)]


def test_the_shared_rate_limit_matches_the_local_bucket(client, prefix):
    now = Clock(100.0)
    shared = RedisTokenBucket(client, rate=5.0, burst=10.0, prefix=prefix, now=now)
    local = TokenBucket(rate=5.0, burst=10.0, clock=now)
    for step in range(60):
        now.t += 0.07 * (step % 4)
        assert shared.take("k") == pytest.approx(local.take("k"), abs=1e-5)


# -- Redis down ----------------------------------------------------------------------------------
def test_redis_down_falls_back_to_local_state_with_a_note(caplog):
    health = RedisHealth(DEAD_URL)
    c = redis_client(DEAD_URL)
    led = RedisBudgetLedger(c, per_tenant={"acme": 1.0}, health=health)
    cb = RedisCircuitBreaker(c, min_calls=2, health=health)
    bucket = RedisTokenBucket(c, rate=1.0, burst=1.0, health=health)
    assert led.try_reserve("acme", "d1", 0.75) and not led.try_reserve("acme", "d2", 0.5)
    assert led.remaining("acme") == pytest.approx(0.25)
    assert not led.shared and not cb.shared
    cb.record("m", ok=False)
    cb.record("m", ok=False)
    assert cb.blocked() == {"m"} and cb.state("m") == "open"  # this worker's own breaker
    assert bucket.take("k") == 0.0 and bucket.take("k") > 0  # this worker's own bucket
    assert led.degraded is not None and "redis://127.0.0.1:1/0" in led.degraded
    assert led.degraded == cb.degraded
    warnings = [r for r in caplog.records if "does not answer" in r.getMessage()]
    assert len(warnings) == 1  # once per outage, not per call


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


def test_spend_during_an_outage_reaches_redis_when_it_answers_again(client, prefix, monkeypatch):
    health = RedisHealth("redis://127.0.0.1:6379/0", retry_s=0.0)
    a = ledger(client, prefix, health=health)
    b = ledger(client, prefix)  # another worker, whose Redis stays up
    assert a.try_reserve("acme", "before", 0.3)
    assert a.remaining("acme") == pytest.approx(0.7)  # remembered: seeds the fallback
    outage = Outage(client, monkeypatch)
    outage.start()
    assert a.remaining("acme") == pytest.approx(0.7)  # the local ledger starts where Redis was
    assert a.degraded is not None and not a.shared
    assert a.try_reserve("acme", "during", 0.2)
    assert not a.try_reserve("acme", "too-much", 0.6)
    a.settle("before", 0.1)  # reserved in Redis: settled there once it answers
    a.add("acme", 0.05, decided_at=datetime.now(UTC))  # another worker's, from the log
    assert a.remaining("acme") == pytest.approx(0.45)  # counted here, never pushed to Redis
    outage.end()
    a.add("acme", 0.05, decided_at=datetime.now(UTC))  # still down for the router: local only
    assert a.remaining("acme") == pytest.approx(1.0 - 0.1 - 0.2)
    assert a.shared and a.degraded is None
    assert b.spent("acme") == pytest.approx(0.3)  # every worker sees it
    # reserved on a's local ledger during the outage, its feedback reaches b after it: exact
    b.settle("during", 0.05)
    assert b.spent("acme") == pytest.approx(0.15)
    a.settle("during", 0.5)  # settled already: ignored
    a.settle("before", 0.9)  # settled already (during the outage): ignored
    assert b.spent("acme") == pytest.approx(0.15)


def test_the_breaker_falls_back_to_its_own_recent_outcomes(client, prefix, monkeypatch):
    health = RedisHealth("redis://127.0.0.1:6379/0", retry_s=0.0)
    cb = RedisCircuitBreaker(client, min_calls=3, prefix=prefix, health=health)
    cb.record("m", ok=False)
    cb.record("m", ok=False)
    outage = Outage(client, monkeypatch)
    outage.start()
    cb.record("m", ok=False)  # the third, locally: this worker's breaker opens
    assert cb.blocked() == {"m"} and cb.degraded is not None
    outage.end()
    assert cb.blocked() == frozenset()  # Redis saw two outcomes only
    assert cb.shared


def test_the_runtime_builds_shared_guards_and_degrades_without_redis(tmp_path: Path):
    def runtime(url: str) -> ServingRuntime:
        settings = Settings(
            home=tmp_path,
            serving_poll_s=0,
            serving_model_source="fresh",
            serving_features="off",
            serving_shared_state="redis",
            redis_url=url,
            serving_tenant_budgets={"acme": 0.5},
        )
        return ServingRuntime(
            settings, event_log=EventLog(f"sqlite:///{tmp_path / 'events.db'}"), background=False
        )

    rt = runtime(DEAD_URL)
    try:
        assert isinstance(rt.router.ledger, RedisBudgetLedger)
        assert isinstance(rt.router.breaker, RedisCircuitBreaker)
        routed = rt.router.decide(ctx())  # decided on the local ledger, and says so
        assert any(n.startswith("shared state unavailable") for n in routed.decision.notes)
        assert rt.router.ledger.remaining("acme") < 0.5
        ready = readiness(rt)
        assert ready.status == "degraded" and ready.http_status == 200
        assert any("shared state unavailable" in r for r in ready.reasons)
    finally:
        rt.close()
    local = ServingRuntime(
        Settings(home=tmp_path, serving_poll_s=0, serving_features="off"),
        event_log=EventLog("sqlite://"),
        background=False,
    )
    try:
        assert local.shared_state is None
        assert type(local.router.ledger) is BudgetLedger
        assert type(local.router.breaker) is CircuitBreaker
    finally:
        local.close()


def test_shared_state_from_settings(redis_url: str):
    assert SharedState.from_settings(Settings()) is None  # local: the default
    state = SharedState.from_settings(Settings(serving_shared_state="redis", redis_url=redis_url))
    assert state is not None and state.degraded is None
    state.close()
    assert NANO == 10**9


def test_the_settings_prefix_keeps_two_deployments_apart(redis_url, prefix):
    from llmopt.settings import Settings  # noqa: PLC0415
    from serving.shared_state import SharedState  # noqa: PLC0415

    mine, theirs = (
        SharedState.from_settings(
            Settings(
                serving_shared_state="redis",
                redis_url=redis_url,
                serving_shared_state_prefix=f"{prefix}{name}:",
            )
        )
        for name in ("a", "b")
    )
    assert mine is not None and theirs is not None
    a = mine.ledger(per_tenant={"acme": 1.0})
    b = theirs.ledger(per_tenant={"acme": 1.0})
    assert a.try_reserve("acme", "d1", 0.75)
    assert b.remaining("acme") == pytest.approx(1.0)  # the other deployment's budget is its own
    assert a.remaining("acme") == pytest.approx(0.25)
