"""Consensus labels from several annotators (numpy only, vectorized).

Input is the ratings matrix of :mod:`connector.agreement`: ``R`` of shape ``(n_items, n_annotators)``,
integer class codes in ``[0, n_classes)``, ``-1`` for a missing answer.

Two ways to settle an item:

* :func:`majority_vote`: the most frequent class, if it is the unique winner, has at least
  ``min_agreement`` of the item's answers and the item has at least ``min_answers`` answers;
  otherwise the item is *unsettled* (label ``-1``) and ``reason`` says why, so the caller can send it
  back for more answers.
* :class:`DawidSkene` / :func:`dawid_skene`: weights annotators by their estimated quality. EM over
  a per-annotator confusion matrix (Dawid & Skene, 1979), started from majority-vote soft labels.
* :func:`crowdlab`: cleanlab's CROWDLAB (Goh et al., 2022): the model's out-of-sample class
  probabilities count as one more rater, weighted against the annotators by how often each agrees
  with the others; items without a model probability fall back to Dawid-Skene. cleanlab is
  imported only when it runs.

Results come back as a :class:`ConsensusResult`, one entry per item in every field.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from connector.agreement import MISSING, _validate, item_class_counts

__all__ = [
    "REASONS",
    "ConsensusResult",
    "DawidSkene",
    "crowdlab",
    "dawid_skene",
    "majority_vote",
]

#: Every value ``ConsensusResult.reason`` can take.
REASONS = ("settled", "tie", "low_agreement", "too_few_answers", "no_answers", "low_confidence")


@dataclass
class ConsensusResult:
    """Per-item consensus; every field has one entry per item.

    * ``label``: ``int64`` class code, ``-1`` when the item is unsettled;
    * ``agreement``: ``float64`` share of the item's answers given to the winning class (majority
      vote) or the winning class's posterior probability (Dawid-Skene); ``NaN`` for items with no
      answers;
    * ``n_answers``: ``int64`` number of answers the item received;
    * ``reason``: ``list[str]``, ``"settled"`` or why not (see :data:`REASONS`);
    * ``posterior``: ``(n_items, n_classes)`` class probabilities (Dawid-Skene only, else ``None``);
    * ``confidence``: ``float64`` how sure the method is of the winner where it differs from
      ``agreement`` (CROWDLAB's consensus quality score), else ``None``;
    * ``method``: ``list[str]``, the method that settled each item where it varies by item
      (CROWDLAB, with its Dawid-Skene fallback), else ``None``;
    * ``note``: why a method fell back for some items (CROWDLAB), else ``None``.
    """

    label: np.ndarray
    agreement: np.ndarray
    n_answers: np.ndarray
    reason: list[str]
    posterior: np.ndarray | None = None
    confidence: np.ndarray | None = None
    method: list[str] | None = None
    note: str | None = None

    @property
    def settled(self) -> np.ndarray:
        """Boolean mask of items with a label."""
        return self.label != MISSING


def majority_vote(
    R: np.ndarray, *, n_classes: int, min_answers: int = 1, min_agreement: float = 0.5
) -> ConsensusResult:
    """Majority vote with a minimum agreement.

    An item is settled when it has at least ``min_answers`` answers, its most frequent class is the
    unique maximum, and that class holds at least ``min_agreement`` of its answers. Checks are made in
    this order and the first that fails is the item's reason: ``"no_answers"``, ``"too_few_answers"``,
    ``"tie"`` (two or more classes share the top count), ``"low_agreement"``.
    """
    if not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"min_agreement must lie in [0, 1], got {min_agreement}")
    if min_answers < 1:
        raise ValueError(f"min_answers must be >= 1, got {min_answers}")
    R, k = _validate(R, n_classes)
    counts = item_class_counts(R, n_classes=k)
    n_answers = counts.sum(axis=1)
    top = counts.max(axis=1) if k else np.zeros(len(counts), dtype=np.int64)
    winner = counts.argmax(axis=1) if k else np.zeros(len(counts), dtype=np.int64)
    n_top = (counts == top[:, None]).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        agreement = np.where(n_answers > 0, top / n_answers, np.nan)

    # np.select takes the first true condition, so the order is the precedence of reasons
    codes = np.select(
        [n_answers == 0, n_answers < min_answers, n_top > 1, agreement < min_agreement],
        [4, 3, 1, 2],
        default=0,
    )
    label = np.where(codes == 0, winner, MISSING).astype(np.int64)
    return ConsensusResult(
        label=label,
        agreement=agreement.astype(np.float64),
        n_answers=n_answers.astype(np.int64),
        reason=[REASONS[c] for c in codes],
    )


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


class DawidSkene:
    """Dawid-Skene EM: a class prior and one ``(k, k)`` confusion matrix per annotator.

    ``confusion_[a, j, l]`` is the probability that annotator ``a`` answers ``l`` when the true class is
    ``j``. EM starts from the majority-vote soft labels (each item's share of answers per class);
    the M-step adds ``smoothing`` to every confusion count and class count (so an annotator who never
    saw a class gets a uniform row instead of a zero); the E-step is computed in log space. Stops when
    no posterior moves by more than ``tol`` or after ``max_iter`` iterations.

    Fitted attributes: ``class_prior_`` ``(k,)``, ``confusion_`` ``(A, k, k)`` (rows sum to one),
    ``posterior_`` ``(n_items, k)`` (the prior for items with no answers), ``n_iter_``,
    ``annotator_accuracy_`` ``(A,)`` = ``sum_j class_prior_[j] * confusion_[a, j, j]``, and
    ``answered_`` ``(n_items,)`` mask of items with at least one answer.
    """

    def __init__(self, *, n_classes: int, max_iter: int = 100, tol: float = 1e-6, smoothing: float = 0.01):
        self.n_classes = n_classes
        self.max_iter = max_iter
        self.tol = tol
        self.smoothing = smoothing

    def _onehot(self, R: np.ndarray) -> np.ndarray:
        R, k = _validate(R, self.n_classes)
        return (R[:, :, None] == np.arange(k)).astype(np.float64)  # (n, A, k); all-zero where missing

    def _log_joint(self, Y: np.ndarray) -> np.ndarray:
        """``log p(true class j, answers of item i)``, shape ``(n, k)``."""
        return np.log(self.class_prior_) + np.einsum("ial,ajl->ij", Y, np.log(self.confusion_))

    def _e_step(self, Y: np.ndarray) -> np.ndarray:
        log_joint = self._log_joint(Y)
        return np.exp(log_joint - _logsumexp(log_joint, axis=1)[:, None])

    def _m_step(self, Y: np.ndarray, T: np.ndarray, answered: np.ndarray) -> None:
        T = T * answered[:, None]  # items with no answers carry no information
        counts = np.einsum("ij,ial->ajl", T, Y) + self.smoothing
        self.confusion_ = counts / counts.sum(axis=2, keepdims=True)
        prior = T.sum(axis=0) + self.smoothing
        self.class_prior_ = prior / prior.sum()

    def fit(self, R: np.ndarray) -> DawidSkene:
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")
        if self.smoothing <= 0:
            raise ValueError(f"smoothing must be > 0 (it keeps the logs finite), got {self.smoothing}")
        Y = self._onehot(R)
        counts = Y.sum(axis=1)
        n_answers = counts.sum(axis=1)
        answered = n_answers > 0
        T = counts / np.maximum(n_answers, 1)[:, None]

        for it in range(1, self.max_iter + 1):
            self._m_step(Y, T, answered)
            T_new = self._e_step(Y)
            delta = np.abs(T_new - T).max() if T.size else 0.0
            T = T_new
            if delta <= self.tol:
                break
        self.n_iter_ = it
        self.posterior_ = T
        self.answered_ = answered
        self.annotator_accuracy_ = np.einsum("j,ajj->a", self.class_prior_, self.confusion_)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "posterior_"):
            raise RuntimeError("DawidSkene is not fitted; call fit(R) first")

    def predict_proba(self, R: np.ndarray | None = None) -> np.ndarray:
        """Posterior ``(n_items, k)``: of the fitted items, or of ``R`` (same annotator columns) under
        the fitted prior and confusions. Items with no answers get the class prior."""
        self._check_fitted()
        if R is None:
            return self.posterior_
        Y = self._onehot(R)
        if Y.shape[1] != self.confusion_.shape[0]:
            raise ValueError(f"R has {Y.shape[1]} annotators, the model was fitted on {self.confusion_.shape[0]}")
        return self._e_step(Y)

    def predict(self, R: np.ndarray | None = None) -> np.ndarray:
        """Most probable class per item, ``-1`` for items with no answers."""
        P = self.predict_proba(R)
        answered = self.answered_ if R is None else (np.asarray(R) != MISSING).any(axis=1)
        return np.where(answered, P.argmax(axis=1), MISSING).astype(np.int64)


def dawid_skene(R: np.ndarray, *, n_classes: int, min_confidence: float = 0.0, **kw) -> ConsensusResult:
    """Fit :class:`DawidSkene` on ``R`` (``kw`` go to its constructor) and settle each item whose
    winning posterior is at least ``min_confidence``; others get reason ``"low_confidence"``, items
    without answers ``"no_answers"``. ``agreement`` holds the winning posterior (``NaN`` without
    answers) and ``posterior`` the full matrix."""
    model = DawidSkene(n_classes=n_classes, **kw).fit(R)
    P = model.posterior_
    answered = model.answered_
    n_answers = (np.asarray(R) != MISSING).sum(axis=1).astype(np.int64)
    conf = np.where(answered, P.max(axis=1), np.nan)
    codes = np.select([~answered, conf < min_confidence], [4, 5], default=0)
    label = np.where(codes == 0, P.argmax(axis=1), MISSING).astype(np.int64)
    return ConsensusResult(
        label=label, agreement=conf, n_answers=n_answers, reason=[REASONS[c] for c in codes], posterior=P
    )


def _crowdlab_unfit(R: np.ndarray, probs: np.ndarray, k: int) -> str | None:
    """Why cleanlab's CROWDLAB cannot run on ``R`` (items with answers and a model probability),
    or ``None`` when it can.

    Besides its own input checks: CROWDLAB scales every weight by how often the majority vote of
    items with two answers or more differs from its most common class; when it never does (one
    such item, or all of one class) every weight is clipped to the same floor and the model
    outvotes any majority on no evidence, so that is a fallback too."""
    if k < 2:
        return "fewer than two classes"
    if not len(R):
        return "no answered item has a model probability"
    if int((R != MISSING).any(axis=0).sum()) < 2:
        return "fewer than two annotators"
    multi = (R != MISSING).sum(axis=1) >= 2
    if not multi.any():
        return "no item has two answers"
    counts = item_class_counts(R[multi], n_classes=k)
    vote = (counts + 1e-3 * probs[multi]).argmax(axis=1)  # ties broken by the model, as cleanlab does
    if len(np.unique(vote)) < 2:
        return "the majority vote of the items with two answers is all one class"
    return None


def crowdlab(R: np.ndarray, probs: np.ndarray, *, n_classes: int, min_quality: float = 0.0,
             min_confidence: float = 0.0) -> ConsensusResult:
    """CROWDLAB consensus (``cleanlab.multiannotator.get_label_quality_multiannotator``, consensus
    ``best_quality``, quality ``crowdlab``): the model is one more rater.

    ``probs``: ``(n_items, n_classes)`` the model's out-of-sample class probabilities, a row of
    ``NaN`` where the model has none. Items with answers and probabilities are settled by CROWDLAB
    when their consensus quality score (the winner's weighted posterior, in ``confidence``) is at
    least ``min_quality`` (else ``"low_confidence"``); ``agreement`` is the share of the item's
    answers given to the winner. The other answered items, and every item when CROWDLAB cannot run
    (one annotator, no item with two answers, fewer than two classes, no probabilities, a majority
    vote of one class: see :func:`_crowdlab_unfit`), get
    :func:`dawid_skene` over all of ``R`` with ``min_confidence``; ``method`` says which settled
    each item. cleanlab's prints and warnings are silenced, and its random tie-break (only for
    exact ties of the model's probabilities) is seeded, so a run is repeatable.
    """
    R, k = _validate(R, n_classes)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(R), k):
        raise ValueError(f"probs must have shape {(len(R), k)}, got {probs.shape}")
    ds = dawid_skene(R, n_classes=k, min_confidence=min_confidence)
    n_answers = ds.n_answers
    with np.errstate(invalid="ignore"):
        has_probs = np.isfinite(probs).all(axis=1) & (probs.sum(axis=1) > 0)
    rows = np.flatnonzero((n_answers > 0) & has_probs)
    sub = R[rows][:, (R[rows] != MISSING).any(axis=0)] if len(rows) else R[:0]
    method = ["dawid_skene"] * len(R)
    if (why := _crowdlab_unfit(sub, probs[rows], k)) is not None:
        return ConsensusResult(label=ds.label, agreement=ds.agreement, n_answers=n_answers, reason=ds.reason,
                               posterior=ds.posterior, confidence=ds.agreement, method=method,
                               note=f"CROWDLAB cannot run ({why}): Dawid-Skene settled every item")
    info = _run_cleanlab(sub, probs[rows])
    quality = info["label_quality"]
    cl_label = quality["consensus_label"].to_numpy(dtype=np.int64)
    cl_quality = quality["consensus_quality_score"].to_numpy(dtype=np.float64)
    label, agreement = ds.label.copy(), ds.agreement.copy()
    confidence, reason = ds.agreement.copy(), list(ds.reason)
    settled = cl_quality >= min_quality
    label[rows] = np.where(settled, cl_label, MISSING)
    agreement[rows] = quality["annotator_agreement"].to_numpy(dtype=np.float64)
    confidence[rows] = cl_quality
    for r, ok in zip(rows.tolist(), settled.tolist()):
        reason[r] = "settled" if ok else "low_confidence"
        method[r] = "crowdlab"
    lacking = int(((n_answers > 0) & ~has_probs).sum())
    note = f"{lacking} answered items have no model probability: Dawid-Skene settled them" if lacking else None
    return ConsensusResult(label=label, agreement=agreement, n_answers=n_answers, reason=reason,
                           confidence=confidence, method=method, note=note)


def _run_cleanlab(R: np.ndarray, probs: np.ndarray) -> dict:
    """cleanlab's CROWDLAB on ``R`` (every row answered, at least two columns), quietly."""
    import contextlib
    import io
    import warnings

    from cleanlab.multiannotator import get_label_quality_multiannotator

    labels = np.where(R == MISSING, np.nan, R.astype(np.float64))
    probs = np.clip(probs, 0.0, None)
    probs = probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)
    state = np.random.get_state()
    try:
        np.random.seed(0)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return get_label_quality_multiannotator(
                labels, probs, consensus_method="best_quality", quality_method="crowdlab", verbose=False,
                return_detailed_quality=False, return_annotator_stats=False, return_weights=True)
    finally:
        np.random.set_state(state)
