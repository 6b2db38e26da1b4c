"""What comes back from the tools: annotations, the cursors that page through them, and the
consolidated label each item settles on."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from connector.store.models import ANNOTATION_STATUSES, LABEL_STATUSES, Annotation, Cursor, Label
from connector.store.repository import (
    BEFORE_ANNOTATED,
    Repository,
    advance,
    as_datetime,
    check_tool,
    chunks,
    load_items,
)


@dataclass
class UpsertResult:
    """What one ``annotations.upsert`` call did, row by row."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


class AnnotationRepository(Repository):
    """``store.annotations``: annotations exactly once per ``(tool, project, remote_id)``, newest wins."""

    def upsert(self, rows: Iterable[Mapping[str, Any]]) -> UpsertResult:
        """Store annotations exactly once, keyed by ``(tool, project, remote_id)``.

        Each row: ``item_id, tool, project, remote_id, annotator, value, status``
        (submitted|skipped|deleted), ``remote_updated_at`` (a datetime or ISO 8601 string; naive
        means UTC) and optionally ``lead_time`` (seconds). A row newer than the stored one replaces
        its annotator, value, status and lead time; an equal or older one changes nothing. A
        submitted annotation moves its item to ``annotated``.
        """
        prepared = [_prepare(r) for r in rows]
        result = UpsertResult()
        with self._sessions.begin() as s:
            items = load_items(s, (r["item_id"] for r in prepared))
            stored: dict[tuple[str, str, str], Annotation] = {}
            keys = sorted({(r["tool"], r["project"], r["remote_id"]) for r in prepared})
            for (tool, project), group in itertools.groupby(keys, key=lambda k: k[:2]):
                for chunk in chunks([k[2] for k in group]):
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
                    advance(items[r["item_id"]], "annotated", from_states=BEFORE_ANNOTATED)
        return result

    def list(self, item_ids: Iterable[int] | None = None, *, tool: str | None = None,
             project: str | None = None, status: str | None = None) -> list[Annotation]:
        """Stored annotations, filtered by any of item ids, tool, project and status, oldest first."""
        stmt = select(Annotation).order_by(Annotation.id)
        for column, value in ((Annotation.tool, tool), (Annotation.project, project), (Annotation.status, status)):
            if value is not None:
                stmt = stmt.where(column == value)
        return sorted(self._rows_for(stmt, Annotation.item_id, item_ids), key=lambda a: a.id)


def _prepare(r: Mapping[str, Any]) -> dict[str, Any]:
    check_tool(r["tool"])
    if r["status"] not in ANNOTATION_STATUSES:
        raise ValueError(f"unknown annotation status {r['status']!r}; "
                         f"expected one of {', '.join(ANNOTATION_STATUSES)}")
    lead_time = r.get("lead_time")
    return {
        "item_id": int(r["item_id"]), "tool": str(r["tool"]), "project": str(r["project"]),
        "remote_id": str(r["remote_id"]), "annotator": str(r["annotator"]), "value": r["value"],
        "status": str(r["status"]), "remote_updated_at": as_datetime(r["remote_updated_at"]),
        "lead_time": None if lead_time is None else float(lead_time),
    }


class CursorRepository(Repository):
    """``store.cursors``: named positions per tool and project (e.g. the last ``updated_at`` pulled)."""

    def get(self, tool: str, project: str, name: str, default: str | None = None) -> str | None:
        """A stored cursor value, or ``default``."""
        with self._sessions() as s:
            cursor = s.get(Cursor, (tool, project, name))
            return default if cursor is None else cursor.value

    def set(self, tool: str, project: str, name: str, value: str) -> None:
        """Store a cursor value, replacing any earlier one."""
        with self._sessions.begin() as s:
            cursor = s.get(Cursor, (tool, project, name))
            if cursor is None:
                s.add(Cursor(tool=tool, project=project, name=name, value=str(value)))
            else:
                cursor.value = str(value)


class LabelRepository(Repository):
    """``store.labels``: each item's consolidated label, one per item, replaced on each consolidation."""

    def save(self, rows: Iterable[Mapping[str, Any]]) -> int:
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
            items = load_items(s, (r["item_id"] for r in rows))
            old: dict[int, Label] = {}
            for chunk in chunks(sorted(items)):
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

    def list(self, *, status: str | None = "settled", item_ids: Iterable[int] | None = None) -> list[Label]:
        """Consolidated labels (settled ones by default; ``status=None`` for all), by item id."""
        stmt = select(Label).order_by(Label.item_id)
        if status is not None:
            stmt = stmt.where(Label.status == status)
        return sorted(self._rows_for(stmt, Label.item_id, item_ids), key=lambda lb: lb.item_id)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
