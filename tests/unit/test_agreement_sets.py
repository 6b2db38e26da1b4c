"""Agreement on label sets against references on random data: NLTK's MASI distance and
``AnnotationTask.alpha``, the ``krippendorff`` package with MASI as its distance, scikit-learn's
Cohen's kappa and statsmodels' Fleiss' kappa per label."""

from __future__ import annotations

# references (dev extra, always installed): a missing one fails the test rather than skipping it
import importlib

import krippendorff
import numpy as np
import pytest
from nltk.metrics.distance import masi_distance

nltk_agreement = importlib.import_module("nltk.metrics.agreement")  # the module, not nltk.metrics' re-export

from connector.agreement_sets import (
    answered_mask,
    krippendorff_alpha_masi,
    masi_distance_matrix,
    per_label_agreement,
    set_agreement_report,
    validate_sets,
)


def random_sets(seed: int, *, n: int = 40, annotators: int = 4, k: int = 5, p_label: float = 0.35,
                p_missing: float = 0.25, nonempty: bool = True, agree: float = 0.6) -> np.ndarray:
    """Set ratings: each annotator copies a per-item truth with probability ``agree`` per label,
    else draws the label at random; ``p_missing`` of the cells are unanswered (-1)."""
    rng = np.random.default_rng(seed)
    truth = rng.random((n, 1, k)) < p_label
    noise = rng.random((n, annotators, k)) < p_label
    Y = np.where(rng.random((n, annotators, k)) < agree, truth, noise).astype(np.int8)
    if nonempty:  # NLTK's MASI divides by zero on two empty sets
        empty = Y.sum(axis=2) == 0
        Y[empty, rng.integers(k)] = 1
    Y[rng.random((n, annotators)) < p_missing] = -1
    return Y


def nltk_task(Y: np.ndarray):
    n, A, _ = Y.shape
    data = [(f"c{a}", f"i{i}", frozenset(np.flatnonzero(Y[i, a]).tolist()))
            for i in range(n) for a in range(A) if Y[i, a, 0] != -1]
    return nltk_agreement.AnnotationTask(data=data, distance=masi_distance)


def test_masi_distances_equal_nltks_for_every_pair_of_sets():
    sets = np.array([[int(b) for b in f"{m:04b}"] for m in range(1, 16)])  # every non-empty subset of 4 labels
    ours = masi_distance_matrix(sets, sets)
    ref = np.array([[masi_distance(set(np.flatnonzero(a)), set(np.flatnonzero(b))) for b in sets] for a in sets])
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    assert ours[0, 0] == 0.0 and ours.max() == 1.0  # equal sets, disjoint sets


def test_masi_with_empty_sets():
    empty, some = np.zeros((1, 3)), np.array([[1, 0, 1]])
    assert masi_distance_matrix(empty, empty)[0, 0] == 0.0  # two "no label applies" answers agree
    assert masi_distance_matrix(empty, some)[0, 0] == 1.0


@pytest.mark.parametrize("seed", range(6))
def test_alpha_with_masi_equals_nltk_and_the_krippendorff_package(seed):
    Y = random_sets(seed, agree=[0.2, 0.5, 0.8, 0.9, 0.6, 0.0][seed])
    ours = krippendorff_alpha_masi(Y)
    assert ours == pytest.approx(nltk_task(Y).alpha(), abs=1e-9)

    # the package on value counts over the distinct sets, its distance read from NLTK's MASI
    answered = Y[:, :, 0] != -1
    sets = sorted({tuple(Y[i, a]) for i, a in zip(*np.nonzero(answered))})
    code = {s: c for c, s in enumerate(sets)}
    counts = np.zeros((len(Y), len(sets)), dtype=np.int64)
    for i, a in zip(*np.nonzero(answered)):
        counts[i, code[tuple(Y[i, a])]] += 1
    D = np.array([[masi_distance(set(np.flatnonzero(a)), set(np.flatnonzero(b))) for b in sets] for a in sets])

    def masi(v1, v2, i1, i2, n_v, dtype=np.float64):
        return D[i1, i2].astype(dtype)

    assert ours == pytest.approx(krippendorff.alpha(value_counts=counts, level_of_measurement=masi), abs=1e-9)


