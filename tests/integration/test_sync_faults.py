"""Fault injection: SIGKILL ``hitl sync push`` / ``hitl sync pull`` at random moments, restart,
and check that Label Studio holds each item once and the store each annotation once.

Also: the CLI end to end (ingest, push, pull) and a Label Studio that is down during a pass.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from connector.store import StateStore
from connector.tools.label_studio import LabelStudioTool

pytestmark = pytest.mark.slow

TOOL = LabelStudioTool.name

KILLS = int(os.environ.get("HITL_FAULT_KILLS", "10"))


def _choice(label):
    return [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


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


def _kill_at_random(env, args, rng, *, max_delay):
    """Start the command and SIGKILL it after a random delay; returns whether it was killed."""
    proc = subprocess.Popen([sys.executable, "-m", "hitl.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=rng.uniform(0.5, max_delay))
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def _project(label_studio, env):
    client = LabelStudioTool(label_studio.url, label_studio.token)
    return client, client.project_id("fault injection", "<View/>")


def test_cli_push_survives_sigkill_at_random_points(workspace, label_studio):
    root, env = workspace
    r = _hitl(env, "ingest", str(root / "items.jsonl"))
    assert r.returncode == 0, r.stderr
    assert "added 260" in r.stdout
    assert "unchanged 260" in _hitl(env, "ingest", str(root / "items.jsonl")).stdout  # idempotent
    rng = random.Random(7)
    killed = 0
    for _ in range(KILLS):
        killed += _kill_at_random(env, ["sync", "push"], rng, max_delay=6.0)
    done = _hitl(env, "sync", "push")
    assert done.returncode == 0, done.stderr
    assert killed >= KILLS // 2  # most runs really died mid-way
    client, pid = _project(label_studio, env)
    tasks = list(client._iter_tasks(pid, include="id,data"))
    ext_ids = [t.data["hitl_id"] for t in tasks]
    assert len(ext_ids) == len(set(ext_ids))  # no task twice
    with StateStore(env["HITL_DB_URL"]) as store:
        review = store.decisions.routed(action="review")  # items still waiting (should be none)
        assert review == []
        assert store.pushes.pending(TOOL, str(pid)) == []
        pushed = {i.external_id for i in store.items.list(state="pushed")}
    assert pushed == set(ext_ids) and len(pushed) > 100


def test_cli_pull_survives_sigkill_at_random_points(workspace, label_studio):
    _, env = workspace
    client, pid = _project(label_studio, env)
    tasks = sorted(client.find(str(pid)).values())[:40]
    users = [client._ls.users.create(username=f"f-ann-{k}", email=f"f-ann-{k}@example.com", password="pw-123456789")
             for k in range(2)]
    rng = random.Random(11)
    expected = 0
    for round_ in range(KILLS):
        for t in tasks[round_ * 4:(round_ + 1) * 4]:
            for k, u in enumerate(users):
                client.annotate(t, _choice("fresh" if k else "rotten"), completed_by=u.id)
                expected += 1
        _kill_at_random(env, ["sync", "pull"], rng, max_delay=4.0)
    done = _hitl(env, "sync", "pull")
    assert done.returncode == 0, done.stderr
    with StateStore(env["HITL_DB_URL"]) as store:
        anns = store.annotations.list(tool=TOOL, project=str(pid))
    assert len(anns) == expected == len({a.remote_id for a in anns})  # none lost, none doubled
    assert {a.annotator for a in anns} == {u.email for u in users}


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


def test_argilla_push_and_pull_survive_sigkill_at_random_points(tmp_path, argilla, backend, rt_sample):
    from connector.tools.argilla import ArgillaTool
    from tests.integration.test_argilla_client import _annotator, _submit

    (tmp_path / "task.toml").write_text(
        'name = "argilla-faults"\ntool = "argilla"\nlabels = ["fresh", "rotten"]\n'
        f'[argilla]\nurl = "{argilla.url}"\n[routing]\naccept_threshold = 0.999\nspot_check_rate = 0.0\n')
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps({"id": f"a-{i}", "text": t})
                                                    for i, t in enumerate(rt_sample[0][:150])) + "\n")
    env = {**os.environ, "HITL_DB_URL": f"sqlite:///{tmp_path / 'state.db'}", "HITL_TASK": str(tmp_path / "task.toml"),
           "HITL_ARGILLA_API_KEY": argilla.api_key, "HITL_BACKEND_URL": backend.url, "HITL_PUSH_BATCH": "10"}
    assert _hitl(env, "ingest", str(tmp_path / "items.jsonl")).returncode == 0
    rng = random.Random(5)
    for _ in range(KILLS):
        _kill_at_random(env, ["sync", "push"], rng, max_delay=5.0)
    done = _hitl(env, "sync", "push")
    assert done.returncode == 0, done.stderr
    client = ArgillaTool(argilla.url, argilla.api_key)
    dataset = client.ensure_dataset("argilla-faults", text_field="text", labels=["fresh", "rotten"])
    records = client.find("argilla-faults")
    with StateStore(env["HITL_DB_URL"]) as store:
        pushed = {i.external_id for i in store.items.list(state="pushed")}
        assert store.pushes.pending("argilla", "argilla-faults") == []
    assert set(records) == pushed and len(pushed) > 50  # one record per pushed item, none missing

    users = [_annotator(client, argilla.url, f"fault-ann-{k}", dataset.workspace.name) for k in range(2)]
    targets = sorted(records.values())[:2 * KILLS]
    expected = 0
    for round_ in range(KILLS):
        for rid in targets[round_ * 2:(round_ + 1) * 2]:
            for k, (user, rg_client) in enumerate(users):
                _submit(rg_client, rid, "fresh" if k else "rotten", user.id)
                expected += 1
        _kill_at_random(env, ["sync", "pull"], rng, max_delay=4.0)
    assert _hitl(env, "sync", "pull").returncode == 0
    with StateStore(env["HITL_DB_URL"]) as store:
        anns = store.annotations.list(tool="argilla", project="argilla-faults")
    assert len(anns) == expected == len({a.remote_id for a in anns})
    assert {a.annotator for a in anns} == {"fault-ann-0", "fault-ann-1"}
