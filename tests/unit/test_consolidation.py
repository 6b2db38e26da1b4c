"""Answers -> ratings matrix -> consensus, send-backs, annotator quality."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from connector.consolidation import (
    ConsensusPolicy,
    agreement_snapshot,
    annotator_quality,
    answer_table,
    apply_verdicts,
    consolidate,
    latest_verdicts,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)
LABELS = ["neg", "pos"]


@dataclass
class Ann:
    item_id: int
    annotator: str
    value: list
    status: str = "submitted"
    remote_updated_at: datetime = T0


def test_answer_table_keeps_each_annotators_latest_submitted_answer_and_lists_invalid_ones():
    anns = [Ann(1, "ann", ["pos"]), Ann(1, "ann", ["neg"], remote_updated_at=T0 + timedelta(seconds=5)),
            Ann(1, "bob", ["pos"]), Ann(2, "bob", ["pos"], status="skipped"), Ann(2, "ann", ["maybe"]),
            Ann(3, "ann", ["pos", "neg"]), Ann(3, "bob", ["neg"])]
    table = answer_table(anns, LABELS)
    assert table.item_ids.tolist() == [1, 3] and table.annotators == ["ann", "bob"]
    assert table.R.tolist() == [[0, 1], [-1, 0]]
    assert sorted((i, a) for i, a, _ in table.invalid) == [(2, "ann"), (3, "ann")]
    assert any("unknown label 'maybe'" in why for _, _, why in table.invalid)


def test_consolidate_settles_majorities_keeps_gold_and_sends_ties_back_until_max_answers():
    anns = [Ann(1, "a", ["pos"]), Ann(1, "b", ["pos"]), Ann(1, "c", ["neg"]),   # 2 of 3: settled
            Ann(2, "a", ["pos"]), Ann(2, "b", ["neg"]),                         # tie: send back for a 3rd
            Ann(3, "a", ["pos"]),                                               # too few answers
            Ann(4, "a", ["neg"]), Ann(4, "b", ["neg"]),                         # gold says pos
            Ann(5, "a", ["pos"]), Ann(5, "b", ["neg"]), Ann(5, "c", ["pos"]), Ann(5, "d", ["neg"])]
    policy = ConsensusPolicy(min_answers=2, max_answers=4)
    result = consolidate(answer_table(anns, LABELS), policy, gold={4: "pos"})
    rows = {r["item_id"]: r for r in result.rows}
    assert (rows[1]["label"], rows[1]["status"], rows[1]["agreement"]) == ("pos", "settled", pytest.approx(2 / 3))
    assert (rows[4]["label"], rows[4]["method"]) == ("pos", "gold")
    assert {i: rows[i]["reason"] for i in (2, 3)} == {2: "tie", 3: "too_few_answers"}
    assert rows[5]["reason"] == "needs_adjudication (tie after 4 answers)" and rows[5]["label"] is None
    assert result.send_back == [(2, 3, "tie"), (3, 2, "too_few_answers")]
    assert result.adjudicate == [(5, "needs_adjudication (tie after 4 answers)")]


def test_without_per_item_overlap_disagreements_go_to_adjudication_and_too_few_answers_wait():
    anns = [Ann(1, "a", ["pos"]), Ann(1, "b", ["neg"]),                          # tie at 2 of 4
            Ann(2, "a", ["pos"]),                                                # too few: the tool's queue has it
            Ann(3, "a", [], status="skipped"), Ann(3, "b", [], status="skipped")]  # skipped at max_answers
    policy = ConsensusPolicy(min_answers=2, max_answers=2)
    result = consolidate(answer_table(anns, LABELS), policy.model_copy(update={"max_answers": 4}),
                         per_item_overlap=False)
    assert result.adjudicate == [(1, "needs_adjudication (tie after 2 answers)")]
    assert result.send_back == [(2, 2, "too_few_answers"), (3, 2, "skipped")]
    assert consolidate(answer_table(anns, LABELS), policy).adjudicate == [
        (1, "needs_adjudication (tie after 2 answers)"), (3, "needs_adjudication (skipped after 2 answers)")]


def test_an_adjudicators_latest_answer_settles_its_item_but_not_a_gold_one():
    anns = [Ann(1, "a", ["pos"]), Ann(1, "b", ["neg"]), Ann(2, "a", ["pos"]), Ann(2, "b", ["neg"]),
            Ann(3, "a", ["neg"]), Ann(3, "b", ["neg"]), Ann(4, "a", ["pos"]), Ann(4, "b", ["neg"])]
    result = consolidate(answer_table(anns, LABELS), ConsensusPolicy(min_answers=2, max_answers=2), gold={3: "pos"})
    verdicts = latest_verdicts([
        Ann(1, "lead", ["pos"]), Ann(1, "boss", ["neg"], remote_updated_at=T0 + timedelta(seconds=1)),  # latest wins
        Ann(2, "lead", ["neg"], status="deleted"),                                                     # gone
        Ann(3, "lead", ["neg"]),                                                                       # gold stays
        Ann(4, "lead", ["pos", "neg"])])                                                               # not one label
    rows, invalid = apply_verdicts(result.rows, verdicts, LABELS)
    by_item = {r["item_id"]: r for r in rows}
    assert (by_item[1]["label"], by_item[1]["status"], by_item[1]["method"]) == ("neg", "settled", "adjudicated")
    assert (by_item[1]["n_answers"], by_item[1]["agreement"], by_item[1]["reason"], by_item[1]["actor"]) == (
        2, 0.5, "adjudicated by boss", "boss")
    assert by_item[2]["status"] == "unsettled" and by_item[4]["status"] == "unsettled"
    assert (by_item[3]["label"], by_item[3]["method"]) == ("pos", "gold")
    assert [(i, who) for i, who, _ in invalid] == [(4, "lead")]


def test_min_agreement_leaves_weak_majorities_unsettled():
    anns = [Ann(1, n, [v]) for n, v in zip("abc", ["pos", "pos", "neg"])]
    result = consolidate(answer_table(anns, LABELS), ConsensusPolicy(min_agreement=0.75))
    assert result.rows[0]["reason"] == "low_agreement" and result.send_back == [(1, 4, "low_agreement")]


def planted(seed: int, n: int = 400, accuracies=(0.95, 0.95, 0.95, 0.4), k: int = 4):
    """Items with a true class, every annotator answers each with the given accuracy."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    labels = [f"c{j}" for j in range(k)]
    anns = []
    for a, acc in enumerate(accuracies):
        right = rng.random(n) < acc
        wrong = (truth + rng.integers(1, k, n)) % k
        for i in range(n):
            anns.append(Ann(i + 1, f"ann{a}", [labels[truth[i] if right[i] else wrong[i]]]))
    return anns, truth, labels


