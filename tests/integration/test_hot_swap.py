"""A promoted version is served without a restart, and no request fails while it switches."""

from __future__ import annotations

import shutil
import threading
import time

import httpx
import pytest

from connector.classifier import TextClassifier
from connector.model_store import ModelStore

pytestmark = pytest.mark.slow


def test_promotion_under_load_switches_the_served_version_with_no_failed_request(model_root, trained, tmp_path):
    from tests.support.backend import start_backend

    root = tmp_path / "models"
    shutil.copytree(model_root, root)
    store = ModelStore(root)
    first = store.current()
    backend = start_backend(root, tmp_path / "backend", env={"HITL_RELOAD_INTERVAL_S": "0.2"})
    stop = threading.Event()
    seen: list[tuple[int, str | None]] = []
    errors: list[str] = []

    def client(n: int) -> None:
        with httpx.Client(base_url=backend.url, timeout=30) as http:
            while not stop.is_set():
                try:
                    r = http.post("/v1/predict", json={"texts": [f"client {n}: a fine, moving film", "dull"]})
                    seen.append((r.status_code, r.json().get("model_version") if r.status_code == 200 else None))
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    try:
        for t in threads:
            t.start()
        time.sleep(2.0)
        session_clf, x_test, y_test = trained  # the session's classifier stays as it is
        clf = TextClassifier(session_clf.encoder).fit_embeddings(x_test, y_test)  # another version of the same task
        new = store.save(clf, encoder_ref="default", parent=first, promote=True).version
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(v == new for _, v in seen[-20:]):
            time.sleep(0.2)
        time.sleep(1.0)  # keep the load on after the switch
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        versions = httpx.get(f"{backend.url}/versions", timeout=10).json()
        backend.stop()
    assert not errors and {code for code, _ in seen} == {200}, (errors[:3], seen[-5:])
    versions_seen = [v for _, v in seen]
    # requests already in a batch finish on the old version; every later one gets the new one
    assert versions_seen[0] == first and set(versions_seen) == {first, new}
    assert set(versions_seen[-20:]) == {new}
    assert len(seen) > 20 and versions["serving"] == new and versions["current"] == new
