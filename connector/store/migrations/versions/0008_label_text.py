"""Labels as text: a settled label may be a label set (a JSON array) or a span set.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

``labels.label`` and ``predictions.label`` were ``VARCHAR(255)``: enough for one class name, not
for the JSON array of a multi-label set or the spans of an entity task (:mod:`connector.label_sets`).
Both become ``TEXT``; no value changes. SQLite rebuilds the tables (batch mode); PostgreSQL alters
the column type in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table, nullable in (("labels", True), ("predictions", False)):
        with op.batch_alter_table(table) as batch:
            batch.alter_column("label", type_=sa.Text(), existing_type=sa.String(255), existing_nullable=nullable)


def downgrade() -> None:
    for table, nullable in (("labels", True), ("predictions", False)):
        with op.batch_alter_table(table) as batch:
            batch.alter_column("label", type_=sa.String(255), existing_type=sa.Text(), existing_nullable=nullable)
