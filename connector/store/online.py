"""On-line decisions and their callback outbox (``store.online``).

A decision is created once per idempotency key: the insert of the decision, of the item a person
will review (with its suggestion and its routing, so the sync pushes it like any routed item) and
of its history event is one transaction; a second request with the same key finds the first
decision. An outcome is recorded once: the update is conditional on the decision still waiting,
and the callback's outbox row is written in the same transaction, so a crash can lose neither
and a second reviewer (or the deadline) cannot decide again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from connector.store.history import append
from connector.store.models import (
    CallbackDelivery,
    Item,
    LabelEvent,
    OnlineDecision,
    Prediction,
    RoutingDecision,
    utcnow,
)
from connector.store.repository import BEFORE_PUSHED, Repository, content_hash

REVIEWED = ("approved", "rejected", "corrected")
AUTOMATIC = ("auto_approved", "auto_rejected")
#: reasons under which a decision was reviewed whatever its score: an unbiased sample of the
#: decisions a threshold would take (the evidence that certifies one)
UNBIASED_REASONS = ("audit", "uncertified")
#: the wait quantiles of :meth:`OnlineDecisionRepository.stats` are over the decisions a person
#: decided within this window (the review rate's window), at most the ``WAIT_SAMPLE`` newest of them
WAIT_WINDOW = timedelta(hours=1)
WAIT_SAMPLE = 5000


def decision_key(idempotency_key: str) -> str:
    """The external id of a decision's review item."""
    return f"decision:{idempotency_key}"


