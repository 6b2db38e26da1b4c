"""Text classifier: a frozen transformer encoder, a linear softmax head and a temperature, and
optionally a word-feature head (TF-IDF, :mod:`connector.lexical`) with its own temperature.

Follows scikit-learn's estimator contract: every hyperparameter is a keyword of ``__init__``,
which does nothing else; ``fit`` returns ``self``; what fitting learns lives in trailing-underscore
attributes. One training recipe serves ``hitl train``, the scheduler's retraining and the
simulator: heads fitted on every training label, the temperatures fitted on out-of-fold logits
(``calibration="cross_fit"``), the out-of-fold probabilities kept in ``oof_proba_``. With two
heads the two temperatures are fitted together, on the average of the heads' probabilities (what
the model serves): calibrated one by one, their average is underconfident where the heads disagree.

A temperature is only as good as the labels it is fitted on: fitted on the items an active learner
picked (the hardest ones) it flattens the model for the easy majority. ``fit(..., calibrate_on=mask)``
fits the temperatures on the masked rows only (labels of items drawn at random), while the heads
still learn from every row. Few such labels say little, so the temperatures are shrunk towards 1
(a prior on ``log T``, ``temperature_prior_sd``), and with fewer than ``min_calibration_labels``
of them they stay 1.

``classes_`` is always sorted (``np.unique`` order), whatever order the labels or the ``classes``
hyperparameter come in; callers that want another order (a task's label order) reorder the
columns of ``predict_proba`` by name. A model version saved with its labels in another order is
reordered when it is loaded (:meth:`TextClassifier.from_state`).

Imports torch, transformers and numpy at module level (scikit-learn lazily, to fit).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np

from connector.calibration import averaged_temperatures, softmax
from connector.encoder import TextEncoder


def stratified_split(y: np.ndarray, fraction: float, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(rest, held)`` with about ``fraction`` of each class held out (at least one
    per class with two or more members)."""
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = round(fraction * len(idx))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        held.append(idx[:k])
    held_idx = np.sort(np.concatenate(held)) if held else np.array([], dtype=np.int64)
    rest_idx = np.setdiff1d(np.arange(len(y)), held_idx)
    return rest_idx, held_idx


