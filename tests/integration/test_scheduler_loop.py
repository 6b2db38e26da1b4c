"""The scheduler's jobs against a real Label Studio and ML backend: answers come back, ties are
sent back for another answer, settled labels feed agreement, quality and a retraining."""

from __future__ import annotations

import shutil
import time

import pytest

from connector.model_store import ModelStore
from connector.snapshots import AgreementSnapshot, read_latest
from connector.store import StateStore
from connector.task_spec import TaskSpec
from connector.tools.label_studio import LabelStudioTool
from sync import jobs
from sync.scheduler import Scheduler, interval
from sync.service import HttpPredictor, SyncService

pytestmark = pytest.mark.slow


def _choice(label):
    return [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


def test_answers_settle_ties_go_back_for_a_third_answer_and_a_retrain_runs(tmp_path, label_studio, backend,
                                                                             model_root, rt_sample):
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    spec = TaskSpec(name=f"scheduler loop {time.time_ns()}", labels=["fresh", "rotten"], overlap=2,
                    routing={"accept_threshold": 0.999, "spot_check_rate": 0.0},
                    consensus={"max_answers": 3}, retraining={"min_new_labels": 4})
    client = LabelStudioTool(label_studio.url, label_studio.token)
    sync = SyncService(store, spec, client, HttpPredictor(backend.url))
    shutil.copytree(model_root, tmp_path / "models")
    ctx = jobs.JobContext(store, spec, ModelStore(tmp_path / "models"), make_sync=lambda: sync)
    sched = Scheduler(store, {"sync": lambda: jobs.sync_job(ctx), "metrics": lambda: jobs.metrics_job(ctx),
                              "retrain": lambda: jobs.retrain_job(ctx)}, {"sync": interval(3600)})
    store.items.ingest([{"id": f"loop-{i}", "text": t} for i, t in enumerate(rt_sample[0][200:208])])
    try:
        assert sched.execute("sync", slot="1") == "ran"
        first = store.job_runs.list("sync")[0].detail
        assert first["push"]["pushed"] == 8 and first["pull"] == {}

        tasks = sorted(client.find(sync.project).items())
        users = [client._ls.users.create(username=f"u{k}-{time.time_ns()}", email=f"u{k}-{time.time_ns()}@example.com",
                                         password="pw-123456789") for k in range(3)]
        plan = {tasks[0][1]: ["fresh", "fresh"], tasks[1][1]: ["fresh", "rotten"], tasks[2][1]: ["rotten", "rotten"],
                tasks[3][1]: ["fresh", "fresh"]}
        for task_id, answers in plan.items():
            for user, label in zip(users, answers):
                client.annotate(task_id, _choice(label), completed_by=user.id)
        assert sched.execute("sync", slot="2") == "ran"
        second = store.job_runs.list("sync")[0].detail
        assert second["pull"]["inserted"] == 8
        assert second["consolidate"] == {"items": 4, "settled": 3, "unsettled": 1, "sent_back": 1, "invalid_answers": 0,
                                         "adjudicated": 0, "to_adjudication": 0}
        tie = client._ls.tasks.get(id=int(tasks[1][1]))
        assert tie.overlap == 3 and not tie.is_labeled  # back in the queue for a third answer
        labels = {lb.item_id: lb for lb in store.labels.list(status=None)}
        assert sorted(lb.reason for lb in labels.values()) == ["settled", "settled", "settled", "tie"]

        assert sched.execute("sync", slot="3") == "ran"  # nothing new: not sent back twice
        assert store.job_runs.list("sync")[0].detail["consolidate"]["sent_back"] == 0

        client.annotate(tasks[1][1], _choice("rotten"), completed_by=users[2].id)
        assert sched.execute("sync", slot="4") == "ran"
        assert store.job_runs.list("sync")[0].detail["consolidate"]["settled"] == 4
        settled = {store.items.get(lb.item_id).external_id: lb.label for lb in store.labels.list()}
        assert settled[tasks[1][0]] == "rotten" and len(settled) == 4

        assert sched.execute("metrics", slot="1") == "ran"
        agreement = read_latest(store, AgreementSnapshot).snapshot
        assert agreement.n_items == 4 and agreement.n_annotators == 3
        assert sched.execute("retrain", slot="1") == "ran"
        retrained = store.job_runs.list("retrain")[0].detail
        assert retrained["candidate"] == "v2" and retrained["n_train"] + retrained["n_test"] == 4
        assert not retrained["promoted"] and "min_test" in retrained["reason"]  # 4 labels prove nothing
    finally:
        store.close()
