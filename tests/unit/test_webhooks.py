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
