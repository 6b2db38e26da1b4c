"""The state store's shared cases (``tests/store_cases.py``, every repository) on a real PostgreSQL."""

from __future__ import annotations

import itertools

import pytest

from connector.store import StateStore
from tests.store_cases import StoreCases

pytestmark = pytest.mark.slow
_names = itertools.count()


class TestStoreOnPostgres(StoreCases):
    @pytest.fixture
    def empty_store(self, postgres_cluster):
        name = f"store_{next(_names)}"
        store = StateStore(postgres_cluster.create_database(name))
        yield store
        store.close()
        postgres_cluster.drop_database(name)


def test_the_session_database_url_is_psycopg_on_loopback(postgres_url):
    assert postgres_url.startswith("postgresql+psycopg://postgres@127.0.0.1:") and postgres_url.endswith("/hitl")
    with StateStore(postgres_url) as store:
        store.migrate()
        assert store.items.ingest([{"id": 1, "text": "x"}]).added == 1
