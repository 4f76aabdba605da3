"""Serving state shared by every worker and replica through Redis: budgets, breakers, rate limits.

``LLMOPT_SERVING_SHARED_STATE=redis`` (with ``LLMOPT_REDIS_URL``) replaces the per-process
guards of :mod:`serving.guards` by their twins here, with the same interface (they subclass
them):

- :class:`RedisBudgetLedger`: a tenant's spend of the UTC day is one integer counter in
  nano-USD (``<prefix>budget:<day>:<tenant>``, expiring a day after its day), and every
  reservation a key of its own (``<prefix>reservation:<decision id>``, with a TTL) holding its
  amount and its counter. :meth:`~RedisBudgetLedger.try_reserve` is one Lua script, *add if
  spent + cost <= budget, else refuse*, so concurrent workers can never both commit the last of
  a budget: reserved spend never exceeds the budget.
  :meth:`~RedisBudgetLedger.settle` is another: it deletes the reservation and moves the counter
  by ``actual - reserved`` in one step, so a feedback settles exactly once whichever worker
  receives it (a second settle finds no reservation: ignored).
- :class:`RedisCircuitBreaker`: per model, a capped list of its last outcomes and, in one sorted
  set, the time until which it is open (the state machine of
  :class:`serving.guards.CircuitBreaker`, run by one Lua script per outcome on the Redis
  server's clock, the same for every replica). :meth:`~RedisCircuitBreaker.blocked` is on the
  decision path, so it is cached for ``cache_s`` (0.5 s): a model opened by another worker is
  left out here within 0.5 s plus one round trip; one opened by this worker's own feedback,
  at once.
- Keys' own daily budgets (:mod:`serving.key_limits`): a second :class:`RedisBudgetLedger`
  under ``<prefix>keys:``, its "tenants" the keys' digests.
- :class:`RedisTokenBucket`: the HTTP rate limit per key as GCRA (one timestamp per key, one Lua
  script on the server's clock), the same limit as :class:`serving.guards.TokenBucket` but
  counted over every worker and replica.
- The gateway's conversation affinity, one key per conversation with a TTL:
  :class:`serving.affinity.RedisConversationAffinity` (on this module's client and health).

**Redis down.** Every call goes through :class:`RedisHealth`: a Redis error (connection refused,
0.25 s timeout) logs one warning, marks the shared state down, and the call is answered by the
inherited local object (this worker's own ledger, breaker or bucket, as in the embedded
profile); Redis is tried again after ``retry_s`` (5 s), so an outage costs at most one timeout
per 5 s. While down, ``degraded`` says why (the router adds it to every decision's notes,
``/readyz`` answers ``degraded``). Never a 500. The local ledger starts each tenant from the
spend last read from Redis; what this worker reserved and settled during the outage is added to
Redis when it answers again (its reservations still awaiting feedback become Redis reservations,
settled by whichever worker receives the feedback). The circuit breaker records every outcome
locally too, so its fallback starts from this worker's own recent outcomes.

Keys are derived inside the settle script: one Redis server (or one shard), not a cluster.

Examples
--------
The same answers with Redis up or down; here it is down (nothing listens on port 1):

>>> ledger = RedisBudgetLedger(redis_client("redis://127.0.0.1:1/0"), per_tenant={"acme": 1.0})
>>> ledger.try_reserve("acme", "d1", 0.75), ledger.try_reserve("acme", "d2", 0.5)
(True, False)
>>> ledger.shared, ledger.degraded.split(" since")[0]
(False, 'shared state unavailable')
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import TypeVar
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from llmopt.settings import Settings
from llmopt.types import ArmID, DecisionID, TenantID
from serving.guards import BudgetLedger, CircuitBreaker, TokenBucket

log = logging.getLogger("llmopt.serving")

T = TypeVar("T")

PREFIX = "llmopt:serving:"
"""Prefix of every key (tests use their own)."""
NANO = 1_000_000_000
"""Budgets are counted in integer nano-USD in Redis (exact sums; 2**53 nano-USD = 9e6 USD)."""
TIMEOUT_S = 0.25
"""Connect and read timeout of a Redis call (the decision path waits at most this once)."""
RETRY_S = 5.0
"""Seconds between attempts to use Redis again after it failed."""
BLOCKED_CACHE_S = 0.5
"""How long the shared breaker's blocked set is reused (its staleness bound)."""
RESERVATION_TTL_S = 2 * 86_400
"""Reservations awaiting feedback are forgotten after this (their predicted cost then stands)."""
BREAKER_TTL_S = 86_400
"""A model's outcome list expires after a day without feedback."""

