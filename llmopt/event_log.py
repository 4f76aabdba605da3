"""The event log: every decision and every feedback, durable, joined by ``decision_id``.

SQLite in the embedded profile, PostgreSQL in production (same code, one URL). The schema is owned
by Alembic migrations (``llmopt/migrations``); opening a log upgrades it to the latest revision.

Guarantees:
- a feedback joins its decision by ``decision_id`` and may arrive any time later;
- the same feedback twice is stored once and reported as a duplicate; a *different* feedback for a
  decision that already has one is refused (``ConflictingFeedbackError``) and the first one kept;
- feedback for an unknown ``decision_id`` is refused (``UnknownDecisionError``);
- every accepted write is committed before the call returns (decisions logged inside
  :meth:`EventLog.deferred_writes`: before its wait returns); feedback rows get increasing ids;
- a reader that follows the log with a :class:`LogCursor` (:meth:`EventLog.stable_cursor`,
  :meth:`EventLog.training_batches_after`, :meth:`EventLog.feedback_after`) sees every feedback
  exactly once, even when concurrent writers commit their ids out of order (PostgreSQL).

Every query on the two tables is a method of :class:`EventLog`: the writes, the joined events
(:meth:`EventLog.iter_events`), the five-column training reads by keyset pagination
(:meth:`EventLog.training_batches`, :meth:`EventLog.latest_training_events`), the cursors and
counts that fix a data window ``(after_id, until_id]`` (:meth:`EventLog.last_feedback_id`,
:meth:`EventLog.count_feedback`, :meth:`EventLog.cursor_before_latest`), the commit-safe cursor
of exactly-once readers (:class:`LogCursor`) and the A/B test's rewards
(:meth:`EventLog.rewards_by_policy_version`).

Examples
--------
>>> from llmopt.schemas import Decision, Feedback, RequestContext
>>> log = EventLog("sqlite://")
>>> d = Decision(model="gpt-4o-mini", propensity=0.9, policy_name="doc")
>>> log.record_decision(d, RequestContext(tenant="acme"), features={"bias": 1.0})
>>> log.record_feedback(Feedback(decision_id=d.decision_id, quality=0.8), reward=0.7).status
'stored'
>>> log.record_feedback(Feedback(decision_id=d.decision_id, quality=0.8), reward=0.7).status
'duplicate'
>>> [e.reward for e in log.feedback_since(0)]
[0.7]
>>> log.last_feedback_id(), log.count_feedback(0, 1)
(1, 1)
>>> [(e.model, e.quality) for b in log.training_batches(0, 10) for e in b]
[('gpt-4o-mini', 0.8)]
>>> top = log.stable_cursor()
>>> top, [e.feedback_id for b in log.training_batches_after(LogCursor(), 10, until=top) for e in b]
(LogCursor(tx_id=0, feedback_id=1), [1])
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from llmopt import fast_json
from llmopt.group_commit import GroupCommit
from llmopt.schemas import Decision, Feedback, RequestContext, utc_now
from llmopt.types import DecisionID
from llmopt.wal_checkpoint import WalCheckpointer

log = logging.getLogger("llmopt.event_log")

metadata = sa.MetaData()

decisions = sa.Table(
    "decisions",
    metadata,
    sa.Column("decision_id", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("tenant", sa.String(200), nullable=False, index=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("parameters", sa.JSON, nullable=False),
    sa.Column("propensity", sa.Float, nullable=False),
    sa.Column("policy_name", sa.String(100), nullable=False),
    sa.Column("policy_version", sa.String(100), nullable=False),
    sa.Column("scores", sa.JSON, nullable=False),
    sa.Column("context", sa.JSON, nullable=False),
    sa.Column("features", sa.JSON, nullable=False),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("feedback_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "decision_id",
        sa.String(64),
        sa.ForeignKey("decisions.decision_id"),
        nullable=False,
        unique=True,
    ),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("quality", sa.Float, nullable=False),
    sa.Column("reward", sa.Float, nullable=True),
    sa.Column("cost_usd", sa.Float, nullable=True),
    sa.Column("latency_ms", sa.Float, nullable=True),
    sa.Column("input_tokens", sa.Integer, nullable=True),
    sa.Column("output_tokens", sa.Integer, nullable=True),
    sa.Column("error_kind", sa.String(40), nullable=True),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("payload_sha256", sa.String(64), nullable=False),
    # The writing transaction (PostgreSQL's 64-bit xid; 0 on SQLite), set by the database's
    # default (migration 0002): the first key of the commit-safe read order (LogCursor).
    sa.Column("tx_id", sa.BigInteger, nullable=False),
    sa.Index("ix_feedback_tx_id_feedback_id", "tx_id", "feedback_id"),
)

_PG_HORIZON = sa.cast(
    sa.cast(sa.func.pg_snapshot_xmin(sa.func.pg_current_snapshot()), sa.Text), sa.BigInteger
)
"""PostgreSQL: the id of the oldest transaction still in flight (every older one has ended)."""


class _StaleConnection(Exception):
    """The group writer's held connection died before its transaction was committed."""


class EventLogError(ValueError):
    """A write the event log refuses; the message says why."""


class UnknownDecisionError(EventLogError):
    """Feedback names a decision_id the log has never seen."""


class ConflictingFeedbackError(EventLogError):
    """A decision already has a different feedback; the first one is kept."""


class DuplicateDecisionError(EventLogError):
    """A decision with this decision_id is already logged."""


class LogCursorError(ValueError):
    """A cursor the event log cannot continue from; the message says why and what to do."""


