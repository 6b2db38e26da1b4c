import shutil
from datetime import UTC

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from connector.batching import QueueFull
from connector.store import StateStore
from sync.metrics import SyncMetricsCollector
from sync.webhooks import PullRequests, create_webhook_app
from tests.unit.conftest import backend_client

CONFIG = ('<View><Text name="review" value="$snippet"/><Choices name="sentiment" toName="review">'
          '<Choice value="fresh"/><Choice value="rotten"/></Choices></View>')


def _scrape(client) -> dict[tuple[str, tuple], float]:
    """``/metrics`` parsed: ``{(sample name, sorted label pairs): value}``."""
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def _get(samples, name, default=0.0, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), default)


# ---------------------------------------------------------------- ML backend


_client = backend_client


def _versions(samples):
    return [dict(labels)["version"] for (name, labels) in samples if name == "hitl_backend_model_info"]


def test_backend_metrics_are_open_text_with_the_served_version(service, tmp_path):
    with _client(service, tmp_path, api_token="tok") as c:
        assert c.post("/v1/predict", json={"texts": ["x"]}).status_code == 401
        samples = _scrape(c)  # no credentials, like /health
    assert _versions(samples) == [service.model_version]
    assert _get(samples, "hitl_backend_model_info", version=service.model_version) == 1
    assert _get(samples, "hitl_backend_queue_size", default=None) == 0
    assert _get(samples, "hitl_backend_requests_total", endpoint="/v1/predict", status="401") == 1
    assert _get(samples, "hitl_backend_rejected_requests_total", default=None, reason="queue_full") == 0


def test_predict_calls_are_counted_exactly(service, tmp_path):
    with _client(service, tmp_path) as c:
        before = _scrape(c)
        for i in range(3):
            assert c.post("/v1/predict", json={"texts": [f"good {i}", f"bad {i}"]}).status_code == 200
        for i in range(2):
            tasks = [{"id": k, "data": {"snippet": f"text {i} {k}"}} for k in range(4)]
            assert c.post("/predict", json={"tasks": tasks, "label_config": CONFIG}).status_code == 200
        assert c.get("/nowhere").status_code == 404
        after = _scrape(c)

    def delta(name, **labels):
        return _get(after, name, **labels) - _get(before, name, **labels)

    assert delta("hitl_backend_requests_total", endpoint="/v1/predict", status="200") == 3
    assert delta("hitl_backend_requests_total", endpoint="/predict", status="200") == 2
    assert delta("hitl_backend_requests_total", endpoint="other", status="404") == 1
    assert delta("hitl_backend_texts_predicted_total", endpoint="/v1/predict") == 6
    assert delta("hitl_backend_texts_predicted_total", endpoint="/predict") == 8
    assert delta("hitl_backend_predict_latency_seconds_count", endpoint="/v1/predict") == 3
    assert delta("hitl_backend_predict_latency_seconds_count", endpoint="/predict") == 2
    assert delta("hitl_backend_predict_latency_seconds_sum", endpoint="/predict") > 0
    assert delta("hitl_backend_predict_latency_seconds_bucket", endpoint="/predict", le="+Inf") == 2
    assert delta("hitl_backend_batch_items_total") >= 14  # service-wide: shared with other apps
    # the /metrics scrape itself is counted, /health is not timed as a prediction
    assert _get(after, "hitl_backend_requests_total", endpoint="/metrics", status="200") == 1
    assert ("hitl_backend_predict_latency_seconds_count", (("endpoint", "/metrics"),)) not in after


def test_each_app_has_its_own_registry(service, tmp_path):
    with _client(service, tmp_path) as a, _client(service, tmp_path) as b:
        assert a.post("/v1/predict", json={"texts": ["one"]}).status_code == 200
        assert _get(_scrape(a), "hitl_backend_texts_predicted_total", endpoint="/v1/predict") == 1
        assert _get(_scrape(b), "hitl_backend_texts_predicted_total", endpoint="/v1/predict") == 0


def test_queue_full_and_too_large_rejections_are_counted(service, tmp_path, monkeypatch):
    with _client(service, tmp_path, max_request_bytes=4096) as c:
        assert c.post("/v1/predict", json={"texts": ["x" * 10_000]}).status_code == 413

        def full(_items):
            raise QueueFull("prediction queue is full (1 requests waiting)")

        monkeypatch.setattr(service.batcher, "submit", full)
        r = c.post("/v1/predict", json={"texts": ["busy"]})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        monkeypatch.undo()
        samples = _scrape(c)
    assert _get(samples, "hitl_backend_rejected_requests_total", reason="queue_full") == 1
    assert _get(samples, "hitl_backend_rejected_requests_total", reason="too_large") == 1
    assert _get(samples, "hitl_backend_requests_total", endpoint="/v1/predict", status="503") == 1
    assert _get(samples, "hitl_backend_requests_total", endpoint="/v1/predict", status="413") == 1
    assert _get(samples, "hitl_backend_texts_predicted_total", endpoint="/v1/predict") == 0


