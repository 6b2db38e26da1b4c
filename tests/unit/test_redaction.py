"""Redaction before a push (connector/redaction.py and the sync's hook): what is found is replaced,
nothing else changes, no network, and the store keeps the original."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from connector import redaction
from connector.redaction import RedactionPolicy, redact_pushed, redactor
from connector.task_spec import TaskSpec
from connector.tools.offline import OfflineTool
from sync.service import SyncService

ROOT = Path(__file__).resolve().parents[2]
POLICY = RedactionPolicy(fields=["text", "note"], rules={"ACCOUNT": r"ACC-\d{6}"})

EMAIL, PHONE, CARD = "jane.doe@example.com", "(212) 555-0199", "4111 1111 1111 1111"
IBAN, IP = "DE89 3704 0044 0532 0130 00", "192.168.1.20"


@pytest.mark.parametrize(("entity", "found"), [
    ("EMAIL_ADDRESS", EMAIL), ("EMAIL_ADDRESS", "a.b+tag@mail.example.co.uk"),
    ("PHONE_NUMBER", PHONE), ("PHONE_NUMBER", "+44 20 7946 0958"), ("PHONE_NUMBER", "030 12345678"),
    ("PHONE_NUMBER", "+34 912 345 678"),
    ("CREDIT_CARD", CARD), ("CREDIT_CARD", "5555-5555-5555-4444"), ("CREDIT_CARD", "378282246310005"),
    ("CREDIT_CARD", "4111.1111.1111.1111"), ("CREDIT_CARD", "4111\u00a01111\u00a01111\u00a01111"),  # pasted from a page
    ("IBAN_CODE", IBAN), ("IBAN_CODE", "NL91ABNA0417164300"),
    ("IP_ADDRESS", IP), ("IP_ADDRESS", "2001:db8::1"),
])
def test_each_entity_type_is_found_and_replaced(entity, found):
    text = f"Hi, it is me: {found}. Thanks!"
    out, findings = redactor(POLICY).redact({"text": text})
    assert out["text"] == f"Hi, it is me: <{entity}>. Thanks!"
    assert [(f.field, f.entity, text[f.start:f.end]) for f in findings] == [("text", entity, found)]


def test_a_task_rule_is_matched_as_written_and_replaced_by_its_name():
    out, findings = redactor(POLICY).redact({"note": "accounts ACC-123456, acc-654321 and ACC-12"})
    assert out["note"] == "accounts <ACCOUNT>, acc-654321 and ACC-12"  # case-sensitive; six digits
    assert [(f.field, f.entity, f.start, f.end, f.score) for f in findings] == [("note", "ACCOUNT", 9, 19, 1.0)]


def test_only_configured_fields_change_and_the_input_is_never_mutated():
    data = {"text": f"call {PHONE}", "note": [f"mail {EMAIL}", {"card": 4111111111111111, "n": 7}],
            "other": f"keep {EMAIL}", "score": 0.5, "flag": True}
    before = copy.deepcopy(data)
    out, findings = redactor(POLICY).redact(data)
    assert data == before
    assert out == {"text": "call <PHONE_NUMBER>", "note": ["mail <EMAIL_ADDRESS>", {"card": "<CREDIT_CARD>", "n": 7}],
                   "other": f"keep {EMAIL}", "score": 0.5, "flag": True}
    assert [(f.field, f.entity) for f in findings] == [
        ("text", "PHONE_NUMBER"), ("note[0]", "EMAIL_ADDRESS"), ("note[1].card", "CREDIT_CARD")]


def test_a_card_number_failing_its_checksum_is_not_a_card():
    assert redactor(POLICY).redact({"text": "ref 4111 1111 1111 1112"}) == ({"text": "ref 4111 1111 1111 1112"}, [])


def test_a_text_without_pii_comes_back_as_it_was():
    text = "The film was a delight from start to finish; 10/10, would watch again in 2025."
    assert redactor(POLICY).redact({"text": text}) == ({"text": text}, [])


def test_redaction_never_opens_a_connection(monkeypatch, tmp_path):
    import tldextract

    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    # as on a fresh machine (no suffix list cached on disk), Presidio's own email check, the module-wide
    # ``tldextract.extract``, fetches the list on first use: the guard sees it
    monkeypatch.setattr(tldextract.tldextract, "TLD_EXTRACTOR", tldextract.TLDExtract(cache_dir=str(tmp_path / "a")))
    tldextract.extract("jane@example.com")
    assert attempts, "the guard saw no connection attempt: it proves nothing"
    attempts.clear()
    monkeypatch.setattr(tldextract.tldextract, "TLD_EXTRACTOR", tldextract.TLDExtract(cache_dir=str(tmp_path / "b")))
    redaction._redactor.cache_clear()
    redaction._suffix_list.cache_clear()  # a fresh redactor, as in a new process
    out, findings = redactor(RedactionPolicy(fields=["text"])).redact({"text": f"{EMAIL}, bob@shop.example.de"})
    assert out["text"] == "<EMAIL_ADDRESS>, <EMAIL_ADDRESS>" and len(findings) == 2
    assert attempts == []


def test_an_empty_policy_is_a_no_op_that_imports_no_presidio():
    code = ("import sys, json\n"
            "from connector.task_spec import TaskSpec\n"
            "from connector.redaction import redact_pushed\n"
            "spec = TaskSpec(name='t', labels=['a', 'b'])\n"
            "data = {'text': 'mail jane@example.com', 'note': 'call (212) 555-0199'}\n"
            "out, found = redact_pushed(spec.redaction, data, text_field='text', text_key='text')\n"
            "print(json.dumps([out == data, out is not data, found, sorted(m for m in sys.modules if 'presidio' in m)]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert json.loads(done.stdout) == [True, True, [], []]


def test_the_text_field_stands_for_the_key_the_text_is_pushed_under():
    policy = RedactionPolicy(fields=["body"])
    out, findings = redact_pushed(policy, {"review": f"mail {EMAIL}", "body": "x"}, text_field="body", text_key="review")
    assert out == {"review": "mail <EMAIL_ADDRESS>", "body": "x"} and findings[0].field == "review"


def test_one_redactor_per_policy():
    assert redactor(RedactionPolicy(fields=["text"])) is redactor(RedactionPolicy(fields=["text"]))
    assert redactor(RedactionPolicy(fields=["text"])) is not redactor(RedactionPolicy(fields=["text"], min_score=0.5))


@pytest.mark.parametrize("bad", [
    {"entities": ["PERSON"]},  # needs an NLP model
    {"rules": {"ACCOUNT": "ACC-("}},
    {"rules": {"EMAIL_ADDRESS": "x"}},
    {"rules": {"any": "\\d*"}},
    {"fields": ["text", "text"]},
    {"phone_regions": ["nl"]},
])
def test_a_policy_the_redactor_cannot_honour_is_refused(bad):
    with pytest.raises(ValidationError):
        RedactionPolicy(**bad)


def test_the_task_file_table_loads(tmp_path):
    path = tmp_path / "task.toml"
    path.write_text('name = "t"\nlabels = ["a", "b"]\n[redaction]\nfields = ["text", "note"]\n'
                    "rules = { ACCOUNT = 'ACC-\\d{6}' }\n")
    assert TaskSpec.load(path).redaction == RedactionPolicy(fields=["text", "note"], rules={"ACCOUNT": r"ACC-\d{6}"})


# -- the sync's hook ----------------------------------------------------------------------------


def test_pushed_items_are_redacted_the_store_keeps_the_original_and_history_says_so_once(tmp_path):
    from connector.store import StateStore

    spec = TaskSpec(name="redact", labels=["a", "b"], redaction={"fields": ["text", "note"]})
    rows = [{"id": "p0", "text": f"mail me at {EMAIL}", "note": f"card {CARD}, phone {PHONE}", "source": EMAIL},
            {"id": "p1", "text": "nothing personal here", "note": "none"}]
    tool = OfflineTool(attempts=1)
    with StateStore(f"sqlite:///{tmp_path / 'state.db'}") as store:
        store.migrate()
        store.items.ingest(rows)
        items = {it.external_id: it for it in store.items.list()}
        store.decisions.record([{"item_id": it.id, "action": "review", "reason": "seed", "priority": 1.0}
                                for it in items.values()])
        sync = SyncService(store, spec, tool)
        tool.push_faults = ["before_commit"]  # the first create fails: the items stay pending ...
        with pytest.raises(Exception, match="injected"):
            sync.push_pass()
        assert sync.push_pass().counts["pushed"] == 2  # ... and are built and pushed again
        assert [sorted(keys) for keys in tool.creates] == [["p0", "p1"], ["p0", "p1"]]
        pushed = {k: tool.projects[sync.project].items[t].data for k, t in tool.find(sync.project).items()}
        assert pushed["p0"] == {"text": "mail me at <EMAIL_ADDRESS>", "note": "card <CREDIT_CARD>, phone <PHONE_NUMBER>",
                                "source": EMAIL}  # "source" is not a configured field
        assert pushed["p1"] == {"text": "nothing personal here", "note": "none"}
        stored = store.items.get(items["p0"].id)
        assert stored.text == rows[0]["text"] and stored.data["note"] == rows[0]["note"]
        events = store.history.list(kind="redacted")
        assert [(e.item_id, e.actor) for e in events] == [(items["p0"].id, "sync")]
        detail = events[0].detail
        assert detail["fields"] == ["note", "text"]
        assert detail["entities"] == {"CREDIT_CARD": 1, "EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1}
        assert sorted(f[:2] for f in detail["findings"]) == [["note", "CREDIT_CARD"], ["note", "PHONE_NUMBER"],
                                                             ["text", "EMAIL_ADDRESS"]]
        for field, _, start, end in detail["findings"]:
            assert rows[0][field][start:end] in (EMAIL, CARD, PHONE)
        assert not any(s in json.dumps(detail) for s in (EMAIL, CARD, PHONE))


def test_a_task_without_redaction_pushes_its_fields_as_they_are(tmp_path):
    from connector.store import StateStore

    tool = OfflineTool()
    with StateStore(f"sqlite:///{tmp_path / 'state.db'}") as store:
        store.migrate()
        store.items.ingest([{"id": "q0", "text": f"mail me at {EMAIL}"}])
        (it,) = store.items.list()
        store.decisions.record([{"item_id": it.id, "action": "review", "reason": "seed", "priority": 1.0}])
        sync = SyncService(store, TaskSpec(name="plain", labels=["a", "b"]), tool)
        sync.push_pass()
        (task,) = tool.projects[sync.project].items.values()
        assert task.data["text"] == f"mail me at {EMAIL}" and store.history.list(kind="redacted") == []


def test_items_pushed_for_adjudication_are_redacted_too(tmp_path):
    from connector.store import StateStore
    from sync.adjudication import AdjudicationQueue

    spec = TaskSpec(name="adjudicate", labels=["a", "b"], redaction={"fields": ["text"]})
    with StateStore(f"sqlite:///{tmp_path / 'state.db'}") as store:
        store.migrate()
        store.items.ingest([{"id": "c0", "text": f"call {PHONE}", "note": PHONE}])
        (it,) = store.items.list()
        pushed = AdjudicationQueue(store, spec, OfflineTool(), "adjudicate", "text")._push_item(it, "a: 1, b: 1")
        assert pushed.data["text"] == "call <PHONE_NUMBER>" and pushed.data["note"] == PHONE  # note: not configured
        assert store.items.get(it.id).text == f"call {PHONE}"
