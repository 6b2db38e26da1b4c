"""Build the sync service from settings and run its passes, once or in a loop.

Passes run under the scheduler's sync-job lock (``job_lock("sync")``), so a ``hitl sync`` never
reconciles or pushes while a scheduler's sync job (or another ``hitl sync``) has a push in flight:
reconciling then would find nothing yet, cancel the pending pushes and push them again. The lock
is not waited for: :func:`sync_lock` raises :class:`SyncLocked` at once (the CLI says so and
exits 75, before it even builds the tool), and ``run_forever`` skips that cycle.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from connector.store import StateStore
from connector.task_spec import TaskSpec
from connector.tools.base import AnnotationTool
from sync.jobs import JobContext
from sync.locks import job_lock, try_lock
from sync.scheduler import Scheduler
from sync.service import HttpPredictor, PassReport, SyncService
from sync.settings import SyncSettings
from sync.webhooks import PullRequests, check_bind, create_webhook_app, label_studio_webhook_url

log = logging.getLogger(__name__)

SYNC_LOCK = job_lock("sync")
LOCKED_EXIT = 75  # EX_TEMPFAIL: nothing was done, try again later


class SyncLocked(RuntimeError):
    """Another process holds the sync lock: a scheduler's sync job, or another ``hitl sync``."""


@contextlib.contextmanager
def sync_lock(store: StateStore) -> Iterator[None]:
    """Hold the sync-job lock for the block, or raise :class:`SyncLocked` at once."""
    with try_lock(store.engine, SYNC_LOCK) as got:
        if not got:
            raise SyncLocked(f"another process holds the sync lock ({SYNC_LOCK}): a scheduler's sync job or "
                             "another `hitl sync`; nothing was done, run it again when that one has finished")
        yield


def open_store(settings: SyncSettings) -> StateStore:
    store = StateStore(settings.db_url)
    store.migrate()
    return store


def build_tool(spec: TaskSpec, settings: SyncSettings | None = None) -> AnnotationTool:
    """The annotation tool the task file names, with its connection settings; for Label Studio with
    ``HITL_SYNC_PUBLIC_URL`` set, the project webhook to this service's receiver (with the secret)."""
    if spec.tool == "argilla":
        from connector.tools.argilla import ArgillaTool

        return ArgillaTool(spec.argilla.url, spec.argilla.api_key(), workspace=spec.argilla.workspace)
    from connector.tools.label_studio import LabelStudioTool

    public = settings.sync_public_url if settings is not None else None
    secret = settings.webhook_secret.get_secret_value() if settings is not None and settings.webhook_secret else None
    return LabelStudioTool(spec.label_studio.url, spec.label_studio.api_key(),
                           webhook_url=label_studio_webhook_url(public) if public else None, webhook_secret=secret)


def build_sync(settings: SyncSettings, store: StateStore, *,
               progress: Callable[[str, int], None] | None = None) -> SyncService:
    """The sync for the task file's tool: switching tools is the task file's ``tool`` setting."""
    spec = TaskSpec.load(settings.task)
    token = settings.backend_token.get_secret_value() if settings.backend_token else None
    predictor = HttpPredictor(settings.backend_url, token=token)
    sync = SyncService(store, spec, build_tool(spec, settings), predictor, progress=progress)
    sync.push_batch = settings.push_batch
    return sync


def run_passes(sync: SyncService, names: Iterable[str]) -> list[PassReport]:
    """The named passes, in order; the caller holds :func:`sync_lock`."""
    passes = {"predict": sync.predict_pass, "route": sync.route_pass,
              "push": lambda: sync.push_pass(batch=sync.push_batch), "pull": sync.pull_pass}
    return [passes[n]() for n in names]


def run_cycle(sync: SyncService) -> list[PassReport]:
    """Predict, route, push, pull; a failing pass is logged and the others still run (with the ML
    backend or the tool's push down, answers are still pulled), as in the scheduler's sync job."""
    reports = []
    for name in ("predict", "route", "push", "pull"):
        try:
            reports += run_passes(sync, (name,))
        except Exception:
            log.exception("sync cycle: the %s pass failed; the other passes still run", name)
    return reports


def start_http(settings: SyncSettings, store: StateStore, requests: PullRequests) -> tuple[object, threading.Thread]:
    """The webhook receivers and ``/metrics`` on ``sync_host:sync_port``, on a daemon thread.

    Raises ``ValueError`` before binding beyond loopback without ``HITL_WEBHOOK_SECRET``."""
    import uvicorn

    from sync.metrics import SyncMetricsCollector

    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    check_bind(settings.sync_host, secret)
    argilla_secret = settings.argilla_webhook_secret.get_secret_value() if settings.argilla_webhook_secret else None
    spec = TaskSpec.load(settings.task)
    app = create_webhook_app(requests, secret=secret, argilla_secret=argilla_secret,
                             metrics=SyncMetricsCollector(store, spec), max_body_bytes=settings.webhook_max_bytes)
    mount_decisions(app, settings, store, spec)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.sync_host, port=settings.sync_port,
                                           log_level="warning", access_log=False))
    server.install_signal_handlers = lambda: None  # the caller owns SIGINT/SIGTERM
    web = threading.Thread(target=server.run, name="webhooks", daemon=True)
    web.start()
    return server, web


