"""Spans from several annotators: matching, consolidation (majority per span) and agreement
(pairwise F1 per label), and span F1 of a model against gold.

Two spans *match* exactly when offsets and label are equal, and by overlap when the labels are
equal and the character ranges intersect. Matching between two lists is one-to-one: exact pairs
first, then the remaining pairs by decreasing overlap (Jaccard of the character ranges).

Consolidation groups the annotators' spans into clusters of matching spans (each annotator counts
once per cluster), keeps a cluster when more than ``min_share`` of the annotators drew it (an
annotator who drew nothing there votes against), gives it the boundaries most of its members
drew, and scores it with its vote share. Offsets are never computed, only chosen among those the
annotators drew, so ``text[start:end]`` is always text an annotator marked.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from itertools import combinations
from typing import Literal

import numpy as np

from connector.spans import Span, as_spans

MatchMode = Literal["exact", "overlap"]


def spans_match(a: Span, b: Span, mode: MatchMode = "exact") -> bool:
    if mode == "exact":
        return a.key() == b.key()
    return a.label == b.label and a.start < b.end and b.start < a.end


def _jaccard(a: Span, b: Span) -> float:
    inter = min(a.end, b.end) - max(a.start, b.start)
    return inter / (max(a.end, b.end) - min(a.start, b.start)) if inter > 0 else 0.0


def match_spans(a: Sequence[Span], b: Sequence[Span], mode: MatchMode = "exact") -> list[tuple[int, int]]:
    """One-to-one matched index pairs ``(i in a, j in b)``: exact matches first, then (in
    ``overlap`` mode) the others by decreasing overlap."""
    pairs: list[tuple[int, int]] = []
    used_a, used_b = set(), set()
    by_key: dict[tuple, list[int]] = defaultdict(list)
    for j, s in enumerate(b):
        by_key[s.key()].append(j)
    for i, s in enumerate(a):
        if by_key.get(s.key()):
            j = by_key[s.key()].pop(0)
            pairs.append((i, j))
            used_a.add(i)
            used_b.add(j)
    if mode == "overlap":
        cands = sorted(((_jaccard(x, y), i, j) for i, x in enumerate(a) if i not in used_a
                        for j, y in enumerate(b) if j not in used_b and spans_match(x, y, "overlap")),
                       key=lambda c: (-c[0], c[1], c[2]))
        for _, i, j in cands:
            if i not in used_a and j not in used_b:
                pairs.append((i, j))
                used_a.add(i)
                used_b.add(j)
    return sorted(pairs)


def span_scores(gold: Sequence[Sequence[Span]], pred: Sequence[Sequence[Span]], *, mode: MatchMode = "exact",
                labels: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per label and ``"micro"`` over all, of ``pred`` against
    ``gold`` (one list of spans per text). F1 is 0 where nothing was predicted or expected."""
    tp: Counter = Counter()
    n_pred: Counter = Counter()
    n_gold: Counter = Counter()
    for g, p in zip(gold, pred, strict=True):
        g, p = as_spans(g), as_spans(p)
        for i, _ in match_spans(g, p, mode):
            tp[g[i].label] += 1
        n_gold.update(s.label for s in g)
        n_pred.update(s.label for s in p)
    names = list(labels) if labels is not None else sorted(set(n_gold) | set(n_pred))

    def prf(t: int, np_: int, ng: int) -> dict[str, float]:
        prec = t / np_ if np_ else 0.0
        rec = t / ng if ng else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        return {"precision": prec, "recall": rec, "f1": f1, "support": float(ng)}

    out = {lab: prf(tp[lab], n_pred[lab], n_gold[lab]) for lab in names}
    out["micro"] = prf(sum(tp[k] for k in names), sum(n_pred[k] for k in names), sum(n_gold[k] for k in names))
    return out


def consolidate_spans(annotations: Sequence[Sequence[Span]], *, mode: MatchMode = "overlap",
                      min_share: float = 0.5, allow_overlap: bool = False) -> list[Span]:
    """One text's spans by majority: ``annotations`` holds each annotator's spans (an empty list is
    an annotator who marked nothing). A cluster of matching spans is kept when more than
    ``min_share`` of the annotators are in it; its offsets are the ones most of them drew (ties:
    the earliest, then the shortest); its score is its vote share. Kept spans that overlap each
    other are resolved by votes unless ``allow_overlap``."""
    n = len(annotations)
    if n == 0:
        return []
    items = [(r, s) for r, spans in enumerate(annotations) for s in dict.fromkeys(as_spans(spans))]
    parent = list(range(len(items)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in combinations(range(len(items)), 2):
        if spans_match(items[i][1], items[j][1], mode):
            parent[find(i)] = find(j)
    clusters: dict[int, list[int]] = defaultdict(list)
    for i in range(len(items)):
        clusters[find(i)].append(i)
    kept: list[Span] = []
    for members in clusters.values():
        voters = {items[i][0] for i in members}
        if len(voters) <= min_share * n:
            continue
        # each annotator's boundaries once, then the most common
        drawn: Counter = Counter()
        for r in voters:
            mine = {(items[i][1].start, items[i][1].end) for i in members if items[i][0] == r}
            drawn.update(mine)
        (start, end), _ = min(drawn.items(), key=lambda kv: (-kv[1], kv[0][0], kv[0][1] - kv[0][0]))
        kept.append(Span(start, end, items[members[0]][1].label, len(voters) / n))
    if allow_overlap:
        return sorted(kept)
    chosen: list[Span] = []
    for s in sorted(kept, key=lambda s: (-(s.score or 0), s.start, -(s.end - s.start), s.label)):
        if all(s.end <= c.start or c.end <= s.start for c in chosen):
            chosen.append(s)
    return sorted(chosen)


def pairwise_span_agreement(annotations: Mapping[Hashable, Mapping[Hashable, Sequence[Span]]], *,
                            mode: MatchMode = "exact", labels: Sequence[str] | None = None) -> dict[str, float]:
    """Mean over annotator pairs of their span F1 (one as reference, the other as prediction: F1 is
    symmetric), counted over the items both annotated; per label and ``"micro"``. ``annotations``
    maps item -> annotator -> spans. A label neither of a pair used is left out of that pair's
    mean; ``nan`` where no pair used it. ``"pairs"``: annotator pairs with a shared item."""
    shared: dict[tuple, list[tuple[list[Span], list[Span]]]] = defaultdict(list)
    for by_rater in annotations.values():
        for a, b in combinations(sorted(by_rater, key=str), 2):
            shared[(a, b)].append((as_spans(by_rater[a]), as_spans(by_rater[b])))
    per_label: dict[str, list[float]] = defaultdict(list)
    names = set(labels) if labels is not None else None
    for rows in shared.values():
        scores = span_scores([r[0] for r in rows], [r[1] for r in rows], mode=mode)
        for lab, s in scores.items():
            if lab == "micro" or names is None or lab in names:
                if lab == "micro" and s["support"] == 0 and not any(r[1] for r in rows):
                    continue
                per_label[lab].append(s["f1"])
    out = {lab: float(np.mean(v)) for lab, v in sorted(per_label.items())}
    for lab in names or ():
        out.setdefault(lab, float("nan"))
    out["pairs"] = float(len(shared))
    return out

