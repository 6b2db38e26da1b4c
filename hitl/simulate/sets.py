"""``hitl simulate`` on a multi-label set: the loop in rounds over the connector core, with simulated
annotators who get each label wrong with a set probability.

No sync service and no annotation tool: the rounds call the core directly. A random seed set is
labelled first; then each round the model scores the pool (:class:`~connector.multilabel.MultiLabelClassifier`,
one calibrated yes/no head per label on the frozen encoder's embeddings, read from the embedding
cache), the set strategy (:func:`~connector.strategies.make_set_strategy`: the least confident
label decision, or the mean binary entropy, mixed with ``random_share`` random picks; or random
picks alone, the baseline) picks a batch, ``overlap`` simulated annotators answer each pick (each
flips every label independently with probability ``label_error``), the answers are consolidated
label by label by :func:`~connector.consolidation_sets.consolidate_sets` (an item is sent back for
one more answer while a label is tied, up to ``max_answers``), and the model is refitted on every
consolidated label set. The final labels are the humans' where an item was reviewed and the final
model's elsewhere.

Reported per run (:class:`SetRunResult`): against the share of the pool reviewed, the final labels'
exact-match accuracy (the whole set right) and micro / macro F1 over the labels, beside the seed
model alone (no review) and an oracle that spends the same reviews on exactly the final model's
wrong sets; the per-label ECE of the final model (decision confidence, 15 bins) on the items no
human labelled, before and after its per-label calibration; agreement (Krippendorff's alpha with
the MASI distance); per round the same figures (the curves) and, with ``eval_fraction``, the
model's figures on a held-out slice (active learning against random picks).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from connector.calibration import per_label_ece
from connector.consolidation import ConsensusPolicy
from connector.consolidation_sets import consolidate_sets, set_agreement_snapshot, set_answer_table
from connector.datasets import LabelSets
from connector.multilabel import MultiLabelClassifier, label_matrix
from connector.retraining import EmbeddingCache
from connector.store import content_hash
from connector.strategies import Mix, QueryStrategy, RandomSampling, make_set_strategy
from hitl.simulate.figures import RunFigures


@dataclass
class SetSimulationConfig:
    """One simulated multi-label project. ``budget``: share of the pool humans may review (seed set
    included); ``batch``: items reviewed per round; ``seed_size``: random items labelled before the
    first model; ``label_error``: the chance that an annotator gets one label's yes/no wrong (each
    label on its own); ``overlap``: answers per item, one more while a label is tied, up to
    ``max_answers``; ``consensus``: ``majority`` or ``dawid_skene`` (per label); ``strategy``:
    ``least_confidence`` (over labels), ``entropy`` (mean binary entropy) or ``random``;
    ``random_share``: share of each batch picked at random; ``calibration_labels``: ``random``
    (the per-label calibration is fitted on the seed set and the random picks only, as the
    single-label loop does) or ``all``; ``eval_fraction``: items held out of the loop to measure
    the model."""

    budget: float = 0.15
    batch: int = 20
    seed_size: int = 50
    annotators: int = 5
    label_error: float = 0.02
    overlap: int = 2
    max_answers: int = 3
    consensus: str = "majority"
    strategy: str = "least_confidence"
    random_share: float = 0.2
    calibration_labels: str = "random"
    eval_fraction: float = 0.0
    C: float = 10.0
    features: str = "embeddings"
    folds: int = 3
    seed: int = 0


@dataclass
class Answer:
    """One submitted answer, in the shape :func:`~connector.consolidation_sets.set_answer_table` reads."""

    item_id: int
    annotator: str
    value: Any
    status: str = "submitted"
    remote_updated_at: int = 0


class SetAnnotators:
    """``n`` annotators; each flips every label's yes/no independently with probability ``error``
    (adding a label that does not apply, or leaving out one that does). Draws follow ``seed``."""

    def __init__(self, classes: Sequence[str], *, n: int, error: float, seed: int) -> None:
        if not 0.0 <= error <= 1.0:
            raise ValueError(f"label error must lie in [0, 1], got {error}")
        self.classes = list(classes)
        self.names = [f"annotator-{k + 1}" for k in range(n)]
        self.error = error
        self.rng = np.random.default_rng(seed)

    def answer(self, truth: Sequence[str], exclude: set[str]) -> tuple[str, list[str]]:
        """``(annotator, labels)`` from an annotator who has not answered this item yet."""
        free = [a for a in self.names if a not in exclude]
        if not free:
            raise ValueError("every annotator has answered this item")
        who = free[int(self.rng.integers(len(free)))]
        flip = self.rng.random(len(self.classes)) < self.error
        have = set(truth)
        return who, [c for c, f in zip(self.classes, flip) if (c in have) != bool(f)]


def set_scores(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Exact-match accuracy (whole sets), micro F1 and macro F1 (over labels that occur in ``truth``
    or ``pred``; a label with neither is left out) of 0/1 indicators ``(n, k)``."""
    truth, pred = np.asarray(truth, dtype=bool), np.asarray(pred, dtype=bool)
    tp = (truth & pred).sum(axis=0).astype(np.float64)
    fp = (~truth & pred).sum(axis=0).astype(np.float64)
    fn = (truth & ~pred).sum(axis=0).astype(np.float64)

    def f1(t: Any, p: Any, n: Any) -> Any:
        d = 2 * t + p + n
        return np.where(d > 0, 2 * t / np.where(d > 0, d, 1), 0.0)

    used = (truth | pred).any(axis=0)
    return {"exact_match": float((truth == pred).all(axis=1).mean()) if len(truth) else 1.0,
            "micro_f1": float(f1(tp.sum(), fp.sum(), fn.sum())),
            "macro_f1": float(f1(tp, fp, fn)[used].mean()) if used.any() else 1.0}


