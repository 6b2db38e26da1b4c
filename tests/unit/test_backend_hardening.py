"""The ML backend closed by default and bounded: auth required beyond loopback, no crash on an empty
model root, a cap on texts per request, large requests split so others interleave, a bounded config
cache, deeply nested JSON refused with a 4xx."""

from __future__ import annotations

import asyncio
import shutil
import threading

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from ml_backend.app import create_app
from ml_backend.service import ModelService
from ml_backend.settings import BackendSettings
from tests.unit.conftest import backend_client

CONFIG = ('<View><Text name="review" value="$snippet"/><Choices name="sentiment" toName="review">'
          '<Choice value="fresh"/><Choice value="rotten"/></Choices></View>')
TOKEN = "a" * 8 + "0123456789abcdef"


# -- auth at start-up ---------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "ml-backend"])
def test_a_backend_bound_beyond_loopback_without_credentials_refuses_to_start(host):
    with pytest.raises(ValidationError, match="HITL_API_TOKEN or HITL_BASIC_AUTH_USER"):
        BackendSettings(host=host)
    with pytest.raises(ValidationError, match="beyond loopback"):
        BackendSettings(host=host, api_token="   ")  # an empty value is no credential
    assert BackendSettings(host=host, api_token=TOKEN).api_token.get_secret_value() == TOKEN


def test_loopback_stays_open_for_local_use():
    for host in ("127.0.0.1", "localhost", "::1"):
        settings = BackendSettings(host=host)
        assert settings.api_token is None and settings.basic_auth_user is None


@pytest.mark.parametrize("kwargs, missing", [
    ({"basic_auth_user": "label-studio"}, "HITL_BASIC_AUTH_PASSWORD"),
    ({"basic_auth_password": "s3cret-pass"}, "HITL_BASIC_AUTH_USER"),
    ({"basic_auth_user": "label-studio", "basic_auth_password": ""}, "HITL_BASIC_AUTH_PASSWORD"),
])
def test_half_configured_basic_auth_is_an_error_not_silently_open(kwargs, missing):
    with pytest.raises(ValidationError, match=f"half configured: {missing} is not set"):
        BackendSettings(**kwargs)


def test_the_environment_is_checked_the_same_way(monkeypatch):
    monkeypatch.setenv("HITL_HOST", "0.0.0.0")
    monkeypatch.setenv("HITL_API_TOKEN", "")
    with pytest.raises(ValidationError, match="HITL_HOST=0.0.0.0"):
        BackendSettings(_env_file=None)


# -- an empty model root -------------------------------------------------------------------------


def test_on_an_empty_model_root_the_backend_waits_and_serves_the_first_promoted_version(tiny_model_root, tmp_path):
    root = tmp_path / "models"
    settings = BackendSettings(model_root=root, reload_interval_s=10, torch_threads=1, inference_workers=1)
    service = ModelService(settings)  # before: FileNotFoundError, and the container restarted forever
    try:
        with TestClient(create_app(settings, service)) as c:
            health = c.get("/health")
            assert health.status_code == 200 and health.json()["status"] == "WAITING"
            assert health.json()["model_version"] is None and "hitl train" in health.json()["detail"]
            for path, body in (("/v1/predict", {"texts": ["fine"]}),
                               ("/predict", {"tasks": [{"data": {"snippet": "x"}}], "label_config": CONFIG}),
                               ("/setup", {"schema": CONFIG})):
                r = c.post(path, json=body)
                assert r.status_code == 503 and "no model version yet" in r.json()["detail"], path
                assert r.headers["Retry-After"] == "10"
            assert c.get("/versions").json() == {"versions": [], "current": None, "serving": None}
            assert "hitl_backend_model_info" in c.get("/metrics").text

            shutil.copytree(tiny_model_root, root, dirs_exist_ok=True)  # a version is promoted
            assert service.reload_if_changed() == "v1"
            assert c.get("/health").json()["status"] == "UP"
            r = c.post("/v1/predict", json={"texts": ["fine"]})
            assert r.status_code == 200 and r.json()["model_version"] == "v1"
    finally:
        service.close()


def test_without_polling_an_empty_model_root_is_still_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="HITL_RELOAD_INTERVAL_S=0"):
        ModelService(BackendSettings(model_root=tmp_path, reload_interval_s=0))


# -- input limits ---------------------------------------------------------------------------------


def test_v1_predict_caps_the_texts_per_request_with_a_clear_413(service, tmp_path):
    with backend_client(service, tmp_path, max_texts_per_request=3) as c:
        r = c.post("/v1/predict", json={"texts": ["a", "b", "c", "d"]})
        assert r.status_code == 413
        assert "4 texts; at most 3 per request" in r.json()["detail"]
        assert c.post("/v1/predict", json={"texts": ["a", "b", "c"]}).status_code == 200


def test_a_large_request_is_split_into_batches_so_a_small_one_interleaves(tiny_model_root):
    service = ModelService(BackendSettings(model_root=tiny_model_root, reload_interval_s=0, torch_threads=1,
                                           inference_workers=1, max_batch_size=4, max_wait_ms=1))
    batches: list[list[str]] = []
    lock = threading.Lock()

    def recording(texts):
        with lock:
            batches.append(list(texts))
        return service._run_batch(texts)

    service.batcher.set_fn(recording)

    async def both():
        return await asyncio.gather(service.predict([f"big {i}" for i in range(40)]), service.predict(["small"]))

    try:
        big, small = asyncio.run(both())
    finally:
        service.close()
    assert len(big) == 40 and len(small) == 1
    assert all(len(b) <= 4 for b in batches), [len(b) for b in batches]
    small_at = next(i for i, b in enumerate(batches) if "small" in b)
    last_big = max(i for i, b in enumerate(batches) if any(t.startswith("big") for t in b))
    assert small_at < last_big, f"the small request ran after the whole large one ({len(batches)} batches)"


def test_the_config_cache_is_keyed_by_hash_and_bounded(service):
    cache = service.configs
    for i in range(cache.maxsize + 20):
        service.setup(CONFIG.replace("<View>", f"<View><!-- {'x' * 1000} {i} -->"))
    assert len(cache) == cache.maxsize
    assert all(isinstance(k, bytes) and len(k) == 32 for k in cache.digests())  # digests, not the texts


def test_deeply_nested_json_gets_400_not_500(service, tmp_path):
    deep = b'{"action": "START_TRAINING", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with backend_client(service, tmp_path) as c:
        r = c.post("/webhook", content=deep, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "nested too deeply" in r.json()["detail"]
        r = c.post("/v1/predict", content=b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                   headers={"content-type": "application/json"})
        assert r.status_code == 400
