"""Label sets in a string column, per-control model stores and their loader, and the retraining of a
multi-label control."""

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score, hamming_loss

from connector.control_models import (
    check_control_name,
    control_names,
    control_store,
    load_version,
    same_encoder,
    save_multilabel_version,
)
from connector.label_sets import decode_label, decode_label_set, encode_label_set, is_label_set
from connector.model_store import ModelStore
from connector.multilabel import MultiLabelClassifier
from connector.retraining import RetrainPolicy, in_test_split
from connector.retraining_sets import evaluate_sets, retrain_label_sets
from tests.support.stub_encoder import StubEncoder

# -- label sets -----------------------------------------------------------------------------------


def test_a_label_set_is_stored_sorted_so_equal_sets_are_equal_strings():
    assert encode_label_set(["sport", "politics", "sport"]) == '["politics","sport"]'
    assert encode_label_set(["b", "a"]) == encode_label_set(("a", "b"))
    assert encode_label_set([]) == "[]"
    assert decode_label('["politics","sport"]') == ["politics", "sport"] and decode_label("[]") == []
    assert decode_label("fresh") == "fresh" and decode_label(None) is None
    assert decode_label("[not json") == "[not json" and not is_label_set('[1, 2]')  # a label that looks odd
    assert decode_label_set("fresh") == ["fresh"] and decode_label_set('["é"]') == ["é"]


def test_a_long_label_set_is_stored_whole_and_a_bare_string_is_refused(tmp_path):
    from connector.store import StateStore

    many = [f"label-{i:03d}" for i in range(60)]  # 600+ characters: labels.label is TEXT since 0008
    store = StateStore(f"sqlite:///{tmp_path}/s.db")
    store.migrate()
    store.items.ingest([{"id": "a", "text": "x"}])
    item = store.items.list()[0]
    store.labels.save([{"item_id": item.id, "label": encode_label_set(many), "status": "settled",
                          "method": "majority", "n_answers": 2, "reason": ""}])
    assert decode_label_set(store.labels.list()[0].label) == many
    store.close()
    with pytest.raises(TypeError, match="string"):
        encode_label_set("politics")


# -- model stores per control ---------------------------------------------------------------------


def _texts(n, seed=0):
    rng = np.random.default_rng(seed)
    words = ["goal", "match", "vote", "party", "chip", "code", "rain", "sun"]
    return [" ".join(rng.choice(words, size=4)) for _ in range(n)]


def _sets(texts):
    """Labels by a rule on the words: sport (goal/match), politics (vote/party), tech (chip/code)."""
    rule = {"sport": {"goal", "match"}, "politics": {"vote", "party"}, "tech": {"chip", "code"}}
    return [[label for label, words in rule.items() if words & set(t.split())] for t in texts]


@pytest.fixture
def fitted():
    enc = StubEncoder()
    texts = _texts(200)
    clf = MultiLabelClassifier(enc, classes=["sport", "politics", "tech"]).fit(texts, _sets(texts))
    return enc, clf, texts


def test_a_multi_label_version_saves_with_its_kind_and_loads_through_the_one_loader(tmp_path, fitted):
    enc, clf, texts = fitted
    store = control_store(tmp_path, "topics")
    meta = save_multilabel_version(store, clf, metrics={"x": 1}, encoder_ref="stub", promote=True,
                                   trained_on=["a", "b"])
    assert meta.version == "v1" and store.current() == "v1" and control_names(tmp_path) == ["topics"]
    on_disk = json.loads((store.path("v1") / "meta.json").read_text())
    assert on_disk["kind"] == "multi" and on_disk["labels"] == ["politics", "sport", "tech"]
    assert store.trained_on("v1") == {"a", "b"}
    loaded = load_version(store, encoder=enc)
    assert loaded.kind == "multi" and loaded.label_set and loaded.version == "v1"
    assert loaded.head().kind == "multilabel" and set(loaded.thresholds().values()) == {0.5}
    x = enc.encode(texts[:20])
    assert np.allclose(loaded.predict_proba_from_embeddings(x), clf.predict_proba_from_embeddings(x))
    probs = loaded.predict_proba_from_embeddings(x)
    assert np.allclose(loaded.task_scores(probs), clf.task_score(probs))
    with pytest.raises(ValueError, match="control_models.load_version"):
        store.load("v1", encoder=enc)  # the single-label loader refuses another kind


