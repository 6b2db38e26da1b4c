"""Tables of the state store (SQLAlchemy 2 declarative).

One row per item version says where the item is in the loop (``state``) and which model version
scored it. The schema itself is created by the Alembic revisions in ``migrations/``, never by
``create_all``; ``tests`` check that the two agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

ITEM_STATES = ("ingested", "predicted", "routed", "pushed", "annotated", "consolidated")
TOOLS = ("label_studio", "argilla", "offline")
PUSH_STATUSES = ("pending", "confirmed")
ANNOTATION_STATUSES = ("submitted", "skipped", "deleted")
LABEL_STATUSES = ("settled", "unsettled")
JOB_STATUSES = ("running", "ok", "failed")
#: an on-line decision: taken by a rule (``auto_*``), waiting for a person, or the person's (or the
#: deadline's) outcome
DECISION_STATUSES = ("auto_approved", "auto_rejected", "pending_review", "approved", "rejected", "corrected")
CALLBACK_STATUSES = ("pending", "delivered", "failed")

# Constraint names are fixed so the migrations can name (and later drop) them on both databases.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always returned timezone-aware in UTC.

    PostgreSQL keeps the zone (``timestamptz``); SQLite has none, so naive UTC is stored there.
    A naive value passed in is taken to be UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, datetime: UTCDateTime}


class Item(Base):
    """One version of one item. A changed record is a new version; the old one is kept."""

    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("external_id", "version"),
        # at most one current version per external id (a partial index on both databases)
        Index("uq_items_current_external_id", "external_id", unique=True,
              sqlite_where=text("is_current"), postgresql_where=text("is_current")),
        CheckConstraint(_one_of("state", ITEM_STATES), name="state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(255), index=True)
    version: Mapped[int] = mapped_column(Integer)
    is_current: Mapped[bool] = mapped_column(Boolean)
    data: Mapped[dict[str, Any]]
    text: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata")
    is_gold: Mapped[bool] = mapped_column(Boolean)
    state: Mapped[str] = mapped_column(String(16), index=True)
    model_version: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"Item(id={self.id}, external_id={self.external_id!r}, version={self.version}, state={self.state!r})"


class Prediction(Base):
    """A model version's calibrated prediction for one item version; one per (item, model version)."""

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("item_id", "model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    model_version: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(Text)  # a class name, or a label set as a JSON array
    confidence: Mapped[float] = mapped_column(Float)
    probabilities: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RoutingDecision(Base):
    """Where the router sent an item and why; appended, never rewritten (the latest one counts)."""

    __tablename__ = "routing_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    model_version: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    priority: Mapped[float] = mapped_column(Float)
    score: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Push(Base):
    """An item sent to a tool's project (Label Studio) or dataset (Argilla).

    Written ``pending`` before the remote call and ``confirmed`` with the remote id after it, so a
    crash in between leaves a ``pending`` row that the next pass reconciles.
    """

    __tablename__ = "pushes"
    __table_args__ = (
        UniqueConstraint("item_id", "tool", "project"),
        Index("ix_pushes_tool_project_status", "tool", "project", "status"),
        CheckConstraint(_one_of("tool", TOOLS), name="tool"),
        CheckConstraint(_one_of("status", PUSH_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    tool: Mapped[str] = mapped_column(String(32))
    project: Mapped[str] = mapped_column(String(255))
    remote_id: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    confirmed_at: Mapped[datetime | None]


class Annotation(Base):
    """One annotator's answer in a tool, keyed by the tool's own id for it."""

    __tablename__ = "annotations"
    __table_args__ = (
        UniqueConstraint("tool", "project", "remote_id"),
        CheckConstraint(_one_of("tool", TOOLS), name="tool"),
        CheckConstraint(_one_of("status", ANNOTATION_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    tool: Mapped[str] = mapped_column(String(32))
    project: Mapped[str] = mapped_column(String(255))
    remote_id: Mapped[str] = mapped_column(String(255))
    annotator: Mapped[str] = mapped_column(String(255))
    value: Mapped[Any] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    remote_updated_at: Mapped[datetime]
    lead_time: Mapped[float | None] = mapped_column(Float)
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # a review's correction, rating, comment
    # whole-project pulls in a row that did not return it: 1 marks it, 2 deletes it (sync/pulls.py)
    missed_pulls: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Cursor(Base):
    """A named position in a tool's project (e.g. the last ``updated_at`` pulled)."""

    __tablename__ = "cursors"

    tool: Mapped[str] = mapped_column(String(32), primary_key=True)
    project: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Label(Base):
    """The label an item settled on (or why it has not): one row per item, rewritten by each
    consolidation. ``method`` is how it was reached (``majority``, ``dawid_skene``, ``gold``)."""

    __tablename__ = "labels"
    __table_args__ = (
        UniqueConstraint("item_id"),
        CheckConstraint(_one_of("status", LABEL_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    label: Mapped[str | None] = mapped_column(Text)  # a class name, or a label set as a JSON array
    status: Mapped[str] = mapped_column(String(16), index=True)
    method: Mapped[str] = mapped_column(String(32))
    confidence: Mapped[float | None] = mapped_column(Float)
    agreement: Mapped[float | None] = mapped_column(Float)
    n_answers: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class JobRun(Base):
    """One run of a scheduled job. ``(job_id, slot)`` is unique: the scheduler that inserts the
    row for a slot runs the job; any other scheduler finds it taken and skips."""

    __tablename__ = "job_runs"
    __table_args__ = (
        UniqueConstraint("job_id", "slot"),
        CheckConstraint(_one_of("status", JOB_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64))
    slot: Mapped[str] = mapped_column(String(64))
    host: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any]]


class Embedding(Base):
    """A frozen encoder's vector for one text, keyed by the text's content hash."""

    __tablename__ = "embeddings"

    encoder: Mapped[str] = mapped_column(String(255), primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class LabelEvent(Base):
    """One change to an item's label, on record for good: appended, never updated or deleted.

    The database enforces it: triggers (made by migration 0006) refuse UPDATE and DELETE on the
    table. ``item_id`` is ``None`` for task-wide events (a threshold change); ``at`` is our time,
    ``source_at`` the tool's timestamp when there is one; ``kind`` and ``detail`` are described in
    :mod:`connector.store.history`.
    """

    __tablename__ = "label_events"
    __table_args__ = (Index("ix_label_events_item_id_id", "item_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # no ON DELETE CASCADE: an item with a history is never deleted (items are not; the triggers would refuse)
    item_id: Mapped[int | None] = mapped_column(ForeignKey("items.id"))
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    source_at: Mapped[datetime | None]
    kind: Mapped[str] = mapped_column(String(32), index=True)
    actor: Mapped[str] = mapped_column(String(255))
    detail: Mapped[dict[str, Any]]


class Snapshot(Base):
    """A dated measurement (agreement, annotator quality, thresholds, model evaluation...)."""

    __tablename__ = "snapshots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OnlineDecision(Base):
    """One decision a running application asked for (``POST /v1/decisions``), keyed by the
    caller's idempotency key: the request, how it was decided, and the outcome.

    A decision held for a person has an item (pushed to the tool like any routed item) and a
    ``deadline_at``; ``reviewer`` is who decided (``timeout`` for a deadline's fallback)."""

    __tablename__ = "online_decisions"
    __table_args__ = (
        UniqueConstraint("idempotency_key"),
        Index("ix_online_decisions_status_deadline_at", "status", "deadline_at"),
        CheckConstraint(_one_of("status", DECISION_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(255))  # whose output is judged: "model:<ours>" or the caller's model
    item_id: Mapped[int | None] = mapped_column(ForeignKey("items.id"), index=True)
    request: Mapped[dict[str, Any]]
    output: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    rule: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    score: Mapped[float | None] = mapped_column(Float)
    raw_score: Mapped[float | None] = mapped_column(Float)
    priority: Mapped[float] = mapped_column(Float, default=0.0)
    audit: Mapped[bool] = mapped_column(Boolean, default=False)
    escalated: Mapped[bool] = mapped_column(Boolean, default=False)
    deadline_at: Mapped[datetime | None]
    callback_url: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str | None] = mapped_column(String(16))
    corrected: Mapped[Any] = mapped_column(JSON, nullable=True)
    reviewer: Mapped[str | None] = mapped_column(String(255))
    comment: Mapped[str | None] = mapped_column(Text)
    review: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # rating, supported, validation errors
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None]


class CallbackDelivery(Base):
    """The outbox of human (and fallback) outcomes: one row per decision with a callback URL,
    written in the transaction that records the outcome, delivered by the scheduler."""

    __tablename__ = "callback_deliveries"
    __table_args__ = (
        UniqueConstraint("decision_id"),
        Index("ix_callback_deliveries_status_next_at", "status", "next_at"),
        CheckConstraint(_one_of("status", CALLBACK_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    decision_id: Mapped[int] = mapped_column(ForeignKey("online_decisions.id"))
    webhook_id: Mapped[str] = mapped_column(String(64))  # Standard Webhooks' webhook-id: the receiver's dedup key
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]
