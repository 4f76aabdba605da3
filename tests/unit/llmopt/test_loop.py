from __future__ import annotations

from collections.abc import Sequence

import pytest

from llmopt.catalog import load_catalog
from llmopt.event_log import EventLog, UnknownDecisionError
from llmopt.loop import LearningLoop
from llmopt.reward import TradeOff
from llmopt.schemas import Decision, Feedback, RequestContext
from llmopt.types import ArmID, Features


class Recorder:
    """A fake policy: chooses the first offered arm, records what it is taught."""

    name = "recorder"

    def __init__(self) -> None:
        self.offered: list[list[ArmID]] = []
        self.updates: list[tuple[ArmID, float]] = []

    def pull(self, arm_ids: Sequence[ArmID], context: Features | None = None) -> Decision:
        self.offered.append(list(arm_ids))
        return Decision(model=arm_ids[0], propensity=1.0, policy_name=self.name)

    def update(self, arm_id: ArmID, context: Features | None, reward: float) -> Recorder:
        self.updates.append((arm_id, reward))
        return self


CATALOG = load_catalog()
ARMS = ["gpt-4.1", "gpt-4o-mini", "gpt-4.1-nano"]


def test_cost_cap_excludes_expensive_models_and_explains() -> None:
    policy = Recorder()
    loop = LearningLoop(policy, ARMS, catalog=CATALOG)
    d = loop.decide(RequestContext(tenant="t", prompt="x" * 4000, max_cost_usd=0.0005))
    assert policy.offered[-1] == ["gpt-4o-mini", "gpt-4.1-nano"]
    assert d.model == "gpt-4o-mini" and any("gpt-4.1 excluded" in n for n in d.notes)


def test_latency_cap_and_fallback_when_nothing_fits() -> None:
    policy = Recorder()
    loop = LearningLoop(policy, ARMS, catalog=CATALOG)
    loop.decide(RequestContext(tenant="t", max_latency_ms=2200))
    assert "gpt-4.1" not in policy.offered[-1]
    d = loop.decide(RequestContext(tenant="t", max_cost_usd=1e-9))
    assert d.model == "gpt-4.1-nano" and "fell back to the cheapest" in d.notes[-1]


def test_parameters_come_from_the_catalog() -> None:
    d = LearningLoop(Recorder(), ARMS, catalog=CATALOG).decide(RequestContext(tenant="t"))
    assert d.parameters["temperature"] == 0.7 and d.parameters["max_tokens"] == 1024


def test_reward_uses_reported_cost_else_catalog_tokens() -> None:
    policy = Recorder()
    loop = LearningLoop(
        policy, ARMS, catalog=CATALOG, default_tradeoff=TradeOff(willingness_to_pay=0.01)
    )
    d1 = loop.decide(RequestContext(tenant="t"))
    out = loop.feedback(Feedback(decision_id=d1.decision_id, quality=0.9, cost_usd=0.001))
    assert out.reward == pytest.approx(0.9 - 0.1)
    d2 = loop.decide(RequestContext(tenant="t", willingness_to_pay=0.1))
    spec = CATALOG["gpt-4.1"]
    out = loop.feedback(
        Feedback(decision_id=d2.decision_id, quality=1.0, input_tokens=1000, output_tokens=500)
    )
    assert out.reward == pytest.approx(1.0 - spec.expected_cost_usd(1000, 500) / 0.1)
    assert [a for a, _ in policy.updates] == ["gpt-4.1", "gpt-4.1"]


def test_latency_weight_applies() -> None:
    loop = LearningLoop(Recorder(), ARMS, catalog=CATALOG)
    d = loop.decide(RequestContext(tenant="t", willingness_to_pay=1e9, latency_weight=0.5))
    out = loop.feedback(
        Feedback(decision_id=d.decision_id, quality=1.0, cost_usd=0.0, latency_ms=2000)
    )
    assert out.reward == pytest.approx(0.0)


def test_unknown_and_duplicate_feedback_in_memory() -> None:
    policy = Recorder()
    loop = LearningLoop(policy, ARMS, catalog=CATALOG)
    with pytest.raises(UnknownDecisionError):
        loop.feedback(Feedback(decision_id="never-issued", quality=0.5))
    d = loop.decide(RequestContext(tenant="t"))
    fb = Feedback(decision_id=d.decision_id, quality=0.5, cost_usd=0.0)
    assert loop.feedback(fb).status == "stored"
    assert loop.feedback(fb).status == "duplicate"
    assert len(policy.updates) == 1


