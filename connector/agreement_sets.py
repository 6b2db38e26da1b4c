"""Inter-annotator agreement on label sets (numpy only, vectorized).

Input is a *set ratings array* ``Y`` of shape ``(n_items, n_annotators, n_labels)``: ``Y[i, a, l]``
is 1 when annotator ``a`` gave item ``i`` label ``l``, 0 when not, and ``-1`` on every label when
``a`` did not answer ``i`` (an answer may be the empty set: all zeros). ``Y[:, :, l]`` is then the
ratings matrix of :mod:`connector.agreement` for the yes/no question "does label ``l`` apply?".

* :func:`krippendorff_alpha_masi`: Krippendorff's alpha over whole sets with the MASI distance
  (Passonneau 2006), equal to ``krippendorff.alpha`` with MASI as its distance and to NLTK's
  ``AnnotationTask(distance=masi_distance).alpha()``.
* :func:`per_label_agreement`: per label, Fleiss' kappa, Cohen's kappa per pair (and their mean),
  Krippendorff's alpha and percent agreement, by :mod:`connector.agreement` on the label's slice.

Undefined values are ``NaN``, as in :mod:`connector.agreement`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from connector.agreement import (
    MISSING,
    cohen_kappa_matrix,
    fleiss_kappa,
    krippendorff_alpha_nominal,
    percent_agreement,
)

__all__ = [
    "answered_mask",
    "krippendorff_alpha_masi",
    "masi_distance_matrix",
    "per_label_agreement",
    "set_agreement_report",
    "validate_sets",
]


def validate_sets(Y: np.ndarray) -> np.ndarray:
    """``Y`` as an ``int8`` array, checked: 3-D, integer, each (item, annotator) cell all ``-1``
    (no answer) or all 0/1."""
    Y = np.asarray(Y)
    if Y.ndim != 3:
        raise ValueError(f"set ratings must be a 3-D (n_items, n_annotators, n_labels) array, got shape {Y.shape}")
    if Y.size and not np.issubdtype(Y.dtype, np.integer) and Y.dtype != bool:
        raise ValueError(f"set ratings must be 0/1 with -1 for a missing answer, got dtype {Y.dtype}")
    Y = Y.astype(np.int8)
    if Y.size and (Y.min() < MISSING or Y.max() > 1):
        raise ValueError(f"set ratings must be 0, 1 or -1, found values in [{Y.min()}, {Y.max()}]")
    missing = Y == MISSING
    if (missing.any(axis=2) & ~missing.all(axis=2)).any():
        raise ValueError("a missing answer is -1 on every label; found a cell with -1 on some labels only")
    return Y


def answered_mask(Y: np.ndarray) -> np.ndarray:
    """``(n_items, n_annotators)``: which annotators answered which items."""
    Y = validate_sets(Y)
    return ~(Y == MISSING).all(axis=2) if Y.shape[2] else np.zeros(Y.shape[:2], dtype=bool)


def masi_distance_matrix(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """MASI distances between the sets of ``A`` (V, k) and ``B`` (W, k), 0/1 indicator rows.

    ``1 - J * M`` with ``J`` the Jaccard index and ``M`` 1 for equal sets, 2/3 when one contains the
    other, 1/3 when they overlap otherwise, 0 when disjoint (NLTK's ``masi_distance``). Two empty
    sets are equal: distance 0 (NLTK divides by zero there)."""
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    inter = A @ B.T
    sa, sb = A.sum(axis=1)[:, None], B.sum(axis=1)[None, :]
    union = sa + sb - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        jaccard = np.where(union > 0, inter / union, 1.0)
    m = np.where((inter == sa) & (inter == sb), 1.0,
                 np.where(inter == np.minimum(sa, sb), 2.0 / 3.0, np.where(inter > 0, 1.0 / 3.0, 0.0)))
    return 1.0 - jaccard * m


def _set_counts(Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct sets answered (V, k) and how many annotators gave each item each of them (n, V)."""
    n, A, k = Y.shape
    answered = answered_mask(Y)
    cells = Y.reshape(n * A, k)[answered.ravel()]
    items = np.repeat(np.arange(n), A)[answered.ravel()]
    if not len(cells):
        return np.zeros((0, k), dtype=np.int8), np.zeros((n, 0), dtype=np.int64)
    values, codes = np.unique(cells, axis=0, return_inverse=True)
    counts = np.bincount(items * len(values) + codes.ravel(), minlength=n * len(values)).reshape(n, len(values))
    return values, counts


def krippendorff_alpha_masi(Y: np.ndarray) -> float:
    """Krippendorff's alpha over label sets with the MASI distance, missing answers allowed.

    Values are the distinct sets answered; the coincidence matrix
    ``o = sum_u (n_u n_u^T - diag(n_u)) / (m_u - 1)`` over items with ``m_u >= 2`` answers;
    ``alpha = 1 - (n - 1) sum(o * D) / sum(n_c n_d D)`` with ``D`` the MASI distances between sets,
    ``n_c`` the row sums of ``o`` and ``n`` their total. ``NaN`` when no item has two answers or the
    expected disagreement is zero (one set in all the pairable answers)."""
    Y = validate_sets(Y)
    values, counts = _set_counts(Y)
    m = counts.sum(axis=1)
    keep = m >= 2
    if not keep.any():
        return float("nan")
    c = counts[keep].astype(np.float64)
    w = 1.0 / (m[keep] - 1.0)
    o = c.T @ (c * w[:, None])
    o[np.diag_indices(len(values))] -= (c * w[:, None]).sum(axis=0)
    D = masi_distance_matrix(values, values)
    n_c = o.sum(axis=0)
    n = n_c.sum()
    d_exp = float((np.outer(n_c, n_c) * D).sum())
    if d_exp == 0:
        return float("nan")
    return float(1.0 - (n - 1.0) * float((o * D).sum()) / d_exp)


def per_label_agreement(Y: np.ndarray, labels: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per label, the yes/no question "does it apply?" over the label's slice:
    ``label``, ``n_yes`` (answers giving it), ``n_pairable_items``, ``percent_agreement``,
    ``fleiss_kappa``, ``krippendorff_alpha`` (nominal), ``mean_cohen_kappa`` (mean of the pairs'
    finite kappas) and ``cohen_kappa`` (the ``(A, A)`` matrix)."""
    Y = validate_sets(Y)
    names = list(labels) if labels is not None else list(range(Y.shape[2]))
    if len(names) != Y.shape[2]:
        raise ValueError(f"{len(names)} label names for {Y.shape[2]} labels")
    out: list[dict[str, Any]] = []
    A = Y.shape[1]
    for j, name in enumerate(names):
        R = Y[:, :, j].astype(np.int64)
        K = cohen_kappa_matrix(R, n_classes=2)
        off = K[~np.eye(A, dtype=bool)]
        off = off[np.isfinite(off)]
        out.append({
            "label": name,
            "n_yes": int((R == 1).sum()),
            "n_pairable_items": int(((R != MISSING).sum(axis=1) >= 2).sum()),
            "percent_agreement": percent_agreement(R, n_classes=2),
            "fleiss_kappa": fleiss_kappa(R, n_classes=2),
            "krippendorff_alpha": krippendorff_alpha_nominal(R, n_classes=2),
            "mean_cohen_kappa": float(off.mean()) if off.size else float("nan"),
            "cohen_kappa": K,
        })
    return out


def set_agreement_report(Y: np.ndarray, *, labels: Sequence[str] | None = None,
                         annotators: Sequence[Any] | None = None) -> dict[str, Any]:
    """Agreement on label sets in one dict: ``n_items``, ``n_annotators``, ``n_labels``,
    ``n_answers``, ``n_pairable_items``, ``labels``, ``annotators``, ``exact_agreement`` (share of
    agreeing pairs of answers, whole sets compared, over items with two answers),
    ``krippendorff_alpha_masi`` and ``per_label`` (:func:`per_label_agreement`)."""
    Y = validate_sets(Y)
    n, A, k = Y.shape
    if annotators is not None and len(annotators) != A:
        raise ValueError(f"{len(annotators)} annotator names for {A} columns")
    _, counts = _set_counts(Y)
    m = counts.sum(axis=1)
    keep = m >= 2
    c = counts[keep].astype(np.float64)
    mk = m[keep].astype(np.float64)
    exact = (c * (c - 1.0)).sum(axis=1) / (mk * (mk - 1.0)) if keep.any() else np.array([])
    return {
        "n_items": n,
        "n_annotators": A,
        "n_labels": k,
        "n_answers": int(m.sum()),
        "n_pairable_items": int(keep.sum()),
        "labels": list(labels) if labels is not None else list(range(k)),
        "annotators": list(annotators) if annotators is not None else list(range(A)),
        "exact_agreement": float(exact.mean()) if exact.size else float("nan"),
        "krippendorff_alpha_masi": krippendorff_alpha_masi(Y),
        "per_label": per_label_agreement(Y, labels),
    }
