"""Decisions on line end to end on the real tools: a client posts decisions over HTTP to the sync
service's decision API (``create_webhook_app`` + ``mount_decisions``, served by uvicorn, bearer
token), 8 at a time; the scheduler's ``sync_job`` and ``decisions_job`` push the held ones, pull
the reviewers' answers, settle them and deliver the signed callbacks to a receiver that checks
each Standard Webhooks signature.

Where each kind is reviewed:

- ``label`` (another model's label with its confidence, nothing certified yet): Label Studio;
- ``extraction`` (an LLM's JSON against an inline JSON Schema): Argilla, 200 decisions, and Label
  Studio too (60), where a refused correction sends the task back for another annotation (Argilla
  2.8 has no per-record overlap: the refused response is deleted there, so the record is pending again);
- ``answer`` (``/v1/feedback`` thumbs down and up, a share of the thumbs-up audited): Label Studio.

Reviewers answer through each tool's own API: Label Studio annotations, Argilla responses.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from connector.model_store import ModelStore
from connector.store import StateStore
from connector.task_spec import TaskSpec
from sync import jobs
from sync.service import SyncService

pytestmark = pytest.mark.slow

SECRET = "whsec_" + base64.b64encode(b"decisions-e2e-callback-secret-32").decode()
TOKEN = "decisions-e2e-token"
N = 200
CLIENTS = 8
CALLBACKS_PER_RUN = 100  # sync.callbacks.deliver_due's default limit
LS_REVIEWER = "admin@example.com"  # the Label Studio test user (tests/support/credentials.py)
ARGILLA_REVIEWER = "argilla"  # the argilla-server owner the test stack creates

SCHEMA = {"type": "object", "required": ["vendor", "total"], "properties": {
    "vendor": {"type": "string"}, "total": {"type": "number"}, "due": {"type": "string", "format": "date"}}}


# -- the caller's side: the callback receiver and the API client ---------------------------------

class _Receiver:
    """A caller's callback endpoint: checks every signature, records (webhook-id, payload)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.refused: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    payload = Webhook(SECRET).verify(body, headers)
                except WebhookVerificationError as exc:
                    receiver.refused.append(str(exc))
                    self.send_response(400)
                else:
                    receiver.seen.append((headers["webhook-id"], payload))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/decided"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def by_decision(self) -> dict[int, list[dict[str, Any]]]:
        out: dict[int, list[dict[str, Any]]] = {}
        for _, payload in self.seen:
            out.setdefault(payload["data"]["id"], []).append(payload)
        return out


@contextmanager
def _serving(store: StateStore, spec: TaskSpec) -> Iterator[str]:
    """The sync service's HTTP app (webhook receivers + decision API) on a free loopback port."""
    import uvicorn

    from hitl.local.processes import free_port
    from sync.runner import mount_decisions
    from sync.settings import SyncSettings
    from sync.webhooks import PullRequests, create_webhook_app

    app = create_webhook_app(PullRequests(), secret=None)
    settings = SyncSettings(_env_file=None, sync_host="127.0.0.1", decisions_token=TOKEN,  # type: ignore[call-arg]
                            callback_secret=SECRET)
    assert mount_decisions(app, settings, store, spec)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the decision API did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


class _NoPredictions:
    """A decision item never goes through the ML backend: the predict pass finds nothing to score."""

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        raise AssertionError(f"the ML backend was asked about {len(texts)} texts")


