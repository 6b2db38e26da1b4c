"""Active-learning query strategies (numpy only), in the style of small-text.

Two kinds of probability rows: a single-label model's (one row sums to 1: :data:`STRATEGIES`) and a
multi-label model's (one independent probability per label: :data:`SET_STRATEGIES`, which score the
label decisions: :class:`LeastConfidentLabel`, :class:`MeanBinaryEntropy`).

A strategy is an object with one method, :meth:`QueryStrategy.query`::

    picks = LeastConfidence().query(probs, 10, candidates=unlabeled)   # row indices, best first

Score-based strategies only say how to score a probability row (:meth:`ScoreBasedStrategy.score`);
the base class does the selection once: rank the candidate rows by score (most informative
first, ties broken by the lower row index), keep the first ``budget``. A budget larger than the
pool returns the whole pool ranked. After each call ``last_scores`` holds the score of every row
of ``probs`` (NaN for rows that were not candidates), so the caller can log why an item was picked.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np

from connector import uncertainty

__all__ = [
    "SET_STRATEGIES",
    "STRATEGIES",
    "EmptyPoolError",
    "Entropy",
    "LeastConfidence",
    "LeastConfidentLabel",
    "Margin",
    "MeanBinaryEntropy",
    "Mix",
    "QueryStrategy",
    "RandomSampling",
    "ScoreBasedStrategy",
    "make_set_strategy",
    "make_strategy",
]


class EmptyPoolError(ValueError):
    """There is nothing to query: no rows, or an empty candidate set."""


class QueryStrategy(ABC):
    """Base of all strategies: ``query`` returns row indices of ``probs``, most informative first."""

    last_scores: np.ndarray | None = None

    @abstractmethod
    def query(self, probs: np.ndarray, budget: int, *, candidates: np.ndarray | None = None) -> np.ndarray:
        """Pick up to ``budget`` rows of ``probs`` (n, k) among ``candidates`` (all rows when None)."""


class ScoreBasedStrategy(QueryStrategy):
    """Template: subclasses implement :meth:`score`; ranking and selection live here.

    ``ascending = False`` means a higher score is more informative; ``True`` the opposite.
    """

    ascending: ClassVar[bool] = False

    @abstractmethod
    def score(self, probs: np.ndarray) -> np.ndarray:
        """One score per row of ``probs`` (only candidate rows are passed)."""

    def query(self, probs: np.ndarray, budget: int, *, candidates: np.ndarray | None = None) -> np.ndarray:
        p = _as_probs(probs)
        pool = _as_pool(candidates, len(p))
        budget = _as_budget(budget)
        scores = np.asarray(self.score(p[pool]), dtype=np.float64)
        self.last_scores = np.full(len(p), np.nan)
        self.last_scores[pool] = scores
        order = np.argsort(scores if self.ascending else -scores, kind="stable")
        return pool[order[:budget]]


class LeastConfidence(ScoreBasedStrategy):
    """Score ``1 - max p``; highest first."""

    def score(self, probs: np.ndarray) -> np.ndarray:
        return uncertainty.least_confidence(probs)


class Margin(ScoreBasedStrategy):
    """Score the gap between the two most probable classes; smallest first (breaking ties)."""

    ascending = True

    def score(self, probs: np.ndarray) -> np.ndarray:
        return uncertainty.margin(probs)


class Entropy(ScoreBasedStrategy):
    """Score the Shannon entropy of the row (nats); highest first."""

    def score(self, probs: np.ndarray) -> np.ndarray:
        return uncertainty.entropy(probs)


class LeastConfidentLabel(ScoreBasedStrategy):
    """For label sets: score ``1 -`` the confidence of the least confident label decision (each
    label decided at ``thresholds``, 0.5 by default: ``1 - min_l max(p_l, 1 - p_l)``); highest first."""

    def __init__(self, thresholds: np.ndarray | float = 0.5) -> None:
        self.thresholds = thresholds

    def score(self, probs: np.ndarray) -> np.ndarray:
        return 1.0 - uncertainty.least_confident_label(probs, self.thresholds)


class MeanBinaryEntropy(ScoreBasedStrategy):
    """For label sets: score the mean over labels of the yes/no entropy (nats); highest first."""

    def score(self, probs: np.ndarray) -> np.ndarray:
        return uncertainty.mean_binary_entropy(probs)


class RandomSampling(ScoreBasedStrategy):
    """Score each candidate with a uniform draw from a seeded generator; highest first.

    The generator is created once, so successive calls differ but the sequence of calls is
    reproducible from ``seed``.
    """

    def __init__(self, seed: int | np.random.SeedSequence | None = 0) -> None:
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def score(self, probs: np.ndarray) -> np.ndarray:
        return self._rng.random(len(probs))


class Mix(QueryStrategy):
    """Split the budget between strategies by weight, e.g. 80% least confidence + 20% random.

    With ``b = min(budget, pool size)``, part ``i > 0`` gets ``floor(b * w_i / sum(w))`` picks and
    the first part gets the rest, so the rounding is deterministic and leftovers go to the first
    part. Parts pick in order, each among the candidates not yet picked, so there are no
    duplicates. The result is the first part's picks (in its order), then the second's, and so on.

    ``last_scores`` holds, for a picked row, the score given by the part that picked it, and for
    other candidates the first part's score; ``last_picked_by`` holds the index of the part that
    picked each row (-1 if none).
    """

    def __init__(self, parts: Sequence[tuple[QueryStrategy, float]]) -> None:
        if not parts:
            raise ValueError("Mix needs at least one (strategy, weight) part")
        weights = [float(w) for _, w in parts]
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"Mix weights must be finite, >= 0 and not all zero, got {weights}")
        self.parts = [(s, w) for (s, _), w in zip(parts, weights)]
        self.last_picked_by: np.ndarray | None = None

    def quotas(self, budget: int) -> list[int]:
        """Picks per part for an effective budget (already capped at the pool size)."""
        total = sum(w for _, w in self.parts)
        rest = [math.floor(budget * w / total + 1e-9) for _, w in self.parts[1:]]
        return [budget - sum(rest), *rest]

    def query(self, probs: np.ndarray, budget: int, *, candidates: np.ndarray | None = None) -> np.ndarray:
        p = _as_probs(probs)
        pool = _as_pool(candidates, len(p))
        budget = min(_as_budget(budget), len(pool))
        scores = np.full(len(p), np.nan)
        picked_by = np.full(len(p), -1)
        remaining = pool
        picks: list[np.ndarray] = []
        for i, ((strategy, _), quota) in enumerate(zip(self.parts, self.quotas(budget))):
            if i > 0 and quota == 0:
                continue  # the first part always runs, so every candidate gets a score
            chosen = strategy.query(p, quota, candidates=remaining)
            part_scores = strategy.last_scores
            if i == 0 and part_scores is not None:
                scores[pool] = part_scores[pool]
            if part_scores is not None:
                scores[chosen] = part_scores[chosen]
            picked_by[chosen] = i
            picks.append(chosen)
            remaining = np.setdiff1d(remaining, chosen, assume_unique=True)
        self.last_scores = scores
        self.last_picked_by = picked_by
        return np.concatenate(picks).astype(np.intp)


STRATEGIES: dict[str, type[ScoreBasedStrategy]] = {
    "least_confidence": LeastConfidence,
    "margin": Margin,
    "entropy": Entropy,
    "random": RandomSampling,
}


#: Strategies for a multi-label model's rows (independent probabilities per label).
SET_STRATEGIES: dict[str, type[ScoreBasedStrategy]] = {
    "least_confidence": LeastConfidentLabel,
    "entropy": MeanBinaryEntropy,
    "random": RandomSampling,
}


def make_strategy(name: str, *, random_share: float = 0.0, seed: int = 0) -> QueryStrategy:
    """Build a strategy by name; with ``random_share > 0``, a :class:`Mix` of it and random sampling."""
    return _make(STRATEGIES, name, random_share, seed)


def make_set_strategy(name: str, *, random_share: float = 0.0, seed: int = 0,
                      thresholds: np.ndarray | float = 0.5) -> QueryStrategy:
    """A strategy for label sets by name (:data:`SET_STRATEGIES`: ``least_confidence`` over labels,
    each decided at ``thresholds``; mean binary ``entropy``; ``random``); with ``random_share > 0``,
    a :class:`Mix` of it and random sampling, seeded as :func:`make_strategy` seeds it."""
    return _make(SET_STRATEGIES, name, random_share, seed,
                 lambda cls: cls(thresholds) if cls is LeastConfidentLabel else cls())


def _make(known: dict[str, type[ScoreBasedStrategy]], name: str, random_share: float, seed: int,
          build: Callable[[type[ScoreBasedStrategy]], ScoreBasedStrategy] = lambda cls: cls()) -> QueryStrategy:
    if name not in known:
        raise ValueError(f"unknown strategy {name!r}; known: {sorted(known)}")
    if not 0.0 <= random_share <= 1.0:
        raise ValueError(f"random_share must be in [0, 1], got {random_share}")
    own_seed, random_seed = np.random.SeedSequence(seed).spawn(2)
    base = RandomSampling(own_seed) if name == "random" else build(known[name])
    if random_share == 0.0:
        return base
    return Mix([(base, 1.0 - random_share), (RandomSampling(random_seed), random_share)])


def _as_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be a 2-D (n, k) array, got shape {p.shape}")
    return p


def _as_pool(candidates: np.ndarray | None, n: int) -> np.ndarray:
    """Sorted unique candidate row indices; a boolean mask of length n is accepted too."""
    if candidates is None:
        pool = np.arange(n)
    else:
        c = np.asarray(candidates)
        if c.dtype == bool:
            if c.shape != (n,):
                raise ValueError(f"a boolean candidate mask must have shape ({n},), got {c.shape}")
            pool = np.flatnonzero(c)
        else:
            if c.size and not np.issubdtype(c.dtype, np.integer):
                raise ValueError(f"candidates must be integer row indices, got dtype {c.dtype}")
            pool = np.unique(c.astype(np.intp).ravel())
            if pool.size and (pool[0] < 0 or pool[-1] >= n):
                raise IndexError(f"candidate indices must be in [0, {n}), got range [{pool[0]}, {pool[-1]}]")
    if pool.size == 0:
        raise EmptyPoolError("no candidates to query")
    return pool.astype(np.intp)


def _as_budget(budget: int) -> int:
    if isinstance(budget, bool) or int(budget) != budget or budget < 0:
        raise ValueError(f"budget must be a non-negative integer, got {budget!r}")
    return int(budget)