def fit_softmax_head(x: np.ndarray, y: np.ndarray, n_classes: int, *, C: float = 10.0,
                     max_iter: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression (L2 on the weights, scikit-learn's ``C``) by L-BFGS.

    Minimises ``C * sum(cross-entropy) + ||W||^2 / 2``, scaled by ``1 / (C n)``.
    Returns ``(coef (k, d), intercept (k,))``.
    """
    import torch

    xt = torch.as_tensor(x, dtype=torch.float64)
    yt = torch.as_tensor(y, dtype=torch.int64)
    w = torch.zeros((n_classes, x.shape[1]), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")
    reg = 1.0 / (2.0 * C * len(y))

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w.T + b, yt) + reg * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach().numpy().astype(np.float32), b.detach().numpy().astype(np.float32)


def n_cross_fit_splits(y: np.ndarray, folds: int) -> int:
    """Folds cross-fitting can use: ``folds``, fewer when a class has fewer labels; 0 when a class
    has a single label (no fold can hold it out)."""
    if not len(y):
        return 0
    counts = np.bincount(y)
    n = int(min(folds, counts[counts > 0].min()))
    return n if n >= 2 else 0


def cross_fitted_logits(x: Any, y: np.ndarray, k: int, *, folds: int, C: float, seed: int = 0,
                        fit: Callable[..., tuple[np.ndarray, np.ndarray]] = fit_softmax_head) -> np.ndarray:
    """Out-of-fold logits: each row from a head fitted without it (stratified, shuffled folds
    seeded by ``seed``). All zeros when a class has a single label (no fold can hold it out)."""
    from sklearn.model_selection import StratifiedKFold

    n_splits = n_cross_fit_splits(y, folds)
    out = np.zeros((len(y), k))
    if n_splits < 2:
        return out
    for train, held in StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        coef, intercept = fit(x[train], y[train], k, C=C)
        out[held] = np.asarray(x[held] @ coef.T) + intercept
    return out


@dataclass(frozen=True)
class FittedState:
    """A fitted classifier without its encoder: what the model store writes and reads back.
    Rows of ``coef``/``intercept`` (and ``lex_coef``/``lex_intercept``) follow ``classes``."""

    classes: list[str]
    coef: np.ndarray
    intercept: np.ndarray
    temperature: float
    lexical: Any = None  # a fitted LexicalFeatures, or None
    lex_coef: np.ndarray | None = None
    lex_intercept: np.ndarray | None = None
    lex_temperature: float = 1.0


class TextClassifier:
    """Encoder + linear head(s) + temperature(s); ``predict_proba`` returns calibrated probabilities.

    Hyperparameters:

    - ``encoder``: a :class:`TextEncoder` (``None``: the bundled default, built on first use).
    - ``features``: ``"embeddings"``, or ``"embeddings+tfidf"`` to add a word-feature head whose
      tempered probabilities are averaged with the embedding head's (long documents, topic labels).
    - ``classes``: the label set when it is known before the data (a task's labels): a class with
      no training label still gets a row (and a near-zero probability); ``None``: the labels in ``y``.
    - ``C`` / ``C_lexical``: inverse L2 strength of the embedding head / the word-feature head.
    - ``calibration``: ``"cross_fit"`` (the temperatures fitted on ``folds``-fold out-of-fold
      logits, heads on every label), ``"holdout"`` (``calibration_fraction`` of the labels held out,
      stratified, for the temperatures; heads on the rest) or ``"none"`` (temperature 1). Either
      way only the rows ``fit``'s ``calibrate_on`` selects serve the temperatures.
    - ``min_calibration_labels``: the fewest labels the temperatures are fitted on (the rows
      ``calibrate_on`` selects, or the held-out rows with ``holdout``); fewer, and they stay 1.
    - ``temperature_prior_sd``: the standard deviation of a Gaussian prior on each ``log T``
      centred on 1 (:func:`~connector.calibration.averaged_temperatures`); ``None``: none.
    - ``max_iter``: L-BFGS iterations of the embedding head; ``random_state``: seeds the folds
      and the holdout split.

    Fitted attributes: ``classes_`` (sorted), ``coef_`` (k, d), ``intercept_`` (k,),
    ``temperature_``; ``lexical_`` (the TF-IDF vocabulary, or ``None``), ``lex_coef_``,
    ``lex_intercept_``, ``lex_temperature_``; ``n_folds_`` (cross-fitting folds used, 0 when a
    class has a single label: then the temperatures stay 1); ``n_calibration_`` (labels the
    temperatures were fitted on, 0 when they stayed 1; ``None`` for a loaded version);
    ``oof_proba_`` (n, k): with ``cross_fit``, calibrated out-of-fold probabilities of the training
    rows, columns in ``classes_`` order (uniform rows when ``n_folds_`` is 0), else ``None``.
    """

    def __init__(self, encoder: TextEncoder | None = None, *,
                 features: Literal["embeddings", "embeddings+tfidf"] = "embeddings",
                 classes: Sequence[str] | None = None, C: float = 10.0, C_lexical: float = 100.0,
                 calibration: Literal["cross_fit", "holdout", "none"] = "cross_fit", folds: int = 5,
                 calibration_fraction: float = 0.2, min_calibration_labels: int = 10,
                 temperature_prior_sd: float | None = 1.0, max_iter: int = 200, random_state: int = 0) -> None:
        self.encoder = encoder
        self.features = features
        self.classes = classes
        self.C = C
        self.C_lexical = C_lexical
        self.calibration = calibration
        self.folds = folds
        self.calibration_fraction = calibration_fraction
        self.min_calibration_labels = min_calibration_labels
        self.temperature_prior_sd = temperature_prior_sd
        self.max_iter = max_iter
        self.random_state = random_state

    def get_params(self, deep: bool = False) -> dict[str, Any]:
        """The hyperparameters, by name (scikit-learn's ``get_params``)."""
        return {name: getattr(self, name) for name in inspect.signature(type(self).__init__).parameters
                if name != "self"}

    # -- training -----------------------------------------------------------------------------

    def _encoder(self) -> TextEncoder:
        if self.encoder is None:
            self.encoder = TextEncoder()
        return self.encoder

    def fit(self, texts: Sequence[str], y: Sequence[str], *, corpus: Sequence[str] | None = None,
            calibrate_on: Sequence[bool] | np.ndarray | None = None) -> TextClassifier:
        """Encode ``texts`` and fit; ``corpus``: texts for the word features' vocabulary (default
        ``texts``); ``calibrate_on``: a boolean mask over the rows, the labels the temperatures are
        fitted on (those that represent the items the model will score: drawn at random); ``None``:
        every row."""
        texts = list(texts)
        return self.fit_embeddings(self._encoder().encode(texts), y, texts=texts, corpus=corpus,
                                   calibrate_on=calibrate_on)

    def fit_embeddings(self, x: np.ndarray, y: Sequence[str], *, texts: Sequence[str] | None = None,
                       corpus: Sequence[str] | None = None,
                       calibrate_on: Sequence[bool] | np.ndarray | None = None) -> TextClassifier:
        """Fit on precomputed embeddings (cache them: the encoder is frozen). ``texts`` (the rows'
        texts) are needed with ``features="embeddings+tfidf"``; ``corpus`` and ``calibrate_on`` as
        in :meth:`fit`."""
        if self.features not in ("embeddings", "embeddings+tfidf"):
            raise ValueError(f"features must be 'embeddings' or 'embeddings+tfidf', got {self.features!r}")
        if self.calibration not in ("cross_fit", "holdout", "none"):
            raise ValueError(f"calibration must be 'cross_fit', 'holdout' or 'none', got {self.calibration!r}")
        labels = [str(v) for v in y]
        if len(labels) != len(x):
            raise ValueError(f"{len(x)} embeddings but {len(labels)} labels")
        if len(set(labels)) < 2:
            raise ValueError(f"need at least two classes to train, got {sorted(set(labels))}")
        mask = np.ones(len(labels), dtype=bool) if calibrate_on is None else np.asarray(calibrate_on)
        if mask.dtype != bool or mask.shape != (len(labels),):
            raise ValueError(f"calibrate_on must be a boolean mask of {len(labels)} rows, got {mask.dtype} {mask.shape}")
        lexical = self.features == "embeddings+tfidf"
        if lexical and (texts is None or len(texts) != len(x)):
            raise ValueError("features='embeddings+tfidf' also reads the words: pass texts= with the embeddings")
        self.classes_ = np.array(sorted(set(labels) if self.classes is None else {str(c) for c in self.classes}))
        codes = self.label_indices(labels)
        k = len(self.classes_)
        self.n_folds_ = n_cross_fit_splits(codes, self.folds) if self.calibration == "cross_fit" else 0
        calibrate = self._calibration_rows(codes, mask)
        self.n_calibration_ = len(calibrate)
        heads = [self._fit_head(x, codes, k, partial(fit_softmax_head, max_iter=self.max_iter), self.C, calibrate)]
        self.lexical_ = None
        if lexical:
            from connector.lexical import LexicalFeatures, fit_lexical_head

            self.lexical_ = LexicalFeatures().fit(list(corpus) if corpus else list(texts))
            heads.append(self._fit_head(self.lexical_.transform(texts), codes, k, fit_lexical_head, self.C_lexical,
                                        calibrate))
        # the temperatures calibrate what is served, the heads' average, so they are fitted together
        temperatures = averaged_temperatures([h[3] for h in heads], codes[calibrate],
                                             prior_sd=self.temperature_prior_sd) if len(calibrate) else [1.0] * len(heads)
        (self.coef_, self.intercept_, _, _), self.temperature_ = heads[0], temperatures[0]
        self.lex_coef_, self.lex_intercept_, self.lex_temperature_ = None, None, 1.0
        if lexical:
            (self.lex_coef_, self.lex_intercept_, _, _), self.lex_temperature_ = heads[1], temperatures[1]
        self.oof_proba_ = None if heads[0][2] is None else \
            sum(softmax(h[2], t) for h, t in zip(heads, temperatures)) / len(heads)
        return self

    def _calibration_rows(self, y: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Rows the temperatures are fitted on: with ``cross_fit`` the masked rows (out-of-fold
        logits exist for every row), with ``holdout`` a stratified ``calibration_fraction`` of the
        masked rows (held out of the heads); none (nothing held out) when fewer than
        ``min_calibration_labels``."""
        rows = np.flatnonzero(mask)
        if self.calibration == "cross_fit":
            rows = rows if self.n_folds_ else rows[:0]
        elif self.calibration == "holdout" and self.calibration_fraction > 0:
            rows = rows[stratified_split(y[rows], self.calibration_fraction, seed=self.random_state)[1]]
        else:
            rows = rows[:0]
        return rows if len(rows) >= max(self.min_calibration_labels, 1) else rows[:0]

    def _fit_head(self, x: Any, y: np.ndarray, k: int, fit: Callable[..., tuple[np.ndarray, np.ndarray]], C: float,
                  calibrate: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """One head by the calibration recipe: ``(coef, intercept, out-of-fold logits or None, logits of
        the rows ``calibrate`` from models that never saw them)``."""
        if self.calibration == "cross_fit":
            oof = cross_fitted_logits(x, y, k, folds=self.folds, C=C, seed=self.random_state, fit=fit)
            coef, intercept = fit(x, y, k, C=C)
            return coef, intercept, oof, oof[calibrate]
        rest = np.setdiff1d(np.arange(len(y)), calibrate)  # holdout: the heads never see the held-out rows
        coef, intercept = fit(x[rest], y[rest], k, C=C)
        return coef, intercept, None, np.asarray(x[calibrate] @ coef.T) + intercept

    # -- saving and loading -------------------------------------------------------------------

    def state(self) -> FittedState:
        """The fitted state, for the model store."""
        return FittedState(self.classes_.tolist(), self.coef_, self.intercept_, float(self.temperature_),
                           self.lexical_, self.lex_coef_, self.lex_intercept_, float(self.lex_temperature_))

    @classmethod
    def from_state(cls, state: FittedState, encoder: TextEncoder | None = None, **params: Any) -> TextClassifier:
        """A fitted classifier from a saved state (rows reordered so that ``classes_`` is sorted);
        ``params``: its hyperparameters (unknown names are ignored: versions outlive parameters)."""
        known = set(inspect.signature(cls.__init__).parameters) - {"self", "encoder"}
        params = {k: v for k, v in params.items() if k in known}
        if state.lexical is not None:
            params["features"] = "embeddings+tfidf"
        self = cls(encoder, **params)
        order = np.argsort(np.array(state.classes), kind="stable")
        self.classes_ = np.array(state.classes)[order]
        self.coef_, self.intercept_ = state.coef[order], state.intercept[order]
        self.temperature_ = float(state.temperature)
        self.lexical_, self.lex_temperature_ = state.lexical, float(state.lex_temperature)
        self.lex_coef_ = state.lex_coef[order] if state.lex_coef is not None else None
        self.lex_intercept_ = state.lex_intercept[order] if state.lex_intercept is not None else None
        self.n_folds_, self.n_calibration_, self.oof_proba_ = 0, None, None
        return self

    # -- inference ----------------------------------------------------------------------------

    def label_indices(self, labels: Sequence[str]) -> np.ndarray:
        """Class indices of ``labels``; raises ``ValueError`` naming labels the model lacks."""
        index = {c: i for i, c in enumerate(self.classes_.tolist())}
        unknown = sorted({str(v) for v in labels} - index.keys())
        if unknown:
            raise ValueError(f"labels unknown to the model: {unknown}; known: {list(index)}")
        return np.array([index[str(v)] for v in labels], dtype=np.int64)

    def logits_from_embeddings(self, x: np.ndarray) -> np.ndarray:
        """The embedding head's logits (before temperature)."""
        return x @ self.coef_.T + self.intercept_

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        return self.logits_from_embeddings(self._encoder().encode(list(texts)))

    def predict_proba(self, texts: Sequence[str], *, calibrated: bool = True) -> np.ndarray:
        """Class probabilities, columns in ``classes_`` order."""
        texts = list(texts)
        return self.predict_proba_from_embeddings(self._encoder().encode(texts), texts=texts, calibrated=calibrated)

    def predict_proba_from_embeddings(self, x: np.ndarray, *, texts: Sequence[str] | None = None,
                                      calibrated: bool = True) -> np.ndarray:
        """Class probabilities; a model with a word-feature head also needs the ``texts``."""
        p = softmax(self.logits_from_embeddings(x), self.temperature_ if calibrated else 1.0)
        if self.lexical_ is None:
            return p
        if texts is None:
            raise ValueError("this model also reads the words: pass texts= with the embeddings")
        lex = self.lexical_.transform(texts) @ self.lex_coef_.T + self.lex_intercept_
        return (p + softmax(np.asarray(lex), self.lex_temperature_ if calibrated else 1.0)) / 2

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        return self.classes_[self.predict_proba(texts).argmax(axis=1)]
