"""The state store: where every item is in the loop, in SQLite (default) or PostgreSQL.

Every public method that writes is one transaction: it commits whole or not at all, so a crash
or an exception leaves the store as it was before the call.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, event, func, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from connector.store.models import (
    ANNOTATION_STATUSES,
    ITEM_STATES,
    JOB_STATUSES,
    LABEL_STATUSES,
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
    utcnow,
)

DEFAULT_URL = "sqlite:///var/state.db"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_CHUNK = 500  # ids per IN (...) clause, well under SQLite's and PostgreSQL's parameter limits
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f", ""}
_T = TypeVar("_T")


@dataclass
class IngestResult:
    """What one ``ingest`` call did.

    ``added``: items seen for the first time; ``new_versions``: known external ids whose record
    changed (the old version is kept, no longer current); ``unchanged``: records identical to the
    current version; ``errors``: one ``"line N: why"`` (or ``"record N: why"``) per record skipped.
    """

    added: int = 0
    new_versions: int = 0
    unchanged: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class UpsertResult:
    """What one ``upsert_annotations`` call did, row by row."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


def content_hash(text: str) -> str:
    """SHA-256 of the text (UTF-8), hex: the key for anything derived from the text alone."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def alembic_config(url: str | None = None) -> Config:
    """An Alembic ``Config`` for this package's migrations, built without an ini file.

    Developers add a revision with ``command.revision(alembic_config(url), autogenerate=True, message=...)``.
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy emit BEGIN itself (see _sqlite_on_begin), so that reads, writes and DDL of one
    # call share one transaction; pysqlite's own handling starts it only at the first write.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (webhooks, CLI) do not block the writer
    cursor.close()


