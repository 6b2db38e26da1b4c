"""Retrain on human labels, recalibrate, and promote only a better model.

The candidate is a new linear head on the frozen encoder. Human labels are split by a hash of the
item's external id, so an item stays on the same side across retrainings: ``test_fraction`` of
them is the held-out set both the candidate and the current model are scored on, and is never
trained on. The candidate is a :class:`TextClassifier` fitted by its ``cross_fit`` recipe: its
temperature is fitted on out-of-fold logits of the training labels (``folds``-fold cross-fitting:
every training label is a held-out label once), its head on all of them; the out-of-fold
probabilities (``oof_proba_``) also serve the promotion comparison and the threshold evidence.
Embeddings are cached in the state store by content hash, so a retraining encodes only texts it
has not seen.

Which labels the temperature is fitted on (``RetrainPolicy.calibration_labels``): by default only
those of items drawn at random (``calibrate_on``: the seed set and the router's audits), since a
temperature fitted on the labels an active learner picked (the hardest items, near the boundary)
flattens the model for the items it will score. The temperatures are shrunk towards 1 by a prior
on ``log T`` (``temperature_prior_sd``): a few such labels move them little. Until
``min_calibration_labels`` such labels are in the training part they stay 1.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from connector.calibration import expected_calibration_error, log_loss
from connector.classifier import TextClassifier
from connector.encoder import TextEncoder
from connector.model_store import ModelStore

log = logging.getLogger(__name__)

LOWER_IS_BETTER = {"log_loss": True, "ece": True, "accuracy": False, "macro_f1": False}


class RetrainPolicy(BaseModel):
    """When to retrain and what counts as better (the task file's ``[retraining]`` table).

    - ``min_new_labels``: settled human labels added since the last retraining that trigger one.
    - ``test_fraction``: share of human labels held out (by hash of the external id), never
      trained on. The candidate is compared with the current model on the held-out labels and on
      every label that arrived after the current model was trained (the candidate's out-of-fold
      predictions there); ``min_test``: fewer such labels than this and nothing is promoted.
    - ``folds``: cross-fitting folds for the temperature.
    - ``calibration_labels``: the labels the temperature is fitted on: ``random`` (the default)
      only those of items drawn at random (the seed set and the audits), which represent the items
      the model scores; ``all``: every training label (biased towards the hardest items when a
      strategy picks). ``min_calibration_labels``: fewer such training labels and the temperature
      stays 1. ``temperature_prior_sd``: the SD of a Gaussian prior on ``log T`` centred on 1 (the
      fewer the labels, the closer to 1 the temperature); ``None``: maximum likelihood.
    - ``metric`` / ``min_improvement``: the candidate must beat the current model on ``metric`` by
      at least this much, and ``max_accuracy_drop``: may not lose more accuracy than this;
      ``accuracy_drop_alpha`` (off by default): a larger drop refuses it only when a paired exact
      test on the labels the two models disagree on finds the drop at this level.
    - ``include_auto_accepted``: also train on the model's own auto-accepted labels (off by default).
    - ``C``: the head's inverse L2 strength.
    - ``features``: ``embeddings+tfidf`` adds a word-feature head (TF-IDF fitted on every text of
      the project, logistic regression with ``C_lexical``) whose calibrated probabilities are
      averaged with the embedding head's: for long documents and topic-like labels.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_new_labels: int = Field(50, ge=1)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    min_test: int = Field(10, ge=1)
    folds: int = Field(5, ge=2)
    calibration_labels: Literal["random", "all"] = "random"
    min_calibration_labels: int = Field(10, ge=1)
    temperature_prior_sd: float | None = Field(1.0, gt=0.0)
    metric: Literal["log_loss", "accuracy", "macro_f1", "ece"] = "log_loss"
    min_improvement: float = Field(0.0, ge=0.0)
    max_accuracy_drop: float = Field(0.0, ge=0.0)
    include_auto_accepted: bool = False
    C: float = Field(10.0, gt=0.0)
    features: Literal["embeddings", "embeddings+tfidf"] = "embeddings"
    C_lexical: float = Field(100.0, gt=0.0)
    accuracy_drop_alpha: float | None = Field(
        None, gt=0.0, lt=1.0, description="when set, an accuracy drop beyond max_accuracy_drop refuses the candidate "
        "only if a one-sided exact test on the labels the two models disagree on (McNemar) finds it at this level")


def in_test_split(external_id: str, fraction: float) -> bool:
    """Whether an item is held out: a stable hash of its external id, not a random draw."""
    h = int.from_bytes(hashlib.sha256(external_id.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def evaluate(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1, ECE (15 bins) and log loss of probabilities against class codes."""
    from sklearn.metrics import f1_score

    pred = probs.argmax(axis=1)
    return {"accuracy": float((pred == y).mean()),
            "macro_f1": float(f1_score(y, pred, average="macro", labels=np.arange(probs.shape[1]), zero_division=0)),
            "ece": expected_calibration_error(probs, y), "log_loss": log_loss(probs, y), "n": len(y)}


def is_better(candidate: dict[str, float], current: dict[str, float] | None, policy: RetrainPolicy,
              discordant: tuple[int, int] | None = None) -> tuple[bool, str]:
    """The promotion rule; returns ``(promote, why)`` in words. ``discordant``: labels only the
    candidate got right, and only the current model got right (for ``accuracy_drop_alpha``)."""
    if current is None:
        return True, "no current model to compare with"
    m = policy.metric
    gain = current[m] - candidate[m] if LOWER_IS_BETTER[m] else candidate[m] - current[m]
    drop = current["accuracy"] - candidate["accuracy"]
    if gain <= 0 or gain < policy.min_improvement:
        return False, f"{m} {candidate[m]:.4f} vs current {current[m]:.4f}: not better"
    if drop > policy.max_accuracy_drop:
        why = f"accuracy {candidate['accuracy']:.4f} vs current {current['accuracy']:.4f}: drops {drop:.4f}"
        if policy.accuracy_drop_alpha is None or discordant is None:
            return False, why
        from scipy.stats import binom

        only_candidate, only_current = discordant
        p = float(binom.sf(only_current - 1, only_candidate + only_current, 0.5)) if only_current else 1.0
        if p < policy.accuracy_drop_alpha:
            return False, f"{why} (paired test p = {p:.3g})"
        return True, (f"{m} {candidate[m]:.4f} vs current {current[m]:.4f} (better by {gain:.4f}); the accuracy "
                      f"drop of {drop:.4f} is within noise (paired test on {only_candidate + only_current} "
                      f"disagreements, p = {p:.3g})")
    return True, f"{m} {candidate[m]:.4f} vs current {current[m]:.4f} (better by {gain:.4f})"


class EmbeddingCache:
    """A frozen encoder's embeddings, cached in the state store by content hash."""

    def __init__(self, store: Any, encoder: TextEncoder, key: str) -> None:
        self.store, self.encoder, self.key = store, encoder, key

    def encode(self, texts: Sequence[str], hashes: Sequence[str]) -> tuple[np.ndarray, int]:
        """Vectors for ``texts`` and how many were encoded (not found in the cache)."""
        found = self.store.embeddings.get(self.key, hashes)
        missing = [i for i, h in enumerate(hashes) if h not in found]
        if missing:
            x = self.encoder.encode([texts[i] for i in missing]).astype(np.float32)
            new = {hashes[i]: x[j].tobytes() for j, i in enumerate(missing)}
            self.store.embeddings.put(self.key, new)
            found.update(new)
        dim = self.encoder.dim
        out = np.empty((len(texts), dim), dtype=np.float32)
        for i, h in enumerate(hashes):
            out[i] = np.frombuffer(found[h], dtype=np.float32, count=dim)
        return out, len(missing)


def encoder_key(encoder_meta: dict[str, Any]) -> str:
    """The cache key of an encoder: which weights, how many tokens, whether normalized (and chunked)."""
    key = f"{encoder_meta.get('model', 'default')}|{encoder_meta.get('max_length')}|{encoder_meta.get('normalize', True)}"
    return key + ("|chunk" if encoder_meta.get("chunk") else "")


@dataclass
class RetrainResult:
    """What one retraining did: the candidate version (saved whether promoted or not), both
    models' held-out metrics, the decision and its reason, and honest predictions for the
    threshold rule (``evidence``: held-out and out-of-fold confidence/correctness, with each
    item's external id)."""

    candidate: str | None
    current: str | None
    promoted: bool
    reason: str
    n_train: int
    n_test: int
    encoded: int
    candidate_metrics: dict[str, float] = field(default_factory=dict)
    current_metrics: dict[str, float] | None = None
    evidence: dict[str, list] = field(default_factory=dict)
    reliability: dict[str, Any] = field(default_factory=dict)
    stop_predictions: list[int] | None = None  # the candidate's labels of the stop set (indices into classes)
    stop_encoded: int = 0  # stop-set texts not found in the embedding cache

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def retrain(texts: Sequence[str], labels: Sequence[str], external_ids: Sequence[str], hashes: Sequence[str], *,
            classes: Sequence[str], models: ModelStore, cache_store: Any, policy: RetrainPolicy,
            encoder: TextEncoder | None = None, seed: int = 0, corpus: Sequence[str] | None = None,
            calibrate_on: Sequence[bool] | None = None,
            transform_labels: Callable[[list[str]], list[str]] | None = None,
            stop_set: tuple[Sequence[str], Sequence[str]] | None = None) -> RetrainResult:
    """Train a candidate on ``labels`` (human labels, one per item), compare it with the current
    model on the held-out split, save it as a new version and promote it only if it is better.

    ``corpus``: every text of the project, for the word features' vocabulary (default: ``texts``).
    ``calibrate_on``: which labels belong to items drawn at random (a mask over ``labels``); with
    ``policy.calibration_labels == "random"`` the temperature is fitted on those of the training
    part only (none given: no label is drawn at random, the temperature stays 1).
    ``transform_labels`` changes the training labels only (the tests use it to shuffle them).
    ``stop_set``: texts and content hashes of the stopping rule's stop set (:mod:`connector.stopping`):
    the candidate, promoted or not, predicts them (``stop_predictions``), embedded through the same
    cache.
    """
    current_name = models.current()
    current_clf = None
    if current_name is not None:
        current_clf, current_meta = models.load(current_name, encoder=encoder)
        encoder = current_clf.encoder
        enc_meta = current_meta.encoder
    else:
        encoder = encoder or TextEncoder()
        enc_meta = {"model": "default", "max_length": encoder.max_length, "normalize": encoder.normalize,
                    "chunk": bool(getattr(encoder, "chunk", False))}
    classes = list(classes)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({lb for lb in labels if lb not in index})
    if unknown:
        raise ValueError(f"labels not in the task's label set: {unknown}")
    cache = EmbeddingCache(cache_store, encoder, encoder_key(enc_meta))
    x, encoded = cache.encode(list(texts), list(hashes))
    y = np.array([index[lb] for lb in labels], dtype=np.int64)
    test = np.array([in_test_split(e, policy.test_fraction) for e in external_ids], dtype=bool)
    train = ~test
    y_train = y[train]
    if transform_labels is not None:
        y_train = np.array([index[lb] for lb in transform_labels([classes[c] for c in y_train])], dtype=np.int64)
    base = RetrainResult(None, current_name, False, "", int(train.sum()), int(test.sum()), encoded)
    if len(np.unique(y_train)) < 2:
        base.reason = f"need training labels of at least two classes, have {len(np.unique(y_train))}"
        return base
    k = len(classes)
    random = np.zeros(len(y), dtype=bool) if calibrate_on is None else np.asarray(calibrate_on, dtype=bool)
    if random.shape != y.shape:
        raise ValueError(f"calibrate_on has {random.size} entries for {len(y)} labels")
    clf = TextClassifier(encoder, features=policy.features, classes=classes, C=policy.C, C_lexical=policy.C_lexical,
                         calibration="cross_fit", folds=policy.folds,
                         min_calibration_labels=policy.min_calibration_labels,
                         temperature_prior_sd=policy.temperature_prior_sd, random_state=seed)
    train_texts = [t for t, held in zip(texts, test) if not held]
    clf.fit_embeddings(x[train], [classes[c] for c in y_train], texts=train_texts,
                       corpus=list(corpus) if corpus else list(texts),
                       calibrate_on=random[train] if policy.calibration_labels == "random" else None)
    oof_probs = _reordered(clf.oof_proba_, clf.classes_.tolist(), classes)  # the task's label order, as y
    test_texts = [t for t, held in zip(texts, test) if held]

    candidate_metrics: dict[str, float] = {}
    current_metrics: dict[str, float] | None = None
    reliability: dict[str, Any] = {}
    if test.sum():
        raw = _aligned(clf, x[test], classes, test_texts, calibrated=False)
        cal = _aligned(clf, x[test], classes, test_texts)
        candidate_metrics = evaluate(cal, y[test]) | {"ece_uncalibrated": expected_calibration_error(raw, y[test])}
        reliability = {"y": y[test].tolist(), "uncalibrated": raw.tolist(), "calibrated": cal.tolist()}
        if current_clf is not None:
            current_metrics = evaluate(_aligned(current_clf, x[test], classes, test_texts), y[test])
    ext = np.asarray(external_ids, dtype=object)
    compared: dict[str, Any] = {}
    if current_clf is None:
        promote, reason = True, "the first model: nothing to compare with"
    else:
        compared = _comparison(cal if test.sum() else np.zeros((0, k)), current_clf, x, texts, y, test, train,
                               oof_probs if clf.n_folds_ else None, models.trained_on(current_name), ext, classes)
        if compared["n"] < policy.min_test:
            promote, reason = False, (f"{compared['n']} labels neither model trained on, fewer than "
                                      f"min_test={policy.min_test}")
        else:
            promote, reason = is_better(compared["candidate"], compared["current"], policy,
                                        discordant=tuple(compared["discordant"]))
            reason += (f" on {compared['n']} labels neither model trained on ({compared['held_out']} held out, "
                       f"{compared['new']} new since {current_name}, out-of-fold)")
    metrics = {"held_out": candidate_metrics, "current_held_out": current_metrics, "current": current_name,
               "n_train": int(train.sum()), "n_test": int(test.sum()), "promoted": promote, "decision": reason,
               "compared": compared, "temperature_fit": _temperature_fit(clf, policy, int(random[train].sum())),
               "calibration_labels": clf.n_calibration_}
    meta = models.save(clf, metrics=metrics, encoder_ref=enc_meta.get("model"), parent=current_name, promote=promote,
                       trained_on=ext[train].tolist())
    served = clf if promote else current_clf
    evidence: dict[str, list] = {"confidence": [], "correct": [], "external_id": []}
    if served is not None:
        held = _aligned(served, x[test], classes, test_texts) if test.sum() else np.zeros((0, k))
        conf, correct = held.max(axis=1).tolist(), (held.argmax(axis=1) == y[test]).tolist()
        ids = ext[test].tolist()
        if promote:  # the candidate's out-of-fold predictions are honest for its own training labels
            conf += oof_probs.max(axis=1).tolist()
            correct += (oof_probs.argmax(axis=1) == y_train).tolist()
            ids += ext[train].tolist()
        evidence = {"confidence": conf, "correct": [float(c) for c in correct], "external_id": ids}
    log.info("retrained %s on %d labels (%d held out): %s", meta.version, int(train.sum()), int(test.sum()), reason)
    stop_predictions, stop_encoded = None, 0
    if stop_set is not None and len(stop_set[0]):
        xs, stop_encoded = cache.encode(list(stop_set[0]), list(stop_set[1]))
        stop_predictions = _aligned(clf, xs, classes, list(stop_set[0])).argmax(axis=1).tolist()
    return RetrainResult(meta.version, current_name, promote, reason, int(train.sum()), int(test.sum()), encoded,
                         candidate_metrics, current_metrics, evidence, reliability, stop_predictions, stop_encoded)


def _temperature_fit(clf: TextClassifier, policy: RetrainPolicy, n_random: int) -> str:
    """What the candidate's temperature was fitted on, in words (kept with the version)."""
    which = "labels drawn at random" if policy.calibration_labels == "random" else "training labels"
    if clf.n_calibration_:
        prior = f", log T shrunk by a N(0, {policy.temperature_prior_sd:g}²) prior" if policy.temperature_prior_sd else ""
        return f"cross-fitted out-of-fold logits of {clf.n_calibration_} {which}{prior}"
    if not clf.n_folds_:
        return "none (temperature 1): a class has a single training label"
    have = n_random if policy.calibration_labels == "random" else len(clf.oof_proba_)
    return (f"none (temperature 1): {have} {which} in the training part, fewer than "
            f"min_calibration_labels={policy.min_calibration_labels}")


def _comparison(held_probs: np.ndarray, current: TextClassifier, x: np.ndarray, texts: Sequence[str],
                y: np.ndarray, test: np.ndarray, train: np.ndarray, oof_probs: np.ndarray | None,
                seen: set[str] | None, ext: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Candidate and current model scored on every label neither was trained on: the held-out
    slice (the candidate's own predictions) and the training labels that arrived after the current
    model was trained (the candidate's out-of-fold predictions, from models fitted on part of its
    data: a handicap that only makes promotion harder). With uncertainty sampling the held-out
    slice alone is a few dozen of the hardest items, too few to tell two models apart."""
    rows = np.flatnonzero(train)
    fresh = rows[[e not in seen for e in ext[rows]]] if seen is not None and oof_probs is not None else rows[:0]
    held = np.flatnonzero(test)
    cand = [held_probs]  # the candidate's calibrated predictions on the held-out slice, computed once above
    if len(fresh):
        cand.append(oof_probs[np.searchsorted(rows, fresh)])
    both = np.concatenate([held, fresh])
    if not len(both):
        return {"n": 0, "held_out": 0, "new": 0}
    cur = _aligned(current, x[both], classes, [texts[i] for i in both])
    cand_p = np.concatenate(cand)
    cand_ok, cur_ok = cand_p.argmax(axis=1) == y[both], cur.argmax(axis=1) == y[both]
    return {"n": len(both), "held_out": len(held), "new": len(fresh),
            "candidate": evaluate(cand_p, y[both]), "current": evaluate(cur, y[both]),
            "discordant": [int((cand_ok & ~cur_ok).sum()), int((~cand_ok & cur_ok).sum())]}


def _aligned(clf: TextClassifier, x: np.ndarray, classes: list[str], texts: Sequence[str], *,
             calibrated: bool = True) -> np.ndarray:
    """A model's probabilities with columns in ``classes`` order (0 for labels it lacks)."""
    return _reordered(clf.predict_proba_from_embeddings(x, texts=texts, calibrated=calibrated), clf.classes_.tolist(),
                      classes)


def _reordered(p: np.ndarray, own: list[str], classes: list[str]) -> np.ndarray:
    """Columns of ``p`` (in ``own`` order) rearranged into ``classes`` order (0 for labels ``own`` lacks)."""
    out = np.zeros((len(p), len(classes)))
    index = {c: i for i, c in enumerate(own)}
    for j, c in enumerate(classes):
        if c in index:
            out[:, j] = p[:, index[c]]
    return out
