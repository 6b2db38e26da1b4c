"""A task's controls in the sync: what is stored of each control's prediction, what is pushed as a
suggestion, and each control's answers and settled labels.

The primary control's prediction is the prediction row (``label``: one label, or a label set
encoded by :func:`connector.label_sets.encode_label_set`; ``confidence``: its calibrated
probability, or the set's task score; ``probabilities``: per label). The other controls' go in the
same row's ``probabilities`` under :data:`connector.task_spec.CONTROLS_KEY`, one entry per control:
``{"labels": [...], "probabilities": {...}, "score": s, "model_version": "v3"}``; a span control's
``{"kind": "spans", "spans": [{"start", "end", "label", "score"}], "score": s, "missed": m,
"model_version": "v2"}`` (offsets on the item's text, ``s = min(least confident span, 1 - m)``).
An NER project's primary span control: ``label`` its spans encoded by
:func:`connector.label_sets.encode_spans`, ``confidence`` the span task score, and its entry under
:data:`~connector.task_spec.CONTROLS_KEY` as another span control's.

The primary control's answer is an annotation's ``value``; the others' are in its ``extra`` under
``"controls"`` (control name -> labels; a span control's: ``[[start, end, label], ...]``, offsets checked
against the text and repaired by the tool), as the tools read them; a span control's always there,
the primary one's too (its ``value`` then empty). Only the primary control's
settled label is stored (``labels``); the others settle from the stored answers whenever they are
needed (:func:`settle_control`), by the same consensus policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from connector.consolidation import ConsensusPolicy, answer_table, consolidate
from connector.consolidation_sets import consolidate_sets, set_answer_table
from connector.label_sets import decode_label_set, encode_label_set, encode_spans
from connector.labeling_config import ChoicesControl, LabelsControl
from connector.prediction import ControlPrediction, ls_prediction
from connector.span_consensus import MatchMode, consolidate_spans
from connector.spans import Span, to_label_studio
from connector.task_spec import CONTROLS_KEY, ControlSpec, TaskSpec


class NoControlModel(RuntimeError):
    """The ML backend has no model for a control the task needs predicted."""


def prediction_row(spec: TaskSpec, output: Mapping[str, Any]) -> dict[str, Any]:
    """The store's prediction row (less ``item_id``) for one text, from the backend's
    ``/v1/predict`` answer (its main model's fields and its ``controls``)."""
    primary = spec.primary
    controls = output.get("controls") or {}
    if spec.model_dir(primary) is None:
        if output.get("label") is None:
            raise NoControlModel(f"the ML backend has no main model, which serves control {primary.name!r}")
        row = {"model_version": output["model_version"], "label": output["label"],
               "confidence": float(output["confidence"]), "probabilities": dict(output["probabilities"])}
    else:
        own = controls.get(primary.name)
        if own is None:
            raise NoControlModel(f"the ML backend has no model for control {primary.name!r} yet (it serves "
                                 f"{sorted(controls) or 'no control model'})")
        if primary.kind == "spans":  # an NER project: the spans as the label, the entry with the others
            if own.get("kind") != "spans":
                raise NoControlModel(f"the ML backend's model for control {primary.name!r} is not a span model")
            entry = _control_entry(own)
            return {"model_version": own["model_version"], "label": encode_spans(entry["spans"]),
                    "confidence": float(entry["score"]),
                    "probabilities": {CONTROLS_KEY: {primary.name: entry} | {
                        c.name: _control_entry(controls[c.name]) for c in spec.secondary if c.name in controls}}}
        labels = [str(label) for label in own["labels"]]
        row = {"model_version": own["model_version"],
               "label": encode_label_set(labels) if primary.multi_label else labels[0],
               "confidence": float(own["score"]), "probabilities": dict(own["probabilities"])}
    others = {c.name: _control_entry(controls[c.name]) for c in spec.secondary if c.name in controls}
    if others:
        row["probabilities"][CONTROLS_KEY] = others
    return row


def _control_entry(out: Mapping[str, Any]) -> dict[str, Any]:
    """What is stored of one other control's ``/v1/predict`` output."""
    if out.get("kind") == "spans":
        return {"kind": "spans", "spans": [{"start": int(sp["start"]), "end": int(sp["end"]), "label": str(sp["label"]),
                                            "score": None if sp.get("score") is None else float(sp["score"])}
                                           for sp in out.get("spans") or []],
                "score": float(out["score"]), "missed": float(out.get("missed") or 0.0),
                "model_version": out["model_version"]}
    return {"labels": list(out["labels"]), "probabilities": dict(out["probabilities"]), "score": float(out["score"]),
            "model_version": out["model_version"]}


def primary_probabilities(probabilities: Mapping[str, Any]) -> dict[str, float]:
    """A stored prediction's probabilities of the primary control (the other controls' left out)."""
    return {k: float(v) for k, v in probabilities.items() if k != CONTROLS_KEY}


def suggestion(spec: TaskSpec, config: Mapping[str, ChoicesControl | LabelsControl], pred: Any,
               text: str | None = None) -> tuple[list[dict[str, Any]], float] | None:
    """What to pre-annotate from a stored prediction: one result item per control the prediction
    covers (``config``: the labeling config's controls by name), each with its score and per-label
    scores (a label set the model thinks empty as an empty ``choices`` item, which Label Studio takes
    and Argilla is not sent), and the task score (its least sure control's). A span control (given
    the item's ``text``) adds one ``labels`` item per span, its ``text`` quoting ``text[start:end]``
    and its ``score`` the span's; its task score counts too."""
    primary = spec.primary
    parts: list[ControlPrediction] = []
    if not spec.spans_primary:  # an NER project's spans are the entry under CONTROLS_KEY, as another span control's
        probs = primary_probabilities(pred.probabilities or {})
        chosen = decode_label_set(pred.label) or []
        parts.append(_part(config[primary.name], chosen, probs, float(pred.confidence)))
    span_items: list[dict[str, Any]] = []
    scores: list[float] = []
    for c in spec.control_specs if spec.spans_primary else spec.secondary:
        entry = ((pred.probabilities or {}).get(CONTROLS_KEY) or {}).get(c.name)
        if entry is None or c.name not in config:
            continue
        if entry.get("kind") == "spans":
            control = config[c.name]
            if text is None or not isinstance(control, LabelsControl):
                continue
            known = set(control.labels)
            spans = [Span(sp["start"], sp["end"], sp["label"], sp.get("score")) for sp in entry["spans"]
                     if sp["label"] in known]
            span_items.extend(to_label_studio(text, spans, from_name=control.from_name, to_name=control.to_name))
            scores.append(float(entry["score"]))
        else:
            parts.append(_part(config[c.name], entry["labels"], entry["probabilities"], float(entry["score"])))
    made = ls_prediction(parts, pred.model_version, keep_empty=True) if parts else {"result": []}
    result = made["result"] + span_items  # an empty set is the model's answer too
    if not result:
        return None
    return result, float(min([made["score"], *scores] if parts else scores))


def _part(control: ChoicesControl, chosen: Iterable[str], probs: Mapping[str, Any], score: float) -> ControlPrediction:
    wanted = set(chosen)
    return ControlPrediction(control, tuple(label for label in control.labels if label in wanted),
                             {label: float(probs[label]) for label in control.labels if label in probs}, score)


# -- answers and settled labels per control ------------------------------------------------------

class _Answer:
    """An annotation row seen through one control: its ``value`` is that control's labels."""

    __slots__ = ("annotator", "item_id", "remote_updated_at", "status", "value")

    def __init__(self, a: Any, value: Any) -> None:
        self.item_id, self.annotator, self.status = a.item_id, a.annotator, a.status
        self.remote_updated_at, self.value = a.remote_updated_at, value


def control_answers(annotations: Iterable[Any], spec: TaskSpec, control: ControlSpec) -> list[_Answer]:
    """The answers to ``control``: the primary control's as they are, another's from each answer's
    ``extra["controls"]`` (an answer that did not give one is left out for a one-label control: an
    empty ``<Choices>`` is no answer; for a multi-label control it is the empty set)."""
    out = []
    for a in annotations:
        if control.kind == "spans":  # a skip or an answer without the control says nothing about the spans
            given = ((a.extra or {}).get("controls") or {}).get(control.name) if isinstance(a.extra, dict) else None
            if a.status == "submitted" and given is not None:
                out.append(_Answer(a, [tuple(t) for t in given]))
            continue
        if control.name == spec.primary.name:
            out.append(_Answer(a, a.value))
            continue
        given = ((a.extra or {}).get("controls") or {}).get(control.name) if isinstance(a.extra, dict) else None
        if a.status == "skipped":
            out.append(_Answer(a, []))
        elif given is None:
            continue
        elif control.multi_label or given:
            out.append(_Answer(a, list(given)))
    return out


def settle_control(annotations: Iterable[Any], spec: TaskSpec, control: ControlSpec,
                   policy: ConsensusPolicy) -> dict[int, str | list[str]]:
    """Item id -> the label (a one-label control) or label set (multi-label) ``control`` settles on,
    by ``policy`` (``crowdlab`` settles as ``dawid_skene``: the stored prediction is the primary
    control's); unsettled items are left out."""
    answers = control_answers(annotations, spec, control)
    if control.kind == "spans":
        return settle_spans(answers, min_answers=policy.min_answers or 1)
    if control.multi_label:
        method = policy.method if policy.method in ("majority", "dawid_skene") else "dawid_skene"
        result = consolidate_sets(set_answer_table(answers, control.labels), policy.model_copy(update={"method": method}))
    else:
        method = "dawid_skene" if policy.method == "crowdlab" else policy.method
        result = consolidate(answer_table(answers, control.labels), policy.model_copy(update={"method": method}))
    return {int(r["item_id"]): r["label"] for r in result.rows if r["status"] == "settled"}


def settle_spans(answers: Iterable[Any], *, min_answers: int = 1, mode: MatchMode = "overlap",
                 min_share: float = 0.5) -> dict[int, list[list[Any]]]:
    """Item id -> its settled spans ``[[start, end, label], ...]`` from the span answers (each
    annotator's latest; an answer's ``value`` is its ``(start, end, label)`` spans): majority per span
    (:func:`connector.span_consensus.consolidate_spans`: a span kept when more than ``min_share`` of
    the item's annotators drew it, offsets the ones most of them drew); items with fewer than
    ``min_answers`` answers are left out (an empty list is an item settled on no entity)."""
    latest: dict[int, dict[str, Any]] = {}
    for a in answers:
        mine = latest.setdefault(int(a.item_id), {})
        if a.annotator not in mine or str(a.remote_updated_at) >= str(mine[a.annotator].remote_updated_at):
            mine[a.annotator] = a
    out: dict[int, list[list[Any]]] = {}
    for item_id, by_annotator in latest.items():
        if len(by_annotator) < min_answers:
            continue
        drawn = [[Span(int(s), int(e), str(lab)) for s, e, lab in by_annotator[k].value] for k in sorted(by_annotator)]
        out[item_id] = [[s.start, s.end, s.label] for s in consolidate_spans(drawn, mode=mode, min_share=min_share)]
    return out


def stored_label(control: ControlSpec, label: str | list[Any]) -> str:
    """A settled label as the ``labels`` table stores it (a span set: sorted ``[start, end, label]``)."""
    if control.kind == "spans":
        return encode_spans(label)
    return encode_label_set(label) if control.multi_label else str(label)


# -- adjudication of label sets -------------------------------------------------------------------

def apply_set_verdicts(rows: Sequence[Mapping[str, Any]], verdicts: Mapping[int, Any],
                       labels: Sequence[str]) -> tuple[list[dict[str, Any]], list[tuple[int, str, str]]]:
    """:func:`connector.consolidation.apply_verdicts` for a label set: an adjudicator's answer of
    known labels (possibly none) settles its item on that set (stored encoded), method ``adjudicated``."""
    from connector.consolidation import ADJUDICATED

    known = set(labels)
    out: list[dict[str, Any]] = []
    invalid: list[tuple[int, str, str]] = []
    for row in rows:
        verdict = verdicts.get(int(row["item_id"]))
        if verdict is None or row["method"] == "gold":
            out.append(dict(row))
            continue
        value = verdict.value if isinstance(verdict.value, list) else [] if verdict.value is None else [verdict.value]
        if verdict.status == "skipped":
            out.append({**row, "reason": f"{row['reason']}; skipped by the adjudicator"}
                       if row["status"] == "unsettled" else dict(row))
        elif not {str(v) for v in value} <= known:
            invalid.append((int(row["item_id"]), str(verdict.annotator), f"unknown labels in {value!r}"))
            out.append(dict(row))
        else:
            out.append({**row, "label": encode_label_set(str(v) for v in value), "status": "settled",
                        "method": ADJUDICATED, "confidence": None, "reason": f"adjudicated by {verdict.annotator}",
                        "actor": str(verdict.annotator)})
    return out, invalid


def set_conflict_summaries(table: Any, item_ids: Iterable[int]) -> dict[int, str]:
    """Item id -> its answers for the adjudicator, one distinct set a line, most given first:
    ``politics, sport: 2 (alice, bob)`` (``(none)`` for the empty set); skips counted."""
    import numpy as np

    rows = table.row_of()
    out: dict[int, str] = {}
    for item_id in item_ids:
        lines = []
        if item_id in rows:
            by_set: dict[tuple[str, ...], list[str]] = {}
            for a, cell in enumerate(table.Y[rows[item_id]]):
                if (cell >= 0).all():
                    chosen = tuple(table.labels[j] for j in np.flatnonzero(cell == 1))
                    by_set.setdefault(chosen, []).append(table.annotators[a])
            for chosen, names in sorted(by_set.items(), key=lambda kv: (-len(kv[1]), kv[0])):
                lines.append(f"{', '.join(chosen) or '(none)'}: {len(names)} ({', '.join(names)})")
        if skips := table.skipped.get(item_id):
            lines.append(f"skipped: {skips}")
        out[item_id] = "\n".join(lines) or "no answers"
    return out