def mount_decisions(app: Any, settings: SyncSettings, store: StateStore, spec: TaskSpec) -> bool:
    """Add ``/v1/decisions`` and ``/v1/feedback`` to the receiver's app; whether they were. Beyond
    loopback they need ``HITL_DECISIONS_TOKEN`` (without it they stay off, and the log says so)."""
    from connector.hardening import is_loopback
    from sync.decisions import DecisionService
    from sync.decisions_api import decisions_router

    token = settings.decisions_token.get_secret_value() if settings.decisions_token else None
    if token is None and not is_loopback(settings.sync_host):
        log.warning("the decision API is off: set HITL_DECISIONS_TOKEN to serve it on %s", settings.sync_host)
        return False
    backend_token = settings.backend_token.get_secret_value() if settings.backend_token else None
    predictor = HttpPredictor(settings.backend_url, token=backend_token) if spec.kind == "label" else None
    service = DecisionService(store, spec, predictor,
                              callbacks=settings.callback_secret is not None)
    app.include_router(decisions_router(service, token=token))
    return True


def run_forever(settings: SyncSettings, sync: SyncService, *, stop: threading.Event | None = None,
                on_cycle: Callable[[list[PassReport]], None] | None = None,
                requests: PullRequests | None = None) -> None:
    """Passes every ``sync_interval_s`` (a webhook wakes it earlier); a failing pass is logged and
    the others still run (:func:`run_cycle`), so a backend or tool that is down only delays its part; a cycle that finds the sync
    lock held (a scheduler's sync job is running) is skipped. Another thread stops it with
    ``stop.set()`` then ``requests.wake.set()``."""
    stop = stop or threading.Event()
    requests = requests or PullRequests()
    server, web = start_http(settings, sync.store, requests)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: (stop.set(), requests.wake.set()))
    try:
        while not stop.is_set():
            requests.take()
            try:
                with sync_lock(sync.store):
                    reports = run_cycle(sync)
                if on_cycle:
                    on_cycle(reports)
            except SyncLocked as exc:
                log.info("sync cycle skipped: %s", exc)
            except Exception:
                log.exception("sync cycle failed; retrying in %.0f s", settings.sync_interval_s)
            requests.wake.wait(settings.sync_interval_s)
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        web.join(5)


def run_scheduler(settings: SyncSettings, store: StateStore, *, stop: threading.Event | None = None) -> None:
    """The scheduler with the webhook receivers and ``/metrics``: a webhook runs the sync job at
    once (as its own slot), besides its interval."""
    from datetime import UTC, datetime

    stop = stop or threading.Event()
    requests = PullRequests()
    server, web = start_http(settings, store, requests)
    scheduler = build_scheduler(settings, store)
    scheduler.start()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: (stop.set(), requests.wake.set()))
    log.info("scheduler running: jobs %s; webhooks and /metrics on %s:%d", ", ".join(scheduler.triggers),
             settings.sync_host, settings.sync_port)
    try:
        while not stop.is_set():
            requests.wake.wait(1.0)
            if requests.take() and not stop.is_set():
                scheduler.execute("sync", slot=f"webhook {datetime.now(UTC).isoformat()}")
    finally:
        scheduler.shutdown()
        server.should_exit = True  # type: ignore[attr-defined]
        web.join(5)


def build_context(settings: SyncSettings, store: StateStore) -> JobContext:
    """The scheduler's jobs' context: the sync service is built when a job first needs it."""
    from connector.model_store import ModelStore
    from connector.store.retention import RetentionPolicy

    retention = RetentionPolicy(job_runs=settings.retention_job_runs, snapshots=settings.retention_snapshots,
                                history_days=settings.retention_days, batch=settings.retention_batch)
    return JobContext(store, TaskSpec.load(settings.task), ModelStore(settings.model_root),
                      make_sync=lambda: build_sync(settings, store), retention=retention,
                      callback_secret=settings.callback_secret.get_secret_value() if settings.callback_secret else None)


def triggers(settings: SyncSettings) -> dict[str, Any]:
    """When each scheduled job fires, from the settings alone (``hitl jobs`` reads them without a task)."""
    from apscheduler.triggers.cron import CronTrigger

    from sync.scheduler import interval

    retrain = (CronTrigger.from_crontab(settings.retrain_cron, timezone="UTC") if settings.retrain_cron
               else interval(settings.retrain_interval_s))
    return {"sync": interval(settings.sync_interval_s), "metrics": interval(settings.metrics_interval_s),
            "retrain": retrain, "decisions": interval(settings.decisions_interval_s)}


def build_scheduler(settings: SyncSettings, store: StateStore, ctx: JobContext | None = None) -> Scheduler:
    """The scheduler with the sync, metrics and retrain jobs at the configured intervals."""
    from sync import jobs

    ctx = ctx or build_context(settings, store)
    return Scheduler(store, {"sync": lambda: jobs.sync_job(ctx), "metrics": lambda: jobs.metrics_job(ctx),
                             "retrain": lambda: jobs.retrain_job(ctx), "thresholds": lambda: jobs.threshold_job(ctx),
                             "decisions": lambda: jobs.decisions_job(ctx)},
                     triggers(settings), retries=settings.job_retries)