"""``store.pushes`` (PushRepository) on SQLite: the shared cases in ``tests/store_cases.py``."""

from __future__ import annotations

from tests.store_cases import PushCases


class TestPushRepositoryOnSQLite(PushCases):
    pass
