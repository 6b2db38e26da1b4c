"""The in-memory offline tool: the protocol's calls on plain dicts, pulls shaped like each real tool's."""

from __future__ import annotations

import httpx
import pytest

from connector.task_spec import TaskSpec
from connector.tools.base import AnnotationTool, PushItem
from connector.tools.offline import OfflineTool


def _tool(**kwargs) -> tuple[OfflineTool, str]:
    tool = OfflineTool(**kwargs)
    project = tool.ensure_project(TaskSpec(name="offline test", labels=["a", "b"]))
    return tool, project


def test_it_satisfies_the_protocol_and_names_itself_offline():
    tool: AnnotationTool = OfflineTool()
    assert tool.name == "offline" and tool.cursor_keys == ("changes",)
    assert OfflineTool(project="fixed").ensure_project(TaskSpec(name="x", labels=["a", "b"])) == "fixed"


def test_push_creates_a_task_per_item_every_time_like_label_studio_and_find_returns_the_newest():
    tool, project = _tool()
    first = tool.push(project, [PushItem("e1", {"text": "one"}), PushItem("e2", {"text": "two"})])
    again = tool.push(project, [PushItem("e2", {"text": "two"}), PushItem("e3", {"text": "three"})])
    assert first == {"e1": "task-1", "e2": "task-2"} and again == {"e2": "task-3", "e3": "task-4"}
    assert len(tool.projects[project].items) == 4  # e2 twice, as Label Studio's import would hold it
    assert tool.find(project) == {"e1": "task-1", "e2": "task-3", "e3": "task-4"}
    assert tool.find(project, ["e3", "missing"]) == {"e3": "task-4"}


def test_a_push_whose_answer_is_lost_after_the_commit_is_not_sent_twice():
    tool, project = _tool()
    tool.push_faults = ["after_commit"]
    mapping = tool.push(project, [PushItem(f"e{i}", {}) for i in range(3)])
    assert len(tool.projects[project].items) == 3  # counted in the tool, not by key: no duplicate
    assert mapping == {"e0": "task-1", "e1": "task-2", "e2": "task-3"} == tool.find(project)
    assert tool.creates == [["e0", "e1", "e2"]]  # looked up, nothing missing, nothing sent again


def test_a_push_that_failed_before_the_commit_is_sent_again_and_a_lasting_fault_gives_up():
    tool, project = _tool()
    tool.push_faults = ["before_commit"]
    assert tool.push(project, [PushItem("e0", {})]) == {"e0": "task-1"}
    assert tool.creates == [["e0"], ["e0"]] and len(tool.projects[project].items) == 1
    tool.push_faults = ["after_commit"]
    assert tool.push(project, [PushItem("e1", {}), PushItem("e2", {})]) == {"e1": "task-2", "e2": "task-3"}
    tool.push_faults = ["before_commit"] * 3
    with pytest.raises(httpx.ConnectError):
        tool.push(project, [PushItem("e3", {})])
    assert tool.creates[2:] == [["e1", "e2"], ["e3"], ["e3"], ["e3"]]  # bounded: ``attempts`` sends
    assert len(tool.projects[project].items) == 3


def test_pull_returns_changed_tasks_whole_in_write_order_and_moves_the_cursor():
    tool, project = _tool()
    tool.push(project, [PushItem("e1", {}), PushItem("e2", {}), PushItem("e3", {})])
    tool.annotate(project, "e1", "ann-1", ["a"])
    tool.annotate(project, "e2", "ann-1", ["b"])
    first = tool.pull(project, {})
    assert [(a.remote_id, a.item_remote_id, a.external_id, a.value) for a in first.answers] == [
        ("task-1/ann-1", "task-1", "e1", ["a"]), ("task-2/ann-1", "task-2", "e2", ["b"])]
    assert [it.remote_id for it in first.items] == ["task-1", "task-2"] and first.cursor == {"changes": "2"}
    assert tool.pull(project, first.cursor).answers == []  # nothing changed since
    tool.annotate(project, "e1", "ann-2", ["b"], status="skipped")
    later = tool.pull(project, first.cursor)
    assert [it.external_id for it in later.items] == ["e1"]  # e1 changed: both of its answers come back
    assert [(a.remote_id, a.status) for a in later.answers] == [("task-1/ann-1", "submitted"),
                                                                ("task-1/ann-2", "skipped")]
    tool.delete_answer(project, "task-1/ann-1")
    gone = tool.pull(project, later.cursor)
    assert [it.remote_id for it in gone.items] == ["task-1"] and [a.remote_id for a in gone.answers] == ["task-1/ann-2"]
    assert gone.items[0].updated_at >= later.items[0].updated_at


def test_whole_project_pulls_return_every_answer_like_argilla():
    tool, project = _tool(whole_project=True)
    tool.push(project, [PushItem("e1", {}), PushItem("e2", {})])
    tool.annotate(project, "e1", "ann-1", ["a"])
    tool.annotate(project, "e2", "ann-1", ["a"])
    pulled = tool.pull(project, {"changes": "2"})
    assert pulled.items is None and [a.remote_id for a in pulled.answers] == ["task-1/ann-1", "task-2/ann-1"]


def test_send_back_is_recorded_and_delete_removes_tasks_with_their_answers():
    tool, project = _tool()
    tool.push(project, [PushItem("e1", {}), PushItem("e2", {})])
    tool.annotate(project, "e1", "ann-1", ["a"])
    assert tool.send_back(project, [("task-1", 3, "tie")]) == 1
    assert tool.projects[project].sent_back == [("task-1", 3, "tie")]
    assert tool.delete(project, ["task-1", "task-9"]) == 1
    assert tool.find(project) == {"e2": "task-2"} and tool.pull(project, {}).answers == []
