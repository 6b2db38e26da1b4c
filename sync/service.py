"""The sync passes: predict, route, push to Label Studio, pull annotations back, exactly once.

Each pass reads what to do from the state store and writes what it did back, so a restart at any
point resumes: a push is recorded ``pending`` before the remote call and ``confirmed`` after it;
pending pushes found on the next pass are reconciled by our external id in the tool (found:
confirmed; not found: pushed again). Pulls upsert by the annotation's remote id and move the
cursor only after the upsert, so a crash between the two re-reads and changes nothing.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import numpy as np
from tenacity import before_sleep_log, retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from connector.label_studio_client import LabelStudioClient, PushItem, TaskSnapshot
from connector.labeling_config import parse_labeling_config
from connector.routing import Batch, Router
from connector.store import StateStore
from connector.task_spec import TaskSpec

log = logging.getLogger(__name__)

TOOL = "label_studio"


class Predictor(Protocol):
    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """One dict per text: ``label``, ``confidence``, ``probabilities``, ``model_version``."""


class HttpPredictor:
    """The ML backend's ``POST /v1/predict``, in chunks, with retries on connection errors and 5xx."""

    def __init__(self, url: str, *, token: str | None = None, chunk: int = 256, timeout: float = 120.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.chunk = chunk

    @retry(retry=retry_if_exception_type((httpx.TransportError, httpx.HTTPStatusError)),
           stop=stop_after_attempt(5), wait=wait_exponential(multiplier=0.5, max=10), reraise=True,
           before_sleep=before_sleep_log(log, logging.WARNING))
    def _post(self, texts: list[str]) -> list[dict[str, Any]]:
        r = self._http.post("/v1/predict", json={"texts": texts})
        if r.status_code >= 500:
            r.raise_for_status()
        if r.status_code != 200:
            raise ValueError(f"ML backend refused the batch ({r.status_code}): {r.text[:300]}")
        return r.json()["predictions"]

    def serving_version(self) -> str | None:
        """The model version the backend serves now (``GET /versions``)."""
        r = self._http.get("/versions")
        r.raise_for_status()
        return r.json().get("serving")

    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i in range(0, len(texts), self.chunk):
            out.extend(self._post(list(texts[i:i + self.chunk])))
        return out


@dataclass
class PassReport:
    """What one pass did, for the CLI's summary table and the logs."""

    name: str
    counts: Counter = field(default_factory=Counter)


class SyncService:
    """Predict → route → push → pull for one task file; subclasses speak to one tool.

    A subclass names its ``tool``, its ``project`` key, and implements ``_remote_ids`` (our
    external ids → remote ids already in the tool), ``_push_remote`` (create them) and
    ``pull_pass``. Reconciliation and the pending → confirmed bookkeeping live here, once.
    """

    tool: str = ""

    def __init__(self, store: StateStore, spec: TaskSpec, predictor: Predictor | None = None, *,
                 progress: Callable[[str, int], None] | None = None) -> None:
        self.store = store
        self.spec = spec
        self.predictor = predictor
        self.router = Router(spec.routing)
        self.control = parse_labeling_config(spec.label_config())[0]
        self.push_batch = 2000
        self._progress = progress or (lambda name, n: None)

    @property
    def project(self) -> str:
        raise NotImplementedError

    def _remote_ids(self, external_ids: Sequence[str]) -> dict[str, Any]:
        raise NotImplementedError

    def _push_remote(self, items: list[PushItem]) -> dict[str, Any]:
        raise NotImplementedError

    def pull_pass(self) -> PassReport:
        raise NotImplementedError

    def send_back(self, wanted: Sequence[tuple[int, int, str]]) -> int:
        """Ask the tool for more answers: ``(item_id, answers wanted, reason)``; returns how many."""
        raise NotImplementedError

    # -- predict and route --------------------------------------------------------------------

    def predict_pass(self, *, batch: int = 512) -> PassReport:
        """Score every ingested item with the ML backend, and score again the items not yet pushed
        that an older model version scored (after a promotion they are routed afresh)."""
        if self.predictor is None:
            raise RuntimeError("no predictor configured (set the ML backend URL)")
        report = PassReport("predict")
        serving = getattr(self.predictor, "serving_version", None)
        version = serving() if serving is not None else None
        stale = self.store.items.stale(version) if version is not None else []
        report.counts["rescored"] += len(stale)
        while True:
            items = self.store.items.list(state="ingested", limit=batch)
            if not items:  # each stale item is scored once per pass, whatever the backend answers
                items, stale = stale[:batch], stale[batch:]
            if not items:
                break
            preds = self.predictor.predict([it.text for it in items])
            self.store.predictions.record([
                {"item_id": it.id, "model_version": p["model_version"], "label": p["label"],
                 "confidence": p["confidence"], "probabilities": p["probabilities"]}
                for it, p in zip(items, preds)])
            report.counts["predicted"] += len(items)
            self._progress("predict", len(items))
        return report

    def route_pass(self, *, batch: int = 2048) -> PassReport:
        """Route every predicted item; each decision keeps its reason.

        When no pushed item is waiting for an answer, items the review budget deferred are routed
        again, so annotators get the next batch even when no new model version was promoted.

        Gold items (ingested with ``is_gold``) are not routed as ordinary items: they form the pool
        the router mixes into each batch's review set at ``gold_rate``; those not drawn wait for
        later batches.
        """
        report = PassReport("route")
        self._adapt_threshold()
        idle = (self.store.items.counts_by_state()["pushed"] == 0
                and not self.store.decisions.routed(action="review", limit=1))
        # everything sent was answered: the next batch
        if idle and (requeued := self.store.decisions.requeue_deferred()):
            report.counts["requeued"] = requeued
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
            self.store.decisions.record([
                {"item_id": int(d.item_id), "model_version": preds[int(d.item_id)].model_version,
                 "action": d.action, "reason": d.reason, "priority": d.priority, "score": d.score}
                for d in decisions])
            drawn = {d.item_id for d in decisions if d.reason == "gold"}
            gold = [it for it in gold if str(it.id) not in drawn]
            report.counts.update(d.action if d.reason != "gold" else "gold" for d in decisions)
        return report

    def _adapt_threshold(self) -> None:
        """Use the scheduler's latest threshold review when the task lets the threshold adapt."""
        if not self.spec.thresholds.adapt:
            return
        review = self.store.snapshots.latest("thresholds")
        if review is None or review.payload.get("threshold") is None:
            return
        t = min(float(review.payload["threshold"]), 1.0)
        if t != self.router.policy.accept_threshold:
            log.info("auto-accept threshold %.4f -> %.4f (threshold review)", self.router.policy.accept_threshold, t)
            overrides = {k: max(v, t) for k, v in self.router.policy.label_overrides.items()}
            self.router = Router(self.router.policy.model_copy(update={"accept_threshold": t,
                                                                        "label_overrides": overrides}))

    def _batch(self, items: list[Any], preds: dict[int, Any]) -> Batch:
        labels = list(self.spec.labels)
        probs = np.array([[preds[it.id].probabilities.get(label, 0.0) for label in labels] for it in items])
        metadata = [{**(it.meta or {}), "is_gold": it.is_gold} for it in items]
        return Batch([str(it.id) for it in items], probs, labels, metadata)

    # -- push ---------------------------------------------------------------------------------

    def reconcile(self) -> PassReport:
        """Settle pushes a crash left pending: confirm those the tool has, drop the others."""
        report = PassReport("reconcile")
        pending = self.store.pushes.pending(self.tool, self.project)
        if not pending:
            return report
        items = {p.item_id: self.store.items.get(p.item_id) for p in pending}
        by_ext = {it.external_id: it.id for it in items.values() if it is not None}
        found = self._remote_ids(list(by_ext))
        if found:
            report.counts["confirmed"] += self.store.pushes.confirm({by_ext[e]: t for e, t in found.items()},
                                                                    self.tool, self.project)
        missing = [i for e, i in by_ext.items() if e not in found]
        if missing:
            report.counts["re-queued"] += self.store.pushes.cancel(missing, self.tool, self.project)
        log.info("reconciled %d pending pushes: %s", len(pending), dict(report.counts))
        return report

    def push_pass(self, *, batch: int = 500) -> PassReport:
        """Create a task (with the model's suggestion) for every item routed to review.

        Per chunk: ``pushes.begin`` (pending) → remote create → ``pushes.confirm``. The remote call of
        one chunk runs on a worker thread while this thread records the previous chunk's
        confirmation and begins the next one, so the store's bookkeeping hides behind the tool's
        own time; the order per chunk, which makes a crash recoverable, is unchanged.
        """
        from concurrent.futures import Future, ThreadPoolExecutor

        report = PassReport("push")
        report.counts.update(self.reconcile().counts)
        routed = self.store.decisions.routed(action="review")
        preds = {p.item_id: p for p in self.store.predictions.list([it.id for it, _ in routed])}

        def confirm(fut: Future, ext_to_id: dict[str, int]) -> None:
            mapping = fut.result()
            report.counts["pushed"] += self.store.pushes.confirm({ext_to_id[e]: t for e, t in mapping.items()},
                                                                 self.tool, self.project)
            self._progress("push", len(ext_to_id))

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="push") as pool:
            inflight: tuple[Future, dict[str, int]] | None = None
            for i in range(0, len(routed), batch):
                chunk = routed[i:i + batch]
                begun = {p.item_id for p in
                         self.store.pushes.begin([it.id for it, _ in chunk], self.tool, self.project)}
                todo = [(it, d) for it, d in chunk if it.id in begun]
                if not todo:
                    continue
                push_items = [self._push_item(it, d, preds.get(it.id)) for it, d in todo]
                fut = pool.submit(self._push_remote, push_items)
                if inflight is not None:
                    confirm(*inflight)
                inflight = (fut, {it.external_id: it.id for it, _ in todo})
            if inflight is not None:
                confirm(*inflight)
        return report

    def _push_item(self, item: Any, decision: Any, pred: Any) -> PushItem:
        data = {k: v for k, v in (item.data or {}).items() if isinstance(k, str)}
        data[self.control.data_key] = item.text
        data["reason"] = decision.reason
        data["priority"] = round(float(decision.priority), 4)
        if pred is None:
            return PushItem(item.external_id, data)
        return PushItem(item.external_id, data, [self.control.result([pred.label])], float(pred.confidence),
                        pred.model_version)