@pytest.mark.slow
def test_model_info_follows_a_hot_swap(service, trained, tmp_path):
    from connector.model_store import ModelStore

    clf, _, _ = trained
    store = ModelStore(service.settings.model_root)
    before = service.model_version
    with _client(service, tmp_path) as c:
        assert _versions(_scrape(c)) == [before]
        meta = store.save(clf, promote=True)
        try:
            assert service.reload_if_changed() == meta.version
            assert _versions(_scrape(c)) == [meta.version]
        finally:
            store.promote(before)
            service.reload_if_changed()
            # the model root is shared by the session: leave it as found (test_app expects the newest served)
            shutil.rmtree(store.versions_dir / meta.version)
        assert _versions(_scrape(c)) == [before]


# ---------------------------------------------------------------- sync service


@pytest.fixture
def store(tmp_path):
    s = StateStore(f"sqlite:///{tmp_path}/db/s.db")
    s.migrate()
    yield s
    s.close()


def _sync_client(store):
    return TestClient(create_webhook_app(PullRequests(), secret="s", metrics=SyncMetricsCollector(store)))


def _fill(store):
    """a..e routed, f only ingested, g routed to review and pushed; b's latest decision is auto_accept."""
    store.items.ingest([{"id": x, "text": f"text {x}"} for x in "abcdefg"])
    ids = {it.external_id: it.id for it in store.items.list()}
    routed = "abcdeg"
    store.predictions.record([{"item_id": ids[x], "model_version": "v1", "label": "fresh", "confidence": 0.7,
                               "probabilities": {"fresh": 0.7, "rotten": 0.3}} for x in routed])
    actions = {"a": "review", "b": "review", "c": "auto_accept", "d": "auto_reject", "e": "defer", "g": "review"}
    store.decisions.record([{"item_id": ids[x], "action": a, "reason": "test", "priority": 0.5}
                            for x, a in actions.items()])
    store.decisions.record([{"item_id": ids["b"], "action": "auto_accept", "reason": "rerouted", "priority": 0.1}])
    store.items.set_state([ids["g"]], "pushed")
    store.snapshots.add("agreement", {"fleiss_kappa": 0.1, "percent_agreement": 0.2})
    store.snapshots.add("agreement", {"fleiss_kappa": 0.61, "krippendorff_alpha": None, "percent_agreement": 0.8})
    store.snapshots.add("model", {"current": "v3", "versions": ["v1", "v3"]})
    store.snapshots.add("thresholds", {"threshold": 0.92, "meets_target": True})
    ok = store.job_runs.claim("sync", "slot1", "host")
    store.job_runs.finish(ok, "ok")
    failed = store.job_runs.claim("sync", "slot2", "host")
    store.job_runs.finish(failed, "failed", error="boom")
    train = store.job_runs.claim("train", "slot1", "host")
    store.job_runs.finish(train, "failed", error="boom")


def test_sync_metrics_read_the_store(store):
    _fill(store)
    samples = _scrape(_sync_client(store))
    assert _get(samples, "hitl_store_up") == 1
    states = {dict(labels)["state"]: v for (name, labels), v in samples.items() if name == "hitl_items"}
    assert states == {"ingested": 1, "predicted": 0, "routed": 5, "pushed": 1, "annotated": 0, "consolidated": 0}
    assert _get(samples, "hitl_review_queue") == 1  # a; g is pushed, b was rerouted
    decisions = {dict(labels)["action"]: v for (name, labels), v in samples.items()
                 if name == "hitl_routing_decisions"}
    assert decisions == {"review": 2, "auto_accept": 2, "auto_reject": 1, "defer": 1}
    assert _get(samples, "hitl_review_rate") == pytest.approx(2 / 6)
    assert _get(samples, "hitl_automation_rate") == pytest.approx(3 / 6)
    assert _get(samples, "hitl_fleiss_kappa") == pytest.approx(0.61)
    assert _get(samples, "hitl_percent_agreement") == pytest.approx(0.8)
    assert ("hitl_krippendorff_alpha", ()) not in samples
    assert _get(samples, "hitl_model_info", version="v3") == 1
    assert _get(samples, "hitl_accept_threshold") == pytest.approx(0.92)
    assert [_get(samples, "hitl_auto_accept", state=st) for st in ("certified", "off", "uncertified")] == [1, 0, 0]
    assert _get(samples, "hitl_job_runs_total", job="sync") == 2
    assert _get(samples, "hitl_job_failures_total", job="sync") == 1
    assert _get(samples, "hitl_job_runs_total", job="train") == 1
    assert _get(samples, "hitl_job_failures_total", job="train") == 1
    ok = next(r for r in store.job_runs.list("sync") if r.status == "ok")
    expected = ok.finished_at.replace(tzinfo=ok.finished_at.tzinfo or UTC).timestamp()
    assert _get(samples, "hitl_job_last_success_timestamp_seconds", job="sync") == pytest.approx(expected)
    assert ("hitl_job_last_success_timestamp_seconds", (("job", "train"),)) not in samples


