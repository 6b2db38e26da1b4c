"""What kept the loop from moving (issue #12): skipped items, tasks deleted in the tool, deferred
items waiting on one unanswered task, and a backend outage that stopped the pull.

The offline tool plays Label Studio; a stub predictor plays the ML backend (or its outage).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import pytest

from connector.model_store import ModelStore
from connector.store import StateStore
from connector.task_spec import TaskSpec
from connector.tools.offline import OfflineTool
from sync.jobs import JobContext, sync_job
from sync.scheduler import Scheduler, interval
from sync.service import SyncService


class StubPredictor:
    """Every text gets label ``a`` at 0.6: under any threshold, so everything goes to review."""

    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        return [{"label": "a", "confidence": 0.6, "probabilities": {"a": 0.6, "b": 0.4}, "model_version": "v1"}
                for _ in texts]


class DownPredictor:
    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        raise httpx.ConnectError("ML backend down")


@pytest.fixture
def store(store_with_three_items):
    return store_with_three_items


def _context(store: StateStore, tmp_path, tool: OfflineTool, predictor: Any = None, **spec: Any) -> JobContext:
    sync = SyncService(store, TaskSpec(name="stalls", labels=["a", "b"], **spec), tool, predictor or StubPredictor())
    sync.remote_check_interval_s = 0.0
    return JobContext(store, sync.spec, ModelStore(tmp_path / "models"), make_sync=lambda: sync)


def _states(store: StateStore) -> dict[str, str]:
    return {it.external_id: it.state for it in store.items.list()}


# -- skips ---------------------------------------------------------------------------------------

def test_an_item_only_skipped_is_sent_back_once_and_leaves_pushed(store, tmp_path):
    tool = OfflineTool()
    ctx = _context(store, tmp_path, tool)
    sync_job(ctx)
    tool.annotate(ctx.sync.project, "e0", "ann-1", [], status="skipped")
    out = sync_job(ctx)
    assert out["consolidate"]["sent_back"] == 1
    assert tool.projects[ctx.sync.project].sent_back == [("task-1", 1, "skipped")]
    (label,) = store.labels.list(status=None)
    assert (label.status, label.reason, label.n_answers) == ("unsettled", "skipped", 0)
    assert _states(store) == {"e0": "annotated", "e1": "pushed", "e2": "pushed"}
    assert sync_job(ctx)["consolidate"]["sent_back"] == 0  # asked once per answer count
    tool.annotate(ctx.sync.project, "e0", "ann-2", ["b"])  # someone else answers it
    sync_job(ctx)
    assert [(lb.label, lb.status) for lb in store.labels.list(status=None)] == [("b", "settled")]


def test_an_item_skipped_max_answers_times_is_left_for_adjudication(store, tmp_path):
    tool = OfflineTool()
    ctx = _context(store, tmp_path, tool, consensus={"max_answers": 2})
    sync_job(ctx)
    tool.annotate(ctx.sync.project, "e0", "ann-1", [], status="skipped")
    tool.annotate(ctx.sync.project, "e0", "ann-2", [], status="skipped")
    assert sync_job(ctx)["consolidate"]["sent_back"] == 0
    (label,) = store.labels.list(status=None)
    assert label.reason == "needs_adjudication (skipped after 2 answers)"


def test_with_on_skip_final_a_skip_is_the_items_last_answer(store, tmp_path):
    tool = OfflineTool()
    ctx = _context(store, tmp_path, tool, consensus={"on_skip": "final"})
    sync_job(ctx)
    tool.annotate(ctx.sync.project, "e1", "ann-1", [], status="skipped")
    assert sync_job(ctx)["consolidate"]["sent_back"] == 0
    (label,) = store.labels.list(status=None)
    assert (label.status, label.reason) == ("unsettled", "skipped (final)")
    assert tool.projects[ctx.sync.project].sent_back == [] and _states(store)["e1"] == "annotated"


# -- tasks deleted in the tool -------------------------------------------------------------------

def test_an_item_whose_task_was_deleted_in_the_tool_is_routed_and_pushed_again(store, tmp_path):
    tool = OfflineTool()
    ctx = _context(store, tmp_path, tool)
    sync_job(ctx)
    tool.delete(ctx.sync.project, ["task-2"])  # someone deleted e1's task in Label Studio
    out = sync_job(ctx)
    assert out["check"] == {"checked": 3, "missing": 1}
    assert out["push"]["pushed"] == 1 and tool.find(ctx.sync.project, ["e1"]) == {"e1": "task-4"}
    e1 = store.items.list()[1]
    assert store.pushes.remote_ids([e1.id], "offline", ctx.sync.project) == {e1.id: "task-4"}
    assert [d.reason for d in _decisions(store, e1.id)][-2] == "remote_deleted"  # the mark, then the new route


def test_the_deleted_task_check_looks_a_new_version_up_by_its_own_key(store, tmp_path):
    tool = OfflineTool()
    ctx = _context(store, tmp_path, tool)
    store.items.ingest([{"id": "e1", "text": "text 1, edited"}])  # version 2 of e1
    sync_job(ctx)
    v2 = next(it for it in store.items.list(state="pushed") if it.external_id == "e1")
    assert v2.version == 2 and tool.find(ctx.sync.project, ["e1@v2"])
    ctx.sync.remote_check_interval_s = 0.0
    assert ctx.sync.check_remote().counts["missing"] == 0  # its task is there, under its own key
    tool.delete(ctx.sync.project, list(tool.find(ctx.sync.project, ["e1@v2"]).values()))
    assert ctx.sync.check_remote().counts["missing"] == 1


def test_the_deleted_task_check_is_bounded_per_pass_and_takes_items_in_turn(store, tmp_path):
    tool = OfflineTool()
    ctx = _context(store, tmp_path, tool)
    sync_job(ctx)
    ctx.sync.remote_check_batch = 2
    asked: list[list[str]] = []
    find = tool.find
    tool.find = lambda project, ids=None: asked.append(sorted(ids)) or find(project, ids)  # type: ignore[method-assign]
    for _ in range(3):
        ctx.sync.check_remote()
    assert asked == [["e0", "e1"], ["e2"], ["e0", "e1"]]
    ctx.sync.remote_check_interval_s = 3600.0
    assert ctx.sync.check_remote().counts == {} and len(asked) == 3  # not due yet


def _decisions(store: StateStore, item_id: int) -> list[Any]:
    from sqlalchemy import select

    from connector.store import RoutingDecision

    with store.decisions._sessions() as s:
        return list(s.scalars(select(RoutingDecision).where(RoutingDecision.item_id == item_id)
                              .order_by(RoutingDecision.id)))


# -- deferred items ------------------------------------------------------------------------------

def test_deferred_items_are_requeued_once_the_unanswered_backlog_is_under_a_batch(tmp_path):
    with StateStore(f"sqlite:///{tmp_path / 'state.db'}") as store:
        store.migrate()
        store.items.ingest([{"id": f"i{i}", "text": f"text {i}"} for i in range(40)])
        tool = OfflineTool()
        ctx = _context(store, tmp_path, tool, routing={"accept_threshold": 0.99, "spot_check_rate": 0.0,
                                                       "review_budget": 10})
        first = sync_job(ctx)
        assert first["route"]["review"] == 10 and first["push"]["pushed"] == 10
        pushed = [e for e, s in _states(store).items() if s == "pushed"]
        for ext in pushed[:9]:  # nine answered, one never is
            tool.annotate(ctx.sync.project, ext, "ann-1", ["a"])
        ctx.sync.pull_pass()
        route = ctx.sync.route_pass().counts
        assert route["requeued"] == 30 and route["review"] == 10  # the next batch, despite the one pushed item
        assert ctx.sync.route_pass().counts == {}  # 11 waiting: no third batch yet


# -- a backend outage ----------------------------------------------------------------------------

def _backend_down_with_one_answer_waiting(store: StateStore, tmp_path) -> tuple[OfflineTool, JobContext]:
    """Everything pushed, one answer waiting in the tool, a new item to score, the backend down."""
    tool = OfflineTool()
    ctx = _context(store, tmp_path, tool)
    sync_job(ctx)
    tool.annotate(ctx.sync.project, "e0", "ann-1", ["b"])
    store.items.ingest([{"id": "new", "text": "a new item to score"}])
    ctx.sync.predictor = DownPredictor()
    return tool, ctx


def test_a_backend_outage_still_pulls_and_settles_answers_and_the_run_shows_the_failure(store, tmp_path):
    from sync.jobs import PassesFailed

    tool, ctx = _backend_down_with_one_answer_waiting(store, tmp_path)
    with pytest.raises(PassesFailed) as failed:
        sync_job(ctx)
    assert list(failed.value.failed) == ["predict"]
    assert failed.value.detail["pull"]["inserted"] == 1 and failed.value.detail["consolidate"]["settled"] == 1
    assert [(lb.label, lb.status) for lb in store.labels.list()] == [("b", "settled")]

    tool.annotate(ctx.sync.project, "e1", "ann-1", ["a"])
    scheduler = Scheduler(store, {"sync": lambda: sync_job(ctx)}, {"sync": interval(30)}, retries=0)
    assert scheduler.execute("sync", slot="outage") == "failed"
    (run,) = store.job_runs.list("sync")
    assert run.status == "failed" and "predict: ConnectError: ML backend down" in run.error
    assert run.detail["pull"]["inserted"] == 1 and "error" in run.detail["predict"]
    assert len(store.labels.list()) == 2



def test_a_sync_run_cycle_with_the_backend_down_still_pulls(store, tmp_path):
    from sync.runner import run_cycle

    _, ctx = _backend_down_with_one_answer_waiting(store, tmp_path)
    reports = run_cycle(ctx.sync)  # `hitl sync run`'s cycle: predict fails, the others still run
    assert [r.name for r in reports] == ["route", "push", "pull"]
    assert reports[-1].counts["inserted"] == 1 and len(store.annotations.list()) == 1
