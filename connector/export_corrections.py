"""``hitl export --kind corrections`` and ``--kind preferences``: people's outcomes on on-line
decisions, as training data.

:func:`correction_rows` gives one :class:`CorrectionRow` per decision a person decided (a held
decision, or an audit of an automatic one), read with ``store.online.reviewed``; deadline
fallbacks (reviewer ``timeout``) are no human outcome and automatic decisions nobody reviewed no
outcome at all: both are left out. Each row holds the three parts of a training example in one
shape per kind:

- ``input``: the request's input fields (for an ``answer``, with the question and the retrieved
  context the answer was given from; for a ``/v1/feedback`` answer, its question and context);
- ``output``: the model's output (``label``: the label; ``extraction``: the structured data;
  ``answer``: the answer text);
- ``corrected``: the output as the person settled it: the correction (``correct``), the output
  approved (``approve``; as the reviewer's form returned it, where it did), ``None`` (``reject``).

:func:`preference_rows` turns every ``correct`` outcome into a preference pair in the common DPO
layout: ``prompt`` (the input the reviewer read: the review item's text; for an ``answer`` the
context passages and the question), ``chosen`` (the correction) and ``rejected`` (the model's
output), as text (structured outputs as JSON). A correction equal to the output teaches nothing
and is left out.

:func:`write` writes either as JSONL (nested objects) or Parquet (``input``, ``review`` and
structured outputs as JSON text, times ``timestamp[us, UTC]``), loadable by pandas and
``datasets.load_dataset`` as is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connector.export import SUFFIXES, _arrow_type, _arrow_value, _json_default, format_of

if TYPE_CHECKING:
    import pyarrow as pa

    from connector.store import StateStore
    from connector.store.models import OnlineDecision

KINDS = ("labels", "corrections", "preferences")
FORMATS = ("jsonl", "parquet")
OUTCOMES = ("approve", "correct", "reject")


@dataclass
class CorrectionRow:
    """One decision a person decided (see the module docstring)."""

    decision_id: int
    idempotency_key: str
    kind: str
    origin: str  # "decision" (POST /v1/decisions) or "feedback" (POST /v1/feedback)
    source: str  # whose output: "model" (ours) or "caller:<model>"
    input: dict[str, Any]
    output: Any
    corrected: Any
    outcome: str
    reviewer: str
    comment: str | None
    review: dict[str, Any] | None  # what else the reviewer gave: rating, whether the context supported it
    feedback: dict[str, Any] | None  # the user's thumbs and comment, for a /v1/feedback answer
    audit: bool  # an automatic decision reviewed as an audit (the caller had its answer already)
    rule: str
    score: float | None
    created_at: datetime
    decided_at: datetime | None  # when the person decided
    prompt: str  # the input as the reviewer read it


@dataclass
class PreferenceRow:
    """One preference pair: ``prompt``, ``chosen`` (the correction), ``rejected`` (the model's output)."""

    prompt: str
    chosen: str
    rejected: str
    decision_id: int
    kind: str
    source: str


# ------------------------------------------------------------------------------------------------ store -> rows


def correction_rows(store: StateStore, *, since: datetime | None = None) -> list[CorrectionRow]:
    """One row per decision a person decided, by decision id; ``since``: those decided at or after it."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    reviewed = [(d, at) for d, at in store.online.reviewed() if since is None or (at is not None and at >= since)]
    items = store.items.get_many(d.item_id for d, _ in reviewed if d.item_id is not None)
    rows = []
    for d, at in reviewed:
        item = items.get(d.item_id) if d.item_id is not None else None
        rows.append(_row(d, at, item.text if item is not None else None))
    return rows


def preference_rows(rows: Sequence[CorrectionRow]) -> list[PreferenceRow]:
    """A pair for every ``correct`` outcome whose correction differs from the output."""
    out = []
    for r in rows:
        if r.outcome != "correct" or r.corrected is None:
            continue
        chosen, rejected = _text(r.corrected), _text(r.output)
        if chosen.strip() and chosen != rejected:
            out.append(PreferenceRow(prompt=r.prompt, chosen=chosen, rejected=rejected, decision_id=r.decision_id,
                                     kind=r.kind, source=r.source))
    return out


def _row(d: OnlineDecision, decided_at: datetime | None, item_text: str | None) -> CorrectionRow:
    request = d.request or {}
    raw = d.output if isinstance(d.output, dict) else {}
    feedback = None
    if request.get("kind") == "feedback":
        inputs: dict[str, Any] = {"question": request.get("question"), "context": request.get("context") or []}
        feedback = {"thumbs": request.get("thumbs"), "comment": request.get("comment")}
    else:
        inputs = dict(request.get("input") or {})
        if d.kind == "answer":
            inputs |= {"question": raw.get("question"), "context": raw.get("context") or []}
    output = _output(d.kind, d.output)
    corrected = d.corrected
    if d.kind == "label" and isinstance(corrected, dict):
        corrected = corrected.get("label")
    if d.outcome == "reject":
        corrected = None
    elif d.outcome == "approve" and corrected is None:
        corrected = output
    review = {k: v for k, v in (d.review or {}).items() if k != "comment"} or None
    return CorrectionRow(decision_id=d.id, idempotency_key=d.idempotency_key, kind=d.kind,
                         origin="feedback" if feedback is not None else "decision", source=d.source, input=inputs,
                         output=output, corrected=corrected, outcome=str(d.outcome), reviewer=str(d.reviewer),
                         comment=d.comment, review=review, feedback=feedback, audit=bool(d.audit), rule=d.rule,
                         score=d.score, created_at=d.created_at, decided_at=decided_at,
                         prompt=_prompt(d.kind, inputs, item_text))


def _output(kind: str, output: Any) -> Any:
    """The model's output in the shape a correction has: the label, the structured data, the answer."""
    key = {"label": "label", "answer": "answer"}.get(kind)  # an extraction's output is its data as it is
    if key is None or not isinstance(output, dict):
        return output
    return output.get(key) if key in output else output


def _prompt(kind: str, inputs: Mapping[str, Any], item_text: str | None) -> str:
    if kind == "answer":
        question = str(inputs.get("question") or "")
        context = inputs.get("context") or []
        passages = [context] if isinstance(context, str) else [str(p) for p in context]
        if not passages:
            return question
        shown = "\n\n".join(f"[{n}] {p}" for n, p in enumerate(passages, 1))
        return f"Context:\n{shown}\n\nQuestion: {question}"
    if item_text is not None:
        return item_text
    return json.dumps(dict(inputs), ensure_ascii=False, sort_keys=True, default=_json_default)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=_json_default)


