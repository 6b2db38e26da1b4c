"""The sync passes against a real Label Studio, a real ML backend and a real state store."""

from __future__ import annotations

import time

import pytest

from connector.store import StateStore
from connector.task_spec import TaskSpec
from connector.tools.label_studio import LabelStudioTool
from sync.service import HttpPredictor, SyncService

pytestmark = pytest.mark.slow

TOOL = LabelStudioTool.name


def _choice(label):
    return [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


@pytest.fixture
def setup(tmp_path, label_studio, backend, rt_sample, request):
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    spec = TaskSpec(name=f"sync {request.node.name}"[:50], labels=["fresh", "rotten"],
                    routing={"accept_threshold": 0.9, "spot_check_rate": 0.0})
    client = LabelStudioTool(label_studio.url, label_studio.token)
    sync = SyncService(store, spec, client, HttpPredictor(backend.url))
    texts = rt_sample[0][100:140]
    store.items.ingest([{"id": f"rt-{i}", "text": t} for i, t in enumerate(texts)])
    yield store, sync, client
    store.close()


def _remote_tasks(client, project):
    return client.find(project)


def test_push_sends_review_items_once_with_the_models_suggestion_where_shown(setup):
    store, sync, client = setup
    sync.predict_pass()
    routed = sync.route_pass().counts
    # no threshold certified yet: nothing auto-accepted, the confident items wait (defer / uncertified)
    assert routed["review"] > 0 and routed["review"] + routed["defer"] == 40 and "auto_accept" not in routed
    shown = sum(sync.shows_suggestion(it, d) for it, d in store.decisions.routed(action="review"))
    assert 0 < shown < routed["review"]  # the default: checks and a blind share go without
    first = sync.push_pass().counts
    assert first["pushed"] == routed["review"]
    assert sync.push_pass().counts["pushed"] == 0  # a second pass creates nothing
    remote = _remote_tasks(client, sync.project)
    assert len(remote) == routed["review"]
    preds = client._ls.predictions.list(project=int(sync.project))
    assert len(preds) == routed["review"]  # the tasks shown without a suggestion: an empty prediction
    preds = [p for p in preds if p.result]
    assert len(preds) == shown and all(0 < p.score <= 1 and p.model_version == "hitl" for p in preds)
    assert all(p.result[0]["value"]["choices"][0] in ("fresh", "rotten") for p in preds)


def test_a_crash_between_import_and_confirm_is_reconciled_without_duplicates(setup):
    store, sync, client = setup
    sync.predict_pass()
    sync.route_pass()
    routed = store.decisions.routed(action="review")
    crashed = routed[:3]
    # the pass began the pushes and imported the tasks, then died before confirming
    store.pushes.begin([it.id for it, _ in crashed], TOOL, sync.project)
    client.push(sync.project, [sync._push_item(it, d, None) for it, d in crashed])
    # and one begun push whose import never happened
    store.pushes.begin([routed[3][0].id], TOOL, sync.project)
    report = sync.push_pass().counts
    assert report["confirmed"] == 3 and report["re-queued"] == 1
    remote = _remote_tasks(client, sync.project)
    assert len(remote) == len(routed)  # every review item exactly once
    assert store.pushes.pending(TOOL, sync.project) == []


def test_pull_stores_each_answer_once_with_its_annotator_and_follows_edits(setup):
    store, sync, client = setup
    sync.predict_pass()
    sync.route_pass()
    sync.push_pass()
    remote = _remote_tasks(client, sync.project)
    tasks = sorted(remote.values())[:3]
    users = [client._ls.users.create(username=f"ann-{k}-{time.time_ns()}", email=f"ann{k}-{time.time_ns()}@example.com",
                                     password="pw-123456789") for k in range(2)]
    ids = {}
    for t in tasks:
        for k, u in enumerate(users):
            ids[(t, k)] = client.annotate(t, _choice("fresh" if k == 0 else "rotten"), completed_by=u.id)
    client.annotate(tasks[0], [], skipped=True)
    first = sync.pull_pass().counts
    assert first["inserted"] == 7
    assert sync.pull_pass().counts["inserted"] == 0  # nothing twice
    stored = store.annotations.list(tool=TOOL, project=sync.project)
    assert len(stored) == 7 and len({a.remote_id for a in stored}) == 7
    by_remote = {a.remote_id: a for a in stored}
    assert by_remote[str(ids[(tasks[1], 1)])].annotator == users[1].email
    assert by_remote[str(ids[(tasks[1], 1)])].value == ["rotten"]
    assert sum(a.status == "skipped" for a in stored) == 1
    time.sleep(1.1)
    client._ls.annotations.update(id=ids[(tasks[1], 1)], result=_choice("fresh"))
    client._ls.annotations.delete(id=ids[(tasks[2], 0)])
    again = sync.pull_pass().counts
    assert again["updated"] == 2 and again["inserted"] == 0 and again["deleted"] == 1
    stored = {a.remote_id: a for a in store.annotations.list(tool=TOOL, project=sync.project)}
    assert len(stored) == 7
    assert stored[str(ids[(tasks[1], 1)])].value == ["fresh"]
    assert stored[str(ids[(tasks[2], 0)])].status == "deleted"
