"""Inter-annotator agreement on a ratings matrix (numpy only, vectorized).

Every function takes the same input, a *ratings matrix* ``R`` of shape ``(n_items, n_annotators)``:

* ``R[i, a]`` is the integer class code in ``[0, n_classes)`` that annotator ``a`` gave item ``i``;
* ``-1`` means annotator ``a`` did not answer item ``i`` (missing).

Any integer dtype is accepted; anything else (floats, NaN) is rejected with ``ValueError``, as are
codes outside ``[-1, n_classes)``.

Undefined values are ``NaN``, never an exception: a pair of annotators with no item in common, or
a chance-corrected statistic whose expected disagreement is zero (every answer in the data is the
same class). Percent agreement, which is not chance-corrected, is ``1.0`` in that last case.

Nothing loops over items or annotator pairs in Python: per-item class counts come from one
``bincount`` over (item, class) cells, and the confusion tables of all annotator pairs from one
matrix product of the one-hot answers, ``(n_items, A*k).T @ (n_items, A*k)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "agreement_report",
    "cohen_kappa_matrix",
    "fleiss_kappa",
    "item_class_counts",
    "krippendorff_alpha_nominal",
    "pairwise_confusion",
    "pairwise_confusions",
    "percent_agreement",
]

MISSING = -1


def _validate(R: np.ndarray, n_classes: int | None) -> tuple[np.ndarray, int]:
    R = np.asarray(R)
    if R.ndim != 2:
        raise ValueError(f"ratings must be a 2-D (n_items, n_annotators) matrix, got shape {R.shape}")
    if not np.issubdtype(R.dtype, np.integer):
        raise ValueError(f"ratings must be integer class codes with -1 for missing, got dtype {R.dtype}")
    if n_classes is None:
        n_classes = int(R.max()) + 1 if R.size else 0
    n_classes = int(n_classes)
    if n_classes < 1 and R.size and (R != MISSING).any():
        raise ValueError("n_classes must be >= 1")
    if R.size:
        lo, hi = int(R.min()), int(R.max())
        if lo < MISSING or hi >= n_classes:
            raise ValueError(f"ratings must lie in [-1, {n_classes}), found values in [{lo}, {hi}]")
    return R, n_classes


def item_class_counts(R: np.ndarray, *, n_classes: int) -> np.ndarray:
    """How many annotators gave each item each class.

    Returns an ``int64`` array of shape ``(n_items, n_classes)``; row ``i`` sums to the number of
    answers item ``i`` received.
    """
    R, k = _validate(R, n_classes)
    n = R.shape[0]
    valid = R != MISSING
    flat = (np.arange(n, dtype=np.int64)[:, None] * k + R)[valid]
    return np.bincount(flat, minlength=n * k).reshape(n, k)


def _pairwise_agreement_per_item(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Share of agreeing ordered pairs per item with >= 2 answers; also the mask of those items."""
    m = counts.sum(axis=1)
    keep = m >= 2
    c = counts[keep].astype(np.float64)
    mk = m[keep].astype(np.float64)
    p = (c * (c - 1.0)).sum(axis=1) / (mk * (mk - 1.0))
    return p, keep


def percent_agreement(R: np.ndarray, *, n_classes: int | None = None) -> float:
    """Observed agreement: the mean, over items with at least two answers, of the share of ordered
    pairs of distinct annotators on that item who gave the same class.

    For an item with ``m`` answers of which ``n_c`` are class ``c`` that share is
    ``sum_c n_c (n_c - 1) / (m (m - 1))``. ``NaN`` when no item has two answers.
    ``n_classes`` defaults to ``R.max() + 1``.
    """
    R, k = _validate(R, n_classes)
    p, _ = _pairwise_agreement_per_item(item_class_counts(R, n_classes=k))
    return float(p.mean()) if p.size else float("nan")


