"""One stored label, or one stored label *set*: how a multi-label answer lives in a string column.

A settled label of a multi-label control (``labels.label``), and a multi-label model's prediction
(``predictions.label``), is stored as a JSON array of its labels, sorted, without spaces:
``["politics","sport"]`` (``[]``: no label applies). Sorted, two equal sets are equal strings, so
code that compares stored labels as strings (spot checks, the threshold's evidence) compares sets
exactly. :func:`decode_label` reads either form back; nothing else parses the column.
"""

from __future__ import annotations

import json
from collections.abc import Iterable


def encode_label_set(labels: Iterable[str]) -> str:
    """A label set as stored: a sorted JSON array of distinct labels, without spaces (``labels.label``
    and ``predictions.label`` are ``TEXT`` since migration 0008)."""
    if isinstance(labels, str):
        raise TypeError(f"a label set must be an iterable of labels, got the string {labels!r}")
    return json.dumps(sorted({str(label) for label in labels}), ensure_ascii=False, separators=(",", ":"))


def is_label_set(value: object) -> bool:
    """Whether a stored label is an encoded set (a JSON array of strings)."""
    if not isinstance(value, str) or not value.startswith("["):
        return False
    try:
        decoded = json.loads(value)
    except ValueError:
        return False
    return isinstance(decoded, list) and all(isinstance(v, str) for v in decoded)


def decode_label(value: str | None) -> str | list[str] | None:
    """A stored label read back: a list of labels for an encoded set, the string itself otherwise
    (``None`` stays ``None``)."""
    if value is None:
        return None
    return json.loads(value) if is_label_set(value) else value


def decode_label_set(value: str | None) -> list[str] | None:
    """A stored label as a set: an encoded set decoded, a single label as a one-label list."""
    decoded = decode_label(value)
    if decoded is None:
        return None
    return decoded if isinstance(decoded, list) else [decoded]


def encode_spans(spans: Iterable[object]) -> str:
    """A settled span set as stored: a sorted JSON array of ``[start, end, label]`` (code-point
    offsets on the item's text), without spaces; ``[]``: no entity. Accepts spans, tuples or mappings
    (:func:`connector.spans.as_spans`)."""
    from connector.spans import as_spans

    triples = sorted({s.key() for s in as_spans(spans)})  # type: ignore[arg-type]
    return json.dumps([list(t) for t in triples], ensure_ascii=False, separators=(",", ":"))


def decode_spans(value: str | None) -> list[tuple[int, int, str]] | None:
    """A stored span set read back as ``(start, end, label)`` tuples (``None`` stays ``None``)."""
    if value is None:
        return None
    decoded = json.loads(value)
    if not isinstance(decoded, list) or not all(isinstance(t, list) and len(t) == 3 for t in decoded):
        raise ValueError(f"not a stored span set: {value[:80]!r}")
    return [(int(s), int(e), str(lab)) for s, e, lab in decoded]
