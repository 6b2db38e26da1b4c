"""The state store's facade on SQLite (migrations, one engine, one transaction per call; the shared
cases in ``tests/store_cases.py``), and the file readers. Each repository has its own file."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from connector.ingest import read_records
from connector.store import DEFAULT_URL, StateStore
from tests.store_cases import FacadeCases, write_csv, write_jsonl


class TestFacadeOnSQLite(FacadeCases):
    pass


def test_the_default_store_is_a_sqlite_file_under_var_created_with_its_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with StateStore() as store:
        store.migrate()
        assert DEFAULT_URL == "sqlite:///var/state.db" and (tmp_path / "var" / "state.db").is_file()


def test_read_records_reads_jsonl_and_csv_by_extension(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.ndjson", [{"id": 1, "text": "x"}, "", {"id": 2, "text": "y"}])
    csv = write_csv(tmp_path / "a.CSV", ["id,text", "1,x", "", "2,y"])
    assert list(read_records(jsonl)) == [{"id": 1, "text": "x"}, {"id": 2, "text": "y"}]
    assert list(read_records(csv)) == [{"id": "1", "text": "x"}, {"id": "2", "text": "y"}]


def test_read_records_names_the_line_of_bad_json_and_refuses_other_extensions(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": 1, "text": "x"}, "{oops"])
    with pytest.raises(ValueError, match=r"bad\.jsonl line 2: invalid JSON"):
        list(read_records(bad))
    (tmp_path / "items.txt").write_text("x\n")
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        list(read_records(tmp_path / "items.txt"))
    dup = write_csv(tmp_path / "dup.csv", ["id,text,text", "1,x,y"])
    with pytest.raises(ValueError, match="duplicate column names"):
        list(read_records(dup))


def _writer_holding_the_lock(path):
    import sqlite3

    other = sqlite3.connect(path, timeout=0.1, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


def test_sqlite_reads_take_no_write_lock_so_a_writer_never_waits_for_a_metrics_scrape(tmp_path):
    import threading

    with StateStore(f"sqlite:///{tmp_path}/state.db") as store:
        store.migrate()
        store.items.ingest([{"id": "a", "text": "one"}])
        other = _writer_holding_the_lock(tmp_path / "state.db")  # another process mid-write
        read: list[int] = []
        reader = threading.Thread(target=lambda: read.append(store.items.counts_by_state()["ingested"]))
        try:
            reader.start()
            reader.join(3.0)
            assert read == [1]  # read beside the writer, not after it
        finally:
            other.execute("ROLLBACK")
            reader.join()
        with store.items._sessions() as s:  # a read transaction held open ...
            s.execute(text("SELECT count(*) FROM items")).scalar()
            writer = _writer_holding_the_lock(tmp_path / "state.db")  # ... does not keep a writer out
            writer.execute("ROLLBACK")


def test_sqlite_writes_still_take_the_write_lock_when_they_begin(tmp_path):
    import sqlite3

    with StateStore(f"sqlite:///{tmp_path}/state.db") as store:
        store.migrate()
        with store.items._sessions.begin() as s:  # read-then-write transactions must not interleave
            s.execute(text("SELECT count(*) FROM items")).scalar()
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                _writer_holding_the_lock(tmp_path / "state.db")
