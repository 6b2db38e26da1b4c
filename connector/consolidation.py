"""From stored answers to one label per item: consensus, annotator quality and agreement.

:func:`answer_table` turns the store's submitted annotations into the ratings matrix of
:mod:`connector.agreement` (items × annotators, class codes, ``-1`` missing; an annotator's latest
answer per item counts). :func:`consolidate` settles each item by the task's
:class:`ConsensusPolicy` and says which items need more answers and which need an adjudicator;
:func:`apply_verdicts` lets an adjudicator's answer (:func:`latest_verdicts`) settle an item;
:func:`annotator_quality` scores each annotator against gold items and against the consensus;
:func:`model_probabilities` picks the model's class probabilities per item for the ``crowdlab`` method.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from connector.agreement import MISSING, agreement_report
from connector.consensus import ConsensusResult, crowdlab, dawid_skene, majority_vote

log = logging.getLogger(__name__)

#: Reasons for which an unsettled item is sent back for another answer.
SEND_BACK_REASONS = frozenset({"tie", "low_agreement", "too_few_answers", "low_confidence"})
#: Reasons that are a disagreement: where the tool cannot ask one item for another answer, these go
#: to adjudication at once.
DISAGREEMENT_REASONS = frozenset({"tie", "low_agreement", "low_confidence"})
#: The method of a label an adjudicator's answer settled.
ADJUDICATED = "adjudicated"


class ConsensusPolicy(BaseModel):
    """How an item's label is settled (the task file's ``[consensus]`` table).

    - ``method``: ``majority`` (majority vote with a minimum agreement), ``dawid_skene``
      (annotators weighted by their estimated confusion matrices) or ``crowdlab`` (cleanlab's
      CROWDLAB: the model's probabilities for the item, from the prediction that routed it, count
      as one more rater, weighted against the annotators by how often each agrees with the others).
      ``crowdlab`` settles an item without a stored prediction, and every item while it cannot run
      (fewer than two annotators, no item with two answers, a majority vote all of one class), by
      Dawid–Skene, and its row's method says so. Pick it when the model is about as accurate as
      one annotator or better. Measured (``benchmarks/consensus.py``: 600 items, 3 simulated answers each, annotators right 60–90 %,
      out-of-fold model probabilities): on BBC News (model 93–95 % right) CROWDLAB labelled 96–99 %
      of the items right, majority 84–95 % of the items it settled (it leaves ties) and Dawid–Skene
      66–89 %; on Rotten Tomatoes (model 64–71 %, no better than an annotator) it was within 1 % of
      majority at 60 % annotators and 2–5 % above it otherwise; it beat Dawid–Skene in 28 of 30
      runs (2 tied). The model's own errors can then reach the training labels: keep ``majority``
      (or ``dawid_skene`` with many answers per annotator) where they must not.
    - ``min_answers``: answers an item needs before it can settle.
    - ``min_agreement``: share of an item's answers the winner needs (majority vote).
    - ``min_confidence``: posterior the winner needs (Dawid–Skene, and ``crowdlab``'s fallback).
    - ``min_quality``: CROWDLAB consensus quality score the winner needs (``crowdlab``; the score is
      the winner's share of a weighted vote of model and annotators, not a calibrated probability,
      and rarely above 0.7 with three answers). At 0.5 it settled 54–96 % of the measured items
      (99.8–100 % right on BBC News, 68–90 % on Rotten Tomatoes); 0.6 settled 22–64 %.
    - ``max_answers``: an item still unsettled with this many answers goes to adjudication
      (reason ``needs_adjudication``) instead of being sent back again: the sync pushes it to the
      task's adjudication project, and the adjudicator's answer settles it (method ``adjudicated``).
    - ``gold_min_accuracy`` / ``gold_min_answers``: an annotator whose accuracy on at least
      ``gold_min_answers`` gold items is below ``gold_min_accuracy`` is flagged.
    - ``on_skip``: an item whose only answers are skips is ``send_back`` (for another answer,
      until it has ``max_answers`` skips: then it is left for adjudication) or ``final`` (the skip
      is its last answer: unsettled, reason ``skipped (final)``, not sent back).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["majority", "dawid_skene", "crowdlab"] = "majority"
    min_answers: int = Field(1, ge=1)
    min_agreement: float = Field(0.5, ge=0.0, le=1.0)
    min_confidence: float = Field(0.9, ge=0.0, le=1.0)
    min_quality: float = Field(0.5, ge=0.0, le=1.0)
    max_answers: int = Field(5, ge=1)
    gold_min_accuracy: float = Field(0.8, ge=0.0, le=1.0)
    gold_min_answers: int = Field(5, ge=1)
    on_skip: Literal["send_back", "final"] = "send_back"


@dataclass
class AnswerTable:
    """Submitted answers as a ratings matrix: ``R[i, a]`` is annotator ``annotators[a]``'s class
    code (an index into ``labels``) for item ``item_ids[i]``, ``-1`` when missing. ``invalid``
    lists answers left out, as ``(item_id, annotator, why)``; ``skipped``: items with no submitted
    answer -> how many annotators skipped them."""

    item_ids: np.ndarray
    annotators: list[str]
    labels: list[str]
    R: np.ndarray
    invalid: list[tuple[int, str, str]] = field(default_factory=list)
    skipped: dict[int, int] = field(default_factory=dict)

    def row_of(self) -> dict[int, int]:
        return {int(i): r for r, i in enumerate(self.item_ids)}


def answer_table(annotations: Iterable[Any], labels: Sequence[str]) -> AnswerTable:
    """Build the ratings matrix from annotation rows (``item_id, annotator, value, status,
    remote_updated_at``). Only ``submitted`` answers count; of several answers by one annotator to
    one item the latest counts. An answer that is not exactly one known label is left out and
    listed in ``invalid`` (it loses nothing: the stored annotation stays). Items with ``skipped``
    answers and no submitted one are counted in ``skipped``."""
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
    cells: list[tuple[int, str, int]] = []
    for (item_id, annotator), a in latest.items():
        value = a.value if isinstance(a.value, list) else [a.value]
        if len(value) != 1:
            invalid.append((item_id, annotator, f"expected one label, got {value!r}"))
        elif str(value[0]) not in index:
            invalid.append((item_id, annotator, f"unknown label {value[0]!r}"))
        else:
            cells.append((item_id, annotator, index[str(value[0])]))
    item_ids = np.array(sorted({c[0] for c in cells}), dtype=np.int64)
    annotators = sorted({c[1] for c in cells})
    rows = {int(i): r for r, i in enumerate(item_ids)}
    cols = {name: c for c, name in enumerate(annotators)}
    R = np.full((len(item_ids), len(annotators)), MISSING, dtype=np.int64)
    for item_id, annotator, code in cells:
        R[rows[item_id], cols[annotator]] = code
    answered = {key[0] for key in latest}
    skipped = {i: len(who) for i, who in sorted(skips.items()) if i not in answered}
    return AnswerTable(item_ids, annotators, list(labels), R, invalid, skipped)


@dataclass
class Consolidation:
    """What :func:`consolidate` decided.

    ``rows``: one label row per answered item (``StateStore.labels.save`` format);
    ``send_back``: ``(item_id, answers wanted, reason)`` for items that need another answer;
    ``adjudicate``: ``(item_id, reason)`` for items that need an adjudicator (their row's reason);
    ``result``: the consensus over ``table``; ``gold``: gold item id -> class code.
    """

    table: AnswerTable
    result: ConsensusResult
    rows: list[dict[str, Any]]
    send_back: list[tuple[int, int, str]]
    gold: dict[int, int]
    adjudicate: list[tuple[int, str]] = field(default_factory=list)


def model_probabilities(predictions: Iterable[Any], model_versions: Mapping[int, str | None]) -> dict[int, dict[str, float]]:
    """Item id -> the model's class probabilities (label -> probability) for the ``crowdlab``
    method, from prediction rows (``item_id, model_version, probabilities``, oldest first per item):
    the prediction of the item's ``model_versions`` entry (the version that routed it, scored before
    any annotator answered, so out of sample), else the item's latest one."""
    chosen: dict[int, Any] = {}
    for p in predictions:
        i = int(p.item_id)
        if i not in chosen or chosen[i].model_version != model_versions.get(i):
            chosen[i] = p
    # a task's other controls ride in the same JSON (``task_spec.CONTROLS_KEY``): not class probabilities
    return {i: {str(k): float(v) for k, v in (p.probabilities or {}).items() if isinstance(v, int | float)}
            for i, p in chosen.items()}


def probability_matrix(table: AnswerTable, probabilities: Mapping[int, Mapping[str, float]]) -> np.ndarray:
    """``(n_items, n_labels)`` in ``table``'s row and label order, a row of ``NaN`` where an item
    has no probabilities (or none for the task's labels); a label the model lacks gets 0."""
    P = np.full((len(table.item_ids), len(table.labels)), np.nan)
    for r, item_id in enumerate(table.item_ids.tolist()):
        probs = probabilities.get(item_id)
        if probs:
            row = np.array([float(probs.get(label, 0.0)) for label in table.labels])
            if np.isfinite(row).all() and row.sum() > 0:
                P[r] = row / row.sum()
    return P


def consolidate(table: AnswerTable, policy: ConsensusPolicy, *, gold: Mapping[int, str] | None = None,
                per_item_overlap: bool = True,
                probabilities: Mapping[int, Mapping[str, float]] | None = None) -> Consolidation:
    """Settle each answered item. Gold items (``gold``: item id -> known label) keep their known
    label (method ``gold``); the others follow ``policy`` (``crowdlab`` reads the model's
    ``probabilities``: item id -> label -> probability, :func:`model_probabilities`). Unsettled
    items with fewer than ``max_answers`` answers are listed in ``send_back`` with the count of
    answers they now need; so are items only skipped (``table.skipped``) when ``policy.on_skip``
    says so. Items still unsettled at ``max_answers`` are listed in ``adjudicate``; without
    ``per_item_overlap`` (a tool that cannot ask one item for one more answer: Argilla) so are
    disagreements at any count."""
    k = len(table.labels)
    index = {label: c for c, label in enumerate(table.labels)}
    gold_codes = {int(i): index[str(v)] for i, v in (gold or {}).items() if str(v) in index}
    if policy.method in ("dawid_skene", "crowdlab") and len(table.item_ids):
        if policy.method == "crowdlab":
            result = crowdlab(table.R, probability_matrix(table, probabilities or {}), n_classes=k,
                              min_quality=policy.min_quality, min_confidence=policy.min_confidence)
            if result.note:
                log.info("consensus: %s", result.note)
        else:
            result = dawid_skene(table.R, n_classes=k, min_confidence=policy.min_confidence)
        too_few = result.n_answers < policy.min_answers
        for i in np.flatnonzero(too_few & (result.n_answers > 0)):
            result.label[i] = MISSING
            result.reason[i] = "too_few_answers"
    else:
        result = majority_vote(table.R, n_classes=k, min_answers=policy.min_answers,
                               min_agreement=policy.min_agreement)
    rows: list[dict[str, Any]] = []
    send_back: list[tuple[int, int, str]] = []
    adjudicate: list[tuple[int, str]] = []
    for r, item_id in enumerate(table.item_ids.tolist()):
        n = int(result.n_answers[r])
        agreement = float(result.agreement[r]) if np.isfinite(result.agreement[r]) else None
        method = result.method[r] if result.method is not None else policy.method
        confidence = agreement if result.confidence is None else (
            float(result.confidence[r]) if np.isfinite(result.confidence[r]) else None)
        if item_id in gold_codes:
            rows.append({"item_id": item_id, "label": table.labels[gold_codes[item_id]], "status": "settled",
                         "method": "gold", "n_answers": n, "agreement": agreement, "confidence": 1.0,
                         "reason": "gold"})
            continue
        reason = result.reason[r]
        if reason == "settled":
            rows.append({"item_id": item_id, "label": table.labels[int(result.label[r])], "status": "settled",
                         "method": method, "n_answers": n, "agreement": agreement,
                         "confidence": confidence, "reason": "settled"})
            continue
        if reason in SEND_BACK_REASONS and n < policy.max_answers and (
                per_item_overlap or reason not in DISAGREEMENT_REASONS):
            send_back.append((item_id, max(n + 1, policy.min_answers), reason))
        elif reason in SEND_BACK_REASONS:
            reason = f"needs_adjudication ({reason} after {n} answers)"
            adjudicate.append((item_id, reason))
        rows.append({"item_id": item_id, "label": None, "status": "unsettled", "method": method,
                     "n_answers": n, "agreement": agreement, "confidence": None, "reason": reason})
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
                     "n_answers": 0, "agreement": None, "confidence": None, "reason": reason})
    return Consolidation(table, result, rows, send_back, gold_codes, adjudicate)


