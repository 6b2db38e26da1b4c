"""The embedding cache: a frozen encoder's vectors by content hash, usable without the rest of the store."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Self

from sqlalchemy import insert, select

from connector.store.database import make_engine, migrate
from connector.store.models import Embedding
from connector.store.repository import Repository, chunks


class EmbeddingRepository(Repository):
    """``store.embeddings``, or on its own: ``EmbeddingRepository.open(url)`` (migrates the database
    and owns its engine; close it, or use it as a context manager) or ``EmbeddingRepository(engine)``."""

    _owns_engine = False

    @classmethod
    def open(cls, url: str, *, migrate_schema: bool = True) -> Self:
        """A cache on its own engine for ``url``, the schema migrated first (a no-op when current)."""
        engine = make_engine(url)
        if migrate_schema:
            migrate(engine)
        repo = cls(engine)
        repo._owns_engine = True
        return repo

    def close(self) -> None:
        """Close the engine's pooled connections, when this repository opened it."""
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, encoder: str, hashes: Iterable[str]) -> dict[str, bytes]:
        """Cached vectors (raw float32 bytes) by content hash; missing hashes are left out."""
        out: dict[str, bytes] = {}
        with self._sessions() as s:
            for chunk in chunks(sorted(set(hashes))):
                stmt = (select(Embedding.content_hash, Embedding.vector)
                        .where(Embedding.encoder == encoder, Embedding.content_hash.in_(chunk)))
                out.update(s.execute(stmt).tuples().all())
        return out

    def put(self, encoder: str, vectors: Mapping[str, bytes]) -> int:
        """Cache vectors by content hash (ones already cached are kept); returns how many were new."""
        have = self.get(encoder, vectors)
        new = [{"encoder": encoder, "content_hash": h, "vector": v} for h, v in vectors.items() if h not in have]
        if new:
            with self._sessions.begin() as s:
                for chunk in chunks(new):
                    s.execute(insert(Embedding), list(chunk))
        return len(new)
