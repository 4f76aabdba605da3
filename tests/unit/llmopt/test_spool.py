"""The durable spool: writes survive a database outage, replay is idempotent, orphans adopted."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from llmopt.event_log import ConflictingFeedbackError
from llmopt.schemas import Decision, Feedback, RequestContext
from llmopt.spool import SpooledEventLog, decode_record

CTX = RequestContext(tenant="acme", prompt="hello")


def decision(model: str = "gpt-4o-mini") -> Decision:
    return Decision(model=model, propensity=0.5, policy_name="t")


@pytest.fixture
def setup(tmp_path: Path, sqlite_outage: Any) -> tuple[SpooledEventLog, Any]:
    db = tmp_path / "db"
    db.mkdir()
    log = SpooledEventLog(f"sqlite:///{db / 'events.db'}", spool_dir=tmp_path / "spool")
    return log, sqlite_outage(db, log)


def test_writes_during_an_outage_are_spooled_then_stored_once(
    setup: tuple[SpooledEventLog, Any],
) -> None:
    log, outage = setup
    before = decision()
    log.record_decision(before, CTX, features={"x": 1.0})
    outage.start()
    during = decision("gpt-4o")
    log.record_decision(during, CTX, features={"x": 2.0})
    assert log.get_decision(during.decision_id)["model"] == "gpt-4o"  # type: ignore[index]
    fb = Feedback(decision_id=during.decision_id, quality=0.9)
    assert log.record_feedback(fb, reward=0.8).status == "spooled"
    assert log.record_feedback(fb, reward=0.8).status == "duplicate"
    with pytest.raises(ConflictingFeedbackError):
        log.record_feedback(Feedback(decision_id=during.decision_id, quality=0.1))
    # feedback for a decision made before the outage: accepted unvalidated
    assert log.record_feedback(Feedback(decision_id=before.decision_id, quality=0.5)).status == (
        "spooled"
    )
    # feedback for a decision that never existed: accepted now, dropped at replay
    log.record_feedback(Feedback(decision_id="never-made", quality=0.5))
    assert log.spooled_records() == 4
    assert log.replay() == 0 and log.spooled_records() == 4  # still down: kept
    outage.end()
    assert log.replay() == 4
    assert log.spooled_records() == 0 and log.dropped == 1
    assert log.counts() == {"decisions": 2, "feedback": 2}
    stored = {e.decision_id: e for e in log.feedback_since(0)}
    assert stored[during.decision_id].reward == 0.8
    assert stored[during.decision_id].features == {"x": 2.0}
    assert sorted(log.replayed_feedback_ids) == sorted(e.feedback_id for e in stored.values())
    # after the replay the database decides duplicates again
    assert log.record_feedback(fb, reward=0.8).status == "duplicate"


def test_replay_is_idempotent_after_an_interrupted_replay(
    setup: tuple[SpooledEventLog, Any],
) -> None:
    log, outage = setup
    outage.start()
    d = decision()
    log.record_decision(d, CTX, features={})
    log.record_feedback(Feedback(decision_id=d.decision_id, quality=1.0), reward=1.0)
    outage.end()
    # A replay that stored everything but crashed before deleting its file:
    log.spool_path.replace(log.replaying_path)
    log._replay_one(decode_record(log.replaying_path.read_text().splitlines()[0]))
    assert log.replay() == 2
    assert log.counts() == {"decisions": 1, "feedback": 1}


def test_spools_of_dead_workers_are_adopted(
    setup: tuple[SpooledEventLog, Any], tmp_path: Path
) -> None:
    log, outage = setup
    dead_pid = 2**22 + 12345  # above Linux's default pid_max: never alive
    other = SpooledEventLog(
        log.url, spool_dir=tmp_path / "spool", name=f"events.{dead_pid}.spool.jsonl"
    )
    other.engine.dispose()
    outage.start()
    d = decision()
    other.record_decision(d, CTX, features={})
    other.record_feedback(Feedback(decision_id=d.decision_id, quality=0.3), reward=0.3)
    outage.end()
    assert other.spooled == 2
    assert log.replay() == 2
    assert not list((tmp_path / "spool").iterdir())
    assert log.counts() == {"decisions": 1, "feedback": 1}


def test_call_measurements_survive_an_outage(setup: tuple[SpooledEventLog, Any]) -> None:
    """What a gateway measured is kept on the decision, spooled while the database is down,
    and completes the client's later feedback either way."""
    log, outage = setup
    up, down = decision(), decision("gpt-4o")
    log.record_decision(up, CTX, features={})
    assert log.record_call(up.decision_id, {"latency_ms": 120.0, "cost_usd": 0.002})
    assert not log.record_call("never-made", {"latency_ms": 1.0})
    outage.start()
    log.record_decision(down, CTX, features={})
    assert log.record_call(down.decision_id, {"latency_ms": 340.0, "output_tokens": 12})
    row = log.get_decision(down.decision_id)
    assert row is not None and row["context"]["call"]["latency_ms"] == 340.0
    outage.end()
    assert log.replay() == 2  # the decision, then its call
    for d, latency in ((up, 120.0), (down, 340.0)):
        row = log.get_decision(d.decision_id)
        assert row is not None
        fb = Feedback(decision_id=d.decision_id, quality=0.7)
        assert fb.with_measurements(row["context"]["call"]).latency_ms == latency


