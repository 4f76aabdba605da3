"""The event log on SQLite (file) and, marked services, on the PostgreSQL at 127.0.0.1:5432."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from llmopt.event_log import (
    CallRecord,
    ConflictingFeedbackError,
    DuplicateDecisionError,
    EventLog,
    LogCursor,
    LogCursorError,
    UnknownDecisionError,
    decisions,
    feedback,
    upgrade_schema,
)
from llmopt.schemas import Decision, Feedback, RequestContext

pytestmark = pytest.mark.integration
MIGRATIONS = Path(__file__).resolve().parents[3] / "llmopt" / "migrations"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}"
    base = request.getfixturevalue("postgres_url")
    # A clean schema per test inside the session's database.
    engine = sa.create_engine(base)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS feedback, decisions, alembic_version CASCADE"))
        conn.execute(sa.text("DROP TABLE IF EXISTS pipeline_checkpoints"))
    engine.dispose()
    return str(base)


def _decide(log: EventLog, model: str = "m1", prompt: str | None = "secret prompt") -> str:
    d = Decision(model=model, propensity=0.25, policy_name="test", scores={"m1": 0.3})
    log.record_decision(d, RequestContext(tenant="acme", prompt=prompt), features={"bias": 1.0})
    return d.decision_id


def test_schema_is_migrated_to_head(url: str) -> None:
    log = EventLog(url)
    with log.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0002"
    EventLog(url).close()  # opening again is a no-op upgrade
    log.close()


def test_feedback_joins_its_decision_later_and_survives_reopen(url: str) -> None:
    log = EventLog(url)
    ids = [_decide(log, model=f"m{i}") for i in range(3)]
    receipts = [
        log.record_feedback(Feedback(decision_id=i, quality=0.1 * k), reward=0.1 * k)
        for k, i in enumerate(reversed(ids))
    ]
    assert [r.status for r in receipts] == ["stored"] * 3
    assert [r.feedback_id for r in receipts] == sorted(r.feedback_id for r in receipts)
    log.close()
    reopened = EventLog(url)
    events = reopened.feedback_since(0)
    assert [e.decision_id for e in events] == list(reversed(ids))
    assert events[0].model == "m2" and events[0].propensity == 0.25
    assert events[0].features == {"bias": 1.0} and events[0].decided_at.tzinfo is not None
    assert [e.decision_id for e in reopened.feedback_since(receipts[0].feedback_id)] == ids[1::-1]
    assert reopened.counts() == {"decisions": 3, "feedback": 3}
    reopened.close()


def test_duplicate_feedback_is_stored_once(url: str) -> None:
    log = EventLog(url)
    did = _decide(log)
    fb = Feedback(decision_id=did, rating=4, input_tokens=10)
    first = log.record_feedback(fb, reward=0.5)
    again = log.record_feedback(fb, reward=0.5)
    assert (first.status, again.status) == ("stored", "duplicate")
    assert first.feedback_id == again.feedback_id
    assert log.counts()["feedback"] == 1


def test_conflicting_feedback_is_refused_and_first_kept(url: str) -> None:
    log = EventLog(url)
    did = _decide(log)
    log.record_feedback(Feedback(decision_id=did, quality=0.9))
    with pytest.raises(ConflictingFeedbackError, match="already has a different feedback"):
        log.record_feedback(Feedback(decision_id=did, quality=0.1))
    assert [e.quality for e in log.feedback_since(0)] == [0.9]


def test_unknown_decision_is_refused_and_nothing_stored(url: str) -> None:
    log = EventLog(url)
    with pytest.raises(UnknownDecisionError, match="unknown decision_id 'nope'"):
        log.record_feedback(Feedback(decision_id="nope", quality=0.5))
    assert log.counts() == {"decisions": 0, "feedback": 0}


def test_duplicate_decision_is_refused(url: str) -> None:
    log = EventLog(url)
    d = Decision(model="m", propensity=1.0, policy_name="p")
    log.record_decision(d, RequestContext(tenant="t"), features={})
    with pytest.raises(DuplicateDecisionError):
        log.record_decision(d, RequestContext(tenant="t"), features={})


def test_prompt_is_hashed_unless_opted_in(url: str) -> None:
    log = EventLog(url)
    hidden = log.get_decision(_decide(log))
    assert hidden is not None and "prompt" not in hidden["context"]
    assert len(hidden["context"]["prompt_sha256"]) == 64
    d = Decision(model="m", propensity=1.0, policy_name="p")
    log.record_decision(
        d, RequestContext(tenant="t", prompt="keep me"), features={}, store_prompt=True
    )
    kept = log.get_decision(d.decision_id)
    assert kept is not None and kept["context"]["prompt"] == "keep me"


@pytest.mark.parametrize("group_commit", [False, True])
def test_a_call_record_sets_context_call_and_leaves_the_rest_as_it_was(
    url: str, group_commit: bool
) -> None:
    """One statement sets ``context.call`` (and replaces it when recorded again); every other
    context value reads back unchanged, odd numbers included; an unknown decision is untouched."""
    log = EventLog(url, group_commit=group_commit)
    d = Decision(model="m", propensity=1.0, policy_name="p")
    extra = {"predicted_cost_usd": 1e-05, "tiny": 3e-7, "third": 1 / 3, "big": 2**53 + 1}
    log.record_decision(d, RequestContext(tenant="t", prompt="p"), features={}, extra=extra)
    before = log.get_decision(d.decision_id)
    assert before is not None
    call = {"latency_ms": 12.5, "ttft_ms": 0.1, "input_tokens": 7, "cost_usd": 2.5e-06}
    if group_commit:
        with log.deferred_writes() as writes:
            assert log.record_call(d.decision_id, call)
            assert log.record_call("never-made", {"latency_ms": 1.0})  # queued: not looked up
        assert writes.wait() == 2
    else:
        assert log.record_call(d.decision_id, call)
        assert not log.record_call("never-made", {"latency_ms": 1.0})
    after = log.get_decision(d.decision_id)
    assert after is not None
    assert after["context"].pop("call") == call
    assert after == before
    assert log.get_decision("never-made") is None
    assert log.record_call(d.decision_id, {"latency_ms": 99.0})  # again: replaced
    again = log.get_decision(d.decision_id)
    assert again is not None and again["context"]["call"] == {"latency_ms": 99.0}
    log.close()


def test_a_group_of_decisions_and_calls_reports_each_duplicate_in_place(url: str) -> None:
    """A group mixing decisions and call records, one decision a duplicate: that one (in its
    place) is refused, every other decision is written and every call applied."""
    log = EventLog(url, group_commit=True)
    old = Decision(model="m", propensity=1.0, policy_name="p")
    log.record_decision(old, RequestContext(tenant="t"), features={})
    new = [Decision(model="m", propensity=1.0, policy_name="p") for _ in range(2)]
    rows = [
        log.decision_row(x, RequestContext(tenant="t"), features={}) for x in [new[0], old, new[1]]
    ]
    items = [rows[0], CallRecord(old.decision_id, {"latency_ms": 5.0}), rows[1], rows[2]]
    errors = log._flush_writes(items)
    assert [type(e).__name__ if e else None for e in errors] == [
        None,
        None,
        "DuplicateDecisionError",
        None,
    ]
    assert all(log.get_decision(x.decision_id) is not None for x in new)
    got = log.get_decision(old.decision_id)
    assert got is not None and got["context"]["call"] == {"latency_ms": 5.0}
    log.close()


def test_the_writer_stores_what_sqlalchemys_insert_stores(url: str) -> None:
    """The group writer's insert (compiled once, the columns' bind processors, one
    ``executemany``) stores every column exactly as ``conn.execute(decisions.insert(), rows)``
    does: JSON, a timezone-aware timestamp, floats, unicode."""
    log = EventLog(url, group_commit=True)
    ctx = RequestContext(tenant="t", prompt="naïve 数学 question", willingness_to_pay=0.5)
    features = {"bias": 1.0, "emb_0": -0.1234567890123, "len_chars": 1e-300}
    at = datetime(2026, 12, 7, 19, 49, 51, 383112, tzinfo=UTC)
    made = [
        Decision(
            model="m",
            propensity=1 / 3,
            policy_name="p",
            scores={"m": 0.1, "n": -2.5e-7},
            created_at=at,
        )
        for _ in range(3)
    ]
    rows = [log.decision_row(d, ctx, features=features, extra={"cost": 0.001}) for d in made]
    with log.deferred_writes(hold=True) as writes:  # the writer's path
        log.record_decision(made[0], ctx, features=features, extra={"cost": 0.001})
        log.record_decision(made[1], ctx, features=features, extra={"cost": 0.001})
    assert writes.wait() == 2
    with log.engine.begin() as conn:  # SQLAlchemy's
        conn.execute(decisions.insert(), [rows[2]])
    got = [log.get_decision(d.decision_id) for d in made]
    assert all(g is not None for g in got)
    stripped = [{k: v for k, v in g.items() if k != "decision_id"} for g in got if g]
    assert stripped[0] == stripped[2] and stripped[1] == stripped[2]
    assert stripped[2]["features"] == features and stripped[2]["context"]["cost"] == 0.001
    with log.engine.connect() as conn:  # as the driver returns them (SQLite: the stored text)
        raw = conn.exec_driver_sql(
            "SELECT created_at, parameters, scores, context, features, propensity"
            " FROM decisions ORDER BY decision_id"
        ).all()
    assert len(raw) == 3 and raw[0] == raw[1] == raw[2]
    log.close()


def test_concurrent_duplicates_store_exactly_once(url: str) -> None:
    log = EventLog(url)
    ids = [_decide(log) for _ in range(20)]
    errors: list[BaseException] = []

    def send() -> None:
        try:
            for did in ids:
                log.record_feedback(Feedback(decision_id=did, quality=0.5))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert log.counts()["feedback"] == 20


def _pending_feedback(log: EventLog, conn: sa.Connection, did: str) -> int:
    """Insert the feedback of ``did`` in ``conn``'s open transaction (not committed); its id."""
    row = EventLog.feedback_row(Feedback(decision_id=did, quality=0.5), reward=0.5)
    result = conn.execute(feedback.insert().values(**row))
    assert result.inserted_primary_key is not None
    return int(result.inserted_primary_key[0])


