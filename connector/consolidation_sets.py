"""From stored answers to one label *set* per item (a multi-label control): consensus label by label.

:func:`set_answer_table` turns submitted annotations (each a list of labels, possibly empty) into the
set ratings array of :mod:`connector.agreement_sets` (items × annotators × labels, 0/1, ``-1`` for
no answer; an annotator's latest answer per item counts). :func:`consolidate_sets` settles each
label of each item as a yes/no question, by the task's :class:`~connector.consolidation.ConsensusPolicy`:
``majority`` (per-label majority vote with the policy's minimum agreement) or ``dawid_skene``
(per-label binary Dawid–Skene, :func:`connector.consensus.dawid_skene`, each annotator with a
2×2 confusion matrix per label). An item settles when every label does; its rows, send-backs and
adjudications follow :func:`connector.consolidation.consolidate`'s rules and shapes, except that
a settled row's ``label`` is the list of labels chosen (config order; possibly empty).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from connector.agreement import MISSING
from connector.agreement_sets import answered_mask, set_agreement_report
from connector.consensus import ConsensusResult, dawid_skene, majority_vote
from connector.consolidation import DISAGREEMENT_REASONS, SEND_BACK_REASONS, ConsensusPolicy

#: When labels of one item are unsettled for different reasons, the item's reason is the first here.
REASON_ORDER = ("no_answers", "too_few_answers", "tie", "low_agreement", "low_confidence")


@dataclass
class SetAnswerTable:
    """Submitted label sets as a set ratings array: ``Y[i, a, l]`` is 1 when annotator
    ``annotators[a]`` gave item ``item_ids[i]`` label ``labels[l]``, 0 when not, ``-1`` on every
    label when they did not answer it. ``invalid`` and ``skipped`` as in
    :class:`~connector.consolidation.AnswerTable`."""

    item_ids: np.ndarray
    annotators: list[str]
    labels: list[str]
    Y: np.ndarray
    invalid: list[tuple[int, str, str]] = field(default_factory=list)
    skipped: dict[int, int] = field(default_factory=dict)

    def row_of(self) -> dict[int, int]:
        return {int(i): r for r, i in enumerate(self.item_ids)}


def set_answer_table(annotations: Iterable[Any], labels: Sequence[str]) -> SetAnswerTable:
    """Build the set ratings array from annotation rows (``item_id, annotator, value, status,
    remote_updated_at``; ``value`` a list of labels, an empty list meaning none applies, or one
    label). Only ``submitted`` answers count, the latest per annotator and item; an answer naming a
    label outside ``labels`` is left out and listed in ``invalid``."""
    index = {label: k for k, label in enumerate(labels)}
    latest: dict[tuple[int, str], Any] = {}
    skips: dict[int, set[str]] = {}
    for a in annotations:
        if a.status == "skipped":
            skips.setdefault(int(a.item_id), set()).add(str(a.annotator))
        if a.status != "submitted":
            continue
        key = (int(a.item_id), str(a.annotator))
        if key not in latest or a.remote_updated_at >= latest[key].remote_updated_at:
            latest[key] = a
    invalid: list[tuple[int, str, str]] = []
    cells: list[tuple[int, str, list[int]]] = []
    for (item_id, annotator), a in latest.items():
        value = a.value if isinstance(a.value, list) else [] if a.value is None else [a.value]
        unknown = sorted({str(v) for v in value} - index.keys())
        if unknown:
            invalid.append((item_id, annotator, f"unknown labels {unknown} in {value!r}"))
        else:
            cells.append((item_id, annotator, [index[str(v)] for v in value]))
    item_ids = np.array(sorted({c[0] for c in cells}), dtype=np.int64)
    annotators = sorted({c[1] for c in cells})
    rows = {int(i): r for r, i in enumerate(item_ids)}
    cols = {name: c for c, name in enumerate(annotators)}
    Y = np.full((len(item_ids), len(annotators), len(labels)), MISSING, dtype=np.int8)
    for item_id, annotator, codes in cells:
        cell = Y[rows[item_id], cols[annotator]]
        cell[:] = 0
        cell[codes] = 1
    answered = {key[0] for key in latest}
    skipped = {i: len(who) for i, who in sorted(skips.items()) if i not in answered}
    return SetAnswerTable(item_ids, annotators, list(labels), Y, invalid, skipped)


@dataclass
class SetConsolidation:
    """What :func:`consolidate_sets` decided. ``rows``, ``send_back``, ``adjudicate`` as in
    :class:`~connector.consolidation.Consolidation` (a row's ``label`` is a list of labels, and
    ``unsettled_labels`` names the labels that kept it unsettled); ``per_label``: the consensus of
    each label's yes/no question (class 1 is "the label applies"); ``gold``: item id -> label set."""

    table: SetAnswerTable
    per_label: list[ConsensusResult]
    rows: list[dict[str, Any]]
    send_back: list[tuple[int, int, str]]
    gold: dict[int, list[str]]
    adjudicate: list[tuple[int, str]] = field(default_factory=list)

    def chosen(self) -> np.ndarray:
        """``(n_items, n_labels)`` int8: 1 where the label settled as applying, 0 where it settled as
        not applying, ``-1`` where it did not settle (gold items as in the table's consensus)."""
        return np.stack([r.label for r in self.per_label], axis=1).astype(np.int8) if self.per_label \
            else np.zeros((len(self.table.item_ids), 0), dtype=np.int8)


