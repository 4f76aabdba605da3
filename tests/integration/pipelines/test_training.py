"""Incremental training: checkpoints make a crash and a rerun lose and double-count nothing, and
on PostgreSQL feedback that concurrent writers commit out of id order is learned exactly once."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from llmopt.event_log import EventLog, LogCursor, feedback
from llmopt.schemas import Decision, Feedback, RequestContext
from llmopt.settings import Settings
from models.kinds import RECOMMENDED, make_policy
from pipelines.checkpoint import CheckpointStore
from pipelines.training import TrainingResult, incremental_update, rebuild

pytestmark = pytest.mark.integration


def _fresh() -> tuple[object, int, int]:
    return make_policy(RECOMMENDED, seed=0), 0, 0


def test_crash_midway_then_rerun_learns_every_feedback_exactly_once(
    env: Settings, filled: Callable[..., int]
) -> None:
    total = filled(230)
    log = EventLog(env.event_log_url)
    store = CheckpointStore(log.engine)

    class Killed(RuntimeError):
        pass

    def crash_after_two(batch: int, cursor: LogCursor) -> None:
        if batch == 1:
            raise Killed(f"killed after feedback #{cursor}")

    with pytest.raises(Killed):
        incremental_update(
            log, store, name="inc", initial=_fresh, batch_size=50, on_batch=crash_after_two
        )
    saved = store.load("inc")
    assert saved is not None and saved.last_feedback_id == 100 and saved.n_events == 100
    assert saved.cursor == LogCursor(0, 100)  # SQLite: the cursor is the feedback id

    resumed = incremental_update(log, store, name="inc", initial=_fresh, batch_size=50)
    assert (resumed.after_id, resumed.last_feedback_id) == (100, total)
    assert resumed.n_events == total - 100 and resumed.n_total == total
    assert resumed.policy.n_updates == total  # nothing lost, nothing learned twice

    # Same state as one uninterrupted run over the same feedback.
    other = CheckpointStore(log.engine)
    straight = incremental_update(log, other, name="straight", initial=_fresh, batch_size=50)
    assert straight.policy.to_dict() == resumed.policy.to_dict()

    # New feedback arrives: the next run learns only that.
    more = filled(40, seed=1)
    nxt = incremental_update(log, store, name="inc", initial=_fresh, batch_size=50)
    assert (nxt.after_id, nxt.n_events, nxt.n_total) == (total, more - total, more)
    again = incremental_update(log, store, name="inc", initial=_fresh, batch_size=50)
    assert again.n_events == 0 and again.last_feedback_id == more
    log.close()


def test_rebuild_learns_the_whole_history(env: Settings, filled: Callable[..., int]) -> None:
    total = filled(120)
    log = EventLog(env.event_log_url)
    result = rebuild(log, make_policy(RECOMMENDED, seed=0), batch_size=40)
    assert result.n_events == total == result.policy.n_updates
    assert result.data_window == f"feedback (0, {total}]"
    assert log.last_feedback_id() == total
    assert sum(len(b) for b in log.training_batches(0, 7, until_id=50)) == 50
    log.close()


# -- PostgreSQL: concurrent writers commit their feedback ids out of order ----------------------


@pytest.fixture
def pg_log(postgres_url: str) -> Iterator[EventLog]:
    """An event log in a fresh PostgreSQL database of its own (dropped afterwards)."""
    server = postgres_url.rpartition("/")[0]
    admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    name = f"llmopt_cursor_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    log = EventLog(f"{server}/{name}")
    try:
        yield log
    finally:
        log.close()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _decisions(log: EventLog, n: int) -> list[str]:
    ids = []
    for i in range(n):
        d = Decision(model=f"m{i % 3}", propensity=0.5, policy_name="t", scores={"m0": 0.1})
        log.record_decision(d, RequestContext(tenant="t"), features={"bias": 1.0})
        ids.append(d.decision_id)
    return ids


def _row(did: str) -> dict[str, object]:
    return EventLog.feedback_row(Feedback(decision_id=did, quality=0.7), reward=0.6)


class Writer:
    """A writer's long transaction: feedback inserted now, committed (or not) later."""

    def __init__(self, log: EventLog) -> None:
        self.conn = log.engine.connect()
        self.conn.begin()

    def insert(self, did: str) -> int:
        pk = self.conn.execute(feedback.insert().values(**_row(did))).inserted_primary_key
        assert pk is not None
        return int(pk[0])

    def commit(self) -> None:
        self.conn.commit()
        self.conn.close()

    def rollback(self) -> None:
        self.conn.rollback()
        self.conn.close()


def _stored(log: EventLog, did: str) -> int:
    fid = log.record_feedback(Feedback(decision_id=did, quality=0.7), reward=0.6).feedback_id
    assert fid is not None
    return fid


