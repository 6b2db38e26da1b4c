"""On the real tools, the two review kinds end to end through each tool's own API: the project made
from a task file, two items pushed with the model output as the editable suggestion, read back,
answered (one corrected, one approved as shown) and pulled as ``(value, extra)``."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET

import pytest

from connector.review_kinds import item_fields, parse_label_studio, suggestion_result
from connector.task_spec import TaskSpec
from connector.tools.base import SUGGESTION_VERSION, PushItem

pytestmark = pytest.mark.slow

SCHEMA = {"type": "object", "required": ["vendor", "total"], "properties": {
    "vendor": {"type": "string"}, "total": {"type": "number"}, "due": {"type": "string", "format": "date"},
    "lines": {"type": "array", "items": {"type": "string"}}}}
OUTPUTS = {
    "extraction": [({"text": "Invoice 7 from ACME, 12.50 EUR, due 1 March"},
                    {"vendor": "ACME", "total": 12.5, "due": "2026-03-01", "lines": ["anvil"]}),
                   ({"text": "Invoice 8 from Globex, 3 EUR"}, {"vendor": "Globex", "total": "3"})],
    "answer": [({}, {"question": "When was ACME founded?", "answer": "In 1921.",
                     "context": ["ACME was founded in 1912.", "It makes anvils."]}),
               ({}, {"question": "What does ACME make?", "answer": "Anvils.", "context": ["It makes anvils."]})],
}
# the first item's correction: what the reviewer writes, by control / question name, and what comes back
EDITS = {"extraction": ({"field_vendor": "ACME Inc.", "field_total": "13"},
                        {"vendor": "ACME Inc.", "total": 13, "due": "2026-03-01", "lines": ["anvil"]}),
         "answer": ({"corrected": "In 1912."}, "In 1912.")}


def _spec(kind: str, tool: str, url: str) -> TaskSpec:
    section = {"label_studio": {"url": url}} if tool == "label_studio" else {"argilla": {"url": url}}
    return TaskSpec(name=f"review {kind} {uuid.uuid4().hex[:8]}", kind=kind, tool=tool,
                    instructions="Approve, correct or reject the model output.",
                    **({"extraction": {"json_schema": SCHEMA}} if kind == "extraction" else {}), **section)


def _items(spec: TaskSpec) -> list[PushItem]:
    """What the sync pushes: the item's data with its text under the text field, the output as suggestion."""
    items = []
    for n, (inputs, output) in enumerate(OUTPUTS[spec.kind]):
        text, data = item_fields(spec, inputs, output)
        items.append(PushItem(f"{spec.kind}-{n}", {**data, spec.text_field: text}, suggestion_result(spec, output),
                              None, SUGGESTION_VERSION))
    return items


def _expected_approved(kind: str) -> object:
    """An approval without edits gives back the model output (the form opens pre-filled with it)."""
    output = OUTPUTS[kind][1][1]
    return output["answer"] if kind == "answer" else output


