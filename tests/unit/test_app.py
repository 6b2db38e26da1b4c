import base64
import json

import pytest

from tests.unit.conftest import backend_client

CONFIG = ('<View><Text name="review" value="$snippet"/><Choices name="sentiment" toName="review">'
          '<Choice value="fresh"/><Choice value="rotten"/></Choices></View>')


_client = backend_client


@pytest.fixture
def client(service, tmp_path):
    with _client(service, tmp_path) as c:
        yield c


def _tasks(*texts):
    return [{"id": i + 1, "data": {"snippet": t}} for i, t in enumerate(texts)]


def test_health_reports_model_version(client, service):
    body = client.get("/health").json()
    assert body["status"] == "UP" and body["model_version"] == service.model_version


def test_setup_returns_model_version_and_reports_unknown_labels(client):
    cfg = CONFIG.replace('<Choice value="rotten"/>', '<Choice value="rotten"/><Choice value="meh"/>')
    r = client.post("/setup", json={"project": "3.1700000000", "schema": cfg, "hostname": "http://ls",
                                    "access_token": "secret"})
    assert r.status_code == 200
    body = r.json()
    assert body["model_version"] == "v1" and body["labels"] == ["fresh", "rotten"]
    assert any("'meh'" in w for w in body["warnings"])


def test_setup_refuses_a_config_with_no_known_label(client):
    cfg = CONFIG.replace("fresh", "good").replace("rotten", "bad")
    r = client.post("/setup", json={"project": "1.1", "schema": cfg})
    assert r.status_code == 422 and "none of the config's labels" in r.json()["detail"]


def test_predict_returns_one_result_per_task_in_order(client):
    texts = ["A triumph, warm and funny.", "A tedious, lifeless mess.", "Brilliant acting throughout."]
    r = client.post("/predict", json={"tasks": _tasks(*texts), "project": "1.1", "label_config": CONFIG})
    assert r.status_code == 200
    results = r.json()["results"]
    assert len(results) == 3
    one_by_one = [client.post("/predict", json={"tasks": _tasks(t), "label_config": CONFIG}).json()["results"][0]
                  for t in texts]
    for res, single in zip(results, one_by_one):
        (item,) = res["result"]
        assert (item["from_name"], item["to_name"], item["type"]) == ("sentiment", "review", "choices")
        assert item["value"]["choices"][0] in ("fresh", "rotten")
        assert 0.5 <= res["score"] <= 1.0 and res["model_version"] == "v1"
        assert res["score"] == pytest.approx(single["score"], abs=1e-5)
        assert item["value"] == single["result"][0]["value"]


def test_multiple_choice_config_returns_labels_over_threshold(client):
    cfg = CONFIG.replace('toName="review"', 'toName="review" choice="multiple"')
    r = client.post("/predict", json={"tasks": _tasks("fine"), "label_config": cfg})
    choices = r.json()["results"][0]["result"][0]["value"]["choices"]
    assert 1 <= len(choices) <= 2


def test_v1_predict_reports_probabilities_and_uncertainty(client):
    r = client.post("/v1/predict", json={"texts": ["A joy from start to finish.", "Awful."]})
    assert r.status_code == 200
    for p in r.json()["predictions"]:
        assert set(p["probabilities"]) == {"fresh", "rotten"}
        assert p["confidence"] == pytest.approx(max(p["probabilities"].values()))
        assert p["entropy"] >= 0 and 0 <= p["margin"] <= 1 and p["truncated"] is False


@pytest.mark.parametrize("body, status, fragment", [
    (None, 422, "Field required"),
    ({"tasks": [{"id": 7, "data": {"text": "x"}}], "label_config": CONFIG}, 422, "task 7: data has no field 'snippet'"),
    ({"tasks": [{"id": 8, "data": {"snippet": 42}}], "label_config": CONFIG}, 422, "must be a string, got int"),
    ({"tasks": [{"id": 9}], "label_config": CONFIG}, 422, "no 'data' object"),
    ({"tasks": _tasks("x"), "label_config": "<View><Image name='i' value='$i'/></View>"}, 422, "unsupported labeling config"),
    ({"tasks": _tasks("x")}, 422, "no label_config"),
    ({"tasks": "nope", "label_config": CONFIG}, 422, "list"),
])
def test_bad_predict_input_gets_a_clear_4xx(client, body, status, fragment):
    r = client.post("/predict", json=body) if body is not None else client.post("/predict")
    assert r.status_code == status
    assert fragment in json.dumps(r.json())


