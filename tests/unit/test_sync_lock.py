"""The sync commands take the scheduler's sync-job lock: while another process holds it they do nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from connector.store import StateStore
from sync.locks import job_lock, try_lock


class _Recorder(BaseHTTPRequestHandler):
    """Stands in for Label Studio and the ML backend: records every request, answers 503."""

    seen: ClassVar[list[str]] = []

    def _any(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PATCH = do_DELETE = _any

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def workspace(tmp_path):
    """A store with one push in flight, a task file and env pointing the tool and backend at a recorder."""
    _Recorder.seen.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    db = f"sqlite:///{tmp_path / 'state.db'}"
    (tmp_path / "task.toml").write_text(f'name = "locked"\nlabels = ["a", "b"]\n[label_studio]\nurl = "{url}"\n')
    store = StateStore(db)
    store.migrate()
    store.items.ingest([{"id": "e0", "text": "text 0"}])
    item = store.items.list()[0]
    store.decisions.record([{"item_id": item.id, "action": "review", "reason": "seed", "priority": 1.0}])
    store.pushes.begin([item.id], "label_studio", "1")  # a push in flight in the lock holder
    env = {"HITL_DB_URL": db, "HITL_TASK": str(tmp_path / "task.toml"), "HITL_LS_API_KEY": "k",
           "HITL_BACKEND_URL": url}
    yield store, env, item
    store.close()
    server.shutdown()
    server.server_close()


def _untouched(store: StateStore, item) -> None:
    assert _Recorder.seen == []  # neither the tool nor the backend was asked anything
    assert [p.item_id for p in store.pushes.pending("label_studio", "1")] == [item.id]  # not reconciled away


def test_a_held_sync_lock_makes_sync_push_exit_75_without_reconciling_or_pushing(workspace):
    store, env, item = workspace
    with try_lock(store.engine, job_lock("sync")) as got:  # the scheduler's sync job is running
        assert got
        r = subprocess.run([sys.executable, "-m", "hitl.cli", "sync", "push"], capture_output=True, text=True,
                           env={**os.environ, **env, "PYTHONPATH": os.getcwd()}, timeout=120, check=False)
    assert r.returncode == 75, (r.stdout, r.stderr)
    assert "another process holds the sync lock (hitl-job-sync)" in " ".join((r.stdout + r.stderr).split())
    _untouched(store, item)


def test_a_held_sync_lock_makes_sync_pull_exit_75_without_pulling(workspace):
    from hitl.cli import app

    store, env, item = workspace
    with try_lock(store.engine, job_lock("sync")) as got:  # flock: a second open in this process is refused too
        assert got
        r = CliRunner().invoke(app, ["sync", "pull"], env=env)
    assert r.exit_code == 75, r.output
    assert "another process holds the sync lock" in " ".join(r.output.split())
    _untouched(store, item)