def _per_label(table: SetAnswerTable, policy: ConsensusPolicy) -> list[ConsensusResult]:
    results: list[ConsensusResult] = []
    for j in range(len(table.labels)):
        R = table.Y[:, :, j].astype(np.int64)
        if policy.method == "dawid_skene" and len(table.item_ids):
            result = dawid_skene(R, n_classes=2, min_confidence=policy.min_confidence)
            too_few = (result.n_answers < policy.min_answers) & (result.n_answers > 0)
            for i in np.flatnonzero(too_few):
                result.label[i] = MISSING
                result.reason[i] = "too_few_answers"
        else:
            result = majority_vote(R, n_classes=2, min_answers=policy.min_answers,
                                   min_agreement=policy.min_agreement)
        results.append(result)
    return results


def consolidate_sets(table: SetAnswerTable, policy: ConsensusPolicy, *,
                     gold: Mapping[int, Sequence[str]] | None = None,
                     per_item_overlap: bool = True) -> SetConsolidation:
    """Settle each answered item's label set, label by label (see the module). An item settles when
    every label settles; its ``agreement`` (and ``confidence``) is the least of its labels' (the
    winning side's share of the answers with ``majority``, its posterior with ``dawid_skene``).
    Gold items (``gold``: item id -> known label set) keep it (method ``gold``). Unsettled items are
    sent back or left for adjudication exactly as :func:`connector.consolidation.consolidate` does."""
    labels = table.labels
    known = set(labels)
    gold_sets = {int(i): [label for label in labels if label in {str(v) for v in vs}]
                 for i, vs in (gold or {}).items() if {str(v) for v in vs} <= known}
    per_label = _per_label(table, policy)
    n_answers = answered_mask(table.Y).sum(axis=1) if table.Y.size else np.zeros(len(table.item_ids), dtype=np.int64)
    rows: list[dict[str, Any]] = []
    send_back: list[tuple[int, int, str]] = []
    adjudicate: list[tuple[int, str]] = []
    for r, item_id in enumerate(table.item_ids.tolist()):
        n = int(n_answers[r])
        shares = [float(res.agreement[r]) for res in per_label if np.isfinite(res.agreement[r])]
        agreement = min(shares) if shares else None
        if item_id in gold_sets:
            rows.append({"item_id": item_id, "label": gold_sets[item_id], "status": "settled", "method": "gold",
                         "n_answers": n, "agreement": agreement, "confidence": 1.0, "reason": "gold",
                         "unsettled_labels": []})
            continue
        reasons = {labels[j]: res.reason[r] for j, res in enumerate(per_label)}
        unsettled = [label for label, why in reasons.items() if why != "settled"]
        if not unsettled:
            chosen = [labels[j] for j, res in enumerate(per_label) if res.label[r] == 1]
            rows.append({"item_id": item_id, "label": chosen, "status": "settled", "method": policy.method,
                         "n_answers": n, "agreement": agreement, "confidence": agreement, "reason": "settled",
                         "unsettled_labels": []})
            continue
        reason = min((reasons[label] for label in unsettled),
                     key=lambda why: REASON_ORDER.index(why) if why in REASON_ORDER else len(REASON_ORDER))
        if reason in SEND_BACK_REASONS and n < policy.max_answers and (
                per_item_overlap or reason not in DISAGREEMENT_REASONS):
            send_back.append((item_id, max(n + 1, policy.min_answers), reason))
        elif reason in SEND_BACK_REASONS:
            reason = f"needs_adjudication ({reason} after {n} answers)"
            adjudicate.append((item_id, reason))
        rows.append({"item_id": item_id, "label": None, "status": "unsettled", "method": policy.method,
                     "n_answers": n, "agreement": agreement, "confidence": None, "reason": reason,
                     "unsettled_labels": unsettled})
    for item_id, skips in table.skipped.items():
        if policy.on_skip == "final":
            reason = "skipped (final)"
        elif skips < policy.max_answers:
            reason = "skipped"
            send_back.append((item_id, policy.min_answers, reason))
        else:
            reason = f"needs_adjudication (skipped after {skips} answers)"
            adjudicate.append((item_id, reason))
        rows.append({"item_id": item_id, "label": None, "status": "unsettled", "method": policy.method,
                     "n_answers": 0, "agreement": None, "confidence": None, "reason": reason,
                     "unsettled_labels": []})
    return SetConsolidation(table, per_label, rows, send_back, gold_sets, adjudicate)


