"""The adjudication queue against the offline tool: items the annotators cannot settle go to the
task's adjudication project once, with the answers in conflict, and the adjudicator's answer
settles them (method ``adjudicated``); a crash between the push and its confirmation is reconciled.

The offline tool plays Label Studio (per-item overlap) or, with ``per_item_overlap=False`` and
whole-project pulls, Argilla; a stub predictor sends every item to review.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from connector.labeling_config import parse_labeling_config
from connector.model_store import ModelStore
from connector.store import StateStore
from connector.task_spec import TaskSpec
from connector.tools.base import ANSWERS_FIELD, adjudication_name
from connector.tools.label_studio import adjudication_config
from connector.tools.offline import OfflineTool
from sync import jobs
from sync.jobs import JobContext, PassesFailed, metrics_job, sync_job
from sync.service import SyncService

TASK = "adjudication test"
ADJ = adjudication_name(TASK)


class StubPredictor:
    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        return [{"label": "a", "confidence": 0.6, "probabilities": {"a": 0.6, "b": 0.4}, "model_version": "v1"}
                for _ in texts]


@pytest.fixture
def store(store_with_three_items):
    return store_with_three_items


@pytest.fixture
def announced(monkeypatch) -> list[dict[str, Any]]:
    """The events the adjudication hook was called with."""
    calls: list[dict[str, Any]] = []
    hook = jobs.record_adjudicated
    monkeypatch.setattr(jobs, "record_adjudicated", lambda store, rows: (calls.extend(rows), hook(store, rows)))
    return calls


def _context(store: StateStore, tmp_path, tool: OfflineTool, **spec: Any) -> JobContext:
    spec = {"overlap": 2, **spec}
    sync = SyncService(store, TaskSpec(name=TASK, labels=["a", "b"], **spec), tool, StubPredictor())
    return JobContext(store, sync.spec, ModelStore(tmp_path / "models"), make_sync=lambda: sync)


def _tie(ctx: JobContext, tool: OfflineTool, ext: str = "e0") -> None:
    sync_job(ctx)  # predicted, routed, pushed
    tool.annotate(ctx.sync.project, ext, "ann-1", ["a"])
    tool.annotate(ctx.sync.project, ext, "ann-2", ["b"])


def _label(store: StateStore, ext: str) -> Any:
    (item,) = [it for it in store.items.list() if it.external_id == ext]
    (label,) = store.labels.list(status=None, item_ids=[item.id])
    return item, label


def test_an_item_unsettled_at_max_answers_goes_to_adjudication_once_and_the_answer_settles_it(
        store, tmp_path, announced):
    tool = OfflineTool()
    ctx = _context(store, tmp_path, tool, consensus={"max_answers": 2})
    _tie(ctx, tool)
    out = sync_job(ctx)["consolidate"]
    assert (out["sent_back"], out["to_adjudication"]) == (0, 1)
    adj = tool.projects[ADJ]
    (task,) = adj.items.values()
    assert task.external_id == "e0" and task.data["text"] == "text 0"
    assert task.data == {"text": "text 0", ANSWERS_FIELD: "a: 1 (ann-1)\nb: 1 (ann-2)"} and task.result is None
    item, label = _label(store, "e0")
    assert (label.status, label.reason) == ("unsettled", "needs_adjudication (tie after 2 answers)")
    assert store.pushes.remote_ids([item.id], "offline", ADJ) == {item.id: next(iter(adj.items))}

    again = sync_job(ctx)["consolidate"]  # a re-run doubles nothing
    assert (again["to_adjudication"], len(adj.items), len(tool.creates)) == (0, 1, 2)
    assert tool.projects[ctx.sync.project].sent_back == []

    tool.annotate(ADJ, "e0", "lead", ["b"])
    out = sync_job(ctx)["consolidate"]
    assert out["adjudicated"] == 1
    item, label = _label(store, "e0")
    assert (label.label, label.status, label.method, label.n_answers) == ("b", "settled", "adjudicated", 2)
    assert label.reason == "adjudicated by lead" and item.state == "consolidated"
    assert announced == [{"item_id": item.id, "kind": "adjudicated", "actor": "lead",
                          "detail": {"old_label": None, "label": "b", "note": "adjudicated by lead"}}]
    (event,) = store.history.list(kind="adjudicated")  # on the item's record, for good
    assert (event.item_id, event.actor, event.detail["label"]) == (item.id, "lead", "b")

    sync_job(ctx)  # settled once: the hook hears of it once, and nothing is pushed again
    assert len(announced) == 1 and len(adj.items) == 1
    assert metrics_job(ctx)["annotators"] == 2  # the adjudicator's answer is no vote in the agreement figures

    tool.annotate(ADJ, "e0", "lead", ["a"])  # the adjudicator changes their mind
    sync_job(ctx)
    assert _label(store, "e0")[1].label == "a"
    assert [(e["detail"]["old_label"], e["detail"]["label"]) for e in announced] == [(None, "b"), ("b", "a")]


def test_a_crash_after_the_adjudication_push_before_its_confirmation_is_reconciled(store, tmp_path, monkeypatch):
    tool = OfflineTool()
    ctx = _context(store, tmp_path, tool, consensus={"max_answers": 2})
    _tie(ctx, tool)
    confirm = store.pushes.confirm

    def dies_on_adjudication(remote_ids, tool_name, project):
        if project == ADJ:
            raise SystemExit("killed after the remote create")  # the process dies: nothing after it runs
        return confirm(remote_ids, tool_name, project)

    monkeypatch.setattr(store.pushes, "confirm", dies_on_adjudication)
    with pytest.raises(SystemExit):
        sync_job(ctx)
    assert len(store.pushes.pending("offline", ADJ)) == 1 and len(tool.projects[ADJ].items) == 1
    monkeypatch.setattr(store.pushes, "confirm", confirm)

    out = sync_job(ctx)["consolidate"]
    assert out["to_adjudication"] == 0 and len(tool.projects[ADJ].items) == 1  # confirmed by key, not sent again
    assert store.pushes.pending("offline", ADJ) == []
    item, _ = _label(store, "e0")
    assert store.pushes.remote_ids([item.id], "offline", ADJ) == {item.id: next(iter(tool.projects[ADJ].items))}


def test_an_adjudication_push_that_never_reached_the_tool_is_sent_again(store, tmp_path):
    tool = OfflineTool(attempts=1)
    ctx = _context(store, tmp_path, tool, consensus={"max_answers": 2})
    _tie(ctx, tool)
    tool.push_faults = ["before_commit"]
    with pytest.raises(PassesFailed, match="consolidate"):
        sync_job(ctx)
    assert len(store.pushes.pending("offline", ADJ)) == 1 and tool.projects[ADJ].items == {}
    assert _label(store, "e0")[1].reason == "needs_adjudication (tie after 2 answers)"  # the rows were saved first
    out = sync_job(ctx)["consolidate"]
    assert out["to_adjudication"] == 1 and len(tool.projects[ADJ].items) == 1
    assert store.pushes.pending("offline", ADJ) == []


def test_in_a_tool_without_per_item_overlap_a_tie_goes_to_adjudication_at_once(store, tmp_path, announced):
    tool = OfflineTool(whole_project=True, per_item_overlap=False)  # Argilla's shape
    ctx = _context(store, tmp_path, tool)  # max_answers 5: Label Studio would ask for a third answer
    _tie(ctx, tool)
    tool.annotate(ctx.sync.project, "e1", "ann-1", ["a"])  # one answer of two: Argilla's queue still has it
    out = sync_job(ctx)["consolidate"]
    assert (out["sent_back"], out["to_adjudication"]) == (0, 1)
    assert [t.external_id for t in tool.projects[ADJ].items.values()] == ["e0"]
    assert _label(store, "e0")[1].reason == "needs_adjudication (tie after 2 answers)"
    assert _label(store, "e1")[1].reason == "too_few_answers"
    tool.annotate(ADJ, "e0", "lead", ["a"])
    sync_job(ctx)
    label = _label(store, "e0")[1]
    assert (label.label, label.method, label.n_answers) == ("a", "adjudicated", 2) and len(announced) == 1


def test_an_adjudicators_skip_or_unknown_label_settles_nothing(store, tmp_path, announced):
    tool = OfflineTool()
    ctx = _context(store, tmp_path, tool, consensus={"max_answers": 2})
    _tie(ctx, tool, "e0")
    tool.annotate(ctx.sync.project, "e1", "ann-1", ["a"])
    tool.annotate(ctx.sync.project, "e1", "ann-2", ["b"])
    sync_job(ctx)
    tool.annotate(ADJ, "e0", "lead", [], status="skipped")
    tool.annotate(ADJ, "e1", "lead", ["maybe"])
    out = sync_job(ctx)["consolidate"]
    assert (out["adjudicated"], out["invalid_answers"]) == (0, 1)
    assert _label(store, "e0")[1].reason == "needs_adjudication (tie after 2 answers); skipped by the adjudicator"
    assert _label(store, "e1")[1].status == "unsettled" and announced == []


def test_without_a_sync_service_stored_verdicts_still_settle_and_nothing_is_pushed(store, tmp_path):
    tool = OfflineTool()
    ctx = _context(store, tmp_path, tool, consensus={"max_answers": 2})
    _tie(ctx, tool)
    sync_job(ctx)
    tool.annotate(ADJ, "e0", "lead", ["a"])
    ctx.sync.adjudication.pull()
    offline = JobContext(store, ctx.spec, ctx.models)  # no tool at all
    assert jobs.consolidate_job(offline)["adjudicated"] == 1
    assert _label(store, "e0")[1].method == "adjudicated"


def test_the_adjudication_project_is_made_only_when_needed(store, tmp_path):
    tool = OfflineTool()
    ctx = _context(store, tmp_path, tool, overlap=1)
    sync_job(ctx)
    tool.annotate(ctx.sync.project, "e0", "ann-1", ["a"])
    assert sync_job(ctx)["consolidate"]["settled"] == 1
    assert ADJ not in tool.projects and ctx.sync.adjudication.key is None


# -- the tools' parts ------------------------------------------------------------------------------

def test_the_label_studio_adjudication_config_shows_the_answers_after_the_text_and_keeps_the_question():
    spec = TaskSpec(name="x", labels=["fresh", "rotten"], instructions="Fresh or rotten?")
    config = adjudication_config(spec.label_config())
    assert parse_labeling_config(config) == parse_labeling_config(spec.label_config())
    text, answers = config.index('name="text"'), config.index(f'value="${ANSWERS_FIELD}"')
    assert text < answers < config.index("<Choices")


def test_the_adjudication_name_fits_label_studios_title_length():
    assert adjudication_name("reviews") == "reviews · adjudication"
    long = adjudication_name("r" * 50, 50)
    assert len(long) == 50 and long.endswith(" · adjudication")


def test_the_offline_tool_makes_an_adjudication_project_and_plays_argillas_send_back():
    spec = TaskSpec(name="x", labels=["a", "b"])
    assert OfflineTool(project="fixed").ensure_adjudication(spec) == "fixed · adjudication"
    tool = OfflineTool(per_item_overlap=False)
    project = tool.ensure_project(spec)
    assert tool.send_back(project, [("task-1", 3, "tie")]) == 0 and tool.projects[project].sent_back == []
