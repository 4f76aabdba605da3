"""Budget pacing in ``/decide``: a tenant's daily budget is spent along its forecast traffic.

Without pacing a daily budget is a hard cap: the router spends at the rate its willingness to
pay implies until the budget is gone, then answers 402 for the rest of the day. With pacing,
each tenant with a budget (``LLMOPT_SERVING_DAILY_BUDGET_USD``, ``LLMOPT_SERVING_TENANT_BUDGETS``)
gets a :class:`models.pacer.BudgetPacer` aiming at 99% of it (:data:`RESERVE`): before each
decision the pacer compares the tenant's spend today (the budget ledger's: settled costs plus
reservations awaiting feedback) with the plan and scales the tenant's willingness to pay, so
traffic shifts gradually to cheaper models when the tenant spends ahead of plan, and back to
better ones when it is behind. The ledger's hard cap stays as the last guard.

**The plan follows the tenant's traffic.** The decisions of each tenant are counted per UTC
hour and fed to a :class:`models.forecast.WorkloadForecaster` (Holt-Winters, a 24-hour season);
once it has two days of history, the next 24 hours' forecast becomes the pacer's traffic
profile, so a tenant whose traffic peaks in the afternoon keeps budget for the peak. Before
that the plan is uniform in time.

A tenant's first day is planned from its first decision (a new tenant, or a restarted
service, spends its budget over the rest of that day). The willingness to pay a request asks
for (or the default) is multiplied by the pacer's factor, ``w(t) / w_start``: a request that
asks for quality keeps asking for more than one that does not. The factor and the figures
behind it are in the decision's notes (its explanation).

With several workers or replicas the pacer steers on the ledger's spend, which is the
fleet's under ``LLMOPT_SERVING_SHARED_STATE=redis`` (and other workers' committed spend read
from the log otherwise); the hourly traffic counts behind the forecast are each worker's own,
a share of the tenant's traffic with the same daily shape, which is all the plan uses.

Example
-------
>>> from datetime import UTC, datetime, timedelta
>>> from serving.guards import BudgetLedger
>>> clock = [datetime(2025, 1, 1, 6, tzinfo=UTC)]
>>> ledger = BudgetLedger(per_tenant={"acme": 24.0}, now=lambda: clock[0])
>>> pacing = BudgetPacing(ledger, base_wtp=0.05, now=lambda: clock[0])
>>> pacing.willingness_to_pay("other", None) is None  # no budget: no pacing
True
>>> round(pacing.willingness_to_pay("acme", None)[0], 4)  # first decision, 06:00: the plan starts
0.05
>>> ledger.reserve("acme", "d1", 6.0)  # 6 USD in an hour: the plan for 1 of 18 hours is 1.32
>>> clock[0] += timedelta(hours=1)
>>> w, note = pacing.willingness_to_pay("acme", None)
>>> round(w, 4), note.split(":")[0]
(0.001, 'budget pacing')
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from llmopt.types import TenantID
from models.forecast import WorkloadForecaster
from models.pacer import BudgetPacer, profile_from_forecast
from serving.guards import BudgetLedger

FORECAST_AFTER_HOURS = 48
"""Hours of a tenant's counted traffic before its forecast replaces the uniform plan."""

RESERVE = 0.01
"""Share of the budget the plan keeps back: the pacer aims at 99% of it, so that the noise of
the day's last requests lands within the budget instead of on the hard cap (a 402)."""

MIN_FACTOR, MAX_FACTOR = 1e-3, 100.0
"""Bounds of the pacer's factor on the willingness to pay."""

_MAX_GAP_HOURS = 48
"""Hours without any decision filled with zero counts (longer gaps restart the count)."""