def test_sync_metrics_of_an_empty_store(store):
    samples = _scrape(_sync_client(store))
    assert _get(samples, "hitl_store_up") == 1
    assert _get(samples, "hitl_review_rate", default=None) == 0
    assert _get(samples, "hitl_automation_rate", default=None) == 0
    assert _get(samples, "hitl_review_queue", default=None) == 0
    assert not any(name in ("hitl_model_info", "hitl_fleiss_kappa", "hitl_accept_threshold") for name, _ in samples)


def test_the_auto_accept_rule_in_force_is_named_certified_off_or_uncertified(store):
    from connector.task_spec import TaskSpec

    def scrape(spec=None):
        client = TestClient(create_webhook_app(PullRequests(), secret="s", metrics=SyncMetricsCollector(store, spec)))
        samples = _scrape(client)
        state = next(st for st in ("certified", "off", "uncertified") if _get(samples, "hitl_auto_accept", state=st))
        return state, _get(samples, "hitl_accept_threshold", default=None)

    assert scrape() == ("off", None)  # no review yet: nothing is accepted
    store.snapshots.add("thresholds", {"threshold": 0.9, "meets_target": False})
    assert scrape() == ("off", None)  # a review that certified nothing
    store.snapshots.add("thresholds", {"threshold": 0.9, "meets_target": True})
    assert scrape() == ("certified", pytest.approx(0.9))
    fixed = TaskSpec(name="t", labels=["a", "b"], routing={"accept_threshold": 0.97}, thresholds={"adapt": False})
    assert scrape(fixed) == ("uncertified", pytest.approx(0.97))  # a fixed threshold, called what it is


def test_a_scrape_answers_while_the_database_is_unreachable(store, tmp_path, caplog):
    _fill(store)
    client = _sync_client(store)
    assert _get(_scrape(client), "hitl_store_up") == 1
    store.close()
    shutil.rmtree(tmp_path / "db")  # its folder gone: SQLite cannot open or create the file
    samples = _scrape(client)
    assert samples == {("hitl_store_up", ()): 0}
    assert "state store did not answer" in caplog.text


def test_the_webhook_app_serves_an_empty_exposition_without_a_collector():
    client = TestClient(create_webhook_app(PullRequests(), secret=None))
    assert _scrape(client) == {}


def test_the_checks_reading_is_served_per_kind_version_and_label(store):
    store.snapshots.add("checks", {"rows": [
        {"kind": "spot_check", "model_version": "v2", "label": "*", "n": 40, "correct": 30, "accuracy": 0.75,
         "lower": 0.59, "upper": 0.87}], "model_version": "v2", "paused": True, "paused_threshold": 0.9})
    samples = _scrape(_sync_client(store))
    key = {"kind": "spot_check", "model_version": "v2", "label": "*"}
    assert _get(samples, "hitl_check_items", **key) == 40
    assert _get(samples, "hitl_check_accuracy", **key) == pytest.approx(0.75)
    assert _get(samples, "hitl_check_accuracy_lower", **key) == pytest.approx(0.59)
    assert _get(samples, "hitl_auto_accept_paused") == 1
    assert _get(samples, "hitl_auto_accept", state="off") == 1


def test_the_stopping_rule_is_served_once_a_retraining_predicted_the_stop_set(store):
    from connector.snapshots import write_snapshot
    from connector.stopping import StoppingPolicy, advance

    samples = _scrape(_sync_client(store))
    assert not any(name.startswith("hitl_stopping") for name, _ in samples)  # before any: left out
    policy, members = StoppingPolicy(kappa=0.99, window=2), [(f"e{i}", "h") for i in range(200)]
    first = advance(None, candidate="v1", members=members, predictions=[0] * 100 + [1] * 100, labels=["a", "b"],
                    policy=policy)
    write_snapshot(store, first)
    samples = _scrape(_sync_client(store))
    assert ("hitl_stopping_kappa", ()) not in samples and _get(samples, "hitl_stopping_fired", default=None) == 0
    snap = first
    for _ in range(2):
        snap = advance(snap, candidate="v2", members=members, predictions=[0] * 102 + [1] * 98, labels=["a", "b"],
                       policy=policy)
        write_snapshot(store, snap)
        samples = _scrape(_sync_client(store))
        assert _get(samples, "hitl_stopping_kappa") == pytest.approx(snap.kappa)
    assert snap.kappas == pytest.approx([0.98, 1.0]) and _get(samples, "hitl_stopping_fired") == 0  # one in a row at 0.99
    write_snapshot(store, advance(snap, candidate="v3", members=members, predictions=[0] * 102 + [1] * 98,
                                  labels=["a", "b"], policy=policy))
    assert _get(_scrape(_sync_client(store)), "hitl_stopping_fired") == 1
