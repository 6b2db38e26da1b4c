"""Span F1 of the BIO head on the frozen encoder against a memorising baseline, on WNUT 2016 (run by hand).

Data: ``connector.datasets.wnut16`` (2,295 distinct tweets, ten entity types). A fixed shuffle
(seed 0); the last ``--test`` tweets are the test set; each training set is the first ``n`` of the
rest. Token states are computed once for every tweet used.

- ``memorise`` (the trivial baseline): every string labelled as an entity in training is labelled
  with its most frequent training label wherever it occurs, as whole words, in a test tweet
  (longest first, no overlaps).
- ``head``: :class:`connector.span_model.SpanTagger` (C, context, balance as given), its cross-fitted calibration.

Reported: exact-match span precision/recall/F1 (micro over labels) and overlap F1, the span-score
calibration on the test set (ECE over predicted spans, 10 bins, "right" = exact match), the mean
missed-entity score against the observed miss rate, and wall times. Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter, defaultdict

import numpy as np

from connector.datasets import wnut16
from connector.span_consensus import span_scores
from connector.span_model import SpanTagger, decode
from connector.spans import Span


def memorise(train_texts, train_spans, test_texts) -> list[list[Span]]:
    seen: dict[str, Counter] = defaultdict(Counter)
    for t, spans in zip(train_texts, train_spans):
        for s, e, lab in spans:
            seen[t[s:e]][lab] += 1
    names = sorted(seen, key=len, reverse=True)
    out = []
    for t in test_texts:
        taken: list[Span] = []
        for name in names:
            for m in re.finditer(r"(?<!\S)" + re.escape(name) + r"(?!\S)", t):
                if all(m.end() <= x.start or x.end <= m.start() for x in taken):
                    taken.append(Span(m.start(), m.end(), seen[name].most_common(1)[0][0]))
        out.append(sorted(taken))
    return out


def ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    if not len(p):
        return float("nan")
    idx = np.minimum((p * bins).astype(int), bins - 1)
    return float(sum(abs(p[idx == b].mean() - y[idx == b].mean()) * (idx == b).mean()
                     for b in range(bins) if (idx == b).any()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="50,200")
    ap.add_argument("--test", type=int, default=600)
    ap.add_argument("--C", type=float, default=1.0)
    ap.add_argument("--context", type=int, default=1)
    ap.add_argument("--balance", type=float, default=0.5)
    args = ap.parse_args()
    from connector.encoder import TextEncoder

    ds = wnut16()
    order = np.random.default_rng(0).permutation(len(ds))
    test = order[-args.test:]
    sizes = [int(s) for s in args.sizes.split(",")]
    pool = order[:max(sizes)]
    enc = TextEncoder()
    t0 = time.perf_counter()
    tagger = SpanTagger(enc, labels=ds.labels, C=args.C, context=args.context, balance=args.balance)
    used = np.concatenate([pool, test])
    alignments, feats = tagger.token_features([ds.texts[i] for i in used])
    feat_of = {int(i): (a, x) for i, a, x in zip(used, alignments, feats)}
    t_feat = time.perf_counter() - t0
    test_texts = [ds.texts[i] for i in test]
    gold = [[Span(*s) for s in ds.spans[i]] for i in test]
    for n in sizes:
        train = pool[:n]
        tr_texts = [ds.texts[i] for i in train]
        tr_spans = [ds.spans[i] for i in train]
        base = memorise(tr_texts, tr_spans, test_texts)
        sb = span_scores(gold, base)["micro"]
        t1 = time.perf_counter()
        tagger = SpanTagger(enc, labels=ds.labels, C=args.C, context=args.context, balance=args.balance)
        tagger.fit_features(tr_texts, [feat_of[int(i)][0] for i in train], [feat_of[int(i)][1] for i in train],
                            [[Span(*s) for s in ds.spans[i]] for i in train])
        t_fit = time.perf_counter() - t1
        scores = tagger.scores_from_features([feat_of[int(i)][0] for i in test], [feat_of[int(i)][1] for i in test])
        preds = [decode(t, s, tagger.tags, tagger.calibration) for t, s in zip(test_texts, scores)]
        spans = [p.spans for p in preds]
        sh, so = span_scores(gold, spans)["micro"], span_scores(gold, spans, mode="overlap")["micro"]
        p = np.array([s.score for x in spans for s in x])
        right = np.array([s.key() in {g.key() for g in gg} for x, gg in zip(spans, gold) for s in x], dtype=float)
        missed = np.array([any(all(g.end <= q.start or q.end <= g.start for q in x) for g in gg)
                           for x, gg in zip(spans, gold)], dtype=float)
        print(json.dumps({
            "n_train": n, "n_test": len(test), "C": args.C, "context": args.context, "balance": args.balance,
            "memorise": {k: round(sb[k], 4) for k in ("precision", "recall", "f1")},
            "head": {k: round(sh[k], 4) for k in ("precision", "recall", "f1")},
            "head_overlap_f1": round(so["f1"], 4),
            "span_ece": round(ece(p, right), 4), "mean_span_score": round(float(p.mean()), 4) if len(p) else None,
            "span_right_rate": round(float(right.mean()), 4) if len(right) else None,
            "mean_missed_score": round(float(np.mean([q.missed for q in preds])), 4),
            "missed_rate": round(float(missed.mean()), 4),
            "temperature": round(tagger.calibration.temperature, 3),
            "features_s": round(t_feat, 1), "fit_s": round(t_fit, 1)}))


if __name__ == "__main__":
    main()
