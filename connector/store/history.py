"""Every change on record: the append-only history of each item's label (``store.history``).

One ``label_events`` row per change, never updated or deleted (the database's triggers refuse
both; retention never touches the table). The repositories that make a change write its event
in the same transaction (:func:`append`), so a change is never stored without its event, nor an
event without its change. Each event: ``item_id`` (``None`` for a task-wide event), ``at`` (our
UTC time), ``source_at`` (the tool's timestamp, when there is one), ``kind``, ``actor`` and a
JSON ``detail``. The kinds, who writes them, and their detail:

- ``answer_added`` (``annotations.upsert``, a new answer): actor the annotator, ``source_at`` the
  tool's ``updated_at``; detail ``tool, project, remote_id, value, status``.
- ``answer_edited`` / ``answer_deleted`` / ``answer_revived`` (``annotations.upsert``, a newer
  answer that changes the value, status or annotator; a deletion; a deleted answer live again):
  the same, plus ``old_value, old_status`` (and ``old_annotator`` when it changed). A deletion
  inferred from absence (``annotations.settle_absent``) has ``inferred`` saying so, and the
  answer's own ``source_at``; a deletion seen before the answer itself has ``old_value`` None.
- ``consensus_changed`` (``labels.save``, an item's label, status or method changed): actor
  ``scheduler`` (or the row's ``actor``); detail ``old_label, label, old_status, status,
  old_method, method, n_answers, reason, agreement, confidence``.
- ``auto_accepted`` / ``auto_rejected`` (``decisions.record``): actor ``router``; detail ``label,
  confidence, model_version, threshold`` (the one in force, when the caller passed it), ``reason``.
- ``threshold_changed`` (``connector.snapshots.write_snapshot`` of a threshold review whose
  threshold differs from the previous review's; the first review counts): ``item_id`` None,
  actor ``scheduler``; detail ``old, new`` and the review (``adapt, target_error, delta, evidence,
  n_evidence, error_ucb, review_rate, meets_target, within_band, note``).
- ``sent_back`` (``labels.save(..., sent_back=...)``, after the tool accepted the request): actor
  ``scheduler``; detail ``tool, project, remote_id, answers_wanted, reason``.
- ``adjudicated`` (written by adjudication): ``store.history.record([{"item_id": i, "kind":
  "adjudicated", "actor": <the adjudicator>, "detail": {"old_label": ..., "label": ..., "note":
  ...}}])``, in the same transaction as the label it sets where it can (:func:`append` with the
  session that writes it).
- ``redacted`` (the sync, building a pushed item from a task with ``[redaction]`` fields, when
  something was found; once per item version): actor ``sync``; detail ``fields`` (those with a
  finding), ``entities`` (counts by entity type or rule name) and ``findings`` (``[field, entity,
  start, end]``, offsets in the stored value), never the text found.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import insert, or_, select
from sqlalchemy.orm import Session

from connector.store.models import LabelEvent
from connector.store.repository import Repository, as_datetime, check_items_exist, chunks

EVENT_KINDS = ("answer_added", "answer_edited", "answer_deleted", "answer_revived", "consensus_changed",
               "auto_accepted", "auto_rejected", "threshold_changed", "sent_back", "adjudicated",
               "redacted", "decision_taken", "decision_reviewed", "decision_fallback", "correction_refused")


def append(s: Session, events: Iterable[Mapping[str, Any]]) -> int:
    """Add ``events`` (``kind, actor`` and optionally ``item_id, source_at, detail``) in the caller's
    transaction, in order; returns how many."""
    rows = [_row(e) for e in events]
    if rows:
        s.execute(insert(LabelEvent), rows)
    return len(rows)


class HistoryRepository(Repository):
    """``store.history``: the label events, appended and never changed."""

    def record(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Append events in one transaction (an unknown item id raises ``ValueError``, adding none)."""
        events = list(events)
        with self._sessions.begin() as s:
            check_items_exist(s, [int(e["item_id"]) for e in events if e.get("item_id") is not None])
            return append(s, events)

    def for_item(self, item_ids: int | Iterable[int], *, task_wide_since: datetime | str | None = None
                 ) -> list[LabelEvent]:
        """The events of one item (or of several, e.g. an item's versions), oldest first; with
        ``task_wide_since``, the task-wide events (threshold changes) since then too."""
        ids = sorted({int(item_ids)} if isinstance(item_ids, int) else {int(i) for i in item_ids})
        out: list[LabelEvent] = []
        with self._sessions() as s:
            for chunk in chunks(ids):
                out.extend(s.scalars(select(LabelEvent).where(LabelEvent.item_id.in_(chunk))))
            if task_wide_since is not None:
                out.extend(s.scalars(select(LabelEvent).where(LabelEvent.item_id.is_(None),
                                                              LabelEvent.at >= as_datetime(task_wide_since))))
        return sorted(out, key=lambda e: e.id)

    def list(self, *, kind: str | Iterable[str] | None = None, since: datetime | str | None = None,
             item_id: int | None = None, limit: int | None = None) -> list[LabelEvent]:
        """Events oldest first, filtered by kind (one or several), time (``at >= since``) and item."""
        stmt = select(LabelEvent).order_by(LabelEvent.id).limit(limit)
        if kind is not None:
            kinds = [kind] if isinstance(kind, str) else list(kind)
            for k in kinds:
                _check_kind(k)
            stmt = stmt.where(or_(*(LabelEvent.kind == k for k in kinds)))
        if since is not None:
            stmt = stmt.where(LabelEvent.at >= as_datetime(since))
        if item_id is not None:
            stmt = stmt.where(LabelEvent.item_id == int(item_id))
        with self._sessions() as s:
            return list(s.scalars(stmt))


