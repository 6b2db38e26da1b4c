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


# -- label sets: one independent probability per label (columns need not sum to 1) ---------------

def label_decision_confidence(probs: np.ndarray, thresholds: np.ndarray | float = 0.5) -> np.ndarray:
    """Per label, the probability of the decision taken at its threshold: ``p`` where ``p >= t``
    (the label is chosen), else ``1 - p``; ``(n, k)``. At ``t = 0.5`` this is ``max(p, 1 - p)``."""
    p = np.asarray(probs, dtype=np.float64)
    return np.where(p >= np.asarray(thresholds, dtype=np.float64), p, 1.0 - p)


def least_confident_label(probs: np.ndarray, thresholds: np.ndarray | float = 0.5) -> np.ndarray:
    """The confidence of an item's least confident label decision, ``min_l`` of
    :func:`label_decision_confidence`: an item is as sure as its weakest label (1.0 with no label)."""
    conf = label_decision_confidence(probs, thresholds)
    return conf.min(axis=1) if conf.shape[1] else np.ones(len(conf))


def binary_entropy(probs: np.ndarray) -> np.ndarray:
    """Per label, the entropy of a yes/no decision with probability ``p`` (nats, at most ``log 2``)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0) + np.where(p < 1, (1 - p) * np.log1p(-p), 0.0)
    return -terms


def mean_binary_entropy(probs: np.ndarray) -> np.ndarray:
    """Mean over labels of :func:`binary_entropy` (0 with no label)."""
    h = binary_entropy(probs)
    return h.mean(axis=1) if h.shape[1] else np.zeros(len(h))


def label_set_confidence(probs: np.ndarray, thresholds: np.ndarray | float = 0.5) -> np.ndarray:
    """The probability that every label decision of a row is right, were the labels independent:
    the product over labels of :func:`label_decision_confidence` (1.0 with no label). Unlike
    :func:`least_confident_label` (an upper bound of it), it is calibrated for the whole set when
    each label is."""
    conf = label_decision_confidence(probs, thresholds)
    return conf.prod(axis=1) if conf.shape[1] else np.ones(len(conf))
