"""Budget pacing in /decide: the willingness to pay follows the spend against the plan, the
plan follows the tenant's forecast traffic, and the router names the pacing in its notes."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from llmopt.catalog import load_catalog
from llmopt.event_log import EventLog
from llmopt.schemas import RequestContext
from serving.guards import BudgetLedger
from serving.pacing import FORECAST_AFTER_HOURS, BudgetPacing
from serving.router import Router

DAY = datetime(2025, 3, 3, tzinfo=UTC)


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def _pacing(budget: float = 24.0) -> tuple[Clock, BudgetLedger, BudgetPacing]:
    clock = Clock(DAY + timedelta(hours=6))
    ledger = BudgetLedger(per_tenant={"acme": budget}, now=clock)
    return clock, ledger, BudgetPacing(ledger, base_wtp=0.05, now=clock, forecast=False)


def test_no_budget_no_pacing() -> None:
    _, _, pacing = _pacing()
    assert pacing.willingness_to_pay("other", 0.2) is None


def test_ahead_of_plan_lowers_and_behind_plan_raises_the_willingness_to_pay() -> None:
    clock, ledger, pacing = _pacing()
    w0, note = pacing.willingness_to_pay("acme", None)  # type: ignore[misc]
    # the first decision (06:00) starts the day's plan: nothing spent, nothing planned yet
    assert w0 == pytest.approx(0.05, rel=0.01) and "spent 0.0000 of 24.0000" in note
    clock.at = DAY + timedelta(hours=12)  # a third of the rest of the day: the plan is 8 USD
    ledger.reserve("acme", "d1", 14.0)  # 6 USD (a quarter of the budget) ahead
    ahead, note = pacing.willingness_to_pay("acme", None)  # type: ignore[misc]
    assert ahead < 0.05 * math.exp(-20 * 0.2) and "plan (uniform) 7.9200" in note  # 99% of 8
    clock.at = DAY + timedelta(hours=21)  # 14 USD by 21:00: 6 USD behind the plan
    behind, _ = pacing.willingness_to_pay("acme", None)  # type: ignore[misc]
    assert behind > 0.05
    # a request's own willingness to pay is scaled by the same factor
    asked, _ = pacing.willingness_to_pay("acme", 0.5)  # type: ignore[misc]
    assert asked / 0.5 == pytest.approx(pacing.willingness_to_pay("acme", None)[0] / 0.05)  # type: ignore[index]


def test_the_settled_cost_is_what_the_pacer_sees() -> None:
    clock, ledger, pacing = _pacing()
    pacing.willingness_to_pay("acme", None)  # the plan starts at 06:00
    clock.at = DAY + timedelta(hours=12)
    ledger.reserve("acme", "d1", 14.0)
    high, _ = pacing.willingness_to_pay("acme", None)  # type: ignore[misc]
    ledger.settle("d1", 8.0)  # the call cost less than predicted: on plan
    on_plan, _ = pacing.willingness_to_pay("acme", None)  # type: ignore[misc]
    assert on_plan > high


def test_a_changed_budget_keeps_the_pacer_going() -> None:
    clock, ledger, pacing = _pacing()
    pacing.willingness_to_pay("acme", None)
    clock.at = DAY + timedelta(hours=12)
    ledger.reserve("acme", "d1", 14.0)
    low, _ = pacing.willingness_to_pay("acme", None)  # type: ignore[misc]
    ledger.per_tenant["acme"] = 42.0  # 14 USD is now on plan (a third of 42)
    after, note = pacing.willingness_to_pay("acme", None)  # type: ignore[misc]
    assert "of 42.0000" in note and after > low
    assert pacing.pacer("acme").daily_budget_usd == 42.0 * 0.99  # type: ignore[union-attr]


def test_the_plan_follows_the_forecast_traffic_after_two_days() -> None:
    """Traffic four times as high from 12:00 to 18:00: after two days of counts the plan
    front-loads nothing before noon that the peak will need."""
    clock = Clock(DAY)
    ledger = BudgetLedger(per_tenant={"acme": 24.0}, now=clock)
    pacing = BudgetPacing(ledger, base_wtp=0.05, now=clock)
    for hour in range(FORECAST_AFTER_HOURS + 1):
        clock.at = DAY + timedelta(hours=hour)
        per_hour = 40 if 12 <= hour % 24 < 18 else 10
        for _ in range(per_hour):
            pacing.willingness_to_pay("acme", None)
    pacer = pacing.pacer("acme")
    assert pacer is not None and pacer.traffic_profile is not None
    noon = DAY + timedelta(days=3, hours=12)
    evening = DAY + timedelta(days=3, hours=18)
    # uniform would be 0.5 at noon; a quarter of the day's traffic comes before it
    assert pacer.target_share(noon) == pytest.approx(120 / 360, abs=0.06)
    assert pacer.target_share(evening) == pytest.approx(300 / 360, abs=0.06)
    _, note = pacing.willingness_to_pay("acme", None)  # type: ignore[misc]
    assert "plan (forecast traffic)" in note


def test_router_decisions_are_paced_and_say_so(tmp_path: Path) -> None:
    catalog = load_catalog()
    log = EventLog(f"sqlite:///{tmp_path}/events.db")
    clock = Clock(DAY + timedelta(hours=6))
    ledger = BudgetLedger(per_tenant={"acme": 1.0}, now=clock)
    router = Router(
        catalog, log, ledger=ledger, pacing=BudgetPacing(ledger, base_wtp=0.05, now=clock)
    )
    paced = router.decide(RequestContext(tenant="acme", prompt="What is 2 + 2?")).decision
    assert any(n.startswith("budget pacing: willingness to pay x") for n in paced.notes)
    free = router.decide(RequestContext(tenant="free", prompt="What is 2 + 2?")).decision
    assert not any(n.startswith("budget pacing") for n in free.notes)
    log.close()
