"""The database under the store: the engine (SQLite or PostgreSQL) and the Alembic migrations.

Every repository of the store shares one engine and one session factory; this module builds them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_URL = "sqlite:///var/state.db"
READ_ONLY = "hitl_read_only"  # the execution option that marks a read-only connection
MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(url: str | None = None) -> Config:
    """An Alembic ``Config`` for this package's migrations, built without an ini file.

    Developers add a revision with ``command.revision(alembic_config(url), autogenerate=True, message=...)``.
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy emit BEGIN itself (see _sqlite_on_begin), so that reads, writes and DDL of one
    # call share one transaction; pysqlite's own handling starts it only at the first write.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (webhooks, CLI) do not block the writer
    cursor.close()


def _sqlite_on_begin(connection: Any) -> None:
    # Writes: IMMEDIATE takes the write lock at the start, so the busy timeout applies. A deferred
    # transaction that reads and then writes fails at once ("database is locked") when another
    # process wrote in between; with several processes on one file (sync, scheduler, CLI) it would.
    # Reads (connections marked READ_ONLY, see Sessions) begin deferred and take no write lock, so a
    # /metrics scrape or a report never makes a writer wait: WAL lets them read beside it.
    read_only = connection.get_execution_options().get(READ_ONLY, False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def read_only(engine: Engine) -> Engine:
    """``engine`` for reads only: on SQLite its transactions begin deferred (no write lock)."""
    return engine.execution_options(**{READ_ONLY: True})


class Sessions(sessionmaker[Session]):
    """The repositories' session factory: ``sessions()`` is a read-only session (on SQLite a
    deferred BEGIN: it never takes the write lock, so it must not write); ``sessions.begin()``
    is one write transaction (``BEGIN IMMEDIATE``), committed on success, rolled back on error.
    Rows stay readable after commit (detached snapshots)."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine, expire_on_commit=False)
        self._reader = read_only(engine)

    def __call__(self, **local_kw: Any) -> Session:
        local_kw.setdefault("bind", self._reader)
        return super().__call__(**local_kw)

    @contextlib.contextmanager  # type: ignore[override]
    def begin(self) -> Iterator[Session]:
        with super().__call__() as session, session.begin():
            yield session


def make_engine(url: str) -> Engine:
    """An engine for ``url``: PostgreSQL through psycopg, or SQLite (its folder created) in WAL mode
    with immediate transactions and foreign keys on."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):  # the bare scheme means psycopg2, which we do not ship
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    database = parsed.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"timeout": 30})
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def make_sessions(engine: Engine) -> Sessions:
    """The session factory the repositories share: reads through ``sessions()``, writes through
    ``sessions.begin()``; rows stay readable after commit (detached snapshots)."""
    return Sessions(engine)


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` with Alembic, in one transaction; a no-op when already there."""
    cfg = alembic_config()
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (``None`` before the first ``migrate``)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
