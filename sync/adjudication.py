"""The adjudication queue: what the annotators cannot settle goes to a reviewer in the tool, whose
answer settles it.

An item still unsettled at the consensus policy's ``max_answers`` (and, where the tool cannot ask
one item for one more answer, as Argilla 2.8 cannot, any disagreement) is pushed once to the task's
adjudication project (``AnnotationTool.ensure_adjudication``, created on first need): the text, the
task's question, and the answers in conflict (:func:`conflict_summaries`). The push keeps the
ordinary bookkeeping under the adjudication project's own key: pending before the remote call,
confirmed after it, a crash in between reconciled by the item version's key, so nothing is pushed
twice. The adjudicators' answers are pulled into the store like any answer, under that project.
Consolidation leaves them out of the consensus and the agreement figures (an adjudicator answers
having seen the others: not an independent vote) and lets them settle their items
(``connector.consolidation.apply_verdicts``, method ``adjudicated``).

Two cursor rows tie the projects together in the store: the task's project names its adjudication
project (``adjudication_project``), and the adjudication project names the task's
(``adjudication_of``); the second is how the store alone tells an adjudicator's answer from an
annotator's (:func:`split_answers`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from connector.consolidation import AnswerTable
from connector.redaction import redact_pushed
from connector.store import StateStore
from connector.task_spec import TaskSpec
from connector.tools.base import ANSWERS_FIELD, AnnotationTool, PushItem, item_key
from sync.pulls import annotation_rows, settle_absent

log = logging.getLogger(__name__)

ADJUDICATION_PROJECT = "adjudication_project"  # cursor of the task's project: its adjudication project's key
ADJUDICATION_OF = "adjudication_of"  # cursor of an adjudication project: the task's project key


def split_answers(store: StateStore, annotations: Iterable[Any]) -> tuple[list[Any], list[Any]]:
    """Stored answers split into the annotators' and the adjudicators' (those of a project that
    is some task's adjudication project)."""
    adjudicating: dict[tuple[str, str], bool] = {}
    ordinary: list[Any] = []
    verdicts: list[Any] = []
    for a in annotations:
        where = (a.tool, a.project)
        if where not in adjudicating:
            adjudicating[where] = store.cursors.get(a.tool, a.project, ADJUDICATION_OF) is not None
        (verdicts if adjudicating[where] else ordinary).append(a)
    return ordinary, verdicts


def conflict_summaries(table: AnswerTable, item_ids: Iterable[int]) -> dict[int, str]:
    """Item id -> its answers for the adjudicator, one label a line, most answered first:
    ``fresh: 2 (alice, bob)``; an item only skipped says how many times."""
    rows = table.row_of()
    out: dict[int, str] = {}
    for item_id in item_ids:
        lines = []
        if item_id in rows:
            by_label: dict[int, list[str]] = {}
            for a, code in enumerate(table.R[rows[item_id]].tolist()):
                if code >= 0:
                    by_label.setdefault(code, []).append(table.annotators[a])
            for code, names in sorted(by_label.items(), key=lambda kv: (-len(kv[1]), kv[0])):
                lines.append(f"{table.labels[code]}: {len(names)} ({', '.join(names)})")
        if skips := table.skipped.get(item_id):
            lines.append(f"skipped: {skips}")
        out[item_id] = "\n".join(lines) or "no answers"
    return out


def adjudication_events(rows: Iterable[Mapping[str, Any]], old_labels: Mapping[int, str | None]) -> list[dict[str, Any]]:
    """One event per label row an adjudicator's answer settles (method ``adjudicated``, ``actor``
    the adjudicator), shaped for an item's history: ``item_id, kind, actor, detail`` (``old_label``,
    ``label``, ``note``)."""
    return [{"item_id": int(r["item_id"]), "kind": "adjudicated", "actor": r["actor"],
             "detail": {"old_label": old_labels.get(int(r["item_id"])), "label": r["label"], "note": r["reason"]}}
            for r in rows]


def record_adjudicated(store: StateStore, events: Sequence[Mapping[str, Any]]) -> None:
    """The one place an adjudication is recorded beyond its label row: ``events``
    (:func:`adjudication_events`) for the labels an adjudicator's answer settles or changes, about
    to be saved, go to the item's history (``store.history``); a crash before the save records them
    again on the next run (at least once)."""
    store.history.record(events)
    for e in events:
        log.info("item %d adjudicated by %s: %s -> %s", e["item_id"], e["actor"], e["detail"]["old_label"],
                 e["detail"]["label"])


class AdjudicationQueue:
    """The task's adjudication project, for one sync: its ``key`` (``None`` until it is needed),
    ``pull`` (the adjudicators' answers into the store) and ``push`` (items, once each)."""

    def __init__(self, store: StateStore, spec: TaskSpec, tool: AnnotationTool, project: str, text_key: str) -> None:
        self.store = store
        self.spec = spec
        self.tool = tool
        self.project = project  # the task's project key
        self.text_key = text_key
        self._key: str | None = None

    @property
    def key(self) -> str | None:
        """The adjudication project's key, once it was created (the store says; no remote call)."""
        if self._key is None:
            self._key = self.store.cursors.get(self.tool.name, self.project, ADJUDICATION_PROJECT)
        return self._key

    def ensure(self) -> str:
        """The adjudication project's key, the project created in the tool if the store names none.

        Both cursor rows are written before anything is pushed there, the adjudication project's
        first: any answer pulled from it is then known as an adjudicator's."""
        if self.key is None:
            key = self.tool.ensure_adjudication(self.spec)
            self.store.cursors.set(self.tool.name, key, ADJUDICATION_OF, self.project)
            self.store.cursors.set(self.tool.name, self.project, ADJUDICATION_PROJECT, key)
            log.info("adjudication project of %s %s: %s", self.tool.name, self.project, key)
            self._key = key
        return self._key  # type: ignore[return-value]

    def pull(self) -> Counter:
        """Upsert the adjudicators' answers the tool returns as changed (and those it shows
        deleted), then move the adjudication project's cursor; nothing before it exists."""
        counts: Counter = Counter()
        key, name = self.key, self.tool.name
        if key is None:
            return counts
        cursor = {k: v for k in self.tool.cursor_keys if (v := self.store.cursors.get(name, key, k)) is not None}
        pulled = self.tool.pull(key, cursor)
        rows = annotation_rows(self.store, name, key, pulled)
        if rows:
            result = self.store.annotations.upsert(rows)
            counts.update(inserted=result.inserted, updated=result.updated,
                          deleted=sum(r["status"] == "deleted" for r in rows))
        absent = settle_absent(self.store, name, key, pulled)
        counts.update({k: n for k, n in (("missing", absent.missing), ("deleted", absent.deleted)) if n})
        for k, value in pulled.cursor.items():
            self.store.cursors.set(name, key, k, value)
        return +counts

    def push(self, wanted: Sequence[tuple[Any, str, str]]) -> Counter:
        """Push items for adjudication, each once: ``(item, answers in conflict, reason)``.

        Pending pushes a crash left are reconciled first (confirmed by key, or dropped and begun
        again); then ``pushes.begin`` (pending, skipping items already pushed there) -> the
        remote create -> ``pushes.confirm``. The project is created on the first item."""
        counts: Counter = Counter()
        if not wanted and self.key is None:
            return counts
        key, name = self.ensure(), self.tool.name
        counts.update(self._reconcile(key))
        begun = {p.item_id for p in self.store.pushes.begin([it.id for it, _, _ in wanted], name, key)}
        todo = [w for w in wanted if w[0].id in begun]
        if todo:
            by_key = {item_key(it.external_id, it.version): it.id for it, _, _ in todo}
            mapping = self.tool.push(key, [self._push_item(it, answers) for it, answers, _ in todo])
            counts["pushed"] += self.store.pushes.confirm({by_key[e]: r for e, r in mapping.items()}, name, key)
            log.info("%d items pushed to the adjudication project %s (e.g. %s: %s)", counts["pushed"], key,
                     todo[0][0].external_id, todo[0][2])
        return +counts

    def _reconcile(self, key: str) -> Counter:
        """Settle the adjudication pushes a crash left pending: confirmed by the item version's key
        when the tool has it, dropped (to be begun again) when not."""
        counts: Counter = Counter()
        name = self.tool.name
        pending = self.store.pushes.pending(name, key)
        if not pending:
            return counts
        items = self.store.items.get_many(p.item_id for p in pending)
        by_key = {item_key(it.external_id, it.version): it.id for it in items.values()}
        found = self.tool.find(key, list(by_key))
        if found:
            counts["confirmed"] += self.store.pushes.confirm({by_key[e]: r for e, r in found.items()}, name, key)
        missing = [i for e, i in by_key.items() if e not in found]
        if missing:
            counts["re-queued"] += self.store.pushes.cancel(missing, name, key)
        return counts

    def _push_item(self, item: Any, answers: str) -> PushItem:
        """What the adjudicator gets: the item's own fields, its key and the answers in conflict,
        no suggestion (why it came stays in the store, with its label row)."""
        data = {k: v for k, v in (item.data or {}).items() if isinstance(k, str)}
        data.update({self.text_key: item.text, ANSWERS_FIELD: answers})
        data = redact_pushed(self.spec.redaction, data, text_field=self.spec.text_field, text_key=self.text_key)[0]
        return PushItem(item_key(item.external_id, item.version), data)
