"""Retention: the rows that only grow (job runs, snapshots, superseded predictions and decisions)
are deleted once old, bounded per run, keeping what their readers use.

What stays, and why:

- job runs: the newest ``job_runs`` per job, and its newest failure (``hitl jobs`` shows the last
  error); the deleted runs are counted in one carry row (snapshot kind ``job_runs_pruned``) that
  ``JobRunRepository.summary`` adds back, so the run and failure counts (``/metrics`` counters)
  never go down;
- snapshots: the newest ``snapshots`` per kind (``read_latest`` reads the newest; the report's
  labels-over-time and the simulator's retrain history read the recent ones);
- predictions and routing decisions: each item's latest one always (every reader takes the latest:
  routing, push suggestions, the threshold pool, the random-evidence reasons, the simulator);
  superseded ones only when older than ``history_days``.

The label history (``label_events``) is never pruned: it is append-only, and the database's
triggers would refuse the delete.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, exists, func, select
from sqlalchemy.orm import Session

from connector.store.models import JobRun, Prediction, RoutingDecision, Snapshot, utcnow
from connector.store.repository import Repository

PRUNED_RUNS = "job_runs_pruned"  # snapshot kind of the carry row: job id -> {"runs": n, "failures": m}


class RetentionPolicy(BaseModel):
    """How much history the store keeps (the metrics job applies it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_runs: int = Field(1000, ge=1, description="newest runs kept per job (and its newest failure)")
    snapshots: int = Field(2000, ge=1, description="newest snapshots kept per kind")
    history_days: float = Field(30.0, gt=0, description="superseded predictions and decisions older than this go")
    batch: int = Field(10_000, ge=1, description="most rows deleted per table in one run")


class RetentionRepository(Repository):
    """``store.retention``: :meth:`prune` by a :class:`RetentionPolicy`."""

    def prune(self, policy: RetentionPolicy) -> dict[str, int]:
        """Delete what ``policy`` lets go, at most ``policy.batch`` rows per table; counts by table."""
        with self._sessions.begin() as s:
            runs = _prune_runs(s, policy)
        with self._sessions.begin() as s:
            snapshots = _prune_snapshots(s, policy)
        cutoff = utcnow() - timedelta(days=policy.history_days)
        with self._sessions.begin() as s:
            predictions = _prune_superseded(s, Prediction, cutoff, policy.batch)
        with self._sessions.begin() as s:
            decisions = _prune_superseded(s, RoutingDecision, cutoff, policy.batch)
        return {"job_runs": runs, "snapshots": snapshots, "predictions": predictions, "decisions": decisions}


def pruned_runs(s: Session) -> dict[str, dict[str, int]]:
    """The carry row: per job, the runs and failures already deleted."""
    row = s.scalars(select(Snapshot).where(Snapshot.kind == PRUNED_RUNS).order_by(Snapshot.id.desc())).first()
    return {job: dict(counts) for job, counts in row.payload.items()} if row is not None else {}


def _prune_runs(s: Session, policy: RetentionPolicy) -> int:
    doomed: list[JobRun] = []
    for job_id in s.scalars(select(JobRun.job_id).distinct()).all():
        newest = select(JobRun.id).where(JobRun.job_id == job_id).order_by(JobRun.id.desc())
        keep = set(s.scalars(newest.limit(policy.job_runs)))
        keep.update(s.scalars(newest.where(JobRun.status == "failed").limit(1)))
        keep.update(s.scalars(newest.where(JobRun.status == "running")))  # a run in progress stays
        doomed.extend(s.scalars(select(JobRun).where(JobRun.job_id == job_id, JobRun.id.not_in(keep))
                                .order_by(JobRun.id).limit(policy.batch - len(doomed))))
        if len(doomed) >= policy.batch:
            break
    if not doomed:
        return 0
    carry = pruned_runs(s)
    for run in doomed:
        entry = carry.setdefault(run.job_id, {"runs": 0, "failures": 0})
        entry["runs"] += 1
        entry["failures"] += int(run.status == "failed")
    s.execute(delete(JobRun).where(JobRun.id.in_([run.id for run in doomed])))
    s.execute(delete(Snapshot).where(Snapshot.kind == PRUNED_RUNS))
    s.add(Snapshot(kind=PRUNED_RUNS, payload=carry))
    return len(doomed)


def _prune_snapshots(s: Session, policy: RetentionPolicy) -> int:
    ranked = (select(Snapshot.id, func.row_number().over(partition_by=Snapshot.kind, order_by=Snapshot.id.desc())
                     .label("n")).subquery())
    ids = list(s.scalars(select(ranked.c.id).where(ranked.c.n > policy.snapshots).order_by(ranked.c.id)
                         .limit(policy.batch)))
    if ids:
        s.execute(delete(Snapshot).where(Snapshot.id.in_(ids)))
    return len(ids)


def _prune_superseded(s: Session, table: Any, cutoff: Any, batch: int) -> int:
    newer = table.__table__.alias("newer")  # superseded: the item has a newer row
    superseded = exists().where(newer.c.item_id == table.item_id, newer.c.id > table.id)
    ids = list(s.scalars(select(table.id).where(table.created_at < cutoff, superseded)
                         .order_by(table.id).limit(batch)))
    if ids:
        s.execute(delete(table).where(table.id.in_(ids)))
    return len(ids)
