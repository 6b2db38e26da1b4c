"""TextClassifier as an estimator, on synthetic embeddings (no model weights are loaded)."""

import numpy as np
import pytest

from connector.calibration import averaged_temperatures, expected_calibration_error, softmax
from connector.classifier import (
    FittedState,
    TextClassifier,
    cross_fitted_logits,
    fit_softmax_head,
    stratified_split,
)
from tests.support.stub_encoder import StubEncoder


def blobs(n: int = 300, classes: tuple[str, ...] = ("b", "a", "c"), d: int = 8, spread: float = 1.5, seed: int = 0):
    """Gaussian clusters, one per class, labels drawn at random; ``(x, labels)``."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(classes), d))
    y = rng.integers(len(classes), size=n)
    x = centers[y] + spread * rng.normal(size=(n, d)) / np.sqrt(d)
    return x.astype(np.float32), [classes[i] for i in y]


def texts_for(labels: list[str], seed: int = 0) -> list[str]:
    """Short texts whose words say the label most of the time."""
    rng = np.random.default_rng(seed)
    vocab = {c: [f"{c}{j}" for j in range(6)] for c in sorted(set(labels))}
    filler = [f"w{j}" for j in range(30)]
    out = []
    for lb in labels:
        own = lb if rng.random() < 0.8 else str(rng.choice(sorted(vocab)))
        out.append(" ".join(list(rng.choice(vocab[own], 2)) + list(rng.choice(filler, 5))))
    return out


def test_init_only_stores_the_hyperparameters():
    clf = TextClassifier(None, features="embeddings+tfidf", C=3.0, C_lexical=7.0, folds=4, random_state=2)
    assert clf.get_params() == {"encoder": None, "features": "embeddings+tfidf", "classes": None, "C": 3.0,
                                "C_lexical": 7.0, "calibration": "cross_fit", "folds": 4,
                                "calibration_fraction": 0.2, "min_calibration_labels": 10,
                                "temperature_prior_sd": 1.0, "max_iter": 200, "random_state": 2}
    assert not [k for k in vars(clf) if k.endswith("_")]  # nothing fitted yet


def test_fit_returns_self_with_sorted_classes_and_the_fitted_attributes():
    x, labels = blobs()
    clf = TextClassifier()
    assert clf.fit_embeddings(x, labels) is clf
    assert clf.classes_.tolist() == ["a", "b", "c"]  # sorted, whatever order the labels came in
    assert clf.coef_.shape == (3, 8) and clf.intercept_.shape == (3,) and clf.temperature_ > 0
    assert clf.lexical_ is None and clf.n_folds_ == 5
    assert clf.oof_proba_.shape == (300, 3)
    np.testing.assert_allclose(clf.oof_proba_.sum(1), 1.0)
    assert (clf.classes_[clf.oof_proba_.argmax(1)] == np.array(labels)).mean() > 0.8


def test_the_classes_hyperparameter_is_sorted_too_and_keeps_a_column_for_an_unseen_label():
    x, labels = blobs(classes=("b", "a"))
    clf = TextClassifier(classes=["zeta", "b", "a"]).fit_embeddings(x, labels)
    assert clf.classes_.tolist() == ["a", "b", "zeta"]
    p = clf.predict_proba_from_embeddings(x)
    assert p.shape == (300, 3) and p[:, 2].max() < 1e-3
    with pytest.raises(ValueError, match=r"\['q'\]"):
        TextClassifier(classes=["a", "b"]).fit_embeddings(x[:3], ["a", "b", "q"])


def test_cross_fit_is_the_retraining_recipe_step_by_step():
    """Heads on every label, temperature on out-of-fold logits from seeded stratified folds: the
    numbers the scheduler's retraining produced before the estimator did the work."""
    x, labels = blobs(seed=3)
    clf = TextClassifier(C=4.0, folds=4, random_state=7).fit_embeddings(x, labels)
    y = np.searchsorted(np.array(["a", "b", "c"]), labels)
    oof = cross_fitted_logits(x, y, 3, folds=4, C=4.0, seed=7)
    coef, intercept = fit_softmax_head(x, y, 3, C=4.0)
    t = averaged_temperatures([oof], y, prior_sd=1.0)[0]  # log T shrunk towards 0 by a N(0, 1) prior
    np.testing.assert_array_equal(clf.coef_, coef)
    np.testing.assert_array_equal(clf.intercept_, intercept)
    assert clf.temperature_ == t
    np.testing.assert_array_equal(clf.oof_proba_, softmax(oof, t))