class OnlineDecisionRepository(Repository):
    """``store.online``: decisions, their review items and outcomes, and the callback outbox."""

    def create(self, row: Mapping[str, Any], *, item: Mapping[str, Any] | None = None,
               suggestion: Mapping[str, Any] | None = None) -> tuple[OnlineDecision, bool]:
        """Insert a decision (``row``: the :class:`OnlineDecision` columns but ids and times) and,
        with ``item`` (``text``, ``data``), the item a person reviews, routed to review at the
        decision's priority with ``suggestion`` (``label``, ``confidence``, ``probabilities``) as
        its prediction; ``(decision, True)``. A decision with the same idempotency key already
        there: ``(that decision, False)``, nothing written."""
        existing = self.by_key(row["idempotency_key"])
        if existing is not None:
            return existing, False
        try:
            with self._sessions.begin() as s:
                now = utcnow()
                decision = OnlineDecision(**{"priority": 0.0, "audit": False, "escalated": False, **row},
                                          created_at=now)
                if item is not None:
                    it = Item(external_id=decision_key(row["idempotency_key"]), version=1, is_current=True,
                              data=dict(item.get("data") or {}), text=item["text"],
                              content_hash=content_hash(item["text"]), meta={}, is_gold=False, state="routed",
                              model_version=None, created_at=now, updated_at=now)
                    s.add(it)
                    s.flush()
                    decision.item_id = it.id
                    source = row["source"][:64]
                    if suggestion is not None:
                        s.add(Prediction(item_id=it.id, model_version=source, label=str(suggestion["label"]),
                                         confidence=float(suggestion.get("confidence") or 0.0),
                                         probabilities=dict(suggestion.get("probabilities") or {}), created_at=now))
                    # decisions reviewed whatever their score are the evidence a threshold is certified on:
                    # shown like the loop's audits (blind, for a label), whatever the decision's own reason
                    reason = "audit" if row["reason"] in UNBIASED_REASONS else row["reason"]
                    s.add(RoutingDecision(item_id=it.id, model_version=source, action="review", reason=reason,
                                          priority=float(row.get("priority") or 0.0), score=row.get("score"),
                                          created_at=now))
                s.add(decision)
                s.flush()
                if decision.item_id is not None:
                    append(s, [{"item_id": decision.item_id, "kind": "decision_taken", "actor": "decisions",
                                "detail": {"decision_id": decision.id, "status": decision.status,
                                           "rule": decision.rule, "reason": decision.reason,
                                           "score": decision.score, "source": decision.source}}])
                s.expunge(decision)
                return decision, True
        except IntegrityError:  # the same key inserted by a concurrent request: theirs counts
            existing = self.by_key(row["idempotency_key"])
            if existing is None:
                raise
            return existing, False

    def get(self, decision_id: int) -> OnlineDecision | None:
        with self._sessions() as s:
            return s.get(OnlineDecision, int(decision_id))

    def by_key(self, idempotency_key: str) -> OnlineDecision | None:
        with self._sessions() as s:
            return s.scalars(select(OnlineDecision).where(OnlineDecision.idempotency_key == idempotency_key)).first()

    def by_items(self, item_ids: Iterable[int]) -> dict[int, OnlineDecision]:
        """The decision each of ``item_ids`` was made for (items without one are left out)."""
        rows = self._rows_for(select(OnlineDecision), OnlineDecision.item_id, item_ids)
        return {d.item_id: d for d in rows}

    def awaiting_review(self) -> list[OnlineDecision]:
        """Decisions whose item waits for a person: pending ones, and audits not yet answered."""
        stmt = select(OnlineDecision).where(OnlineDecision.item_id.is_not(None), or_(
            OnlineDecision.status == "pending_review",
            and_(OnlineDecision.audit.is_(True), OnlineDecision.outcome.is_(None)))).order_by(OnlineDecision.id)
        with self._sessions() as s:
            return list(s.scalars(stmt))

    def settle(self, decision_id: int, *, outcome: str, reviewer: str, corrected: Any = None,
               comment: str | None = None, review: Mapping[str, Any] | None = None,
               callback: Mapping[str, Any] | None = None, fallback: bool = False) -> bool:
        """Record a person's (or, with ``fallback``, the deadline's) outcome, once: whether this call
        recorded it. A pending decision becomes ``approved`` / ``rejected`` / ``corrected`` and, when
        it has a callback URL, gets its outbox row (``callback``: the payload); an audit of an
        automatic decision keeps its status and only records the outcome (no callback: the caller
        already had its answer). A fallback also takes the item out of the review queue (state
        ``consolidated``), whether or not it was pushed yet."""
        status = {"approve": "approved", "reject": "rejected", "correct": "corrected"}[outcome]
        now = utcnow()
        values = {"outcome": outcome, "reviewer": reviewer, "corrected": corrected, "comment": comment,
                  "review": dict(review) if review else None}
        with self._sessions.begin() as s:
            d = s.get(OnlineDecision, int(decision_id))
            if d is None:
                raise ValueError(f"no decision {decision_id}")
            was_pending = d.status == "pending_review"  # read before the update refreshes ``d``
            if was_pending:
                done = s.execute(update(OnlineDecision).where(OnlineDecision.id == d.id,
                                                              OnlineDecision.status == "pending_review")
                                 .values(status=status, decided_at=now, **values)).rowcount
            elif d.audit and d.outcome is None and not fallback:
                done = s.execute(update(OnlineDecision).where(OnlineDecision.id == d.id,
                                                              OnlineDecision.outcome.is_(None))
                                 .values(**values)).rowcount
            else:
                return False
            if not done:
                return False
            if d.item_id is not None and was_pending and not fallback:  # a person decided before its push
                item = s.get(Item, d.item_id)
                if item is not None and item.state in BEFORE_PUSHED:
                    s.add(RoutingDecision(item_id=d.item_id, model_version=d.source[:64], action="withdrawn",
                                          reason="decided", priority=0.0, score=d.score, created_at=now))
            if fallback and d.item_id is not None:  # decided without a person: out of the review queue for
                # good, neither pushed later (still ``routed``) nor pushed again once its task is removed
                s.execute(update(Item).where(Item.id == d.item_id, Item.state.in_(("routed", "pushed")))
                          .values(state="consolidated", updated_at=now))
            if was_pending and d.callback_url and callback is not None:
                s.add(CallbackDelivery(decision_id=d.id, webhook_id=f"msg_{uuid.uuid4().hex}", url=d.callback_url,
                                       payload=dict(callback), status="pending", attempts=0, next_at=now,
                                       created_at=now))
            if d.item_id is not None:
                append(s, [{"item_id": d.item_id, "kind": "decision_fallback" if fallback else "decision_reviewed",
                            "actor": reviewer, "detail": {"decision_id": d.id, "outcome": outcome,
                                                          "audit": d.audit and not was_pending,
                                                          "corrected": corrected, "comment": comment}}])
            return True

    def escalate(self, decision_id: int, *, deadline_at: datetime, boost: float) -> bool:
        """Move a pending decision up the queue with a new deadline, once; whether this call did."""
        with self._sessions.begin() as s:
            done = s.execute(update(OnlineDecision).where(
                OnlineDecision.id == int(decision_id), OnlineDecision.status == "pending_review",
                OnlineDecision.escalated.is_(False)).values(
                escalated=True, deadline_at=deadline_at, priority=OnlineDecision.priority + boost)).rowcount
            if done:
                d = s.get(OnlineDecision, int(decision_id))
                if d is not None and d.item_id is not None:
                    append(s, [{"item_id": d.item_id, "kind": "decision_fallback", "actor": "timeout",
                                "detail": {"decision_id": d.id, "outcome": "escalate",
                                           "deadline_at": deadline_at.isoformat()}}])
            return bool(done)

    def overdue(self, now: datetime | None = None, *, limit: int = 500) -> list[OnlineDecision]:
        """Pending decisions past their deadline, oldest deadline first."""
        stmt = (select(OnlineDecision).where(OnlineDecision.status == "pending_review",
                                             OnlineDecision.deadline_at <= (now or utcnow()))
                .order_by(OnlineDecision.deadline_at).limit(limit))
        with self._sessions() as s:
            return list(s.scalars(stmt))

    def queue_position(self, decision: OnlineDecision) -> int:
        """1 + the pending decisions a reviewer gets before this one (higher priority, or equal and older)."""
        stmt = select(func.count()).select_from(OnlineDecision).where(
            OnlineDecision.status == "pending_review",
            or_(OnlineDecision.priority > decision.priority,
                and_(OnlineDecision.priority == decision.priority, OnlineDecision.id < decision.id)))
        with self._sessions() as s:
            return int(s.scalar(stmt) or 0) + 1

    def review_rate(self, window: timedelta = timedelta(hours=1)) -> float | None:
        """Decisions people reviewed per second over ``window`` (None before any was)."""
        since = utcnow() - window
        stmt = select(func.count(), func.min(OnlineDecision.decided_at)).where(
            OnlineDecision.status.in_(REVIEWED), OnlineDecision.reviewer != "timeout",
            OnlineDecision.decided_at >= since)
        with self._sessions() as s:
            n, first = s.execute(stmt).one()
        if not n:
            return None
        span = max((utcnow() - first).total_seconds(), 60.0)
        return n / span

    def evidence(self, source: str) -> tuple[np.ndarray, np.ndarray]:
        """``(raw scores, approved)`` of ``source``'s decisions a person reviewed whatever their
        score (audits, and those sent while nothing was certified)."""
        stmt = select(OnlineDecision.raw_score, OnlineDecision.outcome).where(
            OnlineDecision.source == source, OnlineDecision.outcome.is_not(None),
            OnlineDecision.reviewer != "timeout", OnlineDecision.raw_score.is_not(None),
            or_(OnlineDecision.audit.is_(True), OnlineDecision.reason.in_(UNBIASED_REASONS)))
        with self._sessions() as s:
            rows = s.execute(stmt).all()
        return (np.array([r[0] for r in rows], dtype=float), np.array([r[1] == "approve" for r in rows], dtype=bool))

    def reviewed(self) -> list[tuple[OnlineDecision, datetime | None]]:
        """The decisions a person decided (deadline fallbacks left out), by id, each with when the
        person did: ``decided_at`` for a held decision; for an audit of an automatic decision (whose
        ``decided_at`` is the automatic decision's), its ``decision_reviewed`` event's time."""
        stmt = select(OnlineDecision).where(OnlineDecision.outcome.is_not(None),
                                            OnlineDecision.reviewer != "timeout").order_by(OnlineDecision.id)
        with self._sessions() as s:
            rows = list(s.scalars(stmt))
        audits = {d.id: d.item_id for d in rows if d.status not in REVIEWED and d.item_id is not None}
        reviewed_at: dict[int, datetime] = {}
        if audits:
            events = select(LabelEvent).where(LabelEvent.kind == "decision_reviewed").order_by(LabelEvent.id)
            for e in self._rows_for(events, LabelEvent.item_id, audits.values()):
                reviewed_at.setdefault(int((e.detail or {}).get("decision_id", 0)), e.at)
        return [(d, reviewed_at.get(d.id) if d.id in audits else d.decided_at) for d in rows]

    def sources(self) -> list[str]:
        with self._sessions() as s:
            return sorted(s.scalars(select(OnlineDecision.source).distinct()))

    # -- the callback outbox -----------------------------------------------------------------

    def due_callbacks(self, now: datetime | None = None, *, limit: int = 100) -> list[CallbackDelivery]:
        stmt = (select(CallbackDelivery).where(CallbackDelivery.status == "pending",
                                               CallbackDelivery.next_at <= (now or utcnow()))
                .order_by(CallbackDelivery.next_at).limit(limit))
        with self._sessions() as s:
            return list(s.scalars(stmt))

    def callback(self, decision_id: int) -> CallbackDelivery | None:
        with self._sessions() as s:
            return s.scalars(select(CallbackDelivery).where(CallbackDelivery.decision_id == int(decision_id))).first()

    def callback_attempted(self, delivery_id: int, *, delivered: bool, error: str | None = None,
                           next_at: datetime | None = None, give_up: bool = False) -> None:
        """Record one delivery attempt: delivered, or failed (tried again at ``next_at``, or given up)."""
        now = utcnow()
        values: dict[str, Any] = {"attempts": CallbackDelivery.attempts + 1, "last_error": error}
        if delivered:
            values |= {"status": "delivered", "delivered_at": now, "last_error": None}
        elif give_up:
            values |= {"status": "failed"}
        else:
            values |= {"next_at": next_at or now}
        with self._sessions.begin() as s:
            s.execute(update(CallbackDelivery).where(CallbackDelivery.id == int(delivery_id),
                                                     CallbackDelivery.status == "pending").values(**values))

    # -- figures ------------------------------------------------------------------------------

    def stats(self, now: datetime | None = None, *, wait_window: timedelta = WAIT_WINDOW) -> dict[str, Any]:
        """What ``/metrics`` reports, in a handful of aggregate queries: counts by ``(status, rule)``
        (and by each alone), the queue (size, oldest age in seconds), the p50/p90/p99 wait (created
        to decided by a person, over the decisions decided in ``wait_window``, the
        :data:`WAIT_SAMPLE` newest of them; ``None`` without any), deadline fallbacks by outcome
        (``approve`` / ``reject`` with reviewer ``timeout``, ``escalate``), callbacks by status and
        their failed delivery attempts (every attempt of a pending or given-up callback, all but the
        last of a delivered one: a count that only grows)."""
        now = now or utcnow()
        attempts_failed = case((CallbackDelivery.status == "delivered", CallbackDelivery.attempts - 1),
                               else_=CallbackDelivery.attempts)
        with self._sessions() as s:
            # grouped by rule first: by status first, SQLite walks the status index and reads every row
            # through it (three times slower than a scan at 100,000 decisions)
            by_status_rule = {(st, rule): int(n) for rule, st, n in s.execute(
                select(OnlineDecision.rule, OnlineDecision.status, func.count())
                .group_by(OnlineDecision.rule, OnlineDecision.status))}
            oldest = s.scalar(select(func.min(OnlineDecision.created_at))
                              .where(OnlineDecision.status == "pending_review"))
            # a held decision a person decided: an outcome on a status that is not automatic (``status IN
            # REVIEWED`` would send SQLite through the status index, row by row: eight times slower)
            waits = [(b - a).total_seconds() for a, b in s.execute(
                select(OnlineDecision.created_at, OnlineDecision.decided_at).where(
                    OnlineDecision.outcome.is_not(None), OnlineDecision.status.not_in(AUTOMATIC),
                    OnlineDecision.reviewer != "timeout", OnlineDecision.decided_at >= now - wait_window)
                .order_by(OnlineDecision.id.desc()).limit(WAIT_SAMPLE))]
            fallbacks = {str(o): int(n) for o, n in s.execute(
                select(OnlineDecision.outcome, func.count()).where(OnlineDecision.reviewer == "timeout")
                .group_by(OnlineDecision.outcome))}
            escalated = int(s.scalar(select(func.count()).select_from(OnlineDecision)
                                     .where(OnlineDecision.escalated.is_(True))) or 0)
            callbacks = {str(st): int(n) for st, n in s.execute(
                select(CallbackDelivery.status, func.count()).group_by(CallbackDelivery.status))}
            failed_attempts = int(s.scalar(select(func.coalesce(func.sum(attempts_failed), 0))) or 0)
        by_status: dict[str, int] = {}
        by_rule: dict[str, int] = {}
        for (st, rule), n in by_status_rule.items():
            by_status[st] = by_status.get(st, 0) + n
            by_rule[rule] = by_rule.get(rule, 0) + n
        q = np.quantile(waits, [0.5, 0.9, 0.99]).tolist() if waits else [None, None, None]
        return {"by_status_rule": by_status_rule, "by_status": by_status, "by_rule": by_rule,
                "queue": by_status.get("pending_review", 0),
                "oldest_pending_s": max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0,
                "wait_s": dict(zip(("p50", "p90", "p99"), q)), "waits_n": len(waits),
                "fallbacks": sum(fallbacks.values()), "fallbacks_by_outcome": fallbacks | {"escalate": escalated},
                "escalated": escalated, "callbacks": callbacks, "callback_failed_attempts": failed_attempts}
