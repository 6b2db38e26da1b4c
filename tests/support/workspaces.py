"""A task file, a PostgreSQL state store and the environment for ``hitl`` subprocesses against a real tool.

Shared by the fault-injection tests (``test_kill_points.py``, ``test_random_kills.py``): the task routes
every item to review (no auto-accept, no spot checks, audits or gold), pushes in batches of 10
unless told, and names the ML backend of the session.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from connector.store import StateStore
from tests.support import kill_points

KILLED = -9  # subprocess.returncode of a SIGKILL-ed child


@dataclass
class Workspace:
    root: Path
    env: dict[str, str]
    name: str  # the task's name: Label Studio project title, Argilla dataset name
    tool: str
    db_url: str

    def run(self, *args: str, at: str | None = None, after: int = 1, timeout: float = 180,
            **extra: str) -> subprocess.CompletedProcess:
        """``args`` (a ``python`` argument list) in a subprocess, killed after ``at`` returned ``after`` times."""
        mark = self.root / f"kill-{uuid.uuid4().hex[:8]}"
        env = kill_points.env(self.env, at, after=after, mark=mark, **extra)
        proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout,
                              check=False, start_new_session=True)
        if at is not None:  # died exactly there, and only there
            assert proc.returncode == KILLED and mark.exists(), (proc.returncode, proc.stderr[-3000:])
        else:
            assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    def hitl(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run("-m", "hitl.cli", *args, **kwargs)

    def store(self) -> StateStore:
        return StateStore(self.db_url)


def make_workspace(tmp_path, postgres_cluster, backend, texts, *, tool, url, api_key, prefix,
                   push_batch: int = 10) -> Workspace:
    tag = uuid.uuid4().hex[:8]
    name = f"kill {prefix} {tag}"
    db_url = postgres_cluster.create_database(f"kill_{prefix}_{tag}")
    section, key_env = ("label_studio", "HITL_LS_API_KEY") if tool == "label_studio" else ("argilla",
                                                                                           "HITL_ARGILLA_API_KEY")
    (tmp_path / "task.toml").write_text(
        f'name = "{name}"\ntool = "{tool}"\nlabels = ["fresh", "rotten"]\n[{section}]\nurl = "{url}"\n'
        '[routing]\naccept_threshold = 0.999\nspot_check_rate = 0.0\naudit_share = 0.0\ngold_rate = 0.0\n')
    env = {**os.environ, "HITL_DB_URL": db_url, "HITL_TASK": str(tmp_path / "task.toml"), key_env: api_key,
           "HITL_BACKEND_URL": backend.url, "HITL_PUSH_BATCH": str(push_batch), "HITL_MODEL_ROOT": str(tmp_path / "models")}
    with StateStore(db_url) as store:
        store.migrate()
        store.items.ingest([{"id": f"{prefix}-{i}", "text": t} for i, t in enumerate(texts)])
    return Workspace(tmp_path, env, name, tool, db_url)
