"""``hitl simulate`` on an entity set: the loop in rounds over the connector core, with simulated
annotators who drop spans, shift a boundary and change a type with set probabilities.

No sync service and no annotation tool: the rounds call the core directly. A random seed set is
labelled first; then each round the span model (:class:`~connector.span_model.SpanTagger`, a BIO head
on the frozen encoder's token states, which are computed once per data set: the encoder is frozen)
scores the pool, the strategy picks a batch (the lowest task scores first: the least confident
span, or the chance of a missed entity; mixed with ``random_share`` random picks; or random picks
alone, the baseline), ``overlap`` simulated annotators draw each pick's spans, a third one when two
drew different spans (up to ``max_answers``), the answers are consolidated by
:func:`~connector.span_consensus.consolidate_spans` (overlap matching, majority per span), and the
head is refitted (with its cross-fitted calibration) on every consolidated item. The final spans
are the humans' where an item was reviewed and the final model's elsewhere.

Reported per run (:class:`SpanRunResult`): against the share of the pool reviewed, span F1 of the
final spans (micro, exact match and overlap; macro over labels, exact) and the share of items
whose spans are all exactly right, beside the seed model alone (no review) and an oracle that
spends the same reviews on exactly the final model's wrong items; the calibration of the final
model on the items no human labelled: span-score ECE (10 equal-width bins; a span is right when
offsets and type equal a gold span's) and missed-entity ECE (an item misses an entity when a gold
span overlaps no predicted span); agreement (pairwise span F1); per round the same figures (the
curves) and, with ``eval_fraction``, the model's span F1 on a held-out slice (active learning
against random picks).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from connector.datasets import EntityTexts
from connector.span_consensus import consolidate_spans, pairwise_span_agreement, span_scores
from connector.span_model import SpanPrediction, SpanTagger, decode
from connector.spans import Span, TokenAlignment
from connector.strategies import Mix, QueryStrategy, RandomSampling, ScoreBasedStrategy
from hitl.simulate.figures import RunFigures

TokenFeatures = tuple[list[TokenAlignment], list[np.ndarray]]


@dataclass
class SpanSimulationConfig:
    """One simulated entity project. ``budget``: share of the pool humans may review (seed set
    included); ``batch``: items reviewed per round; ``seed_size``: random items labelled before the
    first model; per gold span an annotator ``drop``\\s it (draws nothing there), else ``shift``\\s one
    of its boundaries by one word (out or in) and, independently, gives it another type with
    ``relabel``; ``overlap``: answers per item, one more while they differ, up to ``max_answers``;
    ``strategy``: ``least_confidence`` (the lowest task score first) or ``random``; ``random_share``:
    share of each batch picked at random; ``C``, ``context``, ``balance``, ``folds``: the head's
    (:class:`~connector.span_model.SpanTagger`); ``eval_fraction``: items held out to measure the model."""

    budget: float = 0.15
    batch: int = 20
    seed_size: int = 50
    annotators: int = 5
    drop: float = 0.05
    shift: float = 0.05
    relabel: float = 0.05
    overlap: int = 2
    max_answers: int = 3
    strategy: str = "least_confidence"
    random_share: float = 0.2
    eval_fraction: float = 0.0
    C: float = 1.0
    context: int = 1
    balance: float = 0.5
    folds: int = 3
    seed: int = 0


class SpanAnnotators:
    """``n`` annotators; for each gold span one drops it with probability ``drop``, else shifts one
    boundary by a word with ``shift`` (never onto another span) and changes its type with
    ``relabel``. Draws follow ``seed``."""

    def __init__(self, labels: Sequence[str], *, n: int, drop: float, shift: float, relabel: float,
                 seed: int) -> None:
        for name, p in (("drop", drop), ("shift", shift), ("relabel", relabel)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {p}")
        self.labels = list(labels)
        self.names = [f"annotator-{k + 1}" for k in range(n)]
        self.drop, self.shift, self.relabel = drop, shift, relabel
        self.rng = np.random.default_rng(seed)

    def answer(self, text: str, gold: Sequence[Span], exclude: set[str]) -> tuple[str, list[Span]]:
        """``(annotator, spans)`` from an annotator who has not answered this item yet."""
        free = [a for a in self.names if a not in exclude]
        if not free:
            raise ValueError("every annotator has answered this item")
        who = free[int(self.rng.integers(len(free)))]
        words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        out: list[Span] = []
        for k, s in enumerate(gold):
            u = self.rng.random(4)
            if u[0] < self.drop:
                continue
            if u[1] < self.shift:
                s = self._shifted(s, [g for j, g in enumerate(gold) if j != k], words)
            if u[2] < self.relabel and len(self.labels) > 1:
                others = [lab for lab in self.labels if lab != s.label]
                s = Span(s.start, s.end, others[int(u[3] * len(others)) % len(others)])
            out.append(Span(s.start, s.end, s.label))
        return who, sorted(out)

    def _shifted(self, s: Span, others: Sequence[Span], words: Sequence[tuple[int, int]]) -> Span:
        """``s`` with one boundary moved by a word: out over the word before or after, or in past its
        first or last word (a span of more than one word); none that would touch another span."""
        inside = [w for w in words if w[0] >= s.start and w[1] <= s.end]
        before = [w for w in words if w[1] <= s.start]
        after = [w for w in words if w[0] >= s.end]
        options = []
        if before:
            options.append((before[-1][0], s.end))
        if after:
            options.append((s.start, after[0][1]))
        if len(inside) > 1:
            options += [(inside[1][0], s.end), (s.start, inside[-2][1])]
        options = [(a, b) for a, b in options if all(b <= o.start or o.end <= a for o in others)]
        if not options:
            return s
        a, b = options[int(self.rng.integers(len(options)))]
        return Span(a, b, s.label)


class LowestTaskScore(ScoreBasedStrategy):
    """For span items: ``probs`` is one column, each item's task score (the least confident span, or
    one minus the chance of a missed entity); the lowest first."""

    def score(self, probs: np.ndarray) -> np.ndarray:
        return 1.0 - probs[:, 0]


def span_strategy(cfg: SpanSimulationConfig) -> QueryStrategy:
    """The run's query strategy: random picks alone, or the lowest task score mixed with random picks."""
    own, other = np.random.SeedSequence(cfg.seed).spawn(2)
    if cfg.strategy == "random":
        return RandomSampling(own)
    if cfg.strategy != "least_confidence":
        raise ValueError(f"span strategies: 'least_confidence' or 'random', got {cfg.strategy!r}")
    if not cfg.random_share:
        return LowestTaskScore()
    return Mix([(LowestTaskScore(), 1.0 - cfg.random_share), (RandomSampling(other), cfg.random_share)])