@dataclass(frozen=True, order=True)
class LogCursor:
    """A reader's position in the feedback log: every feedback at or before it has been read.

    Feedback is read in ``(tx_id, feedback_id)`` order, where ``tx_id`` is the transaction that
    wrote the row, and only up to :meth:`EventLog.stable_cursor`: rows whose transaction is
    older than every transaction still in flight. A feedback that commits later therefore lies
    after any cursor handed out before it: no reader skips it, and none reads it twice.

    Why not the largest feedback id: on PostgreSQL ids come from a sequence when a row is
    *inserted*, and transactions *commit* in any order. Writer A takes id 10, writer B takes id
    11 and commits first; a reader that learns 11 and keeps "max id = 11" never reads 10. Two
    other designs were weighed:

    - a lookback window below the cursor and a set of the ids already learned. It is exact only
      if the window outlasts the longest transaction, which nothing bounds (a writer stuck
      behind a lock, a slow network), and the set grows with the write rate;
    - serialising writers (a lock taken at insert time), which makes ids commit in order but
      makes every feedback write wait for the slowest one in flight.

    The transaction watermark is exact with no window to tune and costs writers nothing: a row
    records its transaction id (``pg_current_xact_id()``, 64 bits, never wraps), and
    ``pg_snapshot_xmin(pg_current_snapshot())`` is the oldest transaction still running, so every
    row with a smaller ``tx_id`` is final, and any row committed later has a ``tx_id`` at least
    that large. The price: a long write transaction anywhere on the server holds back what
    readers see until it ends (learning waits, nothing is lost). A database restored into a new
    cluster restarts transaction ids below the stored cursors; :meth:`EventLog.stable_cursor`
    refuses such a cursor (:class:`LogCursorError`) rather than skip rows silently.

    SQLite serialises writers, so ids already commit in order there: ``tx_id`` is 0 on every row
    and the cursor is the largest feedback id read, as before.

    >>> LogCursor(0, 12) < LogCursor(7, 3), str(LogCursor(7, 3)), LogCursor.parse("7:3")
    (True, '7:3', LogCursor(tx_id=7, feedback_id=3))
    >>> LogCursor.parse("12")  # a bare feedback id (a SQLite-era tag)
    LogCursor(tx_id=0, feedback_id=12)
    """

    tx_id: int = 0
    feedback_id: int = 0

    def __str__(self) -> str:
        return f"{self.tx_id}:{self.feedback_id}"

    @classmethod
    def parse(cls, text: str) -> LogCursor:
        """The cursor written by ``str()`` (``"tx:id"``), or a bare feedback id (``tx_id`` 0)."""
        tx, _, fid = text.strip().rpartition(":")
        try:
            return cls(int(tx or 0), int(fid))
        except ValueError:
            raise LogCursorError(
                f"not a log cursor: {text!r} (expected 'tx_id:feedback_id')"
            ) from None


@dataclass(frozen=True)
class FeedbackReceipt:
    """What happened to one feedback: ``stored`` now, already stored (``duplicate``), or kept in
    the local spool while the database is down (``spooled``, no id yet; :mod:`llmopt.spool`)."""

    status: Literal["stored", "duplicate", "spooled"]
    feedback_id: int | None
    decision_id: DecisionID


@dataclass(frozen=True)
class LoggedEvent:
    """A feedback joined with its decision: one training example for policies and OPE."""

    feedback_id: int
    decision_id: DecisionID
    decided_at: datetime
    received_at: datetime
    tenant: str
    model: str
    propensity: float
    policy_name: str
    policy_version: str
    context: dict[str, Any]
    features: dict[str, float]
    quality: float
    reward: float | None
    cost_usd: float | None
    latency_ms: float | None
    error_kind: str | None
    tx_id: int = 0
    """The writing transaction (PostgreSQL; 0 on SQLite): with the id, the event's
    :attr:`position`."""

    @property
    def position(self) -> LogCursor:
        """The cursor just after this event (:class:`LogCursor`)."""
        return LogCursor(self.tx_id, self.feedback_id)


@dataclass(frozen=True, slots=True)
class TrainingEvent:
    """One feedback joined with its decision, five columns of it: what training and off-policy
    evaluation read (:meth:`EventLog.training_batches`)."""

    feedback_id: int
    model: str
    features: dict[str, float]
    quality: float
    reward: float | None
    cost_usd: float | None
    propensity: float
    policy_version: str
    arms: tuple[str, ...]
    """Models the decision chose among (the keys of its logged scores; read ``with_context``)."""
    context: dict[str, Any]
    tx_id: int = 0
    """The writing transaction (PostgreSQL; 0 on SQLite)."""

    @property
    def position(self) -> LogCursor:
        """The cursor just after this event (:class:`LogCursor`)."""
        return LogCursor(self.tx_id, self.feedback_id)


@dataclass(frozen=True, slots=True)
class ParameterFeedback:
    """The reward of a decision served with tuned generation parameters: what fitting the
    served tuning reads (:meth:`EventLog.parameter_feedback`)."""

    feedback_id: int
    tuning: dict[str, Any]
    """The decision's tuning record (``context.tuning``: the pair's key and trial number)."""
    parameters: dict[str, Any]
    """The parameters served (the decision's ``parameters`` column)."""
    reward: float
    error_kind: str | None


def _decode(value: Any) -> Any:
    return fast_json.loads(value) if isinstance(value, str | bytes) else value


def _duplicate(row: Mapping[str, Any]) -> DuplicateDecisionError:
    return DuplicateDecisionError(f"decision_id {row['decision_id']!r} is already logged")


@dataclass(frozen=True, slots=True)
class CallRecord:
    """A gateway's measurements of one call, for its decision's ``context.call``
    (:meth:`EventLog.record_call`)."""

    decision_id: DecisionID
    call: dict[str, Any]


_SET_CALL: dict[str, sa.TextClause] = {
    "sqlite": sa.text(
        "UPDATE decisions SET context = json_set(context, '$.call', json(:call)) "
        "WHERE decision_id = :decision_id"
    ),
    "postgresql": sa.text(
        "UPDATE decisions SET context = CAST(jsonb_set(CAST(context AS jsonb), '{call}', "
        "CAST(:call AS jsonb)) AS json) WHERE decision_id = :decision_id"
    ),
}
"""The one statement that sets a decision's ``context.call`` in place: PostgreSQL's, else
SQLite's (the log's two databases, as everywhere in this module)."""


