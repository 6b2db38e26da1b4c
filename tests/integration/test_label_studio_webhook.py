"""Label Studio's webhook to the sync receiver, against a real Label Studio: the sync registers it
once with the shared secret, and an annotation submitted through Label Studio's API reaches the
store without waiting for the poll (the loop's interval is an hour; nothing here pulls)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from connector.store import StateStore
from connector.task_spec import TaskSpec
from connector.tools.base import PushItem
from connector.tools.label_studio import WEBHOOK_ACTIONS, WEBHOOK_SECRET_HEADER, LabelStudioTool
from hitl.local.processes import free_port
from sync.runner import build_sync, run_forever
from sync.settings import SyncSettings
from sync.webhooks import PullRequests

pytestmark = pytest.mark.slow

SECRET = "a-long-random-webhook-secret"


def _choice(label):
    return [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


def _hooks(client: LabelStudioTool, project: int) -> list:
    return [w for w in client._ls.webhooks.list(project=str(project)) if w.project == project]


def _wait(what: str, check, timeout: float) -> float:
    """Seconds until ``check()`` held; fails after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s")


def test_an_annotation_reaches_the_store_through_the_webhook_without_a_poll(tmp_path, label_studio, backend,
                                                                            rt_sample, monkeypatch):
    monkeypatch.setenv("HITL_LS_API_KEY", label_studio.token)
    task = tmp_path / "task.toml"
    task.write_text(f'name = "webhook {time.time_ns()}"\nlabels = ["fresh", "rotten"]\noverlap = 2\n'
                    f'[label_studio]\nurl = "{label_studio.url}"\n'
                    '[routing]\naccept_threshold = 0.9999\nspot_check_rate = 0.0\n')
    port = free_port()
    settings = SyncSettings(_env_file=None, db_url=f"sqlite:///{tmp_path / 'state.db'}", task=task,
                            backend_url=backend.url, sync_host="127.0.0.1", sync_port=port,
                            sync_public_url=f"http://127.0.0.1:{port}", webhook_secret=SECRET,
                            sync_interval_s=3600)  # the loop's own timer never fires during the test
    store = StateStore(settings.db_url)
    store.migrate()
    store.items.ingest([{"id": f"wh-{i}", "text": t} for i, t in enumerate(rt_sample[0][300:304])])
    sync = build_sync(settings, store)  # the tool the task file names, with the webhook settings
    cycles: list[float] = []
    stop, requests = threading.Event(), PullRequests()
    loop = threading.Thread(target=run_forever, args=(settings, sync), kwargs={
        "stop": stop, "requests": requests, "on_cycle": lambda _: cycles.append(time.monotonic())})
    loop.start()
    try:
        _wait("the first cycle (ensure project, predict, route, push, pull)", lambda: len(cycles) == 1, 120)
        project = int(sync.project)
        client = LabelStudioTool(label_studio.url, label_studio.token)  # the test's own, with no webhook
        assert client._ls.projects.get(id=project).maximum_annotations == 2  # = the task's overlap
        (hook,) = _hooks(client, project)
        assert hook.url == f"http://127.0.0.1:{port}/webhooks/label-studio"
        assert hook.headers == {WEBHOOK_SECRET_HEADER: SECRET} and hook.send_payload and hook.is_active
        assert sorted(hook.actions) == sorted(WEBHOOK_ACTIONS)
        tasks = client.find(str(project))
        assert len(tasks) == 4 and all(t.overlap == 2 for t in client._ls.tasks.list(project=project))

        annotated_at = time.monotonic()
        answer = client.annotate(next(iter(tasks.values())), _choice("fresh"))
        waited = _wait("the answer in the store", lambda: [a.remote_id for a in store.annotations.list()]
                       == [str(answer)], 10)
        # the pull stored it mid-cycle; the cycle ends (and is counted) after its last pass
        _wait("the end of the cycle the webhook woke", lambda: len(cycles) >= 2, 30)
        assert cycles[1] >= annotated_at  # the webhook woke the loop: its timer is an hour
        logging.getLogger(__name__).warning("annotation -> store through the webhook: %.2f s", waited)

        assert sync.tool.ensure_project(sync.spec) == str(project)  # a re-run (a restart) adds no webhook
        assert [w.id for w in _hooks(client, project)] == [hook.id]
    finally:
        stop.set()
        requests.wake.set()
        loop.join(10)
        store.close()


