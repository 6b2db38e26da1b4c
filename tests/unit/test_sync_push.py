"""The push pass against the offline tool: a lost answer sends nothing twice, item versions keep their own tasks."""

from __future__ import annotations

import pytest

from connector.store import StateStore
from connector.task_spec import TaskSpec
from connector.tools.offline import OfflineTool
from sync.service import SyncService

SPEC = TaskSpec(name="push test", labels=["a", "b"])


@pytest.fixture
def store(store_with_three_items):
    return store_with_three_items


def _review(store: StateStore, items) -> None:
    store.decisions.record([{"item_id": it.id, "action": "review", "reason": "seed", "priority": 1.0} for it in items])


def test_a_push_whose_answer_was_lost_after_the_commit_confirms_each_item_with_its_one_task(store):
    tool = OfflineTool()
    sync = SyncService(store, SPEC, tool)
    _review(store, store.items.list())
    tool.push_faults = ["after_commit"]
    assert sync.push_pass().counts["pushed"] == 3
    tasks = tool.projects[sync.project].items
    assert len(tasks) == 3  # counted in the tool itself
    ids = [it.id for it in store.items.list()]
    assert sorted(store.pushes.remote_ids(ids, "offline", sync.project).values()) == sorted(tasks)
    assert store.pushes.pending("offline", sync.project) == []


def test_reconcile_does_not_confirm_a_new_versions_push_with_the_old_versions_task(store):
    tool = OfflineTool()
    sync = SyncService(store, SPEC, tool)
    v1 = next(it for it in store.items.list() if it.external_id == "e0")
    _review(store, [v1])
    assert sync.push_pass().counts["pushed"] == 1
    (v1_task,) = store.pushes.remote_ids([v1.id], "offline", sync.project).values()
    assert store.items.ingest([{"id": "e0", "text": "text 0, corrected"}]).new_versions == 1
    v2 = store.items.versions("e0")[1]
    _review(store, [v2])
    store.pushes.begin([v2.id], "offline", sync.project)  # then a crash, before the remote create
    counts = sync.push_pass().counts  # reconciles, then pushes what was not found
    assert counts["confirmed"] == 0 and counts["re-queued"] == 1 and counts["pushed"] == 1
    remote = store.pushes.remote_ids([v1.id, v2.id], "offline", sync.project)
    assert remote[v1.id] == v1_task and remote[v2.id] != v1_task
    assert tool.projects[sync.project].items[remote[v2.id]].data["text"] == "text 0, corrected"
    # answers on v1's task attach to v1, answers on v2's task to v2
    tool.annotate(sync.project, "e0", "ann-1", ["a"])  # the key v1 was sent under: its external id
    (v2_key,) = [k for k, t in tool.find(sync.project).items() if t == remote[v2.id]]
    tool.annotate(sync.project, v2_key, "ann-2", ["b"])
    sync.pull_pass()
    answers = {a.annotator: a.item_id for a in store.annotations.list(tool="offline")}
    assert answers == {"ann-1": v1.id, "ann-2": v2.id}


def test_a_crash_after_a_new_versions_create_is_confirmed_with_its_own_task(store):
    tool = OfflineTool()
    sync = SyncService(store, SPEC, tool)
    v1 = next(it for it in store.items.list() if it.external_id == "e1")
    _review(store, [v1])
    sync.push_pass()
    store.items.ingest([{"id": "e1", "text": "text 1, v2"}])
    v2 = store.items.versions("e1")[1]
    _review(store, [v2])
    store.pushes.begin([v2.id], "offline", sync.project)
    (routed,) = [(it, d) for it, d in store.decisions.routed(action="review") if it.id == v2.id]
    tool.push(sync.project, [sync._push_item(*routed, None)])  # created, then the crash before confirm
    counts = sync.push_pass().counts
    assert counts["confirmed"] == 1 and counts["pushed"] == 0
    remote = store.pushes.remote_ids([v1.id, v2.id], "offline", sync.project)
    assert remote[v1.id] != remote[v2.id] and len(tool.projects[sync.project].items) == 2
