"""The state store: SQLAlchemy 2 models, Alembic migrations and the ``StateStore`` API.

SQLite by default (``sqlite:///var/state.db``), PostgreSQL by URL (``postgresql+psycopg://...``);
the same code and tests run on both.
"""

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
    Prediction,
    Push,
    RoutingDecision,
    Snapshot,
)
from connector.store.store import DEFAULT_URL, IngestResult, StateStore, UpsertResult, alembic_config, content_hash

__all__ = [
    "ANNOTATION_STATUSES",
    "DEFAULT_URL",
    "ITEM_STATES",
    "PUSH_STATUSES",
    "TOOLS",
    "Annotation",
    "Cursor",
    "Embedding",
    "IngestResult",
    "Item",
    "JobRun",
    "Label",
    "Prediction",
    "Push",
    "RoutingDecision",
    "Snapshot",
    "StateStore",
    "UpsertResult",
    "alembic_config",
    "content_hash",
]
