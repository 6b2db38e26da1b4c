"""A real Label Studio registers our backend and stores its predictions (DESIGN.md §3)."""

from __future__ import annotations

import pytest

from tests.support.backend import start_backend

pytestmark = pytest.mark.slow

CONFIG = ('<View><Text name="review" value="$snippet"/>'
          '<Choices name="sentiment" toName="review" choice="single-radio">'
          '<Choice value="fresh"/><Choice value="rotten"/></Choices></View>')


@pytest.fixture(scope="module")
def ls_client(label_studio):
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=label_studio.url, api_key=label_studio.token)


@pytest.fixture(scope="module")
def backend_with_basic_auth(model_root, tmp_path_factory):
    proc = start_backend(model_root, tmp_path_factory.mktemp("backend-auth"),
                         env={"HITL_BASIC_AUTH_USER": "label-studio", "HITL_BASIC_AUTH_PASSWORD": "s3cret-pass"})
    yield proc
    proc.stop()


def _project_with_tasks(ls, texts, title):
    project = ls.projects.create(title=title, label_config=CONFIG)
    imported = ls.projects.import_tasks(project.id, request=[{"snippet": t} for t in texts], return_task_ids=True)
    assert len(imported.task_ids) == len(texts)
    return project, imported.task_ids


def _assert_one_prediction_per_task(ls, project_id, task_ids):
    preds = ls.predictions.list(project=project_id)
    assert sorted(p.task for p in preds) == sorted(task_ids)  # one each, none twice
    for p in preds:
        (item,) = p.result
        assert item["from_name"] == "sentiment" and item["to_name"] == "review" and item["type"] == "choices"
        assert item["value"]["choices"][0] in ("fresh", "rotten") and len(item["value"]["choices"]) == 1
        assert 0.0 < p.score <= 1.0
        assert p.model_version == "v1"
    return preds


def test_label_studio_registers_backend_and_stores_one_prediction_per_task(ls_client, backend, rt_sample):
    texts = rt_sample[0][:25]
    project, task_ids = _project_with_tasks(ls_client, texts, "hitl backend test")
    ml = ls_client.ml.create(project=project.id, url=backend.url, title="hitl backend")
    assert ml.readable_state == "Connected" and ml.model_version == "v1"
    ls_client.actions.create(id="retrieve_tasks_predictions", project=project.id,
                             selected_items={"all": False, "included": task_ids})
    preds = _assert_one_prediction_per_task(ls_client, project.id, task_ids)
    # the stored prediction is the backend's own answer for that text
    by_task = {p.task: p for p in preds}
    import httpx

    direct = httpx.post(f"{backend.url}/v1/predict", json={"texts": texts[:3]}).json()["predictions"]
    for tid, d in zip(task_ids[:3], direct):
        assert by_task[tid].result[0]["value"]["choices"] == [d["label"]]
        assert by_task[tid].score == pytest.approx(d["confidence"], abs=1e-5)


def test_label_studio_with_basic_auth(ls_client, backend_with_basic_auth, rt_sample):
    texts = rt_sample[0][25:40]
    project, task_ids = _project_with_tasks(ls_client, texts, "hitl basic auth test")
    ml = ls_client.ml.create(project=project.id, url=backend_with_basic_auth.url, title="hitl backend (auth)",
                             auth_method="BASIC_AUTH", basic_auth_user="label-studio", basic_auth_pass="s3cret-pass")
    assert ml.readable_state == "Connected"
    ls_client.actions.create(id="retrieve_tasks_predictions", project=project.id,
                             selected_items={"all": False, "included": task_ids})
    _assert_one_prediction_per_task(ls_client, project.id, task_ids)


def test_label_studio_cannot_use_an_auth_backend_without_credentials(ls_client, backend_with_basic_auth):
    from label_studio_sdk.core.api_error import ApiError

    project = ls_client.projects.create(title="hitl no creds", label_config=CONFIG)
    try:
        ml = ls_client.ml.create(project=project.id, url=backend_with_basic_auth.url, title="no creds")
    except ApiError as exc:
        assert exc.status_code in (400, 401, 500)
    else:
        assert ml.readable_state != "Connected"


def test_start_training_reaches_the_backends_webhook_which_says_it_ignores_it(ls_client, backend, rt_sample):
    import time

    project, task_ids = _project_with_tasks(ls_client, rt_sample[0][40:42], "hitl train test")
    ml = ls_client.ml.create(project=project.id, url=backend.url, title="hitl backend (train)")
    # connecting a backend gives the project a webhook to its /webhook, for every event
    (hook,) = [w for w in ls_client.webhooks.list(project=str(project.id)) if w.project == project.id]
    assert hook.url == f"{backend.url}/webhook" and hook.send_for_all_actions
    ls_client.annotations.create(id=task_ids[0], result=[{"from_name": "sentiment", "to_name": "review",
                                                          "type": "choices", "value": {"choices": ["fresh"]}}])
    ls_client.ml.train(id=ml.id)
    after = ls_client.ml.get(id=ml.id)
    assert after.readable_state != "Error" and not after.error_message  # a 4xx/5xx would have put it there
    deadline = time.monotonic() + 5
    while "START_TRAINING ignored" not in backend.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "START_TRAINING ignored: the ML backend does not train on webhooks" in backend.log_path.read_text()
