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

Fine-tuned candidates (``RetrainPolicy.finetune``, :class:`FinetunePolicy`): besides the head on the
frozen encoder, a retraining may fine-tune a copy of the base encoder (:mod:`connector.finetune`):
contrastive (SetFit's first stage) from ``contrastive_from`` training labels, full fine-tuning with a
classification head from ``full_from`` (or on a GPU), within ``budget_s``; not when the frozen
candidate is already accurate (``skip_above_accuracy``). A hashed ``calibration_fraction`` of the
training labels is kept out of the fine-tuning: the new head's temperature is fitted on their
out-of-fold logits and they, with the held-out split, are the labels on which the fine-tuned
candidate is compared with the frozen one (and, when chosen, with the current model): the encoder
never saw them. The chosen candidate is saved with its encoder (``ModelStore.save(encoder_dir=)``),
what was tried and what it cost in the version's metrics (``candidates``, ``choice``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from connector.calibration import expected_calibration_error, log_loss
from connector.classifier import TextClassifier
from connector.encoder import TextEncoder
from connector.model_store import ModelStore, encoder_identity, model_ref, weights_digest

log = logging.getLogger(__name__)

LOWER_IS_BETTER = {"log_loss": True, "ece": True, "accuracy": False, "macro_f1": False}


class FinetunePolicy(BaseModel):
    """When a retraining also tries a fine-tuned encoder (the ``[retraining.finetune]`` table).

    - ``enabled``: try one when the conditions below hold.
    - ``contrastive_from``: training labels from which a contrastive candidate is tried
      (``loss``: see :mod:`connector.finetune`); ``full_from``: from which full fine-tuning with a
      classification head is tried instead (on a GPU, from ``contrastive_from``).
    - ``budget_s``: wall seconds the fine-tuning may take (enforced; the default keeps a retraining
      on 300 labels under 5 minutes on a 2-core CPU); ``epochs``: passes (``None``: the method's
      default); ``max_length``: tokens a text is cut to while training.
    - ``skip_above_accuracy``: no fine-tuning when the frozen candidate's accuracy on its honest
      labels (out-of-fold and held out) is at least this: the encoder is not what limits it.
    - ``calibration_fraction``: training labels (by hash) kept out of the fine-tuning, for the new
      head's temperature and the comparison.
    - ``device``: where to train (``None``: CUDA when available, in bf16 autocast; else CPU).
    - ``refresh_labels``: a retraining fine-tunes again only once this many training labels arrived
      since the last one that did (kept or not); in between, while the current model carries a
      fine-tuned encoder, the other candidate is a new head on it (cached embeddings, seconds).
    - ``max_truncated_share``: no fine-tuning when more of the training texts than this are longer
      than ``max_length`` tokens: the encoder would learn from the first part of documents it embeds
      whole (window by window), and re-embedding long documents after a promotion is the costly
      part (BBC News: about a minute per 2,000 articles on this CPU).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    contrastive_from: int = Field(100, ge=4)
    full_from: int = Field(200, ge=4)
    budget_s: float = Field(180.0, gt=0)
    epochs: float | None = Field(None, gt=0)
    max_length: int = Field(128, ge=8)
    loss: Literal["cosine", "batch_hard", "supcon"] = "supcon"
    skip_above_accuracy: float = Field(0.97, gt=0.0, le=1.0)
    calibration_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    device: str | None = None
    refresh_labels: int = Field(100, ge=1)
    max_truncated_share: float = Field(0.5, ge=0.0, le=1.0)


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
    - ``finetune``: fine-tuned candidates (:class:`FinetunePolicy`).
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
    finetune: FinetunePolicy = FinetunePolicy()


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
    """The cache key of an encoder (:func:`connector.model_store.encoder_identity`)."""
    return encoder_identity(encoder_meta)


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
            stop_set: tuple[Sequence[str], Sequence[str]] | None = None, progress: bool = False) -> RetrainResult:
    """Train a candidate on ``labels`` (human labels, one per item), compare it with the current
    model on the held-out split, save it as a new version and promote it only if it is better.

    ``encoder``: the base (frozen) encoder, reused when given. ``corpus``: every text of the
    project, for the word features' vocabulary (default: ``texts``).
    ``calibrate_on``: which labels belong to items drawn at random (a mask over ``labels``); with
    ``policy.calibration_labels == "random"`` the temperature is fitted on those of the training
    part only (none given: no label is drawn at random, the temperature stays 1).
    ``transform_labels`` changes the training labels only (the tests use it to shuffle them).
    ``stop_set``: texts and content hashes of the stopping rule's stop set (:mod:`connector.stopping`):
    the candidate, promoted or not, predicts them (``stop_predictions``), embedded through the same
    cache. ``progress``: show the fine-tuning's progress bar.
    """
    current_name = models.current()
    current_clf = None
    if current_name is not None:
        current_clf, current_meta = models.load(current_name, encoder=encoder)
        if current_meta.encoder.get("weights"):  # a fine-tuned current model: the base is another encoder
            enc_meta = {k: v for k, v in current_meta.encoder.items() if k not in ("weights", "sha256", "finetune")}
            enc_meta["model"] = current_meta.encoder.get("base", "default")
            encoder = encoder or TextEncoder(None if enc_meta["model"] == "default" else enc_meta["model"],
                                             max_length=enc_meta.get("max_length"),
                                             normalize=enc_meta.get("normalize", True),
                                             chunk=bool(enc_meta.get("chunk", False)))
        else:
            encoder = current_clf.encoder
            enc_meta = current_meta.encoder
    else:
        encoder = encoder or TextEncoder()
        enc_meta = {"model": model_ref(encoder), "max_length": encoder.max_length, "normalize": encoder.normalize,
                    "chunk": bool(getattr(encoder, "chunk", False))}
    classes = list(classes)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({lb for lb in labels if lb not in index})
    if unknown:
        raise ValueError(f"labels not in the task's label set: {unknown}")
    cache = EmbeddingCache(cache_store, encoder, encoder_key(enc_meta))
    x, encoded = cache.encode(list(texts), list(hashes))
    x_current = x
    if current_clf is not None and current_meta.encoder.get("weights"):
        x_current, n = EmbeddingCache(cache_store, current_clf.encoder, encoder_key(current_meta.encoder)).encode(
            list(texts), list(hashes))
        encoded += n
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
    ext = np.asarray(external_ids, dtype=object)
    frozen = _fit_candidate(encoder, x, y_train, train, random, texts, corpus, classes, policy, seed)
    tried = _try_finetune(frozen, encoder, enc_meta, texts, hashes, y, y_train, train, test, random, ext, corpus,
                          classes, models, cache_store, policy, seed, progress,
                          current=(current_clf, current_meta.encoder, x_current)
                          if current_clf is not None and current_meta.encoder.get("weights") else None)
    chosen = tried.chosen
    clf, x_c, oof_probs, honest = chosen.clf, chosen.x, chosen.oof, chosen.honest
    encoded += tried.encoded
    test_texts = [t for t, held in zip(texts, test) if held]

    candidate_metrics: dict[str, float] = {}
    current_metrics: dict[str, float] | None = None
    reliability: dict[str, Any] = {}
    if test.sum():
        raw = _aligned(clf, x_c[test], classes, test_texts, calibrated=False)
        cal = _aligned(clf, x_c[test], classes, test_texts)
        candidate_metrics = evaluate(cal, y[test]) | {"ece_uncalibrated": expected_calibration_error(raw, y[test])}
        reliability = {"y": y[test].tolist(), "uncalibrated": raw.tolist(), "calibrated": cal.tolist()}
        if current_clf is not None:
            current_metrics = evaluate(_aligned(current_clf, x_current[test], classes, test_texts), y[test])
    compared: dict[str, Any] = {}
    if current_clf is None:
        promote, reason = True, "the first model: nothing to compare with"
    else:
        compared = _comparison(cal if test.sum() else np.zeros((0, k)), current_clf, x_current, texts, y, test, train,
                               oof_probs if clf.n_folds_ else None, models.trained_on(current_name), ext, classes,
                               honest=honest)
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
               "compared": compared, "temperature_fit": chosen.temperature_fit or _temperature_fit(
                   clf, policy, int(random[train].sum())),
               "calibration_labels": clf.n_calibration_}
    metrics |= {"candidates": tried.record, "choice": tried.choice}
    try:
        meta = models.save(clf, metrics=metrics, encoder_ref=enc_meta.get("model"), parent=current_name,
                           promote=promote, trained_on=ext[train].tolist(), encoder_dir=chosen.encoder_dir,
                           encoder_info=chosen.encoder_info)
    finally:
        tried.cleanup()
    served = clf if promote else current_clf
    evidence: dict[str, list] = {"confidence": [], "correct": [], "external_id": []}
    if served is not None:
        x_served = x_c if promote else x_current
        held = _aligned(served, x_served[test], classes, test_texts) if test.sum() else np.zeros((0, k))
        conf, correct = held.max(axis=1).tolist(), (held.argmax(axis=1) == y[test]).tolist()
        ids = ext[test].tolist()
        if promote:  # the candidate's out-of-fold predictions are honest for its own training labels
            keep = honest  # (for a fine-tuned one: those the encoder never saw)
            conf += oof_probs[keep].max(axis=1).tolist()
            correct += (oof_probs[keep].argmax(axis=1) == y_train[keep]).tolist()
            ids += ext[train][keep].tolist()
        evidence = {"confidence": conf, "correct": [float(c) for c in correct], "external_id": ids}
    log.info("retrained %s on %d labels (%d held out): %s", meta.version, int(train.sum()), int(test.sum()), reason)
    stop_predictions, stop_encoded = None, 0
    if stop_set is not None and len(stop_set[0]):
        xs, stop_encoded = chosen.cache(cache_store, cache).encode(list(stop_set[0]), list(stop_set[1]))
        stop_predictions = _aligned(clf, xs, classes, list(stop_set[0])).argmax(axis=1).tolist()
    return RetrainResult(meta.version, current_name, promote, reason, int(train.sum()), int(test.sum()), encoded,
                         candidate_metrics, current_metrics, evidence, reliability, stop_predictions, stop_encoded)


@dataclass
class _Candidate:
    """A fitted candidate: its classifier, the embeddings of every label under its encoder, its
    out-of-fold probabilities of the training labels (task label order) and which of those are
    honest (labels its encoder never saw: all of them for the frozen encoder)."""

    clf: TextClassifier
    x: np.ndarray
    oof: np.ndarray
    honest: np.ndarray
    temperature_fit: str | None = None
    encoder_dir: Path | None = None
    encoder_info: dict[str, Any] | None = None
    cache_key: str | None = None

    def cache(self, store: Any, frozen: EmbeddingCache) -> EmbeddingCache:
        """The embedding cache of this candidate's encoder."""
        return frozen if self.cache_key is None else EmbeddingCache(store, self.clf.encoder, self.cache_key)


@dataclass
class _Tried:
    """What a fine-tuning attempt produced: the candidate chosen (frozen or fine-tuned), a record of
    both, the choice in words, and the texts encoded with the new encoder."""

    chosen: _Candidate
    record: dict[str, Any]
    choice: str
    encoded: int = 0
    workdir: Path | None = None

    def cleanup(self) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _fit_candidate(encoder: Any, x: np.ndarray, y_train: np.ndarray, train: np.ndarray, random: np.ndarray,
                   texts: Sequence[str], corpus: Sequence[str] | None, classes: list[str], policy: RetrainPolicy,
                   seed: int, calibrate_on: np.ndarray | None = None) -> _Candidate:
    """A head on ``x`` (cross-fitted temperature), trained on the training part."""
    clf = TextClassifier(encoder, features=policy.features, classes=classes, C=policy.C, C_lexical=policy.C_lexical,
                         calibration="cross_fit", folds=policy.folds,
                         min_calibration_labels=policy.min_calibration_labels,
                         temperature_prior_sd=policy.temperature_prior_sd, random_state=seed)
    train_texts = [t for t, keep in zip(texts, train) if keep]
    if calibrate_on is None:
        calibrate_on = random[train] if policy.calibration_labels == "random" else None
    clf.fit_embeddings(x[train], [classes[c] for c in y_train], texts=train_texts,
                       corpus=list(corpus) if corpus else list(texts), calibrate_on=calibrate_on)
    oof = _reordered(clf.oof_proba_, clf.classes_.tolist(), classes)  # the task's label order, as y
    return _Candidate(clf, x, oof, np.ones(int(train.sum()), dtype=bool))


def _finetune_method(n_train: int, frozen_accuracy: float, encoder: Any, policy: FinetunePolicy,
                     texts: Sequence[str] = ()) -> tuple[str | None, str]:
    """Which fine-tuning to try (``None``: none) and why, in words. ``texts``: the training texts
    (how many are longer than the fine-tuning sees)."""
    if not policy.enabled:
        return None, "fine-tuning disabled"
    if not isinstance(encoder, TextEncoder):
        return None, "the encoder is not a Hugging Face model directory"
    if len(texts):
        ids, _ = encoder.tokenize(list(texts))
        cut = float(np.mean([len(i) > policy.max_length for i in ids]))
        if cut > policy.max_truncated_share:
            return None, (f"{cut:.0%} of the training texts are longer than the {policy.max_length} tokens fine-tuning "
                          f"sees (max_truncated_share={policy.max_truncated_share:g}): long documents keep the frozen "
                          "encoder")
    if frozen_accuracy >= policy.skip_above_accuracy:
        return None, (f"the frozen encoder's head is accurate already ({frozen_accuracy:.3f} >= "
                      f"skip_above_accuracy={policy.skip_above_accuracy:g})")
    on_gpu = (policy.device or str(encoder.device)).startswith("cuda")
    if n_train >= policy.full_from or (on_gpu and n_train >= policy.contrastive_from):
        return "classifier", f"{n_train} training labels{' on a GPU' if on_gpu else ''}: full fine-tuning"
    if n_train >= policy.contrastive_from:
        return "contrastive", f"{n_train} training labels: contrastive fine-tuning"
    return None, f"{n_train} training labels, fewer than contrastive_from={policy.contrastive_from}"


TUNED_ON_FILE = "tuned_on.json"  # in a fine-tuned encoder's directory: the external ids it was tuned on


def _try_finetune(frozen: _Candidate, encoder: Any, enc_meta: dict[str, Any], texts: Sequence[str],
                  hashes: Sequence[str], y: np.ndarray, y_train: np.ndarray, train: np.ndarray, test: np.ndarray,
                  random: np.ndarray, ext: np.ndarray, corpus: Sequence[str] | None, classes: list[str],
                  models: ModelStore, cache_store: Any, policy: RetrainPolicy, seed: int, progress: bool,
                  current: tuple[Any, dict[str, Any], np.ndarray] | None = None) -> _Tried:
    """The encoder side of a retraining. When the current model carries a fine-tuned encoder and
    fewer than ``refresh_labels`` training labels arrived since it was tuned, a head on that encoder
    (its cached embeddings) is the other candidate; else, when :class:`FinetunePolicy` says so, a new
    fine-tuned copy of the base encoder. The other candidate is kept over the frozen one only when
    better on the labels neither's encoder saw (the held-out split and, out-of-fold, the training
    labels kept out of the fine-tuning)."""
    fp = policy.finetune
    rows = np.flatnonzero(train)
    test_texts = [t for t, h in zip(texts, test) if h]
    frozen_probs = np.concatenate([_aligned(frozen.clf, frozen.x[test], classes, test_texts), frozen.oof])
    frozen_y = np.concatenate([y[test], y_train])
    frozen_accuracy = float((frozen_probs.argmax(axis=1) == frozen_y).mean()) if len(frozen_y) else 0.0
    record: dict[str, Any] = {"frozen": {"accuracy_all_honest": round(frozen_accuracy, 4)}}
    tuned_on: set[str] | None = None
    if current is not None:
        path = Path(current[0].encoder.model_path) / TUNED_ON_FILE
        tuned_on = set(json.loads(path.read_text())) if path.exists() else None
    last = _last_finetuning(models)
    if fp.enabled and last is not None and len(rows) - last[1] < fp.refresh_labels:
        method, why = None, (f"{last[0]} fine-tuned on {last[1]} training labels, fewer than "
                             f"refresh_labels={fp.refresh_labels} ago")
    else:
        method, why = _finetune_method(len(rows), frozen_accuracy, encoder, fp, [texts[i] for i in rows])
    if method is None:
        if tuned_on is not None and fp.enabled:  # a new head on the current fine-tuned encoder
            return _reuse_encoder(frozen, current, tuned_on, y, y_train, train, test, random, ext, texts, corpus,
                                  classes, policy, seed, record)
        log.info("no fine-tuned candidate: %s", why)
        return _Tried(frozen, record, f"frozen: {why}")
    cal_part = np.array([in_test_split(e + "#calibration", fp.calibration_fraction) for e in ext[rows]], dtype=bool)
    tune = ~cal_part
    if len(np.unique(y_train[tune])) < 2 or cal_part.sum() < 2:
        return _Tried(frozen, record, "frozen: too few labels of two classes to fine-tune on and calibrate")
    from connector.finetune import FinetuneConfig, finetune

    t0 = time.perf_counter()
    config = FinetuneConfig(method=method, loss=fp.loss, budget_s=fp.budget_s, epochs=fp.epochs,
                            max_length=fp.max_length, seed=seed)
    tuned = finetune([texts[i] for i in rows[tune]], [classes[c] for c in y_train[tune]], config, base=encoder,
                     device=fp.device, progress=progress)
    models.root.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".finetune-", dir=models.root))
    tried = _Tried(frozen, record, "", workdir=workdir)
    try:
        enc_dir = tuned.save(workdir / "encoder")
        (enc_dir / TUNED_ON_FILE).write_text(json.dumps(sorted(ext[rows[tune]].tolist())))
        key = encoder_key(dict(enc_meta) | {"sha256": weights_digest(enc_dir)})
        t1 = time.perf_counter()
        x_ft, tried.encoded = EmbeddingCache(cache_store, tuned.encoder, key).encode(list(texts), list(hashes))
        embed_s = time.perf_counter() - t1
        ft = _head_on(tuned.encoder, x_ft, cal_part, y_train, train, random, texts, corpus, classes, policy, seed,
                      "kept out of the fine-tuning")
        cost = {"method": method, "loss": fp.loss if method == "contrastive" else None, "why": why,
                "finetune": tuned.metadata(), "embed_s": round(embed_s, 3), "embedded": tried.encoded,
                "seconds": round(time.perf_counter() - t0, 3), "device": str(tuned.encoder.device)}
        better, verdict = _versus_frozen(frozen, ft, cal_part, y, y_train, test, test_texts, classes, policy, record,
                                         "finetuned", cost)
        verdict += f"; {tuned.summary()}"
        if better:
            ft.encoder_dir, ft.encoder_info, ft.cache_key = enc_dir, cost, key
            tried.chosen, tried.choice = ft, f"finetuned ({method}): {verdict}"
        else:
            tried.choice = f"frozen: the fine-tuned candidate is not better ({verdict})"
        log.info("fine-tuned candidate: %s", tried.choice)
        return tried
    except BaseException:
        tried.cleanup()
        raise