def latest_verdicts(annotations: Iterable[Any]) -> dict[int, Any]:
    """Item id -> the adjudicators' latest live answer to it (submitted or skipped; annotation rows
    of the adjudication project: ``item_id, annotator, value, status, remote_updated_at``)."""
    latest: dict[int, Any] = {}
    for a in annotations:
        if a.status in ("submitted", "skipped"):
            i = int(a.item_id)
            if i not in latest or a.remote_updated_at >= latest[i].remote_updated_at:
                latest[i] = a
    return latest


def apply_verdicts(rows: Sequence[Mapping[str, Any]], verdicts: Mapping[int, Any],
                   labels: Sequence[str]) -> tuple[list[dict[str, Any]], list[tuple[int, str, str]]]:
    """``rows`` with the adjudicators' answers (``verdicts``, from :func:`latest_verdicts`) applied.

    An adjudicator's answer of one known label settles its item on that label, method
    ``adjudicated``, whatever the other answers say (the adjudicator saw them); ``n_answers`` and
    ``agreement`` stay those of the annotators' answers, and ``actor`` names the adjudicator. A gold item keeps its known label. A skip
    leaves the row as it was, its reason saying so; an answer that is not one known label is left
    out and listed, as ``(item_id, adjudicator, why)``, like :func:`answer_table`'s ``invalid``.
    """
    out: list[dict[str, Any]] = []
    invalid: list[tuple[int, str, str]] = []
    for row in rows:
        verdict = verdicts.get(int(row["item_id"]))
        if verdict is None or row["method"] == "gold":
            out.append(dict(row))
            continue
        value = verdict.value if isinstance(verdict.value, list) else [verdict.value]
        if verdict.status == "skipped":
            out.append({**row, "reason": f"{row['reason']}; skipped by the adjudicator"}
                       if row["status"] == "unsettled" else dict(row))
        elif len(value) != 1 or str(value[0]) not in labels:
            invalid.append((int(row["item_id"]), str(verdict.annotator), f"expected one known label, got {value!r}"))
            out.append(dict(row))
        else:
            out.append({**row, "label": str(value[0]), "status": "settled", "method": ADJUDICATED,
                        "confidence": None, "reason": f"adjudicated by {verdict.annotator}",
                        "actor": str(verdict.annotator)})
    return out, invalid


