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
    record = next(iter(dataset.records(with_suggestions=True)))
    (suggestion,) = list(record.suggestions)
    assert suggestion.value in ("fresh", "rotten") and 0 < suggestion.score <= 1 and suggestion.agent == "v1"

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
