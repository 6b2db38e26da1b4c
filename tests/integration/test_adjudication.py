"""The adjudication queue against the real tools: a tie the annotators leave goes to the task's
adjudication project (Label Studio) or dataset (Argilla) with the answers in conflict shown, once;
an adjudicator's answer given through the tool's API settles the item as ``adjudicated`` after the
next sync."""

from __future__ import annotations

import uuid

import pytest

from connector.model_store import ModelStore
from connector.store import StateStore
from connector.task_spec import TaskSpec
from connector.tools.base import ANSWERS_FIELD, adjudication_name
from sync.jobs import JobContext, consolidate_job
from sync.service import SyncService

pytestmark = pytest.mark.slow


def _choice(label):
    return [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


def _setup(tmp_path, spec: TaskSpec, tool, n: int = 2) -> tuple[StateStore, SyncService, JobContext]:
    """``n`` items routed to review by hand and pushed (no model needed)."""
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    sync = SyncService(store, spec, tool)
    store.items.ingest([{"id": f"adj-{i}", "text": f"a review to adjudicate, number {i}"} for i in range(n)])
    store.decisions.record([{"item_id": it.id, "action": "review", "reason": "seed", "priority": 1.0}
                            for it in store.items.list()])
    assert sync.push_pass().counts["pushed"] == n
    return store, sync, JobContext(store, spec, ModelStore(tmp_path / "models"), make_sync=lambda: sync)


def _sync(sync: SyncService, ctx: JobContext) -> dict:
    """The sync job's answer side: the pull pass, then consolidation (adjudicators' answers pulled first)."""
    sync.pull_pass()
    return consolidate_job(ctx)


def _label(store: StateStore, external_id: str):
    (item,) = [it for it in store.items.list() if it.external_id == external_id]
    return store.labels.list(status=None, item_ids=[item.id])[0]


def test_label_studio_tie_goes_to_the_adjudication_project_and_its_answer_settles_it(tmp_path, label_studio):
    from connector.tools.label_studio import LabelStudioTool

    tag = uuid.uuid4().hex[:8]
    spec = TaskSpec(name=f"adjudicate ls {tag}", labels=["fresh", "rotten"], overlap=2,
                    consensus={"max_answers": 2})
    client = LabelStudioTool(label_studio.url, label_studio.token)
    store, sync, ctx = _setup(tmp_path, spec, client)
    tasks = client.find(sync.project)
    users = [client._ls.users.create(username=f"adj-{k}-{tag}", email=f"adj-{k}-{tag}@example.com",
                                     password="pw-123456789") for k in range(2)]
    client.annotate(tasks["adj-0"], _choice("fresh"), completed_by=users[0].id)
    client.annotate(tasks["adj-0"], _choice("rotten"), completed_by=users[1].id)
    client.annotate(tasks["adj-1"], _choice("fresh"), completed_by=users[0].id)
    client.annotate(tasks["adj-1"], _choice("fresh"), completed_by=users[1].id)

    out = _sync(sync, ctx)
    assert (out["settled"], out["to_adjudication"], out["sent_back"]) == (1, 1, 0)
    adj = sync.adjudication.key
    project = client._ls.projects.get(id=int(adj))
    assert project.title == adjudication_name(spec.project_name, 50) and ANSWERS_FIELD in project.label_config
    (task,) = list(client._iter_tasks(int(adj), fields="all"))
    assert task.data["hitl_id"] == "adj-0" and task.data["text"] == "a review to adjudicate, number 0"
    assert sorted(task.data[ANSWERS_FIELD].splitlines()) == [f"fresh: 1 ({users[0].email})",
                                                             f"rotten: 1 ({users[1].email})"]
    assert _sync(sync, ctx)["to_adjudication"] == 0  # once
    assert len(client.find(adj)) == 1

    client.annotate(task.id, _choice("rotten"))  # the adjudicator: the token's own user
    out = _sync(sync, ctx)
    label = _label(store, "adj-0")
    assert (out["adjudicated"], label.label, label.status, label.method) == (1, "rotten", "settled", "adjudicated")
    assert label.n_answers == 2 and label.reason.startswith("adjudicated by ")
    assert _label(store, "adj-1").method == "majority"
    store.close()


def test_argilla_tie_goes_to_the_adjudication_dataset_at_once_and_its_answer_settles_it(tmp_path, argilla):
    from connector.tools.argilla import ArgillaTool
    from tests.integration.test_argilla_client import _annotator, _submit

    tag = uuid.uuid4().hex[:8]
    spec = TaskSpec(name=f"adjudicate argilla {tag}", tool="argilla", labels=["fresh", "rotten"], overlap=2)
    client = ArgillaTool(argilla.url, argilla.api_key)
    store, sync, ctx = _setup(tmp_path, spec, client)
    workspace = client.dataset(sync.project).workspace.name
    users = [_annotator(client, argilla.url, f"adj-{k}-{tag}", workspace) for k in range(3)]
    records = client.find(sync.project)
    for (user, rg_client), label in zip(users, ["fresh", "rotten"]):
        _submit(rg_client, records["adj-0"], label, user.id)

    out = _sync(sync, ctx)  # Argilla cannot ask one record for a third answer: adjudication at once
    assert (out["unsettled"], out["to_adjudication"], out["sent_back"]) == (1, 1, 0)
    adj = sync.adjudication.key
    assert adj == adjudication_name(spec.project_name)
    dataset = client.dataset(adj)
    assert [f.name for f in dataset.settings.fields] == ["text", ANSWERS_FIELD]
    (record,) = list(dataset.records(with_suggestions=False, with_responses=False))
    assert record.id == "adj-0" and record.fields["text"] == "a review to adjudicate, number 0"
    assert sorted(record.fields[ANSWERS_FIELD].splitlines()) == [f"fresh: 1 (adj-0-{tag})",
                                                                 f"rotten: 1 (adj-1-{tag})"]
    assert not record.metadata and _label(store, "adj-0").reason == "needs_adjudication (tie after 2 answers)"
    assert _sync(sync, ctx)["to_adjudication"] == 0 and len(client.find(adj)) == 1

    lead, lead_client = users[2]
    _submit(lead_client, client.find(adj)["adj-0"], "fresh", lead.id)
    out = _sync(sync, ctx)
    label = _label(store, "adj-0")
    assert (out["adjudicated"], label.label, label.status, label.method) == (1, "fresh", "settled", "adjudicated")
    assert label.reason == f"adjudicated by adj-2-{tag}"
    assert {a.annotator for a in store.annotations.list(tool="argilla", project=sync.project)} == {
        f"adj-0-{tag}", f"adj-1-{tag}"}  # the adjudicator's answer is filed under the adjudication dataset
    store.close()
