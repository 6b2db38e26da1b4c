"""Decisions on line: the policy a task file sets for them (the ``[decisions]`` table).

A running application posts one input (and, where it has one, a model output) and gets a
decision now: taken automatically when the score clears a certified threshold and no rule says
otherwise, else held for a person, who approves, rejects or corrects it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from connector.routing import Rule


class FieldRule(Rule):
    """A named routing rule (``connector.routing.Rule``: ``field op value``) on the caller's input
    fields, e.g. ``amount > 1000`` or ``category in ["medical", "legal"]``; a field the input lacks
    never matches."""

    name: str

    def matches(self, fields: Mapping[str, Any]) -> bool:
        return self.fires(fields)


class DecisionPolicy(BaseModel):
    """How decisions are taken. ``deadline_s``: how long a decision may wait for a person;
    ``fallback``: what happens then (``reject``, the conservative default; ``approve``; or
    ``escalate`` to a higher-priority queue, once, with a new deadline); ``force_review`` /
    ``auto_reject``: rules on the input fields; ``risk_weights``: field -> weight added to the
    review priority (numbers times the weight, true flags the weight); ``audit_share``: the share
    of decisions that could be taken automatically and go to a person anyway (blind), so the
    error of automatic decisions stays measured; ``feedback_audit_share``: the share of thumbs-up
    answers reviewed as audits; ``min_caller_outcomes``: human outcomes of one caller's model
    needed before its confidences are calibrated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    deadline_s: float = Field(3600.0, gt=0)
    fallback: Literal["reject", "approve", "escalate"] = "reject"
    escalate_boost: float = Field(1.0, ge=0)
    force_review: list[FieldRule] = Field(default_factory=list)
    auto_reject: list[FieldRule] = Field(default_factory=list)
    risk_weights: dict[str, float] = Field(default_factory=dict)
    audit_share: float = Field(0.05, ge=0.0, le=1.0)
    feedback_audit_share: float = Field(0.1, ge=0.0, le=1.0)
    min_caller_outcomes: int = Field(50, ge=2)
    callback_attempts: int = Field(8, ge=1)
    callback_timeout_s: float = Field(5.0, gt=0)


# -- what a caller sends and gets -----------------------------------------------------------------

class LabelOutput(BaseModel):
    """A label another model gave, with its own confidence (calibrated on our human outcomes); for a
    task whose labels are sets (``multi_label``), ``label`` is the set, a list of labels (``[]``: none
    applies; one label alone is the set of that label)."""

    model_config = ConfigDict(extra="forbid")

    label: str | list[str]
    confidence: float | None = Field(None, ge=0.0, le=1.0)
    model: str = Field("caller", min_length=1, max_length=120)


class StructuredOutput(BaseModel):
    """An LLM's structured output, checked against the task's JSON Schema; ``field_confidence``:
    the caller's confidence per top-level field, where it has one."""

    model_config = ConfigDict(extra="forbid")

    data: Any
    field_confidence: dict[str, float] = Field(default_factory=dict)
    model: str = Field("caller", min_length=1, max_length=120)


class AnswerOutput(BaseModel):
    """A generated answer with its question and the context it was retrieved from."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1)
    answer: str
    context: list[str] = Field(default_factory=list)
    confidence: float | None = Field(None, ge=0.0, le=1.0)
    model: str = Field("caller", min_length=1, max_length=120)


KEY_PATTERN = r"^[A-Za-z0-9._:\-]{1,200}$"


class DecisionRequest(BaseModel):
    """``POST /v1/decisions``. ``output``: what to judge (its shape follows the task's kind; none:
    our model predicts, for a ``label`` task); ``input``: the item's fields, the task's text field
    among them, and the risk fields its rules read; ``deadline_s``: overrides the task's."""

    model_config = ConfigDict(extra="forbid")

    idempotency_key: str = Field(pattern=KEY_PATTERN)
    input: dict[str, Any]
    output: LabelOutput | StructuredOutput | AnswerOutput | None = None
    deadline_s: float | None = Field(None, gt=0)
    callback_url: str | None = Field(None, pattern=r"^https?://", max_length=2000)


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: a user's thumbs up or down on an answer the application already gave."""

    model_config = ConfigDict(extra="forbid")

    idempotency_key: str = Field(pattern=KEY_PATTERN)
    question: str = Field(min_length=1)
    answer: str
    context: list[str] = Field(default_factory=list)
    thumbs: Literal["up", "down"]
    comment: str | None = None
    model: str = Field("caller", min_length=1, max_length=120)
    callback_url: str | None = Field(None, pattern=r"^https?://", max_length=2000)


Status = Literal["auto_approved", "auto_rejected", "pending_review", "approved", "rejected", "corrected"]


class DecisionView(BaseModel):
    """What ``POST`` and ``GET /v1/decisions`` answer: the decision, its score and the rule that
    took it; while it waits, its place in the queue and the wait expected from the measured
    review rate; once a person decided, the outcome."""

    id: int
    idempotency_key: str
    kind: str
    status: Status
    decision: Any = Field(None, description="the output as decided: the approved label/output, the correction")
    score: float | None = None
    rule: str
    reason: str
    queue_position: int | None = None
    estimated_wait_s: float | None = None
    deadline_at: str | None = None
    outcome: Literal["approve", "reject", "correct"] | None = None
    corrected: Any = None
    reviewer: str | None = None
    comment: str | None = None
    review: dict[str, Any] | None = None
    created_at: str
    decided_at: str | None = None


# -- the pieces of a decision ----------------------------------------------------------------------

def first_match(rules: list[FieldRule], fields: Mapping[str, Any]) -> FieldRule | None:
    """The first rule whose condition holds on ``fields``."""
    return next((r for r in rules if r.matches(fields)), None)


def risk(policy: DecisionPolicy, fields: Mapping[str, Any]) -> float:
    """The risk fields' share of a review priority: numbers times their weight, true flags the weight."""
    total = 0.0
    for name, weight in policy.risk_weights.items():
        value = fields.get(name)
        if isinstance(value, bool):
            total += weight if value else 0.0
        elif isinstance(value, int | float):
            total += weight * float(value)
    return total


def drawn(key: str, share: float, *, salt: str = "audit") -> bool:
    """A reproducible draw of ``share`` of the keys (a hash, not a random generator)."""
    import hashlib

    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < share


class ScoreCalibration:
    """Isotonic calibration of one source's confidences on its human outcomes (approved or not):
    the chance that an output with that confidence is approved, monotone in the confidence.
    Identity until ``min_outcomes`` outcomes of both kinds exist."""

    def __init__(self, raw: Any, approved: Any, *, min_outcomes: int) -> None:
        import numpy as np

        raw, approved = np.asarray(raw, dtype=float), np.asarray(approved, dtype=bool)
        self.n = len(raw)
        #: the share of this source's reviewed outputs a person did not approve (None before any)
        self.error_rate = float(1.0 - approved.mean()) if self.n else None
        self._iso: Any = None
        if self.n >= min_outcomes and 0 < approved.sum() < self.n:
            from sklearn.isotonic import IsotonicRegression

            self._iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, approved)

    def __call__(self, raw: float) -> float:
        if self._iso is None:
            return float(raw)
        return float(self._iso.predict([float(raw)])[0])