class LabelStudioSync(SyncService):
    """The passes against one Label Studio project (created from the task file if absent)."""

    tool = TOOL

    def __init__(self, store: StateStore, spec: TaskSpec, client: LabelStudioClient,
                 predictor: Predictor | None = None, *, progress: Callable[[str, int], None] | None = None) -> None:
        super().__init__(store, spec, predictor, progress=progress)
        self.client = client
        self.overlap_s = 1.0
        self._project_id: int | None = None

    @property
    def project_id(self) -> int:
        if self._project_id is None:
            self._project_id = self.client.ensure_project(self.spec.project_name, self.spec.label_config(),
                                                          description=self.spec.instructions)
        return self._project_id

    @property
    def project(self) -> str:
        return str(self.project_id)

    def _remote_ids(self, external_ids: Sequence[str]) -> dict[str, Any]:
        return self.client.task_ids_by_external_id(self.project_id, external_ids)

    def _push_remote(self, items: list[PushItem]) -> dict[str, Any]:
        return self.client.import_items(self.project_id, items)

    def pull_pass(self) -> PassReport:
        """Upsert every annotation changed since the cursor, then move the cursor.

        A task saved just before the cursor may still be in an uncommitted transaction when we
        read, so reads overlap the previous one by ``overlap_s`` until the cursor has settled: once
        Label Studio's clock is well past it, everything up to it is committed and the next read
        starts exactly there (so a quiet project is not re-read).
        """
        report = PassReport("pull")
        cursor = self.store.cursors.get(TOOL, self.project, "updated_at")
        settled = self.store.cursors.get(TOOL, self.project, "settled") == "1"
        server_now = self.client.server_time()
        snaps = list(self.client.changed_tasks(self.project_id, cursor, overlap_s=0.0 if settled else self.overlap_s))
        rows = self._annotation_rows(snaps)
        if rows:
            result = self.store.annotations.upsert(rows)
            report.counts.update(inserted=result.inserted, updated=result.updated, unchanged=result.unchanged,
                                 deleted=sum(r["status"] == "deleted" for r in rows))
        new_cursor = max([cursor] * (cursor is not None) + [s.updated_at for s in snaps], default=None)
        if new_cursor is not None:
            lag = (server_now - datetime.fromisoformat(new_cursor)).total_seconds()
            self.store.cursors.set(TOOL, self.project, "updated_at", new_cursor)
            self.store.cursors.set(TOOL, self.project, "settled", "1" if lag > self.overlap_s + 2.0 else "0")
        self._progress("pull", len(rows))
        return report

    def send_back(self, wanted: Sequence[tuple[int, int, str]]) -> int:
        """Raise each task's overlap to the answers wanted and return it to the queue."""
        tasks = self.store.pushes.remote_ids([i for i, _, _ in wanted], TOOL, self.project)
        sent = 0
        for item_id, n, reason in wanted:
            if item_id in tasks:
                self.client.request_more_answers(int(tasks[item_id]), n)
                log.info("task %s sent back for answer %d (%s)", tasks[item_id], n, reason)
                sent += 1
        return sent

    def _annotation_rows(self, snaps: list[TaskSnapshot]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for snap in snaps:
            push = self.store.pushes.find(TOOL, self.project, snap.task_id)
            if push is None:
                log.warning("task %s (hitl_id %s) was not pushed by us; its annotations are ignored",
                            snap.task_id, snap.external_id)
                continue
            seen = set()
            for a in snap.annotations:
                seen.add(a.remote_id)
                rows.append({"item_id": push.item_id, "tool": TOOL, "project": self.project, "remote_id": a.remote_id,
                             "annotator": a.annotator, "value": a.value, "status": a.status,
                             "remote_updated_at": a.updated_at, "lead_time": a.lead_time})
            for old in self.store.annotations.list([push.item_id], tool=TOOL, project=self.project):
                if old.remote_id not in seen and old.status != "deleted":
                    rows.append({"item_id": push.item_id, "tool": TOOL, "project": self.project,
                                 "remote_id": old.remote_id, "annotator": old.annotator, "value": old.value,
                                 "status": "deleted", "remote_updated_at": snap.updated_at,
                                 "lead_time": old.lead_time})
        return rows


class ArgillaSync(SyncService):
    """The passes against one Argilla dataset (created from the task file if absent).

    Responses are pulled by status, not by ``updated_at`` (DESIGN.md §4: a submitted response
    does not move the record's indexed timestamp); the upsert keyed by response id and its
    ``updated_at`` makes each answer count once, and a stored answer the server no longer returns
    is recorded as deleted.
    """

    tool = "argilla"

    def __init__(self, store: StateStore, spec: TaskSpec, client: Any, predictor: Predictor | None = None, *,
                 progress: Callable[[str, int], None] | None = None) -> None:
        super().__init__(store, spec, predictor, progress=progress)
        self.client = client
        self._dataset: Any = None

    @property
    def dataset(self) -> Any:
        if self._dataset is None:
            self._dataset = self.client.ensure_dataset(
                self.spec.project_name, text_field=self.control.data_key, labels=list(self.spec.labels),
                multi_label=self.spec.multi_label, instructions=self.spec.instructions,
                min_submitted=self.spec.overlap)
        return self._dataset

    @property
    def project(self) -> str:
        return self.spec.project_name

    def _remote_ids(self, external_ids: Sequence[str]) -> dict[str, Any]:
        return self.client.record_ids_by_external_id(self.dataset, external_ids)

    def _push_remote(self, items: list[PushItem]) -> dict[str, Any]:
        return self.client.log_items(self.dataset, items)

    def send_back(self, wanted: Sequence[tuple[int, int, str]]) -> int:
        """Argilla 2.8 completes a record at the dataset's ``min_submitted`` and has no per-record
        setting to ask for one more answer: the items stay unsettled (their label row says why)
        and are listed in the log for a reviewer; raise the task's ``overlap`` to ask for more."""
        if wanted:
            log.warning("%d Argilla records need more answers (e.g. item %s: %s); Argilla has no per-record "
                        "overlap: raise the task's overlap", len(wanted), wanted[0][0], wanted[0][2])
        return 0

    def pull_pass(self) -> PassReport:
        report = PassReport("pull")
        responses = self.client.submitted_responses(self.dataset)
        rows, seen = [], set()
        for r in responses:
            push = self.store.pushes.find(self.tool, self.project, r.record_id)
            if push is None:
                log.warning("record %s (external id %s) was not pushed by us; ignored", r.record_id, r.external_id)
                continue
            seen.add(str(r.remote_id))
            rows.append({"item_id": push.item_id, "tool": self.tool, "project": self.project,
                         "remote_id": str(r.remote_id), "annotator": r.annotator, "value": r.value,
                         "status": r.status, "remote_updated_at": r.updated_at})
        now = datetime.now(UTC).isoformat()
        for old in self.store.annotations.list(tool=self.tool, project=self.project):
            if old.remote_id not in seen and old.status != "deleted":
                rows.append({"item_id": old.item_id, "tool": self.tool, "project": self.project,
                             "remote_id": old.remote_id, "annotator": old.annotator, "value": old.value,
                             "status": "deleted", "remote_updated_at": now})
        if rows:
            result = self.store.annotations.upsert(rows)
            report.counts.update(inserted=result.inserted, updated=result.updated, unchanged=result.unchanged,
                                 deleted=sum(r["status"] == "deleted" for r in rows))
        self._progress("pull", len(rows))
        return report
