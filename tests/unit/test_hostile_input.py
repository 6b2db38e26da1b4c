"""Hand-written hostile requests to both apps, each answered with its status and a message saying why:
JSON nested past the recursion limit, 32 MiB of tiny texts, bytes that are not UTF-8, labeling
configs with entity tricks, a replayed Label Studio webhook, a forged Argilla signature; and the
regressions of what fuzzing found."""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.labeling_config import LabelingConfigError, parse_labeling_config
from sync.webhooks import SECRET_HEADER, PullRequests, create_webhook_app
from tests.unit.conftest import backend_client
from tests.unit.test_fuzz import ARGILLA_SECRET, CONFIG, LS_SECRET, TOKEN, signed

NESTED = b"[" * 100_000 + b"]" * 100_000
JSON = {"content-type": "application/json"}


@pytest.fixture
def backend(service, tmp_path):
    with backend_client(service, tmp_path) as c:
        yield c


@pytest.fixture
def receiver():
    requests = PullRequests()
    return TestClient(create_webhook_app(requests, secret=LS_SECRET, argilla_secret=ARGILLA_SECRET)), requests


# -- JSON nested past the recursion limit --------------------------------------------------------


@pytest.mark.parametrize("path", ["/setup", "/predict", "/v1/predict", "/webhook"])
def test_the_backend_answers_json_nested_past_the_recursion_limit_with_400_and_why(backend, path):
    r = backend.post(path, content=b'{"action": "START_TRAINING", "texts": ' + NESTED + b"}", headers=JSON)
    assert r.status_code == 400 and "nested too deeply" in r.json()["detail"]


def test_the_receivers_answer_json_nested_past_the_recursion_limit_with_400_and_why(receiver):
    client, requests = receiver
    r = client.post("/webhooks/label-studio", content=b'{"action": "A", "project": 1, "x": ' + NESTED + b"}",
                    headers={SECRET_HEADER: LS_SECRET})
    assert r.status_code == 400 and "nested too deeply" in r.json()["detail"]
    r = client.post("/webhooks/argilla", **signed(None, body=b'{"type": "response.created", "x": ' + NESTED + b"}"))
    assert r.status_code == 400 and "nested too deeply" in r.json()["detail"]
    assert requests.take() == set()


def _deepest_accepted(client: TestClient, body: str) -> tuple[int, int]:
    """The status of ``body % nesting`` at the deepest nesting the JSON parser still takes."""
    for depth in range(1100, 0, -1):
        r = client.post("/webhook", content=body.replace("NEST", "[" * depth + "]" * depth), headers=JSON)
        if r.status_code != 400:
            return depth, r.status_code
    raise AssertionError("no nesting accepted")


def test_ids_nested_just_under_the_parser_limit_get_an_answer_not_a_500(backend):
    # found by hand after the fuzzing: a former spool wrote the id back, json.dumps overflowed the stack
    depth, status = _deepest_accepted(backend, '{"action": "ANNOTATION_CREATED", "task": {"id": NEST}, "project": NEST}')
    assert status == 200, depth


def test_a_label_studio_project_that_is_no_id_gets_400_not_a_stringified_structure(receiver):
    client, requests = receiver
    for project in ([[[1]]], {"id": {"x": 1}}, True, "", None):
        r = client.post("/webhooks/label-studio", json={"action": "ANNOTATION_CREATED", "project": project},
                        headers={SECRET_HEADER: LS_SECRET})
        assert r.status_code == 400 and "no project id" in r.json()["detail"], project
    assert requests.take() == set()


# -- size limits ----------------------------------------------------------------------------------


def test_32_mib_of_tiny_texts_gets_413_naming_hitl_max_request_bytes(backend):
    n = 32 * 1024 * 1024 // len('"a", ') + 1024
    body = b'{"texts": [' + b'"a", ' * n + b'"a"]}'
    assert len(body) > 32 * 1024 * 1024
    started = time.monotonic()
    r = backend.post("/v1/predict", content=body, headers=JSON)
    assert r.status_code == 413
    assert r.json()["detail"] == "request body over the limit of 33554432 bytes (HITL_MAX_REQUEST_BYTES)"
    assert time.monotonic() - started < 5  # refused on the declared length, not parsed


