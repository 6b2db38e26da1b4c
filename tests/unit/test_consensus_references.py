"""Our Dawid–Skene against crowd-kit's (1.4.2) on the same answer matrices.

Both start from the majority vote's soft labels and alternate the same M and E steps. They differ
in three details:

- crowd-kit clips zero confusion counts at 1e-10 where we add ``smoothing`` to every count (set to
  1e-10 here);
- crowd-kit clips the posteriors at 1e-10 in place while computing its evidence lower bound, so
  they enter the next M step clipped (a 1e-10 perturbation);
- crowd-kit stops when the evidence lower bound gains less than ``tol``, and that gain can be
  negative from the clipping alone, so with a small ``tol`` it can stop after a few steps, far from
  a fixed point; we stop when no posterior moves more than ``tol``. Measured on the matrices below
  (400 items each, run to their own stops): max posterior gaps of 0.09 and 0.46 on two of the four.

So the two are compared step for step: the same number of EM steps for both (crowd-kit with
``tol = -inf``, ours with ``tol = 0``), where the posteriors agree to 1e-6.
"""

from __future__ import annotations

import crowdkit.aggregation as crowdkit
import numpy as np
import pandas as pd
import pytest

from connector.consensus import DawidSkene


def _answers(seed: int, *, n: int, k: int, accuracies: list[float], p_answer: float) -> np.ndarray:
    """A ratings matrix (``-1`` missing): annotator ``a`` answers the truth w.p. ``accuracies[a]``,
    else a uniform other class; each answers an item w.p. ``p_answer`` (every item gets one)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(k, size=n)
    R = np.full((n, len(accuracies)), -1)
    for a, acc in enumerate(accuracies):
        answers = rng.random(n) < p_answer
        right = rng.random(n) < acc
        wrong = (truth + rng.integers(1, k, size=n)) % k
        R[answers, a] = np.where(right, truth, wrong)[answers]
    none = (R == -1).all(axis=1)
    R[none, 0] = truth[none]
    return R


STEPS = 40


def _crowdkit_posterior(R: np.ndarray, k: int) -> np.ndarray:
    items, workers = np.nonzero(R != -1)
    df = pd.DataFrame({"task": items, "worker": workers, "label": R[items, workers]})
    probas = crowdkit.DawidSkene(n_iter=STEPS, tol=-np.inf).fit_predict_proba(df)
    return probas.reindex(index=range(len(R)), columns=range(k)).fillna(0.0).to_numpy()


@pytest.mark.parametrize(("seed", "k", "accuracies", "p_answer"), [
    (0, 2, [0.95, 0.9, 0.8, 0.7, 0.6], 0.6),
    (1, 3, [0.9, 0.85, 0.7, 0.55, 0.5, 0.95], 0.5),
    (2, 4, [0.8, 0.75, 0.9, 0.4, 0.6], 0.7),
    (3, 5, [0.97, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6], 0.4),
])
def test_our_dawid_skene_has_crowd_kits_posteriors(seed, k, accuracies, p_answer):
    R = _answers(seed, n=300, k=k, accuracies=accuracies, p_answer=p_answer)
    ours = DawidSkene(n_classes=k, smoothing=1e-10, tol=0.0, max_iter=STEPS).fit(R).posterior_
    theirs = _crowdkit_posterior(R, k)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() < 1e-6
    assert (ours.argmax(axis=1) == theirs.argmax(axis=1)).all()


def test_with_the_default_smoothing_the_labels_still_agree_and_the_posteriors_differ_by_it():
    """Our default ``smoothing = 0.01`` keeps an annotator who never saw a class from a zero row;
    it moves the posteriors a little (measured here), not the labels."""
    R = _answers(7, n=300, k=3, accuracies=[0.9, 0.8, 0.7, 0.6, 0.9], p_answer=0.6)
    ours = DawidSkene(n_classes=3, tol=0.0, max_iter=STEPS).fit(R).posterior_
    theirs = _crowdkit_posterior(R, 3)
    gap = np.abs(ours - theirs).max()
    assert 1e-6 < gap < 0.1  # 0.058 measured
    assert (ours.argmax(axis=1) == theirs.argmax(axis=1)).mean() > 0.995
