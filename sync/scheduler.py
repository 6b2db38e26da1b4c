"""The scheduler: APScheduler 3 firing the jobs; what ran, and when, is in the state database.

Jobs: ``sync`` (predict, route, push, pull, consolidate) every ``sync_interval_s``; ``metrics``
(agreement, annotator quality, counts) every ``metrics_interval_s``; ``retrain`` (when enough new
labels, then the threshold review) every ``retrain_interval_s`` or on ``retrain_cron``.

The job definitions live in memory (APScheduler's ``MemoryJobStore``): every start adds them
again from the settings, so nothing is pickled into a database that other services may share (a
pickled job store runs whatever code a row names). Several schedulers on one database each fire
every due job, so every run goes through :meth:`Scheduler.execute`: it takes the job's database lock
(:mod:`sync.locks`; a second scheduler skips at once), then claims the run's *slot* (the fire time
the trigger scheduled, aligned on a fixed anchor so that every scheduler computes the same one)
with a unique ``(job_id, slot)`` row. Only the scheduler that inserts the row runs the job. A
failing job is retried (``job_retries`` times, with backoff), then logged and recorded with its
error (and the ``detail`` its exception carries: what the passes of a partly failed sync did); the
scheduler goes on.
"""

from __future__ import annotations

import logging
import socket
import threading
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from tenacity import Retrying, stop_after_attempt, wait_exponential

from sync.locks import job_lock, try_lock

log = logging.getLogger(__name__)

ANCHOR = datetime(2026, 1, 1, tzinfo=UTC)  # interval slots are counted from here by every scheduler
_ACTIVE: Scheduler | None = None  # the scheduler of this process, which the stored job references call


def run_job(job_id: str) -> None:
    """The callable each APScheduler job names: runs ``job_id`` through this process's scheduler."""
    if _ACTIVE is None:
        raise RuntimeError("no scheduler is running in this process")
    _ACTIVE.execute(job_id)


class Scheduler:
    """Jobs by name, triggers, the lock-and-claim rule, and the APScheduler that fires them."""

    def __init__(self, store: Any, jobs: dict[str, Callable[[], dict[str, Any] | None]],
                 triggers: dict[str, IntervalTrigger | CronTrigger], *, retries: int = 2,
                 retry_wait_s: float = 1.0, host: str | None = None) -> None:
        unknown = set(triggers) - set(jobs)
        if unknown:
            raise ValueError(f"triggers for unknown jobs: {sorted(unknown)}")
        self.store = store
        self.jobs = jobs
        self.triggers = triggers
        self.retries = retries
        self.retry_wait_s = retry_wait_s
        self.host = host or f"{socket.gethostname()}:{threading.get_native_id()}"
        self._scheduler: BackgroundScheduler | None = None

    # -- slots, lock and claim -----------------------------------------------------------------

    def slot(self, job_id: str, now: datetime | None = None) -> str:
        """The scheduled fire time this run belongs to: the trigger's latest fire time <= now."""
        now = now or datetime.now(UTC)
        trigger = self.triggers.get(job_id)
        if isinstance(trigger, IntervalTrigger):
            step = trigger.interval.total_seconds()
            start = trigger.start_date or ANCHOR
            n = int((now - start).total_seconds() // step)
            return (start + timedelta(seconds=n * step)).isoformat()
        if isinstance(trigger, CronTrigger):
            fire, prev = trigger.get_next_fire_time(None, now - timedelta(days=1)), None
            while fire is not None and fire <= now:
                prev, fire = fire, trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
            return (prev or now).astimezone(UTC).isoformat()
        return now.replace(microsecond=0).isoformat()  # run by hand: one per second at most

    def execute(self, job_id: str, *, slot: str | None = None) -> str:
        """Run ``job_id`` once for its slot: ``"ran"``, ``"failed"``, ``"locked"`` (another
        scheduler is running it) or ``"claimed"`` (another scheduler ran this slot)."""
        slot = slot or self.slot(job_id)
        with try_lock(self.store.engine, job_lock(job_id)) as got:
            if not got:
                log.info("job %s: another scheduler holds its lock; skipped", job_id)
                return "locked"
            run_id = self.store.job_runs.claim(job_id, slot, self.host)
            if run_id is None:
                log.info("job %s: slot %s already run by another scheduler", job_id, slot)
                return "claimed"
            try:
                detail = None
                for attempt in Retrying(stop=stop_after_attempt(self.retries + 1), reraise=True,
                                        wait=wait_exponential(multiplier=self.retry_wait_s, max=30)):
                    with attempt:
                        n = attempt.retry_state.attempt_number
                        if n > 1:
                            log.warning("job %s: attempt %d of %d", job_id, n, self.retries + 1)
                        detail = self.jobs[job_id]()
            except Exception as exc:
                log.exception("job %s failed", job_id)
                self.store.job_runs.finish(run_id, "failed", error="".join(
                    traceback.format_exception_only(type(exc), exc)).strip(), detail=getattr(exc, "detail", None))
                return "failed"
            self.store.job_runs.finish(run_id, "ok", detail=detail or {})
            log.info("job %s done: %s", job_id, detail)
            return "ran"

    # -- APScheduler ---------------------------------------------------------------------------

    def start(self) -> BackgroundScheduler:
        """Add the jobs (in memory, from the triggers) and start firing."""
        global _ACTIVE
        _ACTIVE = self
        scheduler = BackgroundScheduler(
            executors={"default": {"type": "threadpool", "max_workers": max(2, len(self.triggers))}},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 300}, timezone=UTC)
        for job_id, trigger in self.triggers.items():
            scheduler.add_job("sync.scheduler:run_job", trigger, args=[job_id], id=job_id, name=job_id)
        scheduler.start()
        self._scheduler = scheduler
        return scheduler

    def next_runs(self, now: datetime | None = None) -> dict[str, datetime | None]:
        """Each triggered job's next fire time after ``now``, as the running schedulers compute it."""
        now = now or datetime.now(UTC)
        return {job_id: trigger.get_next_fire_time(None, now) for job_id, trigger in self.triggers.items()}

    def shutdown(self, wait: bool = True) -> None:
        global _ACTIVE
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=wait)
            self._scheduler = None
        if _ACTIVE is self:
            _ACTIVE = None


def interval(seconds: float) -> IntervalTrigger:
    """An interval trigger aligned on :data:`ANCHOR`, so every scheduler fires at the same instants."""
    return IntervalTrigger(seconds=seconds, start_date=ANCHOR, timezone=UTC)
