"""Initial schema: items, predictions, routing decisions, pushes, annotations, cursors.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

Written by hand from an autogenerate draft; it does not import the models, so later model
changes cannot alter what this revision creates. Timestamps are ``timestamptz`` on PostgreSQL
and naive UTC on SQLite (``connector.store.models.UTCDateTime`` reads both as aware UTC).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _item_fk(table: str) -> sa.Column:
    fk = sa.ForeignKey("items.id", ondelete="CASCADE", name=op.f(f"fk_{table}_item_id_items"))
    return sa.Column("item_id", sa.Integer(), fk, nullable=False)


def upgrade() -> None:
    op.create_table(
        "items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("is_current", sa.Boolean(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("is_gold", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint(_one_of("state", ("ingested", "predicted", "routed", "pushed", "annotated", "consolidated")),
                           name=op.f("ck_items_state")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_items")),
        sa.UniqueConstraint("external_id", "version", name=op.f("uq_items_external_id_version")),
    )
    op.create_index(op.f("ix_items_external_id"), "items", ["external_id"])
    op.create_index(op.f("ix_items_content_hash"), "items", ["content_hash"])
    op.create_index(op.f("ix_items_state"), "items", ["state"])
    # at most one current version per external id
    op.create_index("uq_items_current_external_id", "items", ["external_id"], unique=True,
                    sqlite_where=sa.text("is_current"), postgresql_where=sa.text("is_current"))

    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), nullable=False),
        _item_fk("predictions"),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("label", sa.String(255), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
        sa.UniqueConstraint("item_id", "model_version", name=op.f("uq_predictions_item_id_model_version")),
    )

    op.create_table(
        "routing_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        _item_fk("routing_decisions"),
        sa.Column("model_version", sa.String(64), nullable=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("priority", sa.Float(), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_routing_decisions")),
    )
    op.create_index(op.f("ix_routing_decisions_item_id"), "routing_decisions", ["item_id"])

    op.create_table(
        "pushes",
        sa.Column("id", sa.Integer(), nullable=False),
        _item_fk("pushes"),
        sa.Column("tool", sa.String(32), nullable=False),
        sa.Column("project", sa.String(255), nullable=False),
        sa.Column("remote_id", sa.String(255), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("confirmed_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint(_one_of("tool", ("label_studio", "argilla")), name=op.f("ck_pushes_tool")),
        sa.CheckConstraint(_one_of("status", ("pending", "confirmed")), name=op.f("ck_pushes_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pushes")),
        sa.UniqueConstraint("item_id", "tool", "project", name=op.f("uq_pushes_item_id_tool_project")),
    )
    op.create_index("ix_pushes_tool_project_status", "pushes", ["tool", "project", "status"])

    op.create_table(
        "annotations",
        sa.Column("id", sa.Integer(), nullable=False),
        _item_fk("annotations"),
        sa.Column("tool", sa.String(32), nullable=False),
        sa.Column("project", sa.String(255), nullable=False),
        sa.Column("remote_id", sa.String(255), nullable=False),
        sa.Column("annotator", sa.String(255), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("remote_updated_at", TIMESTAMP, nullable=False),
        sa.Column("lead_time", sa.Float(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint(_one_of("tool", ("label_studio", "argilla")), name=op.f("ck_annotations_tool")),
        sa.CheckConstraint(_one_of("status", ("submitted", "skipped", "deleted")), name=op.f("ck_annotations_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotations")),
        sa.UniqueConstraint("tool", "project", "remote_id", name=op.f("uq_annotations_tool_project_remote_id")),
    )
    op.create_index(op.f("ix_annotations_item_id"), "annotations", ["item_id"])

    op.create_table(
        "cursors",
        sa.Column("tool", sa.String(32), nullable=False),
        sa.Column("project", sa.String(255), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("tool", "project", "name", name=op.f("pk_cursors")),
    )


def downgrade() -> None:
    for table in ("cursors", "annotations", "pushes", "routing_decisions", "predictions", "items"):
        op.drop_table(table)  # their indexes go with them
