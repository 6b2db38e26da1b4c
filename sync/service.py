"""The sync passes over any annotation tool: predict, route, push, pull answers back, exactly once.

Each pass reads what to do from the state store and writes what it did back, so a restart at any
point resumes: a push is recorded ``pending`` before the remote call and ``confirmed`` after it;
pending pushes found on the next pass are reconciled by the item version's key in the tool
(``item_key``; found: confirmed; not found: pushed again). Pulls upsert by the answer's remote id
and move the cursor only after the upsert, so a crash between the two re-reads and changes
nothing. What differs between tools lives in the tool (``connector.tools``), not here.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from connector.auto_accept import clears, in_force
from connector.label_sets import decode_label_set
from connector.labeling_config import first_text_control, parse_config
from connector.redaction import history_detail, redact_pushed
from connector.review_kinds import suggestion_result
from connector.routing import CHECK_REASONS, Batch, Router
from connector.store import StateStore
from connector.task_spec import TaskSpec
from connector.tools.base import SUGGESTION_VERSION, AnnotationTool, PushItem, item_key
from sync.adjudication import AdjudicationQueue
from sync.controls import prediction_row, primary_probabilities, suggestion
from sync.predictor import HttpPredictor, Predictor
from sync.pulls import annotation_rows, settle_absent

log = logging.getLogger(__name__)

__all__ = ["SUGGESTION_SOURCE", "HttpPredictor", "PassReport", "Predictor", "SyncService"]

#: the model version a pushed suggestion names in the tool (``connector.tools.base.SUGGESTION_VERSION``)
SUGGESTION_SOURCE = SUGGESTION_VERSION


@dataclass
class PassReport:
    """What one pass did, for the CLI's summary table and the logs."""

    name: str
    counts: Counter = field(default_factory=Counter)