def test_a_1mb_text_is_truncated_and_the_response_says_so(client):
    huge = "what a film " * 90_000
    r = client.post("/predict", json={"tasks": _tasks(huge), "label_config": CONFIG})
    assert r.status_code == 200
    assert "cut to the model's limit" in r.json()["warnings"][0]
    assert client.post("/v1/predict", json={"texts": [huge]}).json()["predictions"][0]["truncated"] is True


def test_a_body_over_the_size_limit_gets_413(service, tmp_path):
    with _client(service, tmp_path, max_request_bytes=4096) as c:
        r = c.post("/v1/predict", json={"texts": ["x" * 10_000]})
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        assert c.post("/v1/predict", json={"texts": ["fine"]}).status_code == 200


def test_webhook_answers_200_that_it_ignores_the_event_and_keeps_nothing(client, tmp_path, monkeypatch):
    # what Label Studio sends for Start Training; an error status would put the model in its error state
    monkeypatch.chdir(tmp_path)
    payload = {"action": "START_TRAINING", "project": {"id": 5, "token": "SECRET-TOKEN"}}
    r = client.post("/webhook", json=payload)
    assert r.status_code == 200 and r.json()["status"] == "ignored"
    assert "does not train on webhooks" in r.json()["reason"] and "/webhooks/label-studio" in r.json()["reason"]
    assert list(tmp_path.rglob("*")) == []  # no spool: nothing written anywhere
    assert client.post("/webhook", content=b"{not json").status_code == 400
    assert client.post("/webhook", json=[1, 2]).status_code == 400
    assert client.post("/webhook", json={"action": 5}).status_code == 400


def test_a_former_hitl_events_path_is_tolerated(monkeypatch, tmp_path):
    from ml_backend.settings import BackendSettings

    monkeypatch.setenv("HITL_EVENTS_PATH", str(tmp_path / "events.jsonl"))
    settings = BackendSettings(_env_file=None, model_root=tmp_path)
    assert "events_path" not in settings.model_dump()


def test_versions_lists_model_versions(client):
    body = client.get("/versions").json()
    assert "v1" in body["versions"] and body["serving"] == body["current"] == body["versions"][-1]


def _basic(user, pw):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}


def test_basic_auth_and_bearer_token_when_configured(service, tmp_path):
    with _client(service, tmp_path, basic_auth_user="ls", basic_auth_password="pw", api_token="tok") as c:
        body = {"texts": ["ok"]}
        assert c.get("/health").status_code == 200  # probes stay open
        assert c.post("/v1/predict", json=body).status_code == 401
        assert c.post("/v1/predict", json=body, headers=_basic("ls", "wrong")).status_code == 401
        assert c.post("/v1/predict", json=body, headers=_basic("ls", "pw")).status_code == 200
        assert c.post("/v1/predict", json=body, headers={"Authorization": "Bearer tok"}).status_code == 200
        assert c.post("/v1/predict", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.post("/setup", json={"schema": CONFIG}).status_code == 401


def test_hot_swap_to_a_promoted_version(service, tiny_trained, tmp_path):
    from connector.model_store import ModelStore

    clf, _, _ = tiny_trained
    store = ModelStore(service.settings.model_root)
    before = service.model_version
    meta = store.save(clf, promote=True)
    try:
        assert service.reload_if_changed() == meta.version
        with _client(service, tmp_path) as c:
            assert c.post("/v1/predict", json={"texts": ["good"]}).json()["model_version"] == meta.version
    finally:
        store.promote(before)
        service.reload_if_changed()
