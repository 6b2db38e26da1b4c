"""Retrain a multi-label control on settled human label sets, and promote only a better model.

The recipe is :func:`connector.retraining.retrain`'s, label by label: the items are split by a hash
of their external id (``test_fraction`` held out, never trained on); the candidate is a
:class:`~connector.multilabel.MultiLabelClassifier` on the frozen encoder's cached embeddings, each
label calibrated on out-of-fold logits of the labels of items drawn at random (``calibrate_on``,
with ``calibration_labels = "random"``); candidate and current version are scored on the held-out
sets and promoted by the task's ``RetrainPolicy`` (:func:`connector.retraining.is_better`), with
the set metrics below under the names it reads:

- ``log_loss``: the mean over labels of each label's binary log loss;
- ``accuracy``: exact match (the whole set right);
- ``macro_f1``: the mean over labels of each label's F1;
- ``ece``: the mean over labels of each label's ECE (:func:`connector.calibration.per_label_ece`).

No fine-tuned candidate is tried for a label set. The threshold's evidence is each honest
prediction's task score (the least confident label decision), each label's decision confidence
(what the per-label thresholds of :mod:`connector.thresholds_sets` are chosen on) and whether its
whole set was right.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from connector.calibration import per_label_ece
from connector.control_models import LoadedModel, load_version, save_multilabel_version
from connector.encoder import TextEncoder
from connector.model_store import ModelStore, model_ref
from connector.multilabel import MultiLabelClassifier, label_matrix
from connector.retraining import (
    EmbeddingCache,
    RetrainPolicy,
    RetrainResult,
    encoder_key,
    in_test_split,
    is_better,
)
from connector.uncertainty import label_decision_confidence, least_confident_label

log = logging.getLogger(__name__)

_EPS = 1e-12


def evaluate_sets(probs: np.ndarray, Y: np.ndarray, thresholds: np.ndarray | float = 0.5) -> dict[str, float]:
    """Set metrics of independent label probabilities ``probs`` (n, k) against 0/1 ``Y`` (n, k):
    ``accuracy`` (exact match), ``hamming`` (share of label decisions right), ``micro_f1``,
    ``macro_f1`` (mean per-label F1; a label never chosen nor present counts 1), ``log_loss`` (mean
    per-label binary log loss), ``ece`` (mean per-label ECE) and ``n``."""
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    Y = np.asarray(Y, dtype=np.int64)
    if p.shape != Y.shape:
        raise ValueError(f"probs {p.shape} and Y {Y.shape} differ")
    if not len(Y):
        return {"n": 0}
    chosen = p >= np.asarray(thresholds, dtype=np.float64)
    truth = Y.astype(bool)
    tp, fp, fn = (chosen & truth).sum(axis=0), (chosen & ~truth).sum(axis=0), (~chosen & truth).sum(axis=0)
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)
    total = 2 * tp.sum() + fp.sum() + fn.sum()
    micro = 2 * tp.sum() / total if total else 1.0
    ll = -(Y * np.log(p) + (1 - Y) * np.log(1 - p)).mean(axis=0)
    return {"accuracy": float((chosen == truth).all(axis=1).mean()), "hamming": float((chosen == truth).mean()),
            "micro_f1": float(micro), "macro_f1": float(f1.mean()), "log_loss": float(ll.mean()),
            "ece": float(per_label_ece(p, Y).mean()), "n": len(Y)}


def retrain_label_sets(texts: Sequence[str], label_sets: Sequence[Sequence[str]], external_ids: Sequence[str],
                       hashes: Sequence[str], *, classes: Sequence[str], models: ModelStore, cache_store: Any,
                       policy: RetrainPolicy, encoder: TextEncoder | None = None, seed: int = 0,
                       corpus: Sequence[str] | None = None,
                       calibrate_on: Sequence[bool] | None = None,
                       stop_set: tuple[Sequence[str], Sequence[str]] | None = None) -> RetrainResult:
    """Train a multi-label candidate on ``label_sets`` (one list of labels per item, possibly empty),
    compare it with the current version of ``models`` on the held-out sets, save it as a new
    ``multi`` version and promote it only if it is better (see the module). ``stop_set``: texts and
    content hashes of the stopping rule's stop set; the candidate, promoted or not, decides each of
    their labels (``stop_predictions``: 0/1 per label, row after row, columns in ``classes`` order)."""
    current_name = models.current()
    current: LoadedModel | None = None
    if current_name is not None:
        current = load_version(models, current_name, encoder=encoder)
        if current.kind != "multi":
            raise ValueError(f"{models.root}: the current version {current_name} is a {current.kind!r} model, "
                             "not a multi-label one")
        encoder = current.encoder
        enc_meta = current.meta.encoder
    else:
        encoder = encoder or TextEncoder()
        enc_meta = {"model": model_ref(encoder), "max_length": encoder.max_length, "normalize": encoder.normalize,
                    "chunk": bool(getattr(encoder, "chunk", False))}
    classes = list(classes)
    Y = label_matrix(label_sets, classes).astype(np.int64)  # raises on a label outside the task's
    x, encoded = EmbeddingCache(cache_store, encoder, encoder_key(enc_meta)).encode(list(texts), list(hashes))
    test = np.array([in_test_split(e, policy.test_fraction) for e in external_ids], dtype=bool)
    train = ~test
    base = RetrainResult(None, current_name, False, "", int(train.sum()), int(test.sum()), encoded)
    learnable = (Y[train].sum(axis=0) > 0) & (Y[train].sum(axis=0) < train.sum())
    if not learnable.any():
        base.reason = "no label has both a yes and a no among the training sets"
        return base
    random = np.zeros(len(Y), dtype=bool) if calibrate_on is None else np.asarray(calibrate_on, dtype=bool)
    if random.shape != (len(Y),):
        raise ValueError(f"calibrate_on has {random.size} entries for {len(Y)} label sets")
    train_texts = [t for t, keep in zip(texts, train) if keep]
    clf = MultiLabelClassifier(encoder, features=policy.features, classes=classes, C=policy.C,
                               C_lexical=policy.C_lexical, folds=policy.folds,
                               min_calibration_labels=policy.min_calibration_labels,
                               prior_sd=policy.temperature_prior_sd, random_state=seed)
    clf.fit_embeddings(x[train], [[c for c, y in zip(classes, row) if y] for row in Y[train]], texts=train_texts,
                       corpus=list(corpus) if corpus else list(texts),
                       calibrate_on=random[train] if policy.calibration_labels == "random" else None)
    test_texts = [t for t, held in zip(texts, test) if held]

    def aligned(model: MultiLabelClassifier, rows: np.ndarray, row_texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        own = [str(c) for c in model.classes_]
        p = model.predict_proba_from_embeddings(x[rows], texts=row_texts)
        idx = {c: j for j, c in enumerate(own)}
        out, thr = np.zeros((len(p), len(classes))), np.full(len(classes), 0.5)
        for j, c in enumerate(classes):
            if c in idx:
                out[:, j], thr[j] = p[:, idx[c]], model.thresholds_[idx[c]]
        return out, thr

    candidate_metrics: dict[str, float] = {}
    current_metrics: dict[str, float] | None = None
    held_p, held_thr = np.zeros((0, len(classes))), np.full(len(classes), 0.5)
    if test.any():
        held_p, held_thr = aligned(clf, test, test_texts)
        candidate_metrics = evaluate_sets(held_p, Y[test], held_thr)
        if current is not None:
            cur_p, cur_thr = aligned(current.model, test, test_texts)
            current_metrics = evaluate_sets(cur_p, Y[test], cur_thr)
    if current is None:
        promote, reason = True, "the first model: nothing to compare with"
    elif int(test.sum()) < policy.min_test:
        promote, reason = False, f"{int(test.sum())} held-out label sets, fewer than min_test={policy.min_test}"
    else:
        promote, reason = is_better(candidate_metrics, current_metrics, policy)
        reason += f" on {int(test.sum())} held-out label sets"
    ext = np.asarray(external_ids, dtype=object)
    metrics = {"held_out": candidate_metrics, "current_held_out": current_metrics, "current": current_name,
               "n_train": int(train.sum()), "n_test": int(test.sum()), "promoted": promote, "decision": reason,
               "calibration_labels": None if clf.n_calibration_ is None else clf.n_calibration_.tolist(),
               "per_label_ece": dict(zip(classes, per_label_ece(held_p, Y[test]).tolist())) if test.any() else {}}
    meta = save_multilabel_version(models, clf, metrics=metrics, encoder_ref=enc_meta.get("model"),
                                   parent=current_name, promote=promote, trained_on=ext[train].tolist())
    evidence: dict[str, list] = {"confidence": [], "correct": [], "external_id": []}
    served = clf if promote else (current.model if current is not None else None)
    if served is not None:
        p, thr = aligned(served, test, test_texts) if test.any() else (held_p, held_thr)
        per_label = label_decision_confidence(p, thr).tolist() if len(p) else []
        conf = least_confident_label(p, thr).tolist() if len(p) else []
        correct = ((p >= thr) == Y[test].astype(bool)).all(axis=1).tolist() if len(p) else []
        ids = ext[test].tolist()
        if promote and clf.oof_proba_ is not None:
            oof, own = clf.oof_proba_, [str(c) for c in clf.classes_]
            order = [own.index(c) for c in classes]
            oof = oof[:, order]
            per_label += label_decision_confidence(oof, clf.thresholds_[order]).tolist()
            conf += least_confident_label(oof, clf.thresholds_[order]).tolist()
            correct += ((oof >= clf.thresholds_[order]) == Y[train].astype(bool)).all(axis=1).tolist()
            ids += ext[train].tolist()
        # each label's decision confidence too: the per-label thresholds are chosen on them
        evidence = {"confidence": conf, "correct": [float(c) for c in correct], "external_id": ids,
                    "labels": list(classes), "label_confidence": per_label}
    stop_predictions, stop_encoded = None, 0
    if stop_set is not None and len(stop_set[0]):
        xs, stop_encoded = EmbeddingCache(cache_store, encoder, encoder_key(enc_meta)).encode(list(stop_set[0]),
                                                                                            list(stop_set[1]))
        own = {str(c): j for j, c in enumerate(clf.classes_)}
        p = clf.predict_proba_from_embeddings(xs, texts=list(stop_set[0]))
        chosen = np.zeros((len(xs), len(classes)), dtype=int)  # a label the candidate lacks: never chosen
        for j, c in enumerate(classes):
            if c in own:
                chosen[:, j] = p[:, own[c]] >= clf.thresholds_[own[c]]
        stop_predictions = chosen.reshape(-1).tolist()
    log.info("retrained label sets %s on %d sets (%d held out): %s", meta.version, int(train.sum()),
             int(test.sum()), reason)
    return RetrainResult(meta.version, current_name, promote, reason, int(train.sum()), int(test.sum()), encoded,
                         candidate_metrics, current_metrics, evidence, stop_predictions=stop_predictions,
                         stop_encoded=stop_encoded)
