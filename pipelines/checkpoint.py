"""Training checkpoints: a policy's state and the log cursor it learned up to, saved together.

Incremental training learns feedback in batches and, after each batch, writes the policy state
and the position of the batch's last event (a :class:`~llmopt.event_log.LogCursor`: writer
transaction and feedback id) **in one transaction**. A crash between two batches therefore
leaves a checkpoint whose state has learned exactly the events up to its cursor: a rerun
resumes after the cursor and neither loses nor double-counts feedback, and feedback that
commits late (PostgreSQL) still lies after the cursor.

The table lives in the event log's database (SQLite or PostgreSQL: the same URL), next to the
data it indexes, so the production profile needs nothing more. It is not part of the event
log's Alembic history (that schema belongs to ``llmopt``): it is created if missing, and a table
from before the cursor had a transaction part gains its ``last_tx`` column (0: the old cursor
was a feedback id, exact for the rows written before the event log recorded transactions).

Examples
--------
>>> store = CheckpointStore.from_url("sqlite://")
>>> store.load("incremental") is None
True
>>> store.save("incremental", last_feedback_id=42, state={"kind": "x"}, n_events=42)
>>> cp = store.load("incremental")
>>> cp.last_feedback_id, cp.state, cp.n_events, cp.cursor
(42, {'kind': 'x'}, 42, LogCursor(tx_id=0, feedback_id=42))
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from llmopt import fast_json
from llmopt.event_log import LogCursor, create_engine
from llmopt.schemas import utc_now

_metadata = sa.MetaData()

checkpoints = sa.Table(
    "pipeline_checkpoints",
    _metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("last_feedback_id", sa.Integer, nullable=False),
    sa.Column("n_events", sa.Integer, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_tx", sa.BigInteger, nullable=False, server_default=sa.text("0")),
)


@dataclass(frozen=True)
class Checkpoint:
    """A policy state that has learned every feedback up to its :attr:`cursor`."""

    name: str
    last_feedback_id: int
    n_events: int
    state: dict[str, Any]
    updated_at: datetime
    last_tx: int = 0
    """Writer transaction of the last event learned (PostgreSQL; 0 on SQLite)."""

    @property
    def cursor(self) -> LogCursor:
        """Where learning resumes: after ``(last_tx, last_feedback_id)``."""
        return LogCursor(self.last_tx, self.last_feedback_id)


class CheckpointStore:
    """Checkpoints by name in one SQL table (created on first use).

    Parameters
    ----------
    engine
        SQLAlchemy engine of the event log's database.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        _metadata.create_all(engine, tables=[checkpoints], checkfirst=True)
        columns = {c["name"] for c in sa.inspect(engine).get_columns(checkpoints.name)}
        if "last_tx" not in columns:  # a table from before the cursor had a transaction part
            try:
                with engine.begin() as conn:
                    conn.execute(
                        sa.text(
                            f"ALTER TABLE {checkpoints.name} "
                            "ADD COLUMN last_tx BIGINT NOT NULL DEFAULT 0"
                        )
                    )
            except sa.exc.DBAPIError:  # added concurrently by another process: check it is
                columns = {c["name"] for c in sa.inspect(engine).get_columns(checkpoints.name)}
                if "last_tx" not in columns:
                    raise

    @classmethod
    def from_url(cls, url: str) -> CheckpointStore:
        """A store on its own engine (SQLite gets the event log's pragmas)."""
        return cls(create_engine(url))

    def load(self, name: str) -> Checkpoint | None:
        """The checkpoint called ``name``, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(checkpoints).where(checkpoints.c.name == name)).first()
        if row is None:
            return None
        return Checkpoint(
            name=row.name,
            last_feedback_id=int(row.last_feedback_id),
            n_events=int(row.n_events),
            state=fast_json.loads(row.state),
            updated_at=row.updated_at,
            last_tx=int(row.last_tx),
        )

    def save(
        self,
        name: str,
        *,
        last_feedback_id: int,
        state: dict[str, Any],
        n_events: int,
        last_tx: int = 0,
    ) -> None:
        """Replace the checkpoint ``name`` atomically (state and cursor in one transaction)."""
        row = {
            "name": name,
            "last_feedback_id": int(last_feedback_id),
            "last_tx": int(last_tx),
            "n_events": int(n_events),
            "state": fast_json.dumps(state),
            "updated_at": utc_now(),
        }
        with self.engine.begin() as conn:
            conn.execute(checkpoints.delete().where(checkpoints.c.name == name))
            conn.execute(checkpoints.insert().values(**row))

    def delete(self, name: str) -> None:
        """Forget the checkpoint ``name`` (the next run starts over)."""
        with self.engine.begin() as conn:
            conn.execute(checkpoints.delete().where(checkpoints.c.name == name))