def test_a_class_with_one_label_leaves_the_temperature_at_one():
    x, labels = blobs(n=40, classes=("a", "b"))
    labels = ["c"] + labels[1:]
    clf = TextClassifier().fit_embeddings(x, labels)
    assert clf.n_folds_ == 0 and clf.temperature_ == 1.0
    np.testing.assert_allclose(clf.oof_proba_, 1 / 3)


def test_holdout_and_none_calibration():
    x, labels = blobs(seed=1)
    held = TextClassifier(calibration="holdout", calibration_fraction=0.25).fit_embeddings(x, labels)
    assert held.temperature_ != 1.0 and held.oof_proba_ is None and held.n_folds_ == 0
    rest, _ = stratified_split(held.label_indices(labels), 0.25, seed=0)
    coef, _ = fit_softmax_head(x[rest], held.label_indices(labels)[rest], 3, C=10.0)
    np.testing.assert_array_equal(held.coef_, coef)  # the head never saw the held-out quarter
    none = TextClassifier(calibration="none").fit_embeddings(x, labels)
    assert none.temperature_ == 1.0 and none.oof_proba_ is None


def test_classifier_beats_chance_and_is_calibrated_on_held_out():
    x, labels = blobs(n=600, spread=3.0, seed=4)
    train, test = stratified_split(np.array(labels), 0.3, seed=1)
    clf = TextClassifier().fit_embeddings(x[train], [labels[i] for i in train])
    y = clf.label_indices([labels[i] for i in test])
    probs = clf.predict_proba_from_embeddings(x[test])
    assert (probs.argmax(1) == y).mean() > 0.6  # three classes: chance is 1/3
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert clf.temperature_ != 1.0 and expected_calibration_error(probs, y) < 0.15


def test_predict_from_texts_uses_the_same_path():
    enc = StubEncoder()
    _, labels = blobs(n=120, classes=("neg", "pos"))
    texts = texts_for(labels)
    clf = TextClassifier(enc).fit(texts, labels)
    np.testing.assert_allclose(clf.predict_proba(texts[:5]), clf.predict_proba_from_embeddings(enc.encode(texts[:5])),
                               atol=1e-6)
    assert set(clf.predict(texts)) <= {"neg", "pos"} and (clf.predict(texts) == np.array(labels)).mean() > 0.7


def test_a_word_feature_head_is_fitted_with_its_own_temperature_and_averaged():
    enc = StubEncoder()
    _, labels = blobs(n=200, classes=("neg", "pos", "mid"), seed=5)
    texts = texts_for(labels, seed=5)
    x = enc.encode(texts)
    clf = TextClassifier(enc, features="embeddings+tfidf", C_lexical=50.0).fit_embeddings(x, labels, texts=texts)
    assert clf.lexical_ is not None and clf.lex_coef_.shape == (3, clf.lexical_.size) and clf.lex_temperature_ > 0
    emb = softmax(clf.logits_from_embeddings(x), clf.temperature_)
    lex = softmax(np.asarray(clf.lexical_.transform(texts) @ clf.lex_coef_.T + clf.lex_intercept_),
                  clf.lex_temperature_)
    np.testing.assert_allclose(clf.predict_proba_from_embeddings(x, texts=texts), (emb + lex) / 2, rtol=1e-6)
    np.testing.assert_allclose(clf.predict_proba(texts), (emb + lex) / 2, rtol=1e-5)
    with pytest.raises(ValueError, match="pass texts="):
        clf.predict_proba_from_embeddings(x)
    with pytest.raises(ValueError, match="pass texts="):
        TextClassifier(features="embeddings+tfidf").fit_embeddings(x, labels)


