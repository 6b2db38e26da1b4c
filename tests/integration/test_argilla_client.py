"""The Argilla tool against a real argilla-server: datasets, upserts, suggestions, pulls, webhooks."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
import pytest

from connector.tools.argilla import ArgillaTool, WebhookError, verify_webhook
from connector.tools.base import PushItem

pytestmark = pytest.mark.slow

LABELS = ["pos", "neg"]


@pytest.fixture(scope="module")
def client(argilla):
    return ArgillaTool(argilla.url, argilla.api_key)


def _dataset(client, name, **kwargs):
    options = {"text_field": "text", "labels": LABELS, "multi_label": False,
               "instructions": "Positive or negative?", "min_submitted": 2}
    return client.ensure_dataset(name, **{**options, **kwargs})


def _items(n, prefix="e"):
    return [PushItem(f"{prefix}{i}", {"text": f"text number {i}"},
                     [{"from_name": "label", "to_name": "text", "type": "choices",
                       "value": {"choices": [LABELS[i % 2]]}}], round(0.5 + i / (4 * n), 4), "v7")
            for i in range(n)]


def _annotator(owner, url, username, workspace):
    """A new annotator in ``workspace``, and an ``rg.Argilla`` client logged in as them."""
    import argilla as rg

    password = "annotator-password-1"
    user = rg.User(username=username, password=password, role="annotator", client=owner._rg).create()
    user.add_to_workspace(owner._rg.workspaces(workspace))
    token = httpx.post(f"{url}/api/v1/token", data={"username": username, "password": password}).json()
    me = httpx.get(f"{url}/api/v1/me", headers={"Authorization": f"Bearer {token['access_token']}"}).json()
    return user, rg.Argilla(api_url=url, api_key=me["api_key"])


def _submit(rg_client, record_id, label, user_id, status="submitted"):
    """POST a response as ``rg_client``'s user (the path that fires ``response.created``); its JSON."""
    # a discard without answers goes as {}: argilla-server 2.8.0 answers 500 to `"values": null`
    # (its search-engine mapping calls `response.values.items()`, Elasticsearch or OpenSearch alike)
    values = {"label": {"value": label}} if label is not None else {}
    resp = rg_client.http_client.post(f"/api/v1/records/{record_id}/responses",
                                      json={"values": values, "status": status, "user_id": str(user_id)})
    resp.raise_for_status()
    return resp.json()


def test_ensure_dataset_is_idempotent_by_name_and_has_the_settings(client):
    first = _dataset(client, "client-ensure", multi_label=True)
    again = _dataset(client, "client-ensure", multi_label=True)
    assert again.id == first.id
    settings = again.settings
    assert [f.name for f in settings.fields] == ["text"]
    question = settings.questions["label"]
    assert type(question).__name__ == "MultiLabelQuestion" and question.labels == LABELS
    assert list(settings.metadata) == []  # annotators see metadata: why a record was sent stays with us
    assert settings.distribution.min_submitted == 2
    assert again.workspace.name == "default"


def test_push_writes_suggestions_and_no_metadata_and_upserts_by_external_id(client):
    dataset = _dataset(client, "client-log")
    items = _items(20)
    mapping = client.push(dataset.name, items)
    assert sorted(mapping) == sorted(it.external_id for it in items) and len(set(mapping.values())) == 20
    records = {r.id: r for r in dataset.records(with_suggestions=True)}
    assert len(records) == 20
    for it in items:
        rec = records[it.external_id]
        assert str(rec._server_id) == mapping[it.external_id]
        sugg = rec.suggestions["label"]
        assert (sugg.value, sugg.score, sugg.agent) == (it.result[0]["value"]["choices"][0], it.score, "v7")
        assert not rec.metadata
        assert rec.fields["text"] == it.data["text"]

    again = client.push(dataset.name, items)  # a re-push after a crash, say
    assert again == mapping
    assert len(list(dataset.records(with_suggestions=False))) == 20
    assert client.find(dataset.name) == mapping
    assert client.find(dataset.name, ["e3", "missing"]) == {"e3": mapping["e3"]}


