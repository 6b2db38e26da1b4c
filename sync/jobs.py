"""The scheduler's jobs: sync, consolidation, metrics, retraining and the threshold review.

Each job takes a :class:`JobContext` and returns a small dict of what it did (kept with the job
run). Jobs read and write the state store only through ``StateStore``; the model versions live
in the ``ModelStore`` the ML backend also reads, so a promotion here is picked up there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from connector.auto_accept import in_force
from connector.checks import assess, outcomes, summarize
from connector.consolidation import (
    ADJUDICATED,
    ConsensusPolicy,
    annotator_quality,
    answer_table,
    apply_verdicts,
    consolidate,
    latest_verdicts,
    model_probabilities,
)
from connector.consolidation_sets import consolidate_sets, set_annotator_quality, set_answer_table
from connector.control_models import control_store
from connector.label_sets import decode_label_set, decode_spans, encode_label_set, encode_spans
from connector.model_store import ModelStore
from connector.retraining import FinetunePolicy, RetrainResult, retrain
from connector.retraining_sets import retrain_label_sets
from connector.snapshots import (
    AnnotatorQuality,
    CheckPart,
    ChecksSnapshot,
    CountsSnapshot,
    Evidence,
    ModelSnapshot,
    QualitySnapshot,
    RetrainSnapshot,
    StoppingSnapshot,
    ThresholdsSnapshot,
    read_latest,
    write_snapshot,
)
from connector.stopping import advance, choose_stop_set
from connector.store import StateStore
from connector.store.retention import RetentionPolicy
from connector.task_spec import TaskSpec
from sync.adjudication import adjudication_events, conflict_summaries, record_adjudicated, split_answers
from sync.control_agreement import task_agreement
from sync.controls import apply_set_verdicts, control_answers, set_conflict_summaries, settle_control, settle_spans

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    """What the jobs share: the store, the task, the model versions and (built on first use, since
    it needs the tool to be up) the sync service."""

    store: StateStore
    spec: TaskSpec
    models: ModelStore
    make_sync: Callable[[], Any] | None = None
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)  # what the metrics job prunes
    encoder: Any = None  # a loaded TextEncoder to reuse across retrainings (else loaded per run)
    cache_store: Any = None  # where embeddings are cached (default: the state store)
    callback_secret: str | None = None  # signs decision callbacks (HITL_CALLBACK_SECRET)
    _sync: Any = field(default=None, repr=False)

    @property
    def sync(self) -> Any:
        if self._sync is None:
            if self.make_sync is None:
                raise RuntimeError("no sync service configured")
            self._sync = self.make_sync()
        return self._sync


def primary_models(ctx: JobContext) -> ModelStore:
    """Where the primary control's versions live: the model root, or (a multi-label primary
    control) its own store under ``controls/`` (:mod:`connector.control_models`)."""
    spec = ctx.spec
    own = spec.model_dir(spec.primary) if spec.kind == "label" else None
    return ctx.models if own is None else control_store(ctx.models.root, own)


def consensus_policy(spec: TaskSpec) -> ConsensusPolicy:
    """The task's consensus policy; ``min_answers`` defaults to the task's ``overlap``."""
    if "min_answers" in spec.consensus.model_fields_set:
        return spec.consensus
    return spec.consensus.model_copy(update={"min_answers": spec.overlap})


class PassesFailed(RuntimeError):
    """Some passes of a sync job failed and the others ran: ``failed`` (pass -> error) and
    ``detail`` (what each pass did, or its error), which the scheduler keeps with the failed run."""

    def __init__(self, failed: dict[str, str], detail: dict[str, Any]) -> None:
        super().__init__("; ".join(f"{name}: {error}" for name, error in failed.items()))
        self.failed = failed
        self.detail = detail


def sync_job(ctx: JobContext) -> dict[str, Any]:
    """One sync cycle: predict, check for remote items deleted in the tool, route, push, pull,
    then settle what came back.

    A failing pass does not stop the others: with the ML backend or the tool's push down, answers
    are still pulled and settled. The job then raises :class:`PassesFailed`, so its run is
    recorded failed, with each pass's counts or error.
    """
    sync = ctx.sync
    out: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for name, run in (("predict", sync.predict_pass), ("check", sync.check_remote), ("route", sync.route_pass),
                      ("push", lambda: sync.push_pass(batch=sync.push_batch)), ("pull", sync.pull_pass),
                      ("consolidate", lambda: consolidate_job(ctx)),
                      ("decisions", lambda: decisions_job(ctx, callbacks=False))):
        try:
            result = run()
        except Exception as exc:
            log.exception("sync job: the %s pass failed; the other passes still run", name)
            failed[name] = f"{type(exc).__name__}: {exc}"
            out[name] = {"error": failed[name]}
            continue
        out[name] = result if isinstance(result, dict) else dict(result.counts)
    if failed:
        raise PassesFailed(failed, out)
    return out


def decisions_job(ctx: JobContext, *, callbacks: bool = True) -> dict[str, Any]:
    """On-line decisions (``sync/decisions.py``): outcomes of the settled reviews (a refused
    correction sent back for another answer), deadline fallbacks (the task taken out of the tool),
    then, with ``callbacks`` and a ``callback_secret``, the due callbacks."""
    from sync.callbacks import deliver_due
    from sync.decisions import DecisionService

    store = ctx.store
    if ctx.make_sync is None and not store.online.awaiting_review() and not callbacks:
        return {}
    service = DecisionService(store, ctx.spec)
    sync = ctx.sync if ctx.make_sync is not None else None

    def remote(item_id: int) -> str | None:
        return store.pushes.remote_ids([item_id], sync.tool.name, sync.project).get(item_id)

    def send_back(item_id: int, reason: str) -> None:
        if (task := remote(item_id)) is not None:
            answers = len(store.annotations.list([item_id], status="submitted"))
            sync.tool.send_back(sync.project, [(task, answers + 1, "correction_invalid")])

    def remove(item_id: int) -> None:
        if (task := remote(item_id)) is not None:
            sync.tool.delete(sync.project, [task])

    def escalate(item_id: int) -> None:
        if (item := store.items.get(item_id)) is not None:
            sync.adjudication.push([(item, "Escalated: no decision was given before the deadline.", "escalated")])

    out: dict[str, Any] = {"outcomes": service.settle_reviews(send_back if sync else None),
                           "deadlines": service.apply_deadlines(remove if sync else None,
                                                                escalate if sync else None)}
    if callbacks and ctx.callback_secret:
        policy = ctx.spec.decisions
        out["callbacks"] = deliver_due(store, ctx.callback_secret, attempts=policy.callback_attempts,
                                       timeout_s=policy.callback_timeout_s)
    return out


def _model_probabilities(store: StateStore, policy: ConsensusPolicy, items: dict[int, Any]) -> dict[int, dict[str, float]] | None:
    """The model's probabilities for ``items`` when the policy reads them (``crowdlab``), else ``None``."""
    if policy.method != "crowdlab":
        return None
    return model_probabilities(store.predictions.list(items), {i: it.model_version for i, it in items.items()})


