"""Decisions on line: take one now, or hold it for a person and bring the person's outcome back.

:class:`DecisionService` owns the whole life of a decision in the sync service (which owns the
store):

1. ``decide``: rules first (``auto_reject``, then ``force_review`` on the input fields), then the
   score against a **certified** threshold: our model's threshold is the loop's own
   (``connector.auto_accept.in_force``); another model's is certified on the human outcomes of its
   past decisions that were reviewed whatever their score (audits, and every decision sent while
   nothing was certified), with the same bound (``connector.thresholds``), and its confidences are
   calibrated on those outcomes (isotonic). An extraction that fails the task's schema, or scores a
   field under ``min_field_confidence``, goes to review. A share of automatic decisions is
   reviewed anyway (``audit_share``, blind), so the bound keeps being measured. A ``label`` task
   whose primary control takes a label set decides a set: our model's (its per-label probabilities
   and task score, the least confident label decision), accepted only when the rule in force
   clears it (``connector.auto_accept.clears``: per-label thresholds where the review chose
   them), or a caller's list of the task's labels.
2. A held decision becomes an item routed to review at its priority (uncertainty, the caller's
   risk fields, the rule), pushed by the sync like any other, blind where the task says so.
3. ``settle_reviews`` (a scheduler job) turns the settled answers into outcomes: the label kind's
   approve (the person chose the suggested label, or exactly the suggested set) or correct; the
   review kinds' chosen outcome, a correction that fails the schema refused (on record) and sent
   back for another answer.
4. ``apply_deadlines``: the fallback (``reject``, ``approve``, or ``escalate`` once) recorded like a
   person's outcome with reviewer ``timeout``; the task is taken out of the tool.
5. The outcome's callback goes through the outbox (``sync.callbacks``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from connector.auto_accept import clears, in_force
from connector.decisions import (
    AnswerOutput,
    DecisionRequest,
    DecisionView,
    FeedbackRequest,
    LabelOutput,
    ScoreCalibration,
    StructuredOutput,
    drawn,
    first_match,
    risk,
)
from connector.label_sets import decode_label_set, encode_label_set
from connector.review_kinds import item_fields, validate_output
from connector.store import StateStore
from connector.store.models import OnlineDecision, utcnow
from connector.task_spec import TaskSpec
from connector.thresholds import choose_accept_threshold
from sync.controls import NoControlModel, prediction_row, primary_probabilities
from sync.predictor import Predictor

log = logging.getLogger(__name__)

OUR_MODEL = "model"
#: how long a source's calibration and certified threshold are reused before they are read again
EVIDENCE_TTL_S = 30.0


class DecisionError(ValueError):
    """A request this task cannot decide (wrong output kind, unknown label, no text)."""


class KeyReused(ValueError):
    """An idempotency key sent again with another request than its first."""


def _same(existing: OnlineDecision, request: dict[str, Any]) -> OnlineDecision:
    if existing.request != request:
        raise KeyReused(f"idempotency key {existing.idempotency_key!r} was used for another request "
                        f"(decision {existing.id})")
    return existing


class DecisionService:
    """Decisions for one task file (its ``kind`` says what an output is)."""

    def __init__(self, store: StateStore, spec: TaskSpec, predictor: Predictor | None = None, *,
                 callbacks: bool = True) -> None:
        self.store, self.spec, self.predictor = store, spec, predictor
        self.callbacks = callbacks  # False: no secret to sign them with, a callback URL is refused
        self.policy = spec.decisions
        self._evidence: dict[str, tuple[float, ScoreCalibration, float | None]] = {}

    # -- taking a decision -------------------------------------------------------------------

    def decide(self, req: DecisionRequest) -> tuple[OnlineDecision, bool]:
        """The decision for ``req`` and whether this call made it (``False``: the idempotency key's
        first decision, returned as it is now)."""
        request = req.model_dump(mode="json")
        existing = self.store.online.by_key(req.idempotency_key)
        if existing is not None:
            return _same(existing, request), False
        self._check_callback(req.callback_url)
        judged = self._judge(req)
        made, created = self._record(req.idempotency_key, request, judged, req.input, deadline_s=req.deadline_s,
                                     callback_url=req.callback_url)
        return (made, True) if created else (_same(made, request), False)

    def feedback(self, req: FeedbackRequest) -> tuple[OnlineDecision, bool]:
        """A thumbs-down answer goes to review; a thumbs-up one is approved by the user's feedback,
        a share of them reviewed as audits."""
        if self.spec.kind != "answer":
            raise DecisionError(f"feedback is for 'answer' tasks; this task's kind is {self.spec.kind!r}")
        request = req.model_dump(mode="json") | {"kind": "feedback"}
        existing = self.store.online.by_key(req.idempotency_key)
        if existing is not None:
            return _same(existing, request), False
        self._check_callback(req.callback_url)
        output = AnswerOutput(question=req.question, answer=req.answer, context=req.context, model=req.model)
        judged = _Judged(source=f"caller:{req.model}", output=_reviewed(output), suggestion=None, raw=None,
                         score=None, status="pending_review", rule="feedback:thumbs_down", reason="thumbs_down")
        if req.thumbs == "up":
            judged.status, judged.rule, judged.reason = "auto_approved", "feedback:thumbs_up", "thumbs_up"
            judged.audit = drawn(req.idempotency_key, self.policy.feedback_audit_share, salt="feedback")
        inputs = {"question": req.question, "comment": req.comment}
        made, created = self._record(req.idempotency_key, request, judged, inputs, deadline_s=None,
                                     callback_url=req.callback_url)
        return (made, True) if created else (_same(made, request), False)

    def _check_callback(self, url: str | None) -> None:
        if url is not None and not self.callbacks:
            raise DecisionError("callback_url: this service has no HITL_CALLBACK_SECRET to sign callbacks with; "
                                "poll GET /v1/decisions/{id} instead")

    def _judge(self, req: DecisionRequest) -> _Judged:
        kind, out = self.spec.kind, req.output
        expected = {"label": (LabelOutput, type(None)), "extraction": (StructuredOutput,), "answer": (AnswerOutput,)}
        if not isinstance(out, expected[kind]):
            raise DecisionError(f"a {kind!r} task judges {' or '.join(t.__name__ for t in expected[kind])} outputs, "
                                f"got {type(out).__name__}")
        if kind == "label" and self.spec.spans_primary:
            raise DecisionError("an entity-span task takes no decisions on line yet: its spans are labelled in the tool")
        if kind == "label":
            return self._judge_label(req, out)  # type: ignore[arg-type]
        assert out is not None
        source = f"caller:{out.model}"
        output = _reviewed(out)
        if isinstance(out, StructuredOutput):
            errors = validate_output(self.spec, out.data)
            if errors:
                return _Judged(source, output, None, None, None, "pending_review", "schema", "schema_invalid",
                               {"errors": errors})
            assert self.spec.extraction is not None
            low = sorted(k for k, c in out.field_confidence.items() if c < self.spec.extraction.min_field_confidence)
            raw = min(out.field_confidence.values()) if out.field_confidence else None
            if low:
                return _Judged(source, output, None, raw, raw, "pending_review", "field_confidence",
                               "low_field_confidence", {"fields": low})
            return self._by_threshold(req, _Judged(source, output, None, raw, None, "", "", ""))
        assert isinstance(out, AnswerOutput)
        return self._by_threshold(req, _Judged(source, output, None, out.confidence, None, "", "", ""))

    def _judge_label(self, req: DecisionRequest, out: LabelOutput | None) -> _Judged:
        text = req.input.get(self.spec.text_field)
        if not isinstance(text, str) or not text.strip():
            raise DecisionError(f"input.{self.spec.text_field}: the text to decide on is missing or empty")
        if out is None:
            if self.predictor is None:
                raise DecisionError("no output to judge and no model to predict with")
            p = self.predictor.predict([text])[0]
            if self.spec.primary.multi_label:
                return self._by_threshold(req, self._our_set(p))
            suggestion = {"label": p["label"], "confidence": p["confidence"], "probabilities": p["probabilities"]}
            judged = _Judged(OUR_MODEL, {"label": p["label"], "model_version": p.get("model_version")}, suggestion,
                             float(p["confidence"]), float(p["confidence"]), "", "", "")
            return self._by_threshold(req, judged)
        source = f"caller:{out.model}"
        if self.spec.primary.multi_label:
            chosen = self._known_set(out.label)
            suggestion = {"label": encode_label_set(chosen), "confidence": out.confidence or 0.0, "probabilities": {}}
            judged = _Judged(source, out.model_dump() | {"label": chosen}, suggestion, out.confidence, None, "", "", "")
            judged.chosen = chosen
            return self._by_threshold(req, judged)
        if isinstance(out.label, list):
            raise DecisionError(f"output.label: this task takes one label, not a list ({out.label!r}); one of "
                                f"{self.spec.labels}")
        if out.label not in self.spec.labels:
            raise DecisionError(f"output.label {out.label!r} is not one of the task's labels {self.spec.labels}")
        suggestion = {"label": out.label, "confidence": out.confidence or 0.0, "probabilities": {}}
        return self._by_threshold(req, _Judged(source, out.model_dump(), suggestion, out.confidence, None, "", "", ""))

    def _our_set(self, p: Mapping[str, Any]) -> _Judged:
        """Our model's label set for one text (``/v1/predict``'s answer, read as the sync stores it)."""
        try:
            row = prediction_row(self.spec, p)
        except NoControlModel as exc:
            raise DecisionError(f"no model to predict the label set with: {exc}") from None
        chosen = decode_label_set(row["label"]) or []
        probabilities = primary_probabilities(row["probabilities"])
        score = float(row["confidence"])
        output = {"label": chosen, "probabilities": probabilities, "model_version": row["model_version"]}
        suggestion = {"label": row["label"], "confidence": score, "probabilities": row["probabilities"]}
        judged = _Judged(OUR_MODEL, output, suggestion, score, score, "", "", "")
        judged.chosen, judged.probabilities = chosen, probabilities
        return judged

    def _known_set(self, label: str | list[str]) -> list[str]:
        """A caller's label set, sorted; an unknown label is a :class:`DecisionError`."""
        given = [label] if isinstance(label, str) else list(label)
        unknown = sorted(set(given) - set(self.spec.labels))
        if unknown:
            raise DecisionError(f"output.label: {unknown} not among the task's labels {self.spec.labels} (a label set "
                                "is a list of them)")
        return sorted(set(given))

    def _by_threshold(self, req: DecisionRequest, j: _Judged) -> _Judged:
        """Rules, then the certified threshold; ``j`` has its source, output and raw score."""
        fields = req.input
        if (rule := first_match(self.policy.auto_reject, fields)) is not None:
            return j.set("auto_rejected", f"rule:{rule.name}", "rule")
        if (rule := first_match(self.policy.force_review, fields)) is not None:
            return j.set("pending_review", f"rule:{rule.name}", "rule")
        threshold, state, calibrate, label_thresholds = self._threshold(j.source)
        if j.score is None and j.raw is not None:
            j.score = calibrate(j.raw)
        if threshold is None:
            return j.set("pending_review", f"threshold:{state}", "uncertified")
        if j.chosen is None:  # one label: its raw score against the threshold
            confident = j.raw is not None and j.raw >= threshold
        else:
            confident = self._clears_set(j, threshold, label_thresholds)
        if not confident:
            return j.set("pending_review", f"threshold:{state}", "uncertain")
        j.set("auto_approved", f"threshold:{state}", "confident")
        j.audit = drawn(req.idempotency_key, self.policy.audit_share)
        return j

    @staticmethod
    def _clears_set(j: _Judged, threshold: float, label_thresholds: Mapping[str, float] | None) -> bool:
        """Whether a label set clears the rule: its score (``clears``), or with the per-label
        thresholds of our model's certified rule each label's decision on our probabilities."""
        if j.raw is None:
            return False
        if label_thresholds is not None and j.probabilities is not None:
            return clears(threshold, label_thresholds, j.raw, probabilities=j.probabilities, chosen=j.chosen)
        return clears(threshold, None, j.raw)

    def _threshold(self, source: str) -> tuple[float | None, str, ScoreCalibration, Mapping[str, float] | None]:
        """``(threshold, state, calibration, per-label thresholds)`` for ``source``: our model's from
        the loop's rule in force (per-label thresholds where a label set's certified review chose
        them); another model's certified on its unbiased human outcomes (read again after a while)."""
        if source == OUR_MODEL:
            rule = in_force(self.store, self.spec)
            return ((rule.threshold if rule.accepts else None), rule.state, ScoreCalibration([], [], min_outcomes=2),
                    rule.label_thresholds)
        cached = self._evidence.get(source)
        if cached is None or time.monotonic() - cached[0] > EVIDENCE_TTL_S:
            raw, approved = self.store.online.evidence(source)
            calibration = ScoreCalibration(raw, approved, min_outcomes=self.policy.min_caller_outcomes)
            threshold = None
            if self.spec.thresholds.adapt and len(raw):
                t = self.spec.thresholds
                choice = choose_accept_threshold(raw, approved, target_error=t.target_error, delta=t.delta,
                                                 min_n=t.min_n)
                threshold = choice.threshold if choice.meets_target and choice.threshold <= 1.0 else None
            elif not self.spec.thresholds.adapt:
                fixed = float(self.spec.routing.get("accept_threshold", 0.95))
                threshold = fixed if fixed < 1.0 else None
            cached = self._evidence[source] = (time.monotonic(), calibration, threshold)
        _, calibration, threshold = cached
        state = "uncertified" if not self.spec.thresholds.adapt else ("certified" if threshold is not None else "off")
        return threshold, state, calibration, None

    def _record(self, key: str, request: dict[str, Any], j: _Judged, inputs: Mapping[str, Any], *,
                deadline_s: float | None, callback_url: str | None) -> tuple[OnlineDecision, bool]:
        pending = j.status == "pending_review"
        priority = 0.0
        if pending:
            # uncertainty, the caller's risk fields, and how often this source's outputs were wrong
            error_rate = self._evidence[j.source][1].error_rate if j.source in self._evidence else None
            priority = (1.0 - (j.score if j.score is not None else 0.0)) + risk(self.policy, inputs) + (error_rate or 0.0)
            priority += 1.0 if j.rule.startswith("rule:") else 0.0
        review = pending or j.audit
        item = None
        if review:
            text, data = self._item(inputs, j.output)
            item = {"text": text, "data": data}
        row = {"idempotency_key": key, "kind": self.spec.kind, "source": j.source, "request": request,
               "output": j.output, "status": j.status, "rule": j.rule,
               "reason": "audit" if j.audit else j.reason, "score": j.score, "raw_score": j.raw,
               "priority": priority, "audit": j.audit,
               "deadline_at": utcnow() + timedelta(seconds=deadline_s or self.policy.deadline_s) if pending else None,
               "callback_url": callback_url, "review": j.detail or None,
               "decided_at": None if pending else utcnow()}
        return self.store.online.create(row, item=item, suggestion=j.suggestion if review else None)

    def _item(self, inputs: Mapping[str, Any], output: Any) -> tuple[str, dict[str, Any]]:
        """The review item's text and data: the input's own fields, nothing about the decision."""
        if self.spec.kind == "label":
            text = str(inputs[self.spec.text_field])
            data = {k: v for k, v in inputs.items() if k != self.spec.text_field and _shown(v)}
            return text, data
        return item_fields(self.spec, dict(inputs), output)

    # -- what a caller reads -----------------------------------------------------------------

    def view(self, d: OnlineDecision) -> DecisionView:
        """The decision as the API answers it (queue position and expected wait while pending)."""
        position = wait = None
        if d.status == "pending_review":
            position = self.store.online.queue_position(d)
            rate = self.store.online.review_rate()
            wait = position / rate if rate else None
        decided: Any = None
        if d.status in ("auto_approved", "approved"):
            decided = d.output
        elif d.status == "corrected":
            decided = d.corrected
        return DecisionView(id=d.id, idempotency_key=d.idempotency_key, kind=d.kind, status=d.status,  # type: ignore[arg-type]
                            decision=decided, score=d.score, rule=d.rule, reason=d.reason, queue_position=position,
                            estimated_wait_s=wait,
                            deadline_at=d.deadline_at.isoformat() if d.deadline_at else None,
                            outcome=d.outcome if d.status not in ("auto_approved", "auto_rejected") else None,  # type: ignore[arg-type]
                            corrected=d.corrected if d.status == "corrected" else None,
                            reviewer=d.reviewer if d.status not in ("auto_approved", "auto_rejected") else None,
                            comment=d.comment if d.status not in ("auto_approved", "auto_rejected") else None,
                            review=d.review, created_at=d.created_at.isoformat(),
                            decided_at=d.decided_at.isoformat() if d.decided_at else None)

    # -- outcomes ----------------------------------------------------------------------------

    def settle_reviews(self, send_back: Any = None) -> dict[str, int]:
        """Outcomes for the decisions whose item settled on a label; ``send_back(item_id, reason)``
        asks the tool for another answer when a correction is refused."""
        counts: dict[str, int] = {}
        waiting = self.store.online.awaiting_review()
        if not waiting:
            return counts
        by_item = {d.item_id: d for d in waiting if d.item_id is not None}
        labels = {lb.item_id: lb for lb in self.store.labels.list(item_ids=[*by_item])}
        answers: dict[int, Any] = {}
        for a in self.store.annotations.list(list(labels), status="submitted"):
            if a.item_id not in answers or a.remote_updated_at >= answers[a.item_id].remote_updated_at:
                answers[a.item_id] = a
        for item_id, label in labels.items():
            d, answer = by_item[item_id], answers.get(item_id)
            outcome, corrected, extra = self._outcome(d, label.label, answer)
            if outcome is None:
                continue
            if outcome == "correct" and self.spec.kind == "extraction":
                errors = validate_output(self.spec, corrected)
                if errors:
                    if self._refuse(d, answer, errors, send_back):
                        counts["refused"] = counts.get("refused", 0) + 1
                    continue
            reviewer = answer.annotator if answer is not None else "unknown"
            payload = self._callback_payload(d, outcome, corrected, reviewer, extra.get("comment"))
            if self.store.online.settle(d.id, outcome=outcome, reviewer=reviewer, corrected=corrected,
                                        comment=extra.get("comment"), review=extra or None, callback=payload):
                counts[outcome] = counts.get(outcome, 0) + 1
        return counts

    def _outcome(self, d: OnlineDecision, label: str | None, answer: Any) -> tuple[str | None, Any, dict[str, Any]]:
        if label is None:
            return None, None, {}
        extra = dict((answer.extra or {}) if answer is not None else {})
        if self.spec.kind == "label" and self.spec.primary.multi_label:  # a set: approved only as suggested
            settled, suggested = decode_label_set(label) or [], (d.output or {}).get("label")
            same = _as_set(suggested) == sorted(set(settled))
            return ("approve", None, extra) if same else ("correct", {"label": sorted(set(settled))}, extra)
        if self.spec.kind == "label":
            suggested = (d.output or {}).get("label")
            return ("approve", None, extra) if label == suggested else ("correct", {"label": label}, extra)
        if label not in ("approve", "reject", "correct"):
            return None, None, {}
        corrected = extra.pop("corrected", None) if label == "correct" else None
        return label, corrected, extra

    def _refuse(self, d: OnlineDecision, answer: Any, errors: list[str], send_back: Any) -> bool:
        """Put a refused correction on record once per answer version, and ask for another answer."""
        assert d.item_id is not None
        stamp = answer.remote_updated_at.isoformat() if answer is not None else None
        seen = [e for e in self.store.history.for_item(d.item_id) if e.kind == "correction_refused"
                and (e.detail or {}).get("answer_updated_at") == stamp]
        if seen:
            return False
        self.store.history.record([{"item_id": d.item_id, "kind": "correction_refused", "actor": "decisions",
                                    "detail": {"decision_id": d.id, "errors": errors, "answer_updated_at": stamp,
                                               "remote_id": answer.remote_id if answer is not None else None}}])
        if send_back is not None:
            send_back(d.item_id, "; ".join(errors))
        return True

    def apply_deadlines(self, remove: Any = None, escalate: Any = None) -> dict[str, int]:
        """The fallback for every pending decision past its deadline; ``remove(item_id)`` takes its
        task out of the tool (nobody should spend time on a decided item); ``escalate(item_id)``
        puts it in the higher-priority queue (the task's adjudication project), once, with a new
        deadline; past that one, the conservative ``reject``."""
        counts: dict[str, int] = {}
        for d in self.store.online.overdue():
            fallback = self.policy.fallback
            if fallback == "escalate" and not d.escalated:
                if self.store.online.escalate(d.id, deadline_at=utcnow() + timedelta(seconds=self.policy.deadline_s),
                                              boost=self.policy.escalate_boost):
                    counts["escalated"] = counts.get("escalated", 0) + 1
                    if escalate is not None and d.item_id is not None:
                        escalate(d.item_id)
                continue
            outcome = "approve" if fallback == "approve" else "reject"
            payload = self._callback_payload(d, outcome, None, "timeout", "deadline passed")
            if self.store.online.settle(d.id, outcome=outcome, reviewer="timeout", comment="deadline passed",
                                        callback=payload, fallback=True):
                counts[outcome] = counts.get(outcome, 0) + 1
                if remove is not None and d.item_id is not None:
                    remove(d.item_id)
        return counts

    def _callback_payload(self, d: OnlineDecision, outcome: str, corrected: Any, reviewer: str,
                          comment: str | None) -> dict[str, Any]:
        return {"type": "decision.reviewed", "timestamp": utcnow().isoformat(),
                "data": {"id": d.id, "idempotency_key": d.idempotency_key, "kind": d.kind, "outcome": outcome,
                         "decision": corrected if outcome == "correct" else (d.output if outcome == "approve" else None),
                         "corrected": corrected, "reviewer": reviewer, "comment": comment}}


