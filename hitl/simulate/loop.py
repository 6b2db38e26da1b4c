"""``hitl simulate``: the whole loop in rounds, with simulated annotators, on a labelled data set.

Each round runs the real parts: the sync service's predict, route and push passes (the model is
served in-process from the model store), simulated annotators who answer the true label with a
set accuracy (two answers per item, a third when they disagree: the consensus policy's send-back),
the pull pass, consolidation, and the scheduler's retraining (promotion only when better on
held-out labels) with its threshold review. Against the in-memory ``offline`` tool
(``connector.tools.offline``: tasks and answers kept in memory, filed in the store as tool
``offline``) or against a real Label Studio (tasks, users and annotations made
through its API). Embeddings are cached in a store of their own, shared by every run on a data set.

Reported per run (:class:`RunResult`): final label accuracy (human consensus for reviewed items,
the final model's label for the rest) against the share of items reviewed and the human answers
spent, compared with no review (the seed model labels everything) and with an oracle that reviews
exactly the final model's errors; the realized error among auto-accepted items against the target;
ECE of the final model before and after temperature scaling on the items no human labelled, its
temperatures and how many labels (drawn at random) they were fitted on;
agreement; per round, the model's accuracy on a held-out evaluation slice (for the labels
active learning needs against random picks) and the stopping rule's kappa and verdict
(:mod:`connector.stopping`); the first round at which the rule fired, with the label accuracy there
(against the full budget's). With ``stop_early`` the run ends at that round.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from connector.calibration import expected_calibration_error
from connector.consolidation import SEND_BACK_REASONS, agreement_snapshot, answer_table
from connector.datasets import LabeledTexts
from connector.model_store import ModelStore, model_ref
from connector.retraining import EmbeddingCache, encoder_key
from connector.snapshots import RetrainSnapshot, StoppingSnapshot, ThresholdsSnapshot, read_history, read_latest
from connector.store import StateStore, content_hash
from connector.task_spec import TaskSpec
from connector.tools.offline import OfflineTool
from sync.jobs import JobContext, consensus_policy, consolidate_job, retrain_job
from sync.service import SyncService

log = logging.getLogger(__name__)


@dataclass
class SimulationConfig:
    """One simulated project. ``budget``: share of items humans may review; ``batch``: items sent
    to review per round; ``seed_size``: randomly picked items labelled before the first model;
    ``audit_share``: share of each round's seats given to uniform random audits (with the seed set,
    the threshold rule's evidence and the temperature's labels); ``calibration_labels``: ``random``
    (those labels) or ``all`` (every training label) for the temperature; ``anchoring``: the chance
    that an annotator who is shown the model's suggestion copies it instead of judging the item;
    ``show_suggestion``: the task file's setting (``except_checks``: checks are shown blind);
    ``stop_kappa``, ``stop_window``, ``stop_set_size``: the stopping rule (the task file's
    ``[stopping]``), and ``stop_early``: end the run at the round the rule fires."""

    budget: float = 0.15
    batch: int = 20
    seed_size: int = 50
    annotators: int = 5
    annotator_accuracy: float = 0.97
    overlap: int = 2
    max_answers: int = 3
    strategy: str = "least_confidence"
    target_error: float = 0.05
    delta: float = 0.05
    spot_check_rate: float = 0.0
    audit_share: float = 0.2
    eval_fraction: float = 0.0
    C: float = 30.0
    features: str = "embeddings"
    C_lexical: float = 1000.0
    folds: int = 3
    calibration_labels: str = "random"
    test_fraction: float = 0.1
    accuracy_drop_alpha: float | None = None
    anchoring: float = 0.0
    show_suggestion: str = "except_checks"
    stop_kappa: float = 0.99
    stop_window: int = 3
    stop_set_size: int = 500
    stop_early: bool = False
    finetune: bool = False  # [retraining.finetune] enabled (`hitl simulate` turns it on: --finetune, its default);
    # off here, since budget-bound fine-tuning makes a run depend on the machine's speed
    seed: int = 0


class SimulatedAnnotators:
    """``n`` annotators, each right with probability ``accuracy``; a wrong answer is uniform over
    the other labels. With ``anchoring`` > 0, an annotator shown the model's suggestion copies it
    with that probability (right or wrong) and judges the item otherwise. Draws follow ``seed``."""

    def __init__(self, labels: Sequence[str], *, n: int, accuracy: float, seed: int, anchoring: float = 0.0) -> None:
        self.labels = list(labels)
        self.names = [f"annotator-{k + 1}" for k in range(n)]
        self.accuracy = accuracy
        self.anchoring = anchoring
        self.rng = np.random.default_rng(seed)

    def answer(self, truth: str, exclude: set[str], shown: str | None = None) -> tuple[str, str]:
        """``(annotator, label)`` from an annotator who has not answered this item yet; ``shown``: the
        suggestion the annotator sees, if any."""
        free = [a for a in self.names if a not in exclude]
        who = free[int(self.rng.integers(len(free)))]
        if shown is not None and self.anchoring > 0 and self.rng.random() < self.anchoring:
            return who, shown
        if self.rng.random() < self.accuracy:
            return who, truth
        others = [lb for lb in self.labels if lb != truth]
        return who, others[int(self.rng.integers(len(others)))]


class InProcessPredictor:
    """The current model version, served in-process (what the ML backend answers), with the
    embeddings from the cache (one cache per encoder: a fine-tuned version embeds with its own).
    ``reembed_s`` / ``reembedded``: time spent and texts embedded by fine-tuned encoders (the cost of
    re-scoring the pool after promoting one)."""

    def __init__(self, models: ModelStore, cache: EmbeddingCache) -> None:
        self.models, self.cache = models, cache
        self._loaded: tuple[str, Any] | None = None
        self._versions: dict[str, tuple[Any, EmbeddingCache, bool]] = {}
        self.reembed_s, self.reembedded = 0.0, 0

    def serving_version(self) -> str | None:
        return self.models.current()

    def version(self, version: str) -> tuple[Any, EmbeddingCache]:
        """A version's classifier and the embedding cache of its encoder (loaded once)."""
        if version not in self._versions:
            clf, meta = self.models.load(version, encoder=self.cache.encoder)
            key = encoder_key(meta.encoder)
            cache = self.cache if key == self.cache.key else EmbeddingCache(self.cache.store, clf.encoder, key)
            self._versions[version] = (clf, cache, bool(meta.encoder.get("weights")))
        return self._versions[version][:2]

    def model(self) -> tuple[str, Any]:
        """The current version and its classifier (loaded once per version)."""
        version = self.models.current()
        if version is None:
            raise RuntimeError("no model version yet")
        return version, self.version(version)[0]

    def embed(self, version: str, texts: Sequence[str]) -> np.ndarray:
        """``texts`` embedded by the encoder of ``version``."""
        cache = self.version(version)[1]
        t0 = time.perf_counter()
        x, n = cache.encode(list(texts), [content_hash(t) for t in texts])
        if self._versions[version][2]:  # a fine-tuned encoder of the version's own
            self.reembed_s += time.perf_counter() - t0
            self.reembedded += n
        return x

    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        version, clf = self.model()
        x = self.embed(version, texts)
        probs = clf.predict_proba_from_embeddings(x, texts=texts)
        labels = clf.classes_.tolist()
        top = probs.argmax(axis=1)
        return [{"label": labels[top[i]], "confidence": float(probs[i, top[i]]), "model_version": version,
                 "probabilities": dict(zip(labels, map(float, probs[i])))} for i in range(len(texts))]


