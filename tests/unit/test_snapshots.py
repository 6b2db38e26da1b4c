"""Typed snapshots: round trips through a real SQLite store, old dict payloads, unknown keys, and
models that keep up with what the jobs write."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pytest

from connector.consolidation import ConsensusPolicy, agreement_snapshot, annotator_quality, answer_table, consolidate
from connector.retraining import RetrainResult, evaluate
from connector.snapshots import (
    AgreementSnapshot,
    AnnotatorQuality,
    CountsSnapshot,
    Evidence,
    HeldOutMetrics,
    ModelSnapshot,
    QualitySnapshot,
    Reliability,
    RetrainSnapshot,
    ThresholdPoint,
    ThresholdsSnapshot,
    read_history,
    read_latest,
    write_snapshot,
)
from connector.store import StateStore
from connector.thresholds import ThresholdChoice, choose_accept_threshold


@dataclass
class _Ann:
    item_id: int
    annotator: str
    value: list
    status: str = "submitted"
    remote_updated_at: datetime = datetime(2026, 11, 1)


@pytest.fixture
def store(tmp_path):
    with StateStore(f"sqlite:///{tmp_path}/s.db") as s:
        s.migrate()
        yield s


def _retrain() -> RetrainSnapshot:
    metrics = HeldOutMetrics(accuracy=0.8, macro_f1=0.79, ece=0.03, log_loss=0.5, n=4, ece_uncalibrated=0.1)
    return RetrainSnapshot(
        candidate="v2", current="v1", promoted=True, reason="better", n_train=12, n_test=4, encoded=16,
        candidate_metrics=metrics, current_metrics=metrics.model_copy(update={"accuracy": 0.7}),
        evidence=Evidence(confidence=[0.9, 0.6], correct=[1.0, 0.0], external_id=["a", "b"]),
        reliability=Reliability(y=[0, 1], uncalibrated=[[0.95, 0.05], [0.3, 0.7]], calibrated=[[0.9, 0.1], [0.4, 0.6]]),
        n_labels=16)


EXAMPLES = [
    AgreementSnapshot(n_items=3, n_annotators=2, n_classes=2, n_answers=6, n_pairable_items=3, annotators=["a", "b"],
                      labels=["neg", "pos"], percent_agreement=2 / 3, fleiss_kappa=0.3, krippendorff_alpha=None,
                      cohen_kappa=[[1.0, 0.3], [0.3, None]], mean_cohen_kappa=0.3, pair_counts=[[3, 3], [3, 3]]),
    QualitySnapshot(annotators=[AnnotatorQuality(annotator="a", answers=3, gold_n=2, gold_correct=1, gold_accuracy=0.5,
                                                 consensus_n=1, consensus_agreement=1.0, flagged=True)],
                    flagged=["a"]),
    CountsSnapshot(states={"routed": 2}, decisions={"review": 1}, labels={"pos": 2}, human_labels=2),
    ModelSnapshot(current="v3"),
    _retrain(),
    ThresholdsSnapshot(threshold=0.91, error_ucb=0.08, error_rate=0.02, n=50, errors=1, review_rate=0.3,
                       meets_target=True, within_band=True, note="ok", safe_threshold=0.91, adapt=True,
                       target_error=0.1, delta=0.05, evidence="random", n_evidence=60,
                       curve=[ThresholdPoint(threshold=0.91, n=50, errors=1, ucb=0.08, review_rate=0.3, passed=True)]),
]


@pytest.mark.parametrize("snap", EXAMPLES, ids=lambda s: s.kind)
def test_every_kind_reads_back_equal_with_its_time(store, snap):
    assert read_latest(store, type(snap)) is None
    write_snapshot(store, snap)
    got = read_latest(store, type(snap))
    assert got is not None and got.snapshot == snap and isinstance(got.at, datetime)
    assert store.snapshots.latest(snap.kind).payload == snap.model_dump()  # the JSON on disk is the model's dump


def test_the_six_kinds_are_the_ones_the_jobs_write():
    assert sorted(s.kind for s in EXAMPLES) == ["agreement", "counts", "model", "quality", "retrain", "thresholds"]


def test_history_is_oldest_first_per_kind_and_limit_keeps_the_newest(store):
    for version in ("v1", "v2", "v3"):
        write_snapshot(store, ModelSnapshot(current=version))
    write_snapshot(store, CountsSnapshot(human_labels=5))
    assert [d.snapshot.current for d in read_history(store, ModelSnapshot)] == ["v1", "v2", "v3"]
    assert [d.snapshot.current for d in read_history(store, ModelSnapshot, limit=2)] == ["v2", "v3"]
    assert read_latest(store, ModelSnapshot).snapshot.current == "v3"


def test_a_dict_payload_written_before_the_models_reads_with_defaults(store):
    store.snapshots.add("thresholds", {"threshold": 0.92})
    store.snapshots.add("retrain", {"candidate": "v2", "promoted": False, "reason": "min_test",
                                   "evidence": {"confidence": [0.7], "correct": [1.0]}})  # no ids, no n_labels
    store.snapshots.add("agreement", {"fleiss_kappa": 0.1, "percent_agreement": 0.2})
    t = read_latest(store, ThresholdsSnapshot).snapshot
    assert (t.threshold, t.n_evidence, t.meets_target, t.curve, t.note) == (0.92, None, None, [], "")
    r = read_latest(store, RetrainSnapshot).snapshot
    assert (r.n_labels, r.evidence.confidence, r.evidence.external_id, r.current_metrics) == (0, [0.7], [], None)
    assert r.reliability == Reliability() and r.candidate_metrics.accuracy is None
    a = read_latest(store, AgreementSnapshot).snapshot
    assert (a.n_items, a.fleiss_kappa, a.krippendorff_alpha, a.annotators) == (0, 0.1, None, [])


def test_unknown_keys_are_ignored_at_every_level(store):
    store.snapshots.add("model", {"current": "v3", "versions": ["v1", "v3"]})
    store.snapshots.add("quality", {"annotators": [{"annotator": "a", "gold_n": 2, "shoe_size": 44}], "flagged": [],
                                   "policy": {"min": 0.7}})
    assert read_latest(store, ModelSnapshot).snapshot == ModelSnapshot(current="v3")
    q = read_latest(store, QualitySnapshot).snapshot
    assert q.annotators == [AnnotatorQuality(annotator="a", gold_n=2)]
    assert "shoe_size" not in q.annotators[0].model_dump()


def test_a_payload_that_does_not_validate_is_left_out_and_logged(store, caplog):
    write_snapshot(store, AgreementSnapshot(n_items=4))
    store.snapshots.add("agreement", {"n_items": "many"})
    assert read_latest(store, AgreementSnapshot) is None
    assert [d.snapshot.n_items for d in read_history(store, AgreementSnapshot)] == [4]
    assert "does not read as AgreementSnapshot" in caplog.text


def test_numpy_values_and_infinity_survive_the_store(store):
    write_snapshot(store, ThresholdsSnapshot(threshold=float(np.float64(1.5)), error_ucb=float("inf")))
    t = read_latest(store, ThresholdsSnapshot).snapshot
    assert t.threshold == 1.5 and t.error_ucb == float("inf")


# ------------------------------------------------------------------------------------------------ the writers' dicts


def test_the_thresholds_model_keeps_every_key_of_the_threshold_review(store):
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 300)
    choice = choose_accept_threshold(conf, rng.random(300) < conf, target_error=0.2, pool_confidence=conf)
    written = choice.to_dict() | {"adapt": True, "target_error": 0.2, "delta": 0.05, "evidence": "all",
                                  "n_evidence": 300}
    write_snapshot(store, ThresholdsSnapshot.model_validate(written))
    # a one-threshold review: no per-label thresholds (a label set's, connector/thresholds_sets.py)
    assert store.snapshots.latest("thresholds").payload == written | {"label_thresholds": None}
    assert {f.name for f in dataclasses.fields(ThresholdChoice)} <= set(ThresholdsSnapshot.model_fields)


def test_the_retrain_model_keeps_every_field_of_a_retrain_result():
    assert {f.name for f in dataclasses.fields(RetrainResult)} <= set(RetrainSnapshot.model_fields)
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert set(evaluate(probs, np.array([0, 1, 1]))) <= set(HeldOutMetrics.model_fields)


def test_the_metrics_job_models_keep_every_key_of_agreement_and_quality():
    anns = [_Ann(i, name, [value]) for i in (1, 2, 3)
            for name, value in (("a", "pos"), ("b", "pos" if i < 3 else "neg"))]
    table = answer_table(anns, ["neg", "pos"])
    agreement = agreement_snapshot(table)
    assert AgreementSnapshot.model_validate(agreement).model_dump(include=set(agreement)) == agreement  # + set fields
    quality = annotator_quality(consolidate(table, ConsensusPolicy(min_answers=2)), ConsensusPolicy())
    assert [AnnotatorQuality.model_validate(q).model_dump() for q in quality] == quality