_RESERVE = """
-- KEYS[1] the tenant's spend of the day (nano-USD), KEYS[2] the decision's reservation
-- ARGV[1] cost, ARGV[2] budget (-1: no check), ARGV[3] expiry of KEYS[1] (unix s), ARGV[4] TTL
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
if redis.call('EXISTS', KEYS[2]) == 1 then return {1, spent} end
local cap = tonumber(ARGV[2])
if cap >= 0 and spent + tonumber(ARGV[1]) > cap then return {0, spent} end
spent = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIREAT', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. KEYS[1], 'EX', ARGV[4])
return {1, spent}
"""

_SETTLE = """
-- KEYS[1] the reservation ('<nano-USD> <spend key>'); ARGV[1] actual cost (nano-USD)
-- 1: settled now; 0: no such reservation (settled already, expired, or never made)
local held = redis.call('GET', KEYS[1])
if not held then return 0 end
redis.call('DEL', KEYS[1])
local sp = string.find(held, ' ', 1, true)
local reserved = tonumber(string.sub(held, 1, sp - 1))
local key = string.sub(held, sp + 1)
if redis.call('EXISTS', key) == 1 then
  redis.call('INCRBY', key, string.format('%d', tonumber(ARGV[1]) - reserved))
end
return 1
"""

_ADD = """
-- KEYS[1] a tenant's spend of a day; ARGV[1] nano-USD, ARGV[2] expiry (unix s)
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIREAT', KEYS[1], ARGV[2])
return v
"""

_NOW = """
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

_RECORD = (
    """
-- KEYS[1] the model's last outcomes ('1' ok, '0' error), KEYS[2] open-until per model (zset)
-- ARGV[1] now (-1: the server's clock), ARGV[2] model, ARGV[3] '1'/'0', ARGV[4] window,
-- ARGV[5] min_calls, ARGV[6] error_rate, ARGV[7] cooldown_s, ARGV[8] TTL of KEYS[1],
-- ARGV[9] consecutive errors that open it (0: off)
"""
    + _NOW
    + """
redis.call('LPUSH', KEYS[1], ARGV[3])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[4]) - 1)
redis.call('EXPIRE', KEYS[1], ARGV[8])
local open_until = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[2]) or '0')
if open_until > now then
  -- late feedback on an open model: it stays open
elseif open_until > 0 then
  -- cooled down: half-open, this outcome is the probe
  if ARGV[3] == '1' then
    redis.call('DEL', KEYS[1])
    redis.call('LPUSH', KEYS[1], '1')
    redis.call('EXPIRE', KEYS[1], ARGV[8])
    open_until = 0
  else
    open_until = now + tonumber(ARGV[7])
  end