def test_more_texts_than_allowed_get_413_naming_hitl_max_texts_per_request(backend):
    r = backend.post("/v1/predict", json={"texts": ["a"] * 1001})
    assert r.status_code == 413
    assert r.json()["detail"].startswith("1001 texts; at most 1000 per request (HITL_MAX_TEXTS_PER_REQUEST)")


# -- bytes that are not UTF-8 ---------------------------------------------------------------------

NOT_UTF8 = b'{"action": "START_TRAINING", "texts": ["caf\xe9"], "schema": "\xff\xfe"}'


@pytest.mark.parametrize("path, message", [("/setup", "request body is not UTF-8"),
                                           ("/predict", "request body is not UTF-8"),
                                           ("/v1/predict", "request body is not UTF-8"),
                                           ("/webhook", "webhook body is not JSON ('utf-8' codec")])
def test_the_backend_answers_a_body_that_is_not_utf8_with_400_and_why(backend, path, message):
    r = backend.post(path, content=NOT_UTF8, headers=JSON)
    assert r.status_code == 400 and r.json()["detail"].startswith(message)


def test_the_receivers_answer_a_body_that_is_not_utf8_with_400_or_401(receiver):
    client, _ = receiver
    r = client.post("/webhooks/label-studio", content=NOT_UTF8, headers={SECRET_HEADER: LS_SECRET})
    assert r.status_code == 400 and "body is not JSON ('utf-8' codec" in r.json()["detail"]
    delivery = signed(None, body=b"{}")
    r = client.post("/webhooks/argilla", content=NOT_UTF8, headers=delivery["headers"])  # no signature can match
    assert r.status_code == 401 and "webhook rejected" in r.json()["detail"]


def test_lone_surrogates_in_texts_are_predicted_and_in_a_config_get_422(backend):
    # found while probing the parser: "\ud800" in the labeling config reached the XML parser as a str it cannot encode: 500
    r = backend.post("/setup", content=b'{"schema": "<View>\\ud800</View>"}', headers=JSON)
    assert r.status_code == 422 and "labeling config is not valid XML: surrogates not allowed" in r.json()["detail"]
    r = backend.post("/v1/predict", content=b'{"texts": ["\\ud800", ""]}', headers=JSON)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2


# -- labeling configs with entity tricks ----------------------------------------------------------

BODY = CONFIG.replace('<Choice value="rotten"/>', '<Choice value="&e;"/>')
BILLION_LAUGHS = ('<!DOCTYPE View [<!ENTITY e0 "lol">'
                  + "".join(f'<!ENTITY e{i} "{f"&e{i - 1};" * 10}">' for i in range(1, 10))
                  + '<!ENTITY e "&e9;">]>' + BODY)
ENTITY_TRICKS = {
    "billion laughs": BILLION_LAUGHS,
    "quadratic blowup": '<!DOCTYPE View [<!ENTITY a "' + "x" * 50_000 + '"><!ENTITY e "' + "&a;" * 200 + '">]>' + BODY,
    "external entity": '<!DOCTYPE View [<!ENTITY e SYSTEM "file:///etc/passwd">]>' + BODY,
    "external parameter entity": '<!DOCTYPE View [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x.dtd"> %p;]>' + CONFIG,
    "external DTD": '<!DOCTYPE View SYSTEM "http://127.0.0.1:9/x.dtd">' + CONFIG,
    "a harmless internal entity": '<!DOCTYPE View [<!ENTITY e "rotten">]>' + BODY,
}


@pytest.mark.parametrize("trick", list(ENTITY_TRICKS))
def test_a_labeling_config_with_a_dtd_is_refused_before_any_entity_is_read(backend, trick):
    started = time.monotonic()
    r = backend.post("/setup", json={"schema": ENTITY_TRICKS[trick]})
    assert r.status_code == 422
    assert r.json()["detail"] == ("labeling config declares a DTD (<!DOCTYPE View>); Label Studio configs have "
                                  "none, and entity declarations are refused")
    assert time.monotonic() - started < 2
    with pytest.raises(LabelingConfigError, match="declares a DTD"):
        parse_labeling_config(ENTITY_TRICKS[trick])


