"""Annotations count the whole-project pulls in a row that did not return them (``missed_pulls``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-18

A pull that speaks for every answer in a project (Argilla's search) can miss one that still
exists (an incomplete search answer). An answer is marked deleted only when absent from two such
pulls in a row, so the first absence is remembered with the answer. Batch mode, so that SQLite
(which alters little in place) runs the same revision; existing rows start at 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("annotations") as batch:
        batch.add_column(sa.Column("missed_pulls", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("annotations") as batch:
        batch.drop_column("missed_pulls")