def test_feedback_for_a_decision_in_a_siblings_spool_waits_for_it(
    tmp_path: Path, sqlite_outage: Any
) -> None:
    """Two workers, one folder: B gets feedback for a decision A spooled during an outage and
    has not replayed yet. B cannot tell it from an unknown id, so it accepts it unvalidated
    (never a 404) and keeps it through its replays until A's spool is in the database."""
    db = tmp_path / "db"
    db.mkdir()
    url = f"sqlite:///{db / 'events.db'}"
    # named after live processes, so neither adopts the other's spool as a dead worker's
    a = SpooledEventLog(url, spool_dir=tmp_path / "spool", name=f"events.{os.getpid()}.spool.jsonl")
    b = SpooledEventLog(
        url, spool_dir=tmp_path / "spool", name=f"events.{os.getppid()}.spool.jsonl"
    )
    outage = sqlite_outage(db, a)
    outage.start()
    d = decision()
    a.record_decision(d, CTX, features={})
    outage.end()
    row, answered = b.lookup_decision(d.decision_id)
    assert row is None and not answered  # the database answers, but A's spool may hold it
    fb = Feedback(decision_id=d.decision_id, quality=0.7)
    assert b.spool_unvalidated_feedback(fb).status == "spooled"
    assert b.replay() == 0 and b.deferred == 1 and b.dropped == 0  # A has not replayed yet
    assert b.spooled_records() == 1
    assert a.replay() == 1  # A's decision reaches the database
    assert b.replay() == 1 and b.dropped == 0
    assert b.counts() == {"decisions": 1, "feedback": 1}
    assert b.replayed_unvalidated_ids  # stored at replay: whoever follows the log learns it
    assert b.lookup_decision("never-made") == (None, True)  # no spool left: a plain unknown


def test_an_unvalidated_feedback_is_dropped_once_its_grace_is_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    a = SpooledEventLog("sqlite://", spool_dir=spool, name=f"events.{os.getpid()}.spool.jsonl")
    sibling = spool / f"events.{os.getppid()}.spool.jsonl"  # a live sibling that never replays
    sibling.write_text('{"kind": "call", "row": {"decision_id": "x", "call": {}}}\n')
    a.spool_unvalidated_feedback(Feedback(decision_id="never-made", quality=0.5))
    assert a.replay() == 0 and a.deferred == 1
    monkeypatch.setattr("llmopt.spool.UNVALIDATED_GRACE_S", 0.0)
    assert a.replay() == 1 and a.dropped == 1 and a.spooled_records() == 0
