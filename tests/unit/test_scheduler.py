"""The scheduler: slots, the lock-and-claim rule, failures that never stop it, two schedulers."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from apscheduler.triggers.cron import CronTrigger

from connector.store import StateStore
from sync.locks import try_lock
from sync.scheduler import Scheduler, interval
from tests.scheduler_cases import two_schedulers_run_each_slot_once


@pytest.fixture
def store(tmp_path):
    with StateStore(f"sqlite:///{tmp_path}/state.db") as s:
        s.migrate()
        yield s


def test_slots_are_the_trigger_fire_time_just_passed_whoever_computes_them(store):
    sched = Scheduler(store, {"a": dict, "b": dict}, {"a": interval(60), "b": CronTrigger.from_crontab("30 2 * * *", timezone=UTC)})
    t = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
    assert sched.slot("a", t + timedelta(seconds=1)) == sched.slot("a", t + timedelta(seconds=59)) == t.isoformat()
    assert sched.slot("a", t + timedelta(seconds=61)) == (t + timedelta(minutes=1)).isoformat()
    assert sched.slot("b", t) == datetime(2026, 11, 27, 2, 30, tzinfo=UTC).isoformat()
    assert sched.slot("b", datetime(2026, 11, 27, 2, 29, tzinfo=UTC)) == datetime(2026, 11, 26, 2, 30, tzinfo=UTC).isoformat()


def test_a_slot_runs_once_and_a_held_lock_skips_at_once(store):
    calls = []
    sched = Scheduler(store, {"job": lambda: calls.append(1) or {"n": len(calls)}}, {"job": interval(3600)})
    assert sched.execute("job") == "ran" and sched.execute("job") == "claimed" and len(calls) == 1
    with try_lock(store.engine, "hitl-job-job") as got:
        assert got
        assert sched.execute("job", slot="another") == "locked" and len(calls) == 1
    assert sched.execute("job", slot="another") == "ran"
    assert [r.detail for r in store.job_runs.list("job")] == [{"n": 2}, {"n": 1}]


def test_a_failing_job_is_retried_recorded_with_its_error_and_never_stops_the_scheduler(store):
    attempts, good = [], []

    def flaky() -> dict:
        attempts.append(time.monotonic())
        raise RuntimeError("Label Studio is down")

    sched = Scheduler(store, {"bad": flaky, "good": lambda: good.append(1) or {}},
                      {"bad": interval(1), "good": interval(1)}, retries=1, retry_wait_s=0.01)
    assert sched.execute("bad", slot="manual") == "failed" and len(attempts) == 2
    run = store.job_runs.list("bad")[0]
    assert (run.status, run.error) == ("failed", "RuntimeError: Label Studio is down")
    sched.start()
    try:
        time.sleep(3.5)
    finally:
        sched.shutdown()
    summary = store.job_runs.summary()
    assert summary["bad"]["failures"] >= 3 and summary["good"]["runs"] >= 3 and summary["good"]["failures"] == 0


def test_the_jobs_live_in_memory_nothing_is_pickled_into_the_database(tmp_path):
    """Earlier versions pickled APScheduler's jobs into ``apscheduler_jobs``; migration 0005 drops it."""
    from sqlalchemy import inspect, text

    store = StateStore(f"sqlite:///{tmp_path}/old.db")
    store.migrate("0004")
    with store.engine.begin() as conn:  # a database an older scheduler used: its pickled job rows
        conn.execute(text("CREATE TABLE apscheduler_jobs (id VARCHAR(191) PRIMARY KEY, next_run_time FLOAT, "
                          "job_state BLOB NOT NULL)"))
        conn.execute(text("INSERT INTO apscheduler_jobs VALUES ('sync', 0, x'80049500')"))
    store.migrate()
    assert "apscheduler_jobs" not in inspect(store.engine).get_table_names()
    ticks = []
    sched = Scheduler(store, {"tick": lambda: ticks.append(1) or {}}, {"tick": interval(1)})
    sched.start()
    try:
        deadline = time.monotonic() + 10
        while not ticks and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [j.id for j in sched._scheduler.get_jobs()] == ["tick"]
    finally:
        sched.shutdown()
    assert ticks and "apscheduler_jobs" not in inspect(store.engine).get_table_names()
    store.close()
    t = datetime(2026, 11, 27, 10, 0, 0, 500000, tzinfo=UTC)
    assert sched.next_runs(t) == {"tick": datetime(2026, 11, 27, 10, 0, 1, tzinfo=UTC)}


def test_two_threads_racing_for_one_slot_run_it_once(store):
    calls, barrier = [], threading.Barrier(4)
    sched = Scheduler(store, {"job": lambda: calls.append(1) or time.sleep(0.2) or {}}, {"job": interval(3600)})
    outcomes = []

    def go() -> None:
        barrier.wait()
        outcomes.append(sched.execute("job"))

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(outcomes).count("ran") == 1


@pytest.mark.slow
def test_two_scheduler_processes_on_one_sqlite_database_run_each_job_once(tmp_path):
    two_schedulers_run_each_slot_once(f"sqlite:///{tmp_path}/state.db", tmp_path)


def test_schedulers_starting_together_on_a_fresh_database_all_start(tmp_path):
    """Nothing is created at start (no job table), so starts cannot race on it."""
    from connector.store import StateStore
    from tests.scheduler_cases import start_together

    url = f"sqlite:///{tmp_path / 'state.db'}"
    stores = [StateStore(url) for _ in range(3)]
    stores[0].migrate()
    started, errors = start_together(stores)
    for scheduler in started:
        scheduler.shutdown(wait=False)
    for s in stores:
        s.close()
    assert errors == [] and len(started) == len(stores)


def test_hitl_jobs_lists_the_triggers_and_runs_without_a_task_file(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from hitl.cli import app

    monkeypatch.chdir(tmp_path)  # no task.toml here
    result = CliRunner().invoke(app, ["jobs"], env={"HITL_DB_URL": f"sqlite:///{tmp_path}/s.db",
                                                    "HITL_SYNC_INTERVAL_S": "30"})
    assert result.exit_code == 0, result.output
    assert all(j in result.output for j in ("sync", "metrics", "retrain"))