def pairwise_confusions(R: np.ndarray, *, n_classes: int) -> np.ndarray:
    """Confusion counts of every annotator pair at once.

    Returns a ``float64`` array ``C`` of shape ``(A, A, k, k)`` (exact integer counts):
    ``C[a, b, i, j]`` is the number of items that annotator ``a`` labelled ``i`` and annotator ``b``
    labelled ``j``, over the items both answered. ``C[a, b] == C[b, a].T``; ``C[a, a]`` is diagonal,
    holding annotator ``a``'s class counts.
    """
    R, k = _validate(R, n_classes)
    n, A = R.shape
    onehot = (R[:, :, None] == np.arange(k)).reshape(n, A * k).astype(np.float64)
    gram = onehot.T @ onehot  # (A*k, A*k)
    return gram.reshape(A, k, A, k).transpose(0, 2, 1, 3)


def pairwise_confusion(R: np.ndarray, a: int, b: int, *, n_classes: int) -> np.ndarray:
    """``(k, k)`` ``int64`` counts between annotators ``a`` (rows) and ``b`` (columns) on the items
    both answered: entry ``[i, j]`` counts items ``a`` labelled ``i`` and ``b`` labelled ``j``."""
    R, k = _validate(R, n_classes)
    x, y = R[:, a], R[:, b]
    both = (x != MISSING) & (y != MISSING)
    return np.bincount(x[both].astype(np.int64) * k + y[both], minlength=k * k).reshape(k, k)


def _kappa_from_confusions(C: np.ndarray) -> np.ndarray:
    """Cohen's kappa over the last two axes of a stack of confusion tables; NaN where undefined.

    Written as scikit-learn writes it, ``1 - sum(off-diagonal observed) / sum(off-diagonal
    expected)``, which equals ``(p_o - p_e) / (1 - p_e)``.
    """
    N = C.sum(axis=(-2, -1))
    trace = np.trace(C, axis1=-2, axis2=-1)
    rows, cols = C.sum(axis=-1), C.sum(axis=-2)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected_diag = (rows * cols).sum(axis=-1) / N
        disagree_obs = N - trace
        disagree_exp = N - expected_diag
        kappa = 1.0 - disagree_obs / disagree_exp
    return np.where((N > 0) & (disagree_exp != 0), kappa, np.nan)


def cohen_kappa_matrix(R: np.ndarray, *, n_classes: int) -> np.ndarray:
    """Cohen's kappa for every pair of annotators, each pair on the items both answered.

    Returns a symmetric ``(A, A)`` ``float64`` array. Off the diagonal, ``NaN`` where the pair shares
    no item or where the expected disagreement is zero (both gave one and the same class on every
    shared item, as scikit-learn's ``cohen_kappa_score``). The diagonal is ``1.0`` for an annotator
    with at least one answer (self-agreement by convention) and ``NaN`` for one with none.
    """
    R, k = _validate(R, n_classes)
    C = pairwise_confusions(R, n_classes=k)
    K = _kappa_from_confusions(C)
    answered = (R != MISSING).any(axis=0)
    np.fill_diagonal(K, np.where(answered, 1.0, np.nan))
    return K


def fleiss_kappa(R: np.ndarray, *, n_classes: int) -> float:
    """Fleiss' kappa, generalised to a varying number of answers per item.

    Items with fewer than two answers are dropped. With ``m_i`` answers on item ``i``:
    ``P_i = sum_c n_ic (n_ic - 1) / (m_i (m_i - 1))``, ``P_bar = mean_i P_i`` (the percent agreement),
    ``p_c = sum_i n_ic / sum_i m_i`` and ``P_e = sum_c p_c^2``; kappa is ``(P_bar - P_e) / (1 - P_e)``.
    When every kept item has the same number of answers this is exactly Fleiss (1971), as in
    statsmodels' ``fleiss_kappa``; to get the textbook statistic from incomplete data, pass only the
    complete rows. ``NaN`` when no item has two answers or when ``P_e == 1`` (one class only).
    """
    R, k = _validate(R, n_classes)
    counts = item_class_counts(R, n_classes=k)
    p_item, keep = _pairwise_agreement_per_item(counts)
    if not p_item.size:
        return float("nan")
    totals = counts[keep].sum(axis=0).astype(np.float64)
    p_cat = totals / totals.sum()
    p_exp = float((p_cat * p_cat).sum())
    if p_exp == 1.0:
        return float("nan")
    return float((p_item.mean() - p_exp) / (1.0 - p_exp))


