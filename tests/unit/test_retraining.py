"""Retraining on consolidated human labels: a better candidate is promoted, a worse one refused."""

from __future__ import annotations

import numpy as np
import pytest

from connector.model_store import ModelStore
from connector.retraining import RetrainPolicy, in_test_split, is_better
from connector.store import StateStore
from connector.task_spec import TaskSpec
from sync.jobs import JobContext, metrics_job, retrain_job, threshold_job, training_set

LABELS = ["fresh", "rotten"]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, rt_sample, encoder):
    """A store with 600 snippets whose human labels are settled, and a weak current model (v1,
    trained on 16 labels)."""
    from connector.classifier import TextClassifier

    tmp = tmp_path_factory.mktemp("retrain")
    texts, labels = rt_sample
    store = StateStore(f"sqlite:///{tmp}/state.db")
    store.migrate()
    store.items.ingest([{"id": f"rt{i}", "text": t} for i, t in enumerate(texts)])
    ids = {it.external_id: it.id for it in store.items.list()}
    store.labels.save([{"item_id": ids[f"rt{i}"], "label": lb, "status": "settled", "method": "majority",
                        "n_answers": 2, "reason": "settled"} for i, lb in enumerate(labels)])
    models = ModelStore(tmp / "models")
    weak = [i for i in range(len(texts)) if not in_test_split(f"rt{i}", 0.2)][:16]
    clf = TextClassifier(encoder, calibration="none").fit([texts[i] for i in weak], [labels[i] for i in weak])
    models.save(clf, encoder_ref="default", promote=True)
    # the frozen head's path (fine-tuned candidates: tests/unit/test_retraining_finetune.py)
    spec = TaskSpec(name="rt", labels=LABELS, retraining={"min_new_labels": 100, "min_test": 20,
                                                          "finetune": {"enabled": False}},
                    thresholds={"target_error": 0.1, "delta": 0.1, "min_evidence": 30})
    yield JobContext(store, spec, models)
    store.close()


@pytest.mark.slow
def test_training_set_is_the_settled_human_labels(labelled, rt_sample):
    texts, labels, _ext, hashes = training_set(labelled.store, labelled.spec)
    assert len(labels) == 600 and sorted(set(labels)) == LABELS and len(set(hashes)) == len(set(texts))


@pytest.mark.slow
def test_a_better_candidate_is_promoted_and_a_shuffled_label_one_refused(labelled):
    ctx = labelled
    first = retrain_job(ctx)
    assert first["promoted"] and first["candidate"] == "v2" and ctx.models.current() == "v2"
    assert first["encoded"] == 600 and first["n_test"] >= 20
    meta = ctx.models.meta("v2")
    held, current = meta.metrics["held_out"], meta.metrics["current_held_out"]
    assert held["log_loss"] < current["log_loss"] and held["accuracy"] >= current["accuracy"]
    assert held["ece"] < 0.15 and 0 < meta.temperature < 10

    assert retrain_job(ctx)["skipped"].startswith("0 new labels")
    rng = np.random.default_rng(0)
    worse = retrain_job(ctx, force=True, transform_labels=lambda ys: list(rng.permutation(ys)))
    assert not worse["promoted"] and worse["candidate"] == "v3" and ctx.models.current() == "v2"
    assert worse["encoded"] == 0  # every embedding came from the cache
    refused = ctx.models.meta("v3").metrics  # kept, with the metrics it was refused on
    assert refused["promoted"] is False and "not better" in refused["decision"]
    assert refused["held_out"]["accuracy"] < held["accuracy"] - 0.1


def with_thresholds(ctx: JobContext, **kw) -> JobContext:
    spec = ctx.spec.model_copy(update={"thresholds": ctx.spec.thresholds.model_copy(update=kw)})
    return JobContext(ctx.store, spec, ctx.models)


@pytest.mark.slow
def test_the_threshold_review_and_metrics_snapshots_follow_a_retraining(labelled):
    ctx = with_thresholds(labelled, evidence="all")
    review = threshold_job(ctx)
    assert 0.5 <= review["threshold"] <= 1.0 + 1e-9 and "note" in review
    snap = ctx.store.snapshots.latest("thresholds").payload
    assert snap["target_error"] == 0.1 and snap["error_ucb"] is not None
    assert snap["n_evidence"] == len(ctx.store.snapshots.latest("retrain").payload["evidence"]["confidence"])
    out = metrics_job(ctx)
    assert out["items"] == 0  # no raw answers were stored in this fixture, only settled labels
    assert ctx.store.snapshots.latest("model").payload["current"] == ctx.models.current()


def test_the_promotion_rule():
    policy = RetrainPolicy(metric="log_loss", max_accuracy_drop=0.01)
    cur = {"log_loss": 0.5, "accuracy": 0.80}
    assert is_better({"log_loss": 0.4, "accuracy": 0.80}, cur, policy)[0]
    assert not is_better({"log_loss": 0.5, "accuracy": 0.90}, cur, policy)[0]  # equal is not better
    assert not is_better({"log_loss": 0.4, "accuracy": 0.78}, cur, policy)[0]  # loses too much accuracy
    assert is_better({"log_loss": 0.9, "accuracy": 0.1}, None, policy)[0]
    strict = RetrainPolicy(metric="accuracy", min_improvement=0.02)
    assert not is_better({"log_loss": 0.4, "accuracy": 0.81}, cur, strict)[0]
    assert is_better({"log_loss": 0.6, "accuracy": 0.83}, cur, strict)[0]