def set_annotator_quality(consolidation: SetConsolidation, policy: ConsensusPolicy) -> list[dict[str, Any]]:
    """:func:`connector.consolidation.annotator_quality` for label sets, one row per annotator: an
    answer is right when its whole set equals the gold set (``gold_*``) or the settled set
    (``consensus_*``: settled non-gold items at least two people answered); ``flagged`` as there."""
    table, gold = consolidation.table, consolidation.gold
    Y = table.Y
    answered = answered_mask(Y) if Y.size else np.zeros((len(table.item_ids), len(table.annotators)), dtype=bool)
    rows = table.row_of()
    settled = {int(r["item_id"]): r["label"] for r in consolidation.rows
               if r["status"] == "settled" and r["method"] != "gold" and r["item_id"] in rows}
    shared = [rows[i] for i in settled if answered[rows[i]].sum() >= 2]
    truth = {rows[i]: np.isin(table.labels, gold[i]) for i in gold if i in rows}
    truth |= {rows[i]: np.isin(table.labels, settled[i]) for i in settled}
    out: list[dict[str, Any]] = []
    for a, name in enumerate(table.annotators):
        def right(r: int, annotator: int = a) -> bool:
            return bool((Y[r, annotator].astype(bool) == truth[r]).all())

        on_gold = [rows[i] for i in gold if i in rows and answered[rows[i], a]]
        on_shared = [r for r in shared if answered[r, a]]
        gold_correct = sum(right(r) for r in on_gold)
        gold_accuracy = gold_correct / len(on_gold) if on_gold else None
        out.append({
            "annotator": name, "answers": int(answered[:, a].sum()), "gold_n": len(on_gold),
            "gold_correct": gold_correct, "gold_accuracy": gold_accuracy, "consensus_n": len(on_shared),
            "consensus_agreement": sum(right(r) for r in on_shared) / len(on_shared) if on_shared else None,
            "flagged": bool(gold_accuracy is not None and len(on_gold) >= policy.gold_min_answers
                            and gold_accuracy < policy.gold_min_accuracy),
        })
    return out


def set_agreement_snapshot(table: SetAnswerTable) -> dict[str, Any]:
    """:func:`connector.agreement_sets.set_agreement_report` over the table, JSON-ready (NaN -> None)."""
    if not len(table.item_ids):
        return {"n_items": 0, "n_annotators": 0, "annotators": [], "labels": table.labels}
    report = set_agreement_report(table.Y, labels=table.labels, annotators=table.annotators)
    return _jsonable(report)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
