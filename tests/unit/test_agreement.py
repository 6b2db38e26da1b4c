"""Agreement metrics against reference implementations on random data, and small known cases."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

from connector.agreement import (
    agreement_report,
    cohen_kappa_matrix,
    fleiss_kappa,
    item_class_counts,
    krippendorff_alpha_nominal,
    pairwise_confusion,
    pairwise_confusions,
    percent_agreement,
)

SEEDS = [0, 1, 2, 3, 4]
TOL = 1e-9


def random_ratings(seed: int, *, n: int = 200, A: int = 6, k: int = 4, missing: float = 0.3) -> np.ndarray:
    """Ratings with some real agreement: each item has a true class that annotators keep with p=0.6."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, size=n)
    noise = rng.integers(0, k, size=(n, A))
    R = np.where(rng.random((n, A)) < 0.6, truth[:, None], noise)
    R[rng.random((n, A)) < missing] = -1
    return R


@pytest.mark.parametrize("seed", SEEDS)
def test_cohen_kappa_matrix_matches_sklearn_for_every_pair(seed):
    from sklearn.metrics import cohen_kappa_score

    R = random_ratings(seed)
    K = cohen_kappa_matrix(R, n_classes=4)
    for a, b in itertools.combinations(range(R.shape[1]), 2):
        both = (R[:, a] >= 0) & (R[:, b] >= 0)
        ref = cohen_kappa_score(R[both, a], R[both, b])
        assert K[a, b] == pytest.approx(ref, abs=TOL)
        assert K[b, a] == pytest.approx(ref, abs=TOL)
    np.testing.assert_array_equal(np.diag(K), 1.0)


@pytest.mark.parametrize("seed", SEEDS)
def test_fleiss_kappa_matches_statsmodels_on_complete_matrix(seed):
    from statsmodels.stats.inter_rater import aggregate_raters
    from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss

    R = random_ratings(seed, missing=0.0)
    table, _ = aggregate_raters(R, n_cat=4)
    assert fleiss_kappa(R, n_classes=4) == pytest.approx(sm_fleiss(table, method="fleiss"), abs=TOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_fleiss_kappa_with_missing_is_the_varying_count_generalisation(seed):
    R = random_ratings(seed)
    counts = item_class_counts(R, n_classes=4)
    m = counts.sum(1)
    # hand loop over items, the formula as documented
    P, totals = [], np.zeros(4)
    for i in range(len(R)):
        if m[i] >= 2:
            P.append(sum(c * (c - 1) for c in counts[i]) / (m[i] * (m[i] - 1)))
            totals += counts[i]
    p = totals / totals.sum()
    pe = (p**2).sum()
    expected = (np.mean(P) - pe) / (1 - pe)
    assert fleiss_kappa(R, n_classes=4) == pytest.approx(expected, abs=TOL)
    assert percent_agreement(R) == pytest.approx(np.mean(P), abs=TOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_krippendorff_alpha_matches_package_with_missing_values(seed):
    import krippendorff

    R = random_ratings(seed, missing=0.4)
    data = np.where(R >= 0, R, np.nan).astype(np.float64).T
    ref = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
    assert krippendorff_alpha_nominal(R, n_classes=4) == pytest.approx(ref, abs=TOL)


def test_krippendorff_alpha_ignores_items_with_one_answer():
    import krippendorff

    R = random_ratings(7, missing=0.0)
    R[:50, 1:] = -1  # 50 items answered by annotator 0 only
    data = np.where(R >= 0, R, np.nan).astype(np.float64).T
    ref = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
    assert krippendorff_alpha_nominal(R, n_classes=4) == pytest.approx(ref, abs=TOL)
    assert krippendorff_alpha_nominal(R, n_classes=4) == pytest.approx(
        krippendorff_alpha_nominal(R[50:], n_classes=4), abs=TOL
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_percent_agreement_is_mean_share_of_agreeing_pairs(seed):
    R = random_ratings(seed, n=60, A=5)
    shares = []
    for row in R:
        ans = row[row >= 0]
        if len(ans) >= 2:
            pairs = [(x, y) for i, x in enumerate(ans) for j, y in enumerate(ans) if i != j]
            shares.append(np.mean([x == y for x, y in pairs]))
    assert percent_agreement(R) == pytest.approx(np.mean(shares), abs=TOL)


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_pairwise_confusions_match_one_pair_at_a_time(seed):
    R = random_ratings(seed)
    C = pairwise_confusions(R, n_classes=4)
    for a, b in itertools.product(range(R.shape[1]), repeat=2):
        both = (R[:, a] >= 0) & (R[:, b] >= 0)
        ref = np.zeros((4, 4), dtype=np.int64)
        np.add.at(ref, (R[both, a], R[both, b]), 1)
        np.testing.assert_array_equal(pairwise_confusion(R, a, b, n_classes=4), ref)
        np.testing.assert_array_equal(C[a, b], ref)


def test_perfect_agreement_gives_one_everywhere():
    R = np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2], [1, 1, -1], [0, -1, 0]])
    assert percent_agreement(R) == 1.0
    assert fleiss_kappa(R, n_classes=3) == pytest.approx(1.0)
    assert krippendorff_alpha_nominal(R, n_classes=3) == pytest.approx(1.0)
    np.testing.assert_allclose(cohen_kappa_matrix(R, n_classes=3), 1.0)


