"""What comes back from the tools: annotations, the cursors that page through them, and the
consolidated label each item settles on."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from connector.store.history import append as append_events
from connector.store.models import ANNOTATION_STATUSES, LABEL_STATUSES, Annotation, Cursor, Label, Push
from connector.store.repository import (
    BEFORE_ANNOTATED,
    Repository,
    advance,
    as_datetime,
    check_tool,
    chunks,
    load_items,
)

INSERT_RACE_ATTEMPTS = 3


@dataclass
class UpsertResult:
    """What one ``annotations.upsert`` call did, row by row."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


@dataclass
class AbsenceResult:
    """What one ``annotations.settle_absent`` call did: answers absent once (kept), twice (deleted)."""

    missing: int = 0
    deleted: int = 0


@dataclass
class _Stored:
    id: int
    remote_updated_at: datetime
    status: str
    value: Any
    annotator: str
    extra: Any = None


@dataclass
class _Before:
    """What an answer was before a row replaced it (for its event)."""

    value: Any
    status: str
    annotator: str
    extra: Any = None


class AnnotationRepository(Repository):
    """``store.annotations``: annotations exactly once per ``(tool, project, remote_id)``, newest wins."""

    def upsert(self, rows: Iterable[Mapping[str, Any]]) -> UpsertResult:
        """Store annotations exactly once, keyed by ``(tool, project, remote_id)``.

        Each row: ``item_id, tool, project, remote_id, annotator, value, status``
        (submitted|skipped|deleted), ``remote_updated_at`` (a datetime or ISO 8601 string; naive
        means UTC), optionally ``lead_time`` (seconds) and ``revive`` (the tool returned this live
        answer whole: it replaces a stored deletion whatever the times). A row newer than the
        stored one replaces its annotator, value, status and lead time; an equal or older one
        changes nothing. The replacement is conditional in SQL (``WHERE remote_updated_at <
        new``), so concurrent pulls cannot put an older answer over a newer one whatever their
        interleaving; two pulls inserting the same new answer at once both read it absent, and the
        one whose insert loses on the unique key runs again from the read (it then sees the answer
        and keeps the newer). A submitted annotation moves its item to ``annotated``.

        Each change is on record (``store.history``, same transaction): ``answer_added`` for a new
        answer, ``answer_edited`` / ``answer_deleted`` / ``answer_revived`` for a replacement that
        changes its value, status or annotator, with the old and new value and the tool's time.
        """
        prepared = [_prepare(r) for r in rows]
        for attempt in range(1, INSERT_RACE_ATTEMPTS + 1):
            try:
                return self._upsert(prepared)
            except IntegrityError:  # a concurrent pull inserted one of these answers after our read
                if attempt == INSERT_RACE_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _upsert(self, prepared: list[tuple[dict[str, Any], bool]]) -> UpsertResult:
        """One transaction of :meth:`upsert`."""
        result = UpsertResult()
        with self._sessions.begin() as s:
            items = load_items(s, (r["item_id"] for r, _ in prepared))
            stored: dict[tuple[str, str, str], _Stored] = {}
            keys = sorted({(r["tool"], r["project"], r["remote_id"]) for r, _ in prepared})
            for (tool, project), group in itertools.groupby(keys, key=lambda k: k[:2]):
                for chunk in chunks([k[2] for k in group]):
                    stored.update(((tool, project, remote_id), _Stored(id_, at, status, value, annotator, extra))
                                  for id_, remote_id, at, status, value, annotator, extra in s.execute(
                        select(Annotation.id, Annotation.remote_id, Annotation.remote_updated_at, Annotation.status,
                               Annotation.value, Annotation.annotator, Annotation.extra)
                        .where(Annotation.tool == tool, Annotation.project == project,
                               Annotation.remote_id.in_(chunk))))
            added: dict[tuple[str, str, str], Annotation] = {}  # inserted by this call
            events: list[dict[str, Any]] = []
            for r, revive in prepared:
                key = (r["tool"], r["project"], r["remote_id"])
                revives = revive and r["status"] != "deleted"
                new, old = added.get(key), stored.get(key)
                before: _Before | None = None
                if new is None and old is None:
                    added[key] = Annotation(**r)
                    s.add(added[key])
                    result.inserted += 1
                elif new is not None:  # a second row for an answer this call inserted: no one else sees it yet
                    if not (r["remote_updated_at"] > new.remote_updated_at or (revives and new.status == "deleted")):
                        result.unchanged += 1
                        continue
                    before = _Before(new.value, new.status, new.annotator, new.extra)
                    for name in _REPLACED:
                        setattr(new, name, r[name])
                    result.updated += 1
                elif old is not None and (before := self._replace(s, old, r, revives)) is not None:
                    result.updated += 1
                else:
                    result.unchanged += 1
                    continue
                if (event := _answer_event(before, r)) is not None:
                    events.append(event)
                if r["status"] == "submitted":
                    advance(items[r["item_id"]], "annotated", from_states=BEFORE_ANNOTATED)
            append_events(s, events)
        return result

    @staticmethod
    def _replace(s: Session, old: _Stored, r: dict[str, Any], revives: bool) -> _Before | None:
        """Write ``r`` over the stored answer when it is newer (or revives a deletion), checked by the
        database at write time: a concurrent pull may have stored a newer answer since the read.
        Returns what the answer was, or ``None`` when ``r`` did not replace it.

        On PostgreSQL the answer is read again under a row lock, so what it was is what this write
        replaced, not what the first read saw; SQLite's write transactions are serial (``BEGIN
        IMMEDIATE``), so there the first read is still what is stored."""
        newer = r["remote_updated_at"] > old.remote_updated_at
        if not (newer or (revives and old.status == "deleted")):
            return None
        now: Any = old
        if s.get_bind().dialect.name != "sqlite":
            now = s.execute(select(Annotation.value, Annotation.status, Annotation.annotator,
                                   Annotation.remote_updated_at, Annotation.extra)
                            .where(Annotation.id == old.id).with_for_update()).one()
            if not (r["remote_updated_at"] > now.remote_updated_at or (revives and now.status == "deleted")):
                return None
        before = _Before(now.value, now.status, now.annotator, now.extra)
        condition = Annotation.remote_updated_at < r["remote_updated_at"]
        if revives:
            condition = or_(condition, Annotation.status == "deleted")
        written = s.execute(update(Annotation).where(Annotation.id == old.id, condition)
                            .values({name: r[name] for name in _REPLACED})
                            .execution_options(synchronize_session=False))
        if written.rowcount != 1:
            return None
        old.remote_updated_at, old.status, old.value, old.annotator, old.extra = (
            r["remote_updated_at"], r["status"], r["value"], r["annotator"], r["extra"])
        return before

    def settle_absent(self, tool: str, project: str, returned: Iterable[str]) -> AbsenceResult:
        """After a pull that returned every live answer of a project (Argilla's): the stored ones it did not.

        One such pull can miss an answer that exists (a search answer short of a record), so a
        live answer absent once is only marked (``missed_pulls`` = 1) and stays live; absent from
        the next whole pull too, it is marked ``deleted``, keeping its own ``remote_updated_at``
        (so the answer, should it come back, is not older than its deletion). An answer in
        ``returned`` (remote ids) has its mark cleared.
        """
        check_tool(tool)
        seen = set(returned)
        result = AbsenceResult()
        with self._sessions.begin() as s:
            candidates = s.scalars(select(Annotation).where(
                Annotation.tool == tool, Annotation.project == project,
                or_(Annotation.status != "deleted", Annotation.missed_pulls > 0)).order_by(Annotation.id))
            events: list[dict[str, Any]] = []
            for a in candidates:
                if a.remote_id in seen:
                    a.missed_pulls = 0
                elif a.status == "deleted":
                    continue
                elif a.missed_pulls >= 1:
                    events.append(_event("answer_deleted", a.item_id, a.annotator, a.remote_updated_at, {
                        "tool": tool, "project": project, "remote_id": a.remote_id, "value": a.value,
                        "status": "deleted", "old_value": a.value, "old_status": a.status,
                        "inferred": f"absent from {a.missed_pulls + 1} whole pulls"}))
                    a.status, a.missed_pulls = "deleted", a.missed_pulls + 1
                    result.deleted += 1
                else:
                    a.missed_pulls = 1
                    result.missing += 1
            append_events(s, events)
        return result

    def list(self, item_ids: Iterable[int] | None = None, *, tool: str | None = None,
             project: str | None = None, status: str | None = None) -> list[Annotation]:
        """Stored annotations, filtered by any of item ids, tool, project and status, oldest first."""
        stmt = select(Annotation).order_by(Annotation.id)
        for column, value in ((Annotation.tool, tool), (Annotation.project, project), (Annotation.status, status)):
            if value is not None:
                stmt = stmt.where(column == value)
        return sorted(self._rows_for(stmt, Annotation.item_id, item_ids), key=lambda a: a.id)


