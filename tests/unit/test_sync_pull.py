"""The generic sync service against the offline tool: push bookkeeping, exactly-once pulls, deletions.

The tool's pull says which stored answers it speaks for: the tasks it returns (Label Studio's
shape) or the whole project (Argilla's). The service marks the rest deleted from that alone.
"""

from __future__ import annotations

import logging
from datetime import datetime

import pytest

from connector.store import StateStore
from connector.task_spec import TaskSpec
from connector.tools.base import Pull, PushItem, RemoteAnswer, RemoteItem
from connector.tools.offline import OfflineTool
from sync.pulls import annotation_rows
from sync.service import SyncService


@pytest.fixture
def store(store_with_three_items):
    return store_with_three_items


def _pushed(store: StateStore, tool: OfflineTool) -> SyncService:
    """A sync whose three items were routed to review and pushed to ``tool``."""
    sync = SyncService(store, TaskSpec(name="pull test", labels=["a", "b"]), tool)
    store.decisions.record([{"item_id": it.id, "action": "review", "reason": "seed", "priority": 1.0}
                            for it in store.items.list()])
    assert sync.push_pass().counts["pushed"] == 3
    return sync


def _stored(store: StateStore) -> dict[str, tuple[str, list[str]]]:
    return {a.remote_id: (a.status, a.value) for a in store.annotations.list(tool="offline")}


def test_push_is_confirmed_under_the_offline_tool_name_and_not_repeated(store):
    tool = OfflineTool()
    sync = _pushed(store, tool)
    ids = {it.external_id: it.id for it in store.items.list()}
    assert store.pushes.remote_ids(ids.values(), "offline", sync.project) == {ids["e0"]: "task-1", ids["e1"]: "task-2",
                                                                       ids["e2"]: "task-3"}
    assert sync.push_pass().counts["pushed"] == 0 and len(tool.find(sync.project)) == 3


def test_a_pending_push_is_confirmed_by_external_id_or_requeued(store):
    tool = OfflineTool()
    sync = SyncService(store, TaskSpec(name="pull test", labels=["a", "b"]), tool)
    items = store.items.list()
    store.decisions.record([{"item_id": it.id, "action": "review", "reason": "seed", "priority": 1.0} for it in items])
    store.pushes.begin([items[0].id, items[1].id], "offline", sync.project)  # a crash after begin
    tool.push(sync.project, [PushItem(items[0].external_id, {})])  # ... and after the remote create, for one
    counts = sync.push_pass().counts
    assert (counts["confirmed"], counts["re-queued"], counts["pushed"]) == (1, 1, 2)
    assert len(tool.find(sync.project)) == 3 and store.pushes.pending("offline", sync.project) == []


def test_pulls_store_each_answer_once_and_follow_edits(store):
    tool = OfflineTool()
    sync = _pushed(store, tool)
    tool.annotate(sync.project, "e0", "ann-1", ["a"])
    tool.annotate(sync.project, "e1", "ann-1", ["b"])
    assert sync.pull_pass().counts == {"inserted": 2, "updated": 0, "unchanged": 0, "deleted": 0}
    assert sync.pull_pass().counts == {}  # the cursor moved: nothing is read again
    assert store.cursors.get("offline", sync.project, "changes") == "2"
    tool.annotate(sync.project, "e0", "ann-1", ["b"])
    assert sync.pull_pass().counts == {"inserted": 0, "updated": 1, "unchanged": 0, "deleted": 0}
    assert _stored(store) == {"task-1/ann-1": ("submitted", ["b"]), "task-2/ann-1": ("submitted", ["b"])}
    assert {it.external_id: it.state for it in store.items.list()} == {"e0": "annotated", "e1": "annotated",
                                                                  "e2": "pushed"}


def test_per_task_pulls_mark_deleted_only_the_missing_answers_of_returned_tasks(store):
    tool = OfflineTool()
    sync = _pushed(store, tool)
    for ext in ("e0", "e1"):
        tool.annotate(sync.project, ext, "ann-1", ["a"])
        tool.annotate(sync.project, ext, "ann-2", ["b"])
    sync.pull_pass()
    tool.delete_answer(sync.project, "task-1/ann-2")
    counts = sync.pull_pass().counts  # task-1 came back whole; its missing answer is updated to deleted
    assert counts == {"inserted": 0, "updated": 1, "unchanged": 1, "deleted": 1}
    assert _stored(store) == {"task-1/ann-1": ("submitted", ["a"]), "task-1/ann-2": ("deleted", ["b"]),
                              "task-2/ann-1": ("submitted", ["a"]), "task-2/ann-2": ("submitted", ["b"])}
    (deleted,) = [a for a in store.annotations.list(tool="offline") if a.status == "deleted"]
    stamp = tool.projects[sync.project].updated_at["task-1"]
    assert deleted.remote_updated_at == datetime.fromisoformat(stamp)  # stamped with the task's update
    assert sync.pull_pass().counts == {}  # and not again


def _hide_once(tool: OfflineTool, answer_id: str) -> None:
    """The tool's next pull leaves out one answer that still exists (an incomplete search answer)."""
    pull = tool.pull

    def short_pull(project, cursor):
        tool.pull = pull
        pulled = pull(project, cursor)
        return Pull([a for a in pulled.answers if a.remote_id != answer_id], pulled.items, pulled.cursor)

    tool.pull = short_pull


