"""Alembic environment, configured in code by ``StateStore.migrate`` (there is no alembic.ini).

``StateStore.migrate`` passes an open connection in ``config.attributes["connection"]``; the
revisions run inside that connection's transaction. Given only ``sqlalchemy.url`` (e.g. from the
``alembic`` command with ``-x``-less config built by hand), an engine is made from it.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from connector.store.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(**kw) -> None:
    context.configure(target_metadata=target_metadata, render_as_batch=True, compare_type=True, **kw)


def run_migrations_offline() -> None:
    """Emit SQL for ``--sql`` mode, without a database."""
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True,
               dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the revisions on the connection given by the caller, or on one made from the URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as connection:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
