"""No acknowledged decision's feedback is refused while the event log's database is down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmopt.catalog import load_catalog
from llmopt.event_log import EventLog
from llmopt.schemas import Feedback, RequestContext
from llmopt.spool import SpooledEventLog
from models.kinds import make_policy
from serving.router import Router


def test_feedback_for_a_decision_this_worker_never_saw_is_spooled_then_learned(
    tmp_path: Path, sqlite_outage: Any
) -> None:
    db = tmp_path / "db"
    db.mkdir()
    url = f"sqlite:///{db / 'events.db'}"
    catalog = load_catalog()
    # A sibling worker made these decisions before the outage; this worker never saw them.
    sibling = Router(catalog, SpooledEventLog(url, spool_dir=tmp_path / "s1"))
    sibling.swap((make_policy("cost_aware_cluster_thompson", seed=0), "v1"))
    made = [
        sibling.decide(RequestContext(tenant="acme", prompt=f"q{i}")).decision for i in range(3)
    ]
    log = SpooledEventLog(url, spool_dir=tmp_path / "s2")
    worker = Router(catalog, log)
    policy = make_policy("cost_aware_cluster_thompson", seed=0)
    worker.swap((policy, "v1"))
    outage = sqlite_outage(db, log)
    outage.start()
    try:
        outcomes = [worker.feedback(Feedback(decision_id=d.decision_id, quality=0.9)) for d in made]
        unknown = worker.feedback(Feedback(decision_id="never-made", quality=0.9))
        again = worker.feedback(Feedback(decision_id=made[0].decision_id, quality=0.9))
    finally:
        outage.end()
    assert [o.status for o in outcomes] == ["spooled"] * 3  # accepted, not a 404
    assert all(o.reward is None for o in outcomes) and unknown.status == "spooled"
    assert again.status == "duplicate"
    assert worker.events.unvalidated_feedback == 4
    assert log.replay() == 4
    assert log.dropped == 1  # the decision that was never made is dropped at replay
    assert len(log.replayed_unvalidated_ids) == 3 and not log.replayed_feedback_ids
    stored = EventLog(url).counts()
    assert stored["feedback"] == 3
    # nobody learned them yet: the log follower (every worker's) learns them now
    assert policy.n_updates == 0
    worker.learn_from_log(0, set())
    assert policy.n_updates == 3


def test_with_the_database_up_an_unknown_decision_is_still_a_404(tmp_path: Path) -> None:
    log = SpooledEventLog(f"sqlite:///{tmp_path / 'e.db'}", spool_dir=tmp_path / "s")
    worker = Router(load_catalog(), log)
    import pytest  # noqa: PLC0415

    from llmopt.event_log import UnknownDecisionError  # noqa: PLC0415

    with pytest.raises(UnknownDecisionError):
        worker.feedback(Feedback(decision_id="never-made", quality=0.9))