def _answers(store: StateStore, spec: TaskSpec, answers: Iterable[Any] | None = None, *,
             sets: bool | None = None) -> tuple[Any, dict[int, Any], dict[int, str]]:
    """The annotators' submitted answers as a table (with the items only skipped), their items, and
    the known answers of the gold ones. ``answers``: the annotators' answers (by default every
    stored answer but the adjudicators', which are no independent votes)."""
    if answers is None:
        answers, _ = split_answers(store, store.annotations.list())
    if sets if sets is not None else (spec.kind == "label" and spec.multi_label):  # a set per answer
        table = set_answer_table(answers, spec.labels)
        items = store.items.get_many([*table.item_ids.tolist(), *table.skipped])
        gold = {i: g if isinstance(g := it.meta["gold_label"], list) else decode_label_set(g)
                for i, it in items.items() if it.is_gold and "gold_label" in (it.meta or {})}
        return table, items, gold
    table = answer_table(answers, spec.labels)
    items = store.items.get_many([*table.item_ids.tolist(), *table.skipped])
    gold = {i: it.meta["gold_label"] for i, it in items.items() if it.is_gold and "gold_label" in (it.meta or {})}
    return table, items, gold


def consolidate_job(ctx: JobContext, *, send_back: bool = True) -> dict[str, Any]:
    """Settle every answered item; send the unsettled ones back for another answer (once per
    answer count, so repeated runs do not repeat the request), and those the annotators cannot
    settle to adjudication (once each).

    The adjudicators' answers are pulled first (``sync/adjudication.py``): one settles its item
    (method ``adjudicated``). Items still unsettled at ``max_answers``, and in a tool that cannot
    send one item back (Argilla) disagreements at once, are pushed to the task's adjudication
    project after their label rows are saved. With the tool down, the stored answers and verdicts
    still settle what they can, and the run then fails with the tool's error.

    An item sent back has its label row saved only after the request went: that row is what
    says it was asked, so a crash between the two asks again (sending back is idempotent)
    instead of never asking. With ``send_back=False`` (or no sync service) nothing is asked of
    the tool."""
    store, spec = ctx.store, ctx.spec
    if spec.spans_primary:
        return _consolidate_spans(ctx, send_back=send_back)
    policy = consensus_policy(spec)
    sync = ctx.sync if send_back and ctx.make_sync is not None else None
    pull_error = _pull_adjudications(sync)
    ordinary, verdicts = split_answers(store, store.annotations.list())
    sets = spec.kind == "label" and spec.multi_label
    table, items, gold = _answers(store, spec, ordinary)
    current = np.array([items[i].is_current for i in table.item_ids.tolist()], dtype=bool)
    if len(table.item_ids) and not current.all():  # answers to an old version of an item do not count
        table.item_ids = table.item_ids[current]
        if sets:
            table.Y = table.Y[current]
        else:
            table.R = table.R[current]
    table.skipped = {i: n for i, n in table.skipped.items() if items[i].is_current}
    per_item = sync is None or sync.tool.per_item_overlap
    if sets:
        if policy.method == "crowdlab":
            log.info("a label set settles label by label: crowdlab falls back to per-label Dawid-Skene")
        set_policy = policy.model_copy(update={"method": "dawid_skene"}) if policy.method == "crowdlab" else policy
        result = consolidate_sets(table, set_policy, gold=gold, per_item_overlap=per_item)
        for r in result.rows:  # stored as one string (connector.label_sets)
            r.pop("unsettled_labels", None)
            if r["label"] is not None:
                r["label"] = encode_label_set(r["label"])
    else:
        result = consolidate(table, policy, gold=gold, per_item_overlap=per_item,
                             probabilities=_model_probabilities(store, policy, items))
    latest = latest_verdicts(verdicts)
    # an item sent to adjudication before any annotator answered it (an escalated decision) is
    # settled by its verdict alone
    unanswered = set(latest) - {int(r["item_id"]) for r in result.rows}
    current_unanswered = [i for i, it in store.items.get_many(unanswered).items() if it.is_current] if unanswered else []
    base = [*result.rows, *({"item_id": i, "label": None, "status": "unsettled", "method": policy.method,
                             "n_answers": 0, "agreement": None, "confidence": None, "reason": "no answers"}
                            for i in sorted(current_unanswered))]
    rows, invalid_verdicts = (apply_set_verdicts if sets else apply_verdicts)(base, latest, table.labels)
    adjudicated = {r["item_id"]: r for r in rows if r["method"] == ADJUDICATED}
    before = {lb.item_id: lb for lb in store.labels.list(status=None, item_ids=[r["item_id"] for r in rows])}
    # asked already: at this answer count, or (an item only skipped) since its first skip; the
    # saved label row is the only record of the request, so it is saved after the request went
    wanted = [(i, n, why) for i, n, why in result.send_back
              if i not in adjudicated and not (i in before and before[i].status == "unsettled"
                                               and (before[i].n_answers == n - 1 or before[i].reason == why == "skipped"))]
    if skipped := [i for i in table.skipped if items[i].state == "pushed"]:
        store.items.set_state(skipped, "annotated")  # answered (by a skip): no longer waiting for a first answer
    sent = _save_labels(ctx, sync, rows, wanted, before)
    pushed = 0
    if sync is not None and pull_error is None:  # each item once: the pushes table remembers
        queue = [(i, why) for i, why in result.adjudicate if i not in adjudicated]
        answers = (set_conflict_summaries if sets else conflict_summaries)(table, [i for i, _ in queue])
        pushed = sync.adjudication.push([(items[i], answers[i], why) for i, why in queue])["pushed"]
    if pull_error is not None:
        raise pull_error
    settled = sum(r["status"] == "settled" for r in rows)
    if table.invalid:
        log.warning("%d answers left out of consensus (e.g. %s)", len(table.invalid), table.invalid[0])
    if invalid_verdicts:
        log.warning("%d adjudicators' answers left out (e.g. %s)", len(invalid_verdicts), invalid_verdicts[0])
    out = {"items": len(rows), "settled": settled, "unsettled": len(rows) - settled, "sent_back": sent,
           "invalid_answers": len(table.invalid) + len(invalid_verdicts), "adjudicated": len(adjudicated),
           "to_adjudication": pushed}
    if spec.kind == "label" and spec.secondary:  # settled from the stored answers when needed (sync/controls.py)
        out["controls"] = {c.name: {"settled": len(settle_control(ordinary, spec, c, policy))} for c in spec.secondary}
    return out


