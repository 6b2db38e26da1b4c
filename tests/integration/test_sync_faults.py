"""The CLI end to end (ingest, push) and a Label Studio that is down before or during a pass.

Random SIGKILLs of ``hitl sync push`` / ``pull`` are in ``test_random_kills.py`` (50 per tool and
direction, on PostgreSQL); chosen kill points in ``test_kill_points.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from connector.store import StateStore
from connector.tools.label_studio import LabelStudioTool

pytestmark = pytest.mark.slow

TOOL = LabelStudioTool.name

@pytest.fixture(scope="module")
def workspace(tmp_path_factory, label_studio, backend, rt_sample):
    root = tmp_path_factory.mktemp("sync-cli")
    (root / "task.toml").write_text(
        'name = "fault injection"\nlabels = ["fresh", "rotten"]\n'
        f'[label_studio]\nurl = "{label_studio.url}"\n'
        '[routing]\naccept_threshold = 0.999\nspot_check_rate = 0.0\n')
    (root / "items.jsonl").write_text("\n".join(json.dumps({"id": f"rt-{i}", "text": t})
                                                for i, t in enumerate(rt_sample[0][:260])) + "\n")
    env = {**os.environ, "HITL_DB_URL": f"sqlite:///{root / 'state.db'}", "HITL_TASK": str(root / "task.toml"),
           "HITL_LS_API_KEY": label_studio.token, "HITL_BACKEND_URL": backend.url, "HITL_PUSH_BATCH": "10"}
    return root, env


def _hitl(env, *args, timeout=180):
    return subprocess.run([sys.executable, "-m", "hitl.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _project(label_studio, env):
    client = LabelStudioTool(label_studio.url, label_studio.token)
    return client, client.project_id("fault injection", "<View/>")


def test_cli_ingest_is_idempotent_and_a_push_puts_each_item_once_in_label_studio(workspace, label_studio):
    root, env = workspace
    r = _hitl(env, "ingest", str(root / "items.jsonl"))
    assert r.returncode == 0, r.stderr
    assert "added 260" in r.stdout
    assert "unchanged 260" in _hitl(env, "ingest", str(root / "items.jsonl")).stdout  # idempotent
    for _ in range(2):  # the second push finds nothing left to push
        done = _hitl(env, "sync", "push")
        assert done.returncode == 0, done.stderr
    client, pid = _project(label_studio, env)
    ext_ids = [t.data["hitl_id"] for t in client._iter_tasks(pid, include="id,data")]
    assert len(ext_ids) == len(set(ext_ids))  # no task twice
    with StateStore(env["HITL_DB_URL"]) as store:
        assert store.decisions.routed(action="review") == []
        assert store.pushes.pending(TOOL, str(pid)) == []
        pushed = {i.external_id for i in store.items.list(state="pushed")}
    assert pushed == set(ext_ids) and len(pushed) > 100


def test_a_label_studio_that_is_down_fails_the_pass_clearly_and_loses_nothing(workspace, label_studio):
    root, env = workspace
    down = {**env, "HITL_TASK": str(root / "task-down.toml")}
    (root / "task-down.toml").write_text((root / "task.toml").read_text().replace(label_studio.url,
                                                                                  "http://127.0.0.1:9"))
    t0 = time.monotonic()
    r = _hitl(down, "sync", "pull", timeout=120)
    assert r.returncode != 0
    assert "ConnectError" in r.stderr or "Connection refused" in r.stderr
    assert time.monotonic() - t0 < 110  # retried with backoff, then gave up
    with StateStore(env["HITL_DB_URL"]) as store:
        before = len(store.annotations.list(tool=TOOL))
    assert _hitl(env, "sync", "pull").returncode == 0
    with StateStore(env["HITL_DB_URL"]) as store:
        assert len(store.annotations.list(tool=TOOL)) == before


def test_label_studio_stopped_in_the_middle_of_a_push_then_back_gives_no_duplicates(tmp_path, rt_sample, backend):
    from hitl.local import label_studio_server as lss
    from tests.support.credentials import LS_PASSWORD, LS_TOKEN, LS_USERNAME
    from tests.support.label_studio import start_from_template

    server = start_from_template(tmp_path)
    port = int(server.url.rsplit(":", 1)[1])
    try:
        (tmp_path / "task.toml").write_text(
            'name = "tool stops"\nlabels = ["fresh", "rotten"]\n'
            f'[label_studio]\nurl = "{server.url}"\n[routing]\naccept_threshold = 0.999\nspot_check_rate = 0.0\n')
        (tmp_path / "items.jsonl").write_text("\n".join(json.dumps({"id": f"s-{i}", "text": t})
                                                        for i, t in enumerate(rt_sample[0][300:600])) + "\n")
        env = {**os.environ, "HITL_DB_URL": f"sqlite:///{tmp_path / 'state.db'}", "HITL_TASK": str(tmp_path / "task.toml"),
               "HITL_LS_API_KEY": server.token, "HITL_BACKEND_URL": backend.url, "HITL_PUSH_BATCH": "10"}
        assert _hitl(env, "ingest", str(tmp_path / "items.jsonl")).returncode == 0
        assert _hitl(env, "sync", "pull").returncode == 0  # creates the project; nothing to pull yet
        push = subprocess.Popen([sys.executable, "-m", "hitl.cli", "sync", "push"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        client = LabelStudioTool(server.url, server.token)
        pid = client.project_id("tool stops", "<View/>")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(client.find(str(pid))) < 30:
            time.sleep(0.3)
        server.stop()  # Label Studio goes away in the middle of the pass
        _, err = push.communicate(timeout=120)
        assert push.returncode != 0 and ("ConnectError" in err or "Connection refused" in err)
        server = lss.start(server.data_dir, port=port, username=LS_USERNAME, password=LS_PASSWORD, token=LS_TOKEN)  # back, same data
        done = _hitl(env, "sync", "push")
        assert done.returncode == 0, done.stderr
        tasks = list(LabelStudioTool(server.url, server.token)._iter_tasks(pid, include="id,data"))
        ext = [t.data["hitl_id"] for t in tasks]
        assert len(ext) == len(set(ext))
        with StateStore(env["HITL_DB_URL"]) as store:
            assert store.pushes.pending(TOOL, str(pid)) == [] and store.decisions.routed(action="review") == []
            assert {i.external_id for i in store.items.list(state="pushed")} == set(ext)
    finally:
        server.stop()