@dataclass
class SetRunResult(RunFigures):
    """What one simulated multi-label run measured (see the module docstring). ``labels``: the final
    labels' figures (:func:`set_scores`); ``no_review``: the seed model's on the whole pool;
    ``model``: the final model's on the items no human reviewed; ``oracle_exact_match``: were the
    same reviews spent on exactly the final model's wrong sets; ``reviewed_exact_match``: the human
    labels' exact-match accuracy on the reviewed items; ``per_label_ece``: label -> ECE of the
    final model's calibrated probabilities on the unreviewed items (``ece_uncalibrated`` /
    ``ece_calibrated``: their mean over labels, before and after calibration)."""

    KIND: ClassVar[str] = "sets"

    dataset: str
    strategy: str
    seed: int
    items: int
    reviewed: int
    answers: int
    labels: dict[str, float]
    no_review: dict[str, float]
    model: dict[str, float]
    oracle_exact_match: float
    reviewed_exact_match: float
    ece_uncalibrated: float
    ece_calibrated: float
    per_label_ece: dict[str, float]
    calibration_labels: int
    adjudicated: int
    agreement: dict[str, Any]
    config: dict[str, Any]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    reviewed_items: list[int] = field(default_factory=list)  # data set indices, in the order they were reviewed
    pool: list[int] = field(default_factory=list, repr=False)  # data set index of each pool item
    final: list[list[str]] = field(default_factory=list, repr=False)  # each pool item's final labels


def strategy_for(cfg: SetSimulationConfig, thresholds: np.ndarray | float = 0.5) -> QueryStrategy:
    """The run's query strategy: random picks alone, or the set strategy mixed with random picks."""
    if cfg.strategy == "random":
        return RandomSampling(np.random.SeedSequence(cfg.seed).spawn(2)[0])
    return make_set_strategy(cfg.strategy, random_share=cfg.random_share, seed=cfg.seed, thresholds=thresholds)


