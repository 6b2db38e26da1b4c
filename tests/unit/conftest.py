"""Unit fixtures: one ML backend service per test module (on the tiny random model), an app client
around it, and an empty state store."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from connector.store import StateStore
from ml_backend.app import create_app
from ml_backend.service import ModelService
from ml_backend.settings import BackendSettings


@pytest.fixture(scope="module")
def service(tiny_model_root):
    s = ModelService(BackendSettings(model_root=tiny_model_root, reload_interval_s=0, torch_threads=1))
    yield s
    s.close()


def backend_client(service: ModelService, tmp_path, **overrides) -> TestClient:
    """A test client of an app built around ``service`` (settings ``overrides`` applied)."""
    settings = BackendSettings(model_root=service.settings.model_root, reload_interval_s=0, **overrides)
    return TestClient(create_app(settings, service))


@pytest.fixture
def empty_store(tmp_path):
    """A ``StateStore`` on a fresh, empty SQLite file (the shared cases in ``tests/store_cases.py`` migrate it)."""
    with StateStore(f"sqlite:///{tmp_path}/state.db") as store:
        yield store


@pytest.fixture
def store_with_three_items(tmp_path):
    """A migrated SQLite store holding items ``e0``, ``e1``, ``e2``."""
    s = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    s.migrate()
    s.items.ingest([{"id": f"e{i}", "text": f"text {i}"} for i in range(3)])
    yield s
    s.close()
