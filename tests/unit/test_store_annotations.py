"""``store.annotations``, ``store.cursors`` and ``store.labels`` on SQLite: the shared cases in
``tests/store_cases.py``."""

from __future__ import annotations

from tests.store_cases import AnnotationCases


class TestAnnotationCursorAndLabelRepositoriesOnSQLite(AnnotationCases):
    pass
