"""On the real tools: with ``[redaction] fields = ["text", "note"]``, what a reviewer can read of a
pushed item holds no email, phone or card number from those fields (read back through each tool's
own API), while the store keeps the original and the item's history one ``redacted`` event."""

from __future__ import annotations

import json
import uuid

import pytest

from connector.store import StateStore
from connector.task_spec import TaskSpec
from sync.service import SyncService

pytestmark = pytest.mark.slow

EMAILS = ("jane.doe@example.com", "m.rossi@posta.example.it", "ops+alerts@example.org")
PHONES = ("(212) 555-0199", "+44 20 7946 0958", "030 12345678")
CARDS = ("4111 1111 1111 1111", "5555-5555-5555-4444", "378282246310005")
PII = (*EMAILS, *PHONES, *CARDS)


class _FixedPredictor:
    """The model's side without a model: every item a coin toss, so the router sends it to review."""

    def predict(self, texts):
        return [{"model_version": "v1", "label": "fresh", "confidence": 0.5,
                 "probabilities": {"fresh": 0.5, "rotten": 0.5}} for _ in texts]


def _rows() -> list[dict]:
    return [{"id": f"pii-{i}", "text": f"Loved it. Write to {EMAILS[i]} or call {PHONES[i]}; I paid with {CARDS[i]}.",
             "note": f"callback {PHONES[(i + 1) % 3]}, card on file {CARDS[(i + 1) % 3]}, cc {EMAILS[(i + 1) % 3]}"}
            for i in range(3)]


def _push(tmp_path, spec: TaskSpec, tool) -> tuple[StateStore, SyncService]:
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    store.items.ingest(_rows())
    sync = SyncService(store, spec, tool, _FixedPredictor())
    sync.predict_pass()
    assert sync.route_pass().counts["review"] == 3
    assert sync.push_pass().counts["pushed"] == 3
    return store, sync


def _spec(tool: str, url: str) -> TaskSpec:
    section = {"label_studio": {"url": url}} if tool == "label_studio" else {"argilla": {"url": url}}
    return TaskSpec(name=f"redact {tool} {uuid.uuid4().hex[:8]}", tool=tool, labels=["fresh", "rotten"],
                    show_suggestion="always",
                    redaction={"fields": ["text", "note"]}, **section)


def _assert_no_pii(what: str, readable: str) -> None:
    leaked = [s for s in PII if s in readable or s.replace(" ", "").replace("-", "") in readable]
    assert not leaked, f"{what} shows {leaked}"


def _assert_store_keeps_the_original(store: StateStore) -> None:
    rows = {r["id"]: r for r in _rows()}
    items = store.items.list()
    assert len(items) == 3
    for it in items:
        assert it.text == rows[it.external_id]["text"] and it.data["note"] == rows[it.external_id]["note"]
        (event,) = store.history.list(kind="redacted", item_id=it.id)
        assert event.actor == "sync" and event.detail["fields"] == ["note", "text"]
        assert event.detail["entities"] == {"CREDIT_CARD": 2, "EMAIL_ADDRESS": 2, "PHONE_NUMBER": 2}
        _assert_no_pii("the history", json.dumps(event.detail))


def test_label_studio_tasks_hold_no_pii_from_the_redacted_fields(tmp_path, label_studio):
    from connector.tools.label_studio import LabelStudioTool

    tool = LabelStudioTool(label_studio.url, label_studio.token)
    store, sync = _push(tmp_path, _spec("label_studio", label_studio.url), tool)
    with store:
        remote = store.pushes.remote_ids([it.id for it in store.items.list()], "label_studio", sync.project)
        assert len(remote) == 3
        for task_id in remote.values():
            task = tool._ls.tasks.get(id=int(task_id))
            assert set(task.data) == {"text", "note", "hitl_id"}
            assert "<EMAIL_ADDRESS>" in task.data["text"] and "<CREDIT_CARD>" in task.data["note"]
            _assert_no_pii(f"task {task_id}", json.dumps(task.model_dump(), default=str))
        _assert_store_keeps_the_original(store)


def test_argilla_records_hold_no_pii_from_the_redacted_fields(tmp_path, argilla):
    from connector.tools.argilla import ArgillaTool

    tool = ArgillaTool(argilla.url, argilla.api_key)
    store, sync = _push(tmp_path, _spec("argilla", argilla.url), tool)
    with store:
        records = list(tool.dataset(sync.project).records(with_suggestions=True, with_responses=True))
        assert sorted(str(r.id) for r in records) == ["pii-0", "pii-1", "pii-2"]
        for record in records:
            assert "<EMAIL_ADDRESS>" in record.fields["text"] and "<PHONE_NUMBER>" in record.fields["text"]
            _assert_no_pii(f"record {record.id}", json.dumps(record.to_dict(), default=str))
        _assert_store_keeps_the_original(store)
