"""The state store: where every item is in the loop, in SQLite (default) or PostgreSQL.

A thin facade over one repository per area, all sharing one engine and one session factory:

- ``items`` (connector/store/items.py): ingest, versions, states;
- ``predictions``, ``decisions`` (predictions.py): model outputs and routing;
- ``pushes`` (pushes.py): what went to which tool and project;
- ``annotations``, ``cursors``, ``labels`` (annotations.py): what came back and what it settled on;
- ``embeddings`` (embeddings.py): the encoder cache, also usable alone (``EmbeddingRepository.open``);
- ``job_runs``, ``snapshots`` (runs.py): the scheduler's runs and dated measurements;
- ``history`` (history.py): every change to an item's label, appended and never changed;
- ``online`` (online.py): on-line decisions, their review items and outcomes, the callback outbox;
- ``retention`` (retention.py): deleting the old rows of those that only grow.

Every public method that writes is one transaction: it commits whole or not at all, so a crash
or an exception leaves the store as it was before the call.
"""

from __future__ import annotations

from typing import Self

from connector.store import database
from connector.store.annotations import AnnotationRepository, CursorRepository, LabelRepository
from connector.store.database import DEFAULT_URL, make_engine, make_sessions
from connector.store.embeddings import EmbeddingRepository
from connector.store.history import HistoryRepository
from connector.store.items import ItemRepository
from connector.store.online import OnlineDecisionRepository
from connector.store.predictions import DecisionRepository, PredictionRepository
from connector.store.pushes import PushRepository
from connector.store.retention import RetentionRepository
from connector.store.runs import JobRunRepository, SnapshotRepository


class StateStore:
    """The connector's state, one repository per area: ``store.items``, ``store.predictions``,
    ``store.decisions``, ``store.pushes``, ``store.annotations``, ``store.cursors``,
    ``store.labels``, ``store.embeddings``, ``store.job_runs``, ``store.snapshots``, ``store.history``,
    ``store.retention``, ``store.online``.

    ``StateStore()`` opens ``var/state.db`` (SQLite, created with its folder on first use);
    ``StateStore("postgresql+psycopg://user:pw@host/db")`` opens PostgreSQL. Call ``migrate()``
    once at start-up to create or upgrade the schema. Rows returned are detached snapshots:
    changing them changes nothing in the store.
    """

    def __init__(self, url: str = DEFAULT_URL) -> None:
        self.url = url
        self.engine = make_engine(url)
        sessions = make_sessions(self.engine)
        self.items = ItemRepository(self.engine, sessions)
        self.predictions = PredictionRepository(self.engine, sessions)
        self.decisions = DecisionRepository(self.engine, sessions)
        self.pushes = PushRepository(self.engine, sessions)
        self.annotations = AnnotationRepository(self.engine, sessions)
        self.cursors = CursorRepository(self.engine, sessions)
        self.labels = LabelRepository(self.engine, sessions)
        self.embeddings = EmbeddingRepository(self.engine, sessions)
        self.job_runs = JobRunRepository(self.engine, sessions)
        self.snapshots = SnapshotRepository(self.engine, sessions)
        self.history = HistoryRepository(self.engine, sessions)
        self.online = OnlineDecisionRepository(self.engine, sessions)
        self.retention = RetentionRepository(self.engine, sessions)

    def migrate(self, revision: str = "head") -> None:
        """Upgrade the schema to ``revision`` with Alembic, in one transaction; a no-op when already there."""
        database.migrate(self.engine, revision)

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at (``None`` before the first ``migrate``)."""
        return database.schema_revision(self.engine)

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"StateStore({self.engine.url.render_as_string(hide_password=True)!r})"
