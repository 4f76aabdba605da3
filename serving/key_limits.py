"""Limits of a key of its own (``LLMOPT_CLIENT_KEY_LIMITS``): a rate and a daily budget per key.

What LiteLLM's virtual keys give, on the keys of :mod:`serving.http_guard`: each key may have

- ``rate_per_s``: its own rate limit, replacing ``serving_rate_limit_per_s`` for that key (a
  bucket of its own, in Redis under shared state; the guard applies it), and
- ``daily_budget_usd``: its own daily budget, on top of its tenant's. A decision made with the
  key must fit both what the tenant has left and what the key has left: the router offers only
  models whose predicted cost fits ``min(tenant left, key left)`` (a cheaper model rather than a
  refusal), reserves the predicted cost on both ledgers (both or neither), and feedback settles
  the actual cost on both. Nothing left for the cheapest model: 402, naming the key's budget by
  a short digest prefix, never the key.

The key's spend is kept by a ledger of its own (:class:`KeyBudgets`), of the tenants' ledger's
class: :class:`serving.guards.BudgetLedger` per process, or, with
``LLMOPT_SERVING_SHARED_STATE=redis``, a :class:`serving.shared_state.RedisBudgetLedger` under a
prefix of its own (``<prefix>keys:``), shared by every worker and replica with the same
reserve-if-it-fits script. Its "tenants" are the keys' digests. A ledger of its own rather than
entries in the tenants' ledger: a tenant id is any string a request sends, so no tenant can
name (and spend) a key's budget, and one decision's reservation, kept by decision id, is held
in both ledgers.

The guard names the request's key in a context variable (:func:`use_key`) when it has a budget;
the router reads it (:meth:`KeyBudgets.current`), so neither the endpoints nor the request body
carry it.

Examples
--------
>>> budgets = KeyBudgets(BudgetLedger(per_tenant={"ab12" * 16: 0.01}))
>>> token = use_key("ab12" * 16)
>>> key = budgets.current()
>>> budgets.left(1.0, key)  # the key's 0.01 USD bounds the tenant's 1.0
(0.01, 'ab12ab12...')
>>> budgets.try_reserve(key, "d1", 0.004), budgets.try_reserve(key, "d2", 0.007)
(True, False)
>>> budgets.settle("d1", 0.001); round(budgets.left(None, key)[0], 6)
0.009
>>> reset_key(token); budgets.current() is None
True
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass

from llmopt.types import DecisionID
from serving.guards import BudgetExceededError, BudgetLedger

LIMIT_FIELDS = ("daily_budget_usd", "rate_per_s")
"""The fields of one key's entry in ``LLMOPT_CLIENT_KEY_LIMITS``."""


@dataclass(frozen=True)
class KeyLimit:
    """One key's own limits (None: the global rate limit; only its tenant's budget)."""

    daily_budget_usd: float | None = None
    rate_per_s: float | None = None


def short(digest: str) -> str:
    """How messages name a key: the first 8 hex digits of its digest, never the key.

    >>> short("0123456789abcdef" * 4)
    '01234567...'
    """
    return f"{digest[:8]}..."


_KEY: ContextVar[str | None] = ContextVar("llmopt_budgeted_key", default=None)
"""The digest of the request's key when it has a daily budget of its own (set by the guard)."""


def use_key(digest: str) -> Token[str | None]:
    """Name the request's key (the guard, around the request); :func:`reset_key` undoes it."""
    return _KEY.set(digest)


def reset_key(token: Token[str | None]) -> None:
    """Undo :func:`use_key`."""
    _KEY.reset(token)


def current_key() -> str | None:
    """The digest of the request's key if the guard named it (it has a daily budget)."""
    return _KEY.get()


class KeyBudgets:
    """Daily budgets of keys, reserved and settled beside the tenants' (see the module docstring).

    Parameters
    ----------
    ledger
        The keys' ledger, its "tenants" the keys' digests, each with its ``daily_budget_usd``
        (None: no key has a budget; every method is then a no-op).
    """

    def __init__(self, ledger: BudgetLedger | None = None) -> None:
        self.ledger = ledger

    def current(self) -> str | None:
        """The digest of the request's key if it has a daily budget of its own, else None."""
        digest = _KEY.get()
        if digest is None or self.ledger is None or self.ledger.budget(digest) is None:
            return None
        return digest

    def left(self, tenant_left: float | None, key: str | None) -> tuple[float | None, str | None]:
        """What a decision may commit: ``min(tenant left, key left)``, and the key's short name
        when the key's budget is the tighter (None: the tenant's budget, or none, bounds it)."""
        if key is None or self.ledger is None:
            return tenant_left, None
        key_left = self.ledger.remaining(key)
        if key_left is None or (tenant_left is not None and tenant_left <= key_left):
            return tenant_left, None
        return key_left, short(key)

    def try_reserve(self, key: str | None, decision_id: DecisionID, usd: float) -> bool:
        """Reserve ``usd`` on the key's budget only if it fits (no key budget: True)."""
        if key is None or self.ledger is None:
            return True
        return self.ledger.try_reserve(key, decision_id, usd)

    def settle(self, decision_id: DecisionID, actual_usd: float) -> None:
        """Replace the decision's reservation on its key's budget, if any, by its actual cost.

        Feedback does not say which key decided (it may come with another key), so every
        feedback settles here when any key has a budget: unknown decisions are ignored (one
        more Redis round trip per feedback under shared state)."""
        if self.ledger is not None:
            self.ledger.settle(decision_id, actual_usd)

    @staticmethod
    def exceeded(
        exc: BudgetExceededError, by_key: str | None, left: float | None, *, tenant: str
    ) -> BudgetExceededError:
        """The 402 of a decision nothing fits: ``exc`` (the tenant's) unless the key's budget
        is the tighter (``by_key``, from :meth:`left`); then the key's, naming its digest
        prefix, never the key."""
        if by_key is None:
            return exc
        return BudgetExceededError(
            f"key {by_key}: the key's daily budget left ({max(left or 0.0, 0.0):.6f} USD, "
            f"LLMOPT_CLIENT_KEY_LIMITS) pays for no model's predicted cost; tenant {tenant!r} "
            "may still decide with its other keys"
        )

    @staticmethod
    def notes(by_key: str | None, left: float | None) -> list[str]:
        """The decision's note when the key's budget bounded it (from :meth:`left`)."""
        if by_key is None:
            return []
        return [
            f"budget: key {by_key}'s daily budget left ({left or 0.0:.6f} USD), tighter than "
            "its tenant's, bounds this decision"
        ]
