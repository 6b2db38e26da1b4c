import numpy as np
import pytest

from connector.calibration import expected_calibration_error
from connector.classifier import TextClassifier, fit_softmax_head, stratified_split


@pytest.mark.slow
def test_classifier_beats_chance_and_is_calibrated_on_held_out(trained):
    clf, x_test, y_test = trained
    y = clf.label_indices(y_test)
    probs = clf.predict_proba_from_embeddings(x_test)
    assert (probs.argmax(1) == y).mean() > 0.65  # two balanced classes: chance is 0.5
    assert clf.temperature_ != 1.0
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert expected_calibration_error(probs, y) < 0.2


@pytest.mark.slow
def test_predict_from_texts_uses_the_same_path(trained, rt_sample):
    clf, _, _ = trained
    texts = rt_sample[0][:5]
    np.testing.assert_allclose(clf.predict_proba(texts),
                               clf.predict_proba_from_embeddings(clf.encoder.encode(texts)), atol=1e-6)
    assert set(clf.predict(texts)) <= {"fresh", "rotten"}


def test_unknown_labels_are_named():
    clf = TextClassifier()
    clf.classes_ = np.array(["a", "b"])
    with pytest.raises(ValueError, match=r"\['zzz'\]"):
        clf.label_indices(["a", "zzz"])


def test_fit_needs_two_classes_and_matching_lengths():
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="two classes"):
        TextClassifier().fit_embeddings(x, ["a"] * 10)
    with pytest.raises(ValueError, match="labels"):
        TextClassifier().fit_embeddings(x, ["a", "b"])


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
