"""``store.retention``: job runs, snapshots and superseded predictions and decisions stop growing,
and what their readers use stays (run counts, the latest snapshot, each item's latest rows)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from connector.model_store import ModelStore
from connector.snapshots import AgreementSnapshot, read_latest
from connector.store import Prediction, RoutingDecision, StateStore
from connector.store.models import utcnow
from connector.store.retention import RetentionPolicy
from connector.task_spec import TaskSpec
from sync.jobs import JobContext, metrics_job


@pytest.fixture
def store(tmp_path):
    with StateStore(f"sqlite:///{tmp_path}/state.db") as s:
        s.migrate()
        yield s


def _runs(store: StateStore, job: str, statuses: list[str]) -> list[int]:
    ids = []
    for n, status in enumerate(statuses):
        run = store.job_runs.claim(job, f"slot {n}", "host")
        store.job_runs.finish(run, status, error="boom" if status == "failed" else None)
        ids.append(run)
    return ids


def test_old_job_runs_go_but_the_counts_and_the_last_error_stay(store):
    ids = _runs(store, "sync", ["failed", "ok", "failed", "ok", "ok", "ok"])
    _runs(store, "metrics", ["ok", "ok"])
    pruned = store.retention.prune(RetentionPolicy(job_runs=2))
    assert pruned["job_runs"] == 3  # the sync job's oldest three; its newest failure stays
    assert [r.id for r in store.job_runs.list("sync")] == [ids[5], ids[4], ids[2]]
    summary = store.job_runs.summary()
    assert (summary["sync"]["runs"], summary["sync"]["failures"]) == (6, 2)  # /metrics counters never go back
    assert summary["sync"]["last_error"].id == ids[2] and summary["sync"]["last_run"].id == ids[5]
    assert (summary["metrics"]["runs"], summary["metrics"]["failures"]) == (2, 0)
    _runs(store, "sync", ["failed"])
    store.retention.prune(RetentionPolicy(job_runs=2))
    summary = store.job_runs.summary()["sync"]
    assert (summary["runs"], summary["failures"]) == (7, 3)
    assert len(store.job_runs.list("sync")) == 2  # the newest failure is among the newest two now


def test_snapshots_keep_the_newest_per_kind(store):
    for n in range(5):
        store.snapshots.add("agreement", {"n_items": n})
    store.snapshots.add("counts", {"n": 1})
    assert store.retention.prune(RetentionPolicy(snapshots=3))["snapshots"] == 2
    assert [s.payload["n_items"] for s in store.snapshots.list("agreement")] == [2, 3, 4]
    assert read_latest(store, AgreementSnapshot).snapshot.n_items == 4 and store.snapshots.latest("counts")


def test_superseded_predictions_and_decisions_go_after_the_set_days_and_the_latest_stay(store):
    store.items.ingest([{"id": "a", "text": "one"}, {"id": "b", "text": "two"}])
    a, b = (it.id for it in store.items.list())
    for version in ("v1", "v2"):
        store.predictions.record([{"item_id": a, "model_version": version, "label": "x", "confidence": 0.7,
                                   "probabilities": {"x": 0.7, "y": 0.3}}])
        store.decisions.record([{"item_id": a, "action": "review", "reason": version, "priority": 1.0}])
    store.predictions.record([{"item_id": b, "model_version": "v1", "label": "x", "confidence": 0.7,
                               "probabilities": {"x": 0.7, "y": 0.3}}])
    store.decisions.record([{"item_id": b, "action": "review", "reason": "audit", "priority": 1.0}])
    old = utcnow() - timedelta(days=40)
    with store.engine.begin() as c:
        for table in (Prediction, RoutingDecision):
            c.execute(update(table).values(created_at=old))
    assert store.retention.prune(RetentionPolicy(history_days=60)) == {"job_runs": 0, "snapshots": 0,
                                                                     "predictions": 0, "decisions": 0}
    pruned = store.retention.prune(RetentionPolicy(history_days=30))
    assert (pruned["predictions"], pruned["decisions"]) == (1, 1)
    assert [p.model_version for p in store.predictions.list([a, b])] == ["v2", "v1"]
    assert {i: d.reason for i, d in store.decisions.latest().items()} == {a: "v2", b: "audit"}


def test_one_run_deletes_at_most_batch_rows_per_table(store):
    _runs(store, "sync", ["ok"] * 6)
    for n in range(6):
        store.snapshots.add("agreement", {"n_items": n})
    policy = RetentionPolicy(job_runs=1, snapshots=1, batch=2)
    assert store.retention.prune(policy) == {"job_runs": 2, "snapshots": 2, "predictions": 0, "decisions": 0}
    store.retention.prune(policy)
    store.retention.prune(policy)
    assert len(store.job_runs.list("sync")) == 1 and len(store.snapshots.list("agreement")) == 1
    assert store.job_runs.summary()["sync"]["runs"] == 6


def test_the_metrics_job_applies_the_contexts_retention(store, tmp_path):
    for n in range(4):
        store.snapshots.add("agreement", {"n_items": n})
    ctx = JobContext(store, TaskSpec(name="t", labels=["a", "b"]), ModelStore(tmp_path / "models"),
                     retention=RetentionPolicy(snapshots=2))
    out = metrics_job(ctx)
    assert out["pruned"]["snapshots"] == 3  # 5 agreement snapshots with the job's own: the oldest 3 go
    assert len(store.snapshots.list("agreement")) == 2
