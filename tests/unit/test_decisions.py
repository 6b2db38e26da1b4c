"""On-line decisions over the store and the offline tool: taken or held, reviewed, fallen back,
called back once and signed, idempotent; and the API's answers."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update
from standardwebhooks.webhooks import Webhook

from connector.decisions import DecisionRequest, FeedbackRequest, LabelOutput, StructuredOutput, drawn
from connector.model_store import ModelStore
from connector.review_kinds import parse_label_studio, validate_output
from connector.store.models import CallbackDelivery
from connector.task_spec import TaskSpec
from connector.tools.offline import OfflineTool
from sync import jobs
from sync.callbacks import deliver_due
from sync.decisions import DecisionError, DecisionService, KeyReused
from sync.decisions_api import decisions_router
from sync.service import SyncService

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _spec(**decisions) -> TaskSpec:
    return TaskSpec(name="claims", labels=["fraud", "ok"], overlap=1,
                    thresholds={"target_error": 0.05, "min_n": 20},
                    decisions={"audit_share": 0.0, **decisions})


@pytest.fixture
def loop(empty_store, tmp_path):
    store = empty_store
    store.migrate()
    spec = _spec(force_review=[{"name": "big_amount", "field": "amount", "op": ">", "value": 10_000}],
                 auto_reject=[{"name": "banned", "field": "country", "op": "in", "value": ["XX"]}],
                 risk_weights={"amount": 0.0001})
    tool = OfflineTool()
    sync = SyncService(store, spec, tool)
    ctx = jobs.JobContext(store, spec, ModelStore(tmp_path / "models"), make_sync=lambda: sync,
                          callback_secret=SECRET)
    return store, spec, tool, sync, ctx, DecisionService(store, spec)


def _ask(service: DecisionService, key: str, label: str = "ok", confidence: float = 0.97, **inputs):
    return service.decide(DecisionRequest(idempotency_key=key, input={"text": f"claim {key}", **inputs},
                                          output=LabelOutput(label=label, confidence=confidence, model="m1"),
                                          callback_url="http://127.0.0.1:1/cb"))


def _review(store, sync, tool, ctx, answers: dict[str, str]) -> None:
    """The reviewers answer (external id -> label), then one sync job's pull, consolidate, outcomes."""
    sync.push_pass()
    for ext, label in answers.items():
        tool.annotate(sync.project, ext, "rev-1", [label])
    sync.pull_pass()
    jobs.consolidate_job(ctx)
    jobs.decisions_job(ctx, callbacks=False)


def test_nothing_is_decided_automatically_before_a_threshold_is_certified_then_it_is(loop):
    store, spec, tool, sync, ctx, service = loop
    first = [_ask(service, f"k{i}")[0] for i in range(25)]
    assert {d.status for d in first} == {"pending_review"} and {d.reason for d in first} == {"uncertified"}
    sync.push_pass()
    pushed = tool.projects[sync.project].items.values()
    assert len(pushed) == 25 and all(p.result is None for p in pushed)  # the evidence is labelled blind
    assert all(set(p.data) == {"text"} for p in pushed)  # nothing says why it is there
    _review(store, sync, tool, ctx, {f"decision:k{i}": "ok" for i in range(25)})
    assert {store.online.get(d.id).status for d in first} == {"approved"}
    service = DecisionService(store, spec)  # a fresh read of the evidence
    # 25 approvals at 0.97: the bound is not under 5 % yet (59 error-free are needed)
    assert _ask(service, "more-0")[0].status == "pending_review"
    more = [_ask(service, f"m{i}")[0] for i in range(1, 40)]
    _review(store, sync, tool, ctx, {f"decision:m{i}": "ok" for i in range(1, 40)} | {"decision:more-0": "ok"})
    service = DecisionService(store, spec)
    taken = _ask(service, "now")[0]
    assert taken.status == "auto_approved" and taken.rule == "threshold:certified" and taken.item_id is None
    assert _ask(service, "unsure", confidence=0.6)[0].reason == "uncertain"
    assert all(store.online.get(d.id).status == "approved" for d in more)


