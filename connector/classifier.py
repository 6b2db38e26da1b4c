"""Text classifier: a frozen transformer encoder, a linear softmax head and a temperature.

Follows scikit-learn's estimator contract: hyperparameters in ``__init__``; ``fit`` returns
``self``; fitted state in trailing-underscore attributes (``classes_``, ``coef_``,
``intercept_``, ``temperature_``). Imports torch, transformers, numpy and safetensors only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from connector.calibration import TemperatureScaler, softmax
from connector.encoder import TextEncoder


def stratified_split(y: np.ndarray, fraction: float, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(rest, held)`` with about ``fraction`` of each class held out (at least one
    per class with two or more members)."""
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(fraction * len(idx)))
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


class TextClassifier:
    """Encoder + linear head + temperature; ``predict_proba`` returns calibrated probabilities.

    ``fit`` holds out ``calibration_fraction`` of the labels (stratified) to fit the temperature;
    with ``calibration_fraction=0`` the temperature stays 1 until :meth:`calibrate` is called.
    """

    #: optional word-feature head (see :mod:`connector.lexical`); its probabilities are averaged
    #: with the embedding head's, each calibrated by its own temperature
    lexical_: Any = None
    lex_coef_: Any = None
    lex_intercept_: Any = None
    lex_temperature_: float = 1.0

    def __init__(self, encoder: TextEncoder | None = None, *, C: float = 10.0, max_iter: int = 200,
                 calibration_fraction: float = 0.2, random_state: int = 0) -> None:
        self.encoder = encoder
        self.C = C
        self.max_iter = max_iter
        self.calibration_fraction = calibration_fraction
        self.random_state = random_state

    # -- training -----------------------------------------------------------------------------

    def _encoder(self) -> TextEncoder:
        if self.encoder is None:
            self.encoder = TextEncoder()
        return self.encoder

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> TextClassifier:
        return self.fit_embeddings(self._encoder().encode(list(texts)), labels)

    def fit_embeddings(self, x: np.ndarray, labels: Sequence[str]) -> TextClassifier:
        """Fit head and temperature on precomputed embeddings (cache them when the encoder is frozen)."""
        labels = [str(v) for v in labels]
        if len(labels) != len(x):
            raise ValueError(f"{len(x)} embeddings but {len(labels)} labels")
        classes = sorted(set(labels))
        if len(classes) < 2:
            raise ValueError(f"need at least two classes to train, got {classes}")
        self.classes_ = np.array(classes)
        y = np.searchsorted(self.classes_, labels)
        train, held = (stratified_split(y, self.calibration_fraction, seed=self.random_state)
                       if self.calibration_fraction > 0 else (np.arange(len(y)), np.array([], dtype=np.int64)))
        self.coef_, self.intercept_ = fit_softmax_head(x[train], y[train], len(classes), C=self.C,
                                                       max_iter=self.max_iter)
        self.temperature_ = 1.0
        if len(held):
            self.calibrate_embeddings(x[held], [labels[i] for i in held])
        return self

    def calibrate(self, texts: Sequence[str], labels: Sequence[str]) -> TextClassifier:
        """Refit only the temperature, on held-out labelled texts."""
        return self.calibrate_embeddings(self._encoder().encode(list(texts)), labels)

    def calibrate_embeddings(self, x: np.ndarray, labels: Sequence[str]) -> TextClassifier:
        self.temperature_ = TemperatureScaler().fit(self.logits_from_embeddings(x), self.label_indices(labels)).temperature_
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
        return x @ self.coef_.T + self.intercept_

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        return self.logits_from_embeddings(self._encoder().encode(list(texts)))

    def predict_proba(self, texts: Sequence[str], *, calibrated: bool = True) -> np.ndarray:
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
