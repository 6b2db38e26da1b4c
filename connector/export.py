"""``hitl export``: the final labelled set, one row per item, as JSONL, CSV and Parquet.

:func:`export_rows` reads the state store once (:func:`read_store`) and gives one
:class:`ExportRow` per current item version (one per external id), with where its final label came
from (``source``, :data:`SOURCES`), first match wins:

- ``gold``: a gold item (``is_gold``) with its known answer;
- ``human_consensus`` / ``adjudicated`` / ``seed``: a settled label row, by its method
  (``majority`` or ``dawid_skene``; ``adjudicated``; ``seed``: a seed label given with the data);
- ``auto_accepted``: the item's latest routing decision is ``auto_accept``: the model's label, with
  the threshold and error bound of the threshold review in force when it was decided, and
  ``certified`` true only when that review certified its target and the item's score is at or
  above its threshold (false when no review was in force: old stores may hold such rows);
- ``auto_rejected``: the latest decision is ``auto_reject`` (a moderation task's reject rule), not
  certified;
- ``model_suggestion``: the model's latest label, not certified and not settled;
- ``unlabelled``: no label and no prediction.

The first five (and ``auto_rejected``) are *settled* (:data:`SETTLED_SOURCES`); ``only="settled"``
keeps those, ``only="all"`` every item. ``since`` keeps the items whose final label (or its
evidence: answers, agreement) changed at or after that time (``updated_at``).

:func:`write` writes rows as JSONL (one object per line, answers a nested list), CSV (flat, answers
and structured fields as JSON strings) or Parquet (a pyarrow schema: answers
``list<struct<annotator, label, status, answered_at>>``, times ``timestamp[us, UTC]``), each
loadable by pandas and ``datasets.load_dataset("parquet", ...)`` as is.

With the task (``spec``), a task whose primary control takes a label set (``multi_label``) exports
its labels as lists: the final ``label``, the ``model_label`` and each answer's ``label`` (JSONL a
JSON list, CSV a JSON string, Parquet ``list<string>``); an auto-accepted set is ``certified`` only
when the review's rule clears it (:func:`connector.auto_accept.clears`, per-label thresholds where
the review chose them). An NER project (a span control first) exports its spans the same way,
``{"start", "end", "label", "text"}`` each (Parquet ``list<struct>``), its answers' from each
answer's spans. A task with other controls (``spec.secondary``) adds a ``controls`` column
after ``label``: the item's settled value per control (a label, a list of labels, or spans
``[[start, end, label], ...]``), given as ``controls`` (item id -> {control: value}, settled from
the stored answers by :mod:`sync.export_controls`), ``None`` when it has none (Parquet: JSON text).
Without the task, or for a one-label task without other controls, the export is as it always was.
"""

from __future__ import annotations

import bisect
import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from connector.auto_accept import certifies, clears
from connector.label_sets import decode_label_set, decode_spans
from connector.snapshots import Dated, ThresholdsSnapshot, read_history
from connector.task_spec import CONTROLS_KEY

if TYPE_CHECKING:
    from collections.abc import Mapping

    import pyarrow as pa

    from connector.store import Annotation, Item, Label, Prediction, RoutingDecision, StateStore
    from connector.task_spec import TaskSpec

SOURCES = ("gold", "human_consensus", "adjudicated", "seed", "auto_accepted", "auto_rejected", "model_suggestion",
           "unlabelled")
SETTLED_SOURCES = frozenset(SOURCES[:6])
HUMAN_METHODS = {"majority": "human_consensus", "dawid_skene": "human_consensus", "adjudicated": "adjudicated",
                 "seed": "seed", "gold": "gold"}
FORMATS = ("jsonl", "csv", "parquet")
SUFFIXES = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
#: the export's own columns, in order; an item field of one of these names is exported as ``field_<name>``
COLUMNS = ("item_id", "version", "text", "label", "source", "settled", "model_label", "model_version", "score",
           "agreement", "n_answers", "answers", "threshold", "bound", "certified", "settled_at", "updated_at")
ANSWER_STATUSES = ("submitted", "skipped")  # deleted answers are left out
#: the column of the other controls' settled values (a task with other controls only), after ``label``
CONTROLS_COLUMN = "controls"

Only = Literal["settled", "all"]


@dataclass(frozen=True)
class Answer:
    """One annotator's answer to the item (its latest, as stored)."""

    annotator: str
    label: str | list[str] | list[dict[str, Any]] | None
    status: str
    answered_at: datetime