def test_character_references_and_the_predefined_entities_still_parse():
    (control,) = parse_labeling_config(CONFIG.replace('value="fresh"', 'value="&#102;resh &amp; &lt;new&gt;"'))
    assert control.labels == ("fresh & <new>", "rotten")


# -- webhooks: replays and forgeries --------------------------------------------------------------


def test_a_replayed_label_studio_webhook_queues_one_pull(receiver, backend, tmp_path):
    client, requests = receiver
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 7, "token": "T"}, "annotation": {"id": 3}}
    answers = [client.post("/webhooks/label-studio", json=event, headers={SECRET_HEADER: LS_SECRET}) for _ in range(3)]
    assert [(r.status_code, r.json()) for r in answers] == [(200, {"status": "ok", "pull_queued": True})] * 3
    assert requests.take() == {"7"} and requests.take() == set()
    # the ML backend's /webhook takes each delivery the same way, and ignores it
    assert [backend.post("/webhook", json=event).json()["status"] for _ in range(2)] == ["ignored", "ignored"]


def test_a_forged_argilla_signature_is_refused_with_401_and_queues_nothing(receiver):
    client, requests = receiver
    payload = {"type": "response.created", "data": {"record": {"dataset": {"name": "reviews"}}}}
    forged = signed(payload, "whsec_" + "Zm9yZ2VkLXNlY3JldC1mb3JnZWQ=")
    r = client.post("/webhooks/argilla", **forged)
    assert r.status_code == 401 and r.json()["detail"] == "webhook rejected: No matching signature found"
    good = signed(payload)
    tampered = dict(good, content=good["content"].replace(b"reviews", b"secrets"))
    assert client.post("/webhooks/argilla", **tampered).status_code == 401
    stale = dict(good, headers={**good["headers"], "webhook-timestamp": str(int(time.time()) - 3600)})
    r = client.post("/webhooks/argilla", **stale)
    assert r.status_code == 401 and "too old" in r.json()["detail"]
    garbage = dict(good, headers={**good["headers"], "webhook-signature": "v1,\xe9!!, v2 x,y,z".encode("latin-1")})
    assert client.post("/webhooks/argilla", **garbage).status_code == 401
    assert requests.take() == set()
    assert client.post("/webhooks/argilla", **good).json() == {"status": "ok", "pull_queued": True}
    assert requests.take() == {"reviews"}


def test_a_signed_argilla_event_with_a_dataset_name_that_is_no_string_pulls_the_default(receiver):
    client, requests = receiver
    r = client.post("/webhooks/argilla", **signed({"type": "response.created", "data": {"dataset": {"name": [[1]]}}}))
    assert r.status_code == 200 and requests.take() == {"argilla"}


# -- auth headers ---------------------------------------------------------------------------------


def test_a_malformed_basic_header_is_no_credential(service, tmp_path, backend):
    # found by fuzzing: FastAPI's HTTPBasic answered 401 "Not authenticated" even on an open backend
    malformed = {"Authorization": "Basic !!!not-base64"}
    assert backend.post("/v1/predict", json={"texts": ["x"]}, headers=malformed).status_code == 200
    with backend_client(service, tmp_path, api_token=TOKEN) as closed:
        r = closed.post("/v1/predict", json={"texts": ["x"]}, headers=malformed)
        assert r.status_code == 401 and r.json()["detail"] == "missing or wrong credentials"
        assert r.headers["WWW-Authenticate"] == "Bearer"


# -- any text reaches the model -------------------------------------------------------------------


@settings(max_examples=15, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(texts=st.lists(st.text() | st.sampled_from(["", " ", "\x00", "🙂" * 600, "a\ud800b", "\udfff"]),
                      min_size=1, max_size=4))
def test_any_texts_with_a_valid_config_get_one_prediction_each(backend, texts):
    tasks = [{"id": i, "data": {"snippet": t}} for i, t in enumerate(texts)]
    body = json.dumps({"tasks": tasks, "label_config": CONFIG})  # ASCII: lone surrogates as \ud800 escapes
    r = backend.post("/predict", content=body, headers=JSON)
    assert r.status_code == 200 and len(r.json()["results"]) == len(texts)
    assert {res["result"][0]["value"]["choices"][0] for res in r.json()["results"]} <= {"fresh", "rotten"}
