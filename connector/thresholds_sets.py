"""Per-label auto-accept thresholds for a label set, certified on whole sets.

A label set is accepted without a human only when *every* label is decided surely. One threshold on
the least confident decision treats every label alike; labels differ (a rare label's "no" is easy,
a frequent label's "yes" is not), so here each label ``l`` gets its own threshold ``t_l`` on its
decision confidence (``p`` when chosen, ``1 - p`` when not), and an item is accepted when
``c_l >= t_l`` for every ``l``. The guarantee is the one-threshold rule's
(:func:`connector.thresholds.choose_accept_threshold`): the error of the accepted sets (a set is
wrong when any label is) is at most ``target_error`` with confidence ``1 - delta``.

How, without testing ``K`` thresholds at once:

1. **A path of rules, fixed before any label is read.** For a level ``a`` (a predicted per-label
   error), ``t_l(a)`` is the lowest threshold on label ``l`` whose accepted pool items have mean
   predicted error ``mean(1 - c_l) <= a`` (:func:`label_threshold_path`). It reads only the model's
   calibrated confidences on the unlabelled pool, never a human label, and ``t_l(a)`` falls as
   ``a`` grows, so the rules are nested: each accepts every item the stricter ones accept.
2. **One score per item**: ``s = 1 - a*``, ``a*`` the strictest level whose rule accepts it
   (:func:`path_scores`); an item is accepted by the rule at level ``a`` iff ``s >= 1 - a``.
3. **The same fixed-sequence test**: :func:`~connector.thresholds.choose_accept_threshold` on the
   scores of the labelled sets (correct = the whole set right), with the path's levels as its
   candidates, tested from the strictest down. The chosen level gives every label its threshold.

numpy only (and :mod:`connector.thresholds`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from connector.thresholds import ACCEPT_NOTHING, ThresholdChoice, choose_accept_threshold

#: the path's levels (predicted per-label error): 0 and a geometric grid up to 0.5
LEVELS = np.concatenate([[0.0], np.geomspace(1e-4, 0.5, 299)])


def label_threshold_path(pool_confidence: np.ndarray, levels: np.ndarray = LEVELS) -> np.ndarray:
    """``(len(levels), k)``: per level ``a`` and label, the lowest threshold among the pool's
    confidences whose accepted items have mean predicted error ``mean(1 - c) <= a``;
    :data:`~connector.thresholds.ACCEPT_NOTHING` where none has. Non-increasing down each column."""
    c = np.asarray(pool_confidence, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"pool_confidence must be (n_items, n_labels), got shape {c.shape}")
    levels = np.asarray(levels, dtype=np.float64)
    out = np.full((len(levels), c.shape[1]), ACCEPT_NOTHING)
    for j in range(c.shape[1]):
        desc = np.sort(c[:, j])[::-1]
        if not len(desc):
            continue
        # accepting the top m items (ties at the m-th value all come in): their mean predicted error
        _, first = np.unique(-desc, return_index=True)
        last = np.append(first[1:], len(desc))  # each distinct value's items end here
        mean_err = np.cumsum(1.0 - desc)[last - 1] / last
        # the lowest threshold within the level: the last distinct value whose mean error is; the
        # suffix minimum of the mean errors is non-decreasing and crosses each level at that value
        suffix_min = np.minimum.accumulate(mean_err[::-1])[::-1]
        best = np.searchsorted(suffix_min, levels, side="right") - 1
        ok = best >= 0
        out[ok, j] = desc[first[best[ok]]]
    return out


def path_scores(confidence: np.ndarray, path: np.ndarray, levels: np.ndarray = LEVELS) -> np.ndarray:
    """Per item, ``1 - a*``: ``a*`` the strictest level whose rule accepts every label of the item
    (``confidence`` ``(n, k)`` of label-decision confidences); 0.0 where no level does."""
    c = np.asarray(confidence, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != path.shape[1]:
        raise ValueError(f"confidence must be (n_items, {path.shape[1]}), got shape {c.shape}")
    first = np.zeros(c.shape, dtype=int)
    for j in range(c.shape[1]):
        # path[:, j] is non-increasing: the levels accepting value v are a suffix; find where it starts
        first[:, j] = len(levels) - np.searchsorted(path[::-1, j], c[:, j], side="right")
    idx = first.max(axis=1) if c.shape[1] else np.zeros(len(c), dtype=int)
    out = np.zeros(len(c))
    ok = idx < len(levels)
    out[ok] = 1.0 - levels[idx[ok]]
    return out


@dataclass(frozen=True)
class LabelThresholds:
    """The chosen rule: ``choice`` (the fixed-sequence test on the path's scores; its
    ``threshold`` is ``1 - a``) and, when it certified its target, each label's threshold."""

    choice: ThresholdChoice
    label_thresholds: dict[str, float] | None
    level: float | None

    def to_dict(self) -> dict:
        return asdict(self.choice) | {"label_thresholds": self.label_thresholds}


def choose_label_thresholds(labels: Sequence[str], confidence: np.ndarray, correct: np.ndarray,
                            pool_confidence: np.ndarray, *, target_error: float, delta: float = 0.05,
                            review_band: tuple[float, float] = (0.0, 1.0), min_n: int = 1,
                            levels: np.ndarray = LEVELS) -> LabelThresholds:
    """Per-label thresholds whose accepted sets' error is certified ``<= target_error`` w.p.
    ``1 - delta`` (see the module docstring). ``confidence`` ``(n, k)``: the labelled sets'
    label-decision confidences from honest predictions, columns in ``labels`` order; ``correct``:
    whether each whole set was right; ``pool_confidence`` ``(m, k)``: the pool's, which fixes the
    path and gives the review rate."""
    conf = np.asarray(confidence, dtype=np.float64)
    pool = np.asarray(pool_confidence, dtype=np.float64)
    if conf.ndim != 2 or conf.shape[1] != len(labels) or pool.ndim != 2 or pool.shape[1] != len(labels):
        raise ValueError(f"confidence {conf.shape} and pool_confidence {pool.shape} must have one column per label "
                         f"({len(labels)})")
    path = label_threshold_path(pool, levels)
    choice = choose_accept_threshold(path_scores(conf, path, levels), correct, target_error=target_error, delta=delta,
                                     pool_confidence=path_scores(pool, path, levels),
                                     review_band=review_band, candidates=1.0 - levels, min_n=min_n)
    if not choice.meets_target or choice.threshold > 1.0:
        return LabelThresholds(choice, None, None)
    # the rule accepting scores >= threshold: the least strict level at or under 1 - threshold
    i = int(np.searchsorted(levels, 1.0 - choice.threshold + 1e-12, side="right")) - 1
    if i < 0:
        return LabelThresholds(choice, None, None)
    return LabelThresholds(choice, {str(lb): float(t) for lb, t in zip(labels, path[i])}, float(levels[i]))