def test_push_splits_requests_at_500_records(client, monkeypatch):
    import connector.tools.argilla as module

    monkeypatch.setattr(module, "MAX_PER_REQUEST", 7)
    dataset = _dataset(client, "client-chunks")
    sizes = []
    upsert = client._rg.api.records.bulk_upsert
    monkeypatch.setattr(client._rg.api.records, "bulk_upsert",
                        lambda dataset_id, models: sizes.append(len(models)) or upsert(dataset_id, models))
    mapping = client.push(dataset.name, _items(16, prefix="c"))
    assert sizes == [7, 7, 2] and len(mapping) == 16


def test_submitted_responses_returns_each_answer_once_and_then_only_changes(client, argilla):
    dataset = _dataset(client, "client-pull")
    mapping = client.push(dataset.name, _items(4, prefix="p"))
    alice, alice_rg = _annotator(client, argilla.url, "alice", "default")
    bob, bob_rg = _annotator(client, argilla.url, "bob", "default")
    a0 = _submit(alice_rg, mapping["p0"], "neg", alice.id)
    _submit(bob_rg, mapping["p0"], "pos", bob.id)
    _submit(alice_rg, mapping["p1"], "pos", alice.id)
    _submit(bob_rg, mapping["p2"], None, bob.id, status="discarded")
    _submit(alice_rg, mapping["p3"], "pos", alice.id, status="draft")  # drafts are not pulled

    rows = client.submitted_responses(dataset.name)
    got = sorted((r.external_id, r.annotator, tuple(r.value), r.status) for r in rows)
    assert got == [("p0", "alice", ("neg",), "submitted"), ("p0", "bob", ("pos",), "submitted"),
                   ("p1", "alice", ("pos",), "submitted"), ("p2", "bob", (), "skipped")]
    assert len({r.remote_id for r in rows}) == 4 and a0["id"] in {r.remote_id for r in rows}
    assert all(datetime.fromisoformat(r.updated_at).tzinfo == UTC for r in rows)
    assert {r.item_remote_id for r in rows if r.external_id == "p0"} == {mapping["p0"]}

    known = {(r.external_id, r.annotator_id): r.updated_at for r in rows}
    assert client.submitted_responses(dataset.name, known) == []
    time.sleep(1.1)
    edited = alice_rg.http_client.put(f"/api/v1/responses/{a0['id']}",
                                      json={"values": {"label": {"value": "pos"}}, "status": "submitted"})
    edited.raise_for_status()
    (row,) = client.submitted_responses(dataset.name, known)
    before = known[("p0", str(alice.id))]
    assert (row.remote_id, row.external_id, row.annotator, row.value) == (a0["id"], "p0", "alice", ["pos"])
    assert datetime.fromisoformat(row.updated_at) > datetime.fromisoformat(before)

    # two submitted responses meet min_submitted=2: the record is completed, the others are not
    status = {r.id: r.status for r in dataset.records(with_suggestions=False, with_responses=False)}
    assert status["p0"] == "completed" and status["p1"] == "pending"


def test_deleted_responses_and_suggestions_leave_the_search_index(client, argilla):
    """The two deletions the stack's launcher rewrites for the emulator (no scripted updates there)."""
    import argilla as rg

    dataset = _dataset(client, "client-delete")
    mapping = client.push(dataset.name, _items(2, prefix="d"))
    dave, dave_rg = _annotator(client, argilla.url, "dave", "default")
    sent = _submit(dave_rg, mapping["d0"], "pos", dave.id)
    assert [r.remote_id for r in client.submitted_responses(dataset.name)] == [sent["id"]]
    dave_rg.http_client.delete(f"/api/v1/responses/{sent['id']}").raise_for_status()
    assert client.submitted_responses(dataset.name) == []

    def suggested(label):
        query = rg.Query(filter=rg.Filter([("label", "==", label)]))
        return sorted(r.id for r in dataset.records(query=query, with_responses=False))

    assert suggested("pos") == ["d0"]
    (record,) = dataset.records(query=rg.Query(filter=rg.Filter([("id", "==", "d0")])))
    client._rg.http_client.delete(f"/api/v1/suggestions/{record.suggestions['label'].id}").raise_for_status()
    assert suggested("pos") == [] and suggested("neg") == ["d1"]