def _sqlite_on_begin(connection: Any) -> None:
    # IMMEDIATE: take the write lock at the start, so the busy timeout applies. A deferred
    # transaction that reads and then writes fails at once ("database is locked") when another
    # process wrote in between; with several processes on one file (sync, scheduler, CLI) it would.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):  # the bare scheme means psycopg2, which we do not ship
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    database = parsed.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"timeout": 30})
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _chunks(values: Sequence[_T], size: int = _CHUNK) -> Iterator[Sequence[_T]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _as_datetime(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime or an ISO 8601 string, got {type(value).__name__}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _check_tool(tool: str) -> None:
    if tool not in TOOLS:
        raise ValueError(f"unknown tool {tool!r}; expected one of {', '.join(TOOLS)}")


def _advance(item: Item, state: str, *, from_states: tuple[str, ...]) -> None:
    if item.state in from_states:
        item.state = state


_BEFORE_PUSHED = ("ingested", "predicted", "routed")
_BEFORE_ANNOTATED = (*_BEFORE_PUSHED, "pushed")


@dataclass
class _Prepared:
    external_id: str
    text: str
    data: dict[str, Any]
    meta: dict[str, Any]
    is_gold: bool
    canonical: str


class StateStore:
    """The connector's state: items and their versions, predictions, routing decisions, pushes,
    annotations and cursors.

    ``StateStore()`` opens ``var/state.db`` (SQLite, created with its folder on first use);
    ``StateStore("postgresql+psycopg://user:pw@host/db")`` opens PostgreSQL. Call ``migrate()``
    once at start-up to create or upgrade the schema. Rows returned are detached snapshots:
    changing them changes nothing in the store.
    """

    def __init__(self, url: str = DEFAULT_URL) -> None:
        self.url = url
        self.engine = _make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"StateStore({self.engine.url.render_as_string(hide_password=True)!r})"

    # ---------------------------------------------------------------- schema

    def migrate(self, revision: str = "head") -> None:
        """Upgrade the schema to ``revision`` with Alembic, in one transaction; a no-op when already there."""
        cfg = alembic_config()
        with self.engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at (``None`` before the first ``migrate``)."""
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    # ---------------------------------------------------------------- items

    def ingest(self, records: Iterable[Mapping[str, Any]], *, text_field: str = "text", id_field: str = "id",
               metadata_fields: Iterable[str] | None = None, gold_field: str = "is_gold",
               gold_label_field: str = "gold_label", line_numbers: Iterable[int] | None = None) -> IngestResult:
        """Add records as items, idempotently by external id.

        - ``id_field`` gives the external id (a string or an integer); a record without one gets
          ``sha256-<16 hex digits of the text's hash>``, stable across runs.
        - ``text_field`` must be a non-empty string. ``metadata_fields`` go to ``Item.meta``;
          ``gold_field`` (a bool, 0/1 or ``true``/``false``/``yes``/``no``) sets ``Item.is_gold``;
          a gold item's known answer, ``gold_label_field``, goes to ``Item.meta["gold_label"]``
          (never to ``data``, which is what annotators see); every other field stays in
          ``Item.data`` (the text included).
        - A record identical to its current version is ``unchanged``; any difference makes a new
          version (the old one is kept, ``is_current`` false): nothing is overwritten.
        - A bad record is reported in ``errors`` as ``"record N: why"`` (or ``"line N: why"``
          when ``line_numbers`` numbers the records) and skipped; the others are still ingested.
        """
        meta_keys = tuple(metadata_fields or ())
        skip_keys = {id_field, gold_field, gold_label_field, *meta_keys}
        where = "record" if line_numbers is None else "line"
        numbers = itertools.count(1) if line_numbers is None else iter(line_numbers)
        result = IngestResult()
        with self._sessions.begin() as s:
            batch: list[_Prepared] = []
            for record, number in zip(records, numbers, strict=line_numbers is not None):
                try:
                    batch.append(self._prepare(record, text_field, id_field, meta_keys, gold_field, skip_keys,
                                               gold_label_field))
                except (TypeError, ValueError) as exc:
                    result.errors.append(f"{where} {number}: {exc}")
                if len(batch) >= _CHUNK:
                    self._ingest_batch(s, batch, result)
                    batch = []
            self._ingest_batch(s, batch, result)
        return result

    @staticmethod
    def _prepare(record: Any, text_field: str, id_field: str, meta_keys: tuple[str, ...], gold_field: str,
                 skip_keys: set[str], gold_label_field: str = "gold_label") -> _Prepared:
        if not isinstance(record, Mapping):
            raise TypeError(f"expected an object, got {type(record).__name__}")
        text = record.get(text_field)
        if text is None:
            raise ValueError(f"no text field {text_field!r}")
        if not isinstance(text, str):
            raise TypeError(f"text field {text_field!r} must be a string, not {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"text field {text_field!r} is empty")
        raw_id = record.get(id_field)
        if isinstance(raw_id, bool) or not isinstance(raw_id, str | int | None):
            raise TypeError(f"id field {id_field!r} must be a string or an integer, not {type(raw_id).__name__}")
        external_id = str(raw_id).strip() if raw_id is not None else ""
        if not external_id:
            external_id = f"sha256-{content_hash(text)[:16]}"
        if len(external_id) > 255:
            raise ValueError(f"id {external_id[:40]!r}... is longer than 255 characters")
        gold = record.get(gold_field)
        if gold is None or isinstance(gold, bool) or (isinstance(gold, int) and gold in (0, 1)):
            is_gold = bool(gold)
        elif isinstance(gold, str) and gold.strip().lower() in _TRUE | _FALSE:
            is_gold = gold.strip().lower() in _TRUE
        else:
            raise ValueError(f"gold field {gold_field!r} is {gold!r}; expected true or false")
        data = {k: v for k, v in record.items() if k not in skip_keys}
        meta = {k: record[k] for k in meta_keys if k in record}
        gold_label = record.get(gold_label_field)
        if gold_label is not None and str(gold_label).strip():
            meta["gold_label"] = str(gold_label).strip()
        elif is_gold:
            raise ValueError(f"gold item without its answer in {gold_label_field!r}")
        try:
            canonical = _canonical([data, meta, is_gold])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not JSON-serializable: {exc}") from None
        data, meta, _ = json.loads(canonical)  # store exactly what was compared
        return _Prepared(external_id, text, data, meta, is_gold, canonical)

    @staticmethod
    def _ingest_batch(s: Session, batch: list[_Prepared], result: IngestResult) -> None:
        if not batch:
            return
        ids = sorted({p.external_id for p in batch})
        current = {item.external_id: item for item in
                   s.scalars(select(Item).where(Item.is_current, Item.external_id.in_(ids)))}
        for p in batch:
            old = current.get(p.external_id)
            if old is not None and _canonical([old.data, old.meta, old.is_gold]) == p.canonical:
                result.unchanged += 1
                continue
            if old is not None:
                old.is_current = False
                s.flush()  # the partial unique index allows one current version at a time
            item = Item(external_id=p.external_id, version=1 if old is None else old.version + 1, is_current=True,
                        data=p.data, text=p.text, content_hash=content_hash(p.text), meta=p.meta,
                        is_gold=p.is_gold, state="ingested", model_version=None)
            s.add(item)
            current[p.external_id] = item
            if old is None:
                result.added += 1
            else:
                result.new_versions += 1
        s.flush()

    def items(self, state: str | None = None, limit: int | None = None) -> list[Item]:
        """Current versions of items, oldest first, optionally only those in ``state``."""
        stmt = select(Item).where(Item.is_current).order_by(Item.id).limit(limit)
        if state is not None:
            if state not in ITEM_STATES:
                raise ValueError(f"unknown state {state!r}; expected one of {', '.join(ITEM_STATES)}")
            stmt = stmt.where(Item.state == state)
        with self._sessions() as s:
            return list(s.scalars(stmt))

    def get_item(self, item_id: int) -> Item | None:
        """One item version by its row id."""
        with self._sessions() as s:
            return s.get(Item, item_id)

    def versions(self, external_id: str) -> list[Item]:
        """Every version of one external id, version 1 first."""
        with self._sessions() as s:
            return list(s.scalars(select(Item).where(Item.external_id == external_id).order_by(Item.version)))

    def counts_by_state(self) -> dict[str, int]:
        """Number of current items in each state (every state listed, zeros included)."""
        stmt = select(Item.state, func.count()).where(Item.is_current).group_by(Item.state)
        with self._sessions() as s:
            found = dict(s.execute(stmt).tuples().all())
        return {state: found.get(state, 0) for state in ITEM_STATES}

    def set_state(self, item_ids: Iterable[int], state: str) -> int:
        """Put items in ``state`` (e.g. ``consolidated`` once a consensus label is kept); returns the count."""
        if state not in ITEM_STATES:
            raise ValueError(f"unknown state {state!r}; expected one of {', '.join(ITEM_STATES)}")
        with self._sessions.begin() as s:
            items = self._load_items(s, item_ids)
            for item in items.values():
                item.state = state
            return len(items)

    @staticmethod
    def _check_items_exist(s: Session, item_ids: Sequence[int]) -> None:
        found: set[int] = set()
        for chunk in _chunks(sorted(set(item_ids))):
            found.update(s.scalars(select(Item.id).where(Item.id.in_(chunk))))
        missing = [i for i in item_ids if i not in found]
        if missing:
            raise ValueError(f"unknown item ids: {missing[:10]}{' ...' if len(missing) > 10 else ''}")

    @staticmethod
    def _load_items(s: Session, item_ids: Iterable[int]) -> dict[int, Item]:
        wanted = sorted({int(i) for i in item_ids})
        found: dict[int, Item] = {}
        for chunk in _chunks(wanted):
            found.update((item.id, item) for item in s.scalars(select(Item).where(Item.id.in_(chunk))))
        missing = [i for i in wanted if i not in found]
        if missing:
            raise ValueError(f"unknown item ids: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        return found

    # ---------------------------------------------------------------- predictions and routing

    def record_predictions(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Store predictions; returns how many were new.

        Each row: ``item_id, model_version, label, confidence`` (calibrated) and ``probabilities``
        (label -> probability). A second prediction for the same (item, model version) is ignored.
        A new one moves an item not yet pushed to ``predicted`` (a routed item is routed again)
        and sets its ``model_version``.
        """
        rows = list(rows)
        with self._sessions.begin() as s:
            items = self._load_items(s, (r["item_id"] for r in rows))
            seen: set[tuple[int, str]] = set()
            for chunk in _chunks(sorted(items)):
                seen.update(s.execute(select(Prediction.item_id, Prediction.model_version)
                                      .where(Prediction.item_id.in_(chunk))).tuples())
            added = 0
            for r in rows:
                key = (int(r["item_id"]), str(r["model_version"]))
                if key in seen:
                    continue
                seen.add(key)
                s.add(Prediction(item_id=key[0], model_version=key[1], label=str(r["label"]),
                                 confidence=float(r["confidence"]), probabilities=dict(r["probabilities"])))
                item = items[key[0]]
                if item.state in _BEFORE_PUSHED:
                    item.state = "predicted"
                    item.model_version = key[1]
                added += 1
            return added

    def predictions(self, item_ids: Iterable[int]) -> list[Prediction]:
        """Every prediction for these items, by item then oldest first."""
        wanted = sorted({int(i) for i in item_ids})
        out: list[Prediction] = []
        with self._sessions() as s:
            for chunk in _chunks(wanted):
                out.extend(s.scalars(select(Prediction).where(Prediction.item_id.in_(chunk))))
        return sorted(out, key=lambda p: (p.item_id, p.id))

    def record_decisions(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Append routing decisions and move items not yet pushed to ``routed``; returns the count.

        Each row: ``item_id, action, reason, priority`` and optionally ``model_version`` and ``score``.
        """
        rows = list(rows)
        with self._sessions.begin() as s:
            items = self._load_items(s, (r["item_id"] for r in rows))
            for r in rows:
                item = items[int(r["item_id"])]
                score = r.get("score")
                s.add(RoutingDecision(item_id=item.id, model_version=r.get("model_version", item.model_version),
                                      action=str(r["action"]), reason=str(r["reason"]),
                                      priority=float(r["priority"]), score=None if score is None else float(score)))
                _advance(item, "routed", from_states=_BEFORE_PUSHED)
            return len(rows)

    def routed(self, action: str | None = None, limit: int | None = None) -> list[tuple[Item, RoutingDecision]]:
        """Current items in state ``routed`` with their latest decision (of ``action`` if given),
        highest priority first."""
        # a join on the derived table of latest ids: an IN (subquery) here was quadratic on SQLite
        latest = (select(RoutingDecision.item_id, func.max(RoutingDecision.id).label("id"))
                  .group_by(RoutingDecision.item_id).subquery())
        stmt = (select(Item, RoutingDecision).join(latest, latest.c.item_id == Item.id)
                .join(RoutingDecision, RoutingDecision.id == latest.c.id)
                .where(Item.is_current, Item.state == "routed")
                .order_by(RoutingDecision.priority.desc(), Item.id).limit(limit))
        if action is not None:
            stmt = stmt.where(RoutingDecision.action == action)
        with self._sessions() as s:
            return [tuple(row) for row in s.execute(stmt).all()]  # type: ignore[misc]

    # ---------------------------------------------------------------- pushes

    def begin_push(self, item_ids: Iterable[int], tool: str, project: str) -> list[Push]:
        """Write ``pending`` pushes before the remote call; returns the new rows.

        Items that already have a push to this tool and project, pending or confirmed, are
        skipped: a pending one is reconciled through ``pending_pushes``, never pushed again here.
        """
        _check_tool(tool)
        wanted = list(dict.fromkeys(int(i) for i in item_ids))
        with self._sessions.begin() as s:
            self._check_items_exist(s, wanted)
            done: set[int] = set()
            for chunk in _chunks(wanted):
                done.update(s.scalars(select(Push.item_id).where(Push.tool == tool, Push.project == project,
                                                                 Push.item_id.in_(chunk))))
            new = [i for i in wanted if i not in done]
            if not new:
                return []
            now = utcnow()
            s.execute(insert(Push), [{"item_id": i, "tool": tool, "project": project, "remote_id": None,
                                      "status": "pending", "created_at": now, "confirmed_at": None} for i in new])
            return list(self._pushes(s, tool, project, new).values())

    def confirm_push(self, remote_ids: Mapping[int, str | int], tool: str, project: str) -> int:
        """Mark pushes confirmed with their remote ids (item id -> remote id); items move to ``pushed``.

        Returns how many were confirmed by this call; confirming again with the same remote id is
        a no-op. A push never begun, or confirmed with another remote id, raises ``ValueError``.
        """
        _check_tool(tool)
        with self._sessions.begin() as s:
            pushes = self._pushes(s, tool, project, remote_ids)
            missing = [i for i in remote_ids if int(i) not in pushes]
            if missing:
                raise ValueError(f"no push to {tool}/{project} was begun for items {missing[:10]}")
            now = utcnow()
            rows = []
            for item_id, remote_id in remote_ids.items():
                push = pushes[int(item_id)]
                if push.status == "confirmed":
                    if push.remote_id != str(remote_id):
                        raise ValueError(f"item {item_id} is already confirmed in {tool}/{project} as "
                                         f"{push.remote_id!r}, not {str(remote_id)!r}")
                    continue
                rows.append({"id": push.id, "status": "confirmed", "remote_id": str(remote_id), "confirmed_at": now})
            if rows:  # bulk statements: per-object ORM updates cost seconds per 10,000 pushes
                s.execute(update(Push).execution_options(synchronize_session=False), rows)
                ids = [pushes[int(i)].item_id for i in remote_ids if pushes[int(i)].status != "confirmed"]
                for chunk in _chunks(ids):
                    s.execute(update(Item).where(Item.id.in_(chunk), Item.state.in_(_BEFORE_PUSHED))
                              .values(state="pushed", updated_at=now).execution_options(synchronize_session=False))
            return len(rows)

    def cancel_push(self, item_ids: Iterable[int], tool: str, project: str) -> int:
        """Drop pending pushes (reconciliation found no remote copy), so the next pass begins them
        again; confirmed pushes are left alone. Returns how many were dropped."""
        _check_tool(tool)
        with self._sessions.begin() as s:
            pending = [p for p in self._pushes(s, tool, project, item_ids).values() if p.status == "pending"]
            for push in pending:
                s.delete(push)
            return len(pending)

    @staticmethod
    def _pushes(s: Session, tool: str, project: str, item_ids: Iterable[int]) -> dict[int, Push]:
        wanted = sorted({int(i) for i in item_ids})
        found: dict[int, Push] = {}
        for chunk in _chunks(wanted):
            found.update((p.item_id, p) for p in s.scalars(
                select(Push).where(Push.tool == tool, Push.project == project, Push.item_id.in_(chunk))))
        return found

    def remote_ids(self, item_ids: Iterable[int], tool: str, project: str) -> dict[int, str]:
        """Item id -> remote id (task or record id) of its confirmed push to ``project``."""
        _check_tool(tool)
        with self._sessions() as s:
            pushes = self._pushes(s, tool, project, item_ids)
        return {i: p.remote_id for i, p in pushes.items() if p.status == "confirmed" and p.remote_id is not None}

    def requeue_deferred(self) -> int:
        """Put items deferred by the review budget back to ``predicted``, to be routed again; returns the count."""
        deferred = [it.id for it, _ in self.routed(action="defer")]
        with self._sessions.begin() as s:
            for chunk in _chunks(deferred):
                s.execute(update(Item).where(Item.id.in_(chunk), Item.state == "routed").values(state="predicted"))
        return len(deferred)

    def stale_items(self, model_version: str, *, limit: int | None = None) -> list[Item]:
        """Current items scored by another model version and not yet pushed (to score again)."""
        stmt = (select(Item).where(Item.is_current, Item.state.in_(("predicted", "routed")),
                                   Item.model_version != model_version).order_by(Item.id).limit(limit))
        with self._sessions() as s:
            return list(s.scalars(stmt))

    def pending_pushes(self, tool: str, project: str) -> list[Push]:
        """Pushes begun but never confirmed (what a crash between the two left behind), oldest first."""
        _check_tool(tool)
        stmt = select(Push).where(Push.tool == tool, Push.project == project, Push.status == "pending")
        with self._sessions() as s:
            return list(s.scalars(stmt.order_by(Push.id)))

    def find_push(self, tool: str, project: str, remote_id: str | int) -> Push | None:
        """The confirmed push whose remote id (a task or record id) is ``remote_id``."""
        stmt = select(Push).where(Push.tool == tool, Push.project == project, Push.remote_id == str(remote_id))
        with self._sessions() as s:
            return s.scalars(stmt).first()

    # ---------------------------------------------------------------- annotations

    def upsert_annotations(self, rows: Iterable[Mapping[str, Any]]) -> UpsertResult:
        """Store annotations exactly once, keyed by ``(tool, project, remote_id)``.

        Each row: ``item_id, tool, project, remote_id, annotator, value, status``
        (submitted|skipped|deleted), ``remote_updated_at`` (a datetime or ISO 8601 string; naive
        means UTC) and optionally ``lead_time`` (seconds). A row newer than the stored one replaces
        its annotator, value, status and lead time; an equal or older one changes nothing. A
        submitted annotation moves its item to ``annotated``.
        """
        prepared = []
        for r in rows:
            _check_tool(r["tool"])
            if r["status"] not in ANNOTATION_STATUSES:
                raise ValueError(f"unknown annotation status {r['status']!r}; "
                                 f"expected one of {', '.join(ANNOTATION_STATUSES)}")
            lead_time = r.get("lead_time")
            prepared.append({
                "item_id": int(r["item_id"]), "tool": str(r["tool"]), "project": str(r["project"]),
                "remote_id": str(r["remote_id"]), "annotator": str(r["annotator"]), "value": r["value"],
                "status": str(r["status"]), "remote_updated_at": _as_datetime(r["remote_updated_at"]),
                "lead_time": None if lead_time is None else float(lead_time),
            })
        result = UpsertResult()
        with self._sessions.begin() as s:
            items = self._load_items(s, (r["item_id"] for r in prepared))
            stored: dict[tuple[str, str, str], Annotation] = {}
            keys = sorted({(r["tool"], r["project"], r["remote_id"]) for r in prepared})
            for (tool, project), group in itertools.groupby(keys, key=lambda k: k[:2]):
                for chunk in _chunks([k[2] for k in group]):
                    stored.update(((a.tool, a.project, a.remote_id), a) for a in s.scalars(
                        select(Annotation).where(Annotation.tool == tool, Annotation.project == project,
                                                 Annotation.remote_id.in_(chunk))))
            for r in prepared:
                key = (r["tool"], r["project"], r["remote_id"])
                old = stored.get(key)
                if old is None:
                    stored[key] = Annotation(**r)
                    s.add(stored[key])
                    result.inserted += 1
                elif r["remote_updated_at"] > old.remote_updated_at:
                    for name in ("annotator", "value", "status", "remote_updated_at", "lead_time"):
                        setattr(old, name, r[name])
                    result.updated += 1
                else:
                    result.unchanged += 1
                    continue
                if r["status"] == "submitted":
                    _advance(items[r["item_id"]], "annotated", from_states=_BEFORE_ANNOTATED)
        return result

    def _rows_for(self, stmt: Any, column: Any, item_ids: Iterable[int] | None) -> list[Any]:
        """``stmt``'s rows, all of them or those whose ``column`` is one of ``item_ids`` (in chunks)."""
        with self._sessions() as s:
            if item_ids is None:
                return list(s.scalars(stmt))
            out: list[Any] = []
            for chunk in _chunks(sorted({int(i) for i in item_ids})):
                out.extend(s.scalars(stmt.where(column.in_(chunk))))
            return out

    def annotations(self, item_ids: Iterable[int] | None = None, *, tool: str | None = None,
                    project: str | None = None, status: str | None = None) -> list[Annotation]:
        """Stored annotations, filtered by any of item ids, tool, project and status, oldest first."""
        stmt = select(Annotation).order_by(Annotation.id)
        for column, value in ((Annotation.tool, tool), (Annotation.project, project), (Annotation.status, status)):
            if value is not None:
                stmt = stmt.where(column == value)
        return sorted(self._rows_for(stmt, Annotation.item_id, item_ids), key=lambda a: a.id)

    # ---------------------------------------------------------------- cursors

    def get_cursor(self, tool: str, project: str, name: str, default: str | None = None) -> str | None:
        """A stored cursor value, or ``default``."""
        with self._sessions() as s:
            cursor = s.get(Cursor, (tool, project, name))
            return default if cursor is None else cursor.value

    def set_cursor(self, tool: str, project: str, name: str, value: str) -> None:
        """Store a cursor value, replacing any earlier one."""
        with self._sessions.begin() as s:
            cursor = s.get(Cursor, (tool, project, name))
            if cursor is None:
                s.add(Cursor(tool=tool, project=project, name=name, value=str(value)))
            else:
                cursor.value = str(value)

    # ---------------------------------------------------------------- consolidated labels

    def save_labels(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Write each item's consolidated label, replacing the previous one; returns the count.

        Each row: ``item_id, label`` (None when unsettled), ``status`` (settled|unsettled),
        ``method``, ``n_answers``, ``reason`` and optionally ``confidence`` and ``agreement``. A
        settled label moves its item to ``consolidated``; an unsettled one moves it back to
        ``annotated`` (it waits for more answers).
        """
        rows = list(rows)
        for r in rows:
            if r["status"] not in LABEL_STATUSES:
                raise ValueError(f"unknown label status {r['status']!r}; expected one of {', '.join(LABEL_STATUSES)}")
        with self._sessions.begin() as s:
            items = self._load_items(s, (r["item_id"] for r in rows))
            old: dict[int, Label] = {}
            for chunk in _chunks(sorted(items)):
                old.update((lb.item_id, lb) for lb in s.scalars(select(Label).where(Label.item_id.in_(chunk))))
            for r in rows:
                item_id = int(r["item_id"])
                values = {"label": None if r.get("label") is None else str(r["label"]), "status": r["status"],
                          "method": str(r["method"]), "n_answers": int(r["n_answers"]), "reason": str(r["reason"]),
                          "confidence": _opt_float(r.get("confidence")), "agreement": _opt_float(r.get("agreement"))}
                label = old.get(item_id)
                if label is None:
                    label = Label(item_id=item_id, **values)
                    s.add(label)
                    old[item_id] = label
                else:
                    for name, value in values.items():
                        setattr(label, name, value)
                item = items[item_id]
                if r["status"] == "settled":
                    item.state = "consolidated"
                elif item.state == "consolidated":
                    item.state = "annotated"
            return len(rows)

    def labels(self, *, status: str | None = "settled", item_ids: Iterable[int] | None = None) -> list[Label]:
        """Consolidated labels (settled ones by default; ``status=None`` for all), by item id."""
        stmt = select(Label).order_by(Label.item_id)
        if status is not None:
            stmt = stmt.where(Label.status == status)
        return sorted(self._rows_for(stmt, Label.item_id, item_ids), key=lambda lb: lb.item_id)

    def items_by_id(self, item_ids: Iterable[int]) -> dict[int, Item]:
        """Item versions by row id (unknown ids are left out)."""
        out: dict[int, Item] = {}
        with self._sessions() as s:
            for chunk in _chunks(sorted({int(i) for i in item_ids})):
                out.update((it.id, it) for it in s.scalars(select(Item).where(Item.id.in_(chunk))))
        return out

    def latest_decisions(self, item_ids: Iterable[int] | None = None) -> dict[int, RoutingDecision]:
        """Each item's latest routing decision (all items with one, or those in ``item_ids``)."""
        latest = (select(func.max(RoutingDecision.id).label("id")).group_by(RoutingDecision.item_id)).subquery()
        stmt = select(RoutingDecision).join(latest, latest.c.id == RoutingDecision.id)
        with self._sessions() as s:
            if item_ids is None:
                return {d.item_id: d for d in s.scalars(stmt)}
            out: dict[int, RoutingDecision] = {}
            for chunk in _chunks(sorted({int(i) for i in item_ids})):
                out.update((d.item_id, d) for d in s.scalars(stmt.where(RoutingDecision.item_id.in_(chunk))))
            return out

    # ---------------------------------------------------------------- embedding cache

    def get_embeddings(self, encoder: str, hashes: Iterable[str]) -> dict[str, bytes]:
        """Cached vectors (raw float32 bytes) by content hash; missing hashes are left out."""
        out: dict[str, bytes] = {}
        with self._sessions() as s:
            for chunk in _chunks(sorted(set(hashes))):
                out.update(s.execute(select(Embedding.content_hash, Embedding.vector)
                                     .where(Embedding.encoder == encoder, Embedding.content_hash.in_(chunk))).tuples().all())
        return out

    def put_embeddings(self, encoder: str, vectors: Mapping[str, bytes]) -> int:
        """Cache vectors by content hash (ones already cached are kept); returns how many were new."""
        have = self.get_embeddings(encoder, vectors)
        new = [{"encoder": encoder, "content_hash": h, "vector": v} for h, v in vectors.items() if h not in have]
        if new:
            with self._sessions.begin() as s:
                for chunk in _chunks(new):
                    s.execute(insert(Embedding), list(chunk))
        return len(new)

    # ---------------------------------------------------------------- job runs

    def claim_job_run(self, job_id: str, slot: str, host: str) -> int | None:
        """Insert the ``running`` row for ``(job_id, slot)``; ``None`` when another run holds it."""
        try:
            with self._sessions.begin() as s:
                run = JobRun(job_id=job_id, slot=slot, host=host, status="running", detail={})
                s.add(run)
                s.flush()
                return run.id
        except IntegrityError:
            return None

    def finish_job_run(self, run_id: int, status: str, *, error: str | None = None,
                       detail: Mapping[str, Any] | None = None) -> None:
        """Close a run as ``ok`` or ``failed`` with its error text and what it did."""
        if status not in JOB_STATUSES:
            raise ValueError(f"unknown job status {status!r}; expected one of {', '.join(JOB_STATUSES)}")
        with self._sessions.begin() as s:
            run = s.get(JobRun, run_id)
            if run is None:
                raise ValueError(f"unknown job run {run_id}")
            run.status, run.error, run.finished_at = status, error, utcnow()
            run.detail = json.loads(json.dumps(dict(detail or {}), default=str))

    def job_runs(self, job_id: str | None = None, *, limit: int | None = None) -> list[JobRun]:
        """Job runs, newest first."""
        stmt = select(JobRun).order_by(JobRun.id.desc()).limit(limit)
        if job_id is not None:
            stmt = stmt.where(JobRun.job_id == job_id)
        with self._sessions() as s:
            return list(s.scalars(stmt))

    def job_summary(self) -> dict[str, dict[str, Any]]:
        """Per job: ``last_run`` (the newest run), ``last_error`` (the newest failed run) and
        ``runs``/``failures`` counts."""
        with self._sessions() as s:
            counts = s.execute(select(JobRun.job_id, JobRun.status, func.count())
                               .group_by(JobRun.job_id, JobRun.status)).tuples().all()
            newest = select(func.max(JobRun.id)).group_by(JobRun.job_id)
            failed = select(func.max(JobRun.id)).where(JobRun.status == "failed").group_by(JobRun.job_id)
            last = {r.job_id: r for r in s.scalars(select(JobRun).where(JobRun.id.in_(newest)))}
            errors = {r.job_id: r for r in s.scalars(select(JobRun).where(JobRun.id.in_(failed)))}
        out: dict[str, dict[str, Any]] = {}
        for job_id, status, n in counts:
            entry = out.setdefault(job_id, {"runs": 0, "failures": 0, "last_run": last.get(job_id),
                                            "last_error": errors.get(job_id)})
            entry["runs"] += n
            entry["failures"] += n if status == "failed" else 0
        return out

    # ---------------------------------------------------------------- snapshots

    def add_snapshot(self, kind: str, payload: Mapping[str, Any]) -> int:
        """Keep a dated measurement (JSON-serializable; numpy values are converted)."""
        with self._sessions.begin() as s:
            snap = Snapshot(kind=kind, payload=json.loads(json.dumps(dict(payload), default=_jsonable)))
            s.add(snap)
            s.flush()
            return snap.id

    def snapshots(self, kind: str, *, limit: int | None = None) -> list[Snapshot]:
        """Snapshots of one kind, oldest first (the newest ``limit`` when given)."""
        stmt = select(Snapshot).where(Snapshot.kind == kind).order_by(Snapshot.id.desc()).limit(limit)
        with self._sessions() as s:
            return list(reversed(list(s.scalars(stmt))))

    def latest_snapshot(self, kind: str) -> Snapshot | None:
        """The newest snapshot of ``kind``, or ``None``."""
        found = self.snapshots(kind, limit=1)
        return found[0] if found else None

    def decision_counts(self) -> dict[str, int]:
        """How many current items' latest routing decision is each action."""
        latest = (select(func.max(RoutingDecision.id).label("id")).group_by(RoutingDecision.item_id)).subquery()
        stmt = (select(RoutingDecision.action, func.count()).join(latest, latest.c.id == RoutingDecision.id)
                .group_by(RoutingDecision.action))
        with self._sessions() as s:
            return dict(s.execute(stmt).tuples().all())


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _jsonable(value: Any) -> Any:
    """``json.dumps`` fallback: numpy scalars and arrays, datetimes, anything else as text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
