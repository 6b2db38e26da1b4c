"""The store admits a third tool name, ``offline`` (the simulator's in-memory tool).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-10

The ``tool`` CHECK constraints of ``pushes`` and ``annotations`` are dropped and made again with
the longer list. SQLite cannot alter a constraint, so batch mode copies each table; the named
constraints (``ck_pushes_tool``, ``ck_annotations_tool``) are what batch mode drops by name.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_TOOLS = ("label_studio", "argilla")
NEW_TOOLS = ("label_studio", "argilla", "offline")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _replace_tool_check(tools: tuple[str, ...]) -> None:
    for table in ("pushes", "annotations"):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(op.f(f"ck_{table}_tool"), type_="check")
            batch.create_check_constraint(op.f(f"ck_{table}_tool"), _one_of("tool", tools))


def upgrade() -> None:
    _replace_tool_check(NEW_TOOLS)


def downgrade() -> None:
    _replace_tool_check(OLD_TOOLS)