def test_pull_returns_every_answer_and_delete_removes_records(client, argilla):
    dataset = _dataset(client, "client-pull-all")
    mapping = client.push(dataset.name, _items(3, prefix="q"))
    erin, erin_rg = _annotator(client, argilla.url, "erin", "default")
    sent = _submit(erin_rg, mapping["q0"], "pos", erin.id)
    pulled = client.pull(dataset.name, {})
    assert pulled.items is None and pulled.cursor == {}  # every answer: the store marks the rest deleted
    assert [(a.remote_id, a.item_remote_id, a.annotator) for a in pulled.answers] == [(sent["id"], mapping["q0"], "erin")]
    assert client.delete(dataset.name, [mapping["q0"], mapping["q1"]]) == 2
    assert client.find(dataset.name) == {"q2": mapping["q2"]}
    assert client.pull(dataset.name, {}).answers == []


def test_verify_webhook_accepts_a_signed_body_and_rejects_tampering_and_missing_headers():
    from standardwebhooks import Webhook

    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"type":"response.created","data":{"id":"r1"}}'
    now = datetime.now(UTC)
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(secret).sign("msg_1", now, body.decode())}
    assert verify_webhook(secret, headers, body) == {"type": "response.created", "data": {"id": "r1"}}
    assert verify_webhook(secret, {k.title(): v for k, v in headers.items()}, body)["type"] == "response.created"
    with pytest.raises(WebhookError):
        verify_webhook(secret, headers, body.replace(b"r1", b"r2"))
    with pytest.raises(WebhookError):
        verify_webhook(secret, {k: v for k, v in headers.items() if k != "webhook-signature"}, body)
    with pytest.raises(WebhookError):
        verify_webhook(secret, {**headers, "webhook-signature": "v1,garbage"}, body)


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_submitted_response_is_delivered_as_a_signed_webhook(client, argilla):
    import argilla as rg

    _Receiver.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    webhook = rg.Webhook(url=f"http://127.0.0.1:{server.server_port}/argilla", events=["response.created"],
                         _client=client._rg).create()
    try:
        dataset = _dataset(client, "client-webhook")
        mapping = client.push(dataset.name, _items(1, prefix="w"))
        carol, carol_rg = _annotator(client, argilla.url, "carol", "default")
        sent = _submit(carol_rg, mapping["w0"], "pos", carol.id)
        deadline = time.monotonic() + 20
        while not _Receiver.received and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _Receiver.received, "no webhook delivery within 20 s"
        headers, body = _Receiver.received[0]
        payload = verify_webhook(webhook.secret, headers, body)
        assert payload["type"] == "response.created"
        assert payload["data"]["id"] == sent["id"] and payload["data"]["user"]["username"] == "carol"
    finally:
        webhook.delete()
        server.shutdown()
        server.server_close()


def test_a_dataset_left_unpublished_by_a_killed_creation_is_made_again(client, argilla):
    """What `hitl sync push` SIGKILLed inside the SDK's create leaves: a draft with no search index."""
    workspace = client._rg.workspaces(client._ensure_workspace())
    draft = httpx.post(f"{argilla.url}/api/v1/datasets", headers={"X-Argilla-Api-Key": argilla.api_key},
                       json={"name": "half-made", "workspace_id": str(workspace.id)}, timeout=30)
    assert draft.status_code == 201 and draft.json()["status"] == "draft"
    dataset = client.ensure_dataset("half-made", text_field="text", labels=["a", "b"])
    assert dataset._model.status == "ready" and str(dataset.id) != draft.json()["id"]
    assert client.find(dataset.name) == {}  # the search index exists: no 500
    client.push("half-made", [PushItem("x-1", {"text": "hello"})])
    assert set(client.find(dataset.name)) == {"x-1"}


def test_a_bulk_upsert_whose_answer_is_lost_after_the_commit_is_retried_without_duplicates(client, argilla):
    from tests.support.fault_proxy import FaultProxy

    _dataset(client, "client-lost-answer")
    items = _items(5, prefix="lost")
    bulk = r"^/api/v1/datasets/[^/]+/records/bulk"
    with FaultProxy(argilla.url) as proxy:
        proxied = ArgillaTool(proxy.url, argilla.api_key)
        proxy.fail_next("PUT", bulk, "504")  # argilla-server commits the upsert; its answer never arrives
        mapping = proxied.push("client-lost-answer", items)
        assert proxy.hits[bulk] == 2  # sent again blind: safe, the upsert is keyed by our key
    dataset = client.dataset("client-lost-answer")
    records = list(dataset.records(with_suggestions=False, with_responses=False))
    assert len(records) == len(items)  # counted in Argilla, not through a dict keyed by our key
    assert client.find("client-lost-answer") == mapping
