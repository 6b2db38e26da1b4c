"""Model versions on disk: save, load, promote; versions written before the estimator refactor
still load and predict the same (synthetic embeddings and a stub encoder: no model weights)."""

import json

import numpy as np
import pytest

from connector.calibration import softmax
from connector.classifier import TextClassifier
from connector.model_store import ModelStore
from tests.support.stub_encoder import StubEncoder


@pytest.fixture(scope="module")
def trained():
    """A classifier fitted on 240 synthetic vectors, with 60 others held out."""
    rng = np.random.default_rng(0)
    enc = StubEncoder()
    centers = rng.normal(size=(2, enc.dim))
    y = rng.integers(2, size=300)
    x = (centers[y] + rng.normal(size=(300, enc.dim))).astype(np.float32)
    labels = [["fresh", "rotten"][i] for i in y]
    clf = TextClassifier(enc).fit_embeddings(x[:240], labels[:240])
    return clf, x[240:], labels[240:]


@pytest.mark.slow
def test_save_load_round_trip_gives_identical_predictions(tmp_path, trained):
    clf, x_test, _ = trained
    store = ModelStore(tmp_path)
    meta = store.save(clf, metrics={"accuracy": 0.8}, encoder_ref="default")
    loaded, meta2 = store.load(encoder=clf.encoder)
    assert meta2.version == meta.version == "v1" and meta2.metrics == {"accuracy": 0.8}
    np.testing.assert_allclose(loaded.predict_proba_from_embeddings(x_test), clf.predict_proba_from_embeddings(x_test),
                               atol=1e-6)
    files = sorted(p.name for p in (tmp_path / "versions" / "v1").iterdir())
    assert files == ["head.safetensors", "meta.json"]  # nothing that unpickles
    assert json.loads((tmp_path / "versions" / "v1" / "meta.json").read_text())["labels"] == ["fresh", "rotten"]


@pytest.mark.slow
def test_versions_increment_and_promotion_picks_the_served_one(tmp_path, trained):
    clf, _, _ = trained
    store = ModelStore(tmp_path)
    assert store.current() is None
    store.save(clf)
    store.save(clf)
    assert store.versions() == ["v1", "v2"] and store.current() == "v2"
    store.promote("v1")
    assert store.current() == "v1"
    with pytest.raises(FileNotFoundError):
        store.promote("v9")


def test_loading_from_an_empty_root_says_how_to_get_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="hitl train"):
        ModelStore(tmp_path).load()


@pytest.mark.slow
def test_a_head_that_does_not_fit_the_encoder_is_refused(tmp_path, trained):
    from safetensors.numpy import save_file

    clf, _, _ = trained
    store = ModelStore(tmp_path)
    store.save(clf)
    save_file({"coef": np.zeros((2, 7), dtype=np.float32), "intercept": np.zeros(2, dtype=np.float32)},
              str(tmp_path / "versions" / "v1" / "head.safetensors"))
    with pytest.raises(ValueError, match="does not fit"):
        store.load(encoder=clf.encoder)


