"""``store.predictions`` and ``store.decisions`` on SQLite: the shared cases in ``tests/store_cases.py``."""

from __future__ import annotations

from tests.store_cases import RoutingCases


class TestPredictionAndDecisionRepositoriesOnSQLite(RoutingCases):
    pass
