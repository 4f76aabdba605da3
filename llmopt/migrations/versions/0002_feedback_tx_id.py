"""Feedback rows record the transaction that wrote them: a cursor that commits cannot overtake.

On PostgreSQL ``tx_id`` defaults to the writing transaction's 64-bit id (``pg_current_xact_id``);
readers order feedback by ``(tx_id, feedback_id)`` and read only rows whose transaction is older
than every transaction still in flight (see ``llmopt.event_log.LogCursor``). SQLite serialises
writers, so feedback ids already commit in order there: ``tx_id`` stays 0. Rows written before
this revision get 0 too: they were all committed when it ran (adding the column waits for every
transaction on the table), so ordering them first is exact.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PG_TX_ID = "(pg_current_xact_id()::text::bigint)"
"""The writing transaction's id (xid8: 64 bits, never wraps) as a plain BIGINT."""


def upgrade() -> None:
    op.add_column(
        "feedback",
        sa.Column("tx_id", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("feedback", "tx_id", server_default=sa.text(PG_TX_ID))
    op.create_index("ix_feedback_tx_id_feedback_id", "feedback", ["tx_id", "feedback_id"])


def downgrade() -> None:
    op.drop_index("ix_feedback_tx_id_feedback_id", "feedback")
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("tx_id")
