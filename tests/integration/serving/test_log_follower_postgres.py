"""A serving worker that follows the shared event log on PostgreSQL learns another worker's
feedback exactly once, also when its transaction commits after a later one (ids out of order)."""

from __future__ import annotations

import pytest

from llmopt.catalog import load_catalog
from llmopt.event_log import EventLog, LogCursor, feedback
from llmopt.schemas import Decision, Feedback, RequestContext
from llmopt.types import ArmID, Features
from serving.router import Router

pytestmark = [pytest.mark.integration, pytest.mark.services]


class Recorder:
    """Picks the first arm; records what it learns."""

    name = "recorder"

    def __init__(self) -> None:
        self.learned: list[tuple[ArmID, float]] = []

    def pull(self, arm_ids: list[ArmID], context: Features | None = None) -> Decision:
        return Decision(model=arm_ids[0], propensity=1.0, policy_name=self.name)

    def update(self, arm_id: ArmID, context: Features | None, reward: float) -> Recorder:
        self.learned.append((arm_id, reward))
        return self


def test_a_late_committing_feedback_is_learned_once_not_skipped(postgres_url: str) -> None:
    log = EventLog(postgres_url)
    follower_policy = Recorder()
    follower = Router(load_catalog(), log)
    follower.swap(champion=(follower_policy, "v1"))
    decisions = []
    for _ in range(3):
        d = Decision(model="gpt-4o-mini", propensity=1.0, policy_name="x", policy_version="v1")
        log.record_decision(d, RequestContext(tenant="t"), features={"bias": 1.0})
        decisions.append(d.decision_id)
    # Another worker's long transaction takes the smaller feedback id and commits last.
    slow = log.engine.connect()
    slow.begin()
    row = EventLog.feedback_row(Feedback(decision_id=decisions[0], quality=0.2), reward=0.2)
    slow_id = int(slow.execute(feedback.insert().values(**row)).inserted_primary_key[0])
    fast = log.record_feedback(Feedback(decision_id=decisions[1], quality=0.8), reward=0.8)
    assert fast.feedback_id is not None and fast.feedback_id > slow_id
    cursor = follower.learn_from_log(LogCursor(), set())
    assert follower_policy.learned == []  # the fast one waits behind the one still in flight
    slow.commit()
    slow.close()
    cursor = follower.learn_from_log(cursor, set())
    assert sorted(r for _, r in follower_policy.learned) == [0.2, 0.8]  # both, once
    log.record_feedback(Feedback(decision_id=decisions[2], quality=0.5), reward=0.5)
    follower.learn_from_log(cursor, set())
    assert sorted(r for _, r in follower_policy.learned) == [0.2, 0.5, 0.8]
    log.close()