def _last_finetuning(models: ModelStore) -> tuple[str, int] | None:
    """The newest version whose retraining fine-tuned an encoder (kept or not), and on how many
    training labels: fine-tuning again waits for ``refresh_labels`` more."""
    for version in reversed(models.versions()):
        metrics = models.meta(version).metrics or {}
        if "finetuned" in (metrics.get("candidates") or {}):
            return version, int(metrics.get("n_train") or 0)
    return None


def _head_on(enc: Any, x: np.ndarray, honest: np.ndarray, y_train: np.ndarray, train: np.ndarray,
             random: np.ndarray, texts: Sequence[str], corpus: Sequence[str] | None, classes: list[str],
             policy: RetrainPolicy, seed: int, which: str) -> _Candidate:
    """The loop's head on a tuned encoder's embeddings ``x``, its temperature fitted on the
    out-of-fold logits of the ``honest`` training labels (those the encoder never saw; the ones drawn
    at random among them when there are enough)."""
    honest_random = honest & random[train]
    cal_rows = honest_random if (policy.calibration_labels == "random"
                                 and honest_random.sum() >= policy.min_calibration_labels) else honest
    cand = _fit_candidate(enc, x, y_train, train, random, texts, corpus, classes, policy, seed, calibrate_on=cal_rows)
    cand.honest = honest
    cand.temperature_fit = (f"cross-fitted out-of-fold logits of {cand.clf.n_calibration_} labels {which} "
                            f"({'drawn at random' if cal_rows is honest_random else 'all of them'})")
    return cand


