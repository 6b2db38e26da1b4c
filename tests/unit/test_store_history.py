"""``store.history`` on SQLite (the shared cases in ``tests/store_cases.py``), and the history
seen from the outside: a sync loop over the offline tool leaves each change on record, retention
leaves the history alone, and ``hitl history`` prints it in order."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from connector.model_store import ModelStore
from connector.snapshots import ThresholdsSnapshot, write_snapshot
from connector.store import StateStore
from connector.store.models import utcnow
from connector.store.retention import RetentionPolicy
from connector.task_spec import TaskSpec
from connector.tools.offline import OfflineTool
from hitl.cli import app
from sync.jobs import JobContext, sync_job
from sync.service import SyncService
from tests.store_cases import T0, HistoryCases, annotation, ingest_three


class TestHistoryRepositoryOnSQLite(HistoryCases):
    pass


class SurePredictor:
    """``e0`` at 0.99 (auto-accepted under 0.95), everything else at 0.6 (sent to review)."""

    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        return [{"label": "a", "confidence": c, "probabilities": {"a": c, "b": 1 - c}, "model_version": "v1"}
                for c in (0.99 if t == "text 0" else 0.6 for t in texts)]


@pytest.fixture
def loop(tmp_path):
    """A store with items e0, e1, e2, and a sync context over the offline tool (two answers per item)."""
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    store.items.ingest([{"id": f"e{i}", "text": f"text {i}"} for i in range(3)])
    tool = OfflineTool()
    spec = TaskSpec(name="history", labels=["a", "b"], overlap=2,
                    routing={"accept_threshold": 0.95, "label_overrides": {"a": 0.97}, "spot_check_rate": 0.0,
                             "audit_share": 0.0}, thresholds={"adapt": False})  # a fixed threshold applies
    sync = SyncService(store, spec, tool, SurePredictor())
    yield store, tool, JobContext(store, spec, ModelStore(tmp_path / "models"), make_sync=lambda: sync)
    store.close()


def _kinds(store: StateStore, external_id: str) -> list[tuple[str, str]]:
    item = store.items.versions(external_id)[-1]
    return [(e.kind, e.actor) for e in store.history.for_item(item.id)]


def test_the_sync_loop_leaves_each_change_on_record_in_order(loop):
    store, tool, ctx = loop
    sync_job(ctx)  # e0 auto-accepted at 0.99 (label a: threshold 0.97), e1 and e2 pushed
    project = ctx.sync.project
    (accepted,) = store.history.list(kind="auto_accepted")
    assert accepted.detail == {"label": "a", "confidence": 0.99, "model_version": "v1", "threshold": 0.97,
                               "reason": "confident"}
    tool.annotate(project, "e1", "ann-1", ["a"])
    tool.annotate(project, "e1", "ann-2", ["b"])  # a tie: sent back for a third answer
    sync_job(ctx)
    tool.annotate(project, "e1", "ann-2", ["a"])  # ann-2 changes their mind: settled on a
    sync_job(ctx)
    tool.delete_answer(project, f"{tool.find(project, ['e1'])['e1']}/ann-1")
    sync_job(ctx)  # one answer left: unsettled again (too few answers), sent back for a second one
    assert _kinds(store, "e1") == [
        ("answer_added", "ann-1"), ("answer_added", "ann-2"),
        ("consensus_changed", "scheduler"), ("sent_back", "scheduler"),
        ("answer_edited", "ann-2"), ("consensus_changed", "scheduler"),
        ("answer_deleted", "ann-1"), ("consensus_changed", "scheduler"), ("sent_back", "scheduler")]
    e1 = store.history.for_item(store.items.versions("e1")[0].id)
    sent = [e.detail for e in e1 if e.kind == "sent_back"]
    assert [(d["answers_wanted"], d["reason"], d["tool"]) for d in sent] == [(3, "tie", "offline"),
                                                                                (2, "too_few_answers", "offline")]
    assert (e1[4].detail["old_value"], e1[4].detail["value"]) == (["b"], ["a"])
    assert [(e.detail["old_label"], e.detail["label"]) for e in e1 if e.kind == "consensus_changed"] == [
        (None, None), (None, "a"), ("a", None)]
    sync_job(ctx)
    assert len(store.history.list(kind="sent_back")) == 2  # asked once per answer count
    assert _kinds(store, "e2") == []  # pushed, never answered: nothing changed


def test_retention_leaves_the_history_alone(loop):
    store, tool, ctx = loop
    sync_job(ctx)
    tool.annotate(ctx.sync.project, "e1", "ann-1", ["a"])
    sync_job(ctx)
    write_snapshot(store, ThresholdsSnapshot(threshold=0.93))
    write_snapshot(store, ThresholdsSnapshot(threshold=0.9))
    e0 = store.items.versions("e0")[0].id
    store.decisions.record([{"item_id": e0, "action": "auto_accept", "reason": "confident", "priority": 0.0}])
    before = [(e.id, e.kind, e.detail) for e in store.history.list()]
    assert {k for _, k, _ in before} == {"auto_accepted", "answer_added", "consensus_changed", "sent_back",
                                         "threshold_changed"}
    pruned = store.retention.prune(RetentionPolicy(job_runs=1, snapshots=1, history_days=1e-9))
    assert pruned["snapshots"] == 1 and pruned["decisions"] == 1  # retention deleted the superseded rows ...
    assert [(e.id, e.kind, e.detail) for e in store.history.list()] == before  # ... and none of the history


def test_hitl_history_prints_an_items_events_oldest_first(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with StateStore(url) as store:
        store.migrate()
        a = ingest_three(store)["a"]
        write_snapshot(store, ThresholdsSnapshot(threshold=0.93, adapt=True))
        store.predictions.record([{"item_id": a, "model_version": "m1", "label": "pos", "confidence": 0.96,
                                   "probabilities": {"pos": 0.96, "neg": 0.04}}])
        store.decisions.record([{"item_id": a, "action": "auto_accept", "reason": "confident", "priority": 0.04,
                                 "threshold": 0.93}])
        store.annotations.upsert([annotation(a)])
        store.annotations.upsert([annotation(a, value=["neg"], updated_at=T0 + timedelta(minutes=5))])
        store.labels.save([{"item_id": a, "label": "neg", "status": "settled", "method": "majority",
                            "n_answers": 1, "reason": "agreed"}])
        store.items.ingest([{"id": "a", "text": "alpha, edited"}])  # version 2
        v2 = store.items.versions("a")[-1].id
        store.history.record([{"item_id": v2, "kind": "adjudicated", "actor": "lead",
                               "detail": {"old_label": None, "label": "pos", "note": "checked"}}])
        store.annotations.upsert([annotation(ingest_three(store)["b"], remote_id="9")])  # another item's
    env = {"HITL_DB_URL": url, "COLUMNS": "250"}
    result = CliRunner().invoke(app, ["history", "a", "--json"], env=env)
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    assert [(e["kind"], e["actor"], e["item_version"]) for e in got] == [
        ("threshold_changed", "scheduler", None), ("auto_accepted", "router", 1), ("answer_added", "ann1", 1),
        ("answer_edited", "ann1", 1), ("consensus_changed", "scheduler", 1), ("adjudicated", "lead", 2)]
    assert got[3]["detail"]["old_value"] == ["pos"] and got[3]["source_at"].startswith("2026-11-01T12:05:00")

    table = CliRunner().invoke(app, ["history", "a"], env=env)
    assert table.exit_code == 0, table.output
    lines = [line for line in table.output.splitlines() if "│" in line and "event" not in line]
    assert [next(k for k in ("threshold_changed", "auto_accepted", "answer_added", "answer_edited",
                             "consensus_changed", "adjudicated") if k in line) for line in lines] == [
        "threshold_changed", "auto_accepted", "answer_added", "answer_edited", "consensus_changed", "adjudicated"]
    assert "0.9600 ≥ 0.9300 (model m1)" in table.output and "pos (submitted) → neg (submitted)" in table.output
    assert "6 events" in table.output

    no_task = json.loads(CliRunner().invoke(app, ["history", "a", "--json", "--no-task-wide"], env=env).output)
    assert [e["kind"] for e in no_task] == ["auto_accepted", "answer_added", "answer_edited", "consensus_changed",
                                            "adjudicated"]
    missing = CliRunner().invoke(app, ["history", "nope"], env=env)
    assert missing.exit_code == 1 and "no item with id 'nope'" in missing.output


def test_history_of_an_item_is_kept_across_a_restart_and_task_wide_events_start_at_its_ingest(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with StateStore(url) as store:
        store.migrate()
        write_snapshot(store, ThresholdsSnapshot(threshold=0.93))  # before the item existed
        a = ingest_three(store)["a"]
        write_snapshot(store, ThresholdsSnapshot(threshold=0.91))
    with StateStore(url) as again:
        since = again.items.get(a).created_at
        assert [e.detail["new"] for e in again.history.for_item(a, task_wide_since=since)] == [0.91]
        assert [e.detail["new"] for e in again.history.list(kind="threshold_changed",
                                                            since=utcnow() - timedelta(hours=1))] == [0.93, 0.91]
