"""CROWDLAB consensus (the model as one more rater): against cleanlab's own function, against the
majority where the model is right and two annotators are wrong, its Dawid–Skene fallbacks, and the
consolidation job reading the stored predictions."""

from __future__ import annotations

import subprocess
import sys
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pytest

from connector.consensus import crowdlab
from connector.consolidation import ConsensusPolicy, answer_table, consolidate, model_probabilities, probability_matrix
from connector.model_store import ModelStore
from connector.task_spec import TaskSpec
from sync import jobs

T0 = datetime(2026, 11, 1, tzinfo=UTC)
LABELS = ["a", "b", "c"]


@dataclass
class Ann:
    item_id: int
    annotator: str
    value: list
    status: str = "submitted"
    remote_updated_at: datetime = T0


@dataclass
class Pred:
    item_id: int
    model_version: str
    probabilities: dict


def noisy(seed: int, *, n: int = 300, k: int = 3, accuracy: float = 0.65, pool: int = 6, answers: int = 3,
          model_accuracy: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(R, probs, truth)``: ``answers`` of ``pool`` annotators per item, each right w.p.
    ``accuracy`` (else a uniform other class); a model right w.p. ``model_accuracy``, 0.9 on its pick."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(k, size=n)
    R = np.full((n, pool), -1)
    for i in range(n):
        for a in rng.choice(pool, size=answers, replace=False):
            R[i, a] = truth[i] if rng.random() < accuracy else (truth[i] + rng.integers(1, k)) % k
    pick = np.where(rng.random(n) < model_accuracy, truth, (truth + rng.integers(1, k, size=n)) % k)
    probs = np.full((n, k), 0.1 / (k - 1))
    probs[np.arange(n), pick] = 0.9
    return R, probs, truth


def as_answers(R: np.ndarray, labels: list[str] = LABELS) -> list[Ann]:
    return [Ann(i + 1, f"ann{a}", [labels[R[i, a]]]) for i, a in zip(*np.nonzero(R != -1))]


def as_probs(probs: np.ndarray, labels: list[str] = LABELS) -> dict[int, dict[str, float]]:
    return {i + 1: dict(zip(labels, map(float, p))) for i, p in enumerate(probs)}


def test_crowdlab_is_cleanlabs_consensus_on_a_random_matrix():
    from cleanlab.multiannotator import get_label_quality_multiannotator

    rng = np.random.default_rng(7)
    R, _, _ = noisy(7, n=150, pool=5, answers=2)
    R[rng.random(R.shape) < 0.2] = -1
    R = R[(R != -1).any(axis=1)]
    probs = rng.dirichlet(np.ones(3), size=len(R))
    ours = crowdlab(R, probs, n_classes=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = get_label_quality_multiannotator(np.where(R == -1, np.nan, R.astype(float)), probs,
                                                  verbose=False)["label_quality"]
    assert ours.method == ["crowdlab"] * len(R) and ours.note is None
    assert ours.label.tolist() == theirs["consensus_label"].tolist()
    np.testing.assert_allclose(ours.confidence, theirs["consensus_quality_score"], rtol=1e-12)
    np.testing.assert_allclose(ours.agreement, theirs["annotator_agreement"], rtol=1e-12)


def test_a_confident_right_model_outvotes_two_wrong_annotators_where_the_majority_cannot():
    R, probs, truth = noisy(1)
    # planted: item 0 is "a", two annotators say "b", one says "a"; the model says "a"
    truth[0] = 0
    R[0] = [1, 1, 0, -1, -1, -1]
    probs[0] = [0.9, 0.05, 0.05]
    table = answer_table(as_answers(R), LABELS)
    got = {}
    for method in ("majority", "dawid_skene", "crowdlab"):
        policy = ConsensusPolicy(method=method, min_agreement=0.0, min_confidence=0.0, min_quality=0.0)
        rows = consolidate(table, policy, probabilities=as_probs(probs)).rows
        got[method] = [r["label"] for r in rows]
    assert got["majority"][0] == "b" and got["crowdlab"][0] == "a"
    acc = {m: np.mean([lb == LABELS[t] for lb, t in zip(labels, truth)]) for m, labels in got.items()}
    assert acc["crowdlab"] > max(acc["majority"], acc["dawid_skene"]) + 0.05, acc


def test_rows_carry_crowdlabs_quality_as_confidence_and_the_answers_share_as_agreement():
    R, probs, _ = noisy(2, n=120)
    table = answer_table(as_answers(R), LABELS)
    result = consolidate(table, ConsensusPolicy(method="crowdlab", min_quality=0.0), probabilities=as_probs(probs))
    direct = crowdlab(table.R, probability_matrix(table, as_probs(probs)), n_classes=3)
    row = result.rows[5]
    assert set(row) == {"item_id", "label", "status", "method", "n_answers", "agreement", "confidence", "reason"}
    assert row["method"] == "crowdlab" and row["confidence"] == pytest.approx(direct.confidence[5])
    answers = table.R[5][table.R[5] != -1]
    assert row["agreement"] == pytest.approx(np.mean(answers == LABELS.index(row["label"])))


def test_min_quality_leaves_the_unsure_items_unsettled_and_sends_them_back():
    R, probs, _ = noisy(3, n=150, accuracy=0.5)
    table = answer_table(as_answers(R), LABELS)
    open_ = consolidate(table, ConsensusPolicy(method="crowdlab", min_quality=0.0), probabilities=as_probs(probs))
    scores = np.array([r["confidence"] for r in open_.rows])
    cut = float(np.median(scores))
    gated = consolidate(table, ConsensusPolicy(method="crowdlab", min_quality=cut, max_answers=5),
                        probabilities=as_probs(probs))
    unsettled = [r for r in gated.rows if r["status"] == "unsettled"]
    assert len(unsettled) == int((scores < cut).sum()) > 0
    assert {r["reason"] for r in unsettled} == {"low_confidence"}
    assert {i for i, _, _ in gated.send_back} == {r["item_id"] for r in unsettled}


def test_an_item_without_a_model_probability_falls_back_to_dawid_skene_and_says_so():
    R, probs, _ = noisy(4, n=100)
    given = as_probs(probs)
    del given[7], given[8]
    given[9] = {"a": 0.0, "b": 0.0, "c": 0.0}  # no usable probability either
    table = answer_table(as_answers(R), LABELS)
    result = consolidate(table, ConsensusPolicy(method="crowdlab", min_quality=0.0, min_confidence=0.0),
                         probabilities=given)
    methods = {r["item_id"]: r["method"] for r in result.rows}
    assert {i for i, m in methods.items() if m == "dawid_skene"} == {7, 8, 9}
    assert all(r["status"] == "settled" for r in result.rows)
    ds = consolidate(table, ConsensusPolicy(method="dawid_skene", min_confidence=0.0)).rows
    assert [r["label"] for r in ds if r["item_id"] in (7, 8, 9)] == \
        [r["label"] for r in result.rows if r["item_id"] in (7, 8, 9)]
    assert "3 answered items have no model probability" in result.result.note


@pytest.mark.parametrize(("answers", "why"), [
    ([Ann(1, "x", ["a"]), Ann(2, "x", ["b"]), Ann(3, "x", ["a"])], "fewer than two annotators"),
    ([Ann(1, "x", ["a"]), Ann(2, "y", ["b"]), Ann(3, "z", ["a"])], "no item has two answers"),
    ([Ann(1, "x", ["a"]), Ann(1, "y", ["b"]), Ann(1, "z", ["a"])], "all one class"),
    ([Ann(1, "x", ["a"]), Ann(1, "y", ["a"]), Ann(2, "x", ["a"]), Ann(2, "y", ["c"])], "all one class"),
])
def test_inputs_crowdlab_cannot_weigh_fall_back_to_dawid_skene_without_a_crash(answers, why):
    table = answer_table(answers, LABELS)
    probs = {i: {"a": 0.1, "b": 0.8, "c": 0.1} for i in (1, 2, 3)}
    result = consolidate(table, ConsensusPolicy(method="crowdlab", min_confidence=0.0), probabilities=probs)
    assert {r["method"] for r in result.rows} == {"dawid_skene"}
    assert why in result.result.note
    ds = consolidate(table, ConsensusPolicy(method="dawid_skene", min_confidence=0.0)).rows
    assert [r["label"] for r in result.rows] == [r["label"] for r in ds]


def test_no_probabilities_an_empty_table_and_skip_only_items_do_not_crash():
    table = answer_table([Ann(1, "x", ["a"]), Ann(1, "y", ["a"]), Ann(2, "x", ["b"]), Ann(2, "y", ["b"]),
                          Ann(3, "x", [], status="skipped")], LABELS)
    rows = consolidate(table, ConsensusPolicy(method="crowdlab")).rows
    assert [(r["item_id"], r["method"], r["status"]) for r in rows] == [
        (1, "dawid_skene", "settled"), (2, "dawid_skene", "settled"), (3, "crowdlab", "unsettled")]
    assert consolidate(answer_table([], LABELS), ConsensusPolicy(method="crowdlab")).rows == []


def test_a_label_nobody_answered_and_too_few_answers_are_handled():
    R, probs, _ = noisy(5, n=80, k=2)  # answers and the model use "a" and "b" only; "c" is never given
    probs = np.hstack([probs * 0.98, np.full((len(probs), 1), 0.02)])
    R[3, np.flatnonzero(R[3] != -1)[1:]] = -1  # item 4 keeps one answer
    table = answer_table(as_answers(R), LABELS)
    result = consolidate(table, ConsensusPolicy(method="crowdlab", min_answers=2, min_quality=0.0),
                         probabilities=as_probs(probs))
    rows = {r["item_id"]: r for r in result.rows}
    assert rows[4]["reason"] == "too_few_answers" and rows[4]["label"] is None
    assert all(r["method"] == "crowdlab" for r in result.rows)
    assert {r["label"] for r in result.rows} <= {"a", "b", None}


def test_cleanlab_prints_nothing_warns_nothing_and_leaves_numpys_global_random_state(capsys):
    # annotator "solo" overlaps with nobody (cleanlab prints about it), and the model's
    # probabilities tie (cleanlab breaks such ties with numpy's global random state)
    R, probs, _ = noisy(6, n=60)
    probs[:10] = 1 / 3
    anns = [*as_answers(R), Ann(61, "solo", ["a"]), Ann(62, "solo", ["b"])]
    given = {**as_probs(probs), 61: {"a": 0.9, "b": 0.05, "c": 0.05}, 62: {"a": 0.05, "b": 0.9, "c": 0.05}}
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = consolidate(answer_table(anns, LABELS), ConsensusPolicy(method="crowdlab"), probabilities=given).rows
        again = consolidate(answer_table(anns, LABELS), ConsensusPolicy(method="crowdlab"), probabilities=given).rows
    assert capsys.readouterr().out == "" and caught == []
    assert (np.random.get_state()[1] == before).all()
    assert first == again and {r["method"] for r in first} == {"crowdlab"}


def test_model_probabilities_take_the_routing_versions_prediction_else_the_latest():
    preds = [Pred(1, "v1", {"a": 0.9, "b": 0.1}), Pred(1, "v2", {"a": 0.2, "b": 0.8}),
             Pred(2, "v1", {"a": 0.7, "b": 0.3}), Pred(2, "v2", {"a": 0.4, "b": 0.6}),
             Pred(3, "v3", {"a": 0.5, "b": 0.5})]
    got = model_probabilities(preds, {1: "v1", 2: "v9", 3: None})
    assert got == {1: {"a": 0.9, "b": 0.1}, 2: {"a": 0.4, "b": 0.6}, 3: {"a": 0.5, "b": 0.5}}


def test_the_consolidation_job_reads_the_stored_predictions(empty_store, tmp_path):
    store = empty_store
    store.migrate()
    R, probs, truth = noisy(8, n=90)
    R[0], probs[0], truth[0] = [1, 1, 0, -1, -1, -1], [0.9, 0.05, 0.05], 0  # two wrong annotators, a right model
    store.items.ingest([{"id": f"e{i}", "text": f"item {i}"} for i in range(len(R))])
    ids = {it.external_id: it.id for it in store.items.list()}
    store.predictions.record([{"item_id": ids[f"e{i}"], "model_version": "v1", "label": LABELS[int(p.argmax())],
                               "confidence": float(p.max()), "probabilities": dict(zip(LABELS, map(float, p)))}
                              for i, p in enumerate(probs) if i != 1])  # item e1 was never scored
    store.annotations.upsert([{"item_id": ids[f"e{i}"], "tool": "offline", "project": "p", "remote_id": f"{i}-{a}",
                               "annotator": f"ann{a}", "value": [LABELS[R[i, a]]], "status": "submitted",
                               "remote_updated_at": T0} for i, a in zip(*np.nonzero(R != -1))])
    spec = TaskSpec(name="t", labels=LABELS, overlap=3, consensus={"method": "crowdlab", "min_quality": 0.0})
    ctx = jobs.JobContext(store, spec, ModelStore(tmp_path / "models"))
    assert jobs.consolidate_job(ctx, send_back=False)["settled"] == len(R)
    labels = {lb.item_id: lb for lb in store.labels.list()}
    assert (labels[ids["e0"]].label, labels[ids["e0"]].method) == ("a", "crowdlab")
    assert labels[ids["e1"]].method == "dawid_skene"
    assert sum(lb.method == "crowdlab" for lb in labels.values()) == len(R) - 1


def test_importing_the_consolidation_modules_does_not_import_cleanlab():
    code = "import sys, connector.consolidation, connector.consensus; assert 'cleanlab' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