def test_rules_come_first_and_a_correction_is_the_outcome(loop):
    store, spec, tool, sync, ctx, service = loop  # noqa: RUF059
    rejected = _ask(service, "r", country="XX")[0]
    assert rejected.status == "auto_rejected" and rejected.rule == "rule:banned" and rejected.item_id is None
    forced = _ask(service, "f", amount=50_000)[0]
    plain = _ask(service, "p", amount=10)[0]
    assert forced.rule == "rule:big_amount" and forced.priority > plain.priority
    _review(store, sync, tool, ctx, {"decision:f": "fraud", "decision:p": "ok"})
    forced, plain = store.online.get(forced.id), store.online.get(plain.id)
    assert (forced.status, forced.outcome, forced.corrected, forced.reviewer) == ("corrected", "correct",
                                                                                  {"label": "fraud"}, "rev-1")
    assert (plain.status, plain.outcome) == ("approved", "approve")
    assert [e.kind for e in store.history.for_item(forced.item_id)] == ["decision_taken", "answer_added",
                                                                        "consensus_changed", "decision_reviewed"]
    view = service.view(forced)
    assert view.decision == {"label": "fraud"} and view.queue_position is None


def test_an_idempotency_key_gets_its_first_decision_and_refuses_another_request(loop):
    store, spec, tool, sync, ctx, service = loop  # noqa: RUF059
    first, created = _ask(service, "same")
    again, created_again = _ask(service, "same")
    assert created and not created_again and again.id == first.id
    with pytest.raises(KeyReused):
        _ask(service, "same", label="fraud")
    with pytest.raises(DecisionError, match="not one of the task's labels"):
        _ask(service, "bad", label="maybe")
    with pytest.raises(DecisionError, match="no output to judge"):
        service.decide(DecisionRequest(idempotency_key="ours", input={"text": "x"}))
    assert len(store.items.list()) == 1  # nothing written for the refused ones


def test_a_deadline_falls_back_once_and_takes_the_task_out_of_the_tool(loop):
    store, spec, tool, sync, ctx, service = loop  # noqa: RUF059
    late = service.decide(DecisionRequest(idempotency_key="late", input={"text": "t"}, deadline_s=0.001,
                                          output=LabelOutput(label="ok", confidence=0.9),
                                          callback_url="http://127.0.0.1:1/cb"))[0]
    sync.push_pass()
    assert len(tool.projects[sync.project].items) == 1
    assert jobs.decisions_job(ctx, callbacks=False)["deadlines"] == {"reject": 1}
    assert jobs.decisions_job(ctx, callbacks=False)["deadlines"] == {}
    late = store.online.get(late.id)
    assert (late.status, late.reviewer, late.outcome) == ("rejected", "timeout", "reject")
    assert tool.projects[sync.project].items == {}
    row = store.online.callback(late.id)
    assert row.payload["data"]["outcome"] == "reject" and row.payload["data"]["reviewer"] == "timeout"
    # an answer arriving after the fallback changes nothing
    assert not store.online.settle(late.id, outcome="approve", reviewer="rev-1")
    # the task stays out of the tool: the check for deleted tasks does not route it again
    sync.remote_check_interval_s = 0.0
    assert sync.check_remote().counts.get("missing", 0) == 0
    sync.route_pass()
    assert sync.push_pass().counts["pushed"] == 0 and tool.projects[sync.project].items == {}


def test_a_deadline_passed_before_the_first_push_keeps_the_item_out_of_the_tool(loop):
    store, spec, tool, sync, ctx, service = loop  # noqa: RUF059
    late = service.decide(DecisionRequest(idempotency_key="early", input={"text": "t"}, deadline_s=0.001,
                                          output=LabelOutput(label="ok", confidence=0.9)))[0]
    assert jobs.decisions_job(ctx, callbacks=False)["deadlines"] == {"reject": 1}
    assert store.items.get_many([late.item_id])[late.item_id].state == "consolidated"
    assert sync.push_pass().counts["pushed"] == 0 and tool.projects[sync.project].items == {}


def test_a_decision_taken_before_its_push_is_never_pushed(loop):
    store, spec, tool, sync, ctx, service = loop  # noqa: RUF059
    early = service.decide(DecisionRequest(idempotency_key="early", input={"text": "t"}, deadline_s=0.001,
                                           output=LabelOutput(label="ok", confidence=0.9)))[0]
    kept = _ask(service, "kept")[0]
    assert service.apply_deadlines() == {"reject": 1}
    sync.push_pass()
    assert [p.external_id for p in tool.projects[sync.project].items.values()] == ["decision:kept"]
    assert store.online.get(early.id).status == "rejected" and store.online.get(kept.id).status == "pending_review"