def _learned(log: EventLog, after: LogCursor, until: LogCursor) -> list[int]:
    """The feedback ids between two checkpoints of a run: what it learned."""
    return [e.feedback_id for b in log.training_batches_after(after, 100, until=until) for e in b]


def _all_ids(log: EventLog) -> list[int]:
    with log.engine.connect() as conn:
        return sorted(int(i) for i in conn.execute(sa.select(feedback.c.feedback_id)).scalars())


@pytest.mark.services
def test_feedback_committed_out_of_order_by_several_writers_is_learned_exactly_once(
    pg_log: EventLog,
) -> None:
    """Long transactions A, B, C and D interleave with short writes and training runs; a
    training run crashes midway; D rolls back. Every committed feedback is learned once."""
    log, store = pg_log, CheckpointStore(pg_log.engine)
    dids = iter(_decisions(log, 10))
    learned: list[int] = []

    def run(**kwargs: Any) -> TrainingResult:
        result = incremental_update(log, store, name="inc", initial=_fresh, batch_size=2, **kwargs)
        learned.extend(_learned(log, result.after, result.cursor))
        return result

    first = _stored(log, next(dids))
    a = Writer(log)
    id_a = a.insert(next(dids))  # A takes the next id and stays open...
    id_2 = _stored(log, next(dids))  # ...while later ids commit
    b = Writer(log)
    id_b = b.insert(next(dids))
    c = Writer(log)
    ids_c = [c.insert(next(dids)), c.insert(next(dids))]  # two rows, one transaction
    c.commit()
    id_6 = _stored(log, next(dids))
    assert first < id_a < id_2 < id_b < ids_c[0] < ids_c[1] < id_6

    r1 = run()
    assert (r1.n_events, r1.n_waiting) == (1, 4) and learned == [first]
    # A cursor that kept the largest id seen would now stand past A's and B's ids for ever:
    assert max(e.feedback_id for e in log.feedback_since(first)) == id_6 > id_b > id_a

    a.commit()
    r2 = run()  # B is still open: A's row and the one committed between A and B, no more
    assert learned[1:] == [id_a, id_2] and r2.n_waiting == 3

    d = Writer(log)
    d.insert(next(dids))  # D opens after B...
    b.commit()

    class Killed(RuntimeError):
        pass

    def crash(batch: int, cursor: LogCursor) -> None:
        raise Killed(f"killed at {cursor}")

    before = store.load("inc")
    assert before is not None
    with pytest.raises(Killed):  # learns one batch of B's and C's rows, then dies
        run(on_batch=crash)
    killed = store.load("inc")
    assert killed is not None and killed.n_events == before.n_events + 2
    learned.extend(_learned(log, before.cursor, killed.cursor))
    r3 = run()  # resumes after the checkpoint: the rest of B, C and the short write
    assert r3.after == killed.cursor and r3.n_events == 2

    d.rollback()  # ...and rolls back: its id is a gap for ever, and must not hold anyone up
    id_last = _stored(log, next(dids))
    r4 = run()
    assert r4.n_waiting == 0 and learned[-1] == id_last

    everything = _all_ids(log)
    assert sorted(learned) == everything and len(learned) == len(set(learned)) == 8
    # In the order their transactions began, not the order of their ids:
    assert learned == [first, id_a, id_2, id_b, *ids_c, id_6, id_last]
    assert r4.n_total == len(everything) == r4.policy.n_updates  # nothing lost or learned twice
    assert run().n_events == 0