def _spec(name: str, overlap: int) -> TaskSpec:
    return TaskSpec(name=name, labels=["fresh", "rotten"], overlap=overlap)


def test_the_webhook_is_corrected_in_place_and_duplicates_go(label_studio):
    url = f"http://127.0.0.1:{free_port()}/webhooks/label-studio"
    spec = _spec(f"webhook fix {time.time_ns()}", 1)
    project = int(LabelStudioTool(label_studio.url, label_studio.token, webhook_url=url,
                                  webhook_secret="old-secret").ensure_project(spec))
    client = LabelStudioTool(label_studio.url, label_studio.token)
    (first,) = _hooks(client, project)
    assert first.headers == {WEBHOOK_SECRET_HEADER: "old-secret"}
    client._ls.webhooks.create(url=url, project=project, actions=["ANNOTATION_CREATED"], send_payload=False)
    other = client._ls.webhooks.create(url=url + "/elsewhere", project=project, actions=["TASKS_CREATED"])
    assert len(_hooks(client, project)) == 3

    rotated = LabelStudioTool(label_studio.url, label_studio.token, webhook_url=url, webhook_secret="new-secret")
    assert rotated.ensure_project(spec) == str(project)
    hooks = {w.id: w for w in _hooks(client, project)}
    assert sorted(hooks) == sorted([first.id, other.id])  # the duplicate went; another URL's is not ours
    assert hooks[first.id].headers == {WEBHOOK_SECRET_HEADER: "new-secret"}  # the secret rotated in place
    assert sorted(hooks[first.id].actions) == sorted(WEBHOOK_ACTIONS) and hooks[first.id].send_payload


def test_a_webhook_label_studio_refuses_is_logged_and_the_project_still_served(label_studio, caplog):
    tool = LabelStudioTool(label_studio.url, label_studio.token, webhook_url="not a url", webhook_secret=SECRET)
    with caplog.at_level(logging.ERROR, logger="connector.tools.label_studio"):
        project = tool.ensure_project(_spec(f"webhook refused {time.time_ns()}", 1))
    assert project.isdigit() and _hooks(tool, int(project)) == []
    assert "could not register the webhook to not a url (HTTP 400" in caplog.text
    assert "answers still come with each poll" in caplog.text


def test_a_changed_overlap_updates_the_project_and_keeps_tasks_sent_back(label_studio, monkeypatch):
    client = LabelStudioTool(label_studio.url, label_studio.token)
    name = f"overlap {time.time_ns()}"
    project = client.ensure_project(_spec(name, 1))
    assert client._ls.projects.get(id=int(project)).maximum_annotations == 1
    ids = client.push(project, [PushItem(f"ov-{i}", {"text": f"snippet {i}"}) for i in range(4)])
    sent_back, answered, *_ = ids.values()
    client.request_more_answers(sent_back, 3)  # a tie: back in the queue for a third answer
    client.annotate(answered, _choice("fresh"))

    def overlaps() -> dict[str, tuple[int, bool]]:
        return {str(t.id): (t.overlap, bool(t.is_labeled)) for t in client._ls.tasks.list(project=int(project))}

    assert client.ensure_project(_spec(name, 2)) == project
    assert client._ls.projects.get(id=int(project)).maximum_annotations == 2
    after_raise = overlaps()
    assert after_raise[sent_back] == (3, False)  # Label Studio lowered it to 2; restored

    assert client.ensure_project(_spec(name, 1)) == project
    assert client._ls.projects.get(id=int(project)).maximum_annotations == 1
    after_lower = overlaps()
    assert after_lower[sent_back] == (3, False)  # still waiting for its third answer
    assert after_lower[answered] == (1, True)
    assert all(o == (1, False) for t, o in after_lower.items() if t not in (sent_back, answered))

    def unexpected(*_):
        raise AssertionError("the overlap did not change: nothing to update")

    monkeypatch.setattr(client, "set_maximum_annotations", unexpected)
    assert client.ensure_project(_spec(name, 1)) == project  # read from the project list, left alone