def _prepare(r: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """The row's column values, and whether it revives a deletion."""
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
        "extra": None if r.get("extra") is None else dict(r["extra"]),
    }, bool(r.get("revive", False))


_REPLACED = ("annotator", "value", "status", "remote_updated_at", "lead_time", "extra")


def _event(kind: str, item_id: int | None, actor: str, source_at: datetime | None,
           detail: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "item_id": item_id, "actor": actor, "source_at": source_at, "detail": detail}


def _answer_event(before: _Before | None, r: dict[str, Any]) -> dict[str, Any] | None:
    """The event of row ``r`` stored over ``before`` (``None``: a new answer); ``None`` when the
    replacement changed neither the value, the status nor the annotator."""
    detail = {"tool": r["tool"], "project": r["project"], "remote_id": r["remote_id"], "value": r["value"],
              "status": r["status"]}
    if r["extra"] is not None:
        detail["extra"] = r["extra"]
    if before is None:
        if r["status"] == "deleted":  # a deletion seen before the answer itself
            return _event("answer_deleted", r["item_id"], r["annotator"], r["remote_updated_at"],
                          detail | {"old_value": None, "old_status": None})
        return _event("answer_added", r["item_id"], r["annotator"], r["remote_updated_at"], detail)
    was_deleted, is_deleted = before.status == "deleted", r["status"] == "deleted"
    if was_deleted and is_deleted:
        return None
    if was_deleted:
        kind = "answer_revived"
    elif is_deleted:
        kind = "answer_deleted"
    elif (before.value, before.status, before.annotator, before.extra) == (r["value"], r["status"], r["annotator"],
                                                                          r["extra"]):
        return None
    else:
        kind = "answer_edited"
    detail |= {"old_value": before.value, "old_status": before.status}
    if before.extra is not None:
        detail["old_extra"] = before.extra
    if before.annotator != r["annotator"]:
        detail["old_annotator"] = before.annotator
    return _event(kind, r["item_id"], r["annotator"], r["remote_updated_at"], detail)


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

    def save(self, rows: Iterable[Mapping[str, Any]], *, sent_back: Iterable[tuple[int, int, str]] = (),
             tool: str | None = None, project: str | None = None) -> int:
        """Write each item's consolidated label, replacing the previous one; returns the count.

        Each row: ``item_id, label`` (None when unsettled), ``status`` (settled|unsettled),
        ``method``, ``n_answers``, ``reason`` and optionally ``confidence``, ``agreement`` and
        ``actor`` (who settled it, for the history; default ``scheduler``). A settled label moves
        its item to ``consolidated``; an unsettled one moves it back to ``annotated`` (it waits for
        more answers).

        A row that changes an item's label, status or method is on record (``consensus_changed``,
        same transaction). ``sent_back``: the ``(item_id, answers wanted, reason)`` the ``tool``
        accepted for ``project`` just before, each recorded as ``sent_back`` with the remote id of
        the item's confirmed push there (an item without one was not sent).
        """
        rows = list(rows)
        sent_back = list(sent_back)
        for r in rows:
            if r["status"] not in LABEL_STATUSES:
                raise ValueError(f"unknown label status {r['status']!r}; expected one of {', '.join(LABEL_STATUSES)}")
        if sent_back:
            if tool is None or project is None:
                raise ValueError("sent_back needs the tool and the project it was sent to")
            check_tool(tool)
        with self._sessions.begin() as s:
            items = load_items(s, (r["item_id"] for r in rows))
            old: dict[int, Label] = {}
            for chunk in chunks(sorted(items)):
                old.update((lb.item_id, lb) for lb in s.scalars(select(Label).where(Label.item_id.in_(chunk))))
            events: list[dict[str, Any]] = []
            for r in rows:
                item_id = int(r["item_id"])
                values = {"label": None if r.get("label") is None else str(r["label"]), "status": r["status"],
                          "method": str(r["method"]), "n_answers": int(r["n_answers"]), "reason": str(r["reason"]),
                          "confidence": _opt_float(r.get("confidence")), "agreement": _opt_float(r.get("agreement"))}
                label = old.get(item_id)
                was = None if label is None else (label.label, label.status, label.method)
                if was != (values["label"], values["status"], values["method"]):
                    events.append(_event("consensus_changed", item_id, str(r.get("actor") or "scheduler"), None, {
                        "old_label": None if was is None else was[0], "old_status": None if was is None else was[1],
                        "old_method": None if was is None else was[2], **values}))
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
            if sent_back:
                events.extend(_sent_back_events(s, sent_back, str(tool), str(project)))
            append_events(s, events)
            return len(rows)

    def list(self, *, status: str | None = "settled", item_ids: Iterable[int] | None = None) -> list[Label]:
        """Consolidated labels (settled ones by default; ``status=None`` for all), by item id."""
        stmt = select(Label).order_by(Label.item_id)
        if status is not None:
            stmt = stmt.where(Label.status == status)
        return sorted(self._rows_for(stmt, Label.item_id, item_ids), key=lambda lb: lb.item_id)


def _sent_back_events(s: Session, sent_back: list[tuple[int, int, str]], tool: str,
                      project: str) -> list[dict[str, Any]]:
    remote: dict[int, str] = {}
    for chunk in chunks(sorted({int(i) for i, _, _ in sent_back})):
        remote.update(s.execute(select(Push.item_id, Push.remote_id).where(
            Push.tool == tool, Push.project == project, Push.status == "confirmed", Push.item_id.in_(chunk),
            Push.remote_id.is_not(None))).tuples().all())
    return [_event("sent_back", int(i), "scheduler", None, {"tool": tool, "project": project,
                                                            "remote_id": remote[int(i)], "answers_wanted": int(n),
                                                            "reason": str(why)})
            for i, n, why in sent_back if int(i) in remote]


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
