"""The state store's shared cases (``tests/store_cases.py``, every repository) on a real PostgreSQL,
and what only PostgreSQL lets happen: two writers in the same table at once."""

from __future__ import annotations

import itertools
import threading
from datetime import timedelta

import pytest
from sqlalchemy import event

from connector.store import StateStore
from tests.store_cases import T0, StoreCases, annotation, ingest_three

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


def _race(store: StateStore, item_id: int, *, waiter: str) -> dict:
    """Two pulls of one answer at once, ``older`` (minute 1, ``neg``) and ``newer`` (minute 5, ``mixed``):
    both read the stored answer, then ``waiter`` writes only after the other one committed. Each pull's
    upsert result, by name."""
    both_read = threading.Barrier(2, timeout=20)
    committed = threading.Event()
    role = threading.local()

    @event.listens_for(store.engine, "after_cursor_execute")
    def pause_after_the_read(conn, cursor, statement, parameters, context, executemany):
        if getattr(role, "name", None) and statement.lstrip().startswith("SELECT") and "FROM annotations" in statement:
            name_, role.name = role.name, None  # once per thread
            both_read.wait()
            if name_ == waiter:
                assert committed.wait(20)

    results = {}

    def pull(name_: str, minutes: int, value: str) -> None:
        role.name = name_
        try:
            results[name_] = store.annotations.upsert(
                [annotation(item_id, value=[value], updated_at=T0 + timedelta(minutes=minutes))])
        finally:
            if name_ != waiter:
                committed.set()

    threads = [threading.Thread(target=pull, args=args) for args in (("older", 1, "neg"), ("newer", 5, "mixed"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    event.remove(store.engine, "after_cursor_execute", pause_after_the_read)
    return results


@pytest.mark.parametrize("stored_before", [True, False], ids=["update race", "insert race"])
def test_two_concurrent_upserts_keep_the_newer_answer_when_the_older_writes_last(postgres_cluster, stored_before):
    """Both pulls read the stored answer (or its absence), then the newer one commits, then the older
    one writes: the older must neither replace the newer nor fail on the newer's insert (SQLite
    serializes whole transactions, so this is PostgreSQL's)."""
    name = f"store_{next(_names)}"
    store = StateStore(postgres_cluster.create_database(name))
    try:
        store.migrate()
        a = ingest_three(store)["a"]
        if stored_before:
            store.annotations.upsert([annotation(a, value=["pos"])])
        results = _race(store, a, waiter="older")
        assert set(results) == {"older", "newer"}
        (stored,) = store.annotations.list([a])
        assert (stored.value, stored.remote_updated_at) == (["mixed"], T0 + timedelta(minutes=5))
        newer = results["newer"].updated if stored_before else results["newer"].inserted
        assert (newer, results["older"].unchanged) == (1, 1)
    finally:
        store.close()
        postgres_cluster.drop_database(name)


def test_the_history_refuses_truncate_too_and_survives_a_second_migrate(postgres_cluster):
    """UPDATE and DELETE are refused in the shared cases (``HistoryCases``); PostgreSQL has TRUNCATE
    besides, which row triggers do not see: a statement trigger refuses it."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    name = f"store_{next(_names)}"
    store = StateStore(postgres_cluster.create_database(name))
    try:
        store.migrate()
        a = ingest_three(store)["a"]
        store.annotations.upsert([annotation(a)])
        with pytest.raises(DBAPIError, match="append-only: TRUNCATE refused"), store.engine.begin() as conn:
            conn.execute(text("TRUNCATE label_events"))
        with pytest.raises(DBAPIError, match="append-only: UPDATE refused"), store.engine.begin() as conn:
            conn.execute(text("UPDATE label_events SET actor = 'someone else'"))
        store.migrate()
        assert [(e.kind, e.actor) for e in store.history.for_item(a)] == [("answer_added", "ann1")]
    finally:
        store.close()
        postgres_cluster.drop_database(name)


def test_concurrent_edits_each_record_the_answer_they_replaced(postgres_cluster):
    """Two pulls read the stored answer ``pos``; the older edit (``neg``) commits first, then the newer
    (``mixed``) writes over it: its event says it replaced ``neg``, not the ``pos`` it first read."""
    name = f"store_{next(_names)}"
    store = StateStore(postgres_cluster.create_database(name))
    try:
        store.migrate()
        a = ingest_three(store)["a"]
        store.annotations.upsert([annotation(a, value=["pos"])])
        _race(store, a, waiter="newer")
        edits = [(e.detail["old_value"], e.detail["value"]) for e in store.history.list(kind="answer_edited")]
        assert edits == [(["pos"], ["neg"]), (["neg"], ["mixed"])]
        assert store.annotations.list([a])[0].value == ["mixed"]
    finally:
        store.close()
        postgres_cluster.drop_database(name)
