"""The Label Studio tool against a real Label Studio: push, reconcile, incremental pull, delete."""

from __future__ import annotations

import time

import pytest

from connector.task_spec import TaskSpec
from connector.tools.base import PushItem
from connector.tools.label_studio import LabelStudioTool

pytestmark = pytest.mark.slow

CONFIG = ('<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
          '<Choice value="pos"/><Choice value="neg"/></Choices></View>')


def _choice(label):
    return [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


def _project(client, title):
    return client.ensure_project(TaskSpec(name=title, labels=["pos", "neg"], label_studio={"label_config": CONFIG}))


@pytest.fixture(scope="module")
def client(label_studio):
    return LabelStudioTool(label_studio.url, label_studio.token)


def test_ensure_project_is_idempotent_by_title(client):
    first = _project(client, "client test: ensure")
    assert _project(client, "client test: ensure") == first == str(client.project_id("client test: ensure", CONFIG))


def test_push_then_find_by_external_id_then_delete(client):
    pid = _project(client, "client test: import")
    items = [PushItem(f"e{i}", {"text": f"text {i}"}, _choice("pos"), 0.61, "v1") for i in range(4)]
    mapping = client.push(pid, items)
    assert sorted(mapping) == ["e0", "e1", "e2", "e3"] and len(set(mapping.values())) == 4
    assert client.find(pid) == mapping
    assert client.find(pid, ["e2", "missing"]) == {"e2": mapping["e2"]}
    preds = client._ls.predictions.list(project=int(pid))
    assert {p.score for p in preds} == {0.61} and {p.model_version for p in preds} == {"v1"}
    assert client.delete(pid, [mapping["e0"], mapping["e1"]]) == 2
    assert client.delete(pid, [mapping["e0"]]) == 0  # already gone
    assert sorted(client.find(pid)) == ["e2", "e3"]


def test_incremental_pull_sees_new_updated_skipped_and_deleted_annotations(client):
    pid = _project(client, "client test: pull")
    mapping = client.push(pid, [PushItem(f"p{i}", {"text": f"t{i}"}) for i in range(3)])
    user = client._ls.users.create(username="annotator-b", email="annotator-b@example.com", password="pw-123456789")
    first = client.pull(pid, {})
    assert {it.external_id for it in first.items} == {"p0", "p1", "p2"} and first.answers == []
    cursor = {**first.cursor, "settled": "1"}  # read exactly from the cursor on
    time.sleep(1.1)
    a1 = client.annotate(mapping["p0"], _choice("neg"), completed_by=user.id)
    client.annotate(mapping["p1"], [], skipped=True)
    pulled = client.pull(pid, cursor)
    assert {it.external_id for it in pulled.items} == {"p0", "p1"}  # p2 did not change
    answers = {a.external_id: a for a in pulled.answers}
    ann = answers["p0"]
    assert (ann.remote_id, ann.annotator, ann.value, ann.status) == (str(a1), "annotator-b@example.com", ["neg"], "submitted")
    assert (ann.item_remote_id, ann.annotator_id) == (mapping["p0"], str(user.id))
    assert answers["p1"].status == "skipped"
    cursor = {**pulled.cursor, "settled": "1"}
    time.sleep(1.1)
    client._ls.annotations.update(id=a1, result=_choice("pos"))
    pulled = client.pull(pid, cursor)
    (edited,) = pulled.answers
    assert edited.value == ["pos"] and edited.updated_at > ann.updated_at
    cursor = {**pulled.cursor, "settled": "1"}
    time.sleep(1.1)
    client._ls.annotations.delete(id=a1)
    pulled = client.pull(pid, cursor)
    assert [it.external_id for it in pulled.items] == ["p0"] and pulled.answers == []  # p0 whole: a1 is gone
    assert set(pulled.cursor) == {"updated_at", "settled"}


def test_a_pull_longer_than_a_page_misses_no_task_when_an_early_one_is_edited_between_pages(label_studio,
                                                                                             monkeypatch):
    client = LabelStudioTool(label_studio.url, label_studio.token, page_size=5)
    pid = _project(client, "client test: pages")
    mapping = client.push(pid, [PushItem(f"k{i:02d}", {"text": f"t{i}"}) for i in range(12)])
    cursor = {**client.pull(pid, {}).cursor, "settled": "1"}
    ids = {ext: client.annotate(mapping[ext], _choice("pos")) for ext in sorted(mapping)}  # k00 changed first
    list_tasks = client._ls.tasks.list
    pages: list[int] = []

    def list_then_edit(*args, **kwargs):
        page = list_tasks(*args, **kwargs)
        pages.append(len(page.items or []))
        if len(pages) == 1:  # between the first page and the next, an annotator edits the first task
            client._ls.annotations.update(id=ids["k00"], result=_choice("neg"))
        return page

    monkeypatch.setattr(client._ls.tasks, "list", list_then_edit)
    pulled = client.pull(pid, cursor)
    assert pages[0] == 5 and len(pages) > 2  # the pull did span pages
    assert sorted(it.external_id for it in pulled.items) == sorted(mapping)  # each task once, none missed
    assert sorted(a.remote_id for a in pulled.answers) == sorted(str(i) for i in ids.values())
    edited = next(a for a in pulled.answers if a.remote_id == str(ids["k00"]))
    assert edited.value == ["neg"]  # read again at its new place: the pull keeps the last reading
    newest = max(it.updated_at for it in pulled.items)
    assert pulled.cursor["updated_at"] == newest


def test_send_back_raises_the_overlap_and_requeues_the_task(client):
    pid = _project(client, "client test: send back")
    mapping = client.push(pid, [PushItem("s0", {"text": "t"})])
    client.annotate(mapping["s0"], _choice("pos"))
    assert client.send_back(pid, [(mapping["s0"], 2, "disagreement")]) == 1
    task = client._ls.tasks.get(id=int(mapping["s0"]))
    assert task.overlap == 2 and not task.is_labeled


@pytest.mark.parametrize("fault", ["504", "timeout"])
def test_an_import_whose_answer_is_lost_after_the_commit_creates_each_task_once(client, label_studio, fault):
    from tests.support.fault_proxy import FaultProxy

    pid = _project(client, f"client test: lost import answer {fault}")
    items = [PushItem(f"lost-{i}", {"text": f"text {i}"}, _choice("pos"), 0.7, "v1") for i in range(5)]
    imports = r"^/api/projects/\d+/import"
    with FaultProxy(label_studio.url, hold_s=5.0) as proxy:
        proxied = LabelStudioTool(proxy.url, label_studio.token, timeout=3.0, attempts=3)
        proxy.fail_next("POST", imports, fault)  # Label Studio commits the import; its answer never arrives
        mapping = proxied.push(pid, items)
    tasks = list(client._iter_tasks(int(pid), include="id,data"))  # counted in Label Studio itself
    assert len(tasks) == len(items)
    assert sorted(str(t.id) for t in tasks) == sorted(mapping.values())
    assert {t.data["hitl_id"]: str(t.id) for t in tasks} == mapping
    assert proxy.hits[imports] == 1  # looked up after the failure: nothing was missing, nothing sent again


def test_an_annotation_whose_answer_is_lost_after_the_commit_is_created_once(client, label_studio):
    from tests.support.fault_proxy import FaultProxy

    pid = _project(client, "client test: lost annotation answer")
    task = client.push(pid, [PushItem("ann-0", {"text": "t"})])["ann-0"]
    created = r"^/api/tasks/\d+/annotations"
    with FaultProxy(label_studio.url) as proxy:
        proxied = LabelStudioTool(proxy.url, label_studio.token, timeout=3.0, attempts=3)
        proxy.fail_next("POST", created, "504")  # Label Studio saves the annotation; its answer is lost
        ann_id = proxied.annotate(task, _choice("pos"))
        again = proxied.annotate(task, _choice("pos"))  # a second, deliberate answer is a new one
    stored = client._ls.annotations.list(id=int(task))  # counted in Label Studio itself
    assert sorted(a.id for a in stored) == sorted([ann_id, again]) and ann_id != again  # the lost one not sent again
