"""On-line decisions for a task whose labels are sets (``multi_label``): our model's set, accepted
only when the rule in force clears it (per-label thresholds too), held for review without one; a
caller's set checked against the task's labels; a reviewer's set settling the decision."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from connector.decisions import DecisionRequest, LabelOutput
from connector.model_store import ModelStore
from connector.snapshots import ThresholdsSnapshot, write_snapshot
from connector.task_spec import TaskSpec
from connector.tools.offline import OfflineTool
from sync import jobs
from sync.decisions import DecisionError, DecisionService
from sync.decisions_api import decisions_router
from sync.service import SyncService

TOPICS = ["politics", "sport", "tech"]
#: text -> our model's per-label probabilities
PROBS = {"sure": {"politics": 0.97, "sport": 0.05, "tech": 0.04},  # every decision at 0.95 or over
         "sure-tech": {"politics": 0.97, "sport": 0.05, "tech": 0.005},
         "mixed": {"politics": 0.3, "sport": 0.8, "tech": 0.6}}


class SetPredictor:
    """``/v1/predict`` of a backend serving the multi-label primary control's own model (no main model):
    every label at or over 0.5 chosen, the task score the least confident label decision."""

    def __init__(self, control: str) -> None:
        self.control = control

    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        out = []
        for t in texts:
            probs = PROBS[t]
            chosen = [lb for lb in TOPICS if probs[lb] >= 0.5]
            score = min(p if p >= 0.5 else 1 - p for p in probs.values())
            out.append({"label": None, "confidence": None, "probabilities": {}, "model_version": None,
                        "controls": {self.control: {"labels": chosen, "probabilities": probs, "score": score,
                                                    "model_version": "c1"}}})
        return out


@pytest.fixture
def loop(empty_store, tmp_path):
    store = empty_store
    store.migrate()
    spec = TaskSpec(name="news", labels=TOPICS, multi_label=True, overlap=1,
                    thresholds={"target_error": 0.05, "min_n": 20}, decisions={"audit_share": 0.0})
    tool = OfflineTool()
    sync = SyncService(store, spec, tool)
    ctx = jobs.JobContext(store, spec, ModelStore(tmp_path / "models"), make_sync=lambda: sync)
    return store, spec, tool, sync, ctx, DecisionService(store, spec, SetPredictor(spec.primary.name))


def _ours(service: DecisionService, key: str, text: str):
    return service.decide(DecisionRequest(idempotency_key=key, input={"text": text}))[0]


def test_our_set_is_accepted_only_when_the_certified_rule_clears_every_label(loop):
    store, spec, tool, sync, ctx, service = loop  # noqa: RUF059
    write_snapshot(store, ThresholdsSnapshot(threshold=0.9, error_ucb=0.03, meets_target=True, target_error=0.05,
                                             label_thresholds={"politics": 0.9, "sport": 0.9, "tech": 0.99}))
    taken = _ours(service, "a", "sure-tech")
    assert (taken.status, taken.rule, taken.item_id) == ("auto_approved", "threshold:certified", None)
    view = service.view(taken)
    assert view.decision == {"label": ["politics"], "probabilities": PROBS["sure-tech"], "model_version": "c1"}
    assert view.score == pytest.approx(0.95)
    # the score (0.95) clears the global 0.9, but the tech decision (1 - 0.04 = 0.96) fails its own 0.99
    held = _ours(service, "b", "sure")
    assert (held.status, held.reason, held.score) == ("pending_review", "uncertain", pytest.approx(0.95))
    assert [p.label for p in store.predictions.list([held.item_id])] == ['["politics"]']  # the suggestion
    assert _ours(service, "c", "mixed").reason == "uncertain"  # 0.6 under every threshold


def test_a_one_threshold_rule_accepts_a_set_on_its_score(loop):
    store, spec, tool, sync, ctx, service = loop  # noqa: RUF059
    write_snapshot(store, ThresholdsSnapshot(threshold=0.9, error_ucb=0.03, meets_target=True, target_error=0.05))
    assert _ours(service, "a", "sure").status == "auto_approved"
    assert _ours(service, "b", "mixed").reason == "uncertain"


def test_without_a_certified_rule_our_set_waits_and_a_reviewers_set_settles_it(loop):
    store, spec, tool, sync, ctx, service = loop  # noqa: RUF059
    write_snapshot(store, ThresholdsSnapshot(threshold=0.9, error_ucb=0.2, meets_target=False))
    kept, changed = _ours(service, "kept", "mixed"), _ours(service, "changed", "sure")
    assert {(d.status, d.reason) for d in (kept, changed)} == {("pending_review", "uncertified")}
    assert kept.output["label"] == ["sport", "tech"]
    sync.push_pass()
    tool.annotate(sync.project, "decision:kept", "rev-1", ["tech", "sport"])  # the suggested set, in any order
    tool.annotate(sync.project, "decision:changed", "rev-1", ["tech", "sport"])
    sync.pull_pass()
    jobs.consolidate_job(ctx)
    assert jobs.decisions_job(ctx, callbacks=False)["outcomes"] == {"approve": 1, "correct": 1}
    kept, changed = store.online.get(kept.id), store.online.get(changed.id)
    assert (kept.status, kept.outcome) == ("approved", "approve")
    assert (changed.status, changed.corrected) == ("corrected", {"label": ["sport", "tech"]})
    assert service.view(changed).decision == {"label": ["sport", "tech"]}


def test_a_callers_set_is_checked_against_the_task_labels(loop):
    store, spec, tool, sync, ctx, service = loop  # noqa: RUF059
    app = FastAPI()
    app.include_router(decisions_router(service, token=None))
    client = TestClient(app)
    body = {"idempotency_key": "c-1", "input": {"text": "sure"},
            "output": {"label": ["tech", "politics"], "confidence": 0.9, "model": "m1"}}
    made = client.post("/v1/decisions", json=body)
    assert made.status_code == 201 and made.json()["status"] == "pending_review"
    assert store.online.get(made.json()["id"]).output["label"] == ["politics", "tech"]
    bad = client.post("/v1/decisions", json=body | {"idempotency_key": "c-2",
                                                     "output": {"label": ["tech", "weather"], "model": "m1"}})
    assert bad.status_code == 422 and "['weather'] not among the task's labels" in bad.json()["detail"]
    one = service.decide(DecisionRequest(idempotency_key="c-3", input={"text": "sure"},
                                         output=LabelOutput(label="sport", model="m1")))[0]
    assert one.output["label"] == ["sport"]  # one label alone is the set of that label


def test_a_one_label_task_refuses_a_list(empty_store):
    store = empty_store
    store.migrate()
    service = DecisionService(store, TaskSpec(name="claims", labels=["fraud", "ok"]))
    with pytest.raises(DecisionError, match="takes one label, not a list"):
        service.decide(DecisionRequest(idempotency_key="x", input={"text": "t"},
                                       output=LabelOutput(label=["ok"], model="m1")))
