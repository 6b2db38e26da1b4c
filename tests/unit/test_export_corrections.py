"""``hitl export --kind corrections / preferences``: people's outcomes on on-line decisions as
training rows and preference pairs, JSONL and Parquet read back; fallbacks and automatic
decisions left out; ``--kind labels`` (the default) unchanged."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from connector.decisions import AnswerOutput, DecisionRequest, FeedbackRequest, LabelOutput, StructuredOutput
from connector.export_corrections import correction_rows, counts, preference_rows, write
from connector.store import StateStore
from connector.store import online as online_store
from connector.task_spec import TaskSpec
from sync.decisions import DecisionService

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
SCHEMA = {"type": "object", "properties": {"vendor": {"type": "string"}, "amount": {"type": "number"}},
          "required": ["vendor"]}
OUTCOMES = ["approve", "correct", "reject"]
QUESTION, CONTEXT = "When did the Titanic sink?", ["The Titanic sank on 15 April 1912.", "It left Southampton."]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def decided(tmp_path, monkeypatch):
    """Decisions of the three kinds (and feedback), each with its fate; ``(store, keys)`` with the keys
    of the decisions a person decided, in the order they were made."""
    clock = Clock()
    monkeypatch.setattr(online_store, "utcnow", clock)
    store = StateStore(f"sqlite:///{tmp_path}/s.db")
    store.migrate()
    label = DecisionService(store, TaskSpec(name="claims", labels=["fraud", "ok"], decisions={
        "audit_share": 0.0, "auto_reject": [{"name": "banned", "field": "country", "op": "==", "value": "XX"}]}))
    extraction = DecisionService(store, TaskSpec(name="invoices", kind="extraction", labels=OUTCOMES,
                                                 extraction={"json_schema": SCHEMA}))
    answer = DecisionService(store, TaskSpec(name="qa", kind="answer", labels=OUTCOMES))

    def ask(service, key, output, **inputs):
        d, created = service.decide(DecisionRequest(idempotency_key=key, input={"text": f"claim {key}", **inputs},
                                                    output=output))
        assert created
        return d

    def settle(d, outcome, corrected=None, reviewer="rev-1", **kw):
        assert store.online.settle(d.id, outcome=outcome, reviewer=reviewer, corrected=corrected, **kw)

    caller = LabelOutput(label="ok", confidence=0.9, model="m1")
    l1, l2, l3, l4 = (ask(label, f"l{k}", caller, amount=100 * k) for k in range(1, 5))
    settle(l1, "correct", {"label": "fraud"}, comment="receipt forged", review={"comment": "receipt forged"})
    settle(l2, "approve")
    settle(l3, "reject", reviewer="rev-2")
    assert store.online.settle(l4.id, outcome="reject", reviewer="timeout", comment="deadline passed", fallback=True)
    assert ask(label, "l5", caller, country="XX").status == "auto_rejected"
    assert ask(label, "l6", caller).status == "pending_review"  # nobody decided yet
    audit, _ = store.online.create({
        "idempotency_key": "l7", "kind": "label", "source": "caller:m1",
        "request": {"idempotency_key": "l7", "input": {"text": "claim l7"}}, "output": caller.model_dump(),
        "status": "auto_approved", "rule": "threshold:certified", "reason": "audit", "score": 0.99,
        "raw_score": 0.99, "audit": True, "decided_at": T0}, item={"text": "claim l7", "data": {}})
    settle(audit, "correct", {"label": "fraud"}, reviewer="rev-2")

    invoice = {"text": "Invoice from ACME, 12 EUR"}
    e1 = extraction.decide(DecisionRequest(idempotency_key="e1", input=invoice, output=StructuredOutput(
        data={"vendor": "ACME", "amount": 21}, field_confidence={"amount": 0.4})))[0]
    e2 = extraction.decide(DecisionRequest(idempotency_key="e2", input=invoice, output=StructuredOutput(
        data={"vendor": "ACME"}, field_confidence={"vendor": 0.3})))[0]
    settle(e1, "correct", {"vendor": "ACME", "amount": 12})
    settle(e2, "approve", {"vendor": "ACME"})

    a1 = answer.decide(DecisionRequest(idempotency_key="a1", input={"user": "u1"}, output=AnswerOutput(
        question=QUESTION, answer="In 1913.", context=CONTEXT, confidence=0.2, model="rag")))[0]
    settle(a1, "correct", "In 1912.", comment="wrong year",
           review={"rating": 2, "supported": "yes", "comment": "wrong year"})
    f1, f2, f3 = (answer.feedback(FeedbackRequest(idempotency_key=k, question="Capital of France?", answer=a,
                                                  thumbs=t, comment="wrong" if t == "down" else None, model="rag"))[0]
                  for k, a, t in (("f1", "Lyon.", "down"), ("f2", "Paris.", "up"), ("f3", "Paris.", "down")))
    assert f2.status == "auto_approved"
    settle(f1, "correct", "Paris.")
    settle(f3, "correct", "Paris.")  # "corrected" to what it was: no preference to learn
    return store, ["l1", "l2", "l3", "l7", "e1", "e2", "a1", "f1", "f3"]


def test_one_row_per_decision_a_person_decided_in_one_shape_per_kind(decided):
    store, keys = decided
    rows = correction_rows(store)
    assert [r.idempotency_key for r in rows] == keys  # no fallback (l4), automatic (l5, f2) or pending (l6)
    by = {r.idempotency_key: r for r in rows}
    l1 = by["l1"]
    assert (l1.kind, l1.origin, l1.source, l1.input, l1.output, l1.corrected, l1.outcome, l1.reviewer, l1.comment,
            l1.audit, l1.rule, l1.review) == ("label", "decision", "caller:m1", {"text": "claim l1", "amount": 100},
                                              "ok", "fraud", "correct", "rev-1", "receipt forged", False,
                                              "threshold:off", None)
    assert (by["l2"].outcome, by["l2"].corrected) == ("approve", "ok")  # approved: the output is the target
    assert (by["l3"].outcome, by["l3"].corrected, by["l3"].reviewer) == ("reject", None, "rev-2")
    assert (by["l7"].audit, by["l7"].corrected) == (True, "fraud")
    assert by["l7"].decided_at > T0 + timedelta(seconds=5)  # when the audit was answered, not decided
    assert by["l1"].created_at < by["l1"].decided_at
    assert (by["e1"].output, by["e1"].corrected, by["e1"].input) == (
        {"vendor": "ACME", "amount": 21}, {"vendor": "ACME", "amount": 12}, {"text": "Invoice from ACME, 12 EUR"})
    a1 = by["a1"]
    assert (a1.output, a1.corrected, a1.comment, a1.review, a1.source) == (
        "In 1913.", "In 1912.", "wrong year", {"rating": 2, "supported": "yes"}, "caller:rag")
    assert a1.input == {"user": "u1", "question": QUESTION, "context": CONTEXT}
    f1 = by["f1"]
    assert (f1.origin, f1.input, f1.feedback, f1.output, f1.corrected) == (
        "feedback", {"question": "Capital of France?", "context": []}, {"thumbs": "down", "comment": "wrong"},
        "Lyon.", "Paris.")
    assert counts(rows) == {"approve": 2, "correct": 6, "reject": 1}


def test_since_keeps_the_decisions_a_person_decided_after_it(decided):
    store, _ = decided
    rows = correction_rows(store)
    cut = next(r for r in rows if r.idempotency_key == "e1").decided_at
    later = correction_rows(store, since=cut)
    assert [r.idempotency_key for r in later] == ["l7", "e1", "e2", "a1", "f1", "f3"]  # l7's audit answered late
    assert correction_rows(store, since=cut.replace(tzinfo=None)) == later  # naive is UTC


def test_preference_pairs_for_every_real_correction(decided):
    store, _ = decided
    pairs = preference_rows(correction_rows(store))
    got = [(p.prompt, p.chosen, p.rejected, p.kind) for p in pairs]
    prompt = f"Context:\n[1] {CONTEXT[0]}\n\n[2] {CONTEXT[1]}\n\nQuestion: {QUESTION}"
    assert got == [("claim l1", "fraud", "ok", "label"), ("claim l7", "fraud", "ok", "label"),
                   ("Invoice from ACME, 12 EUR", '{"vendor": "ACME", "amount": 12}',
                    '{"vendor": "ACME", "amount": 21}', "extraction"),
                   (prompt, "In 1912.", "In 1913.", "answer"),
                   ("Capital of France?", "Paris.", "Lyon.", "answer")]  # f3's correction changed nothing


def test_corrections_read_back_from_jsonl_and_parquet(decided, tmp_path):
    store, keys = decided
    rows = correction_rows(store)
    paths = write(rows, tmp_path / "corrections", "all")
    assert [p.name for p in paths] == ["corrections.jsonl", "corrections.parquet"]
    lines = [json.loads(line) for line in paths[0].read_text().splitlines()]
    assert [r["idempotency_key"] for r in lines] == keys
    e1 = lines[keys.index("e1")]
    assert (e1["output"], e1["corrected"], e1["input"]) == (
        {"vendor": "ACME", "amount": 21}, {"vendor": "ACME", "amount": 12}, {"text": "Invoice from ACME, 12 EUR"})
    assert datetime.fromisoformat(e1["decided_at"]) == rows[keys.index("e1")].decided_at
    frame = pd.read_json(paths[0], lines=True)
    assert list(frame.columns[:8]) == ["decision_id", "idempotency_key", "kind", "origin", "source", "input",
                                       "output", "corrected"]
    assert frame["outcome"].tolist() == [r.outcome for r in rows]

    table = pq.read_table(paths[1])
    assert str(table.schema.field("decided_at").type) == "timestamp[us, tz=UTC]"
    assert str(table.schema.field("audit").type) == "bool" and str(table.schema.field("input").type) == "string"
    back = table.to_pylist()
    assert [r["idempotency_key"] for r in back] == keys
    assert [json.loads(r["input"]) for r in back] == [r.input for r in rows]
    # labels and answers are text, an extraction JSON text: each column one type
    assert back[keys.index("l1")]["corrected"] == "fraud" and back[keys.index("a1")]["output"] == "In 1913."
    assert json.loads(back[keys.index("e1")]["corrected"]) == {"vendor": "ACME", "amount": 12}
    assert back[keys.index("l3")]["corrected"] is None
    assert json.loads(back[keys.index("a1")]["review"]) == {"rating": 2, "supported": "yes"}
    assert [r["decided_at"] for r in back] == [r.decided_at for r in rows]
    assert pd.read_parquet(paths[1])["reviewer"].tolist() == [r.reviewer for r in rows]


def test_preferences_read_back_in_the_dpo_layout(decided, tmp_path):
    store, _ = decided
    pairs = preference_rows(correction_rows(store))
    jsonl, parquet = write(pairs, tmp_path / "pairs", "all", pairs=True)
    frame = pd.read_json(jsonl, lines=True)
    assert list(frame.columns[:3]) == ["prompt", "chosen", "rejected"]
    assert frame[["prompt", "chosen", "rejected"]].values.tolist() == [[p.prompt, p.chosen, p.rejected] for p in pairs]
    assert pd.read_parquet(parquet)[["prompt", "chosen", "rejected"]].values.tolist() == \
        frame[["prompt", "chosen", "rejected"]].values.tolist()


def test_an_empty_store_writes_readable_empty_files(tmp_path):
    with StateStore(f"sqlite:///{tmp_path}/empty.db") as s:
        s.migrate()
        rows = correction_rows(s)
    jsonl, parquet = write(rows, tmp_path / "none", "all")
    assert rows == [] and jsonl.read_text() == "" and pq.read_table(parquet).num_rows == 0
    _, pairs = write(preference_rows(rows), tmp_path / "pairs", "all", pairs=True)
    assert pq.read_table(pairs).column_names[:3] == ["prompt", "chosen", "rejected"]


def test_the_command_writes_each_kind_and_refuses_csv_for_outcomes(decided, tmp_path, monkeypatch):
    from hitl.cli import app

    store, keys = decided
    monkeypatch.setenv("HITL_DB_URL", store.url)
    runner = CliRunner()
    done = runner.invoke(app, ["export", "--kind", "corrections", "--out", str(tmp_path / "c.parquet")])
    assert done.exit_code == 0, done.output
    assert "9 reviewed decisions: approve 2, correct 6, reject 1" in done.output
    assert pd.read_parquet(tmp_path / "c.parquet")["idempotency_key"].tolist() == keys
    done = runner.invoke(app, ["export", "--kind", "preferences", "--out", str(tmp_path / "p.jsonl")])
    assert done.exit_code == 0 and "5 preference pairs from 6 corrections" in done.output, done.output
    assert len(pd.read_json(tmp_path / "p.jsonl", lines=True)) == 5
    done = runner.invoke(app, ["export", "--only", "all", "--out", str(tmp_path / "labels.jsonl")])  # the default
    assert done.exit_code == 0 and "11 items:" in done.output, done.output  # one per decision with a review item
    assert {"item_id", "label", "source"} <= set(json.loads((tmp_path / "labels.jsonl").read_text().splitlines()[0]))
    for bad in (["--kind", "corrections", "--out", str(tmp_path / "x.csv")],
                ["--kind", "preferences", "--format", "csv", "--out", str(tmp_path / "x.jsonl")],
                ["--kind", "answers", "--out", str(tmp_path / "x.jsonl")]):
        done = runner.invoke(app, ["export", *bad])
        assert done.exit_code == 2 and not (tmp_path / "x.csv").exists() and not (tmp_path / "x.jsonl").exists(), \
            (bad, done.output)
    help_text = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "200"}).output
    assert "timeout" in help_text and "left out" in help_text