def test_escalation_moves_a_decision_to_the_adjudication_queue_once_then_the_conservative_fallback(
        empty_store, tmp_path):
    store = empty_store
    store.migrate()
    spec = _spec(fallback="escalate", escalate_boost=5.0, deadline_s=0.001)
    tool = OfflineTool()
    sync = SyncService(store, spec, tool)
    ctx = jobs.JobContext(store, spec, ModelStore(tmp_path / "m"), make_sync=lambda: sync)
    service = DecisionService(store, spec)
    d = _ask(service, "e")[0]
    sync.push_pass()
    assert jobs.decisions_job(ctx, callbacks=False)["deadlines"] == {"escalated": 1}
    assert store.online.get(d.id).escalated and store.online.get(d.id).priority == pytest.approx(d.priority + 5)
    queue = tool.projects[sync.adjudication.key]
    assert [p.external_id for p in queue.items.values()] == ["decision:e"]
    tool.annotate(sync.adjudication.key, "decision:e", "senior", ["fraud"])  # the senior reviewer decides
    jobs.consolidate_job(ctx)
    jobs.decisions_job(ctx, callbacks=False)
    done = store.online.get(d.id)
    assert (done.status, done.reviewer, done.corrected) == ("corrected", "senior", {"label": "fraud"})
    late = _ask(service, "late")[0]
    assert service.apply_deadlines() == {"escalated": 1}
    assert service.apply_deadlines() == {"reject": 1}  # its second deadline passed too
    assert store.online.get(late.id).reviewer == "timeout"


def test_a_share_of_thumbs_up_answers_is_audited_and_its_outcome_calls_nobody_back(empty_store):
    store = empty_store
    store.migrate()
    service = DecisionService(store, TaskSpec(name="rag", kind="answer", decisions={"feedback_audit_share": 0.3}))
    made = [service.feedback(FeedbackRequest(idempotency_key=f"u{i}", question="When?", answer="In 1912.",
                                             thumbs="up", callback_url="http://127.0.0.1:1/cb"))[0]
            for i in range(40)]
    audits = [d for d in made if d.audit]
    assert [d.audit for d in made] == [drawn(f"u{i}", 0.3, salt="feedback") for i in range(40)]
    assert 0 < len(audits) < 40
    assert {(d.status, d.reason) for d in audits} == {("auto_approved", "audit")}
    assert all(d.item_id is not None for d in audits) and all(d.item_id is None for d in made if not d.audit)
    assert store.online.settle(audits[0].id, outcome="reject", reviewer="rev-1")
    audited = store.online.get(audits[0].id)
    assert (audited.status, audited.outcome) == ("auto_approved", "reject")
    assert store.online.callback(audited.id) is None  # the caller had its answer already


def test_an_extraction_is_reviewed_as_its_data_not_as_the_request_around_it(empty_store):
    store = empty_store
    store.migrate()
    schema = {"type": "object", "required": ["vendor", "total"],
              "properties": {"vendor": {"type": "string"}, "total": {"type": "number"}}}
    spec = TaskSpec(name="invoices", kind="extraction", extraction={"json_schema": schema})
    tool = OfflineTool()
    sync = SyncService(store, spec, tool)
    made = DecisionService(store, spec).decide(DecisionRequest(
        idempotency_key="inv-1", input={"text": "Invoice from ACME, 3 EUR"},
        output=StructuredOutput(data={"vendor": "ACME", "total": "3 EUR"}, field_confidence={"vendor": 0.9},
                                model="llm")))[0]
    assert made.reason == "schema_invalid"
    sync.push_pass()
    (pushed,) = tool.projects[sync.project].items.values()
    assert json.loads(pushed.data["output"]) == {"vendor": "ACME", "total": "3 EUR"}
    assert {r["from_name"]: r["value"]["text"][0] for r in pushed.result} == {"field_vendor": "ACME",
                                                                             "field_total": "3 EUR"}
    # the reviewer fixes the total alone: the rest of the object is the model's, and it meets the schema
    value, extra = parse_label_studio(spec, [
        {"from_name": "outcome", "type": "choices", "value": {"choices": ["correct"]}},
        {"from_name": "field_total", "type": "textarea", "value": {"text": ["3"]}}], pushed.data)
    assert value == ["correct"] and extra["corrected"] == {"vendor": "ACME", "total": 3}
    assert validate_output(spec, extra["corrected"]) == []


