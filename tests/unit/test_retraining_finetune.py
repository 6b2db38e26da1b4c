"""Fine-tuned candidates in retraining: tried, compared with the frozen one on labels the new encoder
never saw, saved with their encoder, served by the backend, and reused between refreshes. On the
tiny random BERT (seconds)."""

import json
import os

import numpy as np
import pytest

from connector.encoder import TextEncoder
from connector.model_store import ModelStore, encoder_identity, weights_digest
from connector.retraining import TUNED_ON_FILE, FinetunePolicy, RetrainPolicy, in_test_split, retrain
from connector.store import StateStore, content_hash

pytestmark = pytest.mark.slow  # each test fine-tunes (the tiny BERT: seconds each on a quiet machine)

GOOD = ["wonderful", "excellent", "great", "brilliant", "superb", "moving", "joyful", "delightful"]
BAD = ["terrible", "awful", "boring", "dull", "dreadful", "tedious", "painful", "dismal"]


def _corpus(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        good = i % 2 == 0
        words = rng.choice(GOOD if good else BAD, size=3)
        texts.append(f"item {i}: a {words[0]} film, {words[1]} and {words[2]}")
        labels.append("good" if good else "bad")
    return texts, labels


def _policy(**finetune) -> RetrainPolicy:
    return RetrainPolicy(min_test=5, folds=3, calibration_labels="all",
                         finetune=FinetunePolicy(**{"contrastive_from": 20, "full_from": 20, "budget_s": 30,
                                                    "skip_above_accuracy": 1.0, "epochs": 3, **finetune}))


def _retrain(texts, labels, models, store, encoder, policy):
    ext = [f"e{t.split(':')[0].split()[1]}" for t in texts]
    return retrain(texts, labels, ext, [content_hash(t) for t in texts], classes=["bad", "good"], models=models,
                   cache_store=store, policy=policy, encoder=encoder), ext


@pytest.fixture
def prefer_finetuned(monkeypatch):
    """Keep the other encoder's candidate whatever the comparison says (the comparison still runs and
    is recorded): the tiny random BERT's frozen head is often as good, and these tests are about what
    happens to a chosen fine-tuned encoder. ``test_the_comparison_keeps_the_better_candidate`` checks
    the choice itself."""
    from connector import retraining

    real = retraining._versus_frozen

    def always(*args, **kwargs):
        _, verdict = real(*args, **kwargs)
        return True, verdict + " (kept by the test)"

    monkeypatch.setattr(retraining, "_versus_frozen", always)


@pytest.fixture
def store(tmp_path):
    s = StateStore(f"sqlite:///{tmp_path}/cache.db")
    s.migrate()
    yield s
    s.close()


def test_a_fine_tuned_candidate_is_saved_with_its_encoder_and_loads_as_it_was_scored(tmp_path, store, tiny_encoder,
                                                                                     prefer_finetuned):
    texts, labels = _corpus(80)
    models = ModelStore(tmp_path / "models")
    result, _ = _retrain(texts, labels, models, store, tiny_encoder, _policy())
    meta = models.meta(result.candidate)
    cands = meta.metrics["candidates"]
    tuned = cands["finetuned"]
    assert tuned["method"] == "classifier" and tuned["finetune"]["steps_done"] > 0
    assert tuned["seconds"] <= 30 + 15  # the budget, plus saving and embedding the labels
    assert cands["compared_on"] > 0
    assert meta.metrics["choice"].startswith("finetuned (classifier)")
    own = models.path(result.candidate) / "encoder"
    assert (own / "model.safetensors").exists() and meta.encoder["weights"] == "encoder"
    assert meta.encoder["sha256"] == weights_digest(own) and meta.encoder["base"] == meta.encoder["model"]
    assert encoder_identity(meta.encoder) != encoder_identity({k: meta.encoder[k] for k in ("model", "max_length", "normalize")})
    clf, _ = models.load(result.candidate, encoder=tiny_encoder)  # the version's own encoder wins
    assert clf.encoder is not tiny_encoder and str(clf.encoder.model_path) == str(own)
    # the cache holds the new encoder's embeddings under its own key, the ones the head was fitted on
    cached = store.embeddings.get(encoder_identity(meta.encoder), [content_hash(texts[0])])
    fresh = clf.encoder.encode([texts[0]]).astype(np.float32)
    np.testing.assert_allclose(np.frombuffer(cached[content_hash(texts[0])], dtype=np.float32), fresh[0], atol=1e-5)
    # evidence only from labels the encoder never saw: held out, or kept out of the fine-tuning
    tuned_on = set(json.loads((own / TUNED_ON_FILE).read_text()))
    assert tuned_on and not tuned_on & set(result.evidence["external_id"])
    assert all(in_test_split(e, 0.2) or in_test_split(e + "#calibration", 0.2) for e in result.evidence["external_id"])


def test_between_refreshes_a_new_head_reuses_the_current_fine_tuned_encoder(tmp_path, store, tiny_encoder,
                                                                           prefer_finetuned):
    texts, labels = _corpus(100)
    models = ModelStore(tmp_path / "models")
    first, _ = _retrain(texts[:80], labels[:80], models, store, tiny_encoder, _policy())
    assert models.meta(first.candidate).encoder.get("weights") and first.promoted
    second, _ = _retrain(texts, labels, models, store, tiny_encoder, _policy(refresh_labels=50))
    meta = models.meta(second.candidate)
    assert "finetuned" not in meta.metrics["candidates"]  # no second fine-tuning
    assert "current_encoder" in meta.metrics["candidates"] and meta.metrics["choice"].startswith("current encoder")
    # the same weights, linked, not copied; the head's temperature from labels the encoder never saw
    a = models.path(first.candidate) / "encoder" / "model.safetensors"
    b = models.path(second.candidate) / "encoder" / "model.safetensors"
    assert os.stat(a).st_ino == os.stat(b).st_ino
    assert meta.encoder["sha256"] == models.meta(first.candidate).encoder["sha256"]
    assert "labels the encoder was not tuned on" in meta.metrics["temperature_fit"]
    # once refresh_labels more arrived, it fine-tunes again
    third, _ = _retrain(texts, labels, models, store, tiny_encoder, _policy(refresh_labels=5))
    assert "finetuned" in models.meta(third.candidate).metrics["candidates"]


def test_no_fine_tuning_when_the_frozen_head_is_accurate_or_labels_are_few(tmp_path, store, tiny_encoder):
    texts, labels = _corpus(60)
    models = ModelStore(tmp_path / "models")
    result, _ = _retrain(texts, labels, models, store, tiny_encoder, _policy(skip_above_accuracy=0.01))
    meta = models.meta(result.candidate)
    assert meta.metrics["choice"].startswith("frozen: the frozen encoder's head is accurate already")
    assert "weights" not in meta.encoder and not (models.path(result.candidate) / "encoder").exists()
    result, _ = _retrain(texts, labels, ModelStore(tmp_path / "m2"), store, tiny_encoder,
                         _policy(contrastive_from=1000, full_from=1000))
    assert "fewer than contrastive_from=1000" in ModelStore(tmp_path / "m2").meta(result.candidate).metrics["choice"]


def test_the_budget_bounds_the_fine_tuning(tmp_path, store, tiny_encoder):
    texts, labels = _corpus(80)
    models = ModelStore(tmp_path / "models")
    result, _ = _retrain(texts, labels, models, store, tiny_encoder, _policy(budget_s=2, epochs=10_000))
    tuned = models.meta(result.candidate).metrics["candidates"]["finetuned"]["finetune"]
    # the step loop ends at the budget (loading, the linear probe and the final trace come around it)
    # (the schedule refitted to end at the budget, or cut by it)
    assert tuned["steps_done"] < tuned["steps_planned"] and tuned["train_s"] <= 2 + 1.0
    assert tuned["steps_done"] == tuned["steps_fitted"] or tuned["stopped_by_budget"]
    assert not list(models.root.glob(".finetune-*"))  # the work directory is gone whatever was chosen


def test_the_comparison_keeps_the_better_candidate(tmp_path, store, tiny_encoder):
    texts, labels = _corpus(80)
    models = ModelStore(tmp_path / "models")
    result, _ = _retrain(texts, labels, models, store, tiny_encoder, _policy())
    meta = models.meta(result.candidate)
    cands = meta.metrics["candidates"]
    frozen_better = cands["frozen"]["log_loss"] <= cands["finetuned"]["log_loss"]
    assert meta.metrics["choice"].startswith("frozen" if frozen_better else "finetuned")
    assert bool(meta.encoder.get("weights")) is (not frozen_better)


def test_the_backend_swaps_to_a_fine_tuned_version_and_serves_its_encoder(tmp_path, store, tiny_encoder,
                                                                          prefer_finetuned):
    from ml_backend.service import ModelService
    from ml_backend.settings import BackendSettings

    texts, labels = _corpus(80)
    models = ModelStore(tmp_path / "models")
    frozen, _ = _retrain(texts, labels, models, store, tiny_encoder, _policy(enabled=False))
    service = ModelService(BackendSettings(model_root=str(tmp_path / "models")))
    try:
        assert service.model_version == frozen.candidate
        tuned, _ = _retrain(texts, labels, models, store, tiny_encoder, _policy(calibration_fraction=0.3))
        assert models.meta(tuned.candidate).encoder.get("weights")
        models.promote(tuned.candidate)
        assert service.reload_if_changed() == tuned.candidate
        import asyncio

        got = asyncio.run(service.predict(texts[:4]))
        clf, _ = models.load(tuned.candidate)
        want = clf.predict_proba(texts[:4])
        for pred, row in zip(got, want):
            assert pred.model_version == tuned.candidate
            assert pred.confidence == pytest.approx(float(row.max()), abs=1e-4)
        assert isinstance(service._current().clf.encoder, TextEncoder)
        assert str(service._current().clf.encoder.model_path).endswith(f"{tuned.candidate}/encoder")
    finally:
        service.close()


def test_a_fine_tuning_not_kept_is_not_repeated_until_refresh_labels_more_arrive(tmp_path, store, tiny_encoder,
                                                                               monkeypatch):
    from connector import retraining

    real = retraining._versus_frozen

    def never(*args, **kwargs):
        _, verdict = real(*args, **kwargs)  # the comparison runs and is recorded
        return False, verdict + " (frozen kept by the test)"

    monkeypatch.setattr(retraining, "_versus_frozen", never)
    texts, labels = _corpus(100)
    models = ModelStore(tmp_path / "models")
    first, _ = _retrain(texts[:80], labels[:80], models, store, tiny_encoder, _policy())
    assert "finetuned" in models.meta(first.candidate).metrics["candidates"]
    second, _ = _retrain(texts, labels, models, store, tiny_encoder, _policy(refresh_labels=50))
    choice = models.meta(second.candidate).metrics["choice"]
    assert choice.startswith(f"frozen: {first.candidate} fine-tuned on") and "refresh_labels=50" in choice


def test_long_documents_keep_the_frozen_encoder(tmp_path, store, tiny_encoder):
    texts, labels = _corpus(60)
    long = [t + " and" * 200 for t in texts]  # past the 128 tokens fine-tuning sees
    models = ModelStore(tmp_path / "models")
    result, _ = _retrain(long, labels, models, store, tiny_encoder, _policy())
    choice = models.meta(result.candidate).metrics["choice"]
    assert "longer than the 128 tokens fine-tuning sees" in choice and "100%" in choice
