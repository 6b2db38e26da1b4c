"""Fault injection that hits the windows: a process killed at one exact point, then the next pass.

The random SIGKILLs of ``test_sync_faults.py`` land wherever they land; these land where a crash
hurts: ``hitl sync push`` right after the tool's import returned and before ``pushes.confirm``
(Label Studio and Argilla), ``hitl sync pull`` between two pages of a Label Studio read and
after the upsert before the cursor moves, ``consolidate_job`` after its first label rows are
saved, and (through ``FaultProxy``) an Argilla search answer short of one record. The kill is a
test-only wrapper installed through ``sitecustomize`` (``tests/support/kill_points.py``): it
SIGKILLs the subprocess as the named method returns. The state store is PostgreSQL; outcomes are
counted in the tool itself and in the store.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from tests.support.workspaces import make_workspace

pytestmark = pytest.mark.slow

LS_PUSH = "connector.tools.label_studio:LabelStudioTool.push"
ARGILLA_PUSH = "connector.tools.argilla:ArgillaTool.push"
LS_PAGE = "connector.tools.label_studio:LabelStudioTool._task_page"
UPSERT = "connector.store.annotations:AnnotationRepository.upsert"
LABELS_SAVE = "connector.store.annotations:LabelRepository.save"


def _choice(label):
    return [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


def _ls_tasks(client, pid, **kwargs) -> list:
    return list(client._iter_tasks(int(pid), **kwargs))


def _argilla_records(client, name) -> list:
    return list(client.dataset(name).records(with_suggestions=False, with_responses=False))


# -- 1. push: killed after the import returned, before confirm ---------------------------------


@pytest.mark.parametrize("tool", ["label_studio", "argilla"])
def test_a_push_killed_after_the_import_returned_is_confirmed_by_the_next_reconcile(
        tool, request, tmp_path, postgres_cluster, backend, rt_sample):
    if tool == "label_studio":
        from connector.tools.label_studio import LabelStudioTool

        server = request.getfixturevalue("label_studio")
        ws = make_workspace(tmp_path, postgres_cluster, backend, rt_sample[0][:30], tool=tool, url=server.url,
                        api_key=server.token, prefix="push-ls")
        client = LabelStudioTool(server.url, server.token)
        at = LS_PUSH

        def project():
            return str(client.project_id(ws.name, "<View/>"))

        def remote() -> list[tuple[str, str]]:  # (our key, remote id) per task in the tool, duplicates kept
            return [(t.data["hitl_id"], str(t.id)) for t in _ls_tasks(client, project(), include="id,data")]
    else:
        from connector.tools.argilla import ArgillaTool

        server = request.getfixturevalue("argilla")
        ws = make_workspace(tmp_path, postgres_cluster, backend, rt_sample[0][:30], tool=tool, url=server.url,
                        api_key=server.api_key, prefix="push-ar")
        client = ArgillaTool(server.url, server.api_key)
        at = ARGILLA_PUSH

        def project():
            return ws.name

        def remote() -> list[tuple[str, str]]:
            return [(str(r.id), str(r._server_id)) for r in _argilla_records(client, ws.name)]

    ws.hitl("sync", "push", at=at)  # the first batch of 10 is in the tool, its pushes still pending
    with ws.store() as store:
        pending = {p.item_id for p in store.pushes.pending(tool, project())}
        review = {it.id for it, _ in store.decisions.routed(action="review")}
        keys = {it.external_id: it.id for it in store.items.list() if it.id in review}
        assert store.items.list(state="pushed") == []  # nothing confirmed
    landed = remote()
    assert len(landed) == 10  # counted in the tool: exactly the batch whose import returned
    assert len(review) >= 20 and pending <= review and {keys[k] for k, _ in landed} <= pending

    ws.hitl("sync", "push")  # reconcile confirms the batch in the tool, re-queues the one never sent
    after = remote()
    with ws.store() as store:
        assert store.pushes.pending(tool, project()) == []
        remote_ids = store.pushes.remote_ids(review, tool, project())
        pushed = [it.external_id for it in store.items.list(state="pushed")]
        assert store.decisions.routed(action="review") == []
    assert {keys[k]: rid for k, rid in landed} == {i: remote_ids[i] for i in (keys[k] for k, _ in landed)}
    assert len(after) == len(review) == len(pushed) == len(remote_ids)  # nothing doubled, nothing missing
    assert sorted(k for k, _ in after) == sorted(pushed)
    assert sorted(rid for _, rid in after) == sorted(remote_ids.values())


# -- 2. Label Studio pull: killed between pages, and after the upsert --------------------------


def test_a_label_studio_pull_killed_between_pages_then_the_next_pull_gets_every_answer_once_and_latest(
        tmp_path, postgres_cluster, backend, rt_sample, label_studio):
    from connector.tools.label_studio import LabelStudioTool

    ws = make_workspace(tmp_path, postgres_cluster, backend, rt_sample[0][40:52], tool="label_studio",
                    url=label_studio.url, api_key=label_studio.token, prefix="pull-ls")
    ws.hitl("sync", "push")
    client = LabelStudioTool(label_studio.url, label_studio.token)
    pid = client.project_id(ws.name, "<View/>")
    tasks = sorted(int(t.id) for t in _ls_tasks(client, pid, include="id"))
    assert len(tasks) == 12
    tag = uuid.uuid4().hex[:8]
    users = [client._ls.users.create(username=f"kp-{k}-{tag}", email=f"kp-{k}-{tag}@example.com",
                                     password="pw-123456789") for k in range(2)]
    ids = {t: client.annotate(t, _choice("rotten"), completed_by=users[0].id) for t in tasks}
    small = {"HITL_KILL_LS_PAGE_SIZE": "5"}  # 12 changed tasks: three pages

    ws.hitl("sync", "pull", at=LS_PAGE, **small)  # dies with the first page read, before the second
    client._ls.annotations.update(id=ids[tasks[0]], result=_choice("fresh"))  # on the page read: moves to the end
    client.annotate(tasks[1], _choice("fresh"), completed_by=users[1].id)
    ws.hitl("sync", "pull", at=UPSERT, **small)  # every page read and upserted; killed before the cursor moved
    with ws.store() as store:
        assert len(store.annotations.list(tool="label_studio", project=str(pid))) == 13
    client._ls.annotations.update(id=ids[tasks[2]], result=_choice("fresh"))  # edited in the gap
    client.annotate(tasks[11], _choice("fresh"), completed_by=users[1].id)
    ws.hitl("sync", "pull", **small)

    in_tool = sorted((str(a["id"]), tuple(a["result"][0]["value"]["choices"]))
                     for t in _ls_tasks(client, pid, fields="all")
                     for a in (x if isinstance(x, dict) else x.model_dump() for x in t.annotations or []))
    with ws.store() as store:
        stored = store.annotations.list(tool="label_studio", project=str(pid))
        with store.engine.connect() as conn:
            n_rows = conn.execute(text("SELECT count(*) FROM annotations")).scalar_one()
    assert len(in_tool) == 14 == len(stored) == n_rows  # counted in the tool and in the store: each once
    assert sorted((a.remote_id, tuple(a.value)) for a in stored) == in_tool  # latest values
    assert {a.status for a in stored} == {"submitted"}
    assert sum(v == ("fresh",) for _, v in in_tool) == 4


# -- 3. consolidation: killed after its first label rows are saved -----------------------------


def test_consolidation_killed_after_some_labels_are_saved_settles_every_item_once_and_sends_ties_back(
        tmp_path, postgres_cluster, backend, rt_sample, label_studio):
    from connector.tools.label_studio import LabelStudioTool

    ws = make_workspace(tmp_path, postgres_cluster, backend, rt_sample[0][60:69], tool="label_studio",
                    url=label_studio.url, api_key=label_studio.token, prefix="cons-ls")
    ws.hitl("sync", "push")
    client = LabelStudioTool(label_studio.url, label_studio.token)
    pid = client.project_id(ws.name, "<View/>")
    tasks = sorted(int(t.id) for t in _ls_tasks(client, pid, include="id"))
    tag = uuid.uuid4().hex[:8]
    users = [client._ls.users.create(username=f"kc-{k}-{tag}", email=f"kc-{k}-{tag}@example.com",
                                     password="pw-123456789") for k in range(2)]
    plan = [["fresh", "fresh"]] * 3 + [["rotten"]] * 3 + [["fresh", "rotten"]] * 3  # agree, one answer, a tie
    for t, answers in zip(tasks, plan):
        for user, label in zip(users, answers):
            client.annotate(t, _choice(label), completed_by=user.id)
    ws.hitl("sync", "pull")
    consolidate = ("-c", "from tests.support.kill_points import consolidate; consolidate()")

    ws.run(*consolidate, at=LABELS_SAVE)  # the first label rows are committed, then the process dies
    ws.run(*consolidate)

    with ws.store() as store:
        with store.engine.connect() as conn:
            per_item = conn.execute(text("SELECT item_id, count(*) FROM labels GROUP BY item_id")).all()
        labels = store.labels.list(status=None)
        remote = store.pushes.remote_ids([lb.item_id for lb in labels], "label_studio", str(pid))
    assert len(per_item) == 9 and {n for _, n in per_item} == {1}  # one row per item
    by_task = {int(remote[lb.item_id]): lb for lb in labels}
    expected = ["fresh"] * 3 + ["rotten"] * 3 + [None] * 3
    assert [by_task[t].label for t in tasks] == expected
    assert [by_task[t].status for t in tasks] == ["settled"] * 6 + ["unsettled"] * 3
    requeued = [int(t.id) for t in _ls_tasks(client, pid, fields="all") if t.overlap == 3 and not t.is_labeled]
    assert sorted(requeued) == tasks[6:]  # counted in the tool: each tie sent back for a third answer


# -- 4. Argilla: a search answer short of one record -------------------------------------------


def test_an_argilla_search_answer_short_of_one_record_loses_no_answer(tmp_path, postgres_cluster, backend,
                                                                      rt_sample, argilla):
    from connector.tools.argilla import ArgillaTool
    from tests.integration.test_argilla_client import _annotator, _submit
    from tests.support.fault_proxy import FaultProxy

    search = r"/api/v1/datasets/[^/]+/records/search"
    with FaultProxy(argilla.url) as proxy:
        ws = make_workspace(tmp_path, postgres_cluster, backend, rt_sample[0][80:86], tool="argilla", url=proxy.url,
                        api_key=argilla.api_key, prefix="short-ar")
        ws.hitl("sync", "push")
        client = ArgillaTool(argilla.url, argilla.api_key)  # straight to the server: the tool's own count
        records = sorted(str(r._server_id) for r in _argilla_records(client, ws.name))
        assert len(records) == 6
        tag = uuid.uuid4().hex[:8]
        workspace = client.dataset(ws.name).workspace.name
        users = [_annotator(client, argilla.url, f"ks-{k}-{tag}", workspace) for k in range(2)]
        for rid in records[:4]:
            for k, (user, rg_client) in enumerate(users):
                _submit(rg_client, rid, "fresh" if k else "rotten", user.id)
        ws.hitl("sync", "pull")

        def state():
            with ws.store() as store:
                rows = store.annotations.list(tool="argilla", project=ws.name)
            return sorted((a.remote_id, a.status, a.missed_pulls) for a in rows)

        in_tool = sorted(a.remote_id for a in client.submitted_responses(ws.name))
        assert len(in_tool) == 8 and state() == [(r, "submitted", 0) for r in in_tool]

        proxy.fail_next("POST", search, "drop_one")
        ws.hitl("sync", "pull")
        (dropped,) = proxy.dropped
        lost = sorted(str(r["id"]) for r in dropped["record"]["responses"])
        assert len(lost) == 2
        assert state() == [(r, "submitted", 1 if r in lost else 0) for r in in_tool]  # missed once: kept live

        ws.hitl("sync", "pull")  # the next full pull returns them: confirmed
        assert state() == [(r, "submitted", 0) for r in in_tool]
        assert sorted(a.remote_id for a in client.submitted_responses(ws.name)) == in_tool