def span_figures(gold: Sequence[Sequence[Span]], pred: Sequence[Sequence[Span]], labels: Sequence[str]) -> dict[str, float]:
    """Micro span F1 (exact and overlap match), macro F1 over the labels that occur in ``gold``
    (exact), and the share of items whose spans are all exactly right."""
    exact = span_scores(gold, pred, labels=labels)
    overlap = span_scores(gold, pred, mode="overlap", labels=labels)
    present = [lab for lab in labels if exact[lab]["support"] > 0]
    same = [{s.key() for s in g} == {s.key() for s in p} for g, p in zip(gold, pred)]
    return {"f1_exact": exact["micro"]["f1"], "f1_overlap": overlap["micro"]["f1"],
            "precision_exact": exact["micro"]["precision"], "recall_exact": exact["micro"]["recall"],
            "macro_f1_exact": float(np.mean([exact[lab]["f1"] for lab in present])) if present else 1.0,
            "item_accuracy": float(np.mean(same)) if same else 1.0}


def score_ece(p: np.ndarray, outcome: np.ndarray, *, n_bins: int = 10) -> float:
    """ECE of probabilities ``p`` that an event happens against whether it did (``outcome`` 0/1):
    equal-width bins on ``p``, ``sum_b |B_b| / n * |mean p - rate|`` (NaN with nothing to score)."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(outcome, dtype=np.float64)
    if not len(p):
        return float("nan")
    bins = np.clip((p * n_bins).astype(np.int64), 0, n_bins - 1)
    gap = np.bincount(bins, weights=y - p, minlength=n_bins)
    return float(np.abs(gap).sum() / len(p))


def missed_entity(gold: Sequence[Span], pred: Sequence[Span]) -> bool:
    """Whether a gold span overlaps no predicted span."""
    return any(all(g.end <= q.start or q.end <= g.start for q in pred) for g in gold)


@dataclass
class SpanRunResult(RunFigures):
    """What one simulated entity run measured (see the module docstring). ``labels``: the final
    spans' figures (:func:`span_figures`); ``no_review``: the seed model's on the whole pool;
    ``model``: the final model's on the items no human reviewed; ``reviewed``: the consolidated
    human spans' on the reviewed items (``reviewed_figures``); ``span_ece`` / ``missed_ece`` and the
    mean score against the observed rate, on the unreviewed items."""

    KIND: ClassVar[str] = "spans"

    dataset: str
    strategy: str
    seed: int
    items: int
    reviewed: int
    answers: int
    labels: dict[str, float]
    no_review: dict[str, float]
    model: dict[str, float]
    reviewed_figures: dict[str, float]
    oracle_item_accuracy: float
    span_ece: float
    mean_span_score: float | None
    span_right_rate: float | None
    missed_ece: float
    mean_missed_score: float
    missed_rate: float
    temperature: float
    agreement: dict[str, Any]
    config: dict[str, Any]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    features_s: float = 0.0  # seconds computing token states in this run (0 when they were passed in)
    reviewed_items: list[int] = field(default_factory=list)  # data set indices, in the order they were reviewed
    pool: list[int] = field(default_factory=list, repr=False)  # data set index of each pool item
    final: list[list[Span]] = field(default_factory=list, repr=False)  # each pool item's final spans


def token_features(encoder: Any, data: EntityTexts, *, context: int = 1) -> TokenFeatures:
    """Every text's token alignment and head features (the frozen encoder's last hidden states with
    ``context`` neighbours), computed once and shared by the runs on ``data``."""
    return SpanTagger(encoder, labels=data.labels, context=context).token_features(list(data.texts))


def run_spans(data: EntityTexts, cfg: SpanSimulationConfig, *, encoder: Any, features: TokenFeatures | None = None,
              progress: Callable[[dict[str, Any]], None] | None = None) -> SpanRunResult:
    """One simulated entity project from nothing to the review budget; see :class:`SpanRunResult`.
    ``features``: :func:`token_features` of ``data`` (computed here when not given)."""
    t0 = time.perf_counter()
    if cfg.overlap > cfg.annotators or cfg.max_answers > cfg.annotators:
        raise ValueError(f"overlap {cfg.overlap} / max_answers {cfg.max_answers} need as many annotators "
                         f"(have {cfg.annotators})")
    labels = list(data.labels)
    if features is None:
        features = token_features(encoder, data, context=cfg.context)
    features_s = time.perf_counter() - t0
    alignments, feats = features
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(data.texts))
    n_eval = round(cfg.eval_fraction * len(order))
    eval_idx, pool_idx = order[:n_eval], order[n_eval:]
    gold_all = [sorted(Span(*s) for s in spans) for spans in data.spans]
    n = len(pool_idx)
    budget = min(n, int(cfg.budget * n))
    annotators = SpanAnnotators(labels, n=cfg.annotators, drop=cfg.drop, shift=cfg.shift, relabel=cfg.relabel,
                                seed=cfg.seed + 1)
    answers: dict[int, dict[str, list[Span]]] = {}  # pool position -> annotator -> spans
    human: dict[int, list[Span]] = {}

    def review(positions: Sequence[int]) -> None:
        for pos in positions:
            i = int(pool_idx[pos])
            mine = answers.setdefault(int(pos), {})
            while len(mine) < cfg.overlap or (len(mine) < cfg.max_answers
                                              and len({tuple(s.key() for s in a) for a in mine.values()}) > 1):
                who, spans = annotators.answer(data.texts[i], gold_all[i], set(mine))
                mine[who] = spans
            human[int(pos)] = consolidate_spans(list(mine.values()), mode="overlap", min_share=0.5)

    def fit() -> SpanTagger:
        rows = sorted(human)
        idx = [int(pool_idx[r]) for r in rows]
        return SpanTagger(encoder, labels=labels, C=cfg.C, context=cfg.context, balance=cfg.balance, folds=cfg.folds,
                          seed=cfg.seed).fit_features([data.texts[i] for i in idx], [alignments[i] for i in idx],
                                                      [feats[i] for i in idx], [human[r] for r in rows])

    def predict(model: SpanTagger, idx: Sequence[int]) -> list[SpanPrediction]:
        scores = model.scores_from_features([alignments[i] for i in idx], [feats[i] for i in idx])
        return [decode(data.texts[i], s, model.tags, model.calibration, snap_words=model.snap_words)
                for i, s in zip(idx, scores)]

    seed_n = min(cfg.seed_size, budget)
    review(list(range(seed_n)))
    model = seed_model = fit()
    strategy = span_strategy(cfg)
    gold_pool = [gold_all[i] for i in pool_idx]
    gold_eval = [gold_all[i] for i in eval_idx]
    rounds: list[dict[str, Any]] = []
    while True:
        preds = predict(model, pool_idx.tolist())
        point = _point([p.spans for p in preds], human, gold_pool, labels, sum(len(a) for a in answers.values()))
        if len(eval_idx):
            held = span_figures(gold_eval, [p.spans for p in predict(model, eval_idx.tolist())], labels)
            point |= {f"eval_{k}": v for k, v in held.items()}
        rounds.append(point)
        if progress:
            progress(point)
        left = budget - len(human)
        candidates = np.array([i for i in range(n) if i not in human], dtype=np.intp)
        if left <= 0 or not len(candidates):
            break
        picks = strategy.query(np.array([[p.score] for p in preds]), min(cfg.batch, left), candidates=candidates)
        review(picks.tolist())
        model = fit()
    result = _measure(data, cfg, model, [p.spans for p in predict(seed_model, pool_idx.tolist())], preds, gold_pool,
                      human, answers, rounds, time.perf_counter() - t0, features_s)
    result.pool = pool_idx.tolist()
    result.reviewed_items = [int(pool_idx[pos]) for pos in human]
    return result


def _point(model_spans: list[list[Span]], human: dict[int, list[Span]], gold: list[list[Span]], labels: list[str],
           answers: int) -> dict[str, Any]:
    """One point of the curves: the spans' figures had the loop stopped here."""
    final = [human.get(k, s) for k, s in enumerate(model_spans)]
    wrong = sum({s.key() for s in g} != {s.key() for s in p} for g, p in zip(gold, model_spans))
    return {"reviewed": len(human), "answers": answers, "review_share": len(human) / len(gold),
            **span_figures(gold, final, labels), "model_errors": int(wrong)}


