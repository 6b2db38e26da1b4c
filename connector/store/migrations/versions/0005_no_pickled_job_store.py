"""The scheduler keeps its job definitions in memory: drop APScheduler's pickled job table.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

Earlier versions stored APScheduler's jobs (pickled callables and triggers) in ``apscheduler_jobs``
in the state database, which the production stack may share with Label Studio and Argilla. Jobs
are added again from the settings at every start, so the table held nothing that is needed; a
pickle in a shared database is code anyone with write access there can have the scheduler run.
The downgrade does not recreate it: an older scheduler creates it at its first start.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("DROP TABLE IF EXISTS apscheduler_jobs")


def downgrade() -> None:
    pass