def test_annotator_quality_flags_the_planted_noisy_annotator_on_gold():
    anns, truth, labels = planted(0)
    gold = {i + 1: labels[truth[i]] for i in range(40)}
    policy = ConsensusPolicy(gold_min_accuracy=0.8, gold_min_answers=20)
    result = consolidate(answer_table(anns, labels), policy, gold=gold)
    quality = {q["annotator"]: q for q in annotator_quality(result, policy)}
    assert [a for a, q in quality.items() if q["flagged"]] == ["ann3"]
    assert quality["ann3"]["gold_n"] == 40 and quality["ann3"]["gold_accuracy"] < 0.6
    assert all(quality[f"ann{a}"]["gold_accuracy"] > 0.85 for a in range(3))
    assert quality["ann0"]["consensus_agreement"] > quality["ann3"]["consensus_agreement"] + 0.3
    settled_non_gold = sum(r["status"] == "settled" and r["method"] != "gold" for r in result.rows)
    assert 300 < settled_non_gold < 360  # a few 2-2 ties stay unsettled
    assert quality["ann0"]["consensus_n"] == settled_non_gold  # every answer on a settled, non-gold item


def test_dawid_skene_policy_beats_majority_with_a_noisy_annotator():
    anns, truth, labels = planted(1, accuracies=(0.85, 0.8, 0.3, 0.3))
    table = answer_table(anns, labels)
    acc = {}
    for method in ("majority", "dawid_skene"):
        result = consolidate(table, ConsensusPolicy(method=method, min_confidence=0.0, min_agreement=0.0))
        got = {r["item_id"]: r["label"] for r in result.rows}
        acc[method] = np.mean([got[i + 1] == labels[truth[i]] for i in range(len(truth))])
    assert acc["dawid_skene"] > acc["majority"] + 0.03, acc


def test_agreement_snapshot_is_json_ready():
    import json

    anns, _, labels = planted(2, n=50)
    snap = agreement_snapshot(answer_table(anns, labels))
    assert snap["n_items"] == 50 and snap["labels"] == labels and len(snap["cohen_kappa"]) == 4
    json.dumps(snap, allow_nan=False)
    assert agreement_snapshot(answer_table([], labels))["n_items"] == 0