def _measure(data: EntityTexts, cfg: SpanSimulationConfig, model: SpanTagger, seed_spans: list[list[Span]],
             preds: list[SpanPrediction], gold: list[list[Span]], human: dict[int, list[Span]],
             answers: dict[int, dict[str, list[Span]]], rounds: list[dict[str, Any]], seconds: float,
             features_s: float) -> SpanRunResult:
    labels = list(data.labels)
    n = len(gold)
    model_spans = [p.spans for p in preds]
    final = [human.get(k, s) for k, s in enumerate(model_spans)]
    rest = [k for k in range(n) if k not in human]
    seen = sorted(human)
    scores = np.array([s.score for k in rest for s in model_spans[k]], dtype=np.float64)
    right = np.array([s.key() in {g.key() for g in gold[k]} for k in rest for s in model_spans[k]], dtype=np.float64)
    missed_p = np.array([preds[k].missed for k in rest])
    missed_y = np.array([missed_entity(gold[k], model_spans[k]) for k in rest], dtype=np.float64)
    wrong = sum({s.key() for s in g} != {s.key() for s in p} for g, p in zip(gold, model_spans))
    exact = pairwise_span_agreement(answers, labels=labels)
    overlap = pairwise_span_agreement(answers, mode="overlap", labels=labels)
    return SpanRunResult(
        dataset=data.name, strategy=cfg.strategy, seed=cfg.seed, items=n, reviewed=len(human),
        answers=sum(len(a) for a in answers.values()), labels=span_figures(gold, final, labels),
        no_review=span_figures(gold, seed_spans, labels),
        model=span_figures([gold[k] for k in rest], [model_spans[k] for k in rest], labels),
        reviewed_figures=span_figures([gold[k] for k in seen], [human[k] for k in seen], labels),
        oracle_item_accuracy=1.0 - max(0, wrong - len(human)) / n if n else 1.0,
        span_ece=score_ece(scores, right), mean_span_score=float(scores.mean()) if len(scores) else None,
        span_right_rate=float(right.mean()) if len(right) else None,
        missed_ece=score_ece(missed_p, missed_y),
        mean_missed_score=float(missed_p.mean()) if len(missed_p) else 0.0,
        missed_rate=float(missed_y.mean()) if len(missed_y) else 0.0,
        temperature=float(model.calibration.temperature),
        agreement={"pairwise_f1_exact": exact.get("micro"), "pairwise_f1_overlap": overlap.get("micro"),
                   "pairs": exact.get("pairs")},
        config=dict(cfg.__dict__), rounds=rounds, seconds=seconds, features_s=features_s, final=final)