class Annotating(Protocol):
    """Where simulated annotators read an item's suggestion and write their answer."""

    def shown(self, item_id: int, external_id: str) -> str | None: ...

    def annotate(self, item_id: int, external_id: str, annotator: str, label: str) -> None: ...


class OfflineAnnotating:
    """Simulated annotators writing their answers into the offline tool."""

    def __init__(self, sync: SyncService) -> None:
        self.sync = sync

    def shown(self, item_id: int, external_id: str) -> str | None:
        """The label the item's task suggests to the annotator (``None`` when shown blind)."""
        project = self.sync.tool.projects[self.sync.project]
        pushed = project.items[project.tasks[external_id]]
        return _suggested(pushed.result)

    def annotate(self, item_id: int, external_id: str, annotator: str, label: str) -> None:
        self.sync.tool.annotate(self.sync.project, external_id, annotator, [label])


class LabelStudioAnnotating:
    """Simulated annotators as Label Studio users, answering through its API."""

    def __init__(self, sync: SyncService, names: Sequence[str]) -> None:
        self.sync = sync
        ls = sync.tool._ls
        stamp = time.time_ns()
        self.users = {name: ls.users.create(username=f"{name}-{stamp}", email=f"{name}-{stamp}@example.com",
                                            password=f"pw-{stamp}").id for name in names}

    def shown(self, item_id: int, external_id: str) -> str | None:
        """The label the task's prediction suggests in Label Studio (``None`` when it has none)."""
        task = self.sync.store.pushes.remote_ids([item_id], self.sync.tool.name, self.sync.project)[item_id]
        predictions = self.sync.tool._ls.tasks.get(id=int(task)).predictions or []
        return _suggested(predictions[-1].get("result") if predictions else None)

    def annotate(self, item_id: int, external_id: str, annotator: str, label: str) -> None:
        task = self.sync.store.pushes.remote_ids([item_id], self.sync.tool.name, self.sync.project)[item_id]
        self.sync.tool.annotate(task, [self.sync.control.result([label])], completed_by=self.users[annotator])


