"""The A/B test's rewards: all of each version's, or only those of the period both served."""

from __future__ import annotations

from llmopt.event_log import EventLog
from llmopt.schemas import Decision, Feedback, RequestContext


def _serve(log: EventLog, label: str, reward: float) -> None:
    d = Decision(model="m", propensity=1.0, policy_name="p", policy_version=label)
    log.record_decision(d, RequestContext(tenant="t"), features={"bias": 1.0})
    log.record_feedback(Feedback(decision_id=d.decision_id, quality=reward), reward=reward)


def test_concurrent_rewards_start_at_the_challengers_first_decision() -> None:
    log = EventLog("sqlite://")
    for _ in range(5):
        _serve(log, "v1", 0.9)  # the champion alone, in a better world
    for _ in range(3):
        _serve(log, "v2", 0.6)
        _serve(log, "v1", 0.5)
    everything = log.rewards_by_policy_version(["v1", "v2"])
    assert len(everything["v1"]) == 8 and len(everything["v2"]) == 3
    same_period = log.rewards_by_policy_version(["v1", "v2"], concurrent=True)
    assert same_period == {"v1": [0.5] * 3, "v2": [0.6] * 3}
    assert log.rewards_by_policy_version(["v1", "v3"], concurrent=True) == {"v1": [], "v3": []}