class BudgetPacing:
    """Per-tenant pacers over the budget ledger (see the module docstring).

    Parameters
    ----------
    ledger
        The budget ledger: which tenants have a budget, and their spend today.
    base_wtp
        The willingness to pay a pacer starts from (the service's default).
    now
        UTC time source.
    forecast
        Follow each tenant's forecast hourly traffic (False: a uniform plan).
    """

    def __init__(
        self,
        ledger: BudgetLedger,
        *,
        base_wtp: float,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        forecast: bool = True,
    ) -> None:
        if not base_wtp > 0:
            raise ValueError(f"base_wtp must be > 0, got {base_wtp}")
        self.ledger = ledger
        self.base_wtp = base_wtp
        self.forecast = forecast
        self._now = now
        self._lock = threading.Lock()
        self._pacers: dict[TenantID, BudgetPacer] = {}
        self._forecaster = WorkloadForecaster(seasonality=24)
        self._hour: datetime | None = None
        self._counts: Counter[TenantID] = Counter()
        self._hours_counted = 0

    def pacer(self, tenant: TenantID) -> BudgetPacer | None:
        """The tenant's pacer (None: no budget, or no decision yet)."""
        return self._pacers.get(tenant)

    def current(self, tenant: TenantID) -> float | None:
        """The tenant's paced willingness to pay now, without counting a decision (None: no
        pacer yet, e.g. no budget or no decision today)."""
        pacer = self._pacers.get(tenant)
        if pacer is None:
            return None
        with self._lock:
            return pacer.willingness_to_pay(self._now())

    def willingness_to_pay(
        self, tenant: TenantID, requested: float | None
    ) -> tuple[float, str] | None:
        """The paced willingness to pay for one decision of ``tenant`` and why (None: the
        tenant has no budget). ``requested`` is the request's own (None: the default)."""
        budget = self.ledger.budget(tenant)
        if budget is None or not budget > 0:
            return None
        remaining = self.ledger.remaining(tenant)
        spent = max(0.0, budget - (remaining if remaining is not None else budget))
        now = self._now()
        target = budget * (1.0 - RESERVE)
        with self._lock:
            self._count(tenant, now)
            pacer = self._pacers.get(tenant)
            if pacer is None:
                pacer = self._pacers[tenant] = BudgetPacer(
                    target,
                    initial_wtp=self.base_wtp,
                    min_wtp=self.base_wtp * MIN_FACTOR,
                    max_wtp=self.base_wtp * MAX_FACTOR,
                    plan_from_first_call=True,
                )
                self._set_profile(tenant, now)
            elif pacer.daily_budget_usd != target:  # the control law is relative: it goes on
                pacer.daily_budget_usd = target
            w = pacer.sync_spend(spent, now).willingness_to_pay(now)
            planned = pacer.target_spend(now)
        factor = w / self.base_wtp
        base = requested if requested is not None else self.base_wtp
        plan = "forecast traffic" if pacer.traffic_profile is not None else "uniform"
        note = (
            f"budget pacing: willingness to pay x{factor:.3g} (spent {spent:.4f} of "
            f"{budget:.4f} USD today, plan ({plan}) {planned:.4f} by now)"
        )
        return base * factor, note

    # -- traffic forecast -----------------------------------------------------------------------
    def _count(self, tenant: TenantID, now: datetime) -> None:
        hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        if self._hour is None:
            self._hour = hour
        elif hour > self._hour:
            self._close_hours(hour)
        self._counts[tenant] += 1

    def _close_hours(self, hour: datetime) -> None:
        """Feed the finished hours' counts (zeros for hours without decisions) to the forecaster."""
        assert self._hour is not None
        gap = int((hour - self._hour).total_seconds() // 3600)
        tenants = {str(k) for k in self._forecaster.keys} | set(self._counts)
        if gap > _MAX_GAP_HOURS:  # a long silence: start counting again
            self._forecaster = WorkloadForecaster(seasonality=24)
            self._hours_counted = 0
            gap = 1
        for i in range(gap):
            counts = self._counts if i == 0 else Counter()
            self._forecaster.learn_one({t: float(counts.get(t, 0)) for t in tenants})
            self._hours_counted += 1
        self._counts = Counter()
        self._hour = hour
        for tenant in self._pacers:
            self._set_profile(tenant, hour)

    def _set_profile(self, tenant: TenantID, now: datetime) -> None:
        pacer = self._pacers[tenant]
        if not self.forecast or self._hours_counted < FORECAST_AFTER_HOURS:
            return
        if tenant not in self._forecaster.keys:
            return
        start = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        values = self._forecaster.forecast(24, [tenant])[tenant]
        if sum(values) <= 0:
            return
        # The profile covers the UTC day; hours already gone keep their forecast share.
        pacer.set_traffic_profile(profile_from_forecast(values, start))
