"""Span export of a span control: each item's settled spans, as JSONL rows with offsets (and
spaCy's ``(start, end, label)`` tuples), from the stored answers settled by the task's policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from connector.spans import Span, write_span_jsonl
from connector.task_spec import ControlSpec, TaskSpec
from sync.adjudication import split_answers
from sync.controls import settle_control


def span_control(spec: TaskSpec, name: str) -> ControlSpec:
    """The task's span control called ``name`` (``ValueError`` when there is none)."""
    for c in spec.control_specs:
        if c.name == name:
            if c.kind != "spans":
                raise ValueError(f"control {name!r} is a {c.kind} control, not a spans one")
            return c
    raise ValueError(f"the task has no control {name!r} (it has {[c.name for c in spec.control_specs]})")


def span_rows(store: Any, spec: TaskSpec, control: ControlSpec, policy: Any) -> list[tuple[str, str, list[Span]]]:
    """``(external id, text, settled spans)`` of every current item the control settled, by item id;
    offsets are the annotators' own on the text they saw (never recomputed)."""
    ordinary, _ = split_answers(store, store.annotations.list())
    settled = settle_control(ordinary, spec, control, policy)
    items = store.items.get_many(settled)
    return [(items[i].external_id, items[i].text, [Span(s, e, lab) for s, e, lab in settled[i]])
            for i in sorted(settled) if i in items and items[i].is_current]


def export_spans(store: Any, spec: TaskSpec, name: str, out: Path, policy: Any) -> int:
    """Write the span control ``name``'s settled spans to ``out`` (JSONL); the row count."""
    control = span_control(spec, name)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_span_jsonl(out, span_rows(store, spec, control, policy))