def describe(event: LabelEvent) -> str:
    """One line saying what ``event`` changed (for ``hitl history``)."""
    d, kind = event.detail or {}, event.kind
    if kind.startswith("answer_"):
        where = f"{d.get('tool')} {d.get('project')} #{d.get('remote_id')}"
        if kind == "answer_added":
            what = f"{_value(d.get('value'))} ({d.get('status')})"
        elif kind == "answer_edited":
            what = f"{_value(d.get('old_value'))} ({d.get('old_status')}) → {_value(d.get('value'))} ({d.get('status')})"
        elif kind == "answer_deleted":
            what = f"{_value(d.get('old_value'))} deleted" + (f" ({d['inferred']})" if d.get("inferred") else "")
        else:
            what = f"{_value(d.get('value'))} ({d.get('status')}) revived"
        return f"{what} · {where}"
    if kind == "consensus_changed":
        old = f"{d.get('old_label')} ({d.get('old_status')})" if d.get("old_status") else "none"
        agreement = f", agreement {d['agreement']:.2f}" if isinstance(d.get("agreement"), int | float) else ""
        return (f"{old} → {d.get('label')} ({d.get('status')}, {d.get('method')}, {d.get('n_answers')} answers"
                f"{agreement}): {d.get('reason')}")
    if kind in ("auto_accepted", "auto_rejected"):
        threshold = f" ≥ {d['threshold']:.4f}" if isinstance(d.get("threshold"), int | float) else ""
        confidence = f" at {d['confidence']:.4f}" if isinstance(d.get("confidence"), int | float) else ""
        return f"{d.get('label')}{confidence}{threshold} (model {d.get('model_version')})"
    if kind == "threshold_changed":
        old = "the task file's" if d.get("old") is None else _number(d.get("old"))
        return f"auto-accept threshold {old} → {_number(d.get('new'))}" + (
            "" if d.get("adapt", True) else " (not applied: adapt is off)")
    if kind == "sent_back":
        return f"for answer {d.get('answers_wanted')} ({d.get('reason')}) · {d.get('tool')} {d.get('project')} " \
               f"#{d.get('remote_id')}"
    if kind == "adjudicated":
        return f"{d.get('old_label')} → {d.get('label')}" + (f": {d['note']}" if d.get("note") else "")
    return json.dumps(d, sort_keys=True)


def _value(value: Any) -> str:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value) or "[]"
    return json.dumps(value)


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "none"


def _check_kind(kind: str) -> None:
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}; expected one of {', '.join(EVENT_KINDS)}")


def _row(e: Mapping[str, Any]) -> dict[str, Any]:
    _check_kind(e["kind"])
    actor = str(e["actor"]).strip()
    if not actor:
        raise ValueError("an event needs an actor")
    source_at = e.get("source_at")
    item_id = e.get("item_id")
    return {"item_id": None if item_id is None else int(item_id), "kind": e["kind"], "actor": actor[:255],
            "source_at": None if source_at is None else as_datetime(source_at),
            "detail": json.loads(json.dumps(dict(e.get("detail") or {}), default=_jsonable),
                                 parse_constant=lambda _: None)}  # NaN and infinities: None (not JSON)


def _jsonable(value: Any) -> Any:
    """``json.dumps`` fallback: numpy scalars and arrays, datetimes, anything else as text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, datetime):
        return as_datetime(value).isoformat()
    return str(value)