def test_from_state_reorders_rows_of_a_state_saved_in_another_label_order():
    x, labels = blobs(classes=("a", "b"))
    clf = TextClassifier(calibration="none").fit_embeddings(x, labels)
    swapped = FittedState(["b", "a"], clf.coef_[::-1], clf.intercept_[::-1], 1.3)
    back = TextClassifier.from_state(swapped, C=2.0, calibration_fraction=0.0, unknown_param=1)
    assert back.classes_.tolist() == ["a", "b"] and back.C == 2.0
    assert back.min_calibration_labels == 10 and back.n_calibration_ is None  # a version saved before either
    np.testing.assert_allclose(back.predict_proba_from_embeddings(x),
                               softmax(clf.logits_from_embeddings(x), 1.3), rtol=1e-6)


def test_unknown_labels_are_named():
    x, labels = blobs(n=20, classes=("a", "b"))
    clf = TextClassifier().fit_embeddings(x, labels)
    with pytest.raises(ValueError, match=r"\['zzz'\]"):
        clf.label_indices(["a", "zzz"])


def test_fit_needs_two_classes_and_matching_lengths():
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="two classes"):
        TextClassifier().fit_embeddings(x, ["a"] * 10)
    with pytest.raises(ValueError, match="labels"):
        TextClassifier().fit_embeddings(x, ["a", "b"])
    with pytest.raises(ValueError, match="calibration"):
        TextClassifier(calibration="platt").fit_embeddings(x, ["a", "b"] * 5)


def test_softmax_head_separates_separable_data():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-2, 1, size=(200, 3)), rng.normal(2, 1, size=(200, 3))])
    y = np.repeat([0, 1], 200)
    w, b = fit_softmax_head(x, y, 2, C=1.0)
    assert ((x @ w.T + b).argmax(1) == y).mean() > 0.97


def test_stratified_split_keeps_class_shares():
    y = np.array([0] * 80 + [1] * 20)
    rest, held = stratified_split(y, 0.25, seed=0)
    assert len(np.intersect1d(rest, held)) == 0 and len(rest) + len(held) == 100
    assert (y[held] == 0).sum() == 20 and (y[held] == 1).sum() == 5


def noisy_tail(labels: list[str], start: int, share: float, seed: int = 0) -> list[str]:
    """``labels`` with ``share`` of the rows from ``start`` on given another label: items whose
    labels a model cannot predict, as hard as the ones an active learner picks."""
    rng = np.random.default_rng(seed)
    classes = sorted(set(labels))
    out = list(labels)
    for i in range(start, len(out)):
        if rng.random() < share:
            out[i] = str(rng.choice([c for c in classes if c != out[i]]))
    return out


def test_the_temperature_is_fitted_on_the_masked_rows_only_and_the_head_on_every_row():
    x, labels = blobs(n=400, seed=6)
    labels = noisy_tail(labels, 200, 0.5)
    mask = np.arange(400) < 200  # the clean half: the labels drawn at random
    clf = TextClassifier(folds=4, random_state=1).fit_embeddings(x, labels, calibrate_on=mask.tolist())
    every = TextClassifier(folds=4, random_state=1).fit_embeddings(x, labels)
    y = clf.label_indices(labels)
    oof = cross_fitted_logits(x, y, 3, folds=4, C=10.0, seed=1)
    assert clf.temperature_ == averaged_temperatures([oof[mask]], y[mask], prior_sd=1.0)[0]
    assert every.temperature_ == averaged_temperatures([oof], y, prior_sd=1.0)[0]
    assert every.temperature_ > 1.3 * clf.temperature_  # the noisy half flattens the model for the clean one
    assert clf.n_calibration_ == 200 and every.n_calibration_ == 400
    np.testing.assert_array_equal(clf.coef_, every.coef_)  # the heads learn from every label
    np.testing.assert_allclose(clf.oof_proba_, softmax(oof, clf.temperature_))