@dataclass
class ExportRow:
    """One item of the export; ``fields`` are the item's data fields (the text aside)."""

    item_id: str
    version: int
    text: str
    fields: dict[str, Any]
    label: str | list[str] | list[dict[str, Any]] | None
    source: str
    model_label: str | list[str] | list[dict[str, Any]] | None = None
    model_version: str | None = None
    score: float | None = None
    agreement: float | None = None
    n_answers: int = 0
    answers: list[Answer] = field(default_factory=list)
    threshold: float | None = None
    bound: float | None = None
    certified: bool | None = None
    updated_at: datetime | None = None
    #: the other controls' settled values (control name -> value), ``None`` when the item has none
    controls: dict[str, Any] | None = None
    #: the task's primary control takes a label set: labels are lists
    label_set: bool = False
    #: an NER project: labels are spans, ``{"start", "end", "label", "text"}`` each (offsets on ``text``)
    spans: bool = False
    #: the task has other controls: the row has a ``controls`` column
    with_controls: bool = False

    @property
    def settled(self) -> bool:
        return self.source in SETTLED_SOURCES

    @property
    def settled_at(self) -> datetime | None:
        return self.updated_at if self.settled else None


@dataclass
class StoreView:
    """What the export reads from the store, loaded once: current items and, by item row id, their
    label row, latest routing decision, predictions (oldest first) and answers; the threshold reviews."""

    items: list[Item]
    labels: dict[int, Label]
    decisions: dict[int, RoutingDecision]
    predictions: dict[int, list[Prediction]]
    answers: dict[int, list[Annotation]]
    thresholds: list[Dated[ThresholdsSnapshot]]
    label_set: bool = False
    control_names: tuple[str, ...] = ()
    controls: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    span_control: str | None = None  # an NER project's primary control: its answers are in extra["controls"]


# ------------------------------------------------------------------------------------------------ store -> rows


def read_store(store: StateStore, *, spec: TaskSpec | None = None,
               controls: Mapping[int, Mapping[str, Any]] | None = None) -> StoreView:
    """Everything :func:`build_rows` needs, in a handful of queries; with the task (``spec``),
    whether its labels are sets and its other controls' settled values (``controls``)."""
    items = store.items.list()
    ids = [it.id for it in items]
    predictions: dict[int, list[Prediction]] = {}
    for p in store.predictions.list(ids):
        predictions.setdefault(p.item_id, []).append(p)
    answers: dict[int, list[Annotation]] = {}
    for a in store.annotations.list(ids):
        if a.status in ANSWER_STATUSES:
            answers.setdefault(a.item_id, []).append(a)
    labelled = spec is not None and spec.kind == "label"
    return StoreView(items=items, labels={lb.item_id: lb for lb in store.labels.list(status=None, item_ids=ids)},
                     decisions=store.decisions.latest(ids), predictions=predictions, answers=answers,
                     thresholds=read_history(store, ThresholdsSnapshot),
                     label_set=labelled and spec.primary.multi_label,  # type: ignore[union-attr]
                     control_names=tuple(c.name for c in spec.secondary) if labelled else (),  # type: ignore[union-attr]
                     controls=dict(controls or {}),
                     span_control=spec.primary.name if labelled and spec.spans_primary else None)  # type: ignore[union-attr]


def export_rows(store: StateStore, *, only: Only = "settled", since: datetime | None = None,
                spec: TaskSpec | None = None, controls: Mapping[int, Mapping[str, Any]] | None = None
                ) -> list[ExportRow]:
    """The store's items as export rows (see the module docstring), by external id; ``spec``: the
    task (label sets as lists, the other controls' column), ``controls``: item id -> the other
    controls' settled values (:func:`sync.export_controls.settled_controls`)."""
    return filter_rows(build_rows(read_store(store, spec=spec, controls=controls)), only=only, since=since)


def build_rows(view: StoreView) -> list[ExportRow]:
    """One row per current item of ``view``, by external id."""
    rows = [_row(view, it) for it in view.items]
    return sorted(rows, key=lambda r: r.item_id)


def filter_rows(rows: Iterable[ExportRow], *, only: Only = "settled", since: datetime | None = None) -> list[ExportRow]:
    """The rows ``only`` and ``since`` keep (``since``: naive means UTC)."""
    if only not in ("settled", "all"):
        raise ValueError(f"only must be 'settled' or 'all', not {only!r}")
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return [r for r in rows if (only == "all" or r.settled)
            and (since is None or (r.updated_at is not None and r.updated_at >= since))]


