"""`hitl up` (what `make up` runs) brought up from nothing, driven as a user would, then `hitl down`.

Starts Label Studio on a fresh data dir (its first start migrates: about a minute), the ML
backend and the scheduler on free loopback ports under a temporary var dir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from connector.store import StateStore
from connector.tools.label_studio import LabelStudioTool
from hitl.local.processes import free_port, port_is_free

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _hitl(args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hitl.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _wait(what: str, check, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := check():
            return got
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}")


def test_up_annotate_pull_retrain_resume_down(tmp_path):
    var = tmp_path / "var"
    ports = {"HITL_LS_PORT": free_port(), "HITL_BACKEND_PORT": free_port(), "HITL_SYNC_PORT": free_port()}
    # the scheduler's own sync timer is 10 minutes: what is annotated comes back through Label Studio's webhook
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HITL_VAR_DIR": str(var), "HITL_SYNC_INTERVAL_S": "600",
           "HITL_RETRAIN_INTERVAL_S": "3", "HITL_MIN_NEW_LABELS": "6", "HITL_BATCH": "10",
           **{k: str(v) for k, v in ports.items()}}
    env.pop("HITL_DB_URL", None)
    up = _hitl(["up"], env, tmp_path, timeout=600)
    pids = {p.stem: int(p.read_text()) for p in (var / "run").glob("*.pid")}
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "hitl is up" in up.stdout and "10 uncertain snippets pushed" in up.stdout
        assert set(pids) == {"label-studio", "ml-backend", "scheduler"} and all(map(_alive, pids.values()))
        creds = json.loads((var / "credentials.json").read_text())
        assert oct((var / "credentials.json").stat().st_mode & 0o777) == "0o600"
        client = LabelStudioTool(f"http://127.0.0.1:{ports['HITL_LS_PORT']}", creds["token"])
        project = next(p for p in client._ls.projects.list() if p.title.startswith("hitl demo"))
        tasks = list(client._ls.tasks.list(project=project.id, fields="all"))
        # what the annotator finds: the uncertain snippets, the model's label and score on those shown with
        # one (the default hides it on checks and on a random share of the others: an empty prediction),
        # nothing on why they came
        shown = [t for t in tasks if t.predictions[0].result]
        assert len(tasks) == 10 and 0 < len(shown) < 10 and all(0 < t.predictions[0].score < 1 for t in shown)
        assert all(set(t.data) == {"text", "hitl_id"} for t in tasks)
        assert client._ls.ml.list(project=project.id)  # the backend is registered on the project
        # Label Studio made one to the backend's /webhook when it was connected; the sync's goes to the scheduler
        hooks = {w.url: w for w in client._ls.webhooks.list(project=str(project.id)) if w.project == project.id}
        hook = hooks.pop(f"http://127.0.0.1:{ports['HITL_SYNC_PORT']}/webhooks/label-studio")
        assert list(hooks) == [f"http://127.0.0.1:{ports['HITL_BACKEND_PORT']}/webhook"]
        assert hook.headers == {"X-Hitl-Secret": creds["webhook_secret"]} and project.maximum_annotations == 1
        for t in tasks[:6]:
            label = t.predictions[0].result[0]["value"]["choices"][0] if t.predictions[0].result else "fresh"
            client.annotate(t.id, [{"from_name": "label", "to_name": "text", "type": "choices",
                                    "value": {"choices": [label]}}])

        store = StateStore(f"sqlite:///{var / 'state.db'}")
        try:
            _wait("the annotations to be pulled", lambda: len(store.annotations.list(status="submitted")) == 6)
            _wait("the labels to settle", lambda: len([lb for lb in store.labels.list() if lb.method != "seed"]) == 6)
            retrain = _wait("a retraining on the new labels", lambda: next(
                (r for r in store.job_runs.list("retrain") if r.status == "ok" and "candidate" in r.detail), None))
            assert retrain.detail["n_train"] + retrain.detail["n_test"] == 66  # 60 seed labels + the 6 new ones
        finally:
            store.close()
        jobs = _hitl(["jobs"], {**env, "HITL_DB_URL": f"sqlite:///{var / 'state.db'}", "HITL_TASK": str(var / "task.toml")},
                     tmp_path, timeout=60)
        assert jobs.returncode == 0 and all(j in jobs.stdout for j in ("sync", "metrics", "retrain"))
        _export_reads_back(var, env, tmp_path)

        again = _hitl(["up"], env, tmp_path, timeout=300)  # resumes: the same processes and project
        assert again.returncode == 0 and "resumed" in again.stdout, again.stdout + again.stderr
        assert {p.stem: int(p.read_text()) for p in (var / "run").glob("*.pid")} == pids
    finally:
        down = _hitl(["down"], env, tmp_path, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not any(map(_alive, pids.values())) and not list((var / "run").glob("*.pid"))
    assert all(port_is_free(p) for p in ports.values())


def _export_reads_back(var: Path, env: dict[str, str], cwd: Path) -> None:
    """``hitl export`` of the running loop's store: every item once, in all three formats."""
    import pandas as pd

    db = {**env, "HITL_DB_URL": f"sqlite:///{var / 'state.db'}", "HITL_TASK": str(var / "task.toml")}
    done = _hitl(["export", "--out", str(var / "labels"), "--format", "all", "--only", "all"], db, cwd, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    store = StateStore(db["HITL_DB_URL"])
    try:
        items = {it.external_id for it in store.items.list()}
    finally:
        store.close()
    frames = [pd.read_json(var / "labels.jsonl", lines=True), pd.read_csv(var / "labels.csv"),
              pd.read_parquet(var / "labels.parquet")]
    for frame in frames:
        assert len(frame) == len(items) and set(frame["item_id"].astype(str)) == items
    sources = set(frames[2]["source"])
    assert {"seed", "human_consensus"} <= sources  # the seed labels and the answers given above


def test_up_with_argilla_pushes_records_some_with_suggestions_resumes_and_down_stops_everything(tmp_path):
    import argilla as rg

    var = tmp_path / "var"
    ports = {"HITL_ARGILLA_PORT": free_port(), "HITL_BACKEND_PORT": free_port(), "HITL_SYNC_PORT": free_port()}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HITL_VAR_DIR": str(var), "HITL_TOOL": "argilla",
           "HITL_BATCH": "8", **{k: str(v) for k, v in ports.items()}}
    env.pop("HITL_DB_URL", None)
    try:
        up = _hitl(["up"], env, tmp_path, timeout=600)
        assert up.returncode == 0 and "8 uncertain snippets pushed" in up.stdout, up.stdout + up.stderr
        creds = json.loads((var / "credentials.json").read_text())
        client = rg.Argilla(api_url=f"http://127.0.0.1:{ports['HITL_ARGILLA_PORT']}", api_key=creds["argilla_key"])
        ds = client.datasets(name="hitl demo: Rotten Tomatoes", workspace="default")
        records = list(ds.records(with_suggestions=True))
        assert len(records) == 8 and 0 < sum(bool(list(r.suggestions)) for r in records) < 8  # blind share, checks
        assert _hitl(["down"], env, tmp_path, timeout=120).returncode == 0
        again = _hitl(["up"], env, tmp_path, timeout=600)  # the in-memory index is rebuilt from Argilla's database
        assert again.returncode == 0 and "resumed" in again.stdout, again.stdout + again.stderr
        ds = rg.Argilla(api_url=f"http://127.0.0.1:{ports['HITL_ARGILLA_PORT']}",
                        api_key=creds["argilla_key"]).datasets(name="hitl demo: Rotten Tomatoes", workspace="default")
        assert len(list(ds.records)) == 8
    finally:
        pids = [int(p.read_text()) for p in (var / "run").glob("*.pid")] if (var / "run").exists() else []
        down = _hitl(["down"], env, tmp_path, timeout=120)
    assert down.returncode == 0 and not any(map(_alive, pids))
    assert all(port_is_free(p) for p in ports.values())