@pytest.mark.services
def test_a_cursor_never_skips_feedback_that_commits_after_a_larger_id(postgres_url: str) -> None:
    """Writer A takes id 1 and stays open while B (id 2) and C (id 3) commit: a follower of the
    log sees nothing past A until A commits, then A, B and C once each."""
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS feedback, decisions, alembic_version CASCADE"))
    engine.dispose()
    log = EventLog(postgres_url)
    a, b, c = (_decide(log, model=m) for m in ("a", "b", "c"))
    with log.engine.connect() as writer_a:
        writer_a.begin()
        id_a = _pending_feedback(log, writer_a, a)
        id_b = log.record_feedback(Feedback(decision_id=b, quality=0.5)).feedback_id
        id_c = log.record_feedback(Feedback(decision_id=c, quality=0.5)).feedback_id
        assert id_a < id_b < id_c  # ids in insert order, commits in another

        # The id window of a report sees B and C; the cursor reader stops before A's transaction.
        assert [e.feedback_id for e in log.feedback_since(0)] == [id_b, id_c]
        assert log.feedback_after(LogCursor()) == []
        held = log.stable_cursor()
        assert held == LogCursor() and log.count_between(held) == 2  # committed, not yet final
        assert list(log.training_batches_after(LogCursor(), 10, until=held)) == []
        writer_a.commit()

    followed = log.feedback_after(LogCursor())
    assert sorted(e.feedback_id for e in followed) == [id_a, id_b, id_c]
    assert [e.position for e in followed] == sorted(e.position for e in followed)
    assert all(e.tx_id > 0 for e in followed)
    top = log.stable_cursor()
    assert top == followed[-1].position and log.count_between(top) == 0
    assert log.feedback_after(top) == []
    assert log.count_between(LogCursor(), top) == 3

    # A cursor from a transaction that has not started: transaction ids went back (a restore).
    with pytest.raises(LogCursorError, match="transaction ids went back"):
        log.stable_cursor(LogCursor(top.tx_id + 10**9, 0))
    log.close()