def _row(view: StoreView, item: Item) -> ExportRow:
    label = view.labels.get(item.id)
    decision = view.decisions.get(item.id)
    preds = view.predictions.get(item.id, [])
    sets = view.label_set
    answers = _answers(view.answers.get(item.id, []), sets=sets) if view.span_control is None \
        else _span_answers(view.answers.get(item.id, []), view.span_control, item.text)
    latest = preds[-1] if preds else None
    row = ExportRow(item_id=item.external_id, version=item.version, text=item.text,
                    fields=_fields(item, reserved=(CONTROLS_COLUMN,) if view.control_names else ()),
                    label=None, source="unlabelled", answers=answers,
                    n_answers=label.n_answers if label is not None else _submitted(answers),
                    agreement=label.agreement if label is not None else None, updated_at=item.updated_at,
                    label_set=sets, spans=view.span_control is not None, with_controls=bool(view.control_names))
    if view.control_names:
        settled = view.controls.get(item.id) or {}
        row.controls = {name: settled[name] for name in view.control_names if name in settled} or None
    _model(row, latest)
    gold = (item.meta or {}).get("gold_label") if item.is_gold else None
    if gold is not None:
        row.label, row.source, row.updated_at = _gold_set(gold) if sets else _label_of(str(gold), row), "gold", \
            item.created_at
    elif label is not None and label.status == "settled" and label.label is not None:
        row.label, row.source, row.updated_at = _label_of(label.label, row), \
            HUMAN_METHODS.get(label.method, "human_consensus"), label.updated_at
    elif decision is not None and decision.action in ("auto_accept", "auto_reject"):
        decided = _prediction_of(preds, decision.model_version) or latest
        _model(row, decided)
        row.label, row.updated_at, row.certified = row.model_label, decision.created_at, False
        row.source = "auto_accepted" if decision.action == "auto_accept" else "auto_rejected"
        if decision.action == "auto_accept":
            _certify(row, threshold_in_force(view.thresholds, decision.created_at), decided)
    elif latest is not None:
        row.label, row.source, row.updated_at, row.certified = _label_of(latest.label, row), "model_suggestion", \
            latest.created_at, False
    return row


def _label_of(stored: str | None, row: ExportRow) -> str | list[str] | list[dict[str, Any]] | None:
    """A stored label as exported: as it is, for a label-set task the set as a sorted list, for an
    NER project its spans (:func:`span_records`)."""
    if row.spans:
        return span_records(decode_spans(stored) or [], row.text) if stored is not None else None
    return decode_label_set(stored) if row.label_set else stored


def span_records(spans: Iterable[Sequence[Any]], text: str) -> list[dict[str, Any]]:
    """Spans ``(start, end, label)`` as exported: ``{"start", "end", "label", "text"}``, by offset."""
    return [{"start": int(s), "end": int(e), "label": str(lab), "text": text[int(s):int(e)]} for s, e, lab in
            sorted((int(s), int(e), str(lab)) for s, e, lab in spans)]


def _gold_set(gold: Any) -> list[str]:
    """A gold item's known label set: a list of labels, or an encoded set (or one label) as a string."""
    if isinstance(gold, list | tuple | set):
        return sorted({str(g) for g in gold})
    return decode_label_set(str(gold)) or []


def _model(row: ExportRow, prediction: Prediction | None) -> None:
    if prediction is not None:
        row.model_label, row.model_version, row.score = _label_of(prediction.label, row), \
            prediction.model_version, prediction.confidence


def _prediction_of(preds: Sequence[Prediction], model_version: str | None) -> Prediction | None:
    return next((p for p in reversed(preds) if p.model_version == model_version), None)


def threshold_in_force(history: Sequence[Dated[ThresholdsSnapshot]], at: datetime) -> ThresholdsSnapshot | None:
    """The newest threshold review written at or before ``at`` (``history`` oldest first), or ``None``."""
    k = bisect.bisect_right([d.at for d in history], at)
    return history[k - 1].snapshot if k else None


def _certify(row: ExportRow, review: ThresholdsSnapshot | None, prediction: Prediction | None = None) -> None:
    """An auto-accepted row's threshold, bound, and whether the review certified it (a label set:
    whether the review's rule clears the prediction, per-label thresholds included)."""
    if review is None:
        return
    row.threshold, row.bound = review.threshold, review.error_ucb
    if row.label_set:
        row.certified = bool(certifies(review) and row.score is not None and prediction is not None and clears(
            review.threshold, review.label_thresholds, float(row.score),
            probabilities={k: float(v) for k, v in (prediction.probabilities or {}).items() if k != CONTROLS_KEY},
            chosen=decode_label_set(prediction.label) or []))
        return
    row.certified = bool(review.meets_target and review.threshold is not None and review.threshold <= 1.0
                         and row.score is not None and row.score >= review.threshold)


