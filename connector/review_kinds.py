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


def load_schema(extraction: ExtractionSpec) -> dict[str, Any]:
    """The JSON Schema an extraction's outputs must meet (inline, from its file, or from the
    pydantic model), checked to be a valid schema."""
    raise NotImplementedError


def validate_output(spec: Any, output: Any) -> list[str]:
    """Why ``output`` fails the task's schema (one message per error, with its JSON path); ``[]``
    when it meets it. Only for ``extraction`` tasks."""
    raise NotImplementedError


def item_fields(spec: Any, inputs: dict[str, Any], output: Any) -> tuple[str, dict[str, Any]]:
    """What one review item stores and shows: its text (the input the output was made from) and
    its data (the output, and for ``answer`` the question and the retrieved context)."""
    raise NotImplementedError


def suggestion_result(spec: Any, output: Any) -> list[dict[str, Any]]:
    """The output as the reviewer's editable starting point: Label Studio ``result`` items (the
    Argilla tool turns them into suggestions). No outcome is suggested: the reviewer chooses it."""
    raise NotImplementedError