@pytest.mark.parametrize("kind", ["extraction", "answer"])
def test_label_studio_review_kind_round_trip(label_studio, kind):
    from connector.tools.label_studio import LabelStudioTool

    tool = LabelStudioTool(label_studio.url, label_studio.token)
    spec = _spec(kind, "label_studio", label_studio.url)
    project = tool.ensure_project(spec)
    items = _items(spec)
    mapping = tool.push(project, items)
    root = ET.fromstring(tool._ls.projects.get(id=int(project)).label_config)
    controls = {el.get("name") for el in root.iter() if el.get("toName")}
    objects = {el.get("name") for el in root.iter("Text")}
    for it in items:
        task = tool._ls.tasks.get(id=int(mapping[it.external_id]))
        (pred,) = [p if isinstance(p, dict) else p.model_dump() for p in task.predictions]
        assert pred["model_version"] == SUGGESTION_VERSION and pred["result"]
        for r in pred["result"]:
            assert r["from_name"] in controls and r["to_name"] in objects and r["type"] == "textarea"
        # the text areas hold the model output: approved as shown, it reads back as that output
        output = OUTPUTS[kind][int(it.external_id.rsplit("-", 1)[1])][1]
        shown = parse_label_studio(spec, [{"from_name": "outcome", "type": "choices",
                                           "value": {"choices": ["approve"]}}, *pred["result"]], task.data)[1]
        assert shown["corrected"] == (output["answer"] if kind == "answer" else output)
        assert "outcome" not in {r["from_name"] for r in pred["result"]}  # the reviewer chooses it

    to_name = spec.text_field
    written, corrected = EDITS[kind]
    result = [{"from_name": "outcome", "to_name": to_name, "type": "choices", "value": {"choices": ["correct"]}},
              *({"from_name": name, "to_name": "answer" if kind == "answer" else "output", "type": "textarea",
                 "value": {"text": [text]}} for name, text in written.items()),
              {"from_name": "comment", "to_name": to_name, "type": "textarea", "value": {"text": ["fixed it"]}}]
    if kind == "answer":
        result += [{"from_name": "rating", "to_name": "answer", "type": "rating", "value": {"rating": 2}},
                   {"from_name": "supported", "to_name": "context", "type": "choices", "value": {"choices": ["no"]}}]
    tool.annotate(mapping[f"{kind}-0"], result)
    tool.annotate(mapping[f"{kind}-1"], [{"from_name": "outcome", "to_name": to_name, "type": "choices",
                                          "value": {"choices": ["approve"]}}])

    answers = {a.external_id: a for a in tool.pull(project, {}).answers}
    assert answers[f"{kind}-0"].value == ["correct"]
    assert answers[f"{kind}-0"].extra == {"corrected": corrected, "comment": "fixed it",
                                          "rating": 2 if kind == "answer" else None,
                                          "supported": "no" if kind == "answer" else None}
    assert answers[f"{kind}-1"].value == ["approve"]
    assert answers[f"{kind}-1"].extra["corrected"] == _expected_approved(kind)


@pytest.mark.parametrize("kind", ["extraction", "answer"])
def test_argilla_review_kind_round_trip(argilla, kind):
    from connector.tools.argilla import ArgillaTool

    tool = ArgillaTool(argilla.url, argilla.api_key)
    spec = _spec(kind, "argilla", argilla.url)
    project = tool.ensure_project(spec)
    items = _items(spec)
    mapping = tool.push(project, items)
    dataset = tool.dataset(project)
    questions = {q.name for q in dataset.settings.questions}
    records = {str(r.id): r for r in dataset.records(with_suggestions=True, with_responses=False)}
    for it in items:
        record = records[it.external_id]
        suggested = {s.question_name: s.value for s in record.suggestions}
        assert suggested == {r["from_name"]: r["value"]["text"][0] for r in it.result}
        assert set(suggested) <= questions and "outcome" not in suggested
        assert {s.agent for s in record.suggestions} == {SUGGESTION_VERSION}
        field_names = {f.name for f in dataset.settings.fields}
        assert dict(record.fields) == {k: v for k, v in it.data.items() if k in field_names}
        assert not record.metadata

    me = tool._rg.me.id
    written, corrected = EDITS[kind]
    first = {"outcome": {"value": "correct"}, "comment": {"value": "fixed it"},
             **{name: {"value": text} for name, text in written.items()}}
    if kind == "answer":
        first |= {"rating": {"value": 2}, "supported": {"value": "no"}}
    for key, values in ((f"{kind}-0", first), (f"{kind}-1", {"outcome": {"value": "approve"}})):
        resp = tool._rg.http_client.post(f"/api/v1/records/{mapping[key]}/responses",
                                         json={"values": values, "status": "submitted", "user_id": str(me)})
        resp.raise_for_status()

    answers = {a.external_id: a for a in tool.pull(project, {}).answers}
    assert answers[f"{kind}-0"].value == ["correct"]
    assert answers[f"{kind}-0"].extra == {"corrected": corrected, "comment": "fixed it",
                                          "rating": 2 if kind == "answer" else None,
                                          "supported": "no" if kind == "answer" else None}
    assert answers[f"{kind}-1"].value == ["approve"]
    assert answers[f"{kind}-1"].extra["corrected"] == _expected_approved(kind)
