"""Consensus: majority vote on small known cases; Dawid-Skene against majority vote on simulated annotators."""

from __future__ import annotations

import numpy as np
import pytest

from connector.consensus import ConsensusResult, DawidSkene, dawid_skene, majority_vote

K = 5
ACCURACIES = [0.9, 0.9, 0.9, 0.85, 0.3]  # annotator 4 is the noisy one
NOISY = 4


def simulate(seed: int, *, n: int = 2000, k: int = K, accuracies=ACCURACIES, p_answer: float = 0.6):
    """True labels, and answers that are right with each annotator's accuracy and otherwise uniform over the
    other ``k - 1`` classes; each annotator answers each item with probability ``p_answer``."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, size=n)
    A = len(accuracies)
    correct = rng.random((n, A)) < np.asarray(accuracies)
    wrong = (truth[:, None] + rng.integers(1, k, size=(n, A))) % k  # uniform over the other classes
    R = np.where(correct, truth[:, None], wrong)
    R = np.where(rng.random((n, A)) < p_answer, R, -1)
    return truth, R.astype(np.int64)


# --- majority vote --------------------------------------------------------------------------------


def test_majority_vote_settles_clear_winner():
    R = np.array([[0, 0, 1], [2, 2, 2]])
    res = majority_vote(R, n_classes=3)
    assert isinstance(res, ConsensusResult)
    assert res.label.tolist() == [0, 2]
    np.testing.assert_allclose(res.agreement, [2 / 3, 1.0])
    assert res.n_answers.tolist() == [3, 3]
    assert res.reason == ["settled", "settled"]


def test_majority_vote_tie_is_unsettled_with_reason_tie():
    R = np.array([[0, 1, -1, -1], [0, 0, 1, 1]])
    res = majority_vote(R, n_classes=2)
    assert res.label.tolist() == [-1, -1]
    assert res.reason == ["tie", "tie"]
    np.testing.assert_allclose(res.agreement, [0.5, 0.5])


def test_majority_vote_low_agreement_sends_item_back():
    R = np.array([[0, 0, 1, 2, 3], [0, 0, 0, 1, 2]])  # winners hold 2/5 and 3/5
    res = majority_vote(R, n_classes=4, min_agreement=0.6)
    assert res.label.tolist() == [-1, 0]
    assert res.reason == ["low_agreement", "settled"]
    np.testing.assert_allclose(res.agreement, [0.4, 0.6])  # agreement >= min_agreement settles


def test_majority_vote_ignores_missing_and_flags_items_without_answers():
    R = np.array([[-1, 1, -1], [-1, -1, -1], [2, -1, 2]])
    res = majority_vote(R, n_classes=3)
    assert res.label.tolist() == [1, -1, 2]
    assert res.n_answers.tolist() == [1, 0, 2]
    assert res.reason == ["settled", "no_answers", "settled"]
    assert np.isnan(res.agreement[1])
    assert res.settled.tolist() == [True, False, True]


def test_majority_vote_min_answers_takes_precedence_over_agreement():
    R = np.array([[1, 1, -1], [1, 1, 1], [0, 1, -1]])
    res = majority_vote(R, n_classes=2, min_answers=3)
    assert res.label.tolist() == [-1, 1, -1]
    assert res.reason == ["too_few_answers", "settled", "too_few_answers"]


def test_majority_vote_rejects_bad_input():
    with pytest.raises(ValueError):
        majority_vote(np.array([[0, 3]]), n_classes=3)
    with pytest.raises(ValueError):
        majority_vote(np.array([[0.0, 1.0]]), n_classes=3)
    with pytest.raises(ValueError):
        majority_vote(np.array([[0, 1]]), n_classes=3, min_agreement=1.5)


# --- Dawid-Skene ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulated():
    truth, R = simulate(0)
    model = DawidSkene(n_classes=K).fit(R)
    return truth, R, model


def _majority_accuracy_ties_to_first_class(truth, R):
    """Majority vote with ties broken by the lowest class code (argmax's choice), min_agreement 0: the
    kinder of the two tie conventions to majority vote. Items with no answers count as wrong."""
    res = majority_vote(R, n_classes=K, min_agreement=0.0)
    counts = np.stack([(R == c).sum(axis=1) for c in range(K)], axis=1)
    label = np.where(res.n_answers > 0, counts.argmax(axis=1), -1)
    return float((label == truth).mean()), float((res.label == truth).mean())


def test_dawid_skene_beats_majority_vote_with_a_noisy_annotator(simulated):
    truth, R, model = simulated
    ds_acc = float((model.predict() == truth).mean())
    mv_first, mv_tie_wrong = _majority_accuracy_ties_to_first_class(truth, R)
    assert mv_tie_wrong <= mv_first
    assert ds_acc > mv_first + 0.01, (ds_acc, mv_first)


def test_dawid_skene_finds_the_noisy_annotator(simulated):
    _, _, model = simulated
    acc = model.annotator_accuracy_
    assert acc.shape == (len(ACCURACIES),)
    assert acc[NOISY] < 0.45
    assert (np.delete(acc, NOISY) > 0.8).all()
    np.testing.assert_allclose(acc, ACCURACIES, atol=0.05)


def test_dawid_skene_fitted_attributes(simulated):
    _, R, model = simulated
    A = R.shape[1]
    assert model.class_prior_.shape == (K,)
    np.testing.assert_allclose(model.class_prior_.sum(), 1.0)
    assert model.confusion_.shape == (A, K, K)
    np.testing.assert_allclose(model.confusion_.sum(axis=2), 1.0)
    assert model.posterior_.shape == (R.shape[0], K)
    np.testing.assert_allclose(model.posterior_.sum(axis=1), 1.0)
    assert 1 <= model.n_iter_ <= model.max_iter


def test_dawid_skene_fit_returns_self():
    _, R = simulate(1, n=200)
    model = DawidSkene(n_classes=K)
    assert model.fit(R) is model


def test_dawid_skene_is_deterministic_for_a_fixed_seed():
    a = DawidSkene(n_classes=K).fit(simulate(3, n=500)[1])
    b = DawidSkene(n_classes=K).fit(simulate(3, n=500)[1])
    np.testing.assert_array_equal(a.posterior_, b.posterior_)
    np.testing.assert_array_equal(a.confusion_, b.confusion_)
    np.testing.assert_array_equal(a.predict(), b.predict())


def test_dawid_skene_items_without_answers_get_minus_one():
    _, R = simulate(2, n=300)
    R[[0, 10, 299]] = -1
    model = DawidSkene(n_classes=K).fit(R)
    pred = model.predict()
    assert pred[[0, 10, 299]].tolist() == [-1, -1, -1]
    answered = (R >= 0).any(axis=1)
    assert ((pred == -1) == ~answered).all()  # the simulation leaves a few more items unanswered
    assert model.predict(R).tolist() == pred.tolist()
    res = dawid_skene(R, n_classes=K)
    assert [res.reason[i] for i in (0, 10, 299)] == ["no_answers"] * 3
    assert np.isnan(res.agreement[[0, 10, 299]]).all()


def test_dawid_skene_function_applies_min_confidence(simulated):
    truth, R, model = simulated
    res = dawid_skene(R, n_classes=K, min_confidence=0.9)
    conf = model.posterior_.max(axis=1)
    answered = res.n_answers > 0
    np.testing.assert_allclose(res.agreement[answered], conf[answered])
    low = answered & (conf < 0.9)
    assert low.any()
    assert (res.label[low] == -1).all()
    assert all(res.reason[i] == "low_confidence" for i in np.flatnonzero(low))
    kept = res.label >= 0
    assert (res.label[kept] == model.predict()[kept]).all()
    assert (res.label[kept] == truth[kept]).mean() > (model.predict() == truth).mean()


def test_predict_before_fit_raises():
    with pytest.raises(RuntimeError):
        DawidSkene(n_classes=K).predict()