def _suggested(result: Sequence[dict[str, Any]] | None) -> str | None:
    """The first choice a Label Studio ``result`` selects (``None`` for no result)."""
    for r in result or []:
        choices = (r.get("value") or {}).get("choices") or []
        if choices:
            return str(choices[0])
    return None


@dataclass
class RunResult:
    """What one simulated run measured (see the module docstring)."""

    dataset: str
    strategy: str
    seed: int
    items: int
    reviewed: int
    answers: int
    label_accuracy: float
    no_review_accuracy: float
    oracle_accuracy: float
    model_accuracy: float
    auto_accepted: int
    auto_accept_error: float | None
    threshold: float | None
    target_error: float
    threshold_evidence: int
    threshold_certified: bool
    estimated_error: float | None
    audits: int
    audit_label_error: float | None
    ece_uncalibrated: float
    ece_calibrated: float
    temperature: float
    lex_temperature: float
    calibration_labels: int
    versions: int
    promoted: int
    agreement: dict[str, Any]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    stop_reviewed: int | None = None  # reviewed items at the first round the stopping rule fired (None: never)
    stop_review_share: float | None = None
    stop_label_accuracy: float | None = None  # the labels' accuracy had the loop stopped there
    stopped_early: bool = False  # the run ended there (stop_early), not at the budget
    finetuned_tried: int = 0  # retrainings that fine-tuned an encoder
    finetuned_promoted: int = 0  # versions served with an encoder of their own
    reembed_s: float = 0.0  # seconds spent embedding with fine-tuned encoders (re-scoring the pool after a promotion)
    reembedded: int = 0

    @property
    def review_share(self) -> float:
        return self.reviewed / self.items

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__) | {"review_share": self.review_share}


def task_spec(data: LabeledTexts, cfg: SimulationConfig) -> TaskSpec:
    """The task file of a simulated project."""
    return TaskSpec(
        name=f"simulation {data.name}", labels=sorted(set(data.labels)), overlap=cfg.overlap,
        show_suggestion=cfg.show_suggestion,
        routing={"accept_threshold": 1.0, "spot_check_rate": cfg.spot_check_rate, "audit_share": cfg.audit_share,
                 "review_budget": cfg.batch, "strategy": "random" if cfg.strategy == "random" else cfg.strategy,
                 "seed": cfg.seed},
        consensus={"min_answers": cfg.overlap, "max_answers": cfg.max_answers},
        retraining={"min_new_labels": 1, "min_test": 5, "C": cfg.C, "features": cfg.features,
                    "C_lexical": cfg.C_lexical, "folds": cfg.folds, "test_fraction": cfg.test_fraction,
                    "calibration_labels": cfg.calibration_labels,
                    "accuracy_drop_alpha": cfg.accuracy_drop_alpha, "finetune": {"enabled": cfg.finetune}},
        stopping={"kappa": cfg.stop_kappa, "window": cfg.stop_window, "stop_set_size": cfg.stop_set_size},
        # the review capacity is the budget: a certified threshold is raised so that the budget's share
        # of the items stays below it (a subset of the certified items is accepted), and review goes on
        thresholds={"target_error": cfg.target_error, "delta": cfg.delta, "min_evidence": 30,
                    "review_band": (cfg.budget, 1.0)})


