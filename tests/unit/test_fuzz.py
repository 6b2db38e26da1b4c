"""Schemathesis against the OpenAPI of both apps, and every documented 4xx reached by hand.

The fuzzing: for each operation, Hypothesis draws cases from Schemathesis' strategies, valid and
invalid (``GenerationMode.POSITIVE`` and ``NEGATIVE``), and each response must be no 5xx, have a
documented status and content type, match the documented response schema, and (for invalid data)
be a 4xx. 25 examples per operation run in ``make test-fast``; 250 in the ``slow`` run CI makes.

Schemathesis' pytest loaders (``schema.parametrize()``, ``from_fixture``) rename the pytest item
through ``Function._nodeid``, which pytest 9 no longer has; so each operation is one pytest case
here, driving ``operation.as_strategy`` with ``@given``, and the apps are built from the usual
fixtures (the tiny random model).

The reachability: each error status (4xx, and the 503s) an operation documents is in
:data:`REACHED`, with a request that gets it and a fragment of its message; a test checks the table
against both apps' OpenAPI, so a new documented status needs its request here.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from ml_backend.app import create_app
from ml_backend.service import ModelService
from ml_backend.settings import BackendSettings
from sync.webhooks import SECRET_HEADER, PullRequests, create_webhook_app
from tests.unit.conftest import backend_client

ARGILLA_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
LS_SECRET = "a-long-random-webhook-secret"
TOKEN = "a" * 8 + "0123456789abcdef"
CONFIG = ('<View><Text name="review" value="$snippet"/><Choices name="sentiment" toName="review">'
          '<Choice value="fresh"/><Choice value="rotten"/></Choices></View>')

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]
BACKEND_OPERATIONS = ["GET /health", "POST /setup", "POST /predict", "POST /webhook", "GET /versions",
                      "POST /v1/predict"]
WEBHOOK_OPERATIONS = ["POST /webhooks/argilla", "GET /health", "POST /webhooks/label-studio"]
EXAMPLES = [pytest.param(25, id="25-examples"), pytest.param(250, id="250-examples", marks=pytest.mark.slow)]


def _fuzz(schema: Any, label: str, examples: int) -> None:
    method, path = label.split(" ")
    operation = schema[path][method]
    cases = st.one_of([operation.as_strategy(generation_mode=mode)
                       for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)])

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def run(case: Any) -> None:
        case.call_and_validate(checks=CHECKS)

    run()


def _operations(app: Any) -> list[str]:
    spec = TestClient(app).get("/openapi.json").json()
    return [f"{method.upper()} {path}" for path, item in spec["paths"].items() for method in item]


@pytest.fixture(scope="module")
def backend_app(service):
    """Open (no credentials, as on loopback), so the fuzzer reaches past auth."""
    settings_ = BackendSettings(model_root=service.settings.model_root, reload_interval_s=0)
    return create_app(settings_, service)


@pytest.fixture(scope="module")
def webhook_app():
    """The Label Studio receiver open (its secret would turn every case into a 401), Argilla's with its
    secret (without one, every case is a 503): the fuzzer cannot sign, so Argilla's are 401s and 400s."""
    return create_webhook_app(PullRequests(), secret=None, argilla_secret=ARGILLA_SECRET, max_body_bytes=64 * 1024)


def test_every_operation_of_both_apps_is_fuzzed(backend_app, webhook_app):
    assert _operations(backend_app) == BACKEND_OPERATIONS
    assert _operations(webhook_app) == WEBHOOK_OPERATIONS


@pytest.mark.parametrize("examples", EXAMPLES)
@pytest.mark.parametrize("operation", BACKEND_OPERATIONS)
def test_the_ml_backend_answers_fuzzed_requests_as_documented_and_never_with_a_5xx(backend_app, operation, examples):
    _fuzz(schemathesis.openapi.from_asgi("/openapi.json", backend_app), operation, examples)


@pytest.mark.parametrize("examples", EXAMPLES)
@pytest.mark.parametrize("operation", WEBHOOK_OPERATIONS)
def test_the_webhook_receivers_answer_fuzzed_requests_as_documented_and_never_with_a_5xx(webhook_app, operation,
                                                                                         examples):
    _fuzz(schemathesis.openapi.from_asgi("/openapi.json", webhook_app), operation, examples)


# -- every documented error status is reachable -----------------------------------------------------------