class _Receiver(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[dict, dict]]] = []
    fail_first: ClassVar[set[str]] = set()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        headers = {k.lower(): v for k, v in self.headers.items()}
        payload = Webhook(SECRET).verify(body, headers)  # raises on a bad signature
        wid = headers["webhook-id"]
        if wid in self.fail_first:
            self.fail_first.discard(wid)
            self.send_response(503)
        else:
            self.seen.append((headers, payload))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_callbacks_arrive_signed_once_each_retried_after_a_failure(loop):
    store, spec, tool, sync, ctx, service = loop  # noqa: RUF059
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        made = [service.decide(DecisionRequest(idempotency_key=f"c{i}", input={"text": f"t{i}"},
                                               output=LabelOutput(label="ok", confidence=0.9),
                                               callback_url=url))[0] for i in range(3)]
        _review(store, sync, tool, ctx, {"decision:c0": "ok", "decision:c1": "fraud", "decision:c2": "ok"})
        _Receiver.fail_first = {store.online.callback(made[2].id).webhook_id}
        assert deliver_due(store, SECRET, attempts=3) == {"delivered": 2, "retry": 1, "failed": 0}
        assert deliver_due(store, SECRET, attempts=3)["delivered"] == 0  # the retry waits for its backoff
        row = store.online.callback(made[2].id)
        with store.online._sessions.begin() as s:  # its backoff over now
            s.execute(update(CallbackDelivery).where(CallbackDelivery.id == row.id).values(next_at=row.created_at))
        assert deliver_due(store, SECRET, attempts=3)["delivered"] == 1
        assert deliver_due(store, SECRET, attempts=3) == {"delivered": 0, "retry": 0, "failed": 0}
        outcomes = sorted((p["data"]["idempotency_key"], p["data"]["outcome"]) for _, p in _Receiver.seen)
        assert outcomes == [("c0", "approve"), ("c1", "correct"), ("c2", "approve")]
        assert len({h["webhook-id"] for h, _ in _Receiver.seen}) == 3
        assert store.online.callback(made[2].id).attempts == 2
    finally:
        server.shutdown()
        _Receiver.seen = []


def test_the_api_answers_201_200_409_422_and_needs_its_token(loop):
    store, spec, tool, sync, ctx, service = loop  # noqa: RUF059
    app = FastAPI()
    app.include_router(decisions_router(service, token="t0ken"))
    client = TestClient(app)
    auth = {"Authorization": "Bearer t0ken"}
    body = {"idempotency_key": "api-1", "input": {"text": "a claim", "amount": 3},
            "output": {"label": "ok", "confidence": 0.8, "model": "m1"}}
    assert client.post("/v1/decisions", json=body).status_code == 401
    first = client.post("/v1/decisions", json=body, headers=auth)
    assert first.status_code == 201 and first.json()["status"] == "pending_review"
    assert first.json()["queue_position"] == 1 and first.json()["estimated_wait_s"] is None  # no review yet
    again = client.post("/v1/decisions", json=body, headers=auth)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert client.post("/v1/decisions", json=body | {"input": {"text": "other"}}, headers=auth).status_code == 409
    bad = client.post("/v1/decisions", json=body | {"idempotency_key": "api-2", "output": {"label": "??"}},
                      headers=auth)
    assert bad.status_code == 422 and "not one of the task's labels" in bad.text
    assert client.post("/v1/decisions", json=body | {"idempotency_key": "has space"}, headers=auth).status_code == 422
    got = client.get(f"/v1/decisions/{first.json()['id']}", headers=auth)
    assert got.status_code == 200 and got.json()["status"] == "pending_review"
    assert client.get("/v1/decisions/999", headers=auth).status_code == 404
    assert json.loads(client.get("/openapi.json").text)["paths"]["/v1/decisions"]["post"]


def test_a_models_confidences_are_calibrated_on_its_outcomes_once_there_are_enough():
    import numpy as np

    from connector.decisions import ScoreCalibration

    rng = np.random.default_rng(0)
    raw = rng.uniform(0.5, 1.0, 400)
    approved = rng.random(400) < (raw - 0.3)  # overconfident: approved less often than it claims
    assert ScoreCalibration(raw[:10], approved[:10], min_outcomes=50)(0.9) == 0.9  # too few: as given
    cal = ScoreCalibration(raw, approved, min_outcomes=50)
    assert cal(0.9) == pytest.approx(0.6, abs=0.08) and cal(0.6) < cal(0.9)
    assert cal.error_rate == pytest.approx(1 - approved.mean())


