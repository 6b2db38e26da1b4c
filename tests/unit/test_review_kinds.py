"""Review kinds: the schema an extraction meets, what a review item shows and suggests, the tools'
forms (Label Studio config, Argilla settings), and how an answer reads back as (value, extra)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import date
from types import SimpleNamespace

import pytest
from pydantic import BaseModel, Field

from connector.labeling_config import parse_labeling_config
from connector.review_kinds import (
    OUTCOMES,
    ExtractionSpec,
    argilla_settings,
    build_review_config,
    item_fields,
    label_studio_values,
    load_schema,
    parse_argilla,
    parse_label_studio,
    suggestion_result,
    validate_output,
)
from connector.task_spec import TaskSpec
from connector.tools.label_studio import LabelStudioTool, adjudication_config

SCHEMA = {"type": "object", "required": ["vendor", "total"], "additionalProperties": False, "properties": {
    "vendor": {"type": "string", "description": "who issued the invoice"},
    "total": {"type": "number", "minimum": 0},
    "Due Date": {"type": "string", "format": "date"},
    "lines": {"type": "array", "items": {"type": "object", "required": ["sku"],
                                         "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}}}},
    "reference": {"type": ["string", "null"]},
}}
OUTPUT = {"vendor": "ACME GmbH", "total": 12.5, "Due Date": "2026-03-01", "lines": [{"sku": "A-1", "qty": 2}],
          "reference": "123"}
ANSWER_OUT = {"question": "When was ACME founded?", "answer": "In 1921.",
              "context": ["ACME was founded in 1921.", "It makes anvils."]}


class Invoice(BaseModel):
    """A pydantic model for ``[extraction] model``."""

    vendor: str
    total: float = Field(ge=0)
    due: date | None = None


def extraction_spec(**extraction) -> TaskSpec:
    return TaskSpec(name="invoices", kind="extraction", extraction=extraction or {"json_schema": SCHEMA},
                    instructions="Check the fields against the invoice.")


def answer_spec() -> TaskSpec:
    return TaskSpec(name="answers", kind="answer", text_field="question")


# -- the schema -----------------------------------------------------------------------------------

def test_schema_loads_from_each_source(tmp_path):
    path = tmp_path / "invoice.schema.json"
    path.write_text(json.dumps(SCHEMA))
    assert load_schema(ExtractionSpec(json_schema=SCHEMA)) == SCHEMA
    assert load_schema(ExtractionSpec(schema_path=str(path))) == SCHEMA
    from_model = load_schema(ExtractionSpec(model=f"{__name__}:Invoice"))
    assert list(from_model["properties"]) == ["vendor", "total", "due"]
    assert from_model["required"] == ["vendor", "total"]


@pytest.mark.parametrize(("extraction", "message"), [
    ({}, "exactly one of json_schema, schema_path, model; got none"),
    ({"json_schema": SCHEMA, "model": f"{__name__}:Invoice"}, "got json_schema, model"),
    ({"json_schema": {"type": "object", "properties": {"a": {"type": 12}}}}, "invalid at $.properties.a.type"),
    ({"schema_path": "/nonexistent/schema.json"}, "schema_path '/nonexistent/schema.json'"),
    ({"model": "no_such_module_xyz:Model"}, "No module named 'no_such_module_xyz'"),
    ({"model": f"{__name__}"}, "expected 'package.module:Class'"),
    ({"model": f"{__name__}:SCHEMA"}, "is not a pydantic model"),
])
def test_schema_errors_say_what_is_wrong(extraction, message):
    with pytest.raises(ValueError, match="extraction") as err:
        load_schema(ExtractionSpec(**extraction))
    assert message in str(err.value)


def test_a_schema_file_that_is_not_json_or_not_an_object_is_refused(tmp_path):
    bad, array = tmp_path / "bad.json", tmp_path / "array.json"
    bad.write_text("{not json")
    array.write_text("[]")
    with pytest.raises(ValueError, match="schema_path"):
        load_schema(ExtractionSpec(schema_path=str(bad)))
    with pytest.raises(ValueError, match="must be a JSON object, not list"):
        load_schema(ExtractionSpec(schema_path=str(array)))


def test_validation_lists_every_error_with_its_path_in_a_stable_order():
    spec = extraction_spec()
    assert validate_output(spec, OUTPUT) == []
    assert validate_output(spec, json.dumps(OUTPUT)) == []  # a JSON string is read as JSON
    bad = {"total": "12", "Due Date": "2026-13-01", "lines": [{"qty": 1.5}, {"sku": 3}], "extra": 1}
    assert validate_output(spec, bad) == [
        "at $: 'vendor' is a required property",
        "at $: Additional properties are not allowed ('extra' was unexpected)",
        "at $[\"Due Date\"]: '2026-13-01' is not a 'date'",
        "at $.lines[0]: 'sku' is a required property",
        "at $.lines[0].qty: 1.5 is not of type 'integer'",
        "at $.lines[1].sku: 3 is not of type 'string'",
        "at $.total: '12' is not of type 'number'",
    ]
    assert validate_output(spec, dict(reversed(list(bad.items())))) == validate_output(spec, bad)


def test_output_that_is_not_json_is_one_message():
    spec = extraction_spec()
    assert validate_output(spec, "vendor: ACME") == ["at $: the output is not JSON (str)"]
    assert validate_output(spec, {"vendor": object()}) == ["at $: the output is not JSON (dict)"]
    with pytest.raises(ValueError, match="'extraction' tasks"):
        validate_output(answer_spec(), OUTPUT)


def test_a_pydantic_model_validates_like_its_schema():
    spec = extraction_spec(model=f"{__name__}:Invoice")
    assert validate_output(spec, {"vendor": "ACME", "total": 3}) == []
    assert validate_output(spec, {"vendor": "ACME", "total": -1}) == ["at $.total: -1 is less than the minimum of 0"]


# -- what an item shows and suggests --------------------------------------------------------------

def test_extraction_item_shows_the_input_and_the_output_with_one_key_per_field():
    text, data = item_fields(extraction_spec(), {"text": "Invoice 7 from ACME", "customer": "c-1"}, OUTPUT)
    assert text == "Invoice 7 from ACME"
    assert data == {"output": json.dumps(OUTPUT, indent=2, ensure_ascii=False),
                    "output_vendor": '"ACME GmbH"', "output_total": "12.5", "output_due_date": '"2026-03-01"',
                    "output_lines": '[{"sku": "A-1", "qty": 2}]', "output_reference": '"123"'}
    assert {json.loads(data[f"output_{k}"]) for k in ("vendor", "total")} == {"ACME GmbH", 12.5}


def test_extraction_item_without_the_text_field_renders_every_input_by_name():
    text, data = item_fields(extraction_spec(), {"subject": "Invoice 7", "amount": 12, "meta": {"a": 1}},
                             {"vendor": "ACME"})
    assert text == 'amount: 12\nmeta: {"a": 1}\nsubject: Invoice 7'
    assert data == {"output": '{\n  "vendor": "ACME"\n}', "output_vendor": '"ACME"'}
    assert item_fields(extraction_spec(), {"text": "x"}, "not json {") == ("x", {"output": "not json {"})


def test_answer_item_shows_question_answer_and_numbered_context():
    text, data = item_fields(answer_spec(), {"user": "u-9"}, ANSWER_OUT)
    assert text == "When was ACME founded?"
    assert data == {"answer": "In 1921.", "context": "[1] ACME was founded in 1921.\n\n[2] It makes anvils."}
    assert item_fields(answer_spec(), {"question": "Q?"}, {"answer": "A", "context": "one passage"}) == (
        "Q?", {"answer": "A", "context": "one passage"})
    with pytest.raises(ValueError, match="'question', 'answer' and 'context'"):
        item_fields(answer_spec(), {}, "just text")


def test_suggestions_prefill_each_editable_field_and_never_the_outcome():
    result = suggestion_result(extraction_spec(), OUTPUT)
    assert [(r["from_name"], r["to_name"], r["type"], r["value"]["text"]) for r in result] == [
        ("field_vendor", "output", "textarea", ["ACME GmbH"]),  # strings as their plain text
        ("field_total", "output", "textarea", ["12.5"]),
        ("field_due_date", "output", "textarea", ["2026-03-01"]),
        ("field_lines", "output", "textarea", ['[{"sku": "A-1", "qty": 2}]']),
        ("field_reference", "output", "textarea", ['"123"']),  # not a plain string field: kept apart from 123
    ]
    assert [r["from_name"] for r in suggestion_result(extraction_spec(), {"vendor": "ACME"})] == ["field_vendor"]
    assert suggestion_result(extraction_spec(), "not json {") == []
    assert suggestion_result(answer_spec(), ANSWER_OUT) == [
        {"from_name": "corrected", "to_name": "answer", "type": "textarea", "value": {"text": ["In 1921."]}}]


# -- the tools' forms -----------------------------------------------------------------------------

def _controls(config: str) -> tuple[dict[str, str], set[str]]:
    root = ET.fromstring(config)
    controls = {el.get("name"): el.tag for el in root.iter() if el.get("toName")}
    objects = {el.get("name") for el in root.iter("Text")}
    return controls, objects


@pytest.mark.parametrize(("spec", "output"), [(extraction_spec(), OUTPUT), (answer_spec(), ANSWER_OUT)],
                         ids=["extraction", "answer"])
def test_config_names_a_control_for_every_suggestion_and_leads_with_the_outcome(spec, output):
    from label_studio_sdk.label_interface import LabelInterface

    config = spec.label_config()
    assert config == build_review_config(spec)
    controls, objects = _controls(config)
    for r in suggestion_result(spec, output):
        assert controls[r["from_name"]] == "TextArea" and r["to_name"] in objects
    outcome = parse_labeling_config(config)[0]  # what the sync reads: the outcome, on the input's text
    assert (outcome.from_name, outcome.labels, outcome.data_key) == ("outcome", OUTCOMES, spec.text_field)
    assert ET.fromstring(config).find("Choices[@name='outcome']").get("required") == "true"
    _, data = item_fields(spec, {spec.text_field: "the input"}, output)
    assert {o[1:] for o in (el.get("value") for el in ET.fromstring(config).iter("Text"))} <= {spec.text_field, *data}
    li = LabelInterface(config)  # Label Studio's own check of a prediction against the config
    assert li.validate_prediction({"result": suggestion_result(spec, output)}, return_errors=True) == []
    ET.fromstring(adjudication_config(config))  # the adjudication project's config builds on it


def test_answer_config_asks_rating_and_support():
    controls, objects = _controls(answer_spec().label_config())
    assert controls == {"outcome": "Choices", "corrected": "TextArea", "rating": "Rating", "supported": "Choices",
                        "comment": "TextArea"}
    assert objects == {"question", "answer", "context"}
    root = ET.fromstring(answer_spec().label_config())
    assert root.find("Rating").get("maxRating") == "5"
    assert [c.get("value") for c in root.find("Choices[@name='supported']")] == ["yes", "no", "partly"]


def test_extraction_config_has_one_text_area_per_field():
    controls, objects = _controls(extraction_spec().label_config())
    assert controls == {"outcome": "Choices", "field_vendor": "TextArea", "field_total": "TextArea",
                        "field_due_date": "TextArea", "field_lines": "TextArea", "field_reference": "TextArea",
                        "comment": "TextArea"}
    assert objects == {"text", "output"}


def test_a_schema_without_properties_is_edited_whole():
    spec = extraction_spec(json_schema={"type": "array", "items": {"type": "string"}})
    (r,) = suggestion_result(spec, ["a", "b"])
    assert (r["from_name"], r["value"]["text"]) == ("corrected", ['[\n  "a",\n  "b"\n]'])
    _, data = item_fields(spec, {"text": "x"}, ["a", "b"])
    assert parse_label_studio(spec, [_choice("correct"), _area("corrected", '["a", "c"]')], data)[1]["corrected"] == [
        "a", "c"]
    assert parse_label_studio(spec, [_choice("approve")], data)[1]["corrected"] == ["a", "b"]


def test_a_text_field_the_form_uses_is_refused():
    with pytest.raises(ValueError, match="text_field 'answer'"):
        TaskSpec(name="t", kind="answer", text_field="answer").label_config()


def test_argilla_settings_mirror_the_label_studio_form():
    client = SimpleNamespace(api=SimpleNamespace(fields=None, questions=None))  # settings are built, never sent
    ext = argilla_settings(extraction_spec(), min_submitted=2, extra_fields={"hitl_answers": "Answers so far"},
                           client=client)
    assert [(f.name, f.required) for f in ext.fields] == [("text", True), ("output", False), ("hitl_answers", False)]
    assert [(type(q).__name__, q.name, q.required) for q in ext.questions] == [
        ("LabelQuestion", "outcome", True), *(("TextQuestion", f"field_{n}", False) for n in (
            "vendor", "total", "due_date", "lines", "reference")), ("TextQuestion", "comment", False)]
    assert ext.questions["outcome"].labels == list(OUTCOMES)
    assert ext.questions["field_vendor"].title == "vendor: who issued the invoice"
    assert ext.distribution.min_submitted == 2
    ans = argilla_settings(answer_spec(), client=client)
    assert [f.name for f in ans.fields] == ["question", "answer", "context"]
    assert [(type(q).__name__, q.name) for q in ans.questions] == [
        ("LabelQuestion", "outcome"), ("TextQuestion", "corrected"), ("RatingQuestion", "rating"),
        ("LabelQuestion", "supported"), ("TextQuestion", "comment")]
    assert ans.questions["rating"].values == [1, 2, 3, 4, 5]
    assert ans.questions["supported"].labels == ["yes", "no", "partly"]
    assert list(ans.metadata) == []


# -- answers --------------------------------------------------------------------------------------

def _choice(value: str, name: str = "outcome", to_name: str = "text") -> dict:
    return {"from_name": name, "to_name": to_name, "type": "choices", "value": {"choices": [value]}}


def _area(name: str, text: str, to_name: str = "output") -> dict:
    return {"from_name": name, "to_name": to_name, "type": "textarea", "value": {"text": [text]}}


def test_label_studio_correction_rebuilds_the_object_from_the_fields():
    spec = extraction_spec()
    _, data = item_fields(spec, {"text": "x"}, OUTPUT)
    result = [_choice("correct"), _area("field_vendor", "ACME Inc."), _area("field_total", "13"),
              _area("field_lines", "[{broken"), _area("field_reference", "null"), _area("comment", "  total was off ")]
    value, extra = parse_label_studio(spec, result, data)
    assert value == ["correct"]
    assert extra == {"corrected": {**OUTPUT, "vendor": "ACME Inc.", "total": 13, "lines": "[{broken",
                                   "reference": None},
                     "rating": None, "supported": None, "comment": "total was off"}


def test_a_string_field_keeps_what_the_reviewer_typed_as_text():
    spec = extraction_spec()
    _, data = item_fields(spec, {"text": "x"}, OUTPUT)
    (_, extra) = parse_label_studio(spec, [_choice("correct"), _area("field_vendor", "1921")], data)
    assert extra["corrected"]["vendor"] == "1921"


@pytest.mark.parametrize("output", [OUTPUT, {"vendor": "true", "total": 0, "reference": "null"},
                                    {"vendor": '{"a": 1}', "total": 1, "reference": 'say "hi"'}])
def test_approving_the_suggestion_as_shown_gives_the_model_output_back(output):
    spec = extraction_spec()
    _, data = item_fields(spec, {"text": "x"}, output)
    prefilled = [_choice("approve"), *suggestion_result(spec, output)]  # what the tool's form submits
    assert parse_label_studio(spec, prefilled, data)[1]["corrected"] == output
    assert parse_label_studio(spec, [_choice("approve")], data)[1]["corrected"] == output  # nothing edited


def test_reject_and_a_missing_outcome():
    spec = extraction_spec()
    _, data = item_fields(spec, {"text": "x"}, OUTPUT)
    assert parse_label_studio(spec, [_choice("reject"), _area("comment", "wrong invoice")], data) == (
        ["reject"], {"corrected": None, "rating": None, "supported": None, "comment": "wrong invoice"})
    assert parse_label_studio(spec, [_area("field_total", "3")], data)[0] == []
    assert parse_label_studio(spec, [_choice("maybe")], data)[0] == []
    assert parse_label_studio(spec, None, data)[0] == []


def test_label_studio_answer_with_rating_and_support():
    spec = answer_spec()
    _, data = item_fields(spec, {}, ANSWER_OUT)
    result = [_choice("correct", to_name="question"), _area("corrected", "In 1912.", "answer"),
              {"from_name": "rating", "to_name": "answer", "type": "rating", "value": {"rating": 2}},
              _choice("partly", "supported", "context")]
    assert parse_label_studio(spec, result, data) == (
        ["correct"], {"corrected": "In 1912.", "rating": 2, "supported": "partly", "comment": None})
    assert parse_label_studio(spec, [_choice("approve", to_name="question")], data)[1]["corrected"] == "In 1921."
    assert label_studio_values(result) == {"outcome": ["correct"], "corrected": "In 1912.", "rating": 2,
                                           "supported": ["partly"]}


def test_argilla_values_read_like_label_studio_results():
    spec, answer = extraction_spec(), answer_spec()
    _, data = item_fields(spec, {"text": "x"}, OUTPUT)
    fields = {"text": "x", "output": data["output"]}  # a record holds the dataset's fields only
    values = {"outcome": {"value": "correct"}, "field_total": {"value": "99"}, "comment": {"value": ""}}
    assert parse_argilla(spec, values, fields) == (
        ["correct"], {"corrected": {**OUTPUT, "total": 99}, "rating": None, "supported": None, "comment": None})
    _, adata = item_fields(answer, {}, ANSWER_OUT)
    values = {"outcome": {"value": "approve"}, "rating": {"value": 5}, "supported": {"value": "yes"},
              "comment": {"value": "fine"}}
    assert parse_argilla(answer, values, {"question": "q", **adata}) == (
        ["approve"], {"corrected": "In 1921.", "rating": 5, "supported": "yes", "comment": "fine"})
    assert parse_argilla(answer, {}, adata)[0] == []


def test_label_studio_tool_reads_a_review_project_by_its_form_and_classification_as_before():
    tool = LabelStudioTool("http://127.0.0.1:1", "token")
    spec = extraction_spec()
    _, data = item_fields(spec, {"text": "x"}, OUTPUT)
    annotation = {"id": 5, "completed_by": {"id": 1, "email": "r@x"}, "updated_at": "2026-01-01T00:00:00Z",
                  "result": [_choice("correct"), _area("field_total", "1")]}
    task = SimpleNamespace(id=9, data={**data, "hitl_id": "k"}, annotations=[annotation],
                           updated_at="2026-01-01T00:00:00Z")
    _, (plain,) = tool._remote_task(3, task)
    assert (plain.value, plain.extra) == (["correct"], None)  # not known as a review project: choices, as ever
    assert tool._known(3, spec) == "3"
    _, (review,) = tool._remote_task(3, task)
    assert review.value == ["correct"] and review.extra["corrected"] == {**OUTPUT, "total": 1}
    labels = TaskSpec(name="l", labels=["a", "b"])
    assert tool._known(4, labels) == "4" and tool.answer_of(4, [_choice("a", "label")], {}) == (["a"], None)