def _versus_frozen(frozen: _Candidate, other: _Candidate, honest: np.ndarray, y: np.ndarray, y_train: np.ndarray,
                   test: np.ndarray, test_texts: list[str], classes: list[str], policy: RetrainPolicy,
                   record: dict[str, Any], name: str, cost: dict[str, Any]) -> tuple[bool, str]:
    """Whether ``other`` beats the frozen candidate on the held-out labels and the training labels
    ``honest`` for it (out-of-fold), on the policy's metric; records both scores."""
    both_y = np.concatenate([y[test], y_train[honest]])
    scores = {}
    for key, cand in (("frozen", frozen), (name, other)):
        probs = np.concatenate([_aligned(cand.clf, cand.x[test], classes, test_texts), cand.oof[honest]])
        scores[key] = evaluate(probs, both_y)
    record["frozen"] |= scores["frozen"]
    record[name] = scores[name] | cost
    record["compared_on"] = len(both_y)
    m = policy.metric
    gain = (scores["frozen"][m] - scores[name][m]) if LOWER_IS_BETTER[m] else (scores[name][m] - scores["frozen"][m])
    return gain > 0, f"{m} {scores[name][m]:.4f} vs frozen {scores['frozen'][m]:.4f} on {len(both_y)} labels its encoder never saw"