def _pull_adjudications(sync: Any) -> Exception | None:
    """Pull the adjudicators' answers (with a sync service); the error, for the caller to raise
    after settling from the stored answers, or ``None``."""
    if sync is None:
        return None
    try:
        sync.adjudication.pull()
    except Exception as exc:  # noqa: BLE001 - re-raised by the caller, after settling from what is stored
        log.warning("pulling the adjudicators' answers failed (%s: %s); settling from the stored ones",
                    type(exc).__name__, exc)
        return exc
    return None


def _save_labels(ctx: JobContext, sync: Any, rows: list[dict[str, Any]], wanted: list[tuple[int, int, str]],
                 before: dict[int, Any]) -> int:
    """Save the consolidation's label rows; the count sent back. An adjudication that sets or
    changes a label goes on the item's history first (a crash between the two records it again,
    never not at all); the rows of the items ``wanted`` for another answer are saved only after the
    request went, with it (their row is the only record of it: a crash before asks again)."""
    store = ctx.store
    asking = {i for i, _, _ in wanted} if sync is not None else set()
    changed = [r for r in rows if r["method"] == ADJUDICATED
               and not (r["item_id"] in before and before[r["item_id"]].method == ADJUDICATED
                        and before[r["item_id"]].label == r["label"])]
    record_adjudicated(store, adjudication_events(changed, {i: lb.label for i, lb in before.items()}))
    store.labels.save([r for r in rows if r["item_id"] not in asking])
    if not asking:
        return 0
    sent = sync.send_back(wanted)
    store.labels.save([r for r in rows if r["item_id"] in asking], sent_back=wanted if sent else (),
                      tool=sync.tool.name, project=sync.project)
    return sent


