import pytest
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


# -- closed by default, bounded ------------------------------------------------------------------


def _asgi_post(app, path, headers, body):
    """POST through the ASGI interface; returns (status, whether the app read the body)."""
    import asyncio

    read, sent = [], []

    async def receive():
        read.append(True)
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 9091)}
    asyncio.run(app(scope, receive, send))
    return next(m["status"] for m in sent if m["type"] == "http.response.start"), bool(read)


def test_a_delivery_without_its_secret_or_signature_is_refused_before_the_body_is_read():
    app = create_webhook_app(PullRequests(), secret="s3cret", argilla_secret=ARGILLA_SECRET)
    body = b'{"action": "ANNOTATION_CREATED", "project": 1}'
    assert _asgi_post(app, "/webhooks/label-studio", {"X-Hitl-Secret": "nope"}, body) == (401, False)
    assert _asgi_post(app, "/webhooks/argilla", {"content-type": "application/json"}, body) == (401, False)


def test_a_body_over_the_limit_gets_413_declared_or_streamed():
    requests = PullRequests()
    app = create_webhook_app(requests, secret="s3cret", argilla_secret=ARGILLA_SECRET, max_body_bytes=2048)
    client = TestClient(app)
    big = {"action": "ANNOTATION_CREATED", "project": 1, "task": {"data": {"text": "x" * 5000}}}
    r = client.post("/webhooks/label-studio", json=big, headers={SECRET_HEADER: "s3cret"})
    assert r.status_code == 413 and "limit of 2048 bytes" in r.json()["detail"]
    streamed = client.post("/webhooks/label-studio", content=iter([b"[" * 1500, b"]" * 1500]),
                           headers={SECRET_HEADER: "s3cret"})  # chunked: no content-length
    assert streamed.status_code == 413
    body, headers = _signed(ARGILLA_SECRET, {"type": "response.created", "data": {"x": "y" * 5000}})
    assert client.post("/webhooks/argilla", content=body, headers=headers).status_code == 413
    assert requests.take() == set()
    ok = client.post("/webhooks/label-studio", json={"action": "ANNOTATION_CREATED", "project": 1},
                     headers={SECRET_HEADER: "s3cret"})
    assert ok.status_code == 200


def test_json_nested_past_the_recursion_limit_gets_400_not_500():
    from datetime import UTC, datetime

    from standardwebhooks.webhooks import Webhook

    nested = b"[" * 100_000 + b"]" * 100_000
    client = TestClient(create_webhook_app(PullRequests(), secret="s3cret", argilla_secret=ARGILLA_SECRET),
                        raise_server_exceptions=False)
    deep = b'{"action": "ANNOTATION_CREATED", "project": 1, "x": ' + nested + b"}"
    r = client.post("/webhooks/label-studio", content=deep, headers={SECRET_HEADER: "s3cret"})
    assert r.status_code == 400 and "nested too deeply" in r.json()["detail"]
    signed_deep = b'{"type": "response.created", "x": ' + nested + b"}"
    now = datetime.now(UTC)
    headers = {"webhook-id": "msg_2", "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(ARGILLA_SECRET).sign("msg_2", now, signed_deep.decode())}
    assert client.post("/webhooks/argilla", content=signed_deep, headers=headers).status_code == 400


def test_an_empty_webhook_secret_counts_as_unset():
    from sync.settings import SyncSettings

    settings = SyncSettings(_env_file=None, webhook_secret="", argilla_webhook_secret=" ", backend_token="")
    assert settings.webhook_secret is None and settings.argilla_webhook_secret is None
    assert settings.backend_token is None


def test_the_receiver_refuses_to_bind_beyond_loopback_without_its_secret():
    from sync.runner import start_http
    from sync.settings import SyncSettings
    from sync.webhooks import check_bind

    for host in ("0.0.0.0", "::", "sync"):
        settings = SyncSettings(_env_file=None, sync_host=host, webhook_secret="")
        with pytest.raises(ValueError, match="HITL_WEBHOOK_SECRET"):
            start_http(settings, None, PullRequests())  # before binding
        check_bind(host, "a-long-random-webhook-secret")
    check_bind("127.0.0.1", None)


def test_the_public_url_is_an_http_url_and_empty_counts_as_unset():
    from pydantic import ValidationError

    from sync.settings import SyncSettings

    assert SyncSettings(_env_file=None, sync_public_url=" ").sync_public_url is None
    assert SyncSettings(_env_file=None, sync_public_url="http://sync:9091/").sync_public_url == "http://sync:9091"
    with pytest.raises(ValidationError, match="HITL_SYNC_PUBLIC_URL must be an http"):
        SyncSettings(_env_file=None, sync_public_url="sync:9091")


def test_the_label_studio_tool_gets_the_receivers_url_and_secret_from_the_settings(monkeypatch):
    from connector.task_spec import TaskSpec
    from sync.runner import build_tool
    from sync.settings import SyncSettings

    monkeypatch.setenv("HITL_LS_API_KEY", "token")
    spec = TaskSpec(name="t", labels=["a", "b"])
    settings = SyncSettings(_env_file=None, sync_public_url="https://hitl.example.com/sync/", webhook_secret="s3cret")
    tool = build_tool(spec, settings)
    assert tool.webhook_url == "https://hitl.example.com/sync/webhooks/label-studio"
    assert tool.webhook_secret == "s3cret"
    open_receiver = build_tool(spec, SyncSettings(_env_file=None, sync_public_url="http://127.0.0.1:9091"))
    assert open_receiver.webhook_url == "http://127.0.0.1:9091/webhooks/label-studio"
    assert open_receiver.webhook_secret is None
    assert build_tool(spec, SyncSettings(_env_file=None, webhook_secret="s3cret")).webhook_url is None
    assert build_tool(spec).webhook_url is None


def test_hitl_up_points_the_webhook_at_its_scheduler_with_a_kept_secret(tmp_path):
    import json

    from hitl.local.stack import StackSettings, _credentials, _scheduler_env

    old = {"username": "u", "password": "p", "token": "t", "argilla_key": "k"}  # written by an older `hitl up`
    (tmp_path / "credentials.json").write_text(json.dumps(old))
    creds = _credentials(tmp_path)
    assert len(creds.webhook_secret) >= 16 and creds.argilla_key == "k"
    assert _credentials(tmp_path).webhook_secret == creds.webhook_secret  # kept across runs
    env = _scheduler_env(StackSettings(_env_file=None, sync_port=9191), creds, tmp_path / "task.toml",
                         tmp_path / "state.db", "http://127.0.0.1:9090")
    assert env["HITL_SYNC_PUBLIC_URL"] == "http://127.0.0.1:9191" and env["HITL_SYNC_PORT"] == "9191"
    assert env["HITL_WEBHOOK_SECRET"] == creds.webhook_secret
