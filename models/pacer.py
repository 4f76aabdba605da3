"""Budget pacing: spend a tenant's daily budget evenly by steering its willingness to pay.

Serving paces every tenant that has a daily budget with it (:mod:`serving.pacing`); the
budget ledger's hard cap stays as the last guard.

The router picks, per request, the configuration maximising ``quality - cost / w``
(:mod:`llmopt.reward`), so the willingness to pay ``w`` is the knob that sets the spend rate: a
lower ``w`` makes every dollar weigh more and pushes traffic to cheaper models. The pacer compares
the spend so far today with a target curve and moves ``w`` multiplicatively.

**Control law.** Let ``B`` be the daily budget, ``tau`` the elapsed fraction of the UTC day,
``F(tau)`` the target share of the budget spent by then (``tau`` by default; the cumulative
traffic profile when one is given), and ``S`` the spend so far today. With the relative gap
``e = (S - B F(tau)) / B`` (positive: ahead of plan), a proportional-integral law in log space,

    log w(tau) = log w_day - gain * e(tau) - integral_gain * int_0^tau e(s) ds,

clipped to ``[min_wtp, max_wtp]``, where ``w_day`` is the day's starting value. The proportional
term is Balseiro & Gur's adaptive pacing: their dual multiplier follows
``mu <- mu + eps (spend_k - rho_k)``, i.e. it is proportional to the *cumulative* gap ``S - B F``;
acting on ``log w`` keeps ``w`` positive and makes the gain scale-free (a gap of 1% of the budget
moves ``w`` by about ``gain`` percent). Alone, it ends a day with a residual gap of about
``log(w_day / w*) / gain``, where ``w*`` spends at the planned rate (11% for a start 10x too high
and ``gain = 20``); the integral term removes that residual within a few hours. The integral is
accumulated at each call by the trapezoid rule, exact between calls for a uniform plan, so how
often :meth:`BudgetPacer.willingness_to_pay` is asked does not change the trajectory while ``w``
stays inside its clip range; the integral is held back when ``w`` is clipped (anti-windup). At
the first call of a new UTC day, ``w_day`` becomes the previous day's final ``w``, so the pacer
keeps what it learned and later days start near ``w*`` (days without any call are skipped, not
counted as underspent).

The pacer only adjusts a price; it is not a hard cap. A tenant that must never exceed its budget
also needs a guard that refuses paid calls once ``S >= B``.

Examples
--------
>>> from datetime import datetime, timedelta, timezone
>>> pacer = BudgetPacer(24.0, initial_wtp=0.1, integral_gain=0.0)  # proportional term only
>>> t = datetime(2025, 1, 1, 6, tzinfo=timezone.utc)  # a quarter of the day gone
>>> _ = pacer.observe(9.0, t)  # target 6 USD: 3 USD (12.5% of the budget) ahead
>>> round(pacer.willingness_to_pay(t), 4)  # 0.1 * exp(-20 * 0.125)
0.0082
>>> round(pacer.willingness_to_pay(t + timedelta(hours=3)), 4)  # on plan again
0.1
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any, Self

from models.state import Stateful

_DAY_S = 86_400.0
_HOURS = 24


def _utc(at: datetime) -> datetime:
    if not isinstance(at, datetime):
        raise ValueError(f"at must be a datetime, got {type(at).__name__}")
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"at must be timezone-aware (UTC), got naive {at.isoformat()}")
    return at.astimezone(UTC)


def _finite(name: str, value: float, *, positive: bool = False) -> float:
    v = float(value)
    ok = math.isfinite(v) and (v > 0 if positive else v >= 0)
    if not ok:
        raise ValueError(
            f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value}"
        )
    return v


def profile_from_forecast(values: Sequence[float], start: datetime) -> list[float]:
    """A midnight-aligned hourly traffic profile from an hourly forecast starting at ``start``.

    Parameters
    ----------
    values
        At least 24 expected counts, one per hour, the first for the hour containing ``start``
        (e.g. ``WorkloadForecaster.forecast(24)[key]`` right after learning the previous hour).
    start
        Timezone-aware time of the first forecast hour.

    Examples
    --------
    >>> from datetime import datetime, timezone
    >>> profile_from_forecast(list(range(24)), datetime(2025, 1, 1, 22, tzinfo=timezone.utc))[:4]
    [2.0, 3.0, 4.0, 5.0]
    """
    hour = _utc(start).hour
    vals = [_finite("traffic forecast", v) for v in values]
    if len(vals) < _HOURS:
        raise ValueError(f"need at least 24 hourly values, got {len(vals)}")
    day = vals[:_HOURS]
    return [day[(h - hour) % _HOURS] for h in range(_HOURS)]


class BudgetPacer(Stateful):
    """Multiplicative controller of the willingness to pay that paces a daily budget.

    See the module docstring for the control law. Feed every paid call to :meth:`observe` and ask
    :meth:`willingness_to_pay` before routing; both take the call's timezone-aware time and start
    a new day at UTC midnight.

    Parameters
    ----------
    daily_budget_usd
        Budget per UTC day, USD.
    initial_wtp
        Willingness to pay (USD per unit of quality) at the start of the first day.
    min_wtp
        Lowest willingness to pay the pacer may set.
    max_wtp
        Highest willingness to pay the pacer may set.
    gain
        Proportional gain in log space: being ahead of plan by 1% of the budget divides ``w`` by
        ``exp(gain / 100)``.
    integral_gain
        Integral gain in log space, per day: a gap of 1% of the budget held for a whole day
        divides ``w`` by ``exp(integral_gain / 100)``. 0 gives Balseiro & Gur's pure dual update.
    traffic_profile
        Expected traffic over the UTC day in equal slots starting at midnight (e.g. 24 hourly
        counts, see :func:`profile_from_forecast`); the budget is then spent in proportion to it.
        None spends uniformly in time.
    plan_from_first_call
        The first day's plan starts at the first call instead of midnight: a pacer created
        mid-day (a new tenant, a restarted service) spends the budget over the rest of that
        day, rather than counting the hours before it as underspent. Later days start at
        midnight.

    Examples
    --------
    >>> import random
    >>> from datetime import datetime, timedelta, timezone
    >>> menu = [(0.6, 0.0005), (0.8, 0.003), (0.9, 0.015)]  # (quality, cost) of 3 models
    >>> rng = random.Random(0)
    >>> pacer = BudgetPacer(3.0, initial_wtp=1.0)  # 500 calls: mid model ~1.5, top ~7.5 USD
    >>> day = datetime(2025, 1, 1, tzinfo=timezone.utc)
    >>> for s in sorted(rng.uniform(0, 86_400) for _ in range(500)):
    ...     t = day + timedelta(seconds=s)
    ...     w = pacer.willingness_to_pay(t)
    ...     q, c = max(menu, key=lambda m: m[0] - m[1] / w)
    ...     _ = pacer.observe(c, t)
    >>> abs(pacer.spent_today / 3.0 - 1) < 0.1
    True

    References
    ----------
    Balseiro, Gur (2019). Learning in repeated auctions with budgets: regret minimization and
    equilibrium. Management Science 65(9).

    Agarwal, Ghosh, Wei, Xu (2014). Budget pacing for targeted online advertisements at LinkedIn.
    KDD.
    """

    kind = "budget_pacer"

    def __init__(
        self,
        daily_budget_usd: float,
        *,
        initial_wtp: float,
        min_wtp: float = 1e-5,
        max_wtp: float = 100.0,
        gain: float = 20.0,
        integral_gain: float = 60.0,
        traffic_profile: Sequence[float] | None = None,
        plan_from_first_call: bool = False,
    ) -> None:
        _finite("daily_budget_usd", daily_budget_usd, positive=True)
        for name, v in (("initial_wtp", initial_wtp), ("min_wtp", min_wtp), ("max_wtp", max_wtp)):
            _finite(name, v, positive=True)
        if not min_wtp <= initial_wtp <= max_wtp:
            raise ValueError(
                f"need min_wtp <= initial_wtp <= max_wtp, got {min_wtp}, {initial_wtp}, {max_wtp}"
            )
        _finite("gain", gain)
        _finite("integral_gain", integral_gain)
        profile = None
        if traffic_profile is not None:
            profile = [_finite("traffic_profile values", v) for v in traffic_profile]
            if not profile or sum(profile) <= 0:
                raise ValueError("traffic_profile must have at least one positive value")
        self.daily_budget_usd = daily_budget_usd
        self.initial_wtp = initial_wtp
        self.min_wtp = min_wtp
        self.max_wtp = max_wtp
        self.gain = gain
        self.integral_gain = integral_gain
        self.traffic_profile = profile
        self.plan_from_first_call = plan_from_first_call
        self._offset = 0.0  # plan share at the first call (plan_from_first_call, first day)
        self._day: int | None = None  # proleptic ordinal of the current UTC day
        self._spent = 0.0
        self._w_day = float(initial_wtp)
        self._integral = 0.0  # log-space integral term of the current day
        self._tau = 0.0  # day fraction up to which the integral is accumulated

    # -- public API -------------------------------------------------------------------------------
    def observe(self, cost_usd: float, at: datetime) -> Self:
        """Record the cost of one call made at ``at``."""
        cost = _finite("cost_usd", cost_usd)
        self._advance(_utc(at))
        self._spent += cost
        return self

    def sync_spend(self, spent_usd: float, at: datetime) -> Self:
        """Set today's spend to ``spent_usd`` at ``at``: for a caller whose own ledger totals
        the day's spend (serving's budget ledger, reservations included), instead of
        :meth:`observe` per call. The plan's gap up to ``at`` is integrated with the spend
        known before.

        >>> from datetime import datetime, timezone
        >>> pacer = BudgetPacer(24.0, initial_wtp=0.1, integral_gain=0.0)
        >>> t = datetime(2025, 1, 1, 6, tzinfo=timezone.utc)
        >>> round(pacer.sync_spend(9.0, t).willingness_to_pay(t), 4)  # as observe(9.0, t)
        0.0082
        """
        spent = _finite("spent_usd", spent_usd)
        self._advance(_utc(at))
        self._spent = spent
        return self

    def set_traffic_profile(self, profile: Sequence[float] | None) -> Self:
        """Replace the expected traffic profile (see the class parameters); None: uniform."""
        if profile is not None:
            values = [_finite("traffic_profile values", v) for v in profile]
            if not values or sum(values) <= 0:
                raise ValueError("traffic_profile must have at least one positive value")
            profile = values
        self.traffic_profile = profile
        return self

    def willingness_to_pay(self, at: datetime) -> float:
        """The willingness to pay to route with at ``at``."""
        now = _utc(at)
        self._advance(now)
        return self._wtp(self.target_share(now))

    def target_share(self, at: datetime) -> float:
        """``F(tau)``: share of the daily budget the plan has spent by ``at`` (in [0, 1])."""
        return self._share_at(self._tau_of(_utc(at)))

    @staticmethod
    def _tau_of(now: datetime) -> float:
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return (now - midnight).total_seconds() / _DAY_S

    def _share_at(self, tau: float) -> float:
        share = self._raw_share(tau)
        if self._offset <= 0.0:
            return share
        if self._offset >= 1.0:
            return 1.0
        return max(0.0, (share - self._offset) / (1.0 - self._offset))

    def _raw_share(self, tau: float) -> float:
        if self.traffic_profile is None:
            return tau
        prof = self.traffic_profile
        pos = tau * len(prof)
        j = min(int(pos), len(prof) - 1)
        return (sum(prof[:j]) + (pos - j) * prof[j]) / sum(prof)

    def target_spend(self, at: datetime) -> float:
        """The plan's spend by ``at`` today, USD."""
        return self.daily_budget_usd * self.target_share(at)

    @property
    def spent_today(self) -> float:
        """USD observed since the start of the current UTC day."""
        return self._spent

    @property
    def day(self) -> date | None:
        """The current UTC day (None before the first call)."""
        return None if self._day is None else date.fromordinal(self._day)

    # -- control ----------------------------------------------------------------------------------
    def _gap(self, share: float) -> float:
        return (self._spent - self.daily_budget_usd * share) / self.daily_budget_usd

    def _wtp(self, share: float) -> float:
        log_w = math.log(self._w_day) - self.gain * self._gap(share) + self._integral
        return min(self.max_wtp, max(self.min_wtp, math.exp(min(log_w, 700.0))))

    def _integrate(self, tau: float) -> None:
        """Accumulate the integral term from the last call up to ``tau`` (trapezoid rule)."""
        if tau <= self._tau:  # a call out of order within the day: nothing to add
            return
        e0 = self._gap(self._share_at(self._tau))
        e1 = self._gap(self._share_at(tau))
        step = -self.integral_gain * 0.5 * (e0 + e1) * (tau - self._tau)
        integral = self._integral + step
        # Anti-windup (conditional integration): the integral may not push log w further past
        # a clip bound than it already is, but it is never forced back by the proportional term.
        base = math.log(self._w_day) - self.gain * e1
        if step > 0 and base + integral > math.log(self.max_wtp):
            integral = max(self._integral, math.log(self.max_wtp) - base)
        elif step < 0 and base + integral < math.log(self.min_wtp):
            integral = min(self._integral, math.log(self.min_wtp) - base)
        self._integral = integral
        self._tau = tau

    def _advance(self, now: datetime) -> None:
        day = now.date().toordinal()
        if self._day is None:
            self._day = day
            if self.plan_from_first_call:
                self._tau = self._tau_of(now)
                self._offset = self._raw_share(self._tau)
        elif day < self._day:
            raise ValueError(
                f"time went backwards: {now.isoformat()} is before the current day "
                f"{date.fromordinal(self._day).isoformat()}"
            )
        elif day > self._day:
            self._integrate(1.0)
            self._w_day = self._wtp(1.0)  # the last learned value starts the new day
            self._spent = 0.0
            self._integral = 0.0
            self._tau = 0.0
            self._offset = 0.0
            self._day = day
        self._integrate(self._tau_of(now))

    # -- state ------------------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        return {
            "day": self._day,
            "spent": self._spent,
            "w_day": self._w_day,
            "integral": self._integral,
            "tau": self._tau,
            "offset": self._offset,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        day = state["day"]
        self._day = None if day is None else int(day)
        self._spent = _finite("spent", state["spent"])
        self._w_day = _finite("w_day", state["w_day"], positive=True)
        integral = float(state["integral"])
        if not math.isfinite(integral):
            raise ValueError(f"integral must be finite, got {integral}")
        self._integral = integral
        self._tau = _finite("tau", state["tau"])
        self._offset = _finite("offset", state.get("offset", 0.0))
