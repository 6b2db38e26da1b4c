"""Uncertainty scores of probability rows (numpy only). Higher means more uncertain."""

from __future__ import annotations

import numpy as np


def least_confidence(probs: np.ndarray) -> np.ndarray:
    """``1 - max p``."""
    return 1.0 - np.asarray(probs, dtype=np.float64).max(axis=1)


def margin(probs: np.ndarray) -> np.ndarray:
    """Gap between the two most probable classes (small means uncertain)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape[1] < 2:
        return np.ones(len(p))
    top2 = np.partition(p, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=1)