def annotator_quality(consolidation: Consolidation, policy: ConsensusPolicy) -> list[dict[str, Any]]:
    """One row per annotator:

    - ``gold_n`` / ``gold_correct`` / ``gold_accuracy``: answers on gold items, right ones, and
      their share (``None`` without gold answers);
    - ``consensus_n`` / ``consensus_agreement``: answers on settled non-gold items answered by at
      least two people, and the share that matches the consensus;
    - ``answers``: all of the annotator's counted answers;
    - ``flagged``: ``gold_accuracy < gold_min_accuracy`` on at least ``gold_min_answers`` gold answers.
    """
    table, result, gold = consolidation.table, consolidation.result, consolidation.gold
    R = table.R
    answered = R != MISSING
    rows = table.row_of()
    gold_rows = np.array([rows[i] for i in gold if i in rows], dtype=np.int64)
    gold_truth = np.array([gold[i] for i in gold if i in rows], dtype=np.int64)
    is_gold = np.zeros(len(R), dtype=bool)
    is_gold[gold_rows] = True
    shared = result.settled & ~is_gold & (answered.sum(axis=1) >= 2)
    out: list[dict[str, Any]] = []
    for a, name in enumerate(table.annotators):
        g = answered[gold_rows, a] if len(gold_rows) else np.zeros(0, dtype=bool)
        gold_n = int(g.sum())
        gold_correct = int((R[gold_rows[g], a] == gold_truth[g]).sum()) if gold_n else 0
        c = shared & answered[:, a]
        consensus_n = int(c.sum())
        gold_accuracy = gold_correct / gold_n if gold_n else None
        out.append({
            "annotator": name,
            "answers": int(answered[:, a].sum()),
            "gold_n": gold_n,
            "gold_correct": gold_correct,
            "gold_accuracy": gold_accuracy,
            "consensus_n": consensus_n,
            "consensus_agreement": float((R[c, a] == result.label[c]).mean()) if consensus_n else None,
            "flagged": bool(gold_accuracy is not None and gold_n >= policy.gold_min_answers
                            and gold_accuracy < policy.gold_min_accuracy),
        })
    return out


def agreement_snapshot(table: AnswerTable) -> dict[str, Any]:
    """:func:`connector.agreement.agreement_report` over the table, JSON-ready (NaN -> None)."""
    if not len(table.item_ids):
        return {"n_items": 0, "n_annotators": 0, "annotators": [], "labels": table.labels}
    report = agreement_report(table.R, n_classes=len(table.labels), annotators=table.annotators)
    report["labels"] = table.labels
    return {key: _clean(value) for key, value in report.items()}


def _clean(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_clean(v) for v in value.tolist()]
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, float | np.floating):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value