def krippendorff_alpha_nominal(R: np.ndarray, *, n_classes: int) -> float:
    """Krippendorff's alpha for nominal data, with missing answers.

    Built from the coincidence matrix ``o = sum_u (n_u n_u^T - diag(n_u)) / (m_u - 1)`` over items
    ``u`` with ``m_u >= 2`` answers (items with one answer are not pairable and add nothing);
    ``alpha = 1 - (n - 1) * sum_{c != d} o_cd / sum_{c != d} n_c n_d`` with ``n_c`` the row sums of
    ``o`` and ``n`` their total. Equals ``krippendorff.alpha(reliability_data=R.T`` (NaN for
    missing)``, level_of_measurement="nominal")``. ``NaN`` where that package raises: no pairable
    item, or a single class in the pairable answers (expected disagreement zero).
    """
    R, k = _validate(R, n_classes)
    counts = item_class_counts(R, n_classes=k)
    m = counts.sum(axis=1)
    keep = m >= 2
    if not keep.any():
        return float("nan")
    c = counts[keep].astype(np.float64)
    w = 1.0 / (m[keep] - 1.0)
    o = c.T @ (c * w[:, None])
    o[np.diag_indices(k)] -= (c * w[:, None]).sum(axis=0)
    n_c = o.sum(axis=0)
    n = n_c.sum()
    d_obs = o.sum() - np.trace(o)
    d_exp = (n * n - (n_c * n_c).sum()) / (n - 1.0)
    if d_exp == 0:
        return float("nan")
    return float(1.0 - d_obs / d_exp)


def agreement_report(
    R: np.ndarray, *, n_classes: int, annotators: Sequence[Any] | None = None
) -> dict[str, Any]:
    """All of the above in one dict (each computed once).

    Keys:

    * ``n_items``, ``n_annotators``, ``n_classes``: the shape of ``R`` and the class count;
    * ``n_answers``: number of non-missing cells; ``n_pairable_items``: items with >= 2 answers;
    * ``annotators``: the given names, or ``0 .. A-1``;
    * ``percent_agreement``, ``fleiss_kappa``, ``krippendorff_alpha``: floats (see each function);
    * ``cohen_kappa``: the ``(A, A)`` matrix of :func:`cohen_kappa_matrix`;
    * ``mean_cohen_kappa``: mean of its off-diagonal finite entries (``NaN`` if none);
    * ``pair_counts``: ``(A, A)`` ``int64``, items each pair both answered.
    """
    R, k = _validate(R, n_classes)
    n, A = R.shape
    if annotators is None:
        annotators = list(range(A))
    elif len(annotators) != A:
        raise ValueError(f"{len(annotators)} annotator names for {A} columns")
    C = pairwise_confusions(R, n_classes=k)
    K = _kappa_from_confusions(C)
    answered = (R != MISSING).any(axis=0)
    np.fill_diagonal(K, np.where(answered, 1.0, np.nan))
    off = K[~np.eye(A, dtype=bool)]
    off = off[np.isfinite(off)]
    counts = item_class_counts(R, n_classes=k)
    p_item, _ = _pairwise_agreement_per_item(counts)
    return {
        "n_items": n,
        "n_annotators": A,
        "n_classes": k,
        "n_answers": int(counts.sum()),
        "n_pairable_items": int(p_item.size),
        "annotators": list(annotators),
        "percent_agreement": float(p_item.mean()) if p_item.size else float("nan"),
        "fleiss_kappa": fleiss_kappa(R, n_classes=k),
        "krippendorff_alpha": krippendorff_alpha_nominal(R, n_classes=k),
        "cohen_kappa": K,
        "mean_cohen_kappa": float(off.mean()) if off.size else float("nan"),
        "pair_counts": np.rint(C.sum(axis=(2, 3))).astype(np.int64),
    }