def _consolidate_spans(ctx: JobContext, *, send_back: bool = True) -> dict[str, Any]:
    """An NER project's consolidation: each item's spans by span majority (:func:`settle_spans`:
    overlap matching, a span kept when more than half of the item's annotators drew it) once it has
    ``min_answers`` annotators' answers (method ``span_majority``; an item with fewer waits,
    unsettled). A tie (a span drawn by exactly half of them) leaves the item unsettled: sent back
    for one more answer below ``max_answers`` where the tool can ask one item (reason
    ``span_tie``), else pushed to the adjudication project with each annotator's spans. An
    adjudicator's answer settles its item on the adjudicator's spans (method ``adjudicated``; a skip
    settles nothing). Answers to older item versions do not count. The bookkeeping of a request
    (saved after it went) is :func:`consolidate_job`'s."""
    store, spec = ctx.store, ctx.spec
    policy = consensus_policy(spec)
    need = policy.min_answers or 1
    sync = ctx.sync if send_back and ctx.make_sync is not None else None
    pull_error = _pull_adjudications(sync)
    ordinary, verdict_rows = split_answers(store, store.annotations.list())
    items = store.items.get_many({int(a.item_id) for a in [*ordinary, *verdict_rows]})
    current = [a for a in ordinary if (it := items.get(int(a.item_id))) is not None and it.is_current]
    answers = control_answers(current, spec, spec.primary)
    settled = settle_spans(answers, min_answers=need)
    at_half = settle_spans(answers, min_answers=need, min_share=0.5 - 1e-9)  # a tie is kept here, not there
    who: dict[int, set[str]] = {}
    for a in answers:
        who.setdefault(int(a.item_id), set()).add(str(a.annotator))
    latest = [v for v in latest_verdicts(verdict_rows).values() if items[int(v.item_id)].is_current]
    verdicts = {int(v.item_id): v for v in control_answers(latest, spec, spec.primary)}
    per_item = sync is None or sync.tool.per_item_overlap
    rows: list[dict[str, Any]] = []
    wanted: list[tuple[int, int, str]] = []
    adjudicate: list[tuple[int, str]] = []
    for i in sorted(set(who) | set(verdicts)):
        n = len(who.get(i, ()))
        row = {"item_id": i, "label": None, "status": "unsettled", "method": "span_majority", "n_answers": n}
        if i in verdicts:
            rows.append(row | {"label": encode_spans(verdicts[i].value), "status": "settled", "method": ADJUDICATED,
                               "reason": f"adjudicated by {verdicts[i].annotator}",
                               "actor": str(verdicts[i].annotator)})
        elif i not in settled:
            rows.append(row | {"reason": f"{n} of {need} answers"})
        elif settled[i] == at_half[i]:
            rows.append(row | {"label": encode_spans(settled[i]), "status": "settled", "reason": ""})
        elif n < policy.max_answers and per_item:
            wanted.append((i, n + 1, "span_tie"))
            rows.append(row | {"reason": "span_tie"})
        else:
            adjudicate.append((i, f"needs_adjudication (span_tie after {n} answers)"))
            rows.append(row | {"reason": adjudicate[-1][1]})
    before = {lb.item_id: lb for lb in store.labels.list(status=None, item_ids=[r["item_id"] for r in rows])}
    # asked already at this answer count: the saved label row is the only record of the request
    wanted = [(i, n, why) for i, n, why in wanted
              if not (i in before and before[i].status == "unsettled" and before[i].n_answers == n - 1)]
    skipped = {int(a.item_id) for a in current if a.status == "skipped"} - set(who)
    if waiting := [i for i in skipped if items[i].state == "pushed"]:
        store.items.set_state(waiting, "annotated")  # answered (by a skip): no longer waiting for a first answer
    sent = _save_labels(ctx, sync, rows, wanted, before)
    pushed = 0
    if sync is not None and pull_error is None and adjudicate:  # each item once: the pushes table remembers
        shown = span_conflict_summaries(answers, items, [i for i, _ in adjudicate])
        pushed = sync.adjudication.push([(items[i], shown[i], why) for i, why in adjudicate])["pushed"]
    if pull_error is not None:
        raise pull_error
    n_settled = sum(r["status"] == "settled" for r in rows)
    out = {"items": len(rows), "settled": n_settled, "unsettled": len(rows) - n_settled, "sent_back": sent,
           "invalid_answers": 0, "adjudicated": sum(r["method"] == ADJUDICATED for r in rows),
           "to_adjudication": pushed}
    if spec.secondary:
        out["controls"] = {c.name: {"settled": len(settle_control(ordinary, spec, c, policy))} for c in spec.secondary}
    return out


def span_conflict_summaries(answers: list[Any], items: dict[int, Any], item_ids: list[int]) -> dict[int, str]:
    """Item id -> each annotator's spans for the adjudicator, one annotator a line (their latest
    answer): ``alice: Ada (PER), Oslo (LOC)``; ``bob: no entity``."""
    latest: dict[tuple[int, str], Any] = {}
    for a in answers:
        key = (int(a.item_id), str(a.annotator))
        if key not in latest or str(a.remote_updated_at) >= str(latest[key].remote_updated_at):
            latest[key] = a
    out: dict[int, str] = {}
    for i in item_ids:
        text = items[i].text
        lines = [f"{who}: " + (", ".join(f"{text[s:e]} ({lab})" for s, e, lab in sorted(a.value)) or "no entity")
                 for (item, who), a in sorted(latest.items()) if item == i]
        out[i] = "\n".join(lines) or "no answers"
    return out


def _annotator_quality(store: StateStore, spec: TaskSpec, policy: ConsensusPolicy,
                       answers: list[Any]) -> list[dict[str, Any]]:
    """Each annotator's gold accuracy and agreement with the consensus: on one label, or on whole
    label sets (:func:`connector.consolidation_sets.set_annotator_quality`); none for an NER project
    yet (its agreement is the pairwise span F1 of the agreement snapshot)."""
    if spec.spans_primary:
        return []
    if spec.kind == "label" and spec.multi_label:
        table, _, gold = _answers(store, spec, answers, sets=True)
        method = policy.method if policy.method in ("majority", "dawid_skene") else "dawid_skene"
        return set_annotator_quality(consolidate_sets(table, policy.model_copy(update={"method": method}), gold=gold),
                                     policy)
    table, items, gold = _answers(store, spec, answers, sets=False)
    result = consolidate(table, policy, gold=gold, probabilities=_model_probabilities(store, policy, items))
    return annotator_quality(result, policy)