def test_with_a_paired_test_only_a_significant_accuracy_drop_refuses_a_better_candidate():
    """Binomial(n, 1/2) on the disagreements: 1 vs 3 is noise (p = 0.31), 0 vs 8 is not (p = 0.004)."""
    cur = {"log_loss": 0.7, "accuracy": 0.93}
    cand = {"log_loss": 0.4, "accuracy": 0.91}
    paired = RetrainPolicy(accuracy_drop_alpha=0.05)
    assert not is_better(cand, cur, RetrainPolicy(), discordant=(1, 3))[0]  # off by default: any drop refuses
    ok, why = is_better(cand, cur, paired, discordant=(1, 3))
    assert ok and "within noise" in why and "p = 0.312" in why
    ok, why = is_better(cand, cur, paired, discordant=(0, 8))
    assert not ok and "p = 0.00391" in why
    assert not is_better({"log_loss": 0.8, "accuracy": 0.91}, cur, paired, discordant=(1, 3))[0]  # log loss first


def test_the_held_out_split_is_stable_and_about_the_fraction():
    ids = [f"item-{i}" for i in range(5000)]
    first = [in_test_split(e, 0.2) for e in ids]
    assert first == [in_test_split(e, 0.2) for e in ids] and abs(np.mean(first) - 0.2) < 0.02



@pytest.mark.slow
def test_a_word_feature_head_is_trained_saved_loaded_and_averaged_with_the_embedding_head(labelled, tmp_path, encoder):
    from connector.retraining import retrain

    texts, labels, ext, hashes = training_set(labelled.store, labelled.spec)
    models = ModelStore(tmp_path / "models")
    policy = RetrainPolicy(features="embeddings+tfidf", C_lexical=100.0, min_test=10, finetune={"enabled": False})
    result = retrain(texts, labels, ext, hashes, classes=LABELS, models=models, cache_store=labelled.store,
                     policy=policy, encoder=encoder)
    assert result.promoted
    meta = models.meta(result.candidate)
    assert meta.lexical["features"] == "tfidf" and meta.lexical["vocabulary"] > 1000
    assert 0 < meta.lexical["temperature"] and (models.versions_dir / result.candidate / "lexical.json").exists()
    clf, _ = models.load(result.candidate, encoder=encoder)
    x = encoder.encode(texts[:8])
    p = clf.predict_proba_from_embeddings(x, texts=texts[:8])
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(clf.predict_proba(texts[:8]), p, rtol=1e-5)  # the same from the texts alone
    with pytest.raises(ValueError, match="pass texts="):
        clf.predict_proba_from_embeddings(x)
    assert result.candidate_metrics["accuracy"] > 0.6


@pytest.mark.slow
def test_random_evidence_counts_only_labels_of_items_drawn_at_random(labelled):
    """The default evidence is the seed set and the audits: labels a strategy picked are the hardest
    items and would bias the error bound among confident ones."""
    ctx = with_thresholds(labelled, min_evidence=10)
    store = ctx.store
    evidence = store.snapshots.latest("retrain").payload["evidence"]
    ids = {it.external_id: it.id for it in store.items.list()}
    assert threshold_job(ctx)["skipped"].startswith("0 labeled predictions (random evidence)")
    audited = evidence["external_id"][:40]
    store.decisions.record([{"item_id": ids[e], "action": "review", "reason": "audit", "priority": 0.5}
                            for e in audited[:25]]
                           + [{"item_id": ids[e], "action": "review", "reason": "active_learning", "priority": 0.9}
                              for e in audited[25:]])
    seeded = [ids[e] for e in evidence["external_id"][40:55]]
    store.labels.save([{"item_id": lb.item_id, "label": lb.label, "status": "settled", "method": "seed",
                        "n_answers": 0, "reason": "seed label"} for lb in store.labels.list(item_ids=seeded)])
    review = threshold_job(ctx)
    assert "skipped" not in review
    assert store.snapshots.latest("thresholds").payload["n_evidence"] == 25 + 15


