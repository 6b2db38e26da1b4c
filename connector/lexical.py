"""Word features beside the embeddings: TF-IDF and a linear head on it.

Topic-like tasks over long documents (news, tickets) are decided by words a sentence encoder
averages away; a logistic regression on TF-IDF catches them. The vectorizer is fitted on every
text of the project (unsupervised: the texts are there before any label) and saved without pickle:
the vocabulary as JSON and the idf weights in safetensors.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

PARAMS = {"sublinear_tf": True, "ngram_range": [1, 2], "min_df": 2, "lowercase": True}


_FITTED: dict[tuple[int, str], Any] = {}  # the last vocabulary fitted, by corpus: retrainings reuse it
_ROWS: dict[str, Any] = {}  # rows of the last vocabulary, by text
_MAX_ROWS = 50_000


class LexicalFeatures:
    """TF-IDF (scikit-learn's ``TfidfVectorizer``, sublinear tf, unigrams and bigrams)."""

    def __init__(self, *, max_features: int | None = 200_000) -> None:
        self.max_features = max_features

    def fit(self, texts: Sequence[str]) -> LexicalFeatures:
        """Fit on ``texts``; the same corpus again (the next retraining) reuses the fitted vocabulary."""
        import hashlib

        from sklearn.feature_extraction.text import TfidfVectorizer

        digest = hashlib.sha256("\0".join(texts).encode()).hexdigest()
        key = (self.max_features or 0, digest)
        if key not in _FITTED:
            min_df = PARAMS["min_df"] if len(texts) >= 10 else 1
            vec = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=min_df, lowercase=True,
                                  max_features=self.max_features, dtype=np.float32)
            _FITTED.clear()
            _FITTED[key] = vec.fit(list(texts))
        self.vectorizer_ = _FITTED[key]
        return self

    def transform(self, texts: Sequence[str]) -> Any:
        """A sparse ``(n, vocabulary)`` float32 matrix, rows L2-normalized. Rows already computed
        with the same vocabulary and weights are reused (a retraining scores the same texts again)."""
        import hashlib

        import scipy.sparse as sp

        texts = list(texts)
        key = hashlib.sha256(np.ascontiguousarray(self.vectorizer_.idf_).tobytes()).hexdigest()
        if _ROWS.get("key") != key:
            _ROWS.clear()
            _ROWS["key"] = key
        rows: dict[str, Any] = _ROWS.setdefault("rows", {})
        if len(rows) > _MAX_ROWS:  # a long-running server sees new texts forever: keep the cache bounded
            rows.clear()
        # a local view, so another thread clearing the shared cache cannot pull rows from under us
        found = {t: row for t in dict.fromkeys(texts) if (row := rows.get(t)) is not None}
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            fresh = self.vectorizer_.transform(missing).tocsr()
            new = {t: fresh[i] for i, t in enumerate(missing)}
            found.update(new)
            rows.update(new)
        return sp.vstack([found[t] for t in texts], format="csr") if texts else self.vectorizer_.transform([])

    @property
    def size(self) -> int:
        return len(self.vectorizer_.vocabulary_)

    def save(self, directory: Path) -> dict[str, np.ndarray]:
        """Write ``lexical.json`` (vocabulary, parameters); return the idf tensor for safetensors."""
        vocab = {term: int(i) for term, i in self.vectorizer_.vocabulary_.items()}
        (directory / "lexical.json").write_text(json.dumps({"params": PARAMS, "vocabulary": vocab}))
        return {"idf": self.vectorizer_.idf_.astype(np.float32)}

    @classmethod
    def load(cls, directory: Path, idf: np.ndarray) -> LexicalFeatures:
        from sklearn.feature_extraction.text import TfidfVectorizer

        data = json.loads((directory / "lexical.json").read_text())
        vec = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), lowercase=True, dtype=np.float32,
                              vocabulary=data["vocabulary"])
        vec.idf_ = np.asarray(idf, dtype=np.float64)
        self = cls(max_features=None)
        self.vectorizer_ = vec
        return self


def fit_lexical_head(x: Any, y: np.ndarray, n_classes: int, *, C: float) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression on sparse features; ``(coef (k, d), intercept (k,))`` with a
    row for every class (classes absent from ``y`` get a very negative intercept)."""
    from sklearn.linear_model import LogisticRegression

    present = np.unique(y)
    coef = np.zeros((n_classes, x.shape[1]), dtype=np.float32)
    intercept = np.full(n_classes, -30.0, dtype=np.float32)
    if len(present) < 2:
        intercept[present] = 0.0
        return coef, intercept
    lr = LogisticRegression(C=C, max_iter=1000, tol=1e-4).fit(x, y)
    if len(present) == 2:  # scikit-learn keeps one row for two classes: logits (-z/2, z/2) give the same softmax
        coef[present[0]], coef[present[1]] = -lr.coef_[0] / 2, lr.coef_[0] / 2
        intercept[present[0]], intercept[present[1]] = -lr.intercept_[0] / 2, lr.intercept_[0] / 2
    else:
        coef[present], intercept[present] = lr.coef_, lr.intercept_
    return coef, intercept