def run(data: LabeledTexts, cfg: SimulationConfig, *, cache_store: StateStore, encoder: Any,
        workdir: Path | None = None, label_studio: tuple[str, str] | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None) -> RunResult:
    """One simulated project from an empty store to the review budget; see :class:`RunResult`."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    n = len(data.texts)
    order = rng.permutation(n)
    n_eval = round(cfg.eval_fraction * n)
    eval_idx, pool_idx = order[:n_eval], order[n_eval:]
    truth = {f"item-{i}": data.labels[i] for i in pool_idx}
    spec = task_spec(data, cfg)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        store = StateStore(f"sqlite:///{tmp}/state.db")
        store.migrate()
        models = ModelStore(Path(tmp) / "models")
        cache = EmbeddingCache(cache_store, encoder, encoder_key({"model": model_ref(encoder), "max_length": encoder.max_length,
                                                                  "normalize": encoder.normalize,
                                                                  "chunk": getattr(encoder, "chunk", False)}))
        predictor = InProcessPredictor(models, cache)
        if label_studio is not None:
            from connector.tools.label_studio import LabelStudioTool

            spec = spec.model_copy(update={"name": f"{spec.name} seed {cfg.seed} {time.time_ns()}"})
            sync = SyncService(store, spec, LabelStudioTool(*label_studio), predictor)
        else:
            sync = SyncService(store, spec, OfflineTool(project="offline simulation"), predictor)
        ctx = JobContext(store, spec, models, make_sync=lambda: sync, encoder=encoder, cache_store=cache_store)
        annotators = SimulatedAnnotators(spec.labels, n=cfg.annotators, accuracy=cfg.annotator_accuracy, seed=cfg.seed + 1,
                                         anchoring=cfg.anchoring)
        annotate = OfflineAnnotating(sync) if label_studio is None else LabelStudioAnnotating(sync, annotators.names)
        store.items.ingest([{"id": f"item-{i}", "text": data.texts[i]} for i in pool_idx])
        ids = {it.external_id: it.id for it in store.items.list()}
        budget = int(cfg.budget * len(pool_idx))
        # the seed: random items, labelled like every other reviewed item, before any model exists
        seed_ext = [f"item-{i}" for i in pool_idx[:cfg.seed_size]]
        _label_directly(ctx, sync, seed_ext, ids, truth, annotators, annotate)
        seed_result = retrain_job(ctx, force=True)
        seed_version = seed_result.get("candidate")
        x_eval = cache.encode([data.texts[i] for i in eval_idx], [content_hash(data.texts[i]) for i in eval_idx])[0] \
            if n_eval else None
        y_eval = [data.labels[i] for i in eval_idx]
        x_pool = cache.encode([data.texts[i] for i in pool_idx], [content_hash(data.texts[i]) for i in pool_idx])[0]
        t_pool = [data.texts[i] for i in pool_idx]
        t_eval = [data.texts[i] for i in eval_idx]
        pool_ids = [ids[f"item-{i}"] for i in pool_idx]
        y_pool = np.array([data.labels[i] for i in pool_idx])
        rounds: list[dict[str, Any]] = []
        while True:
            reviewed = len(store.labels.list(status=None))
            _record_round(rounds, store, predictor, (x_eval, t_eval, y_eval), reviewed, (x_pool, t_pool, y_pool),
                          pool_ids)
            if progress:
                progress(rounds[-1])
            left = budget - reviewed
            if left <= 0 or (cfg.stop_early and rounds[-1].get("stopping_fired")):
                break
            sync.router = sync.router.__class__(sync.router.policy.model_copy(update={"review_budget": min(cfg.batch, left)}))
            sync.predict_pass()
            sync.route_pass()
            pushed = sync.push_pass().counts.get("pushed", 0)
            if not pushed:
                break
            for it in store.items.list(state="pushed"):
                for _ in range(spec.overlap):
                    _answer(store, it, truth, annotators, annotate)
            _settle(ctx, sync, store, truth, annotators, annotate, spec)
            retrain_job(ctx, force=True)
        # the end: the final model scores and routes what is left (no more pushes)
        sync.predict_pass()
        sync.route_pass()
        result = _measure(data, cfg, store, models, predictor, truth, ids, seed_version, rounds, spec)
        store.close()
    result.seconds = time.perf_counter() - t0
    return result


def _answer(store: StateStore, item: Any, truth: dict[str, str], annotators: SimulatedAnnotators,
            annotate: Annotating) -> None:
    done = {a.annotator for a in store.annotations.list([item.id])}
    shown = annotate.shown(item.id, item.external_id) if annotators.anchoring > 0 else None
    who, label = annotators.answer(truth[item.external_id], done, shown)
    annotate.annotate(item.id, item.external_id, who, label)


def _settle(ctx: JobContext, sync: SyncService, store: StateStore, truth: dict[str, str],
            annotators: SimulatedAnnotators, annotate: Annotating, spec: TaskSpec) -> None:
    """Pull, consolidate, and answer once more each item sent back, until none is."""
    max_answers = consensus_policy(spec).max_answers
    while True:
        sync.pull_pass()
        consolidate_job(ctx)
        again = [lb.item_id for lb in store.labels.list(status="unsettled")
                 if lb.reason in SEND_BACK_REASONS and lb.n_answers < max_answers]
        if not again:
            return
        for it in store.items.get_many(again).values():
            _answer(store, it, truth, annotators, annotate)


def _label_directly(ctx: JobContext, sync: SyncService, external_ids: list[str], ids: dict[str, int],
                    truth: dict[str, str], annotators: SimulatedAnnotators, annotate: Annotating) -> None:
    """Push the seed items without a model's suggestion and have them answered."""
    store, spec = ctx.store, ctx.spec
    store.decisions.record([{"item_id": ids[e], "action": "review", "reason": "seed", "priority": 1.0}
                            for e in external_ids])
    sync.push_pass()
    for it in store.items.get_many([ids[e] for e in external_ids]).values():
        for _ in range(spec.overlap):
            _answer(store, it, truth, annotators, annotate)
    _settle(ctx, sync, store, truth, annotators, annotate, spec)