def _old_layout_version(root, enc: StubEncoder, *, lexical: bool) -> dict:
    """A version as retraining wrote it before the estimator refactor: labels in the task's order
    (not sorted), hyperparameters ``C`` and ``calibration_fraction`` only; with the word head,
    ``lex_coef``/``lex_intercept``/``idf`` beside the head and ``lexical.json``."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    labels = ["zeta", "alpha", "mid"]
    arrays = {"coef": rng.normal(size=(3, enc.dim)).astype(np.float32),
              "intercept": rng.normal(size=3).astype(np.float32)}
    meta = {"version": "v1", "labels": labels, "temperature": 1.7,
            "encoder": {"model": "default", "max_length": 64, "pooling": "mean", "normalize": True},
            "metrics": {"accuracy": 0.9}, "hyperparameters": {"C": 10.0, "calibration_fraction": 0.0},
            "created_at": "2026-11-30T12:00:00+00:00", "parent": None, "lexical": None}
    d = root / "versions" / "v1"
    d.mkdir(parents=True)
    if lexical:
        vocab = {"good": 0, "bad": 1, "film": 2, "good film": 3}
        arrays |= {"idf": np.array([1.5, 1.2, 1.0, 2.0], dtype=np.float32),
                   "lex_coef": rng.normal(size=(3, 4)).astype(np.float32),
                   "lex_intercept": np.array([0.1, -30.0, 0.2], dtype=np.float32)}
        meta["lexical"] = {"temperature": 0.8, "vocabulary": 4, "features": "tfidf"}
        (d / "lexical.json").write_text(json.dumps({"params": {"sublinear_tf": True, "ngram_range": [1, 2], "min_df": 2,
                                                               "lowercase": True}, "vocabulary": vocab}))
    save_file(arrays, str(d / "head.safetensors"))
    (d / "meta.json").write_text(json.dumps(meta))
    (root / "current").write_text("v1\n")
    return arrays | {"labels": labels}


@pytest.mark.parametrize("lexical", [False, True], ids=["embeddings", "embeddings+tfidf"])
def test_a_version_saved_before_the_estimator_refactor_loads_and_predicts_the_same(tmp_path, lexical):
    from sklearn.feature_extraction.text import TfidfVectorizer

    enc = StubEncoder()
    old = _old_layout_version(tmp_path, enc, lexical=lexical)
    texts = ["a good film", "bad, bad film", "nothing here"]
    x = enc.encode(texts)
    # what the old code computed: rows in the saved label order
    expected = softmax(x @ old["coef"].T + old["intercept"], 1.7)
    if lexical:
        vec = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), lowercase=True, dtype=np.float32,
                              vocabulary={"good": 0, "bad": 1, "film": 2, "good film": 3})
        vec.idf_ = old["idf"].astype(np.float64)
        lex = np.asarray(vec.transform(texts) @ old["lex_coef"].T + old["lex_intercept"])
        expected = (expected + softmax(lex, 0.8)) / 2
    store = ModelStore(tmp_path)
    clf, meta = store.load(encoder=enc)
    assert meta.labels == ["zeta", "alpha", "mid"] and clf.classes_.tolist() == ["alpha", "mid", "zeta"]
    assert clf.features == ("embeddings+tfidf" if lexical else "embeddings")
    got = clf.predict_proba_from_embeddings(x, texts=texts)
    for j, label in enumerate(old["labels"]):  # the same probability for every label, by name
        np.testing.assert_allclose(got[:, clf.classes_.tolist().index(label)], expected[:, j], rtol=1e-5)
    again = store.load(store.save(clf).version, encoder=enc)[0]  # and it saves again in the same layout
    np.testing.assert_allclose(again.predict_proba_from_embeddings(x, texts=texts), got, rtol=1e-6)
    files = sorted(p.name for p in (tmp_path / "versions" / "v2").iterdir())
    assert files == (["head.safetensors", "lexical.json", "meta.json"] if lexical else ["head.safetensors", "meta.json"])


def test_a_word_feature_model_round_trips_with_its_hyperparameters(tmp_path):
    enc = StubEncoder()
    rng = np.random.default_rng(2)
    labels = [["neg", "pos"][i] for i in rng.integers(2, size=80)]
    texts = [f"{lb} {lb}ish word{rng.integers(9)} filler" for lb in labels]
    clf = TextClassifier(enc, features="embeddings+tfidf", C=5.0, C_lexical=30.0, folds=3).fit(texts, labels)
    store = ModelStore(tmp_path)
    meta = store.save(clf, encoder_ref="default")
    assert meta.hyperparameters["C_lexical"] == 30.0 and meta.lexical["temperature"] == clf.lex_temperature_
    loaded, _ = store.load(encoder=enc)
    assert {k: v for k, v in loaded.get_params().items() if k != "encoder"} == meta.hyperparameters
    np.testing.assert_allclose(loaded.predict_proba(texts), clf.predict_proba(texts), rtol=1e-6)


def _version_dir(root, name: str) -> None:
    (root / "versions" / name).mkdir(parents=True)
    (root / "versions" / name / "meta.json").write_text("{}")


@pytest.mark.parametrize("name", ["../../x", "v1/../../x", "x", ".v1.tmp"])
def test_promote_takes_only_a_v_n_name_the_store_knows(tmp_path, name):
    root = tmp_path / "models"
    _version_dir(root, "v1")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "meta.json").write_text("{}")  # what ../../x would reach from versions/
    store = ModelStore(root)
    with pytest.raises(ValueError, match="not a model version name"):
        store.promote(name)
    assert not (root / "current").exists()
    store.promote("v1")
    assert store.current() == "v1"


def _tiny_classifier() -> TextClassifier:
    from connector.classifier import FittedState

    enc = StubEncoder(dim=4)
    state = FittedState(["fresh", "rotten"], np.eye(2, 4, dtype=np.float32), np.zeros(2, dtype=np.float32), 1.0)
    return TextClassifier.from_state(state, enc)


def test_a_tmp_dir_left_by_a_crash_mid_save_does_not_block_the_next_save(tmp_path):
    store = ModelStore(tmp_path)
    stale = tmp_path / "versions" / ".v1.tmp"
    stale.mkdir(parents=True)
    (stale / "head.safetensors").write_bytes(b"half a file")  # the crash
    assert store.save(_tiny_classifier()).version == "v1"
    assert store.versions() == ["v1"] and store.meta("v1").labels == ["fresh", "rotten"]
    assert store.save(_tiny_classifier()).version == "v2"