def test_too_few_masked_rows_leave_the_temperatures_at_one_and_few_move_them_little():
    enc = StubEncoder()
    _, labels = blobs(n=200, classes=("neg", "pos"), seed=7)
    texts = texts_for(labels, seed=7)
    x = enc.encode(texts)
    few = np.arange(200) < 9
    clf = TextClassifier(enc, features="embeddings+tfidf").fit_embeddings(x, labels, texts=texts, calibrate_on=few)
    assert clf.temperature_ == 1.0 and clf.lex_temperature_ == 1.0 and clf.n_calibration_ == 0
    assert clf.oof_proba_.shape == (200, 2)  # still the out-of-fold probabilities, uncalibrated
    low = TextClassifier(enc, features="embeddings+tfidf", min_calibration_labels=9).fit_embeddings(
        x, labels, texts=texts, calibrate_on=few)
    assert low.n_calibration_ == 9 and low.temperature_ != 1.0 and low.lex_temperature_ != 1.0
    np.testing.assert_array_equal(low.coef_, clf.coef_)
    mle = TextClassifier(enc, features="embeddings+tfidf", min_calibration_labels=9, temperature_prior_sd=None)
    mle.fit_embeddings(x, labels, texts=texts, calibrate_on=few)
    distance = np.abs(np.log([low.temperature_, low.lex_temperature_]))  # from T = 1
    assert distance.sum() < np.abs(np.log([mle.temperature_, mle.lex_temperature_])).sum()
    nothing = TextClassifier(enc).fit_embeddings(x, labels, calibrate_on=np.zeros(200, dtype=bool))
    assert nothing.temperature_ == 1.0 and nothing.n_calibration_ == 0


def test_the_mask_must_be_booleans_one_per_row():
    x, labels = blobs(n=60)
    with pytest.raises(ValueError, match="boolean mask of 60 rows"):
        TextClassifier().fit_embeddings(x, labels, calibrate_on=np.ones(59, dtype=bool))
    with pytest.raises(ValueError, match="boolean mask of 60 rows"):
        TextClassifier().fit_embeddings(x, labels, calibrate_on=np.arange(60))


def test_holdout_holds_out_masked_rows_only():
    x, labels = blobs(n=400, seed=8)
    mask = np.arange(400) % 2 == 0
    clf = TextClassifier(calibration="holdout", calibration_fraction=0.25).fit_embeddings(x, labels, calibrate_on=mask)
    y = clf.label_indices(labels)
    rows = np.flatnonzero(mask)
    held = rows[stratified_split(y[rows], 0.25, seed=0)[1]]
    rest = np.setdiff1d(np.arange(400), held)
    coef, intercept = fit_softmax_head(x[rest], y[rest], 3, C=10.0)
    np.testing.assert_array_equal(clf.coef_, coef)  # every row but the held-out masked ones
    assert clf.n_calibration_ == len(held) and abs(len(held) - 50) <= 1  # a quarter of the 200 masked rows
    assert clf.temperature_ == averaged_temperatures([x[held] @ coef.T + intercept], y[held], prior_sd=1.0)[0]
    few = TextClassifier(calibration="holdout", calibration_fraction=0.04).fit_embeddings(x, labels, calibrate_on=mask)
    assert few.temperature_ == 1.0 and few.n_calibration_ == 0  # 8 held out would be too few: none is
    np.testing.assert_array_equal(few.coef_, fit_softmax_head(x, y, 3, C=10.0)[0])