@pytest.mark.services
def test_writer_threads_with_long_transactions_and_a_training_loop_learn_everything_once(
    pg_log: EventLog,
) -> None:
    """Four writer threads commit 1-3 feedback rows per transaction, holding each open for up
    to 40 ms (one in ten rolls back and retries) while training runs in a loop. Writer 0 holds
    its first transaction until a training run has seen later feedback wait behind it."""
    log, store = pg_log, CheckpointStore(pg_log.engine)
    n_writers, per_writer = 4, 25
    dids = _decisions(log, n_writers * per_writer)
    committed = [0] * n_writers
    release = threading.Event()
    errors: list[BaseException] = []

    def write(k: int) -> None:
        rng = random.Random(k)
        mine, i = dids[k::n_writers], 0
        try:
            with log.engine.connect() as conn:
                while i < len(mine):
                    conn.begin()
                    take = mine[i : i + rng.randint(1, 3)]
                    for did in take:
                        conn.execute(feedback.insert().values(**_row(did)))
                        time.sleep(rng.uniform(0, 0.01))
                    if k == 0 and i == 0:
                        assert release.wait(60), "no training run saw feedback wait"
                    time.sleep(rng.uniform(0, 0.03))
                    if rng.random() < 0.1:
                        conn.rollback()  # retried: the same decisions, new ids
                        continue
                    conn.commit()
                    i += len(take)
                    committed[k] += len(take)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            release.set()

    threads = [threading.Thread(target=write, args=(k,)) for k in range(n_writers)]
    for t in threads:
        t.start()
    learned: list[int] = []
    runs: list[TrainingResult] = []
    while any(t.is_alive() for t in threads):
        result = incremental_update(log, store, name="inc", initial=_fresh, batch_size=7)
        learned.extend(_learned(log, result.after, result.cursor))
        runs.append(result)
        if not release.is_set() and sum(committed[1:]) >= 10 and result.n_waiting >= 10:
            release.set()  # this run saw feedback committed after writer 0's id wait for it
        time.sleep(0.005)
    for t in threads:
        t.join()
    assert not errors, errors
    final = incremental_update(log, store, name="inc", initial=_fresh, batch_size=7)
    learned.extend(_learned(log, final.after, final.cursor))

    everything = _all_ids(log)
    assert len(everything) == n_writers * per_writer == sum(committed)
    assert sorted(learned) == everything and len(set(learned)) == len(learned)
    assert final.n_total == len(everything) == final.policy.n_updates
    assert len(runs) > 3 and any(r.n_waiting for r in runs)


def test_a_checkpoint_table_from_before_the_log_cursor_gains_its_column(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'events.db'}")
    with engine.begin() as conn:  # the table as the previous release created it
        conn.execute(
            sa.text(
                "CREATE TABLE pipeline_checkpoints (name VARCHAR(100) PRIMARY KEY, "
                "last_feedback_id INTEGER NOT NULL, n_events INTEGER NOT NULL, "
                "state TEXT NOT NULL, updated_at DATETIME NOT NULL)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO pipeline_checkpoints VALUES "
                "('incremental', 42, 40, '{\"kind\": \"x\"}', CURRENT_TIMESTAMP)"
            )
        )
    store = CheckpointStore(engine)
    old = store.load("incremental")
    assert old is not None and old.cursor == LogCursor(0, 42) and old.n_events == 40
    store.save("incremental", last_feedback_id=50, last_tx=7, state={}, n_events=48)
    again = CheckpointStore(engine).load("incremental")  # opening twice changes nothing
    assert again is not None and again.cursor == LogCursor(7, 50)
    engine.dispose()


def _log_outcomes(settings: Settings, outcomes: list[tuple[str, float]]) -> None:
    log = EventLog(settings.event_log_url)
    for model, q in outcomes:
        d = Decision(model=model, propensity=0.5, policy_name="x", policy_version="v")
        log.record_decision(d, RequestContext(tenant="t"), features={"bias": 1.0})
        log.record_feedback(Feedback(decision_id=d.decision_id, quality=q), reward=q)
    log.close()


@pytest.mark.parametrize("policy_name", [RECOMMENDED, "thompson_gaussian"])
def test_incremental_training_discounts_a_degraded_model_as_serving_does(
    env: Settings, policy_name: str
) -> None:
    """Model a answers well (0.9) 600 times, then badly (0.1) 150 times; b stays at 0.6. Learned
    in two runs (the second warms its detectors up on the first's events): with the drift
    response the lineage prefers b at the end; without it, it still prefers a."""
    rng = random.Random(0)

    def noisy(mean: float) -> float:
        return min(1.0, max(0.0, mean + rng.gauss(0, 0.05)))

    before = [(m, noisy(0.9 if m == "a" else 0.6)) for _ in range(300) for m in ("a", "b")]
    after = [(m, noisy(0.1 if m == "a" else 0.6)) for _ in range(150) for m in ("a", "b")]
    _log_outcomes(env, before)
    log = EventLog(env.event_log_url)
    store = CheckpointStore(log.engine)

    def fresh() -> tuple[object, int, int]:
        return make_policy(policy_name, seed=0), 0, 0

    def train(name: str, drift: bool) -> TrainingResult:
        return incremental_update(
            log, store, name=name, initial=fresh, batch_size=100, respond_to_drift=drift
        )

    first = {drift: train(f"lineage-{drift}", drift) for drift in (True, False)}
    assert first[True].drift_responses == 0  # nothing drifted yet
    _log_outcomes(env, after)
    second = {drift: train(f"lineage-{drift}", drift) for drift in (True, False)}
    log.close()
    assert second[True].drift_responses >= 1 and second[False].drift_responses == 0
    responded, plain = second[True].policy, second[False].policy
    assert responded.n_updates == plain.n_updates == len(before) + len(after)
    assert responded.arm_mean("a") < responded.arm_mean("b")  # moved off the degraded model
    assert plain.arm_mean("a") > plain.arm_mean("b")  # remembers 300 good answers of a