class SyncService:
    """Predict -> route -> push -> pull for one task file, against one :class:`AnnotationTool`.

    The project (or dataset) is ensured on first use; ``project`` is the key the store files
    pushes, answers and cursors under, with ``tool.name``.
    """

    def __init__(self, store: StateStore, spec: TaskSpec, tool: AnnotationTool, predictor: Predictor | None = None,
                 *, progress: Callable[[str, int], None] | None = None) -> None:
        self.store = store
        self.spec = spec
        self.tool = tool
        self.predictor = predictor
        self.router = Router(spec.routing)
        self._label_thresholds: dict[str, float] | None = None  # a label set's certified per-label rule
        self.control = first_text_control(spec.label_config())
        # the <Choices> and the <Labels> (span controls) by name
        self.config_controls = {c.from_name: c for c in parse_config(spec.label_config()).controls}
        #: several controls, or a label set: predictions and suggestions go through ``sync/controls.py``
        self.per_control = spec.kind == "label" and (bool(spec.controls) or spec.multi_label)
        if self.per_control:
            missing = [c.name for c in spec.control_specs if c.name not in self.config_controls]
            if missing:
                raise ValueError(f"the labeling config has no <Choices> named {missing} (it has "
                                 f"{sorted(self.config_controls)}): name each [[controls]] as its <Choices> "
                                 f"(a spans control as its <Labels>)")
            self.control = self.config_controls[spec.primary.name]
        if (spec.multi_label or spec.spans_primary) and (self.router.policy.label_overrides
                                                         or self.router.policy.reject_label):
            raise ValueError(f"routing: a {'span' if spec.spans_primary else 'multi-label'} task routes on its task "
                             "score; label_overrides and reject_label name one label and do not apply")
        self.push_batch = 2000
        self.remote_check_batch = 500  # pushed items checked per check_remote pass ...
        self.remote_check_interval_s = 600.0  # ... at most this often (a tool's find may read the whole project)
        self._progress = progress or (lambda name, n: None)
        self._project: str | None = None
        self._outputs: dict[int, Any] = {}  # review kinds: item id -> the output under review

    @property
    def project(self) -> str:
        if self._project is None:
            self._project = self.tool.ensure_project(self.spec)
        return self._project

    @cached_property
    def adjudication(self) -> AdjudicationQueue:
        """The task's adjudication queue (``sync/adjudication.py``); its project is created on first need."""
        return AdjudicationQueue(self.store, self.spec, self.tool, self.project, self.control.data_key)

    # -- predict and route --------------------------------------------------------------------

    def predict_pass(self, *, batch: int = 512) -> PassReport:
        """Score every ingested item with the ML backend, and score again the items not yet pushed
        that an older model version scored (after a promotion they are routed afresh)."""
        report = PassReport("predict")
        if self.spec.kind != "label":  # a review task's items come with the output under review
            return report
        if self.predictor is None:
            raise RuntimeError("no predictor configured (set the ML backend URL)")
        serving = getattr(self.predictor, "serving_version", None)
        own = self.spec.model_dir(self.spec.primary) if self.per_control else None
        version = (serving() if own is None else serving(control=own)) if serving is not None else None
        stale = self.store.items.stale(version) if version is not None else []
        report.counts["rescored"] += len(stale)
        while True:
            items = self.store.items.list(state="ingested", limit=batch)
            if not items:  # each stale item is scored once per pass, whatever the backend answers
                items, stale = stale[:batch], stale[batch:]
            if not items:
                break
            preds = self.predictor.predict([it.text for it in items])
            if self.per_control:
                rows = [{"item_id": it.id, **prediction_row(self.spec, p)} for it, p in zip(items, preds)]
            else:
                rows = [{"item_id": it.id, "model_version": p["model_version"], "label": p["label"],
                         "confidence": p["confidence"], "probabilities": p["probabilities"]}
                        for it, p in zip(items, preds)]
            self.store.predictions.record(rows)
            report.counts["predicted"] += len(items)
            self._progress("predict", len(items))
        return report

    def route_pass(self, *, batch: int = 2048) -> PassReport:
        """Route every predicted item; each decision keeps its reason.

        When fewer than one batch (the review budget; without one, any) of items sent to review
        are waiting, pushed and unanswered or routed and not yet pushed, items the budget deferred
        are routed again: annotators get the next batch before they run out, even when one pushed
        item is never answered, and the backlog stays under two batches.

        Gold items (ingested with ``is_gold``) are not routed as ordinary items: they form the pool
        the router mixes into each batch's review set at ``gold_rate``; those not drawn wait for
        later batches.
        """
        report = PassReport("route")
        self._adapt_threshold()
        if self.router.policy.auto_accept and (waiting := self.store.decisions.requeue_deferred("uncertified")):
            report.counts["requeued"] += waiting  # a threshold is in force now: routed again against it
        budget = max(self.router.policy.review_budget or 1, 1)
        backlog = (self.store.items.counts_by_state()["pushed"]
                   + len(self.store.decisions.routed(action="review", limit=budget)))
        if backlog < budget and (requeued := self.store.decisions.requeue_deferred("over_budget")):
            report.counts["requeued"] += requeued
        predicted = self.store.items.list(state="predicted")
        preds = {p.item_id: p for p in self.store.predictions.list([it.id for it in predicted])}  # latest wins
        ordinary = [it for it in predicted if not it.is_gold]
        gold = [it for it in predicted if it.is_gold]
        if self.router.policy.review_budget is not None:  # the budget is per pass: one batch, one ranking
            batch = max(len(ordinary), 1)
        for i in range(0, len(ordinary), batch):
            chunk = ordinary[i:i + batch]
            decisions = self.router.route(self._batch(chunk, preds),
                                          gold_pool=self._batch(gold, preds) if gold else None)
            policy = self.router.policy  # the thresholds in force go on record with each auto-accept/reject
            self.store.decisions.record([
                {"item_id": int(d.item_id), "model_version": preds[int(d.item_id)].model_version,
                 "action": d.action, "reason": d.reason, "priority": d.priority, "score": d.score,
                 "label": d.label, "confidence": d.confidence,
                 "threshold": policy.reject_threshold if d.action == "auto_reject" else policy.threshold_for(d.label)}
                for d in decisions])
            drawn = {d.item_id for d in decisions if d.reason == "gold"}
            gold = [it for it in gold if str(it.id) not in drawn]
            report.counts.update(d.action if d.reason != "gold" else "gold" for d in decisions)
        return report

    def _adapt_threshold(self) -> bool:
        """Set the router from the auto-accept rule in force (:func:`connector.auto_accept.in_force`);
        whether a certified threshold is in force.

        With ``[thresholds] adapt = true`` (the default) only a threshold the latest review certified
        accepts anything; with no review yet, or one that certified nothing, would-be accepted items
        are deferred as ``uncertified``. With ``adapt = false`` the task file's fixed threshold
        applies as it is (uncertified, and the report and ``/metrics`` say so).
        """
        rule = in_force(self.store, self.spec)
        self._label_thresholds = rule.label_thresholds if self.spec.multi_label else None
        if rule.state == "uncertified":
            return False
        policy = self.router.policy
        if rule.state == "certified":
            t = float(rule.threshold or 1.0)
            update = {"auto_accept": True, "accept_threshold": t,
                      "label_overrides": {k: max(v, t) for k, v in policy.label_overrides.items()}}
        else:
            update = {"auto_accept": False}
        if any(getattr(policy, k) != v for k, v in update.items()):
            log.info("auto-accept: %s", f"certified threshold {rule.threshold:.4f}" if rule.state == "certified"
                     else "off (no certified threshold)")
            self.router = Router(policy.model_copy(update=update))
        return rule.state == "certified"

    def _batch(self, items: list[Any], preds: dict[int, Any]) -> Batch:
        """The router's batch: each item's probabilities over the labels; for a label set (or a span
        task's spans), the rows ``[s, 1 - s]`` of its task score ``s`` (at least 0.5) with the set as
        the row's label."""
        if self.spec.multi_label or self.spec.spans_primary:
            score = np.array([max(float(preds[it.id].confidence), 0.5) for it in items]).reshape(-1)
            metadata = [{**(it.meta or {}), "is_gold": it.is_gold} for it in items]
            rule = self._label_thresholds  # a certified per-label rule: each label against its own threshold
            passed = None if rule is None else [
                clears(None, rule, 0.0, probabilities=primary_probabilities(preds[it.id].probabilities),
                       chosen=decode_label_set(preds[it.id].label) or []) for it in items]
            return Batch([str(it.id) for it in items], np.stack([score, 1.0 - score], axis=1).reshape(len(items), 2),
                         ["label set", "not sure"], metadata, top_labels=[preds[it.id].label for it in items],
                         clears=passed)
        labels = list(self.spec.labels)
        probs = np.array([[preds[it.id].probabilities.get(label, 0.0) for label in labels] for it in items])
        metadata = [{**(it.meta or {}), "is_gold": it.is_gold} for it in items]
        return Batch([str(it.id) for it in items], probs, labels, metadata)

    # -- push ---------------------------------------------------------------------------------

    def reconcile(self) -> PassReport:
        """Settle pushes a crash left pending: confirm those the tool has (by the version's key, so a
        new version is never confirmed with an older version's item), drop the others."""
        report = PassReport("reconcile")
        name, project = self.tool.name, self.project
        pending = self.store.pushes.pending(name, project)
        if not pending:
            return report
        items = {p.item_id: self.store.items.get(p.item_id) for p in pending}
        by_key = {item_key(it.external_id, it.version): it.id for it in items.values() if it is not None}
        found = self.tool.find(project, list(by_key))
        if found:
            report.counts["confirmed"] += self.store.pushes.confirm({by_key[e]: t for e, t in found.items()},
                                                                  name, project)
        missing = [i for e, i in by_key.items() if e not in found]
        if missing:
            report.counts["re-queued"] += self.store.pushes.cancel(missing, name, project)
        log.info("reconciled %d pending pushes: %s", len(pending), dict(report.counts))
        return report

    def push_pass(self, *, batch: int = 500) -> PassReport:
        """Create a remote item (with the model's suggestion) for every item routed to review.

        Per chunk: ``pushes.begin`` (pending) → remote create → ``pushes.confirm``. The remote call of
        one chunk runs on a worker thread while this thread records the previous chunk's
        confirmation and begins the next one, so the store's bookkeeping hides behind the tool's
        own time; the order per chunk, which makes a crash recoverable, is unchanged.
        """
        from concurrent.futures import Future, ThreadPoolExecutor

        report = PassReport("push")
        report.counts.update(self.reconcile().counts)
        name, project = self.tool.name, self.project
        routed = self.store.decisions.routed(action="review")
        preds = {p.item_id: p for p in self.store.predictions.list([it.id for it, _ in routed])}

        def confirm(fut: Future, ext_to_id: dict[str, int]) -> None:
            mapping = fut.result()
            report.counts["pushed"] += self.store.pushes.confirm({ext_to_id[e]: t for e, t in mapping.items()},
                                                               name, project)
            self._progress("push", len(ext_to_id))

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="push") as pool:
            inflight: tuple[Future, dict[str, int]] | None = None
            for i in range(0, len(routed), batch):
                chunk = routed[i:i + batch]
                begun = {p.item_id for p in self.store.pushes.begin([it.id for it, _ in chunk], name, project)}
                todo = [(it, d) for it, d in chunk if it.id in begun]
                if not todo:
                    continue
                if self.spec.kind != "label":  # the outputs under review, read once per chunk
                    self._outputs = {i: m.output for i, m in self.store.online.by_items([it.id for it, _ in todo]).items()}
                push_items = [self._push_item(it, d, preds.get(it.id)) for it, d in todo]
                fut = pool.submit(self.tool.push, project, push_items)
                if inflight is not None:
                    confirm(*inflight)
                inflight = (fut, {item_key(it.external_id, it.version): it.id for it, _ in todo})
            if inflight is not None:
                confirm(*inflight)
        return report

    def _push_item(self, item: Any, decision: Any, pred: Any) -> PushItem:
        """What the annotator gets: the item's own fields and its key, with the model's label as a
        suggestion when :meth:`shows_suggestion` says so. Why the item was sent (reason, priority,
        gold or audit), the model version and the score of a hidden suggestion stay in the store;
        priority travels only as the import order (highest first)."""
        data = {k: v for k, v in (item.data or {}).items() if isinstance(k, str)}
        data[self.control.data_key] = item.text
        data = self._redacted(item, data)
        key = item_key(item.external_id, item.version)
        if self.spec.kind != "label":  # a review: the output under review is what the reviewer edits
            if item.id not in self._outputs:
                made = self.store.online.by_items([item.id]).get(item.id)
                self._outputs[item.id] = made.output if made is not None else None
            output = self._outputs[item.id]
            return PushItem(key, data, suggestion_result(self.spec, output) if output is not None else None, None,
                            SUGGESTION_SOURCE)
        if pred is None or not self.shows_suggestion(item, decision):
            return PushItem(key, data)
        if self.per_control:
            made = suggestion(self.spec, self.config_controls, pred, item.text)
            return PushItem(key, data) if made is None else PushItem(key, data, made[0], made[1], SUGGESTION_SOURCE)
        return PushItem(key, data, [self.control.result([pred.label])], float(pred.confidence), SUGGESTION_SOURCE)

    def shows_suggestion(self, item: Any, decision: Any) -> bool:
        """Whether the annotator sees the model's label (the task file's ``show_suggestion``).

        ``except_checks`` (the default): never on a check (gold, audit, spot check: their answers must
        not lean on the model), and not on a random ``blind_share`` of the other items either, so that a
        missing suggestion says little about whether an item is a check. The draw is a hash of the
        item's key: the same item is shown the same way on every push.
        """
        mode = self.spec.show_suggestion
        if mode != "except_checks":
            return mode == "always"
        if decision.reason in CHECK_REASONS or item.is_gold:
            return False
        digest = hashlib.sha256(f"blind:{self.spec.name}:{item_key(item.external_id, item.version)}".encode())
        return int.from_bytes(digest.digest()[:8], "big") / 2 ** 64 >= self.spec.blind_share

    def check_remote(self) -> PassReport:
        """Route again the pushed, unanswered items whose remote item is gone (deleted in the tool).

        Bounded: every ``remote_check_interval_s`` at most, ``remote_check_batch`` items in turn by
        item id (a cursor in the store), one ``find`` call. A missing item gets a routing decision
        ``requeue`` / ``remote_deleted`` (the mark), loses its push and goes back to ``predicted``,
        so the next route pass routes it afresh and the push pass creates it again.
        """
        report = PassReport("check")
        name, project = self.tool.name, self.project
        now = time.time()
        last = self.store.cursors.get(name, project, "remote_check_at")
        if last is not None and now - float(last) < self.remote_check_interval_s:
            return report
        after = int(self.store.cursors.get(name, project, "remote_check_after") or 0)
        items = self.store.items.list(state="pushed", limit=self.remote_check_batch, after=after)
        remote = self.store.pushes.remote_ids([it.id for it in items], name, project)
        mine = {item_key(it.external_id, it.version): it.id for it in items if it.id in remote}
        if mine:
            found = self.tool.find(project, list(mine))
            gone = [i for e, i in mine.items() if e not in found]
            report.counts.update(checked=len(mine), missing=len(gone))
            if gone:
                log.warning("%d pushed items are gone from %s %s (e.g. item %d): routed again",
                            len(gone), name, project, gone[0])
                self.store.decisions.record([{"item_id": i, "action": "requeue", "reason": "remote_deleted",
                                              "priority": 0.0} for i in gone])
                self.store.pushes.forget(gone, name, project)
        done = len(items) < self.remote_check_batch  # the end: start over next time
        self.store.cursors.set(name, project, "remote_check_after", "0" if done else str(items[-1].id))
        self.store.cursors.set(name, project, "remote_check_at", repr(now))
        return report

    # -- pull and send back ---------------------------------------------------------------------

    def pull_pass(self) -> PassReport:
        """Upsert every answer the tool returns as changed (and those it shows deleted), then move the cursor."""
        report = PassReport("pull")
        name, project = self.tool.name, self.project
        cursor = {k: v for k in self.tool.cursor_keys if (v := self.store.cursors.get(name, project, k)) is not None}
        pulled = self.tool.pull(project, cursor)
        rows = annotation_rows(self.store, name, project, pulled)
        if rows:
            result = self.store.annotations.upsert(rows)
            report.counts.update(inserted=result.inserted, updated=result.updated, unchanged=result.unchanged,
                                 deleted=sum(r["status"] == "deleted" for r in rows))
        absent = settle_absent(self.store, name, project, pulled)  # whole-project pulls only
        report.counts.update({k: n for k, n in (("missing", absent.missing), ("deleted", absent.deleted)) if n})
        for key, value in pulled.cursor.items():
            self.store.cursors.set(name, project, key, value)
        self._progress("pull", len(rows))
        return report

    def send_back(self, wanted: Sequence[tuple[int, int, str]]) -> int:
        """Ask the tool for more answers: ``(item_id, answers wanted, reason)``; returns how many were sent."""
        remote = self.store.pushes.remote_ids([i for i, _, _ in wanted], self.tool.name, self.project)
        return self.tool.send_back(self.project, [(remote[i], n, why) for i, n, why in wanted if i in remote])

    def _redacted(self, item: Any, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` with the task's ``[redaction]`` fields redacted (``connector.redaction``); what
        was found goes on the item's history once per item version (a ``redacted`` event, no PII)."""
        data, findings = redact_pushed(self.spec.redaction, data, text_field=self.spec.text_field,
                                       text_key=self.control.data_key)
        if findings and not self.store.history.list(kind="redacted", item_id=item.id, limit=1):
            self.store.history.record([{"item_id": item.id, "kind": "redacted", "actor": "sync",
                                        "detail": history_detail(findings)}])
        return data