def _reuse_encoder(frozen: _Candidate, current: tuple[Any, dict[str, Any], np.ndarray], tuned_on: set[str],
                   y: np.ndarray, y_train: np.ndarray, train: np.ndarray, test: np.ndarray, random: np.ndarray,
                   ext: np.ndarray, texts: Sequence[str], corpus: Sequence[str] | None, classes: list[str],
                   policy: RetrainPolicy, seed: int, record: dict[str, Any]) -> _Tried:
    """A new head on the current model's fine-tuned encoder (no fine-tuning: its embeddings are
    cached), the encoder's files linked into the new version."""
    current_clf, current_encoder_meta, x_current = current
    honest = np.array([e not in tuned_on for e in ext[train]], dtype=bool)
    test_texts = [t for t, h in zip(texts, test) if h]
    if len(np.unique(y_train)) < 2 or honest.sum() < 2:
        return _Tried(frozen, record, "frozen: too few labels the current encoder never saw")
    cand = _head_on(current_clf.encoder, x_current, honest, y_train, train, random, texts, corpus, classes, policy,
                    seed, "the encoder was not tuned on")
    source = Path(current_clf.encoder.model_path)
    cost = {"reused": str(source.parent.name), "finetune": current_encoder_meta.get("finetune", {}),
            "tuned_on": len(tuned_on)}
    better, verdict = _versus_frozen(frozen, cand, honest, y, y_train, test, test_texts, classes, policy, record,
                                     "current_encoder", cost)
    if not better:
        return _Tried(frozen, record, f"frozen: a head on {source.parent.name}'s fine-tuned encoder is not better ({verdict})")
    workdir = Path(tempfile.mkdtemp(prefix=".finetune-", dir=source.parent.parent))
    shutil.copytree(source, workdir / "encoder", copy_function=_link_or_copy)
    cand.encoder_dir = workdir / "encoder"
    cand.encoder_info = current_encoder_meta.get("finetune", {}) | {"reused_from": source.parent.name}
    cand.cache_key = encoder_key(current_encoder_meta)
    return _Tried(cand, record, f"current encoder ({source.parent.name}'s, {len(tuned_on)} labels tuned on): {verdict}",
                  workdir=workdir)


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link where the filesystem allows (a version's encoder weights are never written in place)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


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
                seen: set[str] | None, ext: np.ndarray, classes: list[str],
                honest: np.ndarray | None = None) -> dict[str, Any]:
    """Candidate and current model scored on every label neither was trained on: the held-out
    slice (the candidate's own predictions) and the training labels that arrived after the current
    model was trained (the candidate's out-of-fold predictions, from models fitted on part of its
    data: a handicap that only makes promotion harder). With uncertainty sampling the held-out
    slice alone is a few dozen of the hardest items, too few to tell two models apart. ``honest``
    (over the training rows): which of the candidate's out-of-fold predictions count (a fine-tuned
    encoder saw the rest)."""
    rows = np.flatnonzero(train)
    ok = np.ones(len(rows), dtype=bool) if honest is None else honest
    fresh = rows[[(e not in seen) and h for e, h in zip(ext[rows], ok)]] \
        if seen is not None and oof_probs is not None else rows[:0]
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