def signed(payload: Any, secret: str = ARGILLA_SECRET, *, body: bytes | None = None) -> dict[str, Any]:
    """``TestClient.post`` keywords of an Argilla delivery signed with ``secret``."""
    from standardwebhooks.webhooks import Webhook

    body = json.dumps(payload).encode() if body is None else body
    now = datetime.now(UTC)
    return {"content": body, "headers": {
        "webhook-id": "msg_1", "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign("msg_1", now, body.decode()), "content-type": "application/json"}}


DEEP = b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
JSON = {"content-type": "application/json"}
BIG = {"json": {"texts": ["x" * 5000]}}  # over the 4096 bytes the "open" backend below allows

# (app, method, path, status) -> (request keywords, a fragment of the answer's detail)
REACHED: dict[tuple[str, str, str, int], tuple[dict[str, Any], str]] = {
    ("backend", "POST", "/setup", 400): ({"content": DEEP, "headers": JSON}, "nested too deeply"),
    ("backend", "POST", "/setup", 401): ({"json": {"schema": CONFIG}}, "missing or wrong credentials"),
    ("backend", "POST", "/setup", 413): (BIG, "HITL_MAX_REQUEST_BYTES"),
    ("backend", "POST", "/setup", 422): ({"json": {"schema": "  "}}, "labeling config is empty"),
    ("backend", "POST", "/setup", 503): ({"json": {"schema": CONFIG}}, "no model version yet"),
    ("backend", "POST", "/predict", 400): ({"content": DEEP, "headers": JSON}, "nested too deeply"),
    ("backend", "POST", "/predict", 401): ({"json": {"tasks": []}}, "missing or wrong credentials"),
    ("backend", "POST", "/predict", 413): ({"json": {"tasks": [{"data": {"snippet": "x"}}] * 3, "label_config": CONFIG}},
                                           "3 tasks; at most 2 per request"),
    ("backend", "POST", "/predict", 422): ({"json": {"tasks": [{"data": {"snippet": "x"}}]}}, "no label_config"),
    ("backend", "POST", "/predict", 503): ({"json": {"tasks": [{"data": {"snippet": "x"}}], "label_config": CONFIG}},
                                           "no model version yet"),
    ("backend", "POST", "/webhook", 400): ({"content": b"{oops", "headers": JSON}, "webhook body is not JSON"),
    ("backend", "POST", "/webhook", 401): ({"json": {"action": "START_TRAINING"}}, "missing or wrong credentials"),
    ("backend", "POST", "/webhook", 413): (BIG, "HITL_MAX_REQUEST_BYTES"),
    ("backend", "GET", "/versions", 401): ({}, "missing or wrong credentials"),
    ("backend", "POST", "/v1/predict", 400): ({"content": b'{"texts": ["\xff"]}', "headers": JSON}, "not UTF-8"),
    ("backend", "POST", "/v1/predict", 401): ({"json": {"texts": ["x"]}}, "missing or wrong credentials"),
    ("backend", "POST", "/v1/predict", 413): ({"json": {"texts": ["a", "b", "c"]}}, "HITL_MAX_TEXTS_PER_REQUEST"),
    ("backend", "POST", "/v1/predict", 422): ({"json": {"texts": []}}, "at least 1 item"),
    ("backend", "POST", "/v1/predict", 503): ({"json": {"texts": ["x"]}}, "no model version yet"),
    ("webhooks", "POST", "/webhooks/argilla", 400): (lambda: signed(["response.created"]), "must be an object with a 'type'"),
    ("webhooks", "POST", "/webhooks/argilla", 401): (lambda: signed({"type": "response.created"}, "whsec_" + "Zm9yZ2VkLXNlY3JldC1mb3JnZWQ="),
                                                     "No matching signature"),
    ("webhooks", "POST", "/webhooks/argilla", 413): (lambda: signed({"type": "response.created", "x": "y" * 5000}),
                                                     "limit of 2048 bytes"),
    ("webhooks", "POST", "/webhooks/argilla", 503): ({"json": {"type": "response.created"}},
                                                     "no Argilla webhook secret configured"),
    ("webhooks", "POST", "/webhooks/label-studio", 400): ({"json": {"action": "ANNOTATION_CREATED"},
                                                           "headers": {SECRET_HEADER: LS_SECRET}}, "no project id"),
    ("webhooks", "POST", "/webhooks/label-studio", 401): ({"json": {"action": "ANNOTATION_CREATED", "project": 1}},
                                                          "missing or wrong X-Hitl-Secret"),
    ("webhooks", "POST", "/webhooks/label-studio", 413): ({"json": {"action": "A", "project": 1, "x": "y" * 5000},
                                                           "headers": {SECRET_HEADER: LS_SECRET}}, "limit of 2048 bytes"),
}


@pytest.fixture(scope="module")
def waiting_service(tmp_path_factory):
    """A backend service on an empty model root: its model routes answer 503."""
    s = ModelService(BackendSettings(model_root=tmp_path_factory.mktemp("empty-root"), reload_interval_s=10,
                                     torch_threads=1, inference_workers=1))
    yield s
    s.close()


def _client_for(app: str, status: int, service: ModelService, waiting: ModelService, tmp_path) -> TestClient:
    if app == "webhooks":
        argilla_secret = None if status == 503 else ARGILLA_SECRET
        return TestClient(create_webhook_app(PullRequests(), secret=LS_SECRET, argilla_secret=argilla_secret,
                                             max_body_bytes=2048))
    if status == 503:
        settings_ = BackendSettings(model_root=waiting.settings.model_root, reload_interval_s=10)
        return TestClient(create_app(settings_, waiting))
    limits = {"max_request_bytes": 4096, "max_texts_per_request": 2, "max_tasks_per_request": 2} if status == 413 else {}
    auth = {"api_token": TOKEN} if status == 401 else {}
    return backend_client(service, tmp_path, **limits, **auth)


@pytest.mark.parametrize("key", list(REACHED), ids=lambda k: f"{k[0]}-{k[1]} {k[2]} {k[3]}")
def test_each_documented_error_status_is_reached_with_its_message(key, service, waiting_service, tmp_path):
    app, method, path, status = key
    kwargs, fragment = REACHED[key]
    kwargs = kwargs() if callable(kwargs) else kwargs  # signed now: a delivery older than 5 minutes is refused
    with _client_for(app, status, service, waiting_service, tmp_path) as c:
        r = c.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    assert fragment in json.dumps(r.json()["detail"]), r.text


def test_the_reached_table_is_exactly_the_documented_error_statuses(backend_app, webhook_app):
    documented = set()
    for name, app in (("backend", backend_app), ("webhooks", webhook_app)):
        for path, item in TestClient(app).get("/openapi.json").json()["paths"].items():
            for method, operation in item.items():
                documented |= {(name, method.upper(), path, int(s)) for s in operation["responses"] if int(s) >= 400}
    assert documented == set(REACHED)
