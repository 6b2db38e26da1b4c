"""The metrics job's agreement snapshot for every control of a task: the primary one (one label or a
label set) and each other control (one label, a label set, or entity spans).

Only the annotators' answers to current items count: an adjudicator's answer (:func:`split_answers`)
is no independent vote, and an answer to an older version of an item was about another text. The
other controls' answers are read from each answer's ``extra["controls"]`` by
:func:`sync.controls.control_answers`.

- one label: :func:`connector.consolidation.agreement_snapshot` (Fleiss' and Cohen's kappa,
  Krippendorff's alpha, percent agreement)
- a label set: :func:`connector.agreement_sets.set_agreement_report` (Krippendorff's alpha with
  the MASI distance, whole-set exact agreement, and per label the one-label statistics of its
  yes/no question)
- spans: :func:`connector.span_consensus.pairwise_span_agreement` (mean pairwise span F1 over the
  items both annotators of a pair answered, exact match, per label and micro)

Undefined statistics (NaN) are ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from connector.agreement_sets import set_agreement_report
from connector.consolidation import agreement_snapshot, answer_table
from connector.consolidation_sets import SetAnswerTable, set_answer_table
from connector.snapshots import AgreementSnapshot, ControlAgreement, LabelAgreement
from connector.span_consensus import pairwise_span_agreement
from connector.store import StateStore
from connector.task_spec import ControlSpec, TaskSpec
from sync.adjudication import split_answers
from sync.controls import control_answers

#: the one-label statistics a one-label control's agreement keeps
ONE_LABEL_KEYS = ("n_items", "n_annotators", "n_answers", "n_pairable_items", "percent_agreement", "fleiss_kappa",
                  "krippendorff_alpha", "mean_cohen_kappa")


def current_answers(store: StateStore, annotations: Iterable[Any] | None = None) -> list[Any]:
    """The annotators' answers (every stored one by default) to current item versions."""
    ordinary, _ = split_answers(store, store.annotations.list() if annotations is None else annotations)
    items = store.items.get_many({int(a.item_id) for a in ordinary})
    return [a for a in ordinary if (it := items.get(int(a.item_id))) is not None and it.is_current]


def task_agreement(store: StateStore, spec: TaskSpec, annotations: Iterable[Any] | None = None) -> AgreementSnapshot:
    """The agreement snapshot over ``annotations`` (default: every stored answer): the primary
    control's (a label set's in ``masi_alpha``/``per_label``) and each other control's in ``controls``."""
    answers = current_answers(store, annotations)
    primary = spec.primary
    controls = {c.name: control_agreement(answers, spec, c) for c in spec.secondary}
    if spec.spans_primary:  # an NER project: its spans' agreement under its own name, the counts at the top
        own = control_agreement(answers, spec, primary)
        payload = {"n_items": own.n_items, "n_annotators": own.n_annotators, "n_answers": own.n_answers,
                   "n_pairable_items": own.n_pairable_items, "labels": list(spec.labels)}
        controls = {primary.name: own, **controls}
    elif spec.kind == "label" and spec.multi_label:
        payload = set_snapshot(set_answer_table(answers, spec.labels))
    else:
        payload = agreement_snapshot(answer_table(answers, spec.labels))
    return AgreementSnapshot.model_validate({**payload, "control": primary.name, "controls": controls})


def set_snapshot(table: SetAnswerTable) -> dict[str, Any]:
    """The snapshot's fields for a label-set table: counts, ``masi_alpha``, ``exact_agreement`` and
    ``per_label`` (the one-label statistics left out)."""
    if not len(table.item_ids):
        return {"n_items": 0, "n_annotators": 0, "annotators": [], "labels": table.labels}
    report = set_agreement_report(table.Y, labels=table.labels, annotators=table.annotators)
    return {"n_items": report["n_items"], "n_annotators": report["n_annotators"], "n_answers": report["n_answers"],
            "n_pairable_items": report["n_pairable_items"], "annotators": report["annotators"],
            "labels": report["labels"], "masi_alpha": _finite(report["krippendorff_alpha_masi"]),
            "exact_agreement": _finite(report["exact_agreement"]),
            "per_label": [_label_part(row) for row in report["per_label"]]}


def control_agreement(answers: Sequence[Any], spec: TaskSpec, control: ControlSpec) -> ControlAgreement:
    """Agreement on ``control`` from the (current, annotators') ``answers``."""
    given = control_answers(answers, spec, control)
    if control.kind == "spans":
        return span_agreement(given, control.labels)
    if control.multi_label:
        return ControlAgreement.model_validate({"kind": "sets", **set_snapshot(set_answer_table(given, control.labels))})
    one = agreement_snapshot(answer_table(given, control.labels))
    return ControlAgreement.model_validate({"kind": "labels", **{k: one[k] for k in ONE_LABEL_KEYS if k in one}})


def span_answers(answers: Iterable[Any]) -> dict[int, dict[str, list[tuple[int, int, str]]]]:
    """Item id -> annotator -> spans, each annotator's latest answer (``control_answers`` of a spans control)."""
    latest: dict[tuple[int, str], Any] = {}
    for a in answers:
        key = (int(a.item_id), str(a.annotator))
        if key not in latest or str(a.remote_updated_at) >= str(latest[key].remote_updated_at):
            latest[key] = a
    out: dict[int, dict[str, list[tuple[int, int, str]]]] = {}
    for (item_id, annotator), a in sorted(latest.items()):
        out.setdefault(item_id, {})[annotator] = [(int(s), int(e), str(lab)) for s, e, lab in a.value]
    return out


def span_agreement(answers: Iterable[Any], labels: Sequence[str]) -> ControlAgreement:
    """Mean pairwise span F1 (exact match) per label and micro over the span answers."""
    by_item = span_answers(answers)
    scores = pairwise_span_agreement(by_item, labels=labels)
    pairs = int(scores.pop("pairs"))
    return ControlAgreement(kind="spans", n_items=len(by_item),
                            n_annotators=len({k for by in by_item.values() for k in by}),
                            n_answers=sum(len(by) for by in by_item.values()),
                            n_pairable_items=sum(len(by) >= 2 for by in by_item.values()),
                            span_f1={k: _finite(v) for k, v in scores.items()}, pairs=pairs)


def _label_part(row: dict[str, Any]) -> LabelAgreement:
    return LabelAgreement(label=str(row["label"]), fleiss_kappa=_finite(row["fleiss_kappa"]),
                          mean_cohen_kappa=_finite(row["mean_cohen_kappa"]),
                          krippendorff_alpha=_finite(row["krippendorff_alpha"]),
                          percent_agreement=_finite(row["percent_agreement"]),
                          n_items=int(row["n_pairable_items"]), n_yes=int(row["n_yes"]))


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
