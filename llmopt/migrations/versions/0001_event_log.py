"""Event log: decisions and feedback.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


# The tables are spelled out here, not imported from llmopt.event_log: a migration is a frozen
# snapshot of the schema at its revision, and must not change when the live model does.


def upgrade() -> None:
    op.create_table(
        "decisions",
        sa.Column("decision_id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("parameters", sa.JSON, nullable=False),
        sa.Column("propensity", sa.Float, nullable=False),
        sa.Column("policy_name", sa.String(100), nullable=False),
        sa.Column("policy_version", sa.String(100), nullable=False),
        sa.Column("scores", sa.JSON, nullable=False),
        sa.Column("context", sa.JSON, nullable=False),
        sa.Column("features", sa.JSON, nullable=False),
    )
    op.create_index("ix_decisions_created_at", "decisions", ["created_at"])
    op.create_index("ix_decisions_tenant", "decisions", ["tenant"])
    op.create_table(
        "feedback",
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
    )


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_index("ix_decisions_tenant", "decisions")
    op.drop_index("ix_decisions_created_at", "decisions")
    op.drop_table("decisions")
