"""PII kept from reviewers: configured fields are redacted before an item is pushed.

The task file's ``[redaction]`` table names the fields; the original stays in our store.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: Presidio's pattern recognizers that work offline (no spaCy model)
DEFAULT_ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS")


class RedactionPolicy(BaseModel):
    """``fields``: the item fields to redact (the text field included by name); ``entities``:
    Presidio entity types; ``rules``: the task's own patterns, name -> regular expression;
    ``min_score``: Presidio's score a finding needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fields: list[str] = Field(default_factory=list)
    entities: list[str] = Field(default_factory=lambda: list(DEFAULT_ENTITIES))
    rules: dict[str, str] = Field(default_factory=dict)
    min_score: float = Field(0.3, ge=0.0, le=1.0)