def run_sets(data: LabelSets, cfg: SetSimulationConfig, *, cache: EmbeddingCache,
             progress: Callable[[dict[str, Any]], None] | None = None) -> SetRunResult:
    """One simulated multi-label project from nothing to the review budget; see :class:`SetRunResult`."""
    t0 = time.perf_counter()
    if cfg.calibration_labels not in ("random", "all"):
        raise ValueError(f"calibration_labels must be 'random' or 'all', got {cfg.calibration_labels!r}")
    if cfg.overlap > cfg.annotators or cfg.max_answers > cfg.annotators:
        raise ValueError(f"overlap {cfg.overlap} / max_answers {cfg.max_answers} need as many annotators "
                         f"(have {cfg.annotators})")
    classes = list(data.classes)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(data.texts))
    n_eval = round(cfg.eval_fraction * len(order))
    eval_idx, pool_idx = order[:n_eval], order[n_eval:]
    texts = list(data.texts)
    x_all = cache.encode(texts, [content_hash(t) for t in texts])[0]
    y_all = label_matrix(data.labels, classes).astype(bool)
    x_pool, t_pool, y_pool = x_all[pool_idx], [texts[i] for i in pool_idx], y_all[pool_idx]
    x_eval, t_eval, y_eval = x_all[eval_idx], [texts[i] for i in eval_idx], y_all[eval_idx]
    n = len(pool_idx)
    budget = min(n, int(cfg.budget * n))
    policy = ConsensusPolicy(method=cfg.consensus, min_answers=cfg.overlap, max_answers=cfg.max_answers)
    annotators = SetAnnotators(classes, n=cfg.annotators, error=cfg.label_error, seed=cfg.seed + 1)
    answers: list[Answer] = []
    human: dict[int, np.ndarray] = {}  # pool position -> consolidated 0/1 row
    at_random: set[int] = set()
    adjudicated: set[int] = set()

    def truth_of(pos: int) -> list[str]:
        return [c for c, y in zip(classes, y_pool[pos]) if y]

    def ask(pos: int) -> None:
        done = {a.annotator for a in answers if a.item_id == pos}
        who, labels = annotators.answer(truth_of(pos), done)
        answers.append(Answer(pos, who, labels, remote_updated_at=len(answers)))

    def review(positions: Sequence[int], randomly: Sequence[bool]) -> None:
        for pos, r in zip(positions, randomly):
            if r:
                at_random.add(int(pos))
            for _ in range(cfg.overlap):
                ask(int(pos))
        while True:
            result = consolidate_sets(set_answer_table(answers, classes), policy)
            if not result.send_back:
                break
            for item_id, target, _ in result.send_back:
                while sum(a.item_id == item_id for a in answers) < target:
                    ask(item_id)
        for row in result.rows:
            if row["status"] == "settled":
                human[int(row["item_id"])] = np.isin(classes, row["label"])
                adjudicated.discard(int(row["item_id"]))
            else:  # still unsettled at max_answers (adjudication): per-label majority, ties left out
                item_id = int(row["item_id"])
                mine = np.array([np.isin(classes, a.value) for a in answers if a.item_id == item_id])
                human[item_id] = mine.mean(axis=0) > 0.5
                adjudicated.add(item_id)

    def fit() -> MultiLabelClassifier:
        rows = sorted(human)
        calibrate = None if cfg.calibration_labels == "all" else np.array([r in at_random for r in rows])
        return MultiLabelClassifier(cache.encoder, features=cfg.features, classes=classes, C=cfg.C, folds=cfg.folds,
                                    random_state=cfg.seed).fit_embeddings(
            x_pool[rows], [[c for c, y in zip(classes, human[r]) if y] for r in rows],
            texts=[t_pool[r] for r in rows], calibrate_on=calibrate)

    seed_n = min(cfg.seed_size, budget)
    review(list(range(seed_n)), [True] * seed_n)
    model = seed_model = fit()
    strategy = strategy_for(cfg, model.thresholds_)
    rounds: list[dict[str, Any]] = []
    while True:
        probs = model.predict_proba_from_embeddings(x_pool, texts=t_pool)
        rounds.append(_point(model, probs, human, y_pool, len(answers), (x_eval, t_eval, y_eval)))
        if progress:
            progress(rounds[-1])
        left = budget - len(human)
        candidates = np.array([i for i in range(n) if i not in human], dtype=np.intp)
        if left <= 0 or not len(candidates):
            break
        picks = strategy.query(probs, min(cfg.batch, left), candidates=candidates)
        by = getattr(strategy, "last_picked_by", None)
        randomly = [cfg.strategy == "random" or (isinstance(strategy, Mix) and by is not None and by[p] > 0)
                    for p in picks]
        review(picks.tolist(), randomly)
        model = fit()
    result = _measure(data, cfg, model, seed_model, (x_pool, t_pool, y_pool), human, answers, at_random, adjudicated,
                      rounds, time.perf_counter() - t0)
    result.pool = pool_idx.tolist()
    result.reviewed_items = [int(pool_idx[pos]) for pos in human]
    return result