@dataclass
class _Loop:
    """The service as the scheduler runs it, a client, and the caller's callback receiver."""

    store: StateStore
    spec: TaskSpec
    tool: Any
    sync: SyncService
    ctx: jobs.JobContext
    http: httpx.Client
    receiver: _Receiver

    def post(self, path: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
        """``bodies`` posted by ``CLIENTS`` concurrent clients, answers in order."""
        with ThreadPoolExecutor(CLIENTS) as pool:
            return list(pool.map(lambda b: self.http.post(path, json=b), bodies))

    def get(self, decision_id: int) -> dict[str, Any]:
        r = self.http.get(f"/v1/decisions/{decision_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def cycle(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """One scheduler round: the sync job (push, pull, consolidate, outcomes, deadlines), then
        the decisions job (deadlines again, callbacks) as often as the scheduler would run it until
        the due callbacks are sent (one run sends ``CALLBACKS_PER_RUN`` at most); the callbacks
        summed."""
        synced = jobs.sync_job(self.ctx)
        decided = jobs.decisions_job(self.ctx)
        runs = [decided]
        while runs[-1]["callbacks"]["delivered"] == CALLBACKS_PER_RUN:
            runs.append(jobs.decisions_job(self.ctx))
        decided = {**decided, "callbacks": dict(sum((Counter(r["callbacks"]) for r in runs), Counter()))}
        decided["callbacks"] = {k: decided["callbacks"].get(k, 0) for k in ("delivered", "retry", "failed")}
        return synced["decisions"], decided

    def items(self, decision_ids: list[int]) -> dict[int, int]:
        """Decision id -> its review item's id, for those with one."""
        rows = [self.store.online.get(i) for i in decision_ids]
        return {d.id: d.item_id for d in rows if d.item_id is not None}

    def remote(self, decision_ids: list[int]) -> dict[int, str]:
        """Decision id -> its task / record id in the tool, for those pushed."""
        items = self.items(decision_ids)
        remote = self.store.pushes.remote_ids(items.values(), self.tool.name, self.sync.project)
        return {i: remote[item] for i, item in items.items() if item in remote}

    def in_tool(self, decision_ids: list[int]) -> set[int]:
        """Which of the decisions' items the tool holds now (read from the tool, by our key)."""
        from connector.tools.base import item_key

        items = self.items(decision_ids)
        rows = self.store.items.get_many(items.values())
        keys = {item_key(rows[item].external_id, rows[item].version): i for i, item in items.items()}
        return {keys[k] for k in self.tool.find(self.sync.project, list(keys))}


@contextmanager
def _loop(tmp_path: Any, spec: TaskSpec, tool: Any) -> Iterator[_Loop]:
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    sync = SyncService(store, spec, tool, _NoPredictions())
    sync.remote_check_interval_s = 0.0  # every sync job checks the tool for deleted tasks
    ctx = jobs.JobContext(store, spec, ModelStore(tmp_path / "models"), make_sync=lambda: sync,
                          callback_secret=SECRET)
    receiver = _Receiver()
    with _serving(store, spec) as url, httpx.Client(base_url=url, timeout=60,
                                                    headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        try:
            yield _Loop(store, spec, tool, sync, ctx, http, receiver)
        finally:
            receiver.server.shutdown()
            store.close()


def _created(answers: list[httpx.Response]) -> list[dict[str, Any]]:
    bad = [(r.status_code, r.text[:200]) for r in answers if r.status_code != 201]
    assert not bad, bad[:3]
    return [r.json() for r in answers]


def _idempotent(loop: _Loop, path: str, body: dict[str, Any], first: dict[str, Any], other: dict[str, Any]) -> None:
    """The same key again returns the first decision (200); with another body it is refused (409);
    one new key sent by every client at once makes one decision."""
    again = loop.http.post(path, json=body)
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    assert again.json()["status"] == first["status"]
    clash = loop.http.post(path, json=other)
    assert clash.status_code == 409 and body["idempotency_key"] in clash.json()["detail"]
    racing = {**body, "idempotency_key": f"{body['idempotency_key']}-race"}
    answers = loop.post(path, [racing] * CLIENTS)
    assert sorted(r.status_code for r in answers) == [200] * (CLIENTS - 1) + [201]
    assert len({r.json()["id"] for r in answers}) == 1


def _status(outcome: str) -> str:
    return {"approve": "approved", "reject": "rejected", "correct": "corrected"}[outcome]


def _check_outcomes(loop: _Loop, expected: dict[int, tuple[str, Any, str]]) -> None:
    """Each decision in ``expected`` (id -> outcome, corrected output, reviewer) got exactly one
    callback, signed, with that outcome; no other decision got one; GET agrees with the callback."""
    assert not loop.receiver.refused
    ids = [wid for wid, _ in loop.receiver.seen]
    assert len(ids) == len(set(ids)), "a webhook-id was delivered twice"
    got = loop.receiver.by_decision()
    assert set(got) == set(expected), (sorted(set(got) - set(expected))[:5], sorted(set(expected) - set(got))[:5])
    for decision_id, (outcome, corrected, reviewer) in expected.items():
        (payload,) = got[decision_id]
        data = payload["data"]
        assert payload["type"] == "decision.reviewed"
        assert (data["outcome"], data["corrected"], data["reviewer"]) == (outcome, corrected, reviewer), decision_id
        view = loop.get(decision_id)
        assert view["status"] == _status(outcome) and view["outcome"] == outcome
        assert view["reviewer"] == reviewer and view["comment"] == data["comment"]
        assert view["corrected"] == (corrected if outcome == "correct" else None)
        assert view["decision"] == data["decision"]
        assert view["queue_position"] is None and view["decided_at"] is not None
        row = loop.store.online.callback(decision_id)
        assert (row.status, row.attempts, row.webhook_id) == ("delivered", 1, next(
            wid for wid, p in loop.receiver.seen if p["data"]["id"] == decision_id))


def _check_fallbacks(loop: _Loop, late: list[int], counts: dict[str, Any]) -> None:
    """Past their deadline: rejected once, by ``timeout``, their tasks gone from the tool."""
    assert counts["deadlines"] == {"reject": len(late)}
    for decision_id in late:
        view = loop.get(decision_id)
        assert (view["status"], view["outcome"], view["reviewer"]) == ("rejected", "reject", "timeout")
        item_id = loop.store.online.get(decision_id).item_id
        events = [e.kind for e in loop.store.history.for_item(item_id)]
        assert events.count("decision_fallback") == 1 and "decision_reviewed" not in events
    assert loop.in_tool(late) == set()


def _settle_again(loop: _Loop) -> None:
    """Further rounds change nothing: no outcome twice, no second callback, no task back in the tool."""
    before = len(loop.receiver.seen)
    outcomes, decided = loop.cycle()
    assert outcomes == {"outcomes": {}, "deadlines": {}}
    assert decided["callbacks"] == {"delivered": 0, "retry": 0, "failed": 0}
    assert len(loop.receiver.seen) == before


def _wait_past(posted_at: float, deadline_s: float = 1.0) -> None:
    """Until the deadline of decisions posted at ``posted_at`` (``time.monotonic``) has passed."""
    time.sleep(max(0.0, posted_at + deadline_s + 0.2 - time.monotonic()))


# -- label: another model's labels, reviewed in Label Studio --------------------------------------

LABELS = ["approve_claim", "deny_claim"]


def test_label_decisions_reviewed_in_label_studio(tmp_path, label_studio):
    from connector.tools.label_studio import LabelStudioTool

    spec = TaskSpec(name=f"decisions label {uuid.uuid4().hex[:8]}", labels=LABELS,
                    label_studio={"url": label_studio.url}, thresholds={"adapt": True},
                    decisions={"risk_weights": {"amount": 0.0001}})
    tool = LabelStudioTool(label_studio.url, label_studio.token)
    with _loop(tmp_path, spec, tool) as loop:
        bodies = [{"idempotency_key": f"claim-{i}",
                   "input": {"text": f"Claim {i}: water damage in the kitchen, policy P-{1000 + i}.",
                             "amount": 100 * (i % 37), "category": ["home", "car"][i % 2]},
                   "output": {"label": LABELS[i % 2], "confidence": round(0.5 + 0.49 * (i % 50) / 50, 3),
                              "model": "claims-llm"},
                   "callback_url": loop.receiver.url,
                   **({"deadline_s": 1.0} if i % 50 == 49 else {})} for i in range(N)]
        posted_at = time.monotonic()
        made = _created(loop.post("/v1/decisions", bodies))
        # nothing certified yet: every decision waits for a person, evidence for the caller's model
        assert {(d["status"], d["reason"]) for d in made} == {("pending_review", "uncertified")}
        assert all(d["queue_position"] >= 1 and d["estimated_wait_s"] is None for d in made)
        other = {**bodies[0], "output": {**bodies[0]["output"], "label": LABELS[1]}}
        _idempotent(loop, "/v1/decisions", bodies[0], made[0], other)
        ids = [d["id"] for d in made]
        late = [ids[i] for i in range(N) if i % 50 == 49]

        loop.sync.push_pass()
        assert len(loop.remote(ids)) == N and loop.in_tool(late) == set(late)
        _wait_past(posted_at)

        # reviewers: a third of the decisions, the caller's label (approve) or the other one (correct)
        remote = loop.remote(ids)
        expected: dict[int, tuple[str, Any, str]] = {}
        for i in range(0, N, 3):
            if i % 50 == 49:
                continue
            chosen = LABELS[i % 2] if i % 4 < 2 else LABELS[(i + 1) % 2]
            loop.tool.annotate(remote[ids[i]], [loop.sync.control.result([chosen])])
            outcome = "approve" if chosen == LABELS[i % 2] else "correct"
            expected[ids[i]] = (outcome, {"label": chosen} if outcome == "correct" else None, LS_REVIEWER)

        outcomes, decided = loop.cycle()
        assert outcomes["outcomes"] == dict(Counter(o for o, _, _ in expected.values()))
        _check_fallbacks(loop, late, outcomes)
        assert decided["callbacks"]["delivered"] == len(expected) + len(late)
        _check_outcomes(loop, expected | {i: ("reject", None, "timeout") for i in late})
        _settle_again(loop)
        assert loop.in_tool(late) == set()

        waiting = [i for i in ids if i not in expected and i not in late]
        positions = sorted(loop.get(i)["queue_position"] for i in waiting[:20])
        assert all(loop.get(i)["status"] == "pending_review" for i in waiting[:20])
        assert positions == sorted(set(positions)) and loop.get(waiting[0])["estimated_wait_s"] is not None
        # human outcomes are the caller's evidence: approvals, unbiased (reviewed whatever the score)
        raw, approved = loop.store.online.evidence("caller:claims-llm")
        assert len(raw) == len(expected) and int(approved.sum()) == sum(o == "approve" for o, _, _ in expected.values())


# -- extraction: an LLM's JSON against the task's schema ------------------------------------------

def _invoice(i: int) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Input, structured output and why it goes to review: a third fail the schema (the total as
    text), a third have a field the model was unsure of, a third are fine (nothing certified)."""
    data = {"vendor": f"Vendor {i}", "total": round(10 + i * 1.25, 2), "due": f"2026-{1 + i % 12:02d}-15"}
    output: dict[str, Any] = {"data": data, "model": "invoice-llm"}
    if i % 3 == 0:
        data["total"] = f"{data['total']} EUR"
        why = "schema_invalid"
    elif i % 3 == 1:
        output["field_confidence"] = {"vendor": 0.99, "total": 0.41}
        why = "low_field_confidence"
    else:
        output["field_confidence"] = {"vendor": 0.99, "total": 0.97}
        why = "uncertified"
    return {"text": f"Invoice {i} from Vendor {i}, due the 15th."}, output, why


def _extraction_spec(tool_name: str, url: str) -> TaskSpec:
    section = {"label_studio": {"url": url}} if tool_name == "label_studio" else {"argilla": {"url": url}}
    return TaskSpec(name=f"decisions extraction {uuid.uuid4().hex[:8]}", kind="extraction", tool=tool_name,
                    extraction={"json_schema": SCHEMA, "min_field_confidence": 0.8}, thresholds={"adapt": True},
                    **section)


@dataclass
class _Reviewer:
    """How a reviewer answers one decision's item in a tool: ``answer(remote id, outcome, fields)``
    (``fields``: editable texts by name, e.g. ``field_total``), ``amend`` a refused answer with
    another one, and ``returned(remote id)``: whether the tool asks for another answer now."""

    name: str
    answer: Callable[[str, str, dict[str, str]], Any]
    amend: Callable[[str, Any, str, dict[str, str]], Any]
    returned: Callable[[str], bool]


def _ls_result(spec: TaskSpec, outcome: str, fields: dict[str, str], to_name: str,
               extra: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return [{"from_name": "outcome", "to_name": spec.text_field, "type": "choices", "value": {"choices": [outcome]}},
            *({"from_name": name, "to_name": to_name, "type": "textarea", "value": {"text": [text]}}
              for name, text in fields.items()), *(extra or [])]


def _ls_reviewer(loop: _Loop, to_name: str) -> _Reviewer:
    tool = loop.tool

    def answer(task: str, outcome: str, fields: dict[str, str]) -> int:
        return tool.annotate(task, _ls_result(loop.spec, outcome, fields, to_name))

    def amend(task: str, _first: Any, outcome: str, fields: dict[str, str]) -> int:
        return tool.annotate(task, _ls_result(loop.spec, outcome, fields, to_name))  # the second annotation asked for

    def returned(task: str) -> bool:
        t = tool._ls.tasks.get(id=int(task))
        return bool(t.overlap == 2 and not t.is_labeled)

    return _Reviewer(LS_REVIEWER, answer, amend, returned)


def _argilla_reviewer(loop: _Loop) -> _Reviewer:
    client = loop.tool._rg.http_client
    me = str(loop.tool._rg.me.id)

    def values(outcome: str, fields: dict[str, str]) -> dict[str, Any]:
        return {"outcome": {"value": outcome}, **{name: {"value": text} for name, text in fields.items()}}

    def answer(record: str, outcome: str, fields: dict[str, str]) -> str:
        r = client.post(f"/api/v1/records/{record}/responses",
                        json={"values": values(outcome, fields), "status": "submitted", "user_id": me})
        r.raise_for_status()
        return str(r.json()["id"])

    def amend(record: str, response_id: Any, outcome: str, fields: dict[str, str]) -> str:
        gone = client.get(f"/api/v1/records/{record}").json().get("responses") or []
        assert str(response_id) not in {str(g["id"]) for g in gone}  # the refused response was taken back
        return answer(record, outcome, fields)  # the reviewer answers the reopened record anew

    def returned(record: str) -> bool:
        r = client.get(f"/api/v1/records/{record}")
        r.raise_for_status()
        return r.json().get("status") != "completed"

    return _Reviewer(ARGILLA_REVIEWER, answer, amend, returned)


def _extraction_loop(loop: _Loop, reviewer_of: Callable[[_Loop], _Reviewer], n: int) -> dict[str, Any]:
    """``n`` extraction decisions through the loop; what the refusal looked like in the tool."""
    asked = [_invoice(i) for i in range(n)]
    bodies = [{"idempotency_key": f"invoice-{i}", "input": inputs, "output": output, "callback_url": loop.receiver.url,
               **({"deadline_s": 1.0} if i % 50 == 47 else {})} for i, (inputs, output, _) in enumerate(asked)]
    posted_at = time.monotonic()
    made = _created(loop.post("/v1/decisions", bodies))
    assert [(d["status"], d["reason"]) for d in made] == [("pending_review", why) for _, _, why in asked]
    invalid = loop.store.online.get(made[0]["id"])
    assert invalid.rule == "schema" and invalid.review["errors"] == ["at $.total: '10.0 EUR' is not of type 'number'"]
    other = {**bodies[1], "output": {**bodies[1]["output"], "data": {"vendor": "someone else", "total": 1}}}
    _idempotent(loop, "/v1/decisions", bodies[1], made[1], other)
    ids = [d["id"] for d in made]
    late = [ids[i] for i in range(n) if i % 50 == 47]

    loop.sync.push_pass()
    assert len(loop.remote(ids)) == n and loop.in_tool(late) == set(late)
    _wait_past(posted_at)
    reviewer = reviewer_of(loop)
    remote = loop.remote(ids)

    expected: dict[int, tuple[str, Any, str]] = {}
    refused: dict[int, tuple[int, Any]] = {}  # decision id -> (its index, the first answer)
    for i in range(n):
        if i % 50 == 47 or i % 2:
            continue
        data = asked[i][1]["data"]
        if i % 10 in (0, 6) and len(refused) < 3:  # a correction that breaks the schema (the total in words)
            refused[ids[i]] = (i, reviewer.answer(remote[ids[i]], "correct", {"field_total": "twelve"}))
        elif i % 3 == 0 or i % 10 == 4:  # the total as a number, the vendor's name fixed
            fixed = {**data, "vendor": f"Vendor {i} GmbH", "total": round(10 + i * 1.25, 2)}
            reviewer.answer(remote[ids[i]], "correct", {"field_vendor": fixed["vendor"],
                                                        "field_total": str(fixed["total"])})
            expected[ids[i]] = ("correct", fixed, reviewer.name)
        elif i % 10 == 2:
            reviewer.answer(remote[ids[i]], "reject", {})
            expected[ids[i]] = ("reject", None, reviewer.name)
        else:
            reviewer.answer(remote[ids[i]], "approve", {})
            expected[ids[i]] = ("approve", None, reviewer.name)
    assert len(refused) == 3 and {o for o, _, _ in expected.values()} == {"approve", "reject", "correct"}

    outcomes, decided = loop.cycle()
    assert outcomes["outcomes"] == dict(Counter(o for o, _, _ in expected.values())) | {"refused": 3}
    _check_fallbacks(loop, late, outcomes)
    assert decided["callbacks"]["delivered"] == len(expected) + len(late)
    # refused: still waiting, the validation error on record once, the item asked for another answer
    back: dict[int, bool] = {}
    for decision_id in refused:
        view = loop.get(decision_id)
        assert view["status"] == "pending_review" and view["outcome"] is None
        events = [e for e in loop.store.history.for_item(loop.store.online.get(decision_id).item_id)
                  if e.kind == "correction_refused"]
        assert [e.detail["errors"] for e in events] == [["at $.total: 'twelve' is not of type 'number'"]]
        back[decision_id] = reviewer.returned(remote[decision_id])
    _check_outcomes(loop, expected | {i: ("reject", None, "timeout") for i in late})
    _settle_again(loop)  # the same refused answer is not refused (nor sent back) twice
    for decision_id in refused:
        assert [e.kind for e in loop.store.history.for_item(loop.store.online.get(decision_id).item_id)
                ].count("correction_refused") == 1

    # a valid correction of each refused one settles it
    for decision_id, (i, first) in refused.items():
        fixed = {**asked[i][1]["data"], "total": 12}
        reviewer.amend(remote[decision_id], first, "correct", {"field_total": "12"})
        expected[decision_id] = ("correct", fixed, reviewer.name)
    outcomes, decided = loop.cycle()
    assert outcomes["outcomes"] == {"correct": 3} and decided["callbacks"]["delivered"] == 3
    _check_outcomes(loop, expected | {i: ("reject", None, "timeout") for i in late})
    _settle_again(loop)
    assert loop.in_tool(late) == set()
    return {"returned": back}


def test_extraction_decisions_reviewed_in_argilla(tmp_path, argilla):
    from connector.tools.argilla import ArgillaTool

    spec = _extraction_spec("argilla", argilla.url)
    with _loop(tmp_path, spec, ArgillaTool(argilla.url, argilla.api_key)) as loop:
        seen = _extraction_loop(loop, _argilla_reviewer, N)
    # Argilla 2.8 has no per-record overlap: the refused response is deleted in the tool (kept in our
    # store and on the item's history), so the record is pending again, back in the queue
    assert set(seen["returned"].values()) == {True}


def test_extraction_decisions_reviewed_in_label_studio(tmp_path, label_studio):
    from connector.tools.label_studio import LabelStudioTool

    spec = _extraction_spec("label_studio", label_studio.url)
    with _loop(tmp_path, spec, LabelStudioTool(label_studio.url, label_studio.token)) as loop:
        seen = _extraction_loop(loop, lambda lp: _ls_reviewer(lp, "output"), 60)
    # Label Studio: the refused task asks for one more annotation (overlap 2, not labelled)
    assert set(seen["returned"].values()) == {True}


# -- answer: generated answers with the users' feedback, reviewed in Label Studio -----------------

def test_answer_feedback_reviewed_in_label_studio(tmp_path, label_studio):
    from connector.tools.label_studio import LabelStudioTool

    spec = TaskSpec(name=f"decisions answer {uuid.uuid4().hex[:8]}", kind="answer",
                    label_studio={"url": label_studio.url}, decisions={"feedback_audit_share": 0.25})
    with _loop(tmp_path, spec, LabelStudioTool(label_studio.url, label_studio.token)) as loop:
        bodies = [{"idempotency_key": f"chat-{i}", "question": f"When was ACME branch {i} opened?",
                   "answer": f"In {1900 + i}.", "context": [f"ACME branch {i} opened in {1901 + i}.", "It sells anvils."],
                   "thumbs": "down" if i % 5 < 3 else "up", "comment": "wrong year" if i % 5 < 3 else None,
                   "model": "rag-v2", "callback_url": loop.receiver.url} for i in range(N)]
        made = _created(loop.post("/v1/feedback", bodies))
        ids = [d["id"] for d in made]
        down = [ids[i] for i in range(N) if bodies[i]["thumbs"] == "down"]
        up = [ids[i] for i in range(N) if bodies[i]["thumbs"] == "up"]
        by_id = dict(zip(ids, made))
        assert {(by_id[i]["status"], by_id[i]["reason"]) for i in down} == {("pending_review", "thumbs_down")}
        assert {by_id[i]["status"] for i in up} == {"auto_approved"}
        audits = [i for i in up if by_id[i]["reason"] == "audit"]
        assert 5 <= len(audits) <= 35, f"{len(audits)} of {len(up)} thumbs-up answers drawn as audits (share 0.25)"
        assert {by_id[i]["reason"] for i in up} - {"audit"} == {"thumbs_up"}
        other = {**bodies[0], "thumbs": "up"}
        _idempotent(loop, "/v1/feedback", bodies[0], made[0], other)

        loop.sync.push_pass()
        remote = loop.remote(ids)
        assert set(remote) == set(down) | set(audits)  # thumbs-up answers not audited are never shown

        reviewer = _ls_reviewer(loop, "answer")
        expected: dict[int, tuple[str, Any, str]] = {}
        for n, decision_id in enumerate(down[::2]):
            i = ids.index(decision_id)
            if n % 3 == 0:
                loop.tool.annotate(remote[decision_id], _ls_result(
                    spec, "correct", {"corrected": f"In {1901 + i}."}, "answer",
                    [{"from_name": "rating", "to_name": "answer", "type": "rating", "value": {"rating": 1}},
                     {"from_name": "supported", "to_name": "context", "type": "choices",
                      "value": {"choices": ["no"]}},
                     {"from_name": "comment", "to_name": spec.text_field, "type": "textarea",
                      "value": {"text": ["the context says otherwise"]}}]))
                expected[decision_id] = ("correct", f"In {1901 + i}.", LS_REVIEWER)
            else:
                outcome = "reject" if n % 3 == 1 else "approve"
                reviewer.answer(remote[decision_id], outcome, {})
                expected[decision_id] = (outcome, None, LS_REVIEWER)
        for n, decision_id in enumerate(audits):  # audits are answered blind, like the others
            reviewer.answer(remote[decision_id], "approve" if n % 2 else "reject", {})

        outcomes, decided = loop.cycle()
        tally = Counter(o for o, _, _ in expected.values())
        tally.update("approve" if n % 2 else "reject" for n in range(len(audits)))
        assert outcomes["outcomes"] == dict(tally)
        assert decided["callbacks"]["delivered"] == len(expected)  # an audit's caller had its answer already
        _check_outcomes(loop, expected)
        for decision_id, (outcome, _, _) in expected.items():
            if outcome == "correct":
                view = loop.get(decision_id)
                assert view["comment"] == "the context says otherwise"
                assert view["review"] == {"rating": 1, "supported": "no", "comment": "the context says otherwise"}
        for n, decision_id in enumerate(audits):  # the outcome is on record, the status stays the caller's
            row = loop.store.online.get(decision_id)
            assert (row.status, row.outcome, row.reviewer) == ("auto_approved", "approve" if n % 2 else "reject",
                                                               LS_REVIEWER)
            assert loop.get(decision_id)["status"] == "auto_approved"
        _settle_again(loop)