def test_known_two_by_two_cohen_example():
    # classic table: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> p_o = .7, p_e = .5, kappa = .4
    a = np.array([1] * 25 + [0] * 25)
    b = np.array([1] * 20 + [0] * 5 + [1] * 10 + [0] * 15)
    R = np.stack([a, b], axis=1)
    np.testing.assert_array_equal(pairwise_confusion(R, 0, 1, n_classes=2), [[15, 10], [5, 20]])
    assert cohen_kappa_matrix(R, n_classes=2)[0, 1] == pytest.approx(0.4, abs=TOL)
    assert percent_agreement(R) == pytest.approx(0.7, abs=TOL)


def test_pair_with_no_common_item_is_nan():
    R = np.array([[0, -1, 1], [1, -1, 1], [-1, 0, 0], [-1, 1, 1]])
    K = cohen_kappa_matrix(R, n_classes=2)
    assert np.isnan(K[0, 1]) and np.isnan(K[1, 0])
    assert np.isfinite(K[0, 2])
    np.testing.assert_array_equal(pairwise_confusion(R, 0, 1, n_classes=2), np.zeros((2, 2)))


def test_annotator_with_no_answers_has_nan_diagonal():
    R = np.array([[0, -1, 1], [1, -1, 1], [1, -1, 0]])
    K = cohen_kappa_matrix(R, n_classes=2)
    assert np.isnan(K[1, 1]) and K[0, 0] == 1.0 and np.isnan(K[0, 1])


def test_all_one_class_percent_agreement_is_one_and_chance_corrected_metrics_are_nan():
    R = np.array([[2, 2, 2], [2, -1, 2], [2, 2, -1]])
    assert percent_agreement(R) == 1.0
    assert np.isnan(fleiss_kappa(R, n_classes=3))
    assert np.isnan(krippendorff_alpha_nominal(R, n_classes=3))
    K = cohen_kappa_matrix(R, n_classes=3)
    assert np.isnan(K[0, 1]) and K[0, 0] == 1.0
    # and scikit-learn agrees that the pair's kappa is undefined
    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isnan(cohen_kappa_score([2, 2], [2, 2]))


def test_no_pairable_item_gives_nan():
    R = np.array([[0, -1], [-1, 1]])
    assert np.isnan(percent_agreement(R))
    assert np.isnan(fleiss_kappa(R, n_classes=2))
    assert np.isnan(krippendorff_alpha_nominal(R, n_classes=2))


def test_invalid_ratings_are_rejected():
    with pytest.raises(ValueError, match="integer"):
        fleiss_kappa(np.array([[0.0, 1.0]]), n_classes=2)
    with pytest.raises(ValueError, match="lie in"):
        fleiss_kappa(np.array([[0, 2]]), n_classes=2)
    with pytest.raises(ValueError, match="lie in"):
        fleiss_kappa(np.array([[0, -2]]), n_classes=2)
    with pytest.raises(ValueError, match="2-D"):
        fleiss_kappa(np.array([0, 1]), n_classes=2)


def test_report_collects_every_metric_consistently():
    R = random_ratings(11)
    rep = agreement_report(R, n_classes=4, annotators=list("abcdef"))
    assert rep["annotators"] == list("abcdef")
    assert rep["n_answers"] == int((R >= 0).sum())
    assert rep["percent_agreement"] == percent_agreement(R)
    assert rep["fleiss_kappa"] == fleiss_kappa(R, n_classes=4)
    assert rep["krippendorff_alpha"] == krippendorff_alpha_nominal(R, n_classes=4)
    np.testing.assert_array_equal(rep["cohen_kappa"], cohen_kappa_matrix(R, n_classes=4))
    K = rep["cohen_kappa"]
    assert rep["mean_cohen_kappa"] == pytest.approx(K[~np.eye(6, dtype=bool)].mean())
    both = (R[:, 0] >= 0) & (R[:, 3] >= 0)
    assert rep["pair_counts"][0, 3] == both.sum()
    with pytest.raises(ValueError, match="annotator names"):
        agreement_report(R, n_classes=4, annotators=["x"])
