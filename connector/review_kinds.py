"""Review kinds for generated outputs: what the reviewer sees and answers in each tool.

A task file's ``kind`` says what a reviewed item is: ``label`` (a classification, the loop's
original kind), ``extraction`` (an LLM's structured output checked against a JSON Schema) or
``answer`` (a generated answer with its question and retrieved context). For the two review
kinds the annotator's choice is the outcome (``approve`` / ``reject`` / ``correct``), so the
loop's consolidation, agreement and routing work on it unchanged; what else the reviewer gives
(the corrected output, a rating, whether the context supported the answer, a comment) travels
as the answer's ``extra``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

KINDS = ("label", "extraction", "answer")
Kind = Literal["label", "extraction", "answer"]

#: the outcome labels of a review kind, in the order a reviewer is offered them
OUTCOMES = ("approve", "correct", "reject")


class ExtractionSpec(BaseModel):
    """The task file's ``[extraction]`` table: the schema structured outputs must meet.

    ``json_schema``: the schema inline; ``schema_path``: a JSON file holding it; ``model``: a
    pydantic model as ``package.module:Class`` (its ``model_json_schema()``). One of the three.
    ``min_field_confidence``: a field the caller scored below this sends the output to review."""

    model_config = ConfigDict(extra="forbid")

    json_schema: dict[str, Any] | None = None
    schema_path: str | None = None
    model: str | None = None
    min_field_confidence: float = Field(0.8, ge=0.0, le=1.0)