def test_whole_project_pulls_mark_deleted_the_answers_absent_from_two_pulls_in_a_row(store):
    tool = OfflineTool(whole_project=True)
    sync = _pushed(store, tool)
    tool.annotate(sync.project, "e0", "ann-1", ["a"])
    tool.annotate(sync.project, "e1", "ann-1", ["b"])
    tool.annotate(sync.project, "e2", "ann-1", ["a"])
    assert sync.pull_pass().counts["inserted"] == 3
    times = {a.remote_id: a.remote_updated_at for a in store.annotations.list(tool="offline")}
    tool.delete_answer(sync.project, "task-1/ann-1")
    tool.delete_answer(sync.project, "task-3/ann-1")
    assert sync.pull_pass().counts == {"inserted": 0, "updated": 0, "unchanged": 1, "deleted": 0, "missing": 2}
    assert _stored(store) == {"task-1/ann-1": ("submitted", ["a"]), "task-2/ann-1": ("submitted", ["b"]),
                              "task-3/ann-1": ("submitted", ["a"])}  # absent once: kept
    assert sync.pull_pass().counts == {"inserted": 0, "updated": 0, "unchanged": 1, "deleted": 2}
    assert _stored(store) == {"task-1/ann-1": ("deleted", ["a"]), "task-2/ann-1": ("submitted", ["b"]),
                              "task-3/ann-1": ("deleted", ["a"])}
    deleted = {a.remote_id: a.remote_updated_at for a in store.annotations.list(tool="offline", status="deleted")}
    assert deleted == {k: times[k] for k in ("task-1/ann-1", "task-3/ann-1")}  # stamped with the answer's own time
    assert sync.pull_pass().counts == {"inserted": 0, "updated": 0, "unchanged": 1, "deleted": 0}


def test_an_answer_missing_from_one_whole_project_pull_stays_live_and_is_deleted_only_when_gone(store):
    tool = OfflineTool(whole_project=True)
    sync = _pushed(store, tool)
    tool.annotate(sync.project, "e0", "ann-1", ["a"])
    tool.annotate(sync.project, "e1", "ann-1", ["b"])
    sync.pull_pass()
    _hide_once(tool, "task-1/ann-1")
    counts = sync.pull_pass().counts
    assert _stored(store)["task-1/ann-1"] == ("submitted", ["a"])  # absent once: still live
    assert counts == {"inserted": 0, "updated": 0, "unchanged": 1, "deleted": 0, "missing": 1}
    assert sync.pull_pass().counts == {"inserted": 0, "updated": 0, "unchanged": 2, "deleted": 0}  # back: unmarked
    _hide_once(tool, "task-1/ann-1")  # absent again, but not from two pulls in a row
    sync.pull_pass()
    sync.pull_pass()
    assert _stored(store) == {"task-1/ann-1": ("submitted", ["a"]), "task-2/ann-1": ("submitted", ["b"])}
    assert store.items.list()[0].state == "annotated"


def test_an_answer_stored_deleted_comes_back_live_from_a_whole_project_pull_whatever_its_time(store):
    tool = OfflineTool(whole_project=True)
    sync = _pushed(store, tool)
    tool.annotate(sync.project, "e0", "ann-1", ["a"])
    sync.pull_pass()
    (stored,) = store.annotations.list(tool="offline")
    # a deletion inferred once and stamped later than the answer (what earlier versions wrote)
    store.annotations.upsert([{"item_id": stored.item_id, "tool": "offline", "project": sync.project,
                               "remote_id": stored.remote_id, "annotator": "ann-1", "value": ["a"],
                               "status": "deleted", "remote_updated_at": "2099-01-01T00:00:00+00:00"}])
    assert sync.pull_pass().counts == {"inserted": 0, "updated": 1, "unchanged": 0, "deleted": 0}
    (back,) = store.annotations.list(tool="offline")
    assert (back.status, back.value, back.remote_updated_at) == ("submitted", ["a"], stored.remote_updated_at)


def test_answers_to_items_we_did_not_push_are_ignored_with_a_warning(store, caplog):
    tool = OfflineTool()
    sync = _pushed(store, tool)
    item = store.items.list()[0]
    pulled = Pull(
        answers=[RemoteAnswer("x/1", "stranger", "zz", "ann-1", ["a"], "submitted", "2026-12-01T00:00:00+00:00"),
                 RemoteAnswer("task-1/ann-1", "task-1", "e0", "ann-1", ["a"], "submitted",
                              "2026-12-01T00:00:00+00:00", lead_time=4.5)],
        items=[RemoteItem("stranger", "zz", "2026-12-01T00:00:00+00:00")])
    with caplog.at_level(logging.WARNING, logger="sync.pulls"):
        rows = annotation_rows(store, "offline", sync.project, pulled)
    assert rows == [{"item_id": item.id, "tool": "offline", "project": sync.project, "remote_id": "task-1/ann-1",
                     "annotator": "ann-1", "value": ["a"], "status": "submitted",
                     "remote_updated_at": "2026-12-01T00:00:00+00:00", "lead_time": 4.5, "extra": None}]
    assert len(caplog.records) == 1 and "stranger" in caplog.text  # one warning per unknown item


def test_send_back_asks_the_tool_by_remote_id_for_pushed_items_only(store):
    tool = OfflineTool()
    sync = _pushed(store, tool)
    ids = [it.id for it in store.items.list()]
    assert sync.send_back([(ids[1], 3, "tie"), (10_000, 3, "tie")]) == 1
    assert tool.projects[sync.project].sent_back == [("task-2", 3, "tie")]