@pytest.mark.slow
def test_a_candidate_is_compared_on_every_label_the_current_model_never_saw(tmp_path, rt_sample, encoder):
    """Held-out labels plus the labels that arrived after the current model was trained (scored by
    the candidate's out-of-fold predictions): with uncertainty sampling the held-out slice alone is
    a few dozen hard items."""
    texts, labels = rt_sample
    store = StateStore(f"sqlite:///{tmp_path}/state.db")
    store.migrate()
    store.items.ingest([{"id": f"rt{i}", "text": t} for i, t in enumerate(texts)])
    ids = {it.external_id: it.id for it in store.items.list()}
    models = ModelStore(tmp_path / "models")
    spec = TaskSpec(name="rt", labels=LABELS, retraining={"min_new_labels": 1, "min_test": 5, "test_fraction": 0.2,
                                                          "finetune": {"enabled": False}})
    ctx = JobContext(store, spec, models, encoder=encoder)

    def settle(rows: range) -> None:
        store.labels.save([{"item_id": ids[f"rt{i}"], "label": labels[i], "status": "settled", "method": "majority",
                            "n_answers": 2, "reason": "settled"} for i in rows])

    settle(range(300))
    assert retrain_job(ctx)["promoted"]
    first_train = {f"rt{i}" for i in range(300) if not in_test_split(f"rt{i}", 0.2)}
    assert models.trained_on("v1") == first_train
    settle(range(300, 600))
    second = retrain_job(ctx)
    compared = models.meta("v2").metrics["compared"]
    new = [i for i in range(300, 600) if not in_test_split(f"rt{i}", 0.2)]
    held = [i for i in range(600) if in_test_split(f"rt{i}", 0.2)]
    assert compared["new"] == len(new) and compared["held_out"] == len(held)
    assert compared["n"] == len(new) + len(held) and "neither model trained on" in second["reason"]
    assert set(compared["candidate"]) >= {"accuracy", "log_loss"} and set(compared["current"]) >= {"accuracy"}
    store.close()


def _loop_store(tmp_path, *, calibration: dict | None = None):
    """A store as the loop leaves it, on synthetic texts (stub encoder): 60 seed labels and 40
    audited ones, clean, then 20 spot checks and 180 items active learning picked, half of their
    labels wrong (items no model predicts well, as hard as the ones it picks)."""
    from tests.support.stub_encoder import StubEncoder
    from tests.unit.test_classifier import noisy_tail, texts_for

    rng = np.random.default_rng(0)
    truth = [LABELS[int(i)] for i in rng.integers(2, size=300)]
    texts = [f"{t} n{i}" for i, t in enumerate(texts_for(truth, seed=1))]  # distinct texts
    labels = noisy_tail(truth, 100, 0.5, seed=2)
    store = StateStore(f"sqlite:///{tmp_path}/state.db")
    store.migrate()
    store.items.ingest([{"id": f"it{i}", "text": t} for i, t in enumerate(texts)])
    ids = {it.external_id: it.id for it in store.items.list()}
    store.decisions.record([{"item_id": ids[f"it{i}"], "action": "review", "priority": 0.5,
                             "reason": "audit" if i < 100 else "spot_check" if i < 120 else "active_learning"}
                            for i in range(60, 300)])
    store.labels.save([{"item_id": ids[f"it{i}"], "label": labels[i], "status": "settled",
                        "method": "seed" if i < 60 else "majority", "n_answers": 2, "reason": "settled"}
                       for i in range(300)])
    spec = TaskSpec(name="loop", labels=LABELS, retraining={"min_test": 5, "folds": 3, **(calibration or {})})
    ctx = JobContext(store, spec, ModelStore(tmp_path / "models"), encoder=StubEncoder())
    return ctx, texts, labels


def test_retraining_fits_the_temperature_on_the_labels_drawn_at_random(tmp_path):
    from connector.classifier import TextClassifier

    ctx, texts, labels = _loop_store(tmp_path / "random")
    assert retrain_job(ctx, force=True)["promoted"]
    meta = ctx.models.meta("v1")
    train = np.array([not in_test_split(f"it{i}", 0.2) for i in range(300)])
    random = np.arange(300) < 100  # the seed set and the audits; not the spot checks
    n_random = int((random & train).sum())
    assert meta.metrics["calibration_labels"] == n_random > 10
    assert meta.metrics["temperature_fit"] == (f"cross-fitted out-of-fold logits of {n_random} labels drawn at random, "
                                               "log T shrunk by a N(0, 1²) prior")
    # the same temperature as the estimator's, fitted with the mask of the seed set and the audits
    x = ctx.encoder.encode([t for t, keep in zip(texts, train) if keep]).astype(np.float32)
    clf = TextClassifier(ctx.encoder, classes=LABELS, folds=3).fit_embeddings(
        x, [lb for lb, keep in zip(labels, train) if keep], calibrate_on=random[train])
    assert meta.temperature == pytest.approx(clf.temperature_, rel=1e-9)
    ctx.store.close()

    every, _, _ = _loop_store(tmp_path / "all", calibration={"calibration_labels": "all"})
    retrain_job(every, force=True)
    flat = every.models.meta("v1")
    assert flat.metrics["calibration_labels"] == int(train.sum())
    assert flat.temperature > 1.3 * meta.temperature  # the picked items' labels flatten the model
    every.store.close()


def test_with_too_few_random_labels_the_temperature_stays_one(tmp_path):
    ctx, _, _ = _loop_store(tmp_path, calibration={"min_calibration_labels": 100})
    retrain_job(ctx, force=True)
    meta = ctx.models.meta("v1")
    assert meta.temperature == 1.0 and meta.metrics["calibration_labels"] == 0
    assert "fewer than min_calibration_labels=100" in meta.metrics["temperature_fit"]
    ctx.store.close()
