"""What the scheduler leaves behind: job runs (one per job and slot) and dated snapshots of measurements."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from connector.store.history import append as append_events
from connector.store.models import JOB_STATUSES, JobRun, Snapshot, utcnow
from connector.store.repository import Repository
from connector.store.retention import pruned_runs


class JobRunRepository(Repository):
    """``store.job_runs``: a run claims its ``(job_id, slot)`` once, then finishes ``ok`` or ``failed``."""

    def claim(self, job_id: str, slot: str, host: str) -> int | None:
        """Insert the ``running`` row for ``(job_id, slot)``; ``None`` when another run holds it."""
        try:
            with self._sessions.begin() as s:
                run = JobRun(job_id=job_id, slot=slot, host=host, status="running", detail={})
                s.add(run)
                s.flush()
                return run.id
        except IntegrityError:
            return None

    def finish(self, run_id: int, status: str, *, error: str | None = None,
               detail: Mapping[str, Any] | None = None) -> None:
        """Close a run as ``ok`` or ``failed`` with its error text and what it did."""
        if status not in JOB_STATUSES:
            raise ValueError(f"unknown job status {status!r}; expected one of {', '.join(JOB_STATUSES)}")
        with self._sessions.begin() as s:
            run = s.get(JobRun, run_id)
            if run is None:
                raise ValueError(f"unknown job run {run_id}")
            run.status, run.error, run.finished_at = status, error, utcnow()
            run.detail = json.loads(json.dumps(dict(detail or {}), default=str))

    def list(self, job_id: str | None = None, *, limit: int | None = None) -> list[JobRun]:
        """Job runs, newest first."""
        stmt = select(JobRun).order_by(JobRun.id.desc()).limit(limit)
        if job_id is not None:
            stmt = stmt.where(JobRun.job_id == job_id)
        with self._sessions() as s:
            return list(s.scalars(stmt))

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per job: ``last_run`` (the newest run), ``last_error`` (the newest failed run) and
        ``runs``/``failures`` counts (the runs retention deleted included)."""
        with self._sessions() as s:
            pruned = pruned_runs(s)
            counts = s.execute(select(JobRun.job_id, JobRun.status, func.count())
                               .group_by(JobRun.job_id, JobRun.status)).tuples().all()
            newest = select(func.max(JobRun.id)).group_by(JobRun.job_id)
            failed = select(func.max(JobRun.id)).where(JobRun.status == "failed").group_by(JobRun.job_id)
            last = {r.job_id: r for r in s.scalars(select(JobRun).where(JobRun.id.in_(newest)))}
            errors = {r.job_id: r for r in s.scalars(select(JobRun).where(JobRun.id.in_(failed)))}
        out: dict[str, dict[str, Any]] = {}
        for job_id, status, n in counts:
            entry = out.setdefault(job_id, {"runs": 0, "failures": 0, "last_run": last.get(job_id),
                                            "last_error": errors.get(job_id)})
            entry["runs"] += n
            entry["failures"] += n if status == "failed" else 0
        for job_id, entry in out.items():
            entry["runs"] += pruned.get(job_id, {}).get("runs", 0)
            entry["failures"] += pruned.get(job_id, {}).get("failures", 0)
        return out


class SnapshotRepository(Repository):
    """``store.snapshots``: dated JSON measurements by kind (agreement, thresholds, quality...)."""

    def add(self, kind: str, payload: Mapping[str, Any], *,
            changes: Callable[[Any, dict[str, Any]], Iterable[Mapping[str, Any]]] | None = None) -> int:
        """Keep a dated measurement (JSON-serializable; numpy values are converted).

        ``changes(previous, payload)``: the label events (``store.history``) this measurement
        makes, given the previous payload of its kind (``None``: the first); they are appended in
        the same transaction (e.g. ``threshold_changed``)."""
        with self._sessions.begin() as s:
            stored = json.loads(json.dumps(dict(payload), default=_jsonable))
            if changes is not None:
                previous = s.scalars(select(Snapshot.payload).where(Snapshot.kind == kind)
                                     .order_by(Snapshot.id.desc()).limit(1)).first()
                append_events(s, changes(previous, stored))
            snap = Snapshot(kind=kind, payload=stored)
            s.add(snap)
            s.flush()
            return snap.id

    def list(self, kind: str, *, limit: int | None = None) -> list[Snapshot]:
        """Snapshots of one kind, oldest first (the newest ``limit`` when given)."""
        stmt = select(Snapshot).where(Snapshot.kind == kind).order_by(Snapshot.id.desc()).limit(limit)
        with self._sessions() as s:
            return list(reversed(list(s.scalars(stmt))))

    def latest(self, kind: str) -> Snapshot | None:
        """The newest snapshot of ``kind``, or ``None``."""
        found = self.list(kind, limit=1)
        return found[0] if found else None


def _jsonable(value: Any) -> Any:
    """``json.dumps`` fallback: numpy scalars and arrays, datetimes, anything else as text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