def test_with_event_log_feedback_survives_a_restart(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/events.db"
    first = LearningLoop(Recorder(), ARMS, catalog=CATALOG, event_log=EventLog(url))
    d = first.decide(RequestContext(tenant="t", prompt="hello", willingness_to_pay=0.02))
    policy = Recorder()
    second = LearningLoop(policy, ARMS, catalog=CATALOG, event_log=EventLog(url))
    fb = Feedback(decision_id=d.decision_id, thumbs="up", cost_usd=0.002)
    out = second.feedback(fb)
    assert out.status == "stored" and out.reward == pytest.approx(1.0 - 0.1)
    assert second.feedback(fb).status == "duplicate"
    assert policy.updates == [("gpt-4.1", pytest.approx(0.9))]
    assert second.event_log is not None
    assert second.event_log.feedback_since(0)[0].reward == pytest.approx(0.9)


class CostAwareRecorder(Recorder):
    """A fake cost-aware policy: records the penalties it is given and what it learns."""

    cost_aware = True

    def __init__(self) -> None:
        super().__init__()
        self.penalties: list[dict[ArmID, float]] = []

    def pull(  # type: ignore[override]
        self,
        arm_ids: Sequence[ArmID],
        context: Features | None = None,
        *,
        penalties: dict[ArmID, float] | None = None,
    ) -> Decision:
        self.penalties.append(dict(penalties or {}))
        return super().pull(arm_ids, context)


def test_a_cost_aware_policy_gets_penalties_and_learns_quality() -> None:
    policy = CostAwareRecorder()
    loop = LearningLoop(policy, ARMS, catalog=CATALOG)
    ctx = RequestContext(tenant="t", prompt="hello " * 200, willingness_to_pay=0.01)
    d = loop.decide(ctx)
    pen = policy.penalties[-1]
    assert set(pen) == set(ARMS)
    # Penalty = predicted cost / willingness to pay: the dearest model the largest.
    assert pen["gpt-4.1"] > pen["gpt-4o-mini"] > pen["gpt-4.1-nano"] > 0
    out = loop.feedback(Feedback(decision_id=d.decision_id, quality=0.8, cost_usd=0.001))
    assert policy.updates[-1] == (d.model, 0.8)  # quality, not the reward
    assert out.reward == pytest.approx(0.8 - 0.001 / 0.01)


def test_cost_caps_use_the_costs_feedback_reported() -> None:
    """The catalog says gpt-4o-mini is cheap; this workload's answers make it cost 10x more."""
    policy = Recorder()
    loop = LearningLoop(policy, ["gpt-4o-mini", "gpt-4.1-nano"], catalog=CATALOG)
    prompt = "hello " * 100
    cap = 2 * loop.cost_model.predict("gpt-4o-mini", 150)  # type: ignore[operator]
    first = loop.decide(RequestContext(tenant="t", prompt=prompt, max_cost_usd=cap))
    assert first.model == "gpt-4o-mini"  # fits the cap by the catalog's prices
    for _ in range(5):
        d = loop.decide(RequestContext(tenant="t", prompt=prompt))
        loop.feedback(Feedback(decision_id=d.decision_id, quality=0.9, cost_usd=10 * cap))
    later = loop.decide(RequestContext(tenant="t", prompt=prompt, max_cost_usd=cap))
    assert later.model == "gpt-4.1-nano"
    assert any("gpt-4o-mini excluded: predicted cost" in n for n in later.notes)


def test_a_new_model_joins_with_its_price_tier_prior_and_an_old_one_leaves() -> None:
    from models.kinds import make_policy  # noqa: PLC0415

    policy = make_policy("cost_aware_linucb", seed=0)
    loop = LearningLoop(policy, ["gpt-4.1", "gpt-4.1-nano"], catalog=CATALOG)
    quality = {"gpt-4.1": 0.9, "gpt-4.1-nano": 0.4, "gpt-4o-mini": 0.5}
    for _ in range(60):
        d = loop.decide(RequestContext(tenant="t", prompt="hi", willingness_to_pay=1.0))
        loop.feedback(Feedback(decision_id=d.decision_id, quality=quality[d.model]))
    # gpt-4o-mini costs within 3x of gpt-4.1-nano: it starts where that tier stands.
    prior = loop.add_arm("gpt-4o-mini")
    assert prior == pytest.approx(0.4, abs=0.05)
    with pytest.raises(ValueError, match="already offered"):
        loop.add_arm("gpt-4o-mini")
    pending = loop.decide(RequestContext(tenant="t", prompt="hi"))
    loop.remove_arm(pending.model)
    assert pending.model not in loop.arms
    loop.feedback(Feedback(decision_id=pending.decision_id, quality=0.5))  # still accepted
    for _ in range(20):
        assert loop.decide(RequestContext(tenant="t", prompt="hi")).model in loop.arms
    with pytest.raises(ValueError, match="not offered"):
        loop.remove_arm("nope")