def _record_round(rounds: list[dict[str, Any]], store: StateStore, predictor: InProcessPredictor,
                  evaluation: tuple[np.ndarray | None, list[str], list[str]], reviewed: int,
                  pool: tuple[np.ndarray, list[str], np.ndarray], pool_ids: list[int]) -> None:
    """One point of the curves: reviewed items, answers, and the labels' accuracy if the loop
    stopped here (human labels where there are, the current model's elsewhere)."""
    point: dict[str, Any] = {"reviewed": reviewed, "answers": len(store.annotations.list(status="submitted")),
                             "version": predictor.serving_version()}
    stopping = read_latest(store, StoppingSnapshot)
    if stopping is not None:  # after the latest retraining: its candidate against the one before
        point["stopping_kappa"] = stopping.snapshot.kappa
        point["stopping_fired"] = stopping.snapshot.fired
    (x_eval, t_eval, y_eval), (x_pool, t_pool, y_pool) = evaluation, pool
    if predictor.serving_version():
        version, clf = predictor.model()  # the version the sync passes serve, already loaded
        x_pool = predictor.embed(version, t_pool)
        x_eval = predictor.embed(version, t_eval) if x_eval is not None else None
        model = clf.classes_[clf.predict_proba_from_embeddings(x_pool, texts=t_pool).argmax(1)]
        human = {lb.item_id: lb.label for lb in store.labels.list() if lb.label is not None}
        final = np.array([human.get(i, m) for i, m in zip(pool_ids, model)])
        point["label_accuracy"] = float((final == y_pool).mean())
        point["model_errors"] = int((model != y_pool).sum())
        point["review_share"] = reviewed / len(y_pool)
        if x_eval is not None and len(y_eval):
            def accuracy(c: Any) -> float:
                return float((c.classes_[c.predict_proba_from_embeddings(x_eval, texts=t_eval).argmax(1)]
                              == np.array(y_eval)).mean())

            point["eval_accuracy"] = accuracy(clf)
            newest = point["newest"] = predictor.models.versions()[-1]  # trained on every label so far
            if newest == predictor.serving_version():
                point["eval_accuracy_newest"] = point["eval_accuracy"]
            else:
                other, _ = predictor.version(newest)
                x_eval = predictor.embed(newest, t_eval)
                point["eval_accuracy_newest"] = accuracy(other)
        point["reembed_s"], point["reembedded"] = round(predictor.reembed_s, 3), predictor.reembedded
    rounds.append(point)