else
  local outcomes = redis.call('LRANGE', KEYS[1], 0, -1)
  local errors = 0
  for i = 1, #outcomes do
    if outcomes[i] == '0' then errors = errors + 1 end
  end
  local k = tonumber(ARGV[9])
  local in_a_row = k > 0 and #outcomes >= k
  if in_a_row then
    for i = 1, k do  -- newest first (LPUSH)
      if outcomes[i] ~= '0' then in_a_row = false end
    end
  end
  if in_a_row or (#outcomes >= tonumber(ARGV[5]) and errors / #outcomes >= tonumber(ARGV[6])) then
    open_until = now + tonumber(ARGV[7])
  end
end
if open_until > 0 then
  redis.call('ZADD', KEYS[2], string.format('%.6f', open_until), ARGV[2])
else
  redis.call('ZREM', KEYS[2], ARGV[2])
end
return {string.format('%.6f', open_until), string.format('%.6f', now)}
"""
)

_BLOCKED = (
    """
-- KEYS[1] open-until per model; ARGV[1] now (-1: the server's clock)
-- {open models, half-open models (cooled down, the next outcome decides)}
"""
    + _NOW
    + """
local t = string.format('%.6f', now)
return {redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. t, '+inf'),
        redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', t)}
"""
)

_GCRA = """
-- KEYS[1] the key's theoretical arrival time (unix us); ARGV[1] now (-1: the server's clock,
-- in s), ARGV[2] emission interval (us), ARGV[3] burst. 0: allowed, else the wait in us.
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = now * 1000000
end
local interval = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - now - tonumber(ARGV[3]) * interval
if wait > 0 then return math.ceil(wait) end
local ttl_ms = math.ceil((new_tat - now) / 1000) + 1
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
return 0
"""


def redacted(url: str) -> str:
    """A Redis URL without its credentials, for logs and notes.

    >>> redacted("redis://user:secret@cache:6380/2")
    'redis://cache:6380/2'
    """
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def redis_client(url: str, *, timeout_s: float = TIMEOUT_S) -> redis.Redis:
    """A client for shared state: short timeouts, one immediate retry (a pooled connection
    broken by a Redis restart is re-opened once), no backoff (the caller falls back instead)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1),
    )