def metrics_job(ctx: JobContext) -> dict[str, Any]:
    """Agreement, annotator quality and routing counts, kept as dated snapshots; then the old
    rows go (``ctx.retention``: job runs, snapshots, superseded predictions and decisions)."""
    store, spec = ctx.store, ctx.spec
    policy = consensus_policy(spec)
    ordinary, _ = split_answers(store, store.annotations.list())  # the adjudicators' answers are no votes
    agreement = task_agreement(store, spec, ordinary)  # every control's, a label set's too; current items only
    quality = [AnnotatorQuality.model_validate(q) for q in _annotator_quality(store, spec, policy, ordinary)]
    flagged = [q.annotator for q in quality if q.flagged]
    if flagged:
        log.warning("annotators below %.0f%% on gold: %s", 100 * policy.gold_min_accuracy, ", ".join(flagged))
    write_snapshot(store, agreement)
    write_snapshot(store, QualitySnapshot(annotators=quality, flagged=flagged))
    labels = store.labels.list()
    write_snapshot(store, CountsSnapshot(states=store.items.counts_by_state(), decisions=store.decisions.counts(),
                                         labels=label_counts(spec, [lb.label for lb in labels]),
                                         human_labels=len(labels)))
    write_snapshot(store, ModelSnapshot(current=primary_models(ctx).current()))
    checks = read_checks(ctx)
    pruned = store.retention.prune(ctx.retention)
    return {"items": agreement.n_items, "annotators": agreement.n_annotators,
            "fleiss_kappa": agreement.fleiss_kappa, "flagged": flagged, "pruned": pruned,
            "checks_paused": checks.paused}


def read_checks(ctx: JobContext) -> ChecksSnapshot:
    """Read every answered spot check, audit and gold item against the model (:mod:`connector.checks`)
    and keep it as a ``checks`` snapshot.

    When the spot checks taken since the latest threshold review show the auto-accepted error above
    the target with confidence, auto-accept pauses (the snapshot says so, with the threshold that
    failed; :func:`connector.auto_accept.in_force` reads it) and a threshold review runs at once. The
    pause holds, snapshot after snapshot, until a review certifies a higher threshold or another model
    version is served; then the spot checks taken after that review are read afresh.
    """
    store, policy = ctx.store, ctx.spec.thresholds
    found = outcomes(store)
    rows = [CheckPart(**vars(r), accuracy=r.accuracy) for r in summarize(found, delta=policy.delta)]
    version = primary_models(ctx).current()
    rule = in_force(store, ctx.spec)
    previous = read_latest(store, ChecksSnapshot)
    if rule.paused and previous is not None and previous.snapshot.model_version == version:
        held = previous.snapshot
        snapshot = ChecksSnapshot(rows=rows, model_version=version, paused=True,
                                  paused_threshold=held.paused_threshold, note=held.note)
        write_snapshot(store, snapshot)
        return snapshot
    review = read_latest(store, ThresholdsSnapshot)
    since = [o for o in found if review is None or o.decided_at >= review.at]
    verdict = assess(summarize(since, delta=policy.delta), version, target_error=policy.target_error)
    pause = verdict.pause and rule.accepts
    snapshot = ChecksSnapshot(rows=rows, model_version=version, paused=pause,
                              paused_threshold=rule.threshold if pause else None, note=verdict.note)
    write_snapshot(store, snapshot)
    if pause:
        log.warning("auto-accept paused: %s; reviewing the threshold", verdict.note)
        threshold_job(ctx)
    return snapshot


#: how an empty label set / span set is counted
NO_LABEL, NO_ENTITY = "(no label)", "(no entity)"


def label_counts(spec: TaskSpec, stored: list[str | None]) -> dict[str, int]:
    """Settled labels per class, from the stored labels: one label each; for a label set each of
    its labels (an empty set as :data:`NO_LABEL`); for an NER project each span's label (an item
    without an entity as :data:`NO_ENTITY`)."""
    if spec.spans_primary:
        spans = [decode_spans(v) or [] for v in stored if v is not None]
        return _count([label for found in spans for _, _, label in found] + [NO_ENTITY] * sum(not f for f in spans))
    if spec.kind == "label" and spec.multi_label:
        sets = [decode_label_set(v) or [] for v in stored if v is not None]
        return _count([label for found in sets for label in found] + [NO_LABEL] * sum(not f for f in sets))
    return _count(stored)


