"""Two scheduler processes on one PostgreSQL database: each slot runs once (advisory lock + claim)."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine

from sync.locks import try_lock
from tests.scheduler_cases import start_together, two_schedulers_run_each_slot_once

pytestmark = pytest.mark.slow


def test_two_scheduler_processes_on_one_postgres_database_run_each_job_once(postgres_cluster, tmp_path):
    url = postgres_cluster.create_database("scheduler_two")
    try:
        two_schedulers_run_each_slot_once(url, tmp_path)
    finally:
        postgres_cluster.drop_database("scheduler_two")


def test_the_advisory_lock_is_exclusive_across_connections_and_released(postgres_url):
    engine = create_engine(postgres_url)
    try:
        with try_lock(engine, "job-x") as first:
            assert first
            with try_lock(engine, "job-x") as second, try_lock(engine, "job-y") as other:
                assert not second and other
        with try_lock(engine, "job-x") as again:
            assert again
    finally:
        engine.dispose()


def test_schedulers_starting_together_on_a_fresh_postgres_database_all_start(postgres_cluster):
    """Earlier starts created APScheduler's job table when absent, and two CREATE TABLEs raced (the loser
    failed on pg_type's unique index); now a start creates nothing in the database."""
    from connector.store import StateStore

    for attempt in range(2):
        name = f"scheduler_start_{attempt}"
        url = postgres_cluster.create_database(name)
        stores = [StateStore(url) for _ in range(4)]
        try:
            stores[0].migrate()
            started, errors = start_together(stores)
            for scheduler in started:
                scheduler.shutdown(wait=False)
            assert errors == [] and len(started) == len(stores)
        finally:
            for s in stores:
                s.close()
            postgres_cluster.drop_database(name)
