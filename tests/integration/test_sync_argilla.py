"""The sync passes against a real argilla-server: same task file, ``tool = "argilla"``."""

from __future__ import annotations

import pytest

from connector.store import StateStore
from connector.task_spec import TaskSpec
from connector.tools.argilla import ArgillaTool
from sync.service import HttpPredictor, SyncService
from tests.integration.test_argilla_client import _annotator, _submit

pytestmark = pytest.mark.slow


@pytest.fixture
def setup(tmp_path, argilla, backend, rt_sample):
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    spec = TaskSpec(name="sync-argilla", tool="argilla", labels=["fresh", "rotten"], overlap=2,
                    routing={"accept_threshold": 0.9, "spot_check_rate": 0.0})
    client = ArgillaTool(argilla.url, argilla.api_key)
    sync = SyncService(store, spec, client, HttpPredictor(backend.url))
    store.items.ingest([{"id": f"rt-{i}", "text": t} for i, t in enumerate(rt_sample[0][200:230])])
    yield store, sync, client, argilla
    store.close()


def test_argilla_push_is_idempotent_and_pull_stores_each_answer_once(setup):
    store, sync, client, argilla = setup
    sync.predict_pass()
    routed = sync.route_pass().counts
    assert sync.push_pass().counts["pushed"] == routed["review"] > 0
    assert sync.push_pass().counts["pushed"] == 0
    records = client.find(sync.project)
    dataset = client.dataset(sync.project)
    assert len(records) == routed["review"]
    suggested = [r for r in dataset.records(with_suggestions=True) if list(r.suggestions)]
    assert 0 < len(suggested) < len(records)  # the default: checks and a blind share go without
    (suggestion,) = list(suggested[0].suggestions)
    assert suggestion.value in ("fresh", "rotten") and 0 < suggestion.score <= 1 and suggestion.agent == "hitl"

    users = [_annotator(client, argilla.url, f"sync-ann-{k}", dataset.workspace.name) for k in range(2)]
    targets = sorted(records.values())[:3]
    for rid in targets:
        for k, (user, rg_client) in enumerate(users):
            _submit(rg_client, rid, "fresh" if k == 0 else "rotten", user.id)
    first = sync.pull_pass().counts
    assert first["inserted"] == 6
    again = sync.pull_pass().counts
    assert again["inserted"] == 0 and again["updated"] == 0
    stored = store.annotations.list(tool="argilla", project=sync.project)
    assert len(stored) == 6 and {a.annotator for a in stored} == {"sync-ann-0", "sync-ann-1"}
    assert sorted(tuple(a.value) for a in stored) == [("fresh",)] * 3 + [("rotten",)] * 3


def test_a_record_missing_from_one_search_answer_keeps_its_answers_and_a_real_deletion_takes_two_pulls(
        tmp_path, argilla, monkeypatch):
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    spec = TaskSpec(name="sync-argilla-short-search", tool="argilla", labels=["fresh", "rotten"], overlap=1)
    client = ArgillaTool(argilla.url, argilla.api_key)
    sync = SyncService(store, spec, client)  # no model: the items are routed to review by hand
    store.items.ingest([{"id": f"short-{i}", "text": f"a review, number {i}"} for i in range(3)])
    store.decisions.record([{"item_id": it.id, "action": "review", "reason": "seed", "priority": 1.0}
                            for it in store.items.list()])
    assert sync.push_pass().counts["pushed"] == 3
    records = sorted(client.find(sync.project).values())
    user, rg_client = _annotator(client, argilla.url, "short-search-ann", client.dataset(sync.project).workspace.name)
    responses = {rid: _submit(rg_client, rid, "fresh", user.id)["id"] for rid in records}
    assert sync.pull_pass().counts["inserted"] == 3

    def statuses():
        return {a.remote_id: a.status for a in store.annotations.list(tool="argilla", project=sync.project)}

    search, dropped = client._search, records[0]

    def short_search(dataset, query, *, include):  # one search answer is short of one record that still exists
        monkeypatch.setattr(client, "_search", search)
        return (raw for raw in search(dataset, query, include=include) if raw["id"] != dropped)

    monkeypatch.setattr(client, "_search", short_search)
    counts = sync.pull_pass().counts
    assert statuses() == dict.fromkeys(responses.values(), "submitted")  # absent once: kept
    assert (counts["missing"], counts["deleted"]) == (1, 0)
    again = sync.pull_pass().counts  # the record is back with its original updated_at
    assert statuses() == dict.fromkeys(responses.values(), "submitted") and again["deleted"] == 0
    sync.pull_pass()  # absent from one pull, back in the next: never two in a row
    assert statuses() == dict.fromkeys(responses.values(), "submitted")

    resp = rg_client.http_client.delete(f"/api/v1/responses/{responses[records[1]]}")  # a real deletion
    resp.raise_for_status()
    assert sync.pull_pass().counts["missing"] == 1 and statuses()[responses[records[1]]] == "submitted"
    assert sync.pull_pass().counts["deleted"] == 1 and statuses()[responses[records[1]]] == "deleted"
    store.close()