def _answers(annotations: Sequence[Annotation], *, sets: bool = False) -> list[Answer]:
    ordered = sorted(annotations, key=lambda a: (a.remote_updated_at, a.id))
    read = _answer_set if sets else _answer_label
    return [Answer(a.annotator, read(a.value, a.status), a.status, a.remote_updated_at) for a in ordered]


def _span_answers(annotations: Sequence[Annotation], control: str, text: str) -> list[Answer]:
    """An NER project's answers: each annotator's spans (from ``extra["controls"]``); a skip ``None``."""
    ordered = sorted(annotations, key=lambda a: (a.remote_updated_at, a.id))
    return [Answer(a.annotator, span_records(((a.extra or {}).get("controls") or {}).get(control) or [], text)
                   if a.status == "submitted" else None, a.status, a.remote_updated_at) for a in ordered]


def _answer_set(value: Any, status: str) -> list[str] | None:
    """A label-set answer as a sorted list (``[]``: no label applies); a skip ``None``."""
    if status != "submitted":
        return None
    if isinstance(value, list | tuple):
        return sorted({str(v) for v in value})
    return decode_label_set(value) or [] if isinstance(value, str) else []


def _answer_label(value: Any, status: str) -> str | None:
    """One label as a string; a skip or an empty answer ``None``; anything else as JSON."""
    if status != "submitted" or value is None or value == []:
        return None
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _submitted(answers: Sequence[Answer]) -> int:
    return len({a.annotator for a in answers if a.status == "submitted"})


def _fields(item: Item, reserved: Sequence[str] = ()) -> dict[str, Any]:
    """The item's data fields as columns: its ``text`` is the text column already; a field named like
    one of the export's columns (or ``reserved``) becomes ``field_<name>``."""
    out: dict[str, Any] = {}
    for key, value in (item.data or {}).items():
        if key == "text" and value == item.text:
            continue
        out[f"field_{key}" if key in COLUMNS or key in reserved or key.startswith("field_") else key] = value
    return out


# ------------------------------------------------------------------------------------------------ rows -> files


def records(rows: Sequence[ExportRow]) -> list[dict[str, Any]]:
    """Rows as flat dicts in column order (item fields after ``text``), values as Python objects."""
    names = field_names(rows)
    out = []
    for r in rows:
        rec: dict[str, Any] = {"item_id": r.item_id, "version": r.version, "text": r.text}
        rec.update({name: r.fields.get(name) for name in names})
        rec["label"] = r.label
        if r.with_controls:
            rec[CONTROLS_COLUMN] = r.controls
        rec.update({"source": r.source, "settled": r.settled, "model_label": r.model_label,
                    "model_version": r.model_version, "score": r.score, "agreement": r.agreement,
                    "n_answers": r.n_answers,
                    "answers": [{"annotator": a.annotator, "label": a.label, "status": a.status,
                                 "answered_at": a.answered_at} for a in r.answers],
                    "threshold": r.threshold, "bound": r.bound, "certified": r.certified,
                    "settled_at": r.settled_at, "updated_at": r.updated_at})
        out.append(rec)
    return out


def field_names(rows: Iterable[ExportRow]) -> list[str]:
    """Every item field name that occurs, in first-seen order."""
    return list(dict.fromkeys(name for r in rows for name in r.fields))


def format_of(path: Path, fmt: str | None = None) -> list[str]:
    """The formats to write: ``fmt`` (``jsonl``, ``csv``, ``parquet`` or ``all``), else from the suffix."""
    if fmt is None:
        if path.suffix.lower() not in SUFFIXES:
            raise ValueError(f"cannot tell the format from {path.name!r}: use a .jsonl, .csv or .parquet suffix, "
                             "or --format")
        return [SUFFIXES[path.suffix.lower()]]
    if fmt == "all":
        return list(FORMATS)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)} or all")
    return [fmt]


