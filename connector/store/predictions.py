"""Predictions and routing decisions: what the model said about each item and where it was sent."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from connector.store.history import append as append_events
from connector.store.models import Item, Prediction, RoutingDecision
from connector.store.repository import BEFORE_PUSHED, Repository, advance, chunks, load_items


class PredictionRepository(Repository):
    """``store.predictions``: one prediction per (item, model version)."""

    def record(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Store predictions; returns how many were new.

        Each row: ``item_id, model_version, label, confidence`` (calibrated) and ``probabilities``
        (label -> probability). A second prediction for the same (item, model version) is ignored.
        A new one moves an item not yet pushed to ``predicted`` (a routed item is routed again)
        and sets its ``model_version``.
        """
        rows = list(rows)
        with self._sessions.begin() as s:
            items = load_items(s, (r["item_id"] for r in rows))
            seen: set[tuple[int, str]] = set()
            for chunk in chunks(sorted(items)):
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
                if item.state in BEFORE_PUSHED:
                    item.state = "predicted"
                    item.model_version = key[1]
                added += 1
            return added

    def list(self, item_ids: Iterable[int]) -> list[Prediction]:
        """Every prediction for these items, by item then oldest first."""
        wanted = sorted({int(i) for i in item_ids})
        out: list[Prediction] = []
        with self._sessions() as s:
            for chunk in chunks(wanted):
                out.extend(s.scalars(select(Prediction).where(Prediction.item_id.in_(chunk))))
        return sorted(out, key=lambda p: (p.item_id, p.id))


_SETTLING = {"auto_accept": "auto_accepted", "auto_reject": "auto_rejected"}  # routing actions that give a label


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _fill_from_predictions(s: Session, events: list[dict[str, Any]]) -> None:
    """The label and confidence an event's row lacked, from its model version's prediction."""
    lacking = [e for e in events if e["detail"]["label"] is None or e["detail"]["confidence"] is None]
    found: dict[tuple[int, str | None], Prediction] = {}
    for chunk in chunks(sorted({e["item_id"] for e in lacking})):
        found.update(((p.item_id, p.model_version), p)
                     for p in s.scalars(select(Prediction).where(Prediction.item_id.in_(chunk))))
    for e in lacking:
        pred = found.get((e["item_id"], e["detail"]["model_version"]))
        if pred is not None:
            if e["detail"]["label"] is None:
                e["detail"]["label"] = pred.label
            if e["detail"]["confidence"] is None:
                e["detail"]["confidence"] = pred.confidence


class DecisionRepository(Repository):
    """``store.decisions``: routing decisions, appended; an item's latest one is the one that counts."""

    def record(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Append routing decisions and move items not yet pushed to ``routed``; returns the count.

        Each row: ``item_id, action, reason, priority`` and optionally ``model_version`` and ``score``.
        An ``auto_accept`` (``auto_reject``) is on record as ``auto_accepted`` (``auto_rejected``),
        same transaction, with the row's optional ``label``, ``confidence`` (else the model
        version's prediction's) and ``threshold`` (the one in force, when the caller knows it).
        """
        rows = list(rows)
        with self._sessions.begin() as s:
            items = load_items(s, (r["item_id"] for r in rows))
            events: list[dict[str, Any]] = []
            for r in rows:
                item = items[int(r["item_id"])]
                score = r.get("score")
                model_version = r.get("model_version", item.model_version)
                s.add(RoutingDecision(item_id=item.id, model_version=model_version,
                                      action=str(r["action"]), reason=str(r["reason"]),
                                      priority=float(r["priority"]), score=None if score is None else float(score)))
                advance(item, "routed", from_states=BEFORE_PUSHED)
                if r["action"] in _SETTLING:
                    threshold = r.get("threshold")
                    events.append({"kind": _SETTLING[r["action"]], "item_id": item.id, "actor": "router", "detail": {
                        "label": r.get("label"), "confidence": _opt_float(r.get("confidence")),
                        "model_version": model_version, "threshold": _opt_float(threshold), "reason": str(r["reason"])}})
            _fill_from_predictions(s, events)
            append_events(s, events)
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

    def latest(self, item_ids: Iterable[int] | None = None) -> dict[int, RoutingDecision]:
        """Each item's latest routing decision (all items with one, or those in ``item_ids``)."""
        latest = (select(func.max(RoutingDecision.id).label("id")).group_by(RoutingDecision.item_id)).subquery()
        stmt = select(RoutingDecision).join(latest, latest.c.id == RoutingDecision.id)
        with self._sessions() as s:
            if item_ids is None:
                return {d.item_id: d for d in s.scalars(stmt)}
            out: dict[int, RoutingDecision] = {}
            for chunk in chunks(sorted({int(i) for i in item_ids})):
                out.update((d.item_id, d) for d in s.scalars(stmt.where(RoutingDecision.item_id.in_(chunk))))
            return out

    def counts(self) -> dict[str, int]:
        """How many current items' latest routing decision is each action."""
        latest = (select(func.max(RoutingDecision.id).label("id")).group_by(RoutingDecision.item_id)).subquery()
        stmt = (select(RoutingDecision.action, func.count()).join(latest, latest.c.id == RoutingDecision.id)
                .group_by(RoutingDecision.action))
        with self._sessions() as s:
            return dict(s.execute(stmt).tuples().all())

    def requeue_deferred(self, reason: str | None = None) -> int:
        """Put deferred items (those deferred for ``reason``, if given) back to ``predicted``, to be routed
        again; returns the count."""
        deferred = [it.id for it, d in self.routed(action="defer") if reason is None or d.reason == reason]
        with self._sessions.begin() as s:
            for chunk in chunks(deferred):
                s.execute(update(Item).where(Item.id.in_(chunk), Item.state == "routed").values(state="predicted"))
        return len(deferred)
