"""Integration fixtures: real servers for the session (Label Studio, PostgreSQL, argilla-server, the backend)."""

from __future__ import annotations

import pytest

from tests.support.postgres import PostgresCluster, PostgresUnavailable


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A real Label Studio on loopback, started from the migrated template, stopped at the end."""
    from tests.support.label_studio import start_from_template

    server = start_from_template(tmp_path_factory.mktemp("ls"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_cluster():
    """A PostgreSQL cluster on loopback for the whole session, stopped at the end.

    Fails (never skips) when the server binaries are missing: CI installs them.
    """
    try:
        cluster = PostgresCluster.start()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster) -> str:
    """URL of the ``hitl`` database: ``postgresql+psycopg://postgres@127.0.0.1:PORT/hitl``."""
    return postgres_cluster.create_database("hitl")


@pytest.fixture(scope="session")
def backend(model_root, tmp_path_factory):
    """The ML backend as a real subprocess on the session's model, stopped at the end."""
    from tests.support.backend import start_backend

    proc = start_backend(model_root, tmp_path_factory.mktemp("backend"))
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def argilla(tmp_path_factory):
    """A real argilla-server (with Redis, the osmem OpenSearch emulator and a webhook worker) for the session.

    Yields an ``ArgillaStack`` (``url``, ``api_key`` of the owner ``argilla``); stopped at the end.
    Fails (never skips) when a component is not installed: ``make argilla-server`` and CI install them.
    """
    from tests.support.argilla_stack import ArgillaUnavailable, start

    try:
        stack, missing = start(tmp_path_factory.mktemp("argilla")), None
    except ArgillaUnavailable as exc:
        stack, missing = None, str(exc)
    if stack is None:  # failed outside the handler, so the message is shown once
        pytest.fail(missing, pytrace=False)
    yield stack
    stack.stop()