class PendingWrites:
    """The writes queued inside :meth:`EventLog.deferred_writes`; wait before answering."""

    def __init__(
        self,
        group: GroupCommit[Any] | None = None,
        submit: Callable[[list[dict[str, Any]], list[Future[None]]], None] | None = None,
    ) -> None:
        self.futures: list[Future[None]] = []
        self.group = group
        """The writer the futures came from (its :meth:`GroupCommit.waiter` wakes the event
        loop once per group); None: each future is awaited on its own."""
        self.held: list[dict[str, Any]] | None = None
        """Decision rows kept back until :meth:`release` (``deferred_writes(hold=True)``)."""
        self._submit = submit

    def release(self, calls: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """Write the decision rows held back (``deferred_writes(hold=True)``) in one
        transaction (:meth:`GroupCommit.submit_many`), each with the call its id maps to in
        ``calls`` kept in its context under ``"call"``, exactly as
        :meth:`EventLog.record_call` would keep it afterwards, in the same write."""
        rows, self.held = self.held or [], None
        if not rows:
            return
        assert self._submit is not None
        if calls:
            for row in rows:
                call = calls.get(row["decision_id"])
                if call is not None:
                    row["context"] = {**row["context"], "call": dict(call)}
        self._submit(rows, self.futures)

    def wait(self, timeout: float | None = 30.0) -> int:
        """Block until every write is committed (or spooled); re-raises the first failure.
        Returns how many there were. Rows still held are written first."""
        self.release()
        for fut in self.futures:
            fut.result(timeout)
        return len(self.futures)

    async def wait_async(self) -> int:
        """:meth:`wait` without blocking the event loop (other requests run meanwhile)."""
        self.release()
        group = self.group
        for fut in self.futures:
            if not fut.done():
                # A cancelled request (client gone, timeout) stops waiting; the write goes on.
                waiter = group.waiter(fut) if group is not None else None
                if waiter is not None:
                    await waiter
                elif not fut.done():
                    await asyncio.shield(asyncio.wrap_future(fut))
            fut.result()
        return len(self.futures)


class _RowInsert:
    """``conn.execute(table.insert(), rows)``, the same SQL and the same values bound, without
    SQLAlchemy's per-row parameter machinery: the statement is compiled once for ``dialect``
    and each row's values go through the columns' own bind processors (the JSON serializer,
    SQLite's datetime format) into one DBAPI ``executemany``. The group writer inserts every
    served decision with it: x0.76 the process CPU per decision logged alone, x0.77 in groups
    of 100 (``python -m bench event_log_writer``). Errors are SQLAlchemy's as before
    (``exec_driver_sql``).

    Every row must hold every column of ``table``.
    """

    def __init__(self, table: sa.Table, dialect: sa.Dialect) -> None:
        compiled = table.insert().compile(dialect=dialect)
        self.sql = compiled.string
        self.positional = bool(compiled.positional)
        names = list(compiled.positiontup or []) if self.positional else list(compiled.params)
        self.columns = [
            (name, table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in names
        ]

    def execute(self, conn: sa.Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        columns = self.columns
        params: list[Any]
        if self.positional:
            params = [tuple([r[n] if p is None else p(r[n]) for n, p in columns]) for r in rows]
        else:
            params = [{n: r[n] if p is None else p(r[n]) for n, p in columns} for r in rows]
        conn.exec_driver_sql(self.sql, params)


def _aware(ts: datetime) -> datetime:
    """SQLite returns naive datetimes; everything we store is UTC."""
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def _payload(fb: Feedback) -> tuple[dict[str, Any], str]:
    data = fb.model_dump(mode="json", exclude_none=True)
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return data, digest


_ORDER = (feedback.c.tx_id, feedback.c.feedback_id)
"""The commit-safe read order (:class:`LogCursor`)."""


def _after(cursor: LogCursor) -> sa.ColumnElement[bool]:
    return sa.tuple_(*_ORDER) > sa.tuple_(sa.literal(cursor.tx_id), sa.literal(cursor.feedback_id))


def _event_query() -> sa.Select[Any]:
    """Feedback joined with its decision: the columns of a :class:`LoggedEvent`."""
    return sa.select(
        feedback.c.feedback_id,
        feedback.c.decision_id,
        decisions.c.created_at,
        feedback.c.received_at,
        decisions.c.tenant,
        decisions.c.model,
        decisions.c.propensity,
        decisions.c.policy_name,
        decisions.c.policy_version,
        decisions.c.context,
        decisions.c.features,
        feedback.c.quality,
        feedback.c.reward,
        feedback.c.cost_usd,
        feedback.c.latency_ms,
        feedback.c.error_kind,
        feedback.c.tx_id,
    ).join(decisions, decisions.c.decision_id == feedback.c.decision_id)


def _logged_event(r: Any) -> LoggedEvent:
    return LoggedEvent(
        feedback_id=r.feedback_id,
        decision_id=r.decision_id,
        decided_at=_aware(r.created_at),
        received_at=_aware(r.received_at),
        tenant=r.tenant,
        model=r.model,
        propensity=r.propensity,
        policy_name=r.policy_name,
        policy_version=r.policy_version,
        context=r.context,
        features=r.features,
        quality=r.quality,
        reward=r.reward,
        cost_usd=r.cost_usd,
        latency_ms=r.latency_ms,
        error_kind=r.error_kind,
        tx_id=int(r.tx_id),
    )


def _training_query(with_context: bool) -> sa.Select[Any]:
    """The columns of a :class:`TrainingEvent` (``with_context``: offered models and context)."""
    cols: list[Any] = [
        feedback.c.feedback_id,
        feedback.c.tx_id,
        decisions.c.model,
        # Raw JSON text, decoded below with the fastest decoder available (most of a read's
        # cost); PostgreSQL's driver may already return a dict.
        sa.type_coerce(decisions.c.features, sa.Text).label("features"),
        feedback.c.quality,
        feedback.c.reward,
        feedback.c.cost_usd,
        decisions.c.propensity,
        decisions.c.policy_version,
    ]
    if with_context:  # evaluation needs the offered models and the request's trade-off
        cols += [decisions.c.scores, decisions.c.context]
    return sa.select(*cols).join(decisions, decisions.c.decision_id == feedback.c.decision_id)


def _training_event(r: Any, with_context: bool) -> TrainingEvent:
    return TrainingEvent(
        feedback_id=r.feedback_id,
        model=r.model,
        features=_decode(r.features),
        quality=r.quality,
        reward=r.reward,
        cost_usd=r.cost_usd,
        propensity=r.propensity,
        policy_version=r.policy_version,
        arms=(tuple(r.scores) or (r.model,)) if with_context else (r.model,),
        context=r.context if with_context else {},
        tx_id=int(r.tx_id),
    )


def upgrade_schema(engine: Engine) -> None:
    """Bring the database at ``engine`` to the latest Alembic revision."""
    from alembic import command  # noqa: PLC0415 - only needed when opening a log
    from alembic.config import Config  # noqa: PLC0415

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


_IN_MEMORY = ("sqlite://", "sqlite:///:memory:")


def create_engine(url: str, *, checkpoint_thread: bool = False) -> Engine:
    """An engine for the event log; SQLite gets WAL and a busy timeout for concurrent writers.

    ``checkpoint_thread``: a :class:`~llmopt.wal_checkpoint.WalCheckpointer` checkpoints the
    file, so this engine's commits never do (SQLite files only).
    """
    if url.startswith("sqlite"):
        in_memory = url in _IN_MEMORY
        engine = sa.create_engine(
            url,
            json_serializer=fast_json.dumps,
            json_deserializer=fast_json.loads,
            # In memory: one shared connection (or every checkout would see a new empty
            # database), used by the group writer's thread too.
            connect_args={"timeout": 30, **({"check_same_thread": False} if in_memory else {})},
            poolclass=sa.pool.StaticPool if in_memory else None,
        )

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            if not in_memory:
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
            if checkpoint_thread and not in_memory:
                WalCheckpointer.configure(dbapi_conn)

        return engine
    return sa.create_engine(
        url, pool_pre_ping=True, json_serializer=fast_json.dumps, json_deserializer=fast_json.loads
    )


class EventLog:
    """Decisions and feedback in one SQL database.

    Parameters
    ----------
    url
        SQLAlchemy URL (``sqlite:///path.db``, ``postgresql+psycopg://user@host/db``), or the
        engine of a log already open (code that shares it, e.g. with the training checkpoints).
    migrate
        Upgrade the schema to the latest revision on open.
    """

    def __init__(
        self,
        url: str | Engine,
        *,
        migrate: bool = True,
        group_commit: bool = False,
        checkpoint_s: float = 0.0,
    ) -> None:
        self.checkpointer: WalCheckpointer | None = None
        """Checkpoints a SQLite file's write-ahead log on a thread of its own when
        ``checkpoint_s`` > 0 (:mod:`llmopt.wal_checkpoint`); None: SQLite's own, in commits."""
        own, database = False, None
        if isinstance(url, Engine):
            self._engine = url
            self.url = url.url.render_as_string(hide_password=False)
        else:
            self.url = url
            database = sa.engine.make_url(url).database if url.startswith("sqlite") else None
            own = checkpoint_s > 0 and url not in _IN_MEMORY and bool(database)
            self._engine = create_engine(url, checkpoint_thread=own)
        if migrate:
            upgrade_schema(self._engine)
        if own and database:  # after the schema: the file exists, in WAL mode
            # with a group writer, the log's restart is its job (between two groups)
            self.checkpointer = WalCheckpointer(
                database, interval_s=checkpoint_s, restart_on_thread=not group_commit
            )
        self._insert_decision = decisions.insert()
        self._insert_feedback = feedback.insert()
        self._decision_rows: _RowInsert | None = None  # the writer's, at its first write
        self._local = threading.local()
        self.group: GroupCommit[dict[str, Any] | CallRecord] | None = (
            GroupCommit(self._flush_writes, name="event-log-writer", after=self._after_group)
            if group_commit
            else None
        )
        """The decision writer when ``group_commit`` is on (see :meth:`deferred_writes`)."""
        self._hold_writer_conn = self.url not in _IN_MEMORY
        """The group writer keeps its connection between transactions (:meth:`_write_group`;
        not for an in-memory SQLite database, whose one connection every thread shares)."""
        self._writer_conn: sa.Connection | None = None

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (the training checkpoints share it; the queries on the event
        tables are this class's methods)."""
        return self._engine

    def close(self) -> None:
        """Write what the group writer holds, then release the connection pool."""
        if self.group is not None:
            self.group.close()
        self._drop_writer_conn()
        self._engine.dispose()
        if self.checkpointer is not None:
            self.checkpointer.close()

    def record_decision(
        self,
        decision: Decision,
        context: RequestContext,
        *,
        features: Mapping[str, float],
        extra: Mapping[str, Any] | None = None,
        store_prompt: bool = False,
    ) -> None:
        """Log one decision with the context and features it was made from.

        ``extra`` values (e.g. predicted cost) are kept in the context JSON. The prompt text is
        replaced by its SHA-256 unless ``store_prompt`` is set. Committed before it returns,
        unless called inside :meth:`deferred_writes` (then committed before that block's
        :meth:`PendingWrites.wait` returns).
        """
        row = self.decision_row(
            decision, context, features=features, extra=extra, store_prompt=store_prompt
        )
        held: list[dict[str, Any]] | None = getattr(self._local, "held", None)
        if held is not None:
            held.append(row)
            return
        self._submit([row], getattr(self._local, "pending", None))

    def _submit(self, rows: list[dict[str, Any]], pending: list[Future[None]] | None) -> None:
        """Write decision rows in one transaction: at once without group commit (the first
        row's error raised once all were tried); else queued to the writer as one entry that
        it never splits, their futures added to ``pending`` (None: waited for here)."""
        if self.group is None:
            error = next((e for e in self._flush_writes(rows) if e is not None), None)
            if error is not None:
                raise error
            return
        futures = self.group.submit_many(rows)
        if pending is None:
            for fut in futures:
                fut.result()
        else:
            pending.extend(futures)

    @contextmanager
    def deferred_writes(self, *, hold: bool = False) -> Iterator[PendingWrites]:
        """Decisions logged by this thread inside the block are queued, not awaited.

        The caller waits for them after the block (:meth:`PendingWrites.wait`, or ``await
        PendingWrites.wait_async()`` on an event loop) and only then answers: the commit happens
        outside whatever locks the block held, and concurrent requests share a transaction.
        Without ``group_commit`` the writes inside the block are committed at once, as outside.

        ``hold``: the decision rows are not written until :meth:`PendingWrites.release` (or a
        wait) and may take their call's measurements along: the gateway writes a non-streamed
        answer's decision and its call in one write instead of two. A decision no one released
        nor waited for is never written: release or wait before its id leaves the process.

        >>> from llmopt.schemas import Decision, RequestContext
        >>> log = EventLog("sqlite://", group_commit=True)
        >>> with log.deferred_writes() as writes:
        ...     for _ in range(3):
        ...         d = Decision(model="m", propensity=1.0, policy_name="doc")
        ...         log.record_decision(d, RequestContext(tenant="acme"), features={})
        >>> writes.wait()
        3
        >>> log.counts()["decisions"]
        3
        >>> log.close()
        """
        writes = PendingWrites(self.group, self._submit)
        outer: list[Future[None]] | None = getattr(self._local, "pending", None)
        outer_held: list[dict[str, Any]] | None = getattr(self._local, "held", None)
        self._local.pending = writes.futures
        if hold:
            writes.held = []
        self._local.held = writes.held
        try:
            yield writes
        finally:
            self._local.pending = outer
            self._local.held = outer_held
            if outer is not None:  # nested: the outer block waits for these too
                outer.extend(writes.futures)
                if writes.held and outer_held is not None:  # and writes what it held
                    outer_held.extend(writes.held)
                    writes.held = None

    def _after_group(self) -> None:
        """On the group writer, between two groups: start the WAL over if the checkpointer
        asks (:meth:`~llmopt.wal_checkpoint.WalCheckpointer.restart_if_due`). Here no commit
        of this process's decisions competes with it, so it needs no waiting for the write
        lock; the waiters of the group just written are already answered."""
        if self.checkpointer is not None:
            self.checkpointer.restart_if_due()

    def _flush_writes(
        self, items: Sequence[dict[str, Any] | CallRecord]
    ) -> list[BaseException | None]:
        """Insert decision rows and apply call records (:class:`CallRecord`, queued by
        :meth:`record_call`) in one transaction; per item, in order, None or its own error (a
        :class:`DuplicateDecisionError`). Other database errors raise. The calls are applied
        after the rows: a call is recorded for a decision already committed."""
        rows = [r for r in items if not isinstance(r, CallRecord)]
        calls = [r for r in items if isinstance(r, CallRecord)]
        try:
            self._write_group(rows, calls)
        except IntegrityError:
            if len(items) == 1 and rows:
                return [_duplicate(rows[0])]
            errors: dict[int, BaseException] = {}
            for i, row in enumerate(items):  # find the duplicate(s); the others are written
                if isinstance(row, CallRecord):
                    continue
                try:
                    self.insert_decision(row)
                except DuplicateDecisionError as exc:
                    errors[i] = exc
            if calls:
                with self._engine.begin() as conn:
                    self._update_calls(conn, calls)
            return [errors.get(i) for i in range(len(items))]
        return [None] * len(items)

    def _write_group(self, rows: list[dict[str, Any]], calls: list[CallRecord]) -> None:
        """Insert ``rows`` and apply ``calls`` in one transaction.

        On the group writer's thread, on the connection the writer keeps between its
        transactions: a single-row group then costs ~0.14 ms of CPU per decision on SQLite
        instead of ~0.17 (no pool checkout, no rollback when the connection goes back; on
        PostgreSQL also no pre-ping), which is every decision at low load
        (``python -m bench event_log_writer``). After any error but a duplicate key the
        connection is closed and the next group opens a fresh one. If the held connection
        turns out dead before the commit was sent (the database restarted since the last
        group), nothing was written: the group is written once more on a fresh connection.
        """
        group = self.group
        if not (self._hold_writer_conn and group is not None and group.on_writer()):
            with self._engine.begin() as pooled:
                self._write(pooled, rows, calls)
            return
        held = self._writer_conn
        reused = held is not None and not held.closed and not held.invalidated
        if held is None or not reused:
            held = self._writer_conn = self._engine.connect()
        try:
            try:
                with held.begin():
                    try:
                        self._write(held, rows, calls)
                    except sa.exc.DBAPIError as exc:
                        if reused and exc.connection_invalidated:
                            raise _StaleConnection from exc
                        raise
            except _StaleConnection:
                self._drop_writer_conn()
                log.info("event log: the writer's connection had died; writing on a new one")
                held = self._writer_conn = self._engine.connect()
                with held.begin():
                    self._write(held, rows, calls)
        except IntegrityError:
            raise
        except BaseException:
            self._drop_writer_conn()
            raise

    def _write(
        self, conn: sa.Connection, rows: list[dict[str, Any]], calls: list[CallRecord]
    ) -> None:
        if rows:
            plan = self._decision_rows
            if plan is None:  # at the first write: the engine's dialect has met its database
                plan = self._decision_rows = _RowInsert(decisions, conn.dialect)
            plan.execute(conn, rows)
        if calls:
            self._update_calls(conn, calls)

    def _drop_writer_conn(self) -> None:
        conn, self._writer_conn = self._writer_conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken: the pool discards it
                log.debug("event log: closing the writer's connection failed", exc_info=True)

    @staticmethod
    def decision_row(
        decision: Decision,
        context: RequestContext,
        *,
        features: Mapping[str, float],
        extra: Mapping[str, Any] | None = None,
        store_prompt: bool = False,
    ) -> dict[str, Any]:
        """The ``decisions`` row of a decision (see :meth:`record_decision`)."""
        ctx = context.model_dump(mode="json", exclude={"prompt"})
        ctx.update(extra or {})
        if context.prompt is not None:
            ctx["prompt_sha256"] = hashlib.sha256(context.prompt.encode()).hexdigest()
            if store_prompt:
                ctx["prompt"] = context.prompt
        row = {
            "decision_id": decision.decision_id,
            "created_at": decision.created_at,
            "tenant": context.tenant,
            "model": decision.model,
            "parameters": decision.parameters,
            "propensity": decision.propensity,
            "policy_name": decision.policy_name,
            "policy_version": decision.policy_version,
            "scores": decision.scores,
            "context": ctx,
            "features": dict(features),
        }
        return row

    def insert_decision(self, row: Mapping[str, Any]) -> None:
        """Insert a :meth:`decision_row`; :class:`DuplicateDecisionError` if its id is logged."""
        try:
            with self._engine.begin() as conn:
                conn.execute(self._insert_decision, [row])
        except IntegrityError:
            raise _duplicate(row) from None

    def get_decision(self, decision_id: DecisionID) -> dict[str, Any] | None:
        """The logged decision row, or None."""
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(decisions).where(decisions.c.decision_id == decision_id)
            ).first()
        return dict(row._mapping) if row is not None else None

    def record_call(self, decision_id: DecisionID, call: Mapping[str, Any]) -> bool:
        """Keep what a gateway measured of the call a decision led to (latency, time to first
        token, tokens, cost) in the decision's context, under ``"call"``; feedback that arrives
        later without those values is completed from it. False: no such decision.

        One statement (the database sets the key: SQLite's ``json_set``, PostgreSQL's
        ``jsonb_set``), no read. Inside :meth:`deferred_writes` with group commit it is queued
        with the block's writes and shares the writer's next transaction (True: the decision is
        not looked up then; a call of an unknown decision changes nothing).
        """
        record = CallRecord(decision_id, dict(call))
        pending: list[Future[None]] | None = getattr(self._local, "pending", None)
        if self.group is not None and pending is not None:
            pending.append(self.group.submit(record))
            return True
        with self._engine.begin() as conn:
            return self._update_calls(conn, [record]) > 0

    def _update_calls(self, conn: sa.Connection, calls: Sequence[CallRecord]) -> int:
        """Set ``context.call`` of each record's decision; how many rows changed."""
        params = [{"decision_id": c.decision_id, "call": fast_json.dumps(c.call)} for c in calls]
        statement = _SET_CALL["postgresql" if conn.dialect.name == "postgresql" else "sqlite"]
        return int(conn.execute(statement, params).rowcount or 0)

    def lookup_decision(self, decision_id: DecisionID) -> tuple[dict[str, Any] | None, bool]:
        """``(row, database_answered)``; here the database always answers (or raises).
        :class:`llmopt.spool.SpooledEventLog` says False while its database is down."""
        return self.get_decision(decision_id), True

    def record_feedback(
        self,
        fb: Feedback,
        *,
        reward: float | None = None,
        cost_usd: float | None = None,
        latency_ms: float | None = None,
    ) -> FeedbackReceipt:
        """Store one feedback exactly once (see the module docstring for the rules).

        ``cost_usd`` / ``latency_ms`` are the values used for the reward when the client did not
        report them (e.g. computed from the catalog); the client's own values win.
        """
        return self.insert_feedback(
            self.feedback_row(fb, reward=reward, cost_usd=cost_usd, latency_ms=latency_ms)
        )

    @staticmethod
    def feedback_row(
        fb: Feedback,
        *,
        reward: float | None = None,
        cost_usd: float | None = None,
        latency_ms: float | None = None,
    ) -> dict[str, Any]:
        """The ``feedback`` row of a feedback (see :meth:`record_feedback`)."""
        data, digest = _payload(fb)
        return {
            "decision_id": fb.decision_id,
            "received_at": utc_now(),
            "quality": fb.normalized_quality(),
            "reward": reward,
            "cost_usd": fb.cost_usd if fb.cost_usd is not None else cost_usd,
            "latency_ms": fb.latency_ms if fb.latency_ms is not None else latency_ms,
            "input_tokens": fb.input_tokens,
            "output_tokens": fb.output_tokens,
            "error_kind": fb.error_kind.value if fb.error_kind is not None else None,
            "payload": data,
            "payload_sha256": digest,
        }

    def insert_feedback(self, row: Mapping[str, Any]) -> FeedbackReceipt:
        """Insert a :meth:`feedback_row` exactly once (the rules of :meth:`record_feedback`)."""
        decision_id, digest = row["decision_id"], row["payload_sha256"]
        try:
            with self._engine.begin() as conn:
                known = conn.execute(
                    sa.select(decisions.c.decision_id).where(decisions.c.decision_id == decision_id)
                ).first()
                if known is None:
                    raise UnknownDecisionError(
                        f"unknown decision_id {decision_id!r}: feedback must name a decision "
                        "returned by /decide"
                    )
                result = conn.execute(self._insert_feedback, dict(row))
                pk = result.inserted_primary_key
                assert pk is not None
                return FeedbackReceipt("stored", int(pk[0]), decision_id)
        except IntegrityError:
            pass  # another feedback for this decision exists (maybe inserted concurrently)
        with self._engine.connect() as conn:
            existing = conn.execute(
                sa.select(feedback.c.feedback_id, feedback.c.payload_sha256).where(
                    feedback.c.decision_id == decision_id
                )
            ).one()
        if existing.payload_sha256 != digest:
            raise ConflictingFeedbackError(
                f"decision {decision_id!r} already has a different feedback "
                f"(#{existing.feedback_id}); the first feedback is kept"
            )
        return FeedbackReceipt("duplicate", int(existing.feedback_id), decision_id)

    def feedback_since(
        self, after_id: int = 0, *, limit: int | None = None, until_id: int | None = None
    ) -> list[LoggedEvent]:
        """Feedback joined with its decision, with ``after_id < feedback_id <= until_id`` (no
        upper bound when ``until_id`` is None), oldest first.

        A window of ids, for reports. A reader that must see every feedback once (a follower
        that keeps "the largest id seen") uses :meth:`feedback_after` instead: on PostgreSQL a
        smaller id can commit after a larger one was read.
        """
        return list(self.iter_events(after_id, limit=limit, until_id=until_id))

    def iter_events(
        self, after_id: int = 0, *, limit: int | None = None, until_id: int | None = None
    ) -> Iterator[LoggedEvent]:
        """Like :meth:`feedback_since`, streamed."""
        query = _event_query().where(feedback.c.feedback_id > after_id)
        query = query.order_by(feedback.c.feedback_id)
        if until_id is not None:
            query = query.where(feedback.c.feedback_id <= until_id)
        if limit is not None:
            query = query.limit(limit)
        with self._engine.connect() as conn:
            for r in conn.execute(query):
                yield _logged_event(r)

    def feedback_after(self, after: LogCursor, *, limit: int | None = None) -> list[LoggedEvent]:
        """The feedback after ``after`` that is final now, in cursor order: exactly once.

        For followers of the log (a serving worker learning what other workers stored): keep
        ``events[-1].position`` as the next cursor. Feedback whose transaction is still in
        flight, and any committed after an older one still in flight, waits for a later call
        (:class:`LogCursor`).
        """
        query = _event_query().where(_after(after), self._final()).order_by(*_ORDER)
        if limit is not None:
            query = query.limit(limit)
        with self._engine.connect() as conn:
            return [_logged_event(r) for r in conn.execute(query)]

    def training_batches(
        self,
        after_id: int,
        batch_size: int,
        *,
        until_id: int | None = None,
        with_context: bool = False,
    ) -> Iterator[list[TrainingEvent]]:
        """Events with ``after_id < feedback_id <= until_id``, oldest first, ``batch_size`` at
        a time, as :class:`TrainingEvent` (the columns training needs, not a full
        :class:`LoggedEvent`; ``with_context`` adds the offered models and the request context).

        Each batch is one short query (keyset pagination on ``feedback_id``), so a long backlog
        never holds a transaction or a cursor open while the policy learns. A window of ids
        (evaluation, HPO, rebuilds); incremental training reads :meth:`training_batches_after`.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        cursor = after_id
        while True:
            query = (
                _training_query(with_context)
                .where(feedback.c.feedback_id > cursor)
                .order_by(feedback.c.feedback_id)
                .limit(batch_size)
            )
            if until_id is not None:
                query = query.where(feedback.c.feedback_id <= until_id)
            with self._engine.connect() as conn:
                rows = conn.execute(query).all()
            if not rows:
                return
            yield [_training_event(r, with_context) for r in rows]
            cursor = rows[-1].feedback_id
            if len(rows) < batch_size:
                return

    def training_batches_after(
        self,
        after: LogCursor,
        batch_size: int,
        *,
        until: LogCursor,
        with_context: bool = False,
    ) -> Iterator[list[TrainingEvent]]:
        """Events with ``after < position <= until`` in cursor order (:class:`LogCursor`),
        ``batch_size`` at a time: what incremental training learns, exactly once.

        ``until`` comes from :meth:`stable_cursor`: every row up to it is final, so paging
        through them in several short queries reads a fixed set.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        cursor = after
        bound = sa.tuple_(feedback.c.tx_id, feedback.c.feedback_id) <= sa.tuple_(
            sa.literal(until.tx_id), sa.literal(until.feedback_id)
        )
        while True:
            query = (
                _training_query(with_context)
                .where(_after(cursor), bound)
                .order_by(*_ORDER)
                .limit(batch_size)
            )
            with self._engine.connect() as conn:
                rows = conn.execute(query).all()
            if not rows:
                return
            batch = [_training_event(r, with_context) for r in rows]
            yield batch
            cursor = batch[-1].position
            if len(rows) < batch_size:
                return

    def parameter_feedback(
        self, *, after_id: int = 0, until_id: int | None = None, batch_size: int = 5000
    ) -> Iterator[ParameterFeedback]:
        """Every rewarded feedback (``after_id < feedback_id <= until_id``) whose decision
        carries a tuning record (``context.tuning``), oldest first: what
        :mod:`serving.parameters` learned online, to fit its snapshot from the log (nightly
        training; incremental training reads only the rows after the snapshot it continues,
        ``after_id``). Read in keyset-paginated batches of ``batch_size`` rows, each one short
        query."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        cursor = after_id
        while True:
            query = (
                sa.select(
                    feedback.c.feedback_id,
                    decisions.c.context,
                    decisions.c.parameters,
                    feedback.c.reward,
                    feedback.c.error_kind,
                )
                .join(decisions, decisions.c.decision_id == feedback.c.decision_id)
                .where(feedback.c.feedback_id > cursor, feedback.c.reward.is_not(None))
                .order_by(feedback.c.feedback_id)
                .limit(batch_size)
            )
            if until_id is not None:
                query = query.where(feedback.c.feedback_id <= until_id)
            with self._engine.connect() as conn:
                rows = conn.execute(query).all()
            for r in rows:
                record = (_decode(r.context) or {}).get("tuning")
                if isinstance(record, dict):
                    yield ParameterFeedback(
                        int(r.feedback_id),
                        record,
                        dict(_decode(r.parameters) or {}),
                        float(r.reward),
                        r.error_kind,
                    )
            if len(rows) < batch_size:
                return
            cursor = rows[-1].feedback_id

    def stable_cursor(self, after: LogCursor | None = None) -> LogCursor:
        """The last position a reader may go up to now (at least ``after``): every feedback at or
        before it is final, and every feedback committed later lies after it.

        SQLite: the largest feedback id. PostgreSQL: the last row written by a transaction older
        than every transaction still in flight. Raises :class:`LogCursorError` when ``after``
        names a transaction that has not even started yet: the database's transaction ids went
        back (a dump restored into a new cluster), and continuing would skip rows silently.
        """
        start = after if after is not None else LogCursor()
        query = sa.select(feedback.c.tx_id, feedback.c.feedback_id).order_by(
            feedback.c.tx_id.desc(), feedback.c.feedback_id.desc()
        )
        with self._engine.connect() as conn:
            if self.engine.dialect.name == "postgresql":
                horizon = int(conn.execute(sa.select(_PG_HORIZON)).scalar_one())
                if start.tx_id >= horizon:
                    raise LogCursorError(
                        f"cursor {start} names transaction {start.tx_id}, but the database's "
                        f"oldest running transaction is {horizon}: its transaction ids went back "
                        "(restored into a new cluster?). Rows would be skipped; delete the "
                        "checkpoint to relearn from the start, or rebuild (nightly-training)."
                    )
                query = query.where(feedback.c.tx_id < horizon)
            row = conn.execute(query.limit(1)).first()
        top = LogCursor(int(row.tx_id), int(row.feedback_id)) if row is not None else LogCursor()
        return max(start, top)

    def count_between(self, after: LogCursor, until: LogCursor | None = None) -> int:
        """Number of feedback rows with ``after < position <= until`` (no upper bound when
        ``until`` is None: with :meth:`stable_cursor`, the rows committed but not yet final)."""
        query = sa.select(sa.func.count()).select_from(feedback).where(_after(after))
        if until is not None:
            query = query.where(
                sa.tuple_(feedback.c.tx_id, feedback.c.feedback_id)
                <= sa.tuple_(sa.literal(until.tx_id), sa.literal(until.feedback_id))
            )
        with self._engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def _final(self) -> sa.ColumnElement[bool]:
        """Rows no transaction in flight can still precede (all of them on SQLite)."""
        if self.engine.dialect.name == "postgresql":
            return feedback.c.tx_id < _PG_HORIZON
        return sa.true()

    def latest_training_events(self, n: int, *, with_context: bool = True) -> list[TrainingEvent]:
        """The last ``n`` events of the log (at least the last one), oldest first, as
        :class:`TrainingEvent`: the evaluation window of promotion."""
        top = self.last_feedback_id()
        after = self.cursor_before_latest(max(n, 1), until_id=top)
        return [
            e
            for b in self.training_batches(after, 5000, until_id=top, with_context=with_context)
            for e in b
        ]

    def rewards_by_policy_version(
        self, versions: list[str], *, concurrent: bool = False
    ) -> dict[str, list[float]]:
        """Per-decision rewards of the decisions stamped with each ``policy_version`` (the
        online A/B test of promotion); decisions without a reward are left out.

        ``concurrent``: only decisions made since the *last* of ``versions`` (the challenger)
        made its first, so that an A/B test compares the two over the same period, not the
        champion's whole history against the challenger's recent traffic.
        """
        out: dict[str, list[float]] = {v: [] for v in versions}
        query = (
            sa.select(decisions.c.policy_version, feedback.c.reward)
            .join(feedback, decisions.c.decision_id == feedback.c.decision_id)
            .where(decisions.c.policy_version.in_(versions), feedback.c.reward.is_not(None))
        )
        if concurrent and versions:
            first = (
                sa.select(sa.func.min(decisions.c.created_at))
                .where(decisions.c.policy_version == versions[-1])
                .scalar_subquery()
            )
            query = query.where(decisions.c.created_at >= first)
        with self._engine.connect() as conn:
            for version, reward in conn.execute(query):
                out[version].append(float(reward))
        return out

    def last_feedback_id(self) -> int:
        """The highest feedback id (0 for an empty log): the cursor of "everything so far", the
        high-water mark that fixes a run's data window."""
        with self._engine.connect() as conn:
            value = conn.execute(sa.select(sa.func.max(feedback.c.feedback_id))).scalar()
        return int(value or 0)

    def count_feedback(self, after_id: int = 0, until_id: int | None = None) -> int:
        """Number of feedback rows with ``after_id < feedback_id <= until_id`` (no upper bound
        when ``until_id`` is None)."""
        query = sa.select(sa.func.count()).select_from(feedback)
        query = query.where(feedback.c.feedback_id > after_id)
        if until_id is not None:
            query = query.where(feedback.c.feedback_id <= until_id)
        with self._engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def cursor_before_latest(self, n: int, *, until_id: int | None = None) -> int:
        """The feedback id after which the latest ``n`` feedback rows up to ``until_id`` lie (0
        when there are no more than ``n``): ``(cursor, until_id]`` is a window of the last ``n``."""
        query = sa.select(feedback.c.feedback_id).order_by(feedback.c.feedback_id.desc())
        if until_id is not None:
            query = query.where(feedback.c.feedback_id <= until_id)
        with self._engine.connect() as conn:
            row = conn.execute(query.offset(n).limit(1)).first()
        return int(row[0]) if row is not None else 0

    def counts(self) -> dict[str, int]:
        """Number of decisions and feedback rows."""
        with self._engine.connect() as conn:
            n_dec = conn.execute(sa.select(sa.func.count()).select_from(decisions)).scalar_one()
            n_fb = conn.execute(sa.select(sa.func.count()).select_from(feedback)).scalar_one()
        return {"decisions": int(n_dec), "feedback": int(n_fb)}
