"""Decisions on line: the ``online_decisions`` table, its callback outbox, and reviews' extras.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-19

``online_decisions``: one row per caller's idempotency key (the request, how it was decided, the
outcome); ``callback_deliveries``: one outbox row per decision with a callback URL, written with
the outcome and delivered by the scheduler. ``annotations.extra``: what a review answer gives
besides its outcome (a corrected output, a rating, a comment).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
DECISION_STATUSES = ("auto_approved", "auto_rejected", "pending_review", "approved", "rejected", "corrected")
CALLBACK_STATUSES = ("pending", "delivered", "failed")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    with op.batch_alter_table("annotations") as batch:
        batch.add_column(sa.Column("extra", sa.JSON(), nullable=True))
    op.create_table(
        "online_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source", sa.String(255), nullable=False),
        sa.Column("item_id", sa.Integer(), sa.ForeignKey("items.id", name=op.f("fk_online_decisions_item_id_items")),
                  nullable=True),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("output", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("rule", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("raw_score", sa.Float(), nullable=True),
        sa.Column("priority", sa.Float(), nullable=False),
        sa.Column("audit", sa.Boolean(), nullable=False),
        sa.Column("escalated", sa.Boolean(), nullable=False),
        sa.Column("deadline_at", TIMESTAMP, nullable=True),
        sa.Column("callback_url", sa.Text(), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("corrected", sa.JSON(), nullable=True),
        sa.Column("reviewer", sa.String(255), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("review", sa.JSON(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("decided_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_online_decisions")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_online_decisions_idempotency_key")),
        sa.CheckConstraint(_one_of("status", DECISION_STATUSES), name=op.f("ck_online_decisions_status")),
    )
    op.create_index(op.f("ix_online_decisions_item_id"), "online_decisions", ["item_id"])
    op.create_index(op.f("ix_online_decisions_status_deadline_at"), "online_decisions", ["status", "deadline_at"])
    op.create_table(
        "callback_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("decision_id", sa.Integer(),
                  sa.ForeignKey("online_decisions.id", name=op.f("fk_callback_deliveries_decision_id_online_decisions")),
                  nullable=False),
        sa.Column("webhook_id", sa.String(64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_at", TIMESTAMP, nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("delivered_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_callback_deliveries")),
        sa.UniqueConstraint("decision_id", name=op.f("uq_callback_deliveries_decision_id")),
        sa.CheckConstraint(_one_of("status", CALLBACK_STATUSES), name=op.f("ck_callback_deliveries_status")),
    )
    op.create_index(op.f("ix_callback_deliveries_status_next_at"), "callback_deliveries", ["status", "next_at"])


def downgrade() -> None:
    op.drop_table("callback_deliveries")
    op.drop_table("online_decisions")
    with op.batch_alter_table("annotations") as batch:
        batch.drop_column("extra")