def _count(values: list[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


def training_set(store: StateStore, spec: TaskSpec) -> tuple[list[str], list[str], list[str], list[str]]:
    """Texts, labels, external ids and content hashes of the settled human labels of current
    items (plus auto-accepted model labels when the task's retraining policy says so)."""
    labels = {lb.item_id: lb.label for lb in store.labels.list() if lb.label is not None}
    if spec.retraining.include_auto_accepted:
        decisions = store.decisions.latest()
        accepted = [i for i, d in decisions.items() if d.action == "auto_accept" and i not in labels]
        preds = {p.item_id: p for p in store.predictions.list(accepted)}
        labels.update({i: preds[i].label for i in accepted if i in preds})
    items = store.items.get_many(labels)
    if spec.spans_primary:  # an NER project's stored spans decoded (connector.label_sets); a span of an unknown label left out
        known = set(spec.labels)
        spans = {i: [list(t) for t in decode_spans(lb) or [] if t[2] in known] for i, lb in labels.items()}
        keep = [i for i in sorted(labels) if i in items and items[i].is_current]
        return ([items[i].text for i in keep], [spans[i] for i in keep], [items[i].external_id for i in keep],
                [items[i].content_hash for i in keep])
    if spec.multi_label:  # stored sets decoded (connector.label_sets); a set with an unknown label left out
        known = set(spec.labels)
        sets = {i: decode_label_set(lb) for i, lb in labels.items()}
        keep = [i for i in sorted(labels) if i in items and items[i].is_current and set(sets[i]) <= known]
        return ([items[i].text for i in keep], [sets[i] for i in keep], [items[i].external_id for i in keep],
                [items[i].content_hash for i in keep])
    keep = [i for i in sorted(labels) if i in items and items[i].is_current and labels[i] in spec.labels]
    return ([items[i].text for i in keep], [labels[i] for i in keep], [items[i].external_id for i in keep],
            [items[i].content_hash for i in keep])


def control_training_set(store: StateStore, spec: TaskSpec, control: Any,
                         policy: ConsensusPolicy) -> tuple[list[str], list[Any], list[str], list[str]]:
    """:func:`training_set` for one of the task's other controls: its labels settle from the stored
    answers (:func:`sync.controls.settle_control`), the adjudicators' left out."""
    ordinary, _ = split_answers(store, store.annotations.list())
    labels = settle_control(ordinary, spec, control, policy)
    items = store.items.get_many(labels)
    keep = [i for i in sorted(labels) if i in items and items[i].is_current]
    return ([items[i].text for i in keep], [labels[i] for i in keep], [items[i].external_id for i in keep],
            [items[i].content_hash for i in keep])


def _retrain_controls(ctx: JobContext, corpus: list[str] | None, random: set[str]) -> dict[str, Any]:
    """Retrain each of the task's other controls on its settled labels, each in its own model store
    (no fine-tuned candidate, no stopping rule: those follow the primary control)."""
    store, spec = ctx.store, ctx.spec
    policy = spec.retraining.model_copy(update={"finetune": FinetunePolicy(enabled=False)})
    out: dict[str, Any] = {}
    for control in spec.secondary:
        texts, labels, ext, hashes = control_training_set(store, spec, control, consensus_policy(spec))
        models = control_store(ctx.models.root, control.name)
        try:
            if control.kind == "spans":  # a span tagger, promoted on held-out span F1 (connector/retraining_spans.py)
                from connector.retraining_spans import retrain_spans

                result = retrain_spans(texts, labels, ext, labels=control.labels, models=models, encoder=ctx.encoder,
                                       test_fraction=policy.test_fraction)
            elif control.multi_label:
                result = retrain_label_sets(texts, labels, ext, hashes, classes=control.labels, models=models,
                                            cache_store=ctx.cache_store or store, policy=policy, encoder=ctx.encoder,
                                            corpus=corpus, calibrate_on=[e in random for e in ext])
            elif len(set(labels)) < 2:
                out[control.name] = {"skipped": f"{len(labels)} settled labels of {len(set(labels))} classes"}
                continue
            else:
                result = retrain(texts, labels, ext, hashes, classes=control.labels, models=models, corpus=corpus,
                                 cache_store=ctx.cache_store or store, policy=policy, encoder=ctx.encoder,
                                 calibrate_on=[e in random for e in ext])
        except Exception as exc:  # one control's failure does not stop the others (nor the primary's)
            log.exception("retraining control %r failed", control.name)
            out[control.name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        out[control.name] = {"candidate": result.candidate, "promoted": result.promoted, "reason": result.reason,
                             "n_train": result.n_train, "n_test": result.n_test}
    return out


def retrain_job(ctx: JobContext, *, force: bool = False,
                transform_labels: Callable[[list[str]], list[str]] | None = None) -> dict[str, Any]:
    """Retrain when ``min_new_labels`` settled labels arrived since the last retraining (or when
    forced); then review the threshold. A promoted version is served by the ML backend's poller.
    The temperature is fitted on the labels of items drawn at random (:func:`drawn_at_random`).
    With ``[stopping] enabled`` the candidate also predicts the stop set (:func:`stop_set`) and the
    stopping rule is kept as a ``stopping`` snapshot (:mod:`connector.stopping`)."""
    store, spec = ctx.store, ctx.spec
    if spec.kind != "label":
        return {"skipped": f"a {spec.kind!r} task reviews outputs; it has no classifier to retrain"}
    texts, labels, ext, hashes = training_set(store, spec)
    last = read_latest(store, RetrainSnapshot)
    seen = last.snapshot.n_labels if last else 0
    if not force and len(labels) - seen < spec.retraining.min_new_labels:
        return {"skipped": f"{len(labels) - seen} new labels, fewer than {spec.retraining.min_new_labels}"}
    items = store.items.list() if spec.retraining.features != "embeddings" or spec.stopping.enabled else []
    corpus = [it.text for it in items] if spec.retraining.features != "embeddings" else None
    random = drawn_at_random(store)
    controls = _retrain_controls(ctx, corpus, random) if spec.secondary else None
    if spec.spans_primary:
        return _retrain_spans(ctx, texts, labels, ext, controls)
    if spec.multi_label:
        return _retrain_sets(ctx, texts, labels, ext, hashes, corpus, random, controls, items)
    previous = read_latest(store, StoppingSnapshot) if spec.stopping.enabled else None
    members = stop_set(store, spec, None if previous is None else previous.snapshot, items) \
        if spec.stopping.enabled else []
    result: RetrainResult = retrain(texts, labels, ext, hashes, classes=spec.labels, models=ctx.models, corpus=corpus,
                                    cache_store=ctx.cache_store or store, policy=spec.retraining,
                                    encoder=ctx.encoder, calibrate_on=[e in random for e in ext],
                                    transform_labels=transform_labels,
                                    stop_set=([it.text for it in members], [it.content_hash for it in members]))
    write_snapshot(store, RetrainSnapshot.model_validate(result.to_dict() | {"n_labels": len(labels)}))
    write_snapshot(store, ModelSnapshot(current=ctx.models.current()))
    stopping = None
    if result.stop_predictions is not None:
        stopping = advance(None if previous is None else previous.snapshot, candidate=result.candidate,
                           members=[(it.external_id, it.content_hash) for it in members],
                           predictions=result.stop_predictions, labels=spec.labels, policy=spec.stopping,
                           n_labels=len(labels))
        write_snapshot(store, stopping)
    # a model that stayed keeps its threshold review: that review's evidence was about this model
    review = threshold_job(ctx, evidence=result.evidence) if result.promoted and result.evidence.get("confidence") \
        else None
    return {"candidate": result.candidate, "promoted": result.promoted, "reason": result.reason,
            "n_train": result.n_train, "n_test": result.n_test, "encoded": result.encoded,
            "threshold": None if review is None else review.get("threshold"),
            **({} if stopping is None else {"stopping": {"kappa": stopping.kappa, "run": stopping.run,
                                                         "fired": stopping.fired}}),
            **({} if controls is None else {"controls": controls})}


def _retrain_sets(ctx: JobContext, texts: list[str], sets: list[Any], ext: list[str], hashes: list[str],
                  corpus: list[str] | None, random: set[str], controls: dict[str, Any] | None,
                  items: list[Any]) -> dict[str, Any]:
    """The retraining of a multi-label primary control (:mod:`connector.retraining_sets`), in its own
    model store; then, when promoted, the threshold review on its task scores. With ``[stopping]
    enabled`` the candidate decides every label of the stop set's items and the rule's kappa is
    pooled over those label decisions."""
    store, spec = ctx.store, ctx.spec
    models = primary_models(ctx)
    previous = read_latest(store, StoppingSnapshot) if spec.stopping.enabled else None
    members = stop_set(store, spec, None if previous is None else previous.snapshot, items) \
        if spec.stopping.enabled else []
    result = retrain_label_sets(texts, sets, ext, hashes, classes=spec.labels, models=models,
                                cache_store=ctx.cache_store or store, policy=spec.retraining, encoder=ctx.encoder,
                                corpus=corpus, calibrate_on=[e in random for e in ext],
                                stop_set=([it.text for it in members], [it.content_hash for it in members]))
    write_snapshot(store, RetrainSnapshot.model_validate(result.to_dict() | {"n_labels": len(sets)}))
    write_snapshot(store, ModelSnapshot(current=models.current()))
    stopping = None
    if result.stop_predictions is not None:
        stopping = advance(None if previous is None else previous.snapshot, candidate=result.candidate,
                           members=[(it.external_id, it.content_hash) for it in members],
                           predictions=result.stop_predictions, labels=spec.labels, policy=spec.stopping,
                           n_labels=len(sets), label_sets=True)
        write_snapshot(store, stopping)
    review = threshold_job(ctx, evidence=result.evidence) if result.promoted and result.evidence.get("confidence") \
        else None
    return {"candidate": result.candidate, "promoted": result.promoted, "reason": result.reason,
            "n_train": result.n_train, "n_test": result.n_test, "encoded": result.encoded,
            "threshold": None if review is None else review.get("threshold"),
            **({} if stopping is None else {"stopping": {"kappa": stopping.kappa, "run": stopping.run,
                                                         "fired": stopping.fired}}),
            **({} if controls is None else {"controls": controls})}


def _retrain_spans(ctx: JobContext, texts: list[str], spans: list[Any], ext: list[str],
                   controls: dict[str, Any] | None) -> dict[str, Any]:
    """An NER project's retraining: a span tagger on the settled spans in the primary control's own
    store, promoted when its span F1 on the held-out items beats the current version's
    (:mod:`connector.retraining_spans`); then, when promoted, the threshold review on the held-out
    items' span task scores, an item right when its spans are exactly the settled ones (with the
    task's ``evidence = "random"``, only items drawn at random count: audits, the seed set). No
    stopping rule."""
    from connector.retraining_spans import retrain_spans

    store, spec = ctx.store, ctx.spec
    models = primary_models(ctx)
    result = retrain_spans(texts, spans, ext, labels=spec.labels, models=models, encoder=ctx.encoder,
                           test_fraction=spec.retraining.test_fraction)
    write_snapshot(store, RetrainSnapshot(candidate=result.candidate, current=result.current, promoted=result.promoted,
                                          reason=result.reason, n_train=result.n_train, n_test=result.n_test,
                                          n_labels=len(spans), evidence=Evidence.model_validate(result.evidence)))
    write_snapshot(store, ModelSnapshot(current=models.current()))
    review = threshold_job(ctx, evidence=result.evidence) if result.promoted and result.evidence.get("confidence") \
        else None
    return {"candidate": result.candidate, "promoted": result.promoted, "reason": result.reason,
            "n_train": result.n_train, "n_test": result.n_test,
            "threshold": None if review is None else review.get("threshold"),
            **({} if controls is None else {"controls": controls})}


def stop_set(store: StateStore, spec: TaskSpec, previous: StoppingSnapshot | None,
             items: list[Any] | None = None) -> list[Any]:
    """The stopping rule's stop set, as current items: the members the latest ``stopping`` snapshot
    names (each at its current version; one no longer in the store left out), or, before any (or
    when none of them is left), the ``stop_set_size`` current items without a label whose content
    hash is lowest (:func:`connector.stopping.choose_stop_set`). Empty when there is no such item.
    ``items``: the current items, when the caller has them already."""
    current = {it.external_id: it for it in (store.items.list() if items is None else items)}
    if previous is not None and (kept := [current[e] for e in previous.external_ids if e in current]):
        return kept
    labelled = {lb.item_id for lb in store.labels.list(status=None)}
    pool = [(e, it.content_hash) for e, it in current.items() if it.id not in labelled]
    return [current[e] for e in choose_stop_set(pool, spec.stopping.stop_set_size)]


def threshold_job(ctx: JobContext, *, evidence: dict[str, list[float]] | None = None) -> dict[str, Any]:
    """Choose the auto-accept threshold from honest predictions on human labels (held-out and
    out-of-fold ones from the last retraining) with an upper confidence bound on the error."""
    from connector.thresholds import choose_accept_threshold

    store, policy = ctx.store, ctx.spec.thresholds
    if evidence is None:
        last = read_latest(store, RetrainSnapshot)
        honest = last.snapshot.evidence if last else Evidence()
    else:
        honest = Evidence.model_validate(evidence)
    conf = np.asarray(honest.confidence, dtype=float)
    correct = np.asarray(honest.correct, dtype=float).astype(bool)
    per_label = _per_label_evidence(ctx.spec, honest)
    if policy.evidence == "random":
        ext = honest.external_id
        if len(ext) != len(conf):
            return {"skipped": "the evidence does not name its items (retrain again to review the threshold)"}
        keep = np.isin(np.asarray(ext, dtype=object), list(drawn_at_random(store)))
        conf, correct = conf[keep], correct[keep]
        per_label = None if per_label is None else per_label[keep]
    if len(conf) < policy.min_evidence:
        return {"skipped": f"{len(conf)} labeled predictions ({policy.evidence} evidence), "
                           f"fewer than min_evidence={policy.min_evidence}"}
    latest = _latest_predictions(store)
    pool = np.array([p.confidence for p in latest], dtype=float)
    if per_label is not None and len(latest):  # a label set: a threshold per label (connector/thresholds_sets.py)
        from connector.thresholds_sets import choose_label_thresholds

        chosen = choose_label_thresholds(honest.labels, per_label, correct, _pool_label_confidence(latest, honest.labels),
                                         target_error=policy.target_error, delta=policy.delta,
                                         review_band=tuple(policy.review_band), min_n=policy.min_n)
        choice, fields = chosen.choice, chosen.to_dict()
    else:
        choice = choose_accept_threshold(conf, correct, target_error=policy.target_error, delta=policy.delta,
                                         pool_confidence=pool if len(pool) else None,
                                         review_band=tuple(policy.review_band), min_n=policy.min_n)
        fields = choice.to_dict()
    write_snapshot(store, ThresholdsSnapshot.model_validate(
        fields | {"adapt": policy.adapt, "target_error": policy.target_error, "delta": policy.delta,
                  "evidence": policy.evidence, "n_evidence": len(conf)}))
    log.info("threshold review: %s", choice.note)
    return {"threshold": choice.threshold, "review_rate": choice.review_rate, "meets_target": choice.meets_target,
            "within_band": choice.within_band, "note": choice.note}


#: routing reasons of items drawn uniformly at random: their labels are unbiased threshold evidence
#: and what the temperature is fitted on. Not ``spot_check``: drawn only among the items the model
#: accepts, the confident stratum, so they would tune the temperature to its easiest items.
RANDOM_REASONS = frozenset({"seed", "audit"})


def drawn_at_random(store: StateStore) -> set[str]:
    """External ids of labelled items drawn at random: the seed set (seed labels, or items routed
    as ``seed``) and the router's audits."""
    labels = store.labels.list(status=None)
    decisions = store.decisions.latest([lb.item_id for lb in labels])
    ids = {lb.item_id for lb in labels
           if lb.method == "seed" or (lb.item_id in decisions and decisions[lb.item_id].reason in RANDOM_REASONS)}
    return {it.external_id for it in store.items.get_many(ids).values()}


def _per_label_evidence(spec: TaskSpec, honest: Evidence) -> np.ndarray | None:
    """A label set's per-label decision confidences ``(n, k)`` from the evidence, when the task's
    primary control is a label set with ``[thresholds] per_label`` and the evidence has them for
    every item (older payloads do not)."""
    if not (spec.kind == "label" and spec.multi_label and spec.thresholds.per_label and honest.labels) \
            or len(honest.label_confidence) != len(honest.confidence):
        return None
    return np.asarray(honest.label_confidence, dtype=float).reshape(len(honest.confidence), len(honest.labels))


def _pool_label_confidence(predictions: list[Any], labels: list[str]) -> np.ndarray:
    """``(n, k)``: each latest prediction's decision confidence per label (``p`` when its set has the
    label, ``1 - p`` when not; a label it lacks counts as unsure, 0.5)."""
    from connector.auto_accept import label_confidences
    from sync.controls import primary_probabilities

    rows = []
    for p in predictions:
        conf = label_confidences(primary_probabilities(p.probabilities), decode_label_set(p.label) or [])
        rows.append([conf.get(lb, 0.5) for lb in labels])
    return np.asarray(rows, dtype=float).reshape(len(predictions), len(labels))


def _latest_predictions(store: StateStore) -> list[Any]:
    items = store.items.list()
    by_item = {p.item_id: p for p in store.predictions.list([it.id for it in items if it.model_version])}
    return list(by_item.values())
