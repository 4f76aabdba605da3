"""Cascade mode: a plan (cheap model first, when to escalate), trained by each step's feedback."""

from __future__ import annotations

import random
from collections.abc import Sequence

from llmopt.catalog import load_catalog
from llmopt.event_log import EventLog
from llmopt.schemas import Decision, Feedback, RequestContext
from llmopt.types import ArmID, Features
from models.cascade import CascadeState
from serving.cascade import ServedCascades, cascade_key
from serving.router import Router

CHEAP, BIG = "gpt-4o-mini", "gpt-4o"


class Picks:
    """Chooses ``model`` when offered."""

    name = "picks"

    def __init__(self, model: str) -> None:
        self.model = model
        self.updates: list[ArmID] = []

    def pull(self, arm_ids: Sequence[ArmID], context: Features | None = None) -> Decision:
        model = self.model if self.model in arm_ids else arm_ids[0]
        return Decision(model=model, propensity=0.9, policy_name=self.name)

    def update(self, arm_id: ArmID, context: Features | None, reward: float) -> Picks:
        self.updates.append(arm_id)
        return self


def router(policy: Picks) -> Router:
    r = Router(load_catalog(), EventLog("sqlite://"), arms=[CHEAP, BIG])
    r.swap((policy, "test/1"))
    return r


def cascade_ctx(**kw: object) -> RequestContext:
    return RequestContext(tenant="acme", prompt="Prove it.", mode="cascade", **kw)  # type: ignore[arg-type]


def test_single_mode_has_no_plan() -> None:
    routed = router(Picks(BIG)).decide(RequestContext(tenant="acme", prompt="hi"))
    assert routed.plan is None


def test_plan_tries_the_cheapest_model_then_the_policys_choice() -> None:
    policy = Picks(BIG)
    r = router(policy)
    routed = r.decide(cascade_ctx())
    assert routed.plan is not None and [s.model for s in routed.plan] == [CHEAP, BIG]
    first, last = routed.plan
    assert first.escalate_to == BIG and last.escalate_to is None
    assert last.decision_id == routed.decision.decision_id and routed.decision.model == BIG
    assert first.decision_id != last.decision_id and 0 < first.probability <= 1
    assert {"temperature", "max_tokens"} <= set(first.parameters)
    row = r.event_log.get_decision(first.decision_id)
    assert row is not None and row["model"] == CHEAP and row["policy_name"] == "q_cascade"
    # step 0's feedback is an ordinary feedback: stored, and the policy learns the cheap model
    out = r.feedback(Feedback(decision_id=first.decision_id, quality=0.9))
    assert out.status == "stored" and policy.updates == [CHEAP]


def test_a_cheapest_choice_gives_a_one_step_plan() -> None:
    routed = router(Picks(CHEAP)).decide(cascade_ctx())
    assert routed.plan is not None and [s.model for s in routed.plan] == [CHEAP]
    assert any("cascade" in n for n in routed.decision.notes)


def test_step_feedback_trains_the_q_table() -> None:
    r = router(Picks(BIG))
    key = cascade_key("general", CHEAP, BIG)
    for _ in range(3):
        plan = r.decide(cascade_ctx()).plan
        assert plan is not None
        first, last = plan
        # the check says the cheap answer is bad; the client escalates; the big model is good
        r.feedback(Feedback(decision_id=first.decision_id, quality=0.1))
        r.feedback(Feedback(decision_id=last.decision_id, quality=0.95))
    c = r.cascades.cascades[key]
    bad = CascadeState("all", 0, "[0,0.5)")
    assert c._n[bad][BIG] == 3  # the escalation was learned from each episode
    assert c.q_values(bad)[BIG] > 0.5


def label(quality: float) -> str:
    return "[0,0.5)" if quality < 0.5 else "[0.5,0.8)" if quality < 0.8 else "[0.8,1]"


def test_the_learned_rule_escalates_only_bad_answers() -> None:
    rng = random.Random(0)
    cascades = ServedCascades(willingness_to_pay=0.05, seed=0)
    for i in range(600):
        rule = cascades.rule("code", "small", "large")
        cascades.start("code", f"a{i}", f"b{i}", rule)
        hard = rng.random() < 0.5
        q_small = rng.uniform(0.0, 0.4) if hard else rng.uniform(0.85, 1.0)
        cascades.observe(f"a{i}", quality=q_small, cost_usd=0.0001, error=False)
        if label(q_small) in rule.escalate_on:  # the client follows the plan
            q_large = 0.95 if hard else q_small
            cascades.observe(f"b{i}", quality=q_large, cost_usd=0.003, error=False)
    c = cascades.cascade("code", "small", "large")
    c.epsilon = c.min_epsilon = 0.0
    step = cascades.rule("code", "small", "large")
    assert "[0,0.5)" in step.escalate_on and "[0.8,1]" not in step.escalate_on
    if "[0.5,0.8)" not in step.escalate_on:  # never visited: its rule is a tie
        assert step.escalate_if_quality_below == 0.5
