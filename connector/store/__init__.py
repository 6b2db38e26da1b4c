"""The state store: SQLAlchemy 2 models, Alembic migrations and the ``StateStore`` facade over
one repository per area (items, predictions, decisions, pushes, annotations, cursors, labels,
embeddings, job runs, snapshots, the append-only label history).

SQLite by default (``sqlite:///var/state.db``), PostgreSQL by URL (``postgresql+psycopg://...``);
the same code and tests run on both.
"""

from connector.store.annotations import AbsenceResult, UpsertResult
from connector.store.database import DEFAULT_URL, alembic_config
from connector.store.embeddings import EmbeddingRepository
from connector.store.items import IngestResult
from connector.store.models import (
    ANNOTATION_STATUSES,
    ITEM_STATES,
    PUSH_STATUSES,
    TOOLS,
    Annotation,
    Cursor,
    Embedding,
    Item,
    JobRun,
    Label,
    LabelEvent,
    Prediction,
    Push,
    RoutingDecision,
    Snapshot,
)
from connector.store.repository import content_hash
from connector.store.store import StateStore

__all__ = [
    "ANNOTATION_STATUSES",
    "DEFAULT_URL",
    "ITEM_STATES",
    "PUSH_STATUSES",
    "TOOLS",
    "AbsenceResult",
    "Annotation",
    "Cursor",
    "Embedding",
    "EmbeddingRepository",
    "IngestResult",
    "Item",
    "JobRun",
    "Label",
    "LabelEvent",
    "Prediction",
    "Push",
    "RoutingDecision",
    "Snapshot",
    "StateStore",
    "UpsertResult",
    "alembic_config",
    "content_hash",
]
