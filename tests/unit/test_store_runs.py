"""``store.job_runs`` and ``store.snapshots`` on SQLite: the shared cases in ``tests/store_cases.py``."""

from __future__ import annotations

from tests.store_cases import RunCases


class TestJobRunAndSnapshotRepositoriesOnSQLite(RunCases):
    pass
