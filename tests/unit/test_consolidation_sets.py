"""Consolidation of label sets: per-label majority and per-label Dawid–Skene, rows shaped like the
single-label consolidation's."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from connector.consensus import dawid_skene
from connector.consolidation import ConsensusPolicy
from connector.consolidation_sets import consolidate_sets, set_agreement_snapshot, set_answer_table

LABELS = ["sports", "politics", "tech"]


def ann(item, who, value, status="submitted", at="2026-01-01T00:00:00"):
    return SimpleNamespace(item_id=item, annotator=who, value=value, status=status, remote_updated_at=at)


def test_table_holds_sets_the_latest_answer_and_lists_what_it_leaves_out():
    table = set_answer_table([
        ann(1, "ann", ["sports"], at="2026-01-01"),
        ann(1, "ann", ["sports", "tech"], at="2026-01-02"),   # later: counts
        ann(1, "bob", []),                                     # nothing applies: a valid answer
        ann(2, "bob", ["weather"]),                            # unknown label
        ann(3, "cy", "politics"),                              # one label, not in a list
        ann(4, "ann", ["tech"], status="skipped"),
        ann(5, "ann", ["tech"], status="draft"),
    ], LABELS)
    assert table.item_ids.tolist() == [1, 3] and table.annotators == ["ann", "bob", "cy"]
    assert table.Y[0].tolist() == [[1, 0, 1], [0, 0, 0], [-1, -1, -1]]
    assert table.Y[1].tolist() == [[-1, -1, -1], [-1, -1, -1], [0, 1, 0]]
    assert table.invalid == [(2, "bob", "unknown labels ['weather'] in ['weather']")]
    assert table.skipped == {4: 1}


def test_majority_settles_label_by_label_and_reports_the_weakest_label():
    table = set_answer_table([
        ann(1, "a", ["sports", "tech"]), ann(1, "b", ["sports"]), ann(1, "c", ["sports", "tech"]),
        ann(2, "a", ["politics"]), ann(2, "b", []),                       # 1-1 on politics: a tie
        ann(3, "a", []), ann(3, "b", []),                                  # agreed: nothing applies
    ], LABELS)
    out = consolidate_sets(table, ConsensusPolicy(method="majority", min_agreement=0.6))
    rows = {r["item_id"]: r for r in out.rows}
    assert rows[1]["label"] == ["sports", "tech"] and rows[1]["status"] == "settled"
    assert rows[1]["agreement"] == pytest.approx(2 / 3) and rows[1]["confidence"] == pytest.approx(2 / 3)
    assert rows[2]["status"] == "unsettled" and rows[2]["reason"] == "tie"
    assert rows[2]["unsettled_labels"] == ["politics"] and rows[2]["label"] is None
    assert rows[3]["label"] == [] and rows[3]["status"] == "settled"
    assert out.send_back == [(2, 3, "tie")]
    assert set(rows[1]) == {"item_id", "label", "status", "method", "n_answers", "agreement", "confidence",
                            "reason", "unsettled_labels"}
    assert out.chosen().tolist() == [[1, 0, 1], [0, -1, 0], [0, 0, 0]]


def test_unsettled_items_go_to_adjudication_at_max_answers_or_at_once_without_overlap():
    answers = [ann(1, "a", ["sports"]), ann(1, "b", ["tech"])]
    table = set_answer_table(answers, LABELS)
    capped = consolidate_sets(table, ConsensusPolicy(max_answers=2))
    assert capped.send_back == [] and capped.adjudicate == [(1, "needs_adjudication (tie after 2 answers)")]
    no_overlap = consolidate_sets(table, ConsensusPolicy(max_answers=5), per_item_overlap=False)
    assert no_overlap.send_back == [] and no_overlap.adjudicate[0][0] == 1
    few = consolidate_sets(set_answer_table(answers[:1], LABELS), ConsensusPolicy(min_answers=2))
    assert few.rows[0]["reason"] == "too_few_answers" and few.send_back == [(1, 2, "too_few_answers")]


def test_gold_items_keep_their_set_and_skips_follow_the_policy():
    table = set_answer_table([ann(1, "a", ["sports"]), ann(1, "b", ["tech"]),
                              ann(2, "a", ["tech"], status="skipped")], LABELS)
    out = consolidate_sets(table, ConsensusPolicy(), gold={1: ["tech", "sports"], 9: ["nope"]})
    rows = {r["item_id"]: r for r in out.rows}
    assert rows[1]["label"] == ["sports", "tech"] and rows[1]["method"] == "gold"  # config order
    assert out.gold == {1: ["sports", "tech"]}
    assert rows[2]["reason"] == "skipped" and (2, 1, "skipped") in out.send_back
    final = consolidate_sets(table, ConsensusPolicy(on_skip="final"))
    assert {r["item_id"]: r["reason"] for r in final.rows}[2] == "skipped (final)"


def test_dawid_skene_per_label_equals_binary_dawid_skene_on_each_slice():
    rng = np.random.default_rng(0)
    n, A = 120, 4
    truth = rng.random((n, 3)) < 0.3
    accuracy = [0.95, 0.9, 0.85, 0.55]
    answers = []
    for i in range(n):
        for a in range(A):
            if rng.random() < 0.8:
                flip = rng.random(3) > accuracy[a]
                chosen = np.logical_xor(truth[i], flip)
                answers.append(ann(i, f"r{a}", [LABELS[j] for j in np.flatnonzero(chosen)]))
    table = set_answer_table(answers, LABELS)
    policy = ConsensusPolicy(method="dawid_skene", min_confidence=0.9)
    out = consolidate_sets(table, policy)
    for j in range(3):
        ref = dawid_skene(table.Y[:, :, j].astype(np.int64), n_classes=2, min_confidence=0.9)
        np.testing.assert_array_equal(out.per_label[j].label, ref.label)
        np.testing.assert_allclose(out.per_label[j].posterior, ref.posterior)
    settled = [r for r in out.rows if r["status"] == "settled"]
    assert len(settled) > 0.7 * len(table.item_ids)
    right = [r["label"] == [LABELS[j] for j in np.flatnonzero(truth[r["item_id"]])] for r in settled]
    assert np.mean(right) > 0.9  # the poor fourth annotator is outweighed
    for r in settled:
        row = table.row_of()[r["item_id"]]
        assert r["confidence"] == pytest.approx(min(res.agreement[row] for res in out.per_label))
        assert r["confidence"] >= 0.9


def test_agreement_snapshot_is_json_ready():
    import json

    table = set_answer_table([ann(1, "a", ["sports"]), ann(1, "b", ["sports"]), ann(2, "a", ["tech"]),
                              ann(2, "b", ["tech", "politics"])], LABELS)
    snap = set_agreement_snapshot(table)
    json.dumps(snap, allow_nan=False)
    assert snap["labels"] == LABELS and snap["n_pairable_items"] == 2
    assert snap["per_label"][0]["label"] == "sports"
    assert set_agreement_snapshot(set_answer_table([], LABELS))["n_items"] == 0
