"""Multi-label text classifier: one yes/no logistic head per label on the frozen encoder's embeddings
(and optionally on TF-IDF word features), each label calibrated on its own.

The recipe is :class:`~connector.classifier.TextClassifier`'s, label by label: the heads are fitted
on every training label; each label's calibration (a temperature per head, fitted jointly on the
heads' averaged probabilities, or a Platt map of that average) is fitted on out-of-fold logits
(:func:`~connector.classifier.cross_fitted_logits`, folds stratified on that label), on the rows
``calibrate_on`` selects, shrunk towards the identity by a prior, and left at the identity with
fewer than ``min_calibration_labels`` rows or without both answers among them.

A head is scikit-learn's binary logistic regression (:func:`~connector.lexical.fit_lexical_head`,
kept as the two-row softmax ``(-w/2, w/2)`` that cross-fitting passes around, stored as one row
``w``). A label with no positive (or no negative) training row gets a constant head.

``predict_proba_from_embeddings`` returns ``(n, k)`` independent probabilities, columns in
``classes_`` order (sorted); a label is chosen where its probability reaches its threshold
(``thresholds_``, 0.5 by default). :meth:`MultiLabelClassifier.task_score` is the confidence of the
least confident label decision, what routing compares with an auto-accept threshold;
:meth:`MultiLabelClassifier.set_confidence` the chance that the whole set is right.

:func:`save_multilabel` / :func:`load_multilabel` write and read a fitted state in a directory of
its own (safetensors + JSON, nothing that unpickles).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from connector.calibration import PlattScaler, averaged_temperatures, logit, sigmoid
from connector.classifier import cross_fitted_logits, n_cross_fit_splits
from connector.encoder import TextEncoder
from connector.lexical import fit_lexical_head
from connector.uncertainty import label_set_confidence, least_confident_label

LabelSets = Sequence[Sequence[str]]
STATE_TENSORS = "multilabel.safetensors"
STATE_META = "multilabel.json"


def label_matrix(label_sets: LabelSets, classes: Sequence[str]) -> np.ndarray:
    """``(n, k)`` int8 indicator of each row's labels over ``classes``; raises ``ValueError`` naming
    labels outside ``classes`` (a row may be empty: no label applies), ``TypeError`` for a row that
    is a string (a label, not a set)."""
    index = {str(c): j for j, c in enumerate(classes)}
    out = np.zeros((len(label_sets), len(index)), dtype=np.int8)
    unknown: set[str] = set()
    for i, labels in enumerate(label_sets):
        if isinstance(labels, str):
            raise TypeError(f"row {i}: a label set must be a list of labels, got the string {labels!r}")
        for label in labels:
            j = index.get(str(label))
            if j is None:
                unknown.add(str(label))
            else:
                out[i, j] = 1
    if unknown:
        raise ValueError(f"labels unknown to the model: {sorted(unknown)}; known: {list(index)}")
    return out


def _binary_head(x: Any, y: np.ndarray, k: int = 2, *, C: float) -> tuple[np.ndarray, np.ndarray]:
    """A yes/no logistic head in the two-row form cross-fitting expects (``k`` is always 2)."""
    return fit_lexical_head(x, y, 2, C=C)


@dataclass(frozen=True)
class MultiLabelState:
    """A fitted :class:`MultiLabelClassifier` without its encoder. Row ``j`` of every array is label
    ``labels[j]``; ``coef`` (k, d) and ``intercept`` (k,) give the embedding head's logits,
    ``temperature`` (k,) its temperatures, ``platt_a``/``platt_b`` (k,) the Platt map of the averaged
    probability (1 and 0 without one); ``lex_*`` the same for the word-feature head (``lexical``:
    a fitted :class:`~connector.lexical.LexicalFeatures`, or ``None``)."""

    labels: list[str]
    coef: np.ndarray
    intercept: np.ndarray
    temperature: np.ndarray
    platt_a: np.ndarray
    platt_b: np.ndarray
    thresholds: np.ndarray
    lexical: Any = None
    lex_coef: np.ndarray | None = None
    lex_intercept: np.ndarray | None = None
    lex_temperature: np.ndarray | None = None
    n_positive: np.ndarray | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)


class MultiLabelClassifier:
    """Encoder + one calibrated yes/no head per label (a scikit-learn-style estimator).

    Hyperparameters (as :class:`~connector.classifier.TextClassifier`'s, where they share a name):

    - ``encoder``: a :class:`TextEncoder` (``None``: the bundled default, built on first use).
    - ``features``: ``"embeddings"`` or ``"embeddings+tfidf"`` (a word-feature head per label too,
      its probability averaged with the embedding head's).
    - ``classes``: the label set when known before the data (a config's labels): a label with no
      training row gets a head that never chooses it; ``None``: the labels seen in the data.
    - ``C`` / ``C_lexical``: inverse L2 strength of the embedding / word-feature heads.
    - ``calibration``: ``"cross_fit"`` (calibration fitted on ``folds``-fold out-of-fold logits) or
      ``"none"``; ``calibration_method``: ``"platt"`` (a slope and an offset per label, on the logit
      of the heads' average: it also corrects a label's base rate; the default, as it did better
      than temperatures with noisy labels in ``benchmarks/multilabel_calibration.py``) or
      ``"temperature"`` (one per head and label, fitted jointly on the heads' average).
    - ``min_calibration_labels``: fewest calibration rows for a label to be calibrated.
    - ``prior_sd``: the prior's standard deviation (on ``log T``, or on Platt's ``a - 1`` and ``b``);
      ``None``: maximum likelihood.
    - ``thresholds``: one threshold for every label, or a mapping label -> threshold (others 0.5).
    - ``random_state``: seeds the folds.

    Fitted attributes: ``classes_`` (sorted), ``coef_`` (k, d), ``intercept_`` (k,),
    ``temperature_`` (k,), ``platt_a_``/``platt_b_`` (k,), ``lexical_``, ``lex_coef_``,
    ``lex_intercept_``, ``lex_temperature_``, ``thresholds_`` (k,), ``n_positive_`` (k,: training
    rows with the label), ``n_calibration_`` (k,: rows each label was calibrated on, 0 when left at
    the identity; ``None`` for a loaded state), ``oof_proba_`` ((n, k) calibrated out-of-fold
    probabilities with ``cross_fit``, else ``None``).
    """

    def __init__(self, encoder: TextEncoder | None = None, *,
                 features: Literal["embeddings", "embeddings+tfidf"] = "embeddings",
                 classes: Sequence[str] | None = None, C: float = 10.0, C_lexical: float = 100.0,
                 calibration: Literal["cross_fit", "none"] = "cross_fit",
                 calibration_method: Literal["temperature", "platt"] = "platt", folds: int = 5,
                 min_calibration_labels: int = 10, prior_sd: float | None = 1.0,
                 thresholds: float | Mapping[str, float] = 0.5, random_state: int = 0) -> None:
        self.encoder = encoder
        self.features = features
        self.classes = classes
        self.C = C
        self.C_lexical = C_lexical
        self.calibration = calibration
        self.calibration_method = calibration_method
        self.folds = folds
        self.min_calibration_labels = min_calibration_labels
        self.prior_sd = prior_sd
        self.thresholds = thresholds
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

    def fit(self, texts: Sequence[str], label_sets: LabelSets, *, corpus: Sequence[str] | None = None,
            calibrate_on: Sequence[bool] | np.ndarray | None = None) -> MultiLabelClassifier:
        """Encode ``texts`` and fit on their ``label_sets`` (one list of labels per text, possibly empty)."""
        texts = list(texts)
        return self.fit_embeddings(self._encoder().encode(texts), label_sets, texts=texts, corpus=corpus,
                                   calibrate_on=calibrate_on)

    def fit_embeddings(self, x: np.ndarray, label_sets: LabelSets, *, texts: Sequence[str] | None = None,
                       corpus: Sequence[str] | None = None,
                       calibrate_on: Sequence[bool] | np.ndarray | None = None) -> MultiLabelClassifier:
        """Fit on precomputed embeddings; ``texts``, ``corpus`` and ``calibrate_on`` as in
        :meth:`TextClassifier.fit_embeddings <connector.classifier.TextClassifier.fit_embeddings>`."""
        if self.features not in ("embeddings", "embeddings+tfidf"):
            raise ValueError(f"features must be 'embeddings' or 'embeddings+tfidf', got {self.features!r}")
        if self.calibration not in ("cross_fit", "none"):
            raise ValueError(f"calibration must be 'cross_fit' or 'none', got {self.calibration!r}")
        if self.calibration_method not in ("temperature", "platt"):
            raise ValueError(f"calibration_method must be 'temperature' or 'platt', got {self.calibration_method!r}")
        label_sets = list(label_sets)
        if len(label_sets) != len(x):
            raise ValueError(f"{len(x)} embeddings but {len(label_sets)} label sets")
        if not len(label_sets):
            raise ValueError("nothing to train on")
        mask = np.ones(len(label_sets), dtype=bool) if calibrate_on is None else np.asarray(calibrate_on)
        if mask.dtype != bool or mask.shape != (len(label_sets),):
            raise ValueError(f"calibrate_on must be a boolean mask of {len(label_sets)} rows, got {mask.dtype} {mask.shape}")
        lexical = self.features == "embeddings+tfidf"
        if lexical and (texts is None or len(texts) != len(x)):
            raise ValueError("features='embeddings+tfidf' also reads the words: pass texts= with the embeddings")
        seen = {str(label) for labels in label_sets for label in labels}
        self.classes_ = np.array(sorted(seen if self.classes is None else {str(c) for c in self.classes}))
        if not len(self.classes_):
            raise ValueError("no label to learn: every label set is empty and no classes= were given")
        Y = label_matrix(label_sets, self.classes_.tolist())
        k = len(self.classes_)
        features = [(x, self.C)]
        self.lexical_ = None
        if lexical:
            from connector.lexical import LexicalFeatures

            self.lexical_ = LexicalFeatures().fit(list(corpus) if corpus else list(texts))
            features.append((self.lexical_.transform(texts), self.C_lexical))
        heads = [np.zeros((k, f.shape[1]), dtype=np.float32) for f, _ in features]
        biases = [np.zeros(k, dtype=np.float32) for _ in features]
        temps = [np.ones(k) for _ in features]
        self.platt_a_, self.platt_b_ = np.ones(k), np.zeros(k)
        self.n_calibration_ = np.zeros(k, dtype=np.int64)
        self.n_positive_ = Y.sum(axis=0).astype(np.int64)
        oof = np.full((len(Y), k), 0.5) if self.calibration == "cross_fit" else None
        for j in range(k):
            y = Y[:, j].astype(np.int64)
            oof_logits = []
            for h, (f, C) in enumerate(features):
                coef, intercept = _binary_head(f, y, C=C)
                heads[h][j], biases[h][j] = coef[1] - coef[0], intercept[1] - intercept[0]
                if oof is not None:
                    z = cross_fitted_logits(f, y, 2, folds=self.folds, C=C, seed=self.random_state, fit=_binary_head)
                    oof_logits.append(z[:, 1] - z[:, 0])
            if oof is None:
                continue
            rows = np.flatnonzero(mask) if n_cross_fit_splits(y, self.folds) else np.array([], dtype=np.int64)
            if len(rows) >= max(self.min_calibration_labels, 1) and 0 < y[rows].sum() < len(rows):
                self.n_calibration_[j] = len(rows)
                if self.calibration_method == "temperature":
                    two_class = [np.stack([np.zeros(len(rows)), z[rows]], axis=1) for z in oof_logits]
                    for h, t in enumerate(averaged_temperatures(two_class, y[rows], prior_sd=self.prior_sd)):
                        temps[h][j] = t
                else:
                    served = logit(np.mean([sigmoid(z[rows]) for z in oof_logits], axis=0))
                    scaler = PlattScaler(prior_sd=self.prior_sd).fit(served, y[rows])
                    self.platt_a_[j], self.platt_b_[j] = scaler.a_, scaler.b_
            oof[:, j] = self._combine([z[:, None] for z in oof_logits], [t[j:j + 1] for t in temps],
                                      self.platt_a_[j:j + 1], self.platt_b_[j:j + 1])[:, 0]
        self.coef_, self.intercept_, self.temperature_ = heads[0], biases[0], temps[0]
        self.lex_coef_, self.lex_intercept_, self.lex_temperature_ = (
            (heads[1], biases[1], temps[1]) if lexical else (None, None, None))
        self.oof_proba_ = oof
        self.thresholds_ = self._threshold_array(self.thresholds)
        return self

    def _threshold_array(self, thresholds: float | Mapping[str, float]) -> np.ndarray:
        labels = self.classes_.tolist()
        if isinstance(thresholds, Mapping):
            unknown = sorted(set(map(str, thresholds)) - set(labels))
            if unknown:
                raise ValueError(f"thresholds for labels the model lacks: {unknown}; known: {labels}")
            out = np.array([float(thresholds.get(label, 0.5)) for label in labels])
        else:
            out = np.full(len(labels), float(thresholds))
        if not ((out > 0) & (out <= 1)).all():
            raise ValueError(f"thresholds must lie in (0, 1], got {out.tolist()}")
        return out

    def set_thresholds(self, thresholds: float | Mapping[str, float]) -> MultiLabelClassifier:
        """Replace the per-label thresholds (one for all, or label -> threshold, others 0.5)."""
        self.thresholds_ = self._threshold_array(thresholds)
        return self

    # -- saving and loading -------------------------------------------------------------------

    def state(self) -> MultiLabelState:
        """The fitted state, for :func:`save_multilabel`."""
        params = {k: (list(v) if k == "classes" and v is not None else dict(v) if isinstance(v, Mapping) else v)
                  for k, v in self.get_params().items() if k != "encoder"}
        return MultiLabelState(self.classes_.tolist(), self.coef_, self.intercept_, np.asarray(self.temperature_),
                               self.platt_a_, self.platt_b_, self.thresholds_, self.lexical_, self.lex_coef_,
                               self.lex_intercept_, self.lex_temperature_, self.n_positive_, params)

    @classmethod
    def from_state(cls, state: MultiLabelState, encoder: TextEncoder | None = None) -> MultiLabelClassifier:
        """A fitted classifier from a saved state (rows reordered so that ``classes_`` is sorted)."""
        known = set(inspect.signature(cls.__init__).parameters) - {"self", "encoder"}
        self = cls(encoder, **{k: v for k, v in state.hyperparameters.items() if k in known})
        if state.lexical is not None:
            self.features = "embeddings+tfidf"
        order = np.argsort(np.array(state.labels), kind="stable")
        self.classes_ = np.array(state.labels)[order]
        self.coef_, self.intercept_ = np.asarray(state.coef)[order], np.asarray(state.intercept)[order]
        self.temperature_ = np.asarray(state.temperature, dtype=np.float64)[order]
        self.platt_a_ = np.asarray(state.platt_a, dtype=np.float64)[order]
        self.platt_b_ = np.asarray(state.platt_b, dtype=np.float64)[order]
        self.thresholds_ = np.asarray(state.thresholds, dtype=np.float64)[order]
        self.lexical_ = state.lexical
        self.lex_coef_ = None if state.lex_coef is None else np.asarray(state.lex_coef)[order]
        self.lex_intercept_ = None if state.lex_intercept is None else np.asarray(state.lex_intercept)[order]
        self.lex_temperature_ = (None if state.lex_temperature is None
                                 else np.asarray(state.lex_temperature, dtype=np.float64)[order])
        self.n_positive_ = None if state.n_positive is None else np.asarray(state.n_positive)[order]
        self.n_calibration_, self.oof_proba_ = None, None
        return self

    # -- inference ----------------------------------------------------------------------------

    @staticmethod
    def _combine(logits: list[np.ndarray], temperatures: list[np.ndarray], a: np.ndarray,
                 b: np.ndarray) -> np.ndarray:
        """The served probability: the heads' tempered sigmoids averaged, then the Platt map."""
        p = np.mean([sigmoid(z / t) for z, t in zip(logits, temperatures)], axis=0)
        if np.all(a == 1.0) and np.all(b == 0.0):
            return p
        return sigmoid(a * logit(p) + b)

    def logits_from_embeddings(self, x: np.ndarray) -> np.ndarray:
        """The embedding heads' logits ``(n, k)`` (before calibration)."""
        return np.asarray(x, dtype=np.float64) @ np.asarray(self.coef_, dtype=np.float64).T + self.intercept_

    def predict_proba(self, texts: Sequence[str], *, calibrated: bool = True) -> np.ndarray:
        """``(n, k)`` independent label probabilities, columns in ``classes_`` order."""
        texts = list(texts)
        return self.predict_proba_from_embeddings(self._encoder().encode(texts), texts=texts, calibrated=calibrated)

    def predict_proba_from_embeddings(self, x: np.ndarray, *, texts: Sequence[str] | None = None,
                                      calibrated: bool = True) -> np.ndarray:
        """``(n, k)`` independent label probabilities; a model with word features also needs ``texts``."""
        logits = [self.logits_from_embeddings(x)]
        temps = [self.temperature_]
        if self.lexical_ is not None:
            if texts is None:
                raise ValueError("this model also reads the words: pass texts= with the embeddings")
            logits.append(np.asarray(self.lexical_.transform(list(texts)) @ self.lex_coef_.T) + self.lex_intercept_)
            temps.append(self.lex_temperature_)
        if not calibrated:
            k = len(self.classes_)
            return self._combine(logits, [np.ones(k)] * len(logits), np.ones(k), np.zeros(k))
        return self._combine(logits, temps, self.platt_a_, self.platt_b_)

    def decide(self, probs: np.ndarray) -> list[list[str]]:
        """The labels each row chooses: those whose probability reaches their threshold."""
        chosen = np.asarray(probs) >= self.thresholds_
        return [self.classes_[row].tolist() for row in chosen]

    def predict(self, texts: Sequence[str]) -> list[list[str]]:
        return self.decide(self.predict_proba(texts))

    def task_score(self, probs: np.ndarray) -> np.ndarray:
        """Per row, the confidence of its least confident label decision (``min_l max(p, 1 - p)`` at
        thresholds 0.5): an item may be auto-accepted only when every label is decided surely. It
        bounds from above the chance that the whole set is right (:meth:`set_confidence`)."""
        return least_confident_label(probs, self.thresholds_)

    def set_confidence(self, probs: np.ndarray) -> np.ndarray:
        """Per row, the chance that every label decision is right, were the labels independent (the
        product of the decisions' confidences): calibrated for the whole set when each label is."""
        return label_set_confidence(probs, self.thresholds_)


# -- the state on disk --------------------------------------------------------------------------

def save_multilabel(state: MultiLabelState, directory: str | Path) -> Path:
    """Write ``state`` into ``directory`` (created; a directory of its own, e.g. one per control of a
    model version): ``multilabel.safetensors`` (the arrays; ``idf`` too with word features),
    ``multilabel.json`` (labels, hyperparameters, which arrays are there) and, with word features,
    ``lexical.json`` (the vocabulary). Returns the directory."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    def f32(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=np.float32)

    def f64(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=np.float64)

    tensors = {"coef": f32(state.coef), "intercept": f32(state.intercept), "temperature": f64(state.temperature),
               "platt_a": f64(state.platt_a), "platt_b": f64(state.platt_b), "thresholds": f64(state.thresholds)}
    if state.n_positive is not None:
        tensors["n_positive"] = np.ascontiguousarray(state.n_positive, dtype=np.int64)
    if state.lexical is not None:
        tensors |= state.lexical.save(directory)
        tensors |= {"lex_coef": f32(state.lex_coef), "lex_intercept": f32(state.lex_intercept),
                    "lex_temperature": f64(state.lex_temperature)}
    save_file(tensors, str(directory / STATE_TENSORS))
    meta = {"kind": "multilabel", "labels": list(state.labels), "hyperparameters": state.hyperparameters,
            "lexical": state.lexical is not None}
    (directory / STATE_META).write_text(json.dumps(meta, indent=2))
    return directory


def load_multilabel(directory: str | Path) -> MultiLabelState:
    """Read what :func:`save_multilabel` wrote; ``MultiLabelClassifier.from_state(state, encoder)``
    serves it. Raises ``ValueError`` when the arrays do not fit the labels."""
    from safetensors.numpy import load_file

    directory = Path(directory)
    meta = json.loads((directory / STATE_META).read_text())
    t = load_file(str(directory / STATE_TENSORS))
    k = len(meta["labels"])
    for name in ("intercept", "temperature", "platt_a", "platt_b", "thresholds"):
        if t[name].shape != (k,):
            raise ValueError(f"{directory}: {name} has shape {t[name].shape}, expected ({k},) for {k} labels")
    if t["coef"].ndim != 2 or t["coef"].shape[0] != k:
        raise ValueError(f"{directory}: coef has shape {t['coef'].shape}, expected ({k}, d)")
    lexical = None
    if meta.get("lexical"):
        from connector.lexical import LexicalFeatures

        lexical = LexicalFeatures.load(directory, t["idf"])
    return MultiLabelState(list(meta["labels"]), t["coef"], t["intercept"], t["temperature"], t["platt_a"],
                           t["platt_b"], t["thresholds"], lexical, t.get("lex_coef"), t.get("lex_intercept"),
                           t.get("lex_temperature"), t.get("n_positive"), dict(meta.get("hyperparameters", {})))