def _measure(data: LabeledTexts, cfg: SimulationConfig, store: StateStore, models: ModelStore,
             predictor: InProcessPredictor,
             truth: dict[str, str], ids: dict[str, int], seed_version: str | None, rounds: list[dict[str, Any]],
             spec: TaskSpec) -> RunResult:
    items = store.items.get_many(ids.values())
    ext = [items[i].external_id for i in ids.values()]
    texts = [items[i].text for i in ids.values()]
    y = np.array([truth[e] for e in ext])
    version, clf = predictor.model()
    x = predictor.embed(version, texts)
    raw = clf.predict_proba_from_embeddings(x, texts=texts, calibrated=False)
    cal = clf.predict_proba_from_embeddings(x, texts=texts)
    model_label = clf.classes_[cal.argmax(1)]
    human = {lb.item_id: lb.label for lb in store.labels.list(status=None)}
    answers = store.annotations.list(status="submitted")
    by_item: dict[int, list[str]] = {}
    for a in answers:
        by_item.setdefault(a.item_id, []).append(a.value[0])
    final = []
    for k, item_id in enumerate(ids.values()):
        if item_id in human:
            label = human[item_id] or max(set(by_item[item_id]), key=by_item[item_id].count)
        else:
            label = model_label[k]
        final.append(label)
    final = np.array(final)
    reviewed = np.array([i in human for i in ids.values()])
    seed_clf = predictor.version(seed_version)[0] if seed_version else clf
    x_seed = predictor.embed(seed_version, texts) if seed_version else x
    no_review = float((seed_clf.classes_[seed_clf.predict_proba_from_embeddings(x_seed, texts=texts).argmax(1)]
                       == y).mean())
    errors = int((model_label != y).sum())
    oracle = 1.0 - max(0, errors - int(reviewed.sum())) / len(y)
    decisions = store.decisions.latest(ids.values())
    accepted = np.array([decisions.get(i) is not None and decisions[i].action == "auto_accept" and i not in human
                         for i in ids.values()])
    y_codes = np.searchsorted(clf.classes_, y)
    rest = ~reviewed
    threshold = read_latest(store, ThresholdsSnapshot)
    audited = [i for i, d in decisions.items() if d.reason == "audit" and i in human]
    final_of = dict(zip(ids.values(), final))
    retrains = read_history(store, RetrainSnapshot)
    fired = next((p for p in rounds if p.get("stopping_fired") and "label_accuracy" in p), None)
    metas = [models.meta(v) for v in models.versions()]
    return RunResult(
        dataset=data.name, strategy=cfg.strategy, seed=cfg.seed, items=len(y), reviewed=int(reviewed.sum()),
        answers=len(answers), label_accuracy=float((final == y).mean()), no_review_accuracy=no_review,
        oracle_accuracy=oracle, model_accuracy=float((model_label[rest] == y[rest]).mean()) if rest.any() else 1.0,
        auto_accepted=int(accepted.sum()),
        auto_accept_error=float((model_label[accepted] != y[accepted]).mean()) if accepted.any() else None,
        threshold=None if threshold is None else threshold.snapshot.threshold, target_error=cfg.target_error,
        threshold_evidence=0 if threshold is None else threshold.snapshot.n_evidence or 0,
        threshold_certified=bool(threshold is not None and threshold.snapshot.meets_target),
        estimated_error=None if threshold is None else threshold.snapshot.error_rate,
        audits=len(audited),
        audit_label_error=float(np.mean([final_of[i] != truth[items[i].external_id] for i in audited])) if audited else None,
        ece_uncalibrated=expected_calibration_error(raw[rest], y_codes[rest]) if rest.any() else 0.0,
        ece_calibrated=expected_calibration_error(cal[rest], y_codes[rest]) if rest.any() else 0.0,
        temperature=float(clf.temperature_), lex_temperature=float(clf.lex_temperature_),
        calibration_labels=int(models.meta(models.current()).metrics.get("calibration_labels") or 0),
        versions=len(models.versions()),
        promoted=sum(1 for r in retrains if r.snapshot.promoted),
        agreement={k: v for k, v in agreement_snapshot(answer_table(answers, spec.labels)).items()
                   if k in ("n_items", "n_annotators", "percent_agreement", "fleiss_kappa", "krippendorff_alpha")},
        rounds=rounds,
        stop_reviewed=None if fired is None else int(fired["reviewed"]),
        stop_review_share=None if fired is None else float(fired["review_share"]),
        stop_label_accuracy=None if fired is None else float(fired["label_accuracy"]),
        finetuned_tried=sum(1 for m in metas if "finetuned" in (m.metrics.get("candidates") or {})),
        finetuned_promoted=sum(1 for m in metas if m.metrics.get("promoted") and m.encoder.get("weights")),
        reembed_s=round(predictor.reembed_s, 2), reembedded=predictor.reembedded,
        stopped_early=bool(cfg.stop_early and fired is not None and fired is rounds[-1]
                           and fired["reviewed"] < int(cfg.budget * len(y))))
