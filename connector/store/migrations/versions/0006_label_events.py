"""Every change on record: the append-only ``label_events`` table.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-12

One row per change to an item's label (answers added, edited, deleted, revived; consensus
changes; auto-accepts; threshold changes; sends-back; adjudications; see
``connector.store.history``). The database itself keeps it append-only: triggers refuse every
UPDATE and DELETE on the table (and TRUNCATE on PostgreSQL), whoever sends them. The downgrade
drops the table with its triggers, and the history with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
REFUSED = "label_events is append-only"

SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER label_events_no_{op_.lower()} BEFORE {op_} ON label_events
        BEGIN SELECT RAISE(ABORT, '{REFUSED}: {op_} refused'); END"""
    for op_ in ("UPDATE", "DELETE")
]
POSTGRES_TRIGGERS = [
    f"""CREATE FUNCTION label_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION '{REFUSED}: % refused', TG_OP USING ERRCODE = 'insufficient_privilege'; END $$""",
    """CREATE TRIGGER label_events_no_change BEFORE UPDATE OR DELETE ON label_events
        FOR EACH ROW EXECUTE FUNCTION label_events_append_only()""",
    """CREATE TRIGGER label_events_no_truncate BEFORE TRUNCATE ON label_events
        FOR EACH STATEMENT EXECUTE FUNCTION label_events_append_only()""",
]


def upgrade() -> None:
    op.create_table(
        "label_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), sa.ForeignKey("items.id", name=op.f("fk_label_events_item_id_items")),
                  nullable=True),
        sa.Column("at", TIMESTAMP, nullable=False),
        sa.Column("source_at", TIMESTAMP, nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_label_events")),
    )
    op.create_index(op.f("ix_label_events_item_id_id"), "label_events", ["item_id", "id"])
    op.create_index(op.f("ix_label_events_at"), "label_events", ["at"])
    op.create_index(op.f("ix_label_events_kind"), "label_events", ["kind"])
    dialect = op.get_bind().dialect.name
    triggers = {"postgresql": POSTGRES_TRIGGERS, "sqlite": SQLITE_TRIGGERS}.get(dialect)
    if triggers is None:
        raise NotImplementedError(f"no append-only triggers for {dialect}")
    for statement in triggers:
        op.execute(statement)


def downgrade() -> None:
    op.drop_table("label_events")  # its triggers go with it
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS label_events_append_only()")
