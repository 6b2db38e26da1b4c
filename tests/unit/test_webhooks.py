from fastapi.testclient import TestClient

from sync.webhooks import SECRET_HEADER, PullRequests, create_webhook_app


def _client(secret="s3cret"):
    requests = PullRequests()
    return TestClient(create_webhook_app(requests, secret=secret)), requests


def test_an_annotation_event_with_the_secret_queues_a_pull_and_wakes_the_loop():
    client, requests = _client()
    r = client.post("/webhooks/label-studio", json={"action": "ANNOTATION_CREATED", "project": {"id": 7, "token": "T"}},
                    headers={SECRET_HEADER: "s3cret"})
    assert r.status_code == 200 and r.json()["pull_queued"] is True
    assert requests.wake.is_set() and requests.take() == {"7"} and not requests.wake.is_set()


def test_other_actions_are_acknowledged_without_a_pull():
    client, requests = _client()
    r = client.post("/webhooks/label-studio", json={"action": "PROJECT_UPDATED", "project": 7},
                    headers={SECRET_HEADER: "s3cret"})
    assert r.status_code == 200 and r.json()["pull_queued"] is False and requests.take() == set()


def test_wrong_or_missing_secret_is_refused_with_401():
    client, requests = _client()
    body = {"action": "ANNOTATION_CREATED", "project": 1}
    assert client.post("/webhooks/label-studio", json=body).status_code == 401
    assert client.post("/webhooks/label-studio", json=body, headers={SECRET_HEADER: "nope"}).status_code == 401
    assert requests.take() == set()


def test_malformed_bodies_are_refused_with_400():
    client, _ = _client()
    h = {SECRET_HEADER: "s3cret"}
    assert client.post("/webhooks/label-studio", content=b"{oops", headers=h).status_code == 400
    assert client.post("/webhooks/label-studio", json=["a"], headers=h).status_code == 400
    assert client.post("/webhooks/label-studio", json={"action": "ANNOTATION_CREATED"}, headers=h).status_code == 400
    assert client.post("/webhooks/label-studio", json={"action": 5, "project": 1}, headers=h).status_code == 400


def _signed(secret, payload):
    import json
    from datetime import UTC, datetime

    from standardwebhooks.webhooks import Webhook

    body = json.dumps(payload).encode()
    ts = datetime.now(UTC)
    sig = Webhook(secret).sign("msg_1", ts, body.decode())
    return body, {"webhook-id": "msg_1", "webhook-timestamp": str(int(ts.timestamp())), "webhook-signature": sig,
                  "content-type": "application/json"}


ARGILLA_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_a_signed_argilla_response_event_queues_a_pull_of_its_dataset():
    requests = PullRequests()
    client = TestClient(create_webhook_app(requests, secret=None, argilla_secret=ARGILLA_SECRET))
    body, headers = _signed(ARGILLA_SECRET, {"type": "response.created", "timestamp": "2026-11-27T00:00:00Z",
                                             "data": {"record": {"dataset": {"name": "reviews"}}}})
    r = client.post("/webhooks/argilla", content=body, headers=headers)
    assert r.status_code == 200 and r.json()["pull_queued"] is True and requests.take() == {"reviews"}


def test_argilla_deliveries_with_a_bad_or_missing_signature_are_refused():
    requests = PullRequests()
    client = TestClient(create_webhook_app(requests, secret=None, argilla_secret=ARGILLA_SECRET))
    body, headers = _signed(ARGILLA_SECRET, {"type": "response.created", "data": {}})
    tampered = body.replace(b"response.created", b"response.deleted")
    assert client.post("/webhooks/argilla", content=tampered, headers=headers).status_code == 401
    assert client.post("/webhooks/argilla", content=body,
                       headers={"content-type": "application/json"}).status_code == 401
    assert requests.take() == set()