class RedisHealth:
    """Whether Redis answers, shared by the objects of one process; routes each call.

    :meth:`call` runs the shared operation while Redis is up (or due for a retry) and the local
    one otherwise; the first failure logs a warning, the first success after it an info.

    >>> h = RedisHealth("redis://x:6379/0", retry_s=5, clock=lambda: 0.0)
    >>> def down() -> str:
    ...     raise redis.ConnectionError("refused")
    >>> h.call(down, lambda: "local"), h.up, h.usable()
    ('local', False, False)
    >>> h.degraded.split(" since")[0]
    'shared state unavailable'
    """

    def __init__(
        self, where: str, *, retry_s: float = RETRY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.where = redacted(where)
        self.retry_s = retry_s
        self._clock = clock
        self._lock = threading.Lock()
        self.up = True
        self.outages = 0
        """Times Redis stopped answering (an outage's number, for its local state)."""
        self.since: datetime | None = None
        self.error: str | None = None
        self._retry_at = 0.0

    def usable(self) -> bool:
        """Up, or down long enough to try again."""
        return self.up or self._clock() >= self._retry_at

    def failed(self, exc: BaseException) -> None:
        """Redis failed: local state until ``retry_s`` has passed."""
        with self._lock:
            self._retry_at = self._clock() + self.retry_s
            if not self.up:
                return
            self.up = False
            self.outages += 1
            self.since = datetime.now(UTC)
            self.error = f"{type(exc).__name__}: {exc}"
        log.warning(
            "shared state: Redis at %s does not answer (%s); budgets, circuit breakers, rate "
            "limits and conversation affinity fall back to this worker's own state, Redis is "
            "retried every %.0f s",
            self.where,
            self.error,
            self.retry_s,
        )

    def succeeded(self) -> None:
        """Redis answered."""
        if self.up:
            return
        with self._lock:
            if self.up:
                return
            self.up = True
        log.warning("shared state: Redis at %s answers again; shared state in use", self.where)

    @property
    def degraded(self) -> str | None:
        """Why the shared state is not in use (None: it is)."""
        if self.up:
            return None
        since = self.since.isoformat(timespec="seconds") if self.since else "?"
        return (
            f"shared state unavailable since {since}: Redis at {self.where} does not answer "
            f"({self.error}); budgets, circuit breakers, rate limits and conversation affinity "
            "are this worker's own until it answers"
        )

    def call(self, shared: Callable[[], T], local: Callable[[], T]) -> T:
        """``shared()`` if Redis is usable and answers, else ``local()``."""
        if self.usable():
            try:
                out = shared()
            except redis.RedisError as exc:
                self.failed(exc)
            else:
                self.succeeded()
                return out
        return local()


def _nano(usd: float) -> int:
    return math.floor(usd * NANO + 0.5)


class RedisBudgetLedger(BudgetLedger):
    """:class:`serving.guards.BudgetLedger` whose spend lives in Redis (see the module docstring).

    Parameters
    ----------
    client
        Redis client (:func:`redis_client`).
    default_usd, per_tenant, now
        As for :class:`serving.guards.BudgetLedger` (every process must configure the same).
    prefix
        Key prefix.
    health
        Shared with the process's other shared objects (default: a fresh one).
    reservation_ttl_s
        How long a reservation waits for its feedback.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        default_usd: float | None = None,
        per_tenant: Mapping[TenantID, float] | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        prefix: str = PREFIX,
        health: RedisHealth | None = None,
        reservation_ttl_s: int = RESERVATION_TTL_S,
    ) -> None:
        super().__init__(default_usd=default_usd, per_tenant=per_tenant, now=now)
        self._r = client
        self.prefix = prefix
        self.health = health or RedisHealth(where(client))
        self.reservation_ttl_s = reservation_ttl_s
        self._reserve_script = client.register_script(_RESERVE)
        self._settle_script = client.register_script(_SETTLE)
        self._add_script = client.register_script(_ADD)
        self._last_spent: dict[TenantID, tuple[str, float]] = {}
        """Each tenant's spend as last read from Redis, with its day (seeds the fallback)."""
        self._seeded: set[TenantID] = set()
        self._outage_seen = 0
        self._outage_spend: dict[tuple[str, TenantID], float] = {}
        """This worker's reservations and settle deltas made while Redis was down."""
        self._outage_reserved: dict[DecisionID, tuple[str, TenantID, float]] = {}
        self._outage_settles: dict[DecisionID, float] = {}
        """Feedback received while Redis was down for reservations held in Redis."""

    # -- keys ------------------------------------------------------------------------------------
    def _today(self) -> str:
        return self._now().astimezone(UTC).date().isoformat()

    def spend_key(self, tenant: TenantID, day: str | None = None) -> str:
        """The key of the tenant's spend (nano-USD) of ``day`` (default: today, UTC)."""
        return f"{self.prefix}budget:{day or self._today()}:{tenant}"

    def reservation_key(self, decision_id: DecisionID) -> str:
        """The key of a decision's reservation."""
        return f"{self.prefix}reservation:{decision_id}"

    @staticmethod
    def _expire_at(day: str) -> int:
        """A day's counter lives until the end of the next UTC day."""
        start = datetime.combine(date.fromisoformat(day), datetime.min.time(), UTC)
        return int((start + timedelta(days=2)).timestamp())

    # -- state -----------------------------------------------------------------------------------
    @property
    def shared(self) -> bool:
        """True while Redis holds every worker's spend (the log follower adds nothing)."""
        return self.health.up

    @property
    def degraded(self) -> str | None:
        return self.health.degraded

    def spent(self, tenant: TenantID, day: str | None = None) -> float:
        """The tenant's spend of ``day`` (today) in Redis: settled + reserved (Redis errors
        raise: for checks and tests)."""
        raw = self._r.get(self.spend_key(tenant, day))
        return int(raw or 0) / NANO  # type: ignore[arg-type]

    def remaining(self, tenant: TenantID) -> float | None:
        cap = self.budget(tenant)
        if cap is None:
            return None

        def shared() -> float:
            self._flush_outage()
            day = self._today()
            raw = self._r.get(self.spend_key(tenant, day))
            spent = int(raw or 0)  # type: ignore[arg-type]
            self._last_spent[tenant] = (day, spent / NANO)
            # in the script's units: a cost that fits this fits the script's check exactly
            return (_nano(cap) - spent) / NANO

        return self.health.call(
            shared, lambda: self._local(tenant, lambda: BudgetLedger.remaining(self, tenant))
        )

    def try_reserve(self, tenant: TenantID, decision_id: DecisionID, usd: float) -> bool:
        cap = self.budget(tenant)
        if cap is None:
            return True
        return self.health.call(
            lambda: self._reserve(tenant, decision_id, usd, _nano(cap)),
            lambda: self._reserve_local(tenant, decision_id, usd, check=True),
        )

    def reserve(self, tenant: TenantID, decision_id: DecisionID, usd: float) -> None:
        if self.budget(tenant) is None:
            return
        self.health.call(
            lambda: self._reserve(tenant, decision_id, usd, -1),
            lambda: self._reserve_local(tenant, decision_id, usd, check=False),
        )

    def _reserve(self, tenant: TenantID, decision_id: DecisionID, usd: float, cap: int) -> bool:
        self._flush_outage()
        day = self._today()
        ok, spent = self._reserve_script(
            keys=[self.spend_key(tenant, day), self.reservation_key(decision_id)],
            args=[
                _nano(usd),
                cap,
                self._expire_at(day),
                self.reservation_ttl_s,
            ],
        )
        self._last_spent[tenant] = (day, int(spent) / NANO)
        return bool(ok)

    def settle(self, decision_id: DecisionID, actual_usd: float) -> None:
        def shared() -> None:
            self._flush_outage()
            self._settle_script(keys=[self.reservation_key(decision_id)], args=[_nano(actual_usd)])

        self.health.call(shared, lambda: self._settle_local(decision_id, actual_usd))

    def add(self, tenant: TenantID, usd: float, *, decided_at: datetime) -> None:
        """Count spend this ledger did not reserve: in Redis while it is up; while it is down,
        in the local ledger only (the router adds other workers' spend from the log then, and
        that spend is in Redis already: this call never retries Redis)."""
        if self.budget(tenant) is None:
            return
        day = decided_at.astimezone(UTC).date().isoformat()

        def shared() -> None:
            self._flush_outage()
            if day == self._today():
                self._add_script(
                    keys=[self.spend_key(tenant, day)], args=[_nano(usd), self._expire_at(day)]
                )

        def local() -> None:
            BudgetLedger.add(self, tenant, usd, decided_at=decided_at)

        if self.health.up:
            self.health.call(shared, local)
        else:
            local()

    # -- Redis down: this worker's own ledger --------------------------------------------------
    def _local(self, tenant: TenantID, op: Callable[[], T]) -> T:
        """Run a local operation, the tenant first seeded with its last spend read from Redis."""
        with self._lock:
            if self._outage_seen != self.health.outages:
                self._outage_seen = self.health.outages
                self._seeded.clear()
            if tenant not in self._seeded:
                self._seeded.add(tenant)
                self._roll()
                day, spent = self._last_spent.get(tenant, ("", 0.0))
                if day == self._day:
                    self._spent[tenant] = max(self._spent.get(tenant, 0.0), spent)
        return op()

    def _reserve_local(
        self, tenant: TenantID, decision_id: DecisionID, usd: float, *, check: bool
    ) -> bool:
        def op() -> bool:
            if check:
                ok = BudgetLedger.try_reserve(self, tenant, decision_id, usd)
            else:
                BudgetLedger.reserve(self, tenant, decision_id, usd)
                ok = True
            if ok:
                with self._lock:
                    key = (self._day, tenant)
                    self._outage_spend[key] = self._outage_spend.get(key, 0.0) + usd
                    self._outage_reserved[decision_id] = (self._day, tenant, usd)
            return ok

        return self._local(tenant, op)

    def _settle_local(self, decision_id: DecisionID, actual_usd: float) -> None:
        with self._lock:
            held = self._outage_reserved.pop(decision_id, None)
            if held is None:  # reserved in Redis: settled there when it answers again
                self._outage_settles[decision_id] = actual_usd
            else:
                day, tenant, usd = held
                key = (day, tenant)
                self._outage_spend[key] = self._outage_spend.get(key, 0.0) + actual_usd - usd
        BudgetLedger.settle(self, decision_id, actual_usd)

    def _flush_outage(self) -> None:
        """Add what this worker committed while Redis was down (once; before any shared call)."""
        if not (self._outage_spend or self._outage_reserved or self._outage_settles):
            return
        while True:
            with self._lock:
                if not self._outage_spend:
                    break
                (day, tenant), usd = self._outage_spend.popitem()
            try:
                self._add_script(
                    keys=[self.spend_key(tenant, day)], args=[_nano(usd), self._expire_at(day)]
                )
            except redis.RedisError:
                with self._lock:
                    key = (day, tenant)
                    self._outage_spend[key] = self._outage_spend.get(key, 0.0) + usd
                raise
        while True:  # reservations still awaiting feedback: settled by whichever worker gets it
            with self._lock:
                if not self._outage_reserved:
                    break
                decision_id, (day, tenant, usd) = self._outage_reserved.popitem()
            try:
                self._r.set(
                    self.reservation_key(decision_id),
                    f"{_nano(usd)} {self.spend_key(tenant, day)}",
                    ex=self.reservation_ttl_s,
                    nx=True,
                )
            except redis.RedisError:
                with self._lock:
                    self._outage_reserved[decision_id] = (day, tenant, usd)
                raise
        while True:
            with self._lock:
                if not self._outage_settles:
                    break
                decision_id, actual = self._outage_settles.popitem()
            try:
                self._settle_script(keys=[self.reservation_key(decision_id)], args=[_nano(actual)])
            except redis.RedisError:
                with self._lock:
                    self._outage_settles[decision_id] = actual
                raise
        log.info("shared state: this worker's spend during the Redis outage added to Redis")


def where(client: redis.Redis) -> str:
    """The client's server as a URL without credentials (for logs and notes)."""
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"


class RedisCircuitBreaker(CircuitBreaker):
    """:class:`serving.guards.CircuitBreaker` whose outcomes and open states live in Redis.

    Same parameters and semantics (closed, open for ``cooldown_s``, half-open: the next outcome
    closes or re-opens it), plus ``client``, ``prefix``, ``health``, ``cache_s`` (how long
    :meth:`blocked` reuses the open set read from Redis: the staleness bound of a breaker opened
    by another worker) and ``now`` (the shared clock in unix seconds; None: the Redis server's,
    the same for every replica). ``clock`` times the cache and the local fallback.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        window: int = 20,
        min_calls: int = 5,
        error_rate: float = 0.5,
        consecutive_errors: int = 5,
        cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] | None = None,
        prefix: str = PREFIX,
        health: RedisHealth | None = None,
        cache_s: float = BLOCKED_CACHE_S,
    ) -> None:
        super().__init__(
            window=window,
            min_calls=min_calls,
            error_rate=error_rate,
            consecutive_errors=consecutive_errors,
            cooldown_s=cooldown_s,
            clock=clock,
        )
        self._r = client
        self.prefix = prefix
        self.health = health or RedisHealth(where(client))
        self.cache_s = cache_s
        self._now = now
        self._record_script = client.register_script(_RECORD)
        self._blocked_script = client.register_script(_BLOCKED)
        self._open_key = f"{prefix}breaker:open"
        self._shared_open: frozenset[ArmID] = frozenset()
        self._shared_half: frozenset[ArmID] = frozenset()
        self._cache_until = -math.inf

    @property
    def shared(self) -> bool:
        """True while Redis holds every worker's outcomes (the log follower records nothing)."""
        return self.health.up

    @property
    def degraded(self) -> str | None:
        return self.health.degraded

    def _shared_now(self) -> float:
        return self._now() if self._now is not None else -1.0

    def record(self, model: ArmID, *, ok: bool) -> None:
        """Record one outcome in Redis (and locally: the fallback's own history)."""
        super().record(model, ok=ok)

        def shared() -> None:
            open_until, now = self._record_script(
                keys=[f"{self.prefix}breaker:outcomes:{model}", self._open_key],
                args=[
                    self._shared_now(),
                    model,
                    "1" if ok else "0",
                    self.window,
                    self.min_calls,
                    self.error_rate,
                    self.cooldown_s,
                    BREAKER_TTL_S,
                    self.consecutive_errors,
                ],
            )
            opened = float(open_until) > float(now)
            # this worker's own outcomes count at once; other workers' within cache_s
            self._shared_open = (
                self._shared_open | {model} if opened else self._shared_open - {model}
            )
            self._shared_half = self._shared_half - {model}

        self.health.call(shared, lambda: None)

    def blocked(self) -> frozenset[ArmID]:
        """Models open fleet-wide: read from Redis at most every ``cache_s`` seconds."""
        now = self._clock()
        if self.health.up and now < self._cache_until:
            return self._shared_open

        def shared() -> frozenset[ArmID]:
            opened, half = self._blocked_script(keys=[self._open_key], args=[self._shared_now()])
            self._shared_open = frozenset(m.decode() for m in opened)
            self._shared_half = frozenset(m.decode() for m in half)
            self._cache_until = now + self.cache_s
            return self._shared_open

        return self.health.call(shared, lambda: CircuitBreaker.blocked(self))

    def state(self, model: ArmID) -> str:
        """``closed``, ``open`` or ``half_open`` (fleet-wide while Redis answers)."""
        if model in self.blocked():
            return "open"
        if self.health.up:
            return "half_open" if model in self._shared_half else "closed"
        return super().state(model)


class RedisTokenBucket(TokenBucket):
    """:class:`serving.guards.TokenBucket` counted in Redis over every worker and replica (GCRA:
    one theoretical arrival time per key, ``<prefix>ratelimit:<key>``); same rate and burst.

    ``now`` is the shared clock in unix seconds (None: the Redis server's); ``clock`` times the
    local fallback.
    """

    def __init__(
        self,
        client: redis.Redis,
        rate: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] | None = None,
        prefix: str = PREFIX,
        health: RedisHealth | None = None,
    ) -> None:
        super().__init__(rate, burst, clock)
        self._r = client
        self.prefix = prefix
        self.health = health or RedisHealth(where(client))
        self._now = now
        self._script = client.register_script(_GCRA)
        self._interval_us = 1_000_000 / rate

    def take(self, key: str) -> float:
        """0 if allowed, else the seconds to wait."""

        def shared() -> float:
            wait_us = self._script(
                keys=[f"{self.prefix}ratelimit:{key}"],
                args=[self._now() if self._now is not None else -1, self._interval_us, self.burst],
            )
            return int(wait_us) / 1_000_000

        return self.health.call(shared, lambda: TokenBucket.take(self, key))