def test_an_existing_log_is_upgraded_and_its_rows_come_first(url: str) -> None:
    """A log created at revision 0001 (no tx_id) keeps its rows, read first by a cursor."""
    from alembic import command  # noqa: PLC0415
    from alembic.config import Config  # noqa: PLC0415

    log = EventLog(url)
    old = [_decide(log) for _ in range(2)]
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with log.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    with log.engine.begin() as conn:
        for did in old:  # written by the previous release
            conn.execute(
                sa.text(
                    "INSERT INTO feedback (decision_id, received_at, quality, payload, "
                    "payload_sha256) VALUES (:d, CURRENT_TIMESTAMP, 0.5, '{}', '')"
                ),
                {"d": did},
            )
    upgrade_schema(log.engine)
    new = log.record_feedback(Feedback(decision_id=_decide(log), quality=0.5)).feedback_id
    events = log.feedback_after(LogCursor())
    assert [e.tx_id for e in events[:2]] == [0, 0]
    assert [e.feedback_id for e in events] == [1, 2, new]
    # SQLite serialises writers: no transaction id needed; PostgreSQL records the writer's.
    assert (events[2].tx_id > 0) is url.startswith("postgresql")
    assert log.stable_cursor() == events[-1].position
    log.close()


@pytest.mark.services
def test_the_writer_replaces_a_held_connection_the_server_dropped(
    postgres_url: str, tmp_path: Path
) -> None:
    """PostgreSQL ends the group writer's held connection between two groups (as a restart
    does): the next group is written on a new connection, neither failed nor spooled."""
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS feedback, decisions, alembic_version CASCADE"))
        conn.execute(sa.text("DROP TABLE IF EXISTS pipeline_checkpoints"))
    from llmopt.spool import SpooledEventLog  # noqa: PLC0415

    log = SpooledEventLog(postgres_url, spool_dir=tmp_path, group_commit=True)
    ctx = RequestContext(tenant="acme")
    first = Decision(model="m", propensity=1.0, policy_name="t")
    log.record_decision(first, ctx, features={})
    held = log._writer_conn
    assert held is not None
    pid = held.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    held.rollback()  # the read above began a transaction: end it, as the writer would have
    with engine.connect() as admin:
        assert admin.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
    again = Decision(model="m", propensity=1.0, policy_name="t")
    log.record_decision(again, ctx, features={})  # raises if the group failed
    assert log.get_decision(again.decision_id) is not None
    assert log._writer_conn is not None and log._writer_conn is not held
    assert log.spooled == 0
    log.close()
    engine.dispose()