def test_alpha_with_empty_sets_matches_the_package_and_perfect_agreement_is_one():
    Y = random_sets(7, nonempty=False, p_label=0.2)
    assert (Y.sum(axis=2) == 0).any()  # empty answers are there
    values = np.unique(Y.reshape(-1, Y.shape[2])[Y.reshape(-1, Y.shape[2])[:, 0] != -1], axis=0)
    D = masi_distance_matrix(values, values)
    counts = np.array([[sum((Y[i, a] == v).all() for a in range(Y.shape[1])) for v in values] for i in range(len(Y))])
    ref = krippendorff.alpha(value_counts=counts, level_of_measurement=lambda v1, v2, i1, i2, n_v, dtype=None: D[i1, i2])
    assert krippendorff_alpha_masi(Y) == pytest.approx(ref, abs=1e-9)

    same = np.repeat(random_sets(1, annotators=1, p_missing=0.0), 3, axis=1)
    assert krippendorff_alpha_masi(same) == 1.0


def test_alpha_is_nan_when_undefined():
    one_answer = -np.ones((3, 2, 2), dtype=np.int8)
    one_answer[:, 0] = [1, 0]
    assert np.isnan(krippendorff_alpha_masi(one_answer))  # no item has two answers
    one_set = np.ones((3, 2, 2), dtype=np.int8)
    assert np.isnan(krippendorff_alpha_masi(one_set))  # a single set: no expected disagreement


@pytest.mark.parametrize("seed", range(4))
def test_per_label_kappas_equal_sklearn_and_statsmodels(seed):
    from sklearn.metrics import cohen_kappa_score
    from statsmodels.stats.inter_rater import aggregate_raters
    from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss

    Y = random_sets(seed, p_missing=0.2, nonempty=False)
    rows = per_label_agreement(Y, labels=list("abcde"))
    assert [r["label"] for r in rows] == list("abcde")
    for j, row in enumerate(rows):
        R = Y[:, :, j]
        for a in range(Y.shape[1]):
            for b in range(a + 1, Y.shape[1]):
                both = (R[:, a] != -1) & (R[:, b] != -1)
                ref = cohen_kappa_score(R[both, a], R[both, b], labels=[0, 1])
                assert row["cohen_kappa"][a, b] == pytest.approx(ref, abs=1e-9, nan_ok=True)
        complete = (R != -1).all(axis=1)
        table, _ = aggregate_raters(R[complete], n_cat=2)
        fleiss_complete = per_label_agreement(Y[complete])[j]["fleiss_kappa"]
        assert fleiss_complete == pytest.approx(sm_fleiss(table), abs=1e-9)
        assert row["n_yes"] == int((R == 1).sum())


def test_report_counts_and_exact_agreement():
    Y = np.array([
        [[1, 0], [1, 0], [-1, -1]],   # two equal answers
        [[1, 1], [0, 1], [1, 1]],     # one of three pairs agrees
        [[0, 0], [-1, -1], [-1, -1]],  # one answer: not pairable
    ], dtype=np.int8)
    report = set_agreement_report(Y, labels=["x", "y"], annotators=["ann", "bob", "cy"])
    assert (report["n_items"], report["n_annotators"], report["n_labels"]) == (3, 3, 2)
    assert report["n_answers"] == 6 and report["n_pairable_items"] == 2
    assert report["exact_agreement"] == pytest.approx((1.0 + 1 / 3) / 2)
    assert [r["label"] for r in report["per_label"]] == ["x", "y"]
    assert report["annotators"] == ["ann", "bob", "cy"]


def test_validation():
    assert answered_mask(np.array([[[1, 0], [-1, -1]]])).tolist() == [[True, False]]
    with pytest.raises(ValueError, match="3-D"):
        validate_sets(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="every label"):
        validate_sets(np.array([[[1, -1]]]))
    with pytest.raises(ValueError, match="0, 1 or -1"):
        validate_sets(np.array([[[2, 0]]]))
    with pytest.raises(ValueError, match="dtype"):
        validate_sets(np.array([[[0.5, 0.0]]]))
