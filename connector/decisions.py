"""Decisions on line: the policy a task file sets for them (the ``[decisions]`` table).

A running application posts one input (and, where it has one, a model output) and gets a
decision now: taken automatically when the score clears a certified threshold and no rule says
otherwise, else held for a person, who approves, rejects or corrects it.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq,
        "!=": operator.ne, "in": lambda a, b: a in b, "not_in": lambda a, b: a not in b}


class FieldRule(BaseModel):
    """``field op value`` on the caller's input fields (e.g. ``amount > 1000``, ``category in
    ["medical", "legal"]``); a field the input lacks never matches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    field: str
    op: Literal[">", ">=", "<", "<=", "==", "!=", "in", "not_in"]
    value: Any

    def matches(self, fields: Mapping[str, Any]) -> bool:
        if self.field not in fields:
            return False
        try:
            return bool(_OPS[self.op](fields[self.field], self.value))
        except TypeError:
            return False


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