def _point(model: MultiLabelClassifier, probs: np.ndarray, human: dict[int, np.ndarray], y_pool: np.ndarray,
           answers: int, evaluation: tuple[np.ndarray, list[str], np.ndarray]) -> dict[str, Any]:
    """One point of the curves: the labels' figures had the loop stopped here."""
    pred = probs >= model.thresholds_
    final = pred.copy()
    for pos, row in human.items():
        final[pos] = row
    scores = set_scores(y_pool, final)
    point: dict[str, Any] = {"reviewed": len(human), "answers": answers, "review_share": len(human) / len(y_pool),
                             **scores, "model_errors": int((pred != y_pool).any(axis=1).sum())}
    x_eval, t_eval, y_eval = evaluation
    if len(y_eval):
        held = set_scores(y_eval, model.predict_proba_from_embeddings(x_eval, texts=t_eval) >= model.thresholds_)
        point |= {f"eval_{k}": v for k, v in held.items()}
    return point


def _measure(data: LabelSets, cfg: SetSimulationConfig, model: MultiLabelClassifier, seed_model: MultiLabelClassifier,
             pool: tuple[np.ndarray, list[str], np.ndarray], human: dict[int, np.ndarray], answers: list[Answer],
             at_random: set[int], adjudicated: set[int], rounds: list[dict[str, Any]], seconds: float) -> SetRunResult:
    x_pool, t_pool, y_pool = pool
    classes = model.classes_.tolist()
    raw = model.predict_proba_from_embeddings(x_pool, texts=t_pool, calibrated=False)
    cal = model.predict_proba_from_embeddings(x_pool, texts=t_pool)
    pred = cal >= model.thresholds_
    reviewed = np.zeros(len(y_pool), dtype=bool)
    reviewed[list(human)] = True
    final = pred.copy()
    for pos, row in human.items():
        final[pos] = row
    rest = ~reviewed
    ece_raw = per_label_ece(raw[rest], y_pool[rest]) if rest.any() else np.zeros(len(classes))
    ece_cal = per_label_ece(cal[rest], y_pool[rest]) if rest.any() else np.zeros(len(classes))
    wrong = int((pred != y_pool).any(axis=1).sum())
    seed_pred = seed_model.predict_proba_from_embeddings(x_pool, texts=t_pool) >= seed_model.thresholds_
    agreement = set_agreement_snapshot(set_answer_table(answers, classes))
    n_cal = len(human) if cfg.calibration_labels == "all" else len(at_random & set(human))
    return SetRunResult(
        dataset=data.name, strategy=cfg.strategy, seed=cfg.seed, items=len(y_pool), reviewed=int(reviewed.sum()),
        answers=len(answers), labels=set_scores(y_pool, final), no_review=set_scores(y_pool, seed_pred),
        model=set_scores(y_pool[rest], pred[rest]) if rest.any() else set_scores(y_pool[:0], pred[:0]),
        oracle_exact_match=1.0 - max(0, wrong - int(reviewed.sum())) / len(y_pool),
        reviewed_exact_match=float((final[reviewed] == y_pool[reviewed]).all(axis=1).mean()) if reviewed.any() else 1.0,
        ece_uncalibrated=float(ece_raw.mean()), ece_calibrated=float(ece_cal.mean()),
        per_label_ece={c: round(float(e), 4) for c, e in zip(classes, ece_cal)}, calibration_labels=n_cal,
        adjudicated=len(adjudicated),
        agreement={k: agreement.get(k) for k in ("n_items", "n_annotators", "exact_agreement", "krippendorff_alpha_masi")},
        config=dict(cfg.__dict__), rounds=rounds, seconds=seconds,
        final=[[c for c, y in zip(classes, row) if y] for row in final])
