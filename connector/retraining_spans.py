"""Retraining of a span control: a :class:`~connector.span_model.SpanTagger` on the settled spans,
saved as a ``spans`` version in the control's model store, promoted when better on held-out labels.

The split is the one every retraining uses (:func:`connector.retraining.in_test_split`, a hash of
the item's external id), so an item stays on the same side across retrainings. The candidate and
the current version are both scored on the held-out texts by span F1 (exact offsets and label,
micro over the control's labels); the candidate is promoted when there is no current version, or
when its F1 is higher. Without held-out texts nothing is promoted over a current version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from connector.control_models import load_version, save_span_version
from connector.model_store import ModelStore
from connector.retraining import RetrainResult, in_test_split
from connector.span_consensus import span_scores
from connector.span_model import SpanTagger
from connector.spans import Span, as_spans


def span_f1(model: Any, texts: Sequence[str], gold: Sequence[Sequence[Span]], labels: Sequence[str]) -> float:
    """Micro span F1 (exact match) of ``model``'s predictions on ``texts`` against ``gold``."""
    if not texts:
        return float("nan")
    pred = [p.spans for p in model.predict(list(texts))]
    return float(span_scores(gold, pred, mode="exact", labels=list(labels))["micro"]["f1"])


def retrain_spans(texts: Sequence[str], spans: Sequence[Sequence[Any]], external_ids: Sequence[str], *,
                  labels: Sequence[str], models: ModelStore, encoder: Any = None, test_fraction: float = 0.2,
                  min_train: int = 2, encoder_ref: str | None = None, **tagger_kwargs: Any) -> RetrainResult:
    """Fit a span tagger on the training side of the settled spans (``spans``: one list per text, of
    ``(start, end, label)`` or :class:`Span`), save it as the store's next ``spans`` version and
    promote it when its held-out span F1 beats the current version's (or there is none)."""
    if not len(texts) == len(spans) == len(external_ids):
        raise ValueError(f"{len(texts)} texts, {len(spans)} span lists, {len(external_ids)} ids")
    gold = [[s for s in as_spans(sp) if s.label in set(labels)] for sp in spans]
    test = [in_test_split(e, test_fraction) for e in external_ids]
    train_idx = [i for i, t in enumerate(test) if not t]
    test_idx = [i for i, t in enumerate(test) if t]
    current = models.current()
    if len(train_idx) < min_train or not any(gold[i] for i in train_idx):
        return RetrainResult(None, current, False, f"{len(train_idx)} training texts with "
                             f"{sum(len(gold[i]) for i in train_idx)} spans: too few", len(train_idx), len(test_idx), 0)
    tagger = SpanTagger(encoder, labels=list(labels), **tagger_kwargs).fit(
        [texts[i] for i in train_idx], [gold[i] for i in train_idx])
    test_texts, test_gold = [texts[i] for i in test_idx], [gold[i] for i in test_idx]
    cand_f1 = span_f1(tagger, test_texts, test_gold, labels)
    cur_f1 = None
    if current is not None and test_idx:
        loaded = load_version(models, current, encoder=encoder)
        cur_f1 = span_f1(loaded.model, test_texts, test_gold, labels)
    if current is None:
        promote, reason = True, "no current span model"
    elif not test_idx:
        promote, reason = False, "no held-out texts to compare on"
    else:
        promote = cand_f1 > (cur_f1 or 0.0)
        reason = f"span F1 {cand_f1:.4f} {'>' if promote else '<='} current {cur_f1:.4f} on {len(test_idx)} held-out texts"
    metrics = {"span_f1": cand_f1, "n_train": float(len(train_idx)), "n_test": float(len(test_idx))}
    saved = save_span_version(models, tagger, metrics=metrics, encoder_ref=encoder_ref, parent=current,
                              promote=promote, trained_on=[external_ids[i] for i in train_idx])
    served = tagger if promote else (loaded.model if current is not None and test_idx else None)
    return RetrainResult(saved.version, current, promote, reason, len(train_idx), len(test_idx), len(train_idx),
                         candidate_metrics={"span_f1": cand_f1},
                         current_metrics=None if cur_f1 is None else {"span_f1": cur_f1},
                         evidence=span_evidence(served, test_texts, test_gold, [external_ids[i] for i in test_idx]))


def span_evidence(model: Any, texts: Sequence[str], gold: Sequence[Sequence[Span]],
                  external_ids: Sequence[str]) -> dict[str, list]:
    """The threshold rule's evidence from held-out texts: the served model's task score on each
    and whether its spans are exactly the settled ones (every span, offsets and label; an item is
    wrong on one missed, extra or shifted span), with each item's external id."""
    if model is None or not texts:
        return {"confidence": [], "correct": [], "external_id": []}
    predicted = model.predict(list(texts))
    return {"confidence": [p.score for p in predicted],
            "correct": [float({s.key() for s in p.spans} == {s.key() for s in g}) for p, g in zip(predicted, gold)],
            "external_id": list(external_ids)}