class SharedState:
    """One process's Redis client and health, and the shared guards built on them.

    :meth:`from_settings` is None unless ``serving_shared_state`` is ``redis``. Redis not
    answering at start-up is no error: the guards start on their local fallback (one warning)
    and use Redis once it answers.
    """

    def __init__(self, url: str, *, prefix: str = PREFIX, retry_s: float = RETRY_S) -> None:
        self.url = url
        self.prefix = prefix
        self.client = redis_client(url)
        self.health = RedisHealth(url, retry_s=retry_s)
        self.health.call(lambda: bool(self.client.ping()), lambda: False)

    @classmethod
    def from_settings(cls, settings: Settings) -> SharedState | None:
        """The shared state the settings ask for (None: ``local``)."""
        if settings.serving_shared_state != "redis":
            return None
        return cls(settings.redis_url, prefix=settings.serving_shared_state_prefix)

    def ledger(
        self,
        *,
        default_usd: float | None = None,
        per_tenant: Mapping[TenantID, float] | None = None,
        namespace: str = "",
    ) -> RedisBudgetLedger:
        """The shared budget ledger (``namespace``: a ledger of its own under
        ``<prefix><namespace>``, e.g. the keys' budgets, ``keys:``)."""
        return RedisBudgetLedger(
            self.client,
            default_usd=default_usd,
            per_tenant=per_tenant,
            prefix=self.prefix + namespace,
            health=self.health,
        )

    def breaker(self) -> RedisCircuitBreaker:
        """The shared circuit breaker (default thresholds)."""
        return RedisCircuitBreaker(self.client, prefix=self.prefix, health=self.health)

    def rate_limit(self, rate: float, burst: float) -> RedisTokenBucket:
        """The shared rate limit."""
        return RedisTokenBucket(self.client, rate, burst, prefix=self.prefix, health=self.health)

    @property
    def degraded(self) -> str | None:
        """Why the shared state is not in use (None: it is)."""
        return self.health.degraded

    def close(self) -> None:
        """Release the client's connections."""
        self.client.close()