SCHEMA = {"type": "object", "required": ["vendor", "total"], "additionalProperties": False,
          "properties": {"vendor": {"type": "string"}, "total": {"type": "number"}}}


def test_an_extraction_is_checked_by_its_schema_and_a_bad_correction_goes_back(empty_store, tmp_path):
    from connector.decisions import StructuredOutput

    store = empty_store
    store.migrate()
    spec = TaskSpec(name="invoices", kind="extraction", extraction={"json_schema": SCHEMA, "min_field_confidence": 0.8},
                    decisions={"audit_share": 0.0})
    tool = OfflineTool()
    sync = SyncService(store, spec, tool)
    ctx = jobs.JobContext(store, spec, ModelStore(tmp_path / "models"), make_sync=lambda: sync)
    service = DecisionService(store, spec)

    def ask(key: str, data: dict, conf: dict | None = None):
        return service.decide(DecisionRequest(idempotency_key=key, input={"text": f"invoice {key}"},
                                              output=StructuredOutput(data=data, field_confidence=conf or {})))[0]

    broken = ask("broken", {"vendor": "ACME"})
    unsure = ask("unsure", {"vendor": "ACME", "total": 3.0}, {"vendor": 0.99, "total": 0.5})
    assert (broken.reason, broken.review["errors"]) == ("schema_invalid", ["at $: 'total' is a required property"])
    assert (unsure.reason, unsure.review) == ("low_field_confidence", {"fields": ["total"]})
    sync.push_pass()
    pushed = {p.external_id: p for p in tool.projects[sync.project].items.values()}
    assert pushed["decision:broken"].result  # the output under review, editable, whatever the task shows
    tool.annotate(sync.project, "decision:broken", "rev-1", ["correct"], extra={"corrected": {"vendor": "ACME"}})
    tool.annotate(sync.project, "decision:unsure", "rev-1", ["approve"], extra={"corrected": None, "rating": None})
    sync.pull_pass()
    jobs.consolidate_job(ctx)
    assert jobs.decisions_job(ctx, callbacks=False)["outcomes"] == {"refused": 1, "approve": 1}
    assert store.online.get(broken.id).status == "pending_review"
    refused = [e for e in store.history.for_item(broken.item_id) if e.kind == "correction_refused"]
    assert len(refused) == 1 and "'total' is a required property" in refused[0].detail["errors"][0]
    assert tool.projects[sync.project].sent_back[-1][2] == "correction_invalid"
    assert jobs.decisions_job(ctx, callbacks=False)["outcomes"] == {}  # refused once per answer
    tool.annotate(sync.project, "decision:broken", "rev-1", ["correct"],
                  extra={"corrected": {"vendor": "ACME", "total": 310.0}, "comment": "total was missing"})
    sync.pull_pass()
    jobs.consolidate_job(ctx)
    jobs.decisions_job(ctx, callbacks=False)
    done = store.online.get(broken.id)
    assert (done.status, done.corrected, done.comment) == ("corrected", {"vendor": "ACME", "total": 310.0},
                                                           "total was missing")
    assert store.online.get(unsure.id).status == "approved"


def test_thumbs_down_answers_go_to_review_and_a_share_of_thumbs_up_ones_as_audits(empty_store, tmp_path):
    from connector.decisions import FeedbackRequest

    store = empty_store
    store.migrate()
    spec = TaskSpec(name="rag", kind="answer", decisions={"feedback_audit_share": 0.25})
    service = DecisionService(store, spec)

    def fb(key: str, thumbs: str):
        return service.feedback(FeedbackRequest(idempotency_key=key, question="Can I return it?", answer="No.",
                                                context=["Returns within 14 days."], thumbs=thumbs))[0]

    down = fb("d", "down")
    ups = [fb(f"u{i}", "up") for i in range(200)]
    assert (down.status, down.reason, down.output["answer"]) == ("pending_review", "thumbs_down", "No.")
    assert {u.status for u in ups} == {"auto_approved"} and {u.rule for u in ups} == {"feedback:thumbs_up"}
    audited = [u for u in ups if u.audit]
    assert 30 <= len(audited) <= 70 and all(u.item_id is not None for u in audited)
    assert all(u.item_id is None for u in ups if not u.audit)
    with pytest.raises(DecisionError, match="feedback is for 'answer' tasks"):
        DecisionService(store, _spec()).feedback(FeedbackRequest(idempotency_key="x", question="q", answer="a",
                                                                 thumbs="up"))