def write(rows: Sequence[ExportRow], path: Path, fmt: str | None = None) -> list[Path]:
    """Write ``rows`` to ``path`` in each format :func:`format_of` names; several formats (or one
    that does not match the suffix) go to ``path`` with the format's suffix. Returns the files."""
    formats = format_of(path, fmt)
    written = []
    for f in formats:
        target = path if SUFFIXES.get(path.suffix.lower()) == f and len(formats) == 1 else path.with_suffix(f".{f}")
        target.parent.mkdir(parents=True, exist_ok=True)
        WRITERS[f](rows, target)
        written.append(target)
    return written


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def write_jsonl(rows: Sequence[ExportRow], path: Path) -> None:
    """One JSON object per line; times as ISO 8601 strings, answers a list of objects."""
    with path.open("w", encoding="utf-8") as fh:
        for rec in records(rows):
            fh.write(json.dumps(rec, ensure_ascii=False, default=_json_default, allow_nan=False) + "\n")


def _flat(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, default=_json_default)
    return "" if value is None else value


def write_csv(rows: Sequence[ExportRow], path: Path) -> None:
    """A header and one line per row; answers and structured fields as JSON strings, nulls empty."""
    recs = records(rows)
    columns = list(recs[0]) if recs else list(COLUMNS)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for rec in recs:
            writer.writerow([_flat(rec[c]) for c in columns])


def parquet_schema(rows: Sequence[ExportRow]) -> pa.Schema:
    """The export's Parquet schema: fixed columns, plus one per item field typed from its values."""
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    span = pa.struct([("start", pa.int64()), ("end", pa.int64()), ("label", pa.string()), ("text", pa.string())])
    label = pa.list_(span) if any(r.spans for r in rows) else \
        pa.list_(pa.string()) if any(r.label_set for r in rows) else pa.string()
    answer = pa.struct([("annotator", pa.string()), ("label", label), ("status", pa.string()),
                        ("answered_at", ts)])
    fixed = {"item_id": pa.string(), "version": pa.int64(), "text": pa.string(), "label": label,
             CONTROLS_COLUMN: pa.string(),
             "source": pa.string(), "settled": pa.bool_(), "model_label": label, "model_version": pa.string(),
             "score": pa.float64(), "agreement": pa.float64(), "n_answers": pa.int64(), "answers": pa.list_(answer),
             "threshold": pa.float64(), "bound": pa.float64(), "certified": pa.bool_(), "settled_at": ts,
             "updated_at": ts}
    names = field_names(rows)
    fields = {n: _arrow_type([r.fields.get(n) for r in rows]) for n in names}
    order = ["item_id", "version", "text", *names, *[c for c in COLUMNS if c not in ("item_id", "version", "text")]]
    if any(r.with_controls for r in rows):
        order.insert(order.index("label") + 1, CONTROLS_COLUMN)
    return pa.schema([(n, fields[n] if n in fields else fixed[n]) for n in order])


def _arrow_type(values: Sequence[Any]) -> pa.DataType:
    """A field's Parquet type: its values' one scalar type (ints with floats: float), else string
    (other values written as JSON)."""
    import pyarrow as pa

    kinds = {type(v) for v in values if v is not None}
    if kinds == {bool}:
        return pa.bool_()
    if kinds == {int}:
        return pa.int64()
    if kinds and kinds <= {int, float}:
        return pa.float64()
    return pa.string()


def _arrow_value(value: Any, dtype: pa.DataType) -> Any:
    import pyarrow as pa

    if value is None or not pa.types.is_string(dtype) or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def write_parquet(rows: Sequence[ExportRow], path: Path) -> None:
    """One Parquet file with :func:`parquet_schema`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema(rows)
    names = set(field_names(rows)) | {CONTROLS_COLUMN}  # the other controls' values as JSON text
    recs = [{k: _arrow_value(v, schema.field(k).type) if k in names else v for k, v in rec.items()}
            for rec in records(rows)]
    pq.write_table(pa.Table.from_pylist(recs, schema=schema), path)


WRITERS = {"jsonl": write_jsonl, "csv": write_csv, "parquet": write_parquet}


def counts(rows: Iterable[ExportRow]) -> dict[str, int]:
    """Rows per source, in :data:`SOURCES` order (sources with none left out)."""
    found: dict[str, int] = {}
    for r in rows:
        found[r.source] = found.get(r.source, 0) + 1
    return {s: found[s] for s in SOURCES if s in found}


def parse_since(value: str | None) -> datetime | None:
    """An ISO 8601 date or time (naive: UTC) as an aware datetime; ``None`` passes."""
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--since {value!r} is not an ISO 8601 date or time (e.g. 2025-01-31 or "
                         "2025-01-31T12:00:00+00:00)") from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)