def counts(rows: Sequence[CorrectionRow]) -> dict[str, int]:
    """Rows per outcome, in :data:`OUTCOMES` order (outcomes with none left out)."""
    return {o: n for o in OUTCOMES if (n := sum(r.outcome == o for r in rows))}


# ------------------------------------------------------------------------------------------------ rows -> files


def formats(path: Path, fmt: str | None = None) -> list[str]:
    """``jsonl`` and/or ``parquet``, from ``fmt`` (``all``: both) or the suffix; CSV is refused."""
    if fmt == "all":
        return list(FORMATS)
    chosen = format_of(path, fmt)
    if chosen != ["csv"]:
        return chosen
    raise ValueError("corrections and preference pairs are written as JSONL or Parquet (.jsonl, .parquet), not CSV")


def records(rows: Sequence[CorrectionRow] | Sequence[PreferenceRow]) -> list[dict[str, Any]]:
    """Rows as dicts in column order (a correction's ``prompt`` is for the pairs: left out)."""
    out = []
    for r in rows:
        rec = {f.name: getattr(r, f.name) for f in fields(r)}  # shallow: asdict copies every nested value
        if isinstance(r, CorrectionRow):
            del rec["prompt"]
        out.append(rec)
    return out


def write(rows: Sequence[CorrectionRow] | Sequence[PreferenceRow], path: Path, fmt: str | None = None, *,
          pairs: bool = False) -> list[Path]:
    """Write ``rows`` (corrections, or with ``pairs`` preference pairs) in each format :func:`formats`
    names, like ``connector.export.write``; the files written."""
    chosen = formats(path, fmt)
    written = []
    for f in chosen:
        target = path if SUFFIXES.get(path.suffix.lower()) == f and len(chosen) == 1 else path.with_suffix(f".{f}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if f == "jsonl":
            write_jsonl(rows, target)
        else:
            write_parquet(rows, target, pairs=pairs)
        written.append(target)
    return written


def write_jsonl(rows: Sequence[CorrectionRow] | Sequence[PreferenceRow], path: Path) -> None:
    """One JSON object per line, nested objects as they are, times as ISO 8601 strings."""
    with path.open("w", encoding="utf-8") as fh:
        for rec in records(rows):
            fh.write(json.dumps(rec, ensure_ascii=False, default=_json_default, allow_nan=False) + "\n")


def correction_schema(rows: Sequence[CorrectionRow]) -> pa.Schema:
    """Corrections in Parquet: ``input``, ``review`` and ``feedback`` as JSON text; ``output`` and
    ``corrected`` as text when every value is one (labels, answers), else as JSON text."""
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    values = _arrow_type([r.output for r in rows] + [r.corrected for r in rows])
    return pa.schema([("decision_id", pa.int64()), ("idempotency_key", pa.string()), ("kind", pa.string()),
                      ("origin", pa.string()), ("source", pa.string()), ("input", pa.string()), ("output", values),
                      ("corrected", values), ("outcome", pa.string()), ("reviewer", pa.string()),
                      ("comment", pa.string()), ("review", pa.string()), ("feedback", pa.string()),
                      ("audit", pa.bool_()), ("rule", pa.string()), ("score", pa.float64()),
                      ("created_at", ts), ("decided_at", ts)])


PREFERENCE_SCHEMA_FIELDS = (("prompt", "string"), ("chosen", "string"), ("rejected", "string"),
                            ("decision_id", "int64"), ("kind", "string"), ("source", "string"))


def write_parquet(rows: Sequence[CorrectionRow] | Sequence[PreferenceRow], path: Path, *, pairs: bool = False) -> None:
    """One Parquet file: :func:`correction_schema`, or the pairs' six columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if pairs:
        schema = pa.schema([(n, pa.type_for_alias(t)) for n, t in PREFERENCE_SCHEMA_FIELDS])
        recs = records(rows)
    else:
        schema = correction_schema(rows)  # type: ignore[arg-type]
        json_text = pa.string()
        recs = [{k: _arrow_value(v, schema.field(k).type if k in ("output", "corrected") else json_text)
                 if k in ("input", "output", "corrected", "review", "feedback") else v for k, v in rec.items()}
                for rec in records(rows)]
    pq.write_table(pa.Table.from_pylist(recs, schema=schema), path)
