"""The Label Studio client against a real Label Studio: push, reconcile, incremental pull."""

from __future__ import annotations

import time

import pytest

from connector.label_studio_client import LabelStudioClient, PushItem

pytestmark = pytest.mark.slow

CONFIG = ('<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
          '<Choice value="pos"/><Choice value="neg"/></Choices></View>')


def _choice(label):
    return [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


@pytest.fixture(scope="module")
def client(label_studio):
    return LabelStudioClient(label_studio.url, label_studio.token)


def test_ensure_project_is_idempotent_by_title(client):
    first = client.ensure_project("client test: ensure", CONFIG)
    assert client.ensure_project("client test: ensure", CONFIG) == first


def test_import_then_find_by_external_id(client):
    pid = client.ensure_project("client test: import", CONFIG)
    items = [PushItem(f"e{i}", {"text": f"text {i}"}, _choice("pos"), 0.61, "v1") for i in range(4)]
    mapping = client.import_items(pid, items)
    assert sorted(mapping) == ["e0", "e1", "e2", "e3"] and len(set(mapping.values())) == 4
    assert client.task_ids_by_external_id(pid) == mapping
    assert client.task_ids_by_external_id(pid, ["e2", "missing"]) == {"e2": mapping["e2"]}
    preds = client._ls.predictions.list(project=pid)
    assert {p.score for p in preds} == {0.61} and {p.model_version for p in preds} == {"v1"}


def test_incremental_pull_sees_new_updated_skipped_and_deleted_annotations(client):
    pid = client.ensure_project("client test: pull", CONFIG)
    mapping = client.import_items(pid, [PushItem(f"p{i}", {"text": f"t{i}"}) for i in range(3)])
    user = client._ls.users.create(username="annotator-b", email="annotator-b@example.com", password="pw-123456789")
    cursor = max(s.updated_at for s in client.changed_tasks(pid, None))
    time.sleep(1.1)
    a1 = client.annotate(mapping["p0"], _choice("neg"), completed_by=user.id)
    client.annotate(mapping["p1"], [], skipped=True)
    snaps = {s.external_id: s for s in client.changed_tasks(pid, cursor, overlap_s=0)}
    assert set(snaps) == {"p0", "p1"}  # p2 did not change
    (ann,) = snaps["p0"].annotations
    assert (ann.remote_id, ann.annotator, ann.value, ann.status) == (str(a1), "annotator-b@example.com", ["neg"], "submitted")
    assert snaps["p1"].annotations[0].status == "skipped"
    cursor = max(s.updated_at for s in snaps.values())
    time.sleep(1.1)
    client._ls.annotations.update(id=a1, result=_choice("pos"))
    (snap,) = list(client.changed_tasks(pid, cursor, overlap_s=0))
    assert snap.annotations[0].value == ["pos"] and snap.annotations[0].updated_at > ann.updated_at
    time.sleep(1.1)
    client._ls.annotations.delete(id=a1)
    (snap,) = [s for s in client.changed_tasks(pid, snap.updated_at, overlap_s=0)]
    assert snap.external_id == "p0" and snap.annotations == []
