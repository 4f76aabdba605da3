"""Guards around every decision: per-model circuit breakers, per-tenant daily budgets, and the
token bucket of the HTTP rate limit.

All are plain, thread-safe objects of one worker process with an injectable clock, so tests
drive time by hand. Their Redis twins, shared by every worker and replica, are in
:mod:`serving.shared_state` (``LLMOPT_SERVING_SHARED_STATE=redis``); they have the same
interface and fall back to these when Redis does not answer.

Examples
--------
>>> t = [0.0]
>>> cb = CircuitBreaker(min_calls=2, error_rate=0.5, cooldown_s=10, clock=lambda: t[0])
>>> cb.record("m", ok=False); cb.record("m", ok=False)
>>> cb.blocked()
frozenset({'m'})
>>> t[0] = 11.0; cb.blocked()  # cooled down: half-open, probed by the next requests
frozenset()
>>> ledger = BudgetLedger(default_usd=1.0)
>>> ledger.remaining("acme")
1.0
>>> ledger.reserve("acme", "d1", 0.4); ledger.remaining("acme")
0.6
>>> ledger.settle("d1", 0.1); round(ledger.remaining("acme"), 6)
0.9
>>> ledger.try_reserve("acme", "d2", 0.95)  # does not fit in what is left: refused
False
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice

from llmopt.types import ArmID, DecisionID, TenantID


@dataclass
class _BreakerState:
    outcomes: deque[bool] = field(default_factory=lambda: deque(maxlen=20))
    open_until: float = 0.0
    half_open: bool = False


class CircuitBreaker:
    """Exclude a model whose live error rate is too high, for a cooldown, then probe it.

    Outcomes come from feedback (``error_kind`` set: a failure). A model opens when at least
    ``min_calls`` of its last ``window`` outcomes are known and their error rate reaches
    ``error_rate``, or when its last ``consecutive_errors`` outcomes all failed (Envoy's
    ``consecutive_5xx``: a model that starts failing every call after a long healthy history
    is out after that many calls, not after half its window); it stays excluded for
    ``cooldown_s``; then it is half-open: offered again, and the next outcome closes it
    (success) or re-opens it (failure).

    Parameters
    ----------
    window
        Outcomes remembered per model.
    min_calls
        Outcomes needed before the breaker may open.
    error_rate
        Error rate that opens the breaker.
    consecutive_errors
        Failures in a row that open the breaker whatever the window holds (0: off).
    cooldown_s
        How long an open model is excluded.
    clock
        Monotonic time source.
    """

    def __init__(
        self,
        *,
        window: int = 20,
        min_calls: int = 5,
        error_rate: float = 0.5,
        consecutive_errors: int = 5,
        cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.min_calls = min_calls
        self.error_rate = error_rate
        self.consecutive_errors = consecutive_errors
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._states: dict[ArmID, _BreakerState] = {}
        self._lock = threading.Lock()
        self._blocked: frozenset[ArmID] = frozenset()
        self._next_expiry = float("inf")
        self.records = 0
        """Outcomes recorded here so far (what the router's shared per-shape work checks)."""

    def record(self, model: ArmID, *, ok: bool) -> None:
        """Record the outcome of one call to ``model``."""
        now = self._clock()
        self.records += 1
        with self._lock:
            st = self._states.get(model)
            if st is None:
                st = self._states[model] = _BreakerState(deque(maxlen=self.window))
            st.outcomes.append(ok)
            if 0 < st.open_until <= now:  # cooled down, not yet noticed by blocked()
                st.open_until, st.half_open = 0.0, True
            if st.open_until > now:  # late feedback on an open model: keep it open
                pass
            elif st.half_open:  # the probe decides
                st.half_open = False
                if ok:
                    st.outcomes.clear()
                    st.outcomes.append(True)
                else:
                    st.open_until = now + self.cooldown_s
            else:
                n = len(st.outcomes)
                errors = n - sum(st.outcomes)
                k = self.consecutive_errors
                in_a_row = 0 < k <= n and not any(islice(reversed(st.outcomes), k))
                if in_a_row or (n >= self.min_calls and errors / n >= self.error_rate):
                    st.open_until = now + self.cooldown_s
                    st.half_open = False
            self._refresh(now)

    def _refresh(self, now: float) -> None:
        blocked = set()
        expiry = float("inf")
        for model, st in self._states.items():
            if st.open_until > now:
                blocked.add(model)
                expiry = min(expiry, st.open_until)
            elif st.open_until > 0 and not st.half_open:
                st.half_open = True  # cooldown over: the next outcome decides
                st.open_until = 0.0
        self._blocked = frozenset(blocked)
        self._next_expiry = expiry

    def blocked(self) -> frozenset[ArmID]:
        """Models excluded right now (cheap: recomputed only when a cooldown ends)."""
        now = self._clock()
        if now >= self._next_expiry:
            with self._lock:
                self._refresh(now)
        return self._blocked

    @property
    def shared(self) -> bool:
        """True when the outcomes recorded here are every worker's (never for this class)."""
        return False

    @property
    def degraded(self) -> str | None:
        """Why shared state is not in use although configured (None: fine, or local by design)."""
        return None

    def recent_error_rate(self, model: ArmID) -> float | None:
        """Share of failures among ``model``'s last ``window`` outcomes here (None: fewer than
        ``min_calls``): a live error rate that moves with each call, long before a breaker
        opens (a model failing one call in five never reaches ``error_rate``)."""
        st = self._states.get(model)
        if st is None:
            return None
        outcomes = st.outcomes
        n = len(outcomes)
        if n < self.min_calls:
            return None
        return (n - sum(outcomes)) / n

    def state(self, model: ArmID) -> str:
        """``closed``, ``open`` or ``half_open``."""
        if model in self.blocked():
            return "open"
        st = self._states.get(model)
        return "half_open" if st is not None and st.half_open else "closed"


class BudgetExceededError(ValueError):
    """A tenant's daily budget cannot pay for any model for this request."""


class BudgetLedger:
    """Per-tenant daily spend in USD: predicted costs reserved at decision, settled at feedback.

    ``spent = settled actual costs + reservations still awaiting feedback``; a decision is only
    made for a model whose predicted cost fits in ``budget - spent``, so decisions never
    commit more than the budget. Days are UTC days. In memory, per worker process (see
    ``serving/README.md`` for several workers).

    Parameters
    ----------
    default_usd
        Daily budget of tenants without their own (None: no cap).
    per_tenant
        Daily budget per tenant.
    now
        UTC time source.
    """

    def __init__(
        self,
        *,
        default_usd: float | None = None,
        per_tenant: Mapping[TenantID, float] | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.default_usd = default_usd
        self.per_tenant = dict(per_tenant or {})
        self._now = now
        self._lock = threading.Lock()
        self._day = ""
        self._spent: dict[TenantID, float] = {}
        self._reserved: dict[DecisionID, tuple[TenantID, float]] = {}

    def budget(self, tenant: TenantID) -> float | None:
        """The tenant's daily budget, or None."""
        return self.per_tenant.get(tenant, self.default_usd)

    @property
    def shared(self) -> bool:
        """True when this ledger holds every worker's spend (never for this class): then the
        log follower must not :meth:`add` other workers' spend again."""
        return False

    @property
    def degraded(self) -> str | None:
        """Why shared state is not in use although configured (None: fine, or local by design)."""
        return None

    def _roll(self) -> None:
        day = self._now().date().isoformat()
        if day != self._day:
            self._day = day
            self._spent.clear()
            self._reserved.clear()

    def remaining(self, tenant: TenantID) -> float | None:
        """USD the tenant may still commit today (None: no cap)."""
        cap = self.budget(tenant)
        if cap is None:
            return None
        with self._lock:
            self._roll()
            return cap - self._spent.get(tenant, 0.0)

    def reserve(self, tenant: TenantID, decision_id: DecisionID, usd: float) -> None:
        """Reserve the predicted cost of a decision."""
        if self.budget(tenant) is None:
            return
        with self._lock:
            self._roll()
            self._spent[tenant] = self._spent.get(tenant, 0.0) + usd
            self._reserved[decision_id] = (tenant, usd)

    def try_reserve(self, tenant: TenantID, decision_id: DecisionID, usd: float) -> bool:
        """Reserve ``usd`` only if it fits in what the tenant has left (atomically); False:
        refused, nothing reserved. Tenants without a budget always fit."""
        cap = self.budget(tenant)
        if cap is None:
            return True
        with self._lock:
            self._roll()
            spent = self._spent.get(tenant, 0.0)
            if usd > cap - spent:  # the same expression as remaining(): what fits there fits
                return False
            self._spent[tenant] = spent + usd
            self._reserved[decision_id] = (tenant, usd)
            return True

    def release(self, decision_id: DecisionID) -> None:
        """Give a reservation back (its decision is not served): a settle at no cost."""
        self.settle(decision_id, 0.0)

    def add(self, tenant: TenantID, usd: float, *, decided_at: datetime) -> None:
        """Count spend this ledger did not reserve (another worker's decision of today)."""
        if self.budget(tenant) is None:
            return
        with self._lock:
            self._roll()
            if decided_at.astimezone(UTC).date().isoformat() == self._day:
                self._spent[tenant] = self._spent.get(tenant, 0.0) + usd

    def settle(self, decision_id: DecisionID, actual_usd: float) -> None:
        """Replace a decision's reservation by its actual cost (unknown decisions: ignored)."""
        with self._lock:
            self._roll()
            held = self._reserved.pop(decision_id, None)
            if held is not None:
                tenant, usd = held
                self._spent[tenant] = self._spent.get(tenant, 0.0) - usd + actual_usd


class TokenBucket:
    """Requests per second with a burst, per key (the HTTP rate limit, :mod:`serving.http_guard`).

    >>> t = [0.0]
    >>> bucket = TokenBucket(rate=1.0, burst=2.0, clock=lambda: t[0])
    >>> bucket.take("k"), bucket.take("k"), bucket.take("k")  # the burst, then 1 s to wait
    (0.0, 0.0, 1.0)
    """

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 if allowed, else the seconds to wait."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