class _Judged:
    """A decision being taken: whose output, its score, and so far which status by which rule."""

    def __init__(self, source: str, output: Any, suggestion: dict[str, Any] | None, raw: float | None,
                 score: float | None, status: str, rule: str, reason: str,
                 detail: dict[str, Any] | None = None) -> None:
        self.source, self.output, self.suggestion, self.raw, self.score = source, output, suggestion, raw, score
        self.status, self.rule, self.reason, self.detail = status, rule, reason, detail
        self.audit = False
        self.chosen: list[str] | None = None  # a label set's labels
        self.probabilities: dict[str, float] | None = None  # our model's per-label probabilities of a set

    def set(self, status: str, rule: str, reason: str) -> _Judged:
        self.status, self.rule, self.reason = status, rule, reason
        return self


def _reviewed(out: StructuredOutput | AnswerOutput) -> Any:
    """The output a person reviews (and a decision returns): an extraction's data; an answer with
    its question and context. Whose model and its confidences stay in the request."""
    if isinstance(out, StructuredOutput):
        return out.data
    return {"question": out.question, "answer": out.answer, "context": list(out.context)}


def _as_set(label: Any) -> list[str] | None:
    """A decided label set as a sorted list (a list, or a stored label); ``None`` stays ``None``."""
    if label is None:
        return None
    if isinstance(label, list | tuple):
        return sorted({str(v) for v in label})
    return decode_label_set(str(label))


def _shown(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None
