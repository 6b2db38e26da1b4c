"""What every repository of the store shares: the session factory and the small helpers.

Every public method that writes is one transaction (``with self._sessions.begin()``): it commits
whole or not at all. Rows returned are detached snapshots: changing them changes nothing stored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from connector.store.database import make_sessions
from connector.store.models import TOOLS, Item

CHUNK = 500  # ids per IN (...) clause, well under SQLite's and PostgreSQL's parameter limits
BEFORE_PUSHED = ("ingested", "predicted", "routed")
BEFORE_ANNOTATED = (*BEFORE_PUSHED, "pushed")
_T = TypeVar("_T")


class Repository:
    """A repository over one area of the store: ``Repository(engine)`` makes its own session
    factory; the ``StateStore`` facade passes one shared by all its repositories."""

    def __init__(self, engine: Engine, sessions: sessionmaker[Session] | None = None) -> None:
        self.engine = engine
        self._sessions = sessions if sessions is not None else make_sessions(engine)

    def _rows_for(self, stmt: Any, column: Any, item_ids: Iterable[int] | None) -> list[Any]:
        """``stmt``'s rows, all of them or those whose ``column`` is one of ``item_ids`` (in chunks)."""
        with self._sessions() as s:
            if item_ids is None:
                return list(s.scalars(stmt))
            out: list[Any] = []
            for chunk in chunks(sorted({int(i) for i in item_ids})):
                out.extend(s.scalars(stmt.where(column.in_(chunk))))
            return out


def content_hash(text: str) -> str:
    """SHA-256 of the text (UTF-8), hex: the key for anything derived from the text alone."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunks(values: Sequence[_T], size: int = CHUNK) -> Iterator[Sequence[_T]]:
    """``values`` in slices of at most ``size``."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


def as_datetime(value: datetime | str) -> datetime:
    """A datetime or ISO 8601 string as an aware UTC datetime (naive means UTC)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime or an ISO 8601 string, got {type(value).__name__}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def check_tool(tool: str) -> None:
    """Refuse a tool name the store does not know."""
    if tool not in TOOLS:
        raise ValueError(f"unknown tool {tool!r}; expected one of {', '.join(TOOLS)}")


def advance(item: Item, state: str, *, from_states: tuple[str, ...]) -> None:
    """Move ``item`` to ``state`` when it is in one of ``from_states``."""
    if item.state in from_states:
        item.state = state


def load_items(s: Session, item_ids: Iterable[int]) -> dict[int, Item]:
    """Item rows by id, in this session; an unknown id raises ``ValueError``."""
    wanted = sorted({int(i) for i in item_ids})
    found: dict[int, Item] = {}
    for chunk in chunks(wanted):
        found.update((item.id, item) for item in s.scalars(select(Item).where(Item.id.in_(chunk))))
    _refuse_missing([i for i in wanted if i not in found])
    return found


def check_items_exist(s: Session, item_ids: Sequence[int]) -> None:
    """Raise ``ValueError`` when any of ``item_ids`` is not an item."""
    found: set[int] = set()
    for chunk in chunks(sorted(set(item_ids))):
        found.update(s.scalars(select(Item.id).where(Item.id.in_(chunk))))
    _refuse_missing([i for i in item_ids if i not in found])


def _refuse_missing(missing: list[int]) -> None:
    if missing:
        raise ValueError(f"unknown item ids: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
