"""On the real tools, what an annotator can read on a pushed gold item and an audit item: their own
fields and key, nothing that says they are checks, and no suggestion (read back through each tool's API)."""

from __future__ import annotations

import uuid

import pytest

from connector.store import StateStore
from connector.task_spec import TaskSpec
from sync.service import SUGGESTION_SOURCE, SyncService

pytestmark = pytest.mark.slow

REASONS = ("gold", "audit", "uncertain")


def _routed_store(tmp_path) -> StateStore:
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    store.items.ingest([{"id": f"blind-{r}", "text": f"a review routed as {r}", "source": "web",
                         "is_gold": r == "gold", **({"gold_label": "fresh"} if r == "gold" else {})}
                        for r in REASONS])
    items = store.items.list()
    store.predictions.record([{"item_id": it.id, "model_version": "v7", "label": "fresh", "confidence": 0.93,
                               "probabilities": {"fresh": 0.93, "rotten": 0.07}} for it in items])
    store.decisions.record([{"item_id": it.id, "action": "review", "reason": it.external_id.removeprefix("blind-"),
                             "priority": 0.9, "score": 0.5} for it in items])
    return store


def _spec(tool: str, url: str) -> TaskSpec:
    section = {"label_studio": {"url": url}} if tool == "label_studio" else {"argilla": {"url": url}}
    return TaskSpec(name=f"blind {tool} {uuid.uuid4().hex[:8]}", tool=tool, labels=["fresh", "rotten"],
                    blind_share=0.0, **section)


def test_label_studio_tasks_of_checks_show_their_fields_only(tmp_path, label_studio):
    from connector.tools.label_studio import LabelStudioTool

    tool = LabelStudioTool(label_studio.url, label_studio.token)
    with _routed_store(tmp_path) as store:
        sync = SyncService(store, _spec("label_studio", label_studio.url), tool)
        assert sync.push_pass().counts["pushed"] == 3
        remote = store.pushes.remote_ids([it.id for it in store.items.list()], "label_studio", sync.project)
        by_key = {it.external_id: remote[it.id] for it in store.items.list()}
    for reason in REASONS:
        task = tool._ls.tasks.get(id=int(by_key[f"blind-{reason}"]))
        assert task.data == {"text": f"a review routed as {reason}", "source": "web", "hitl_id": f"blind-{reason}"}
        assert not task.meta
        predictions = [p if isinstance(p, dict) else p.model_dump() for p in task.predictions or []]
        if reason == "uncertain":  # an ordinary item: the suggestion, under a neutral name
            (p,) = predictions
            assert p["model_version"] == SUGGESTION_SOURCE and p["result"][0]["value"]["choices"] == ["fresh"]
        else:  # an empty prediction only: nothing pre-selected, and Label Studio asks no ML backend for one
            assert [(p["model_version"], p["result"]) for p in predictions] == [(SUGGESTION_SOURCE, [])]


def test_argilla_records_of_checks_show_their_fields_only(tmp_path, argilla):
    from connector.tools.argilla import ArgillaTool

    tool = ArgillaTool(argilla.url, argilla.api_key)
    with _routed_store(tmp_path) as store:
        sync = SyncService(store, _spec("argilla", argilla.url), tool)
        assert sync.push_pass().counts["pushed"] == 3
    dataset = tool.dataset(sync.project)
    assert list(dataset.settings.metadata) == []  # nothing an annotator could sort or filter checks by
    records = {str(r.id): r for r in dataset.records(with_suggestions=True, with_responses=False)}
    for reason in REASONS:
        record = records[f"blind-{reason}"]
        assert dict(record.fields) == {"text": f"a review routed as {reason}"}
        assert not record.metadata
        suggestions = list(record.suggestions)
        if reason == "uncertain":
            (s,) = suggestions
            assert s.value == "fresh" and s.agent == SUGGESTION_SOURCE
        else:
            assert suggestions == []