def test_a_single_label_version_keeps_its_meta_json_without_a_kind_and_loads_as_single(tmp_path):
    from connector.classifier import TextClassifier

    enc = StubEncoder()
    texts = _texts(60, seed=1)
    labels = ["sport" if s and s[0] == "sport" else "other" for s in _sets(texts)]
    clf = TextClassifier(enc, calibration="none").fit(texts, labels)
    store = ModelStore(tmp_path)
    store.save(clf, encoder_ref="stub", promote=True)
    assert "kind" not in json.loads((store.path("v1") / "meta.json").read_text())
    loaded = load_version(store, encoder=enc)
    assert loaded.kind == "single" and not loaded.label_set and loaded.head().kind == "choices"
    probs = loaded.predict_proba_from_embeddings(enc.encode(texts[:5]))
    assert np.allclose(loaded.task_scores(probs), probs.max(axis=1))


def test_a_control_name_never_reaches_outside_the_controls_directory(tmp_path):
    for bad in ("../x", ".hidden", "a/b", "", "x" * 200):
        with pytest.raises(ValueError, match="cannot name a model directory"):
            check_control_name(bad)
    assert check_control_name("topic_2.v-1") == "topic_2.v-1"
    assert control_names(tmp_path) == []  # no controls directory at all


def test_encoders_are_shared_only_when_the_same_base_encoder_is_named():
    base = {"model": "default", "max_length": 256, "normalize": True}
    assert same_encoder(base, {**base, "pooling": "mean"})
    assert same_encoder({**base, "model": None}, base)
    assert not same_encoder(base, {**base, "max_length": 128})
    assert not same_encoder(base, {**base, "weights": "encoder", "sha256": "ab"})


# -- retraining a multi-label control -------------------------------------------------------------


def test_set_metrics_match_scikit_learn():
    rng = np.random.default_rng(3)
    Y = rng.integers(0, 2, size=(80, 4))
    p = np.clip(Y * 0.6 + rng.uniform(0, 0.5, size=Y.shape), 0, 1)
    m = evaluate_sets(p, Y)
    pred = (p >= 0.5).astype(int)
    assert m["accuracy"] == pytest.approx((pred == Y).all(axis=1).mean())
    assert m["hamming"] == pytest.approx(1 - hamming_loss(Y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(Y, pred, average="macro", zero_division=1.0))
    assert m["micro_f1"] == pytest.approx(f1_score(Y, pred, average="micro"))
    assert m["n"] == 80 and m["log_loss"] > 0 and 0 <= m["ece"] <= 1


def test_the_first_set_model_is_promoted_and_a_worse_one_is_not(tmp_path, empty_store):
    empty_store.migrate()
    enc = StubEncoder()
    texts = _texts(300, seed=5)
    sets = _sets(texts)
    ext = [f"e{i}" for i in range(len(texts))]
    hashes = [f"h{i}" for i in range(len(texts))]
    store = control_store(tmp_path, "topics")
    policy = RetrainPolicy(min_test=10)
    first = retrain_label_sets(texts, sets, ext, hashes, classes=["sport", "politics", "tech"], models=store,
                               cache_store=empty_store, policy=policy, encoder=enc,
                               calibrate_on=[i % 2 == 0 for i in range(len(texts))])
    assert first.promoted and first.candidate == "v1" and store.current() == "v1"
    assert first.candidate_metrics["accuracy"] > 0.8 and first.n_test > 20
    assert len(first.evidence["confidence"]) == len(texts)  # held out, then out-of-fold
    assert all(0.5 <= c <= 1 for c in first.evidence["confidence"])
    rng = np.random.default_rng(0)
    train = [i for i, e in enumerate(ext) if not in_test_split(e, policy.test_fraction)]
    shuffled = list(sets)  # training labels that say nothing about the text; the held-out ones as they were
    for i, j in zip(train, rng.permutation(train)):
        shuffled[i] = sets[j]
    second = retrain_label_sets(texts, shuffled, ext, hashes, classes=["sport", "politics", "tech"], models=store,
                                cache_store=empty_store, policy=policy, encoder=enc)
    assert not second.promoted and second.candidate == "v2" and store.current() == "v1"
    assert second.current_metrics["log_loss"] < second.candidate_metrics["log_loss"]
    assert second.encoded == 0  # every embedding came from the cache
    with pytest.raises(ValueError, match="unknown to the model"):
        retrain_label_sets(texts[:5], [["weather"]] * 5, ext[:5], hashes[:5], classes=["sport"], models=store,
                           cache_store=empty_store, policy=policy, encoder=enc)
