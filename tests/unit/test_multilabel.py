"""MultiLabelClassifier on synthetic embeddings (and once on the tiny BERT), Platt scaling and
per-label ECE."""

from __future__ import annotations

import numpy as np
import pytest

from connector.calibration import PlattScaler, expected_calibration_error, per_label_ece, sigmoid
from connector.multilabel import (
    MultiLabelClassifier,
    label_matrix,
    load_multilabel,
    save_multilabel,
)
from tests.support.stub_encoder import StubEncoder

LABELS = ("sports", "politics", "tech", "arts")


def multilabel_blobs(n: int = 600, d: int = 16, seed: int = 0, scale: float = 3.0):
    """Embeddings and label sets drawn from a logistic model per label: ``(x, sets, Y)``."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(len(LABELS), d))
    b = np.array([-0.5, -1.0, -1.5, -2.0])
    x = (rng.normal(size=(n, d)) * scale / np.sqrt(d)).astype(np.float32)
    Y = (rng.random((n, len(LABELS))) < sigmoid(x @ W.T + b)).astype(np.int8)
    sets = [[LABELS[j] for j in np.flatnonzero(row)] for row in Y]
    return x, sets, Y


def sorted_columns(Y: np.ndarray) -> np.ndarray:
    """``Y``'s columns in sorted label order (the classifier's)."""
    return Y[:, np.argsort(LABELS)]


def test_label_matrix_and_its_errors():
    assert label_matrix([["b"], [], ["a", "b"]], ["a", "b"]).tolist() == [[0, 1], [0, 0], [1, 1]]
    with pytest.raises(ValueError, match=r"unknown to the model: \['c'\]"):
        label_matrix([["c"]], ["a", "b"])
    with pytest.raises(TypeError, match="list of labels"):
        label_matrix(["a"], ["a", "b"])


def test_init_only_stores_the_hyperparameters():
    clf = MultiLabelClassifier(C=2.0, calibration_method="platt", thresholds={"a": 0.7})
    assert clf.get_params()["C"] == 2.0 and clf.get_params()["thresholds"] == {"a": 0.7}
    assert not [k for k in vars(clf) if k.endswith("_")]


def test_fit_learns_each_label_with_sorted_columns_and_out_of_fold_probabilities():
    x, sets, Y = multilabel_blobs()
    clf = MultiLabelClassifier(C=1.0)
    assert clf.fit_embeddings(x, sets) is clf
    assert clf.classes_.tolist() == sorted(LABELS)
    assert clf.coef_.shape == (4, 16) and clf.intercept_.shape == (4,) and clf.temperature_.shape == (4,)
    assert clf.n_positive_.tolist() == sorted_columns(Y).sum(axis=0).tolist()
    assert clf.oof_proba_.shape == (600, 4) and clf.n_calibration_.tolist() == [600] * 4
    x_test, _, Y_test = multilabel_blobs(seed=0, n=1200)
    x_test, Y_test = x_test[600:], sorted_columns(Y_test[600:])
    P = clf.predict_proba_from_embeddings(x_test)
    assert P.shape == (600, 4) and ((P > 0) & (P < 1)).all()
    assert ((P >= 0.5) == Y_test).mean() > 0.75
    # out-of-fold probabilities score the training rows about as well as the held-out ones
    assert abs(((clf.oof_proba_ >= 0.5) == sorted_columns(Y)).mean() - ((P >= 0.5) == Y_test).mean()) < 0.06


@pytest.mark.parametrize("method", ["temperature", "platt"])
def test_calibration_lowers_per_label_ece_of_an_overconfident_head(method):
    x, sets, Y = multilabel_blobs(n=2400, d=32, seed=1)
    train, test = slice(0, 800), slice(800, None)
    clf = MultiLabelClassifier(C=100.0, calibration_method=method).fit_embeddings(x[train], sets[train])
    Y_test = sorted_columns(Y[test])
    before = per_label_ece(clf.predict_proba_from_embeddings(x[test], calibrated=False), Y_test)
    after = per_label_ece(clf.predict_proba_from_embeddings(x[test]), Y_test)
    assert after.mean() < 0.6 * before.mean() and after.max() < 0.06
    if method == "temperature":
        assert (clf.temperature_ > 1).all() and (clf.platt_a_ == 1).all()
    else:
        assert (clf.platt_a_ < 1).all() and (clf.temperature_ == 1).all()


def test_calibrate_on_selects_the_rows_and_too_few_leave_the_identity():
    x, sets, _ = multilabel_blobs()
    mask = np.zeros(len(sets), dtype=bool)
    mask[:200] = True
    clf = MultiLabelClassifier(C=100.0).fit_embeddings(x, sets, calibrate_on=mask)
    assert clf.n_calibration_.tolist() == [200] * 4 and (clf.platt_a_ != 1).all()
    few = MultiLabelClassifier(C=100.0, min_calibration_labels=300).fit_embeddings(x, sets, calibrate_on=mask)
    assert few.n_calibration_.tolist() == [0] * 4 and (few.platt_a_ == 1).all() and (few.platt_b_ == 0).all()
    np.testing.assert_array_equal(few.predict_proba_from_embeddings(x),
                                  few.predict_proba_from_embeddings(x, calibrated=False))
    with pytest.raises(ValueError, match="boolean mask"):
        MultiLabelClassifier().fit_embeddings(x, sets, calibrate_on=mask[:10])


def test_a_label_without_training_rows_gets_a_column_it_never_chooses():
    x, sets, _ = multilabel_blobs(n=200)
    clf = MultiLabelClassifier(classes=[*LABELS, "weather"]).fit_embeddings(x, sets)
    assert "weather" in clf.classes_.tolist()
    j = clf.classes_.tolist().index("weather")
    P = clf.predict_proba_from_embeddings(x)
    assert P[:, j].max() < 1e-6 and clf.n_positive_[j] == 0 and clf.n_calibration_[j] == 0
    assert all("weather" not in chosen for chosen in clf.decide(P))


def test_a_label_seen_once_is_not_calibrated():
    x, sets, _ = multilabel_blobs(n=200)
    sets = [[label for label in s if label != "arts"] for s in sets]
    sets[0] = [*sets[0], "arts"]
    clf = MultiLabelClassifier().fit_embeddings(x, sets)
    j = clf.classes_.tolist().index("arts")
    assert clf.n_positive_[j] == 1 and clf.n_calibration_[j] == 0
    assert (clf.temperature_[j], clf.platt_a_[j], clf.platt_b_[j]) == (1.0, 1.0, 0.0)


def test_thresholds_decide_and_the_task_score_is_the_least_sure_label():
    x, sets, _ = multilabel_blobs(n=300)
    clf = MultiLabelClassifier(thresholds={"tech": 0.8}).fit_embeddings(x, sets)
    assert clf.thresholds_.tolist() == [0.5, 0.5, 0.5, 0.8]  # arts, politics, sports, tech
    P = np.array([[0.9, 0.2, 0.6, 0.7]])
    assert clf.decide(P) == [["arts", "sports"]]  # tech at 0.7 is under its 0.8
    assert clf.task_score(P).tolist() == pytest.approx([0.3])  # tech: "no" with 0.3
    assert clf.set_confidence(P).tolist() == pytest.approx([0.9 * 0.8 * 0.6 * 0.3])
    clf.set_thresholds(0.5)
    assert clf.decide(P) == [["arts", "sports", "tech"]] and clf.task_score(P).tolist() == pytest.approx([0.6])
    with pytest.raises(ValueError, match="lacks"):
        clf.set_thresholds({"weather": 0.5})
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        clf.set_thresholds(0.0)


@pytest.mark.parametrize("features", ["embeddings", "embeddings+tfidf"])
def test_save_and_load_serve_the_same_probabilities(tmp_path, features):
    encoder = StubEncoder(dim=64)  # sums of random word vectors: 64 wide, the label words stand out
    rng = np.random.default_rng(0)
    texts, sets = [], []
    for _ in range(160):
        chosen = [label for label in LABELS if rng.random() < 0.35]
        words = [f"{label}{rng.integers(4)}" for label in chosen] + [f"w{rng.integers(30)}" for _ in range(5)]
        texts.append(" ".join(rng.permutation(words)))
        sets.append(chosen)
    clf = MultiLabelClassifier(encoder, features=features, calibration_method="platt",
                               thresholds={"arts": 0.6}).fit(texts, sets)
    directory = save_multilabel(clf.state(), tmp_path / "heads" / "topic")
    assert (directory / "multilabel.safetensors").exists() and (directory / "multilabel.json").exists()
    assert (directory / "lexical.json").exists() == (features == "embeddings+tfidf")
    loaded = MultiLabelClassifier.from_state(load_multilabel(directory), encoder)
    assert loaded.classes_.tolist() == clf.classes_.tolist() and loaded.features == features
    assert loaded.thresholds_.tolist() == clf.thresholds_.tolist()
    assert loaded.calibration_method == "platt" and loaded.get_params()["thresholds"] == {"arts": 0.6}
    new = ["sports1 w3 w4", "tech2 politics0 w1", "nothing here"]
    np.testing.assert_array_equal(loaded.predict_proba(new), clf.predict_proba(new))
    assert loaded.predict(new) == clf.predict(new)
    train_acc = (np.array([[label in s for label in clf.classes_] for s in clf.predict(texts)])
                 == np.array([[label in s for label in clf.classes_] for s in sets])).mean()
    assert train_acc > 0.9


def test_from_state_reorders_labels_saved_in_another_order():
    x, sets, _ = multilabel_blobs(n=200)
    clf = MultiLabelClassifier().fit_embeddings(x, sets)
    state = clf.state()
    order = [3, 1, 0, 2]
    shuffled = type(state)(**{**state.__dict__, "labels": [state.labels[i] for i in order],
                              **{name: getattr(state, name)[order] for name in
                                 ("coef", "intercept", "temperature", "platt_a", "platt_b", "thresholds", "n_positive")}})
    again = MultiLabelClassifier.from_state(shuffled)
    np.testing.assert_array_equal(again.predict_proba_from_embeddings(x), clf.predict_proba_from_embeddings(x))


def test_load_refuses_arrays_that_do_not_fit_the_labels(tmp_path):
    import json

    x, sets, _ = multilabel_blobs(n=200)
    directory = save_multilabel(MultiLabelClassifier().fit_embeddings(x, sets).state(), tmp_path / "m")
    meta = json.loads((directory / "multilabel.json").read_text())
    meta["labels"] = meta["labels"][:3]
    (directory / "multilabel.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="for 3 labels"):
        load_multilabel(directory)


def test_fit_errors_say_what_is_wrong():
    x, sets, _ = multilabel_blobs(n=50)
    with pytest.raises(ValueError, match="50 embeddings but 49"):
        MultiLabelClassifier().fit_embeddings(x, sets[:49])
    with pytest.raises(ValueError, match="texts="):
        MultiLabelClassifier(features="embeddings+tfidf").fit_embeddings(x, sets)
    with pytest.raises(ValueError, match="no label to learn"):
        MultiLabelClassifier().fit_embeddings(x, [[] for _ in sets])
    with pytest.raises(ValueError, match="calibration_method"):
        MultiLabelClassifier(calibration_method="isotonic").fit_embeddings(x, sets)
    with pytest.raises(ValueError, match="unknown to the model"):
        MultiLabelClassifier(classes=["sports"]).fit_embeddings(x, sets)


def test_on_the_tiny_bert(tiny_encoder):
    texts = ["the match ended in a draw", "parliament passed the budget", "a new phone chip",
             "the striker scored twice", "the minister resigned", "software update released"] * 5
    sets = [["sports"], ["politics"], ["tech"], ["sports"], ["politics"], ["tech", "politics"]] * 5
    clf = MultiLabelClassifier(tiny_encoder, min_calibration_labels=5).fit(texts, sets)
    P = clf.predict_proba(texts[:6])
    assert P.shape == (6, 3) and np.isfinite(P).all()
    assert clf.coef_.shape == (3, tiny_encoder.dim)


# -- Platt scaling and per-label ECE -----------------------------------------------------------

def test_platt_without_a_prior_is_the_maximum_likelihood_logistic_fit():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=4000)
    y = (rng.random(4000) < sigmoid(0.4 * z - 0.7)).astype(int)
    scaler = PlattScaler(prior_sd=None).fit(z, y)
    ref = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(z[:, None], y)
    assert scaler.a_ == pytest.approx(ref.coef_[0, 0], abs=1e-5)
    assert scaler.b_ == pytest.approx(ref.intercept_[0], abs=1e-5)
    assert scaler.a_ == pytest.approx(0.4, abs=0.05) and scaler.b_ == pytest.approx(-0.7, abs=0.1)
    np.testing.assert_allclose(scaler.transform(z), sigmoid(scaler.a_ * z + scaler.b_))


def test_platts_prior_keeps_a_few_labels_near_the_identity_and_separable_data_finite():
    z = np.array([-3.0, -1.0, 1.0, 3.0])
    y = np.array([0, 0, 1, 1])  # separable: maximum likelihood runs off to infinity
    scaler = PlattScaler(prior_sd=1.0).fit(z, y)
    assert np.isfinite([scaler.a_, scaler.b_]).all() and 1.0 < scaler.a_ < 4.0 and abs(scaler.b_) < 1e-6
    with pytest.raises(ValueError, match="0/1"):
        PlattScaler().fit(z, np.array([0, 1, 2, 1]))


def test_per_label_ece_scores_each_column_as_a_yes_no_decision():
    rng = np.random.default_rng(0)
    P = rng.random((500, 3))
    Y = (rng.random((500, 3)) < P).astype(int)
    Y[:, 2] = 1 - Y[:, 2]  # the third label is anti-calibrated
    ece = per_label_ece(P, Y)
    for j in range(3):
        assert ece[j] == expected_calibration_error(np.stack([1 - P[:, j], P[:, j]], 1), Y[:, j])
    assert ece[:2].max() < 0.08 and ece[2] > 0.3
    with pytest.raises(ValueError, match=r"\(n, k\)"):
        per_label_ece(P, Y[:, :2])


def test_sigmoid_is_stable_at_large_logits():
    assert sigmoid(np.array([-1000.0, 0.0, 1000.0])).tolist() == [0.0, 0.5, 1.0]
