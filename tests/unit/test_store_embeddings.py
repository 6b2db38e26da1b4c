"""``store.embeddings``, and the cache on its own (``EmbeddingRepository``), on SQLite: the shared cases
in ``tests/store_cases.py``."""

from __future__ import annotations

from tests.store_cases import EmbeddingCases


class TestEmbeddingRepositoryOnSQLite(EmbeddingCases):
    pass
