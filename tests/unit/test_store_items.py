"""``store.items`` (ItemRepository) on SQLite: the shared cases in ``tests/store_cases.py``."""

from __future__ import annotations

from tests.store_cases import ItemCases


class TestItemRepositoryOnSQLite(ItemCases):
    pass
