"""Review kinds for generated outputs: what the reviewer sees and answers in each tool.

A task file's ``kind`` says what a reviewed item is: ``label`` (a classification, the loop's
original kind), ``extraction`` (an LLM's structured output checked against a JSON Schema) or
``answer`` (a generated answer with its question and retrieved context). For the two review
kinds the annotator's choice is the outcome (``approve`` / ``reject`` / ``correct``), so the
loop's consolidation, agreement and routing work on it unchanged; what else the reviewer gives
(the corrected output, a rating, whether the context supported the answer, a comment) travels
as the answer's ``extra``.

One place decides per kind (:func:`review_form`): what is shown, what is editable; from it come the
Label Studio config (:func:`build_review_config`), the Argilla settings (:func:`argilla_settings`),
the suggestion (:func:`suggestion_result`) and the reading of an answer (:func:`parse_answer`). The
editable texts open pre-filled with the model's output, so an approval without edits gives the
model output back as ``corrected``, whether the form submitted the pre-filled values (the tools'
own forms do) or nothing (an answer made through the API).
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

KINDS = ("label", "extraction", "answer")
Kind = Literal["label", "extraction", "answer"]

#: the outcome labels of a review kind, in the order a reviewer is offered them
OUTCOMES = ("approve", "correct", "reject")


class ExtractionSpec(BaseModel):
    """The task file's ``[extraction]`` table: the schema structured outputs must meet.

    ``json_schema``: the schema inline; ``schema_path``: a JSON file holding it; ``model``: a
    pydantic model as ``package.module:Class`` (its ``model_json_schema()``). One of the three.
    ``min_field_confidence``: a field the caller scored below this sends the output to review."""

    model_config = ConfigDict(extra="forbid")

    json_schema: dict[str, Any] | None = None
    schema_path: str | None = None
    model: str | None = None
    min_field_confidence: float = Field(0.8, ge=0.0, le=1.0)


# -- names the tools share --------------------------------------------------------------------

OUTCOME = "outcome"  # the outcome control (Label Studio Choices, Argilla LabelQuestion)
COMMENT = "comment"
CORRECTED = "corrected"  # answer: the corrected answer; extraction without top-level properties: the object
RATING = "rating"
SUPPORTED = "supported"
SUPPORT_CHOICES = ("yes", "no", "partly")
RATINGS = (1, 2, 3, 4, 5)
OUTPUT = "output"  # extraction: the data key (and shown text) of the model output, pretty JSON
ANSWER = "answer"  # answer: the data key of the generated answer ...
CONTEXT = "context"  # ... and of the retrieved passages, numbered
FIELD_PREFIX = "field_"  # extraction: the editable text of one top-level property
OUTPUT_PREFIX = "output_"  # extraction: the data key holding one property's value, as JSON
_RESERVED = {OUTCOME, COMMENT, CORRECTED, RATING, SUPPORTED, OUTPUT, ANSWER, CONTEXT, "hitl_id", "hitl_answers"}


@dataclass(frozen=True)
class Shown:
    """A read-only text the reviewer sees: the item's data key, Label Studio's ``<Text>`` name and
    Argilla's ``TextField`` name."""

    name: str
    title: str


@dataclass(frozen=True)
class Editable:
    """A text the reviewer may correct, pre-filled with the model's (Label Studio ``<TextArea>``,
    Argilla ``TextQuestion``). ``prop``: the top-level property it edits (``None``: the whole
    output, or the answer); ``to_name``: the shown text it sits by; ``text_only``: its text is
    taken as it is, never read as JSON."""

    name: str
    title: str
    to_name: str
    prop: str | None
    text_only: bool


@dataclass(frozen=True)
class ReviewForm:
    """What a review item shows and asks, for both tools: the one place that decides per kind."""

    kind: str
    shown: tuple[Shown, ...]  # the input first
    editable: tuple[Editable, ...]
    rates: bool  # answer: a 1-5 rating and whether the context supported it


def review_form(spec: Any) -> ReviewForm:
    """The form of a review kind's items (``extraction`` or ``answer``)."""
    text_field = spec.text_field
    if text_field in _RESERVED or text_field.startswith((FIELD_PREFIX, OUTPUT_PREFIX)):
        raise ValueError(f"text_field {text_field!r} is a name the {spec.kind!r} review form uses; rename it")
    if spec.kind == "extraction":
        props = _properties(load_schema(spec.extraction))
        editable = tuple(Editable(FIELD_PREFIX + slug, _field_title(prop, sub), OUTPUT, prop, _is_text(sub))
                         for prop, slug, sub in props)
        if not editable:  # no top-level properties: the whole output in one text
            editable = (Editable(CORRECTED, "Corrected output (JSON)", OUTPUT, None, False),)
        return ReviewForm("extraction", (Shown(text_field, "Input"), Shown(OUTPUT, "Model output")), editable, False)
    if spec.kind == "answer":
        return ReviewForm("answer", (Shown(text_field, "Question"), Shown(ANSWER, "Answer"),
                                     Shown(CONTEXT, "Retrieved context")),
                          (Editable(CORRECTED, "Corrected answer", ANSWER, None, True),), True)
    raise ValueError(f"kind {spec.kind!r} is not a review kind (extraction or answer)")


# -- the schema -------------------------------------------------------------------------------

_SCHEMAS: dict[str, tuple[dict[str, Any], Any]] = {}


def load_schema(extraction: ExtractionSpec) -> dict[str, Any]:
    """The JSON Schema an extraction's outputs must meet (inline, from its file, or from the
    pydantic model), checked to be a valid schema."""
    return _schema(extraction)[0]


def _schema(extraction: ExtractionSpec | None) -> tuple[dict[str, Any], Any]:
    """The schema and its validator (Draft 2020-12 unless the schema's ``$schema`` names another), cached."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    if extraction is None:
        raise ValueError("an 'extraction' task needs an [extraction] table with its JSON Schema")
    key = extraction.model_dump_json()
    if key in _SCHEMAS:
        return _SCHEMAS[key]
    given = [n for n in ("json_schema", "schema_path", "model") if getattr(extraction, n) is not None]
    if len(given) != 1:
        raise ValueError("[extraction] needs exactly one of json_schema, schema_path, model; "
                         f"got {', '.join(given) or 'none'}")
    if extraction.json_schema is not None:
        schema: Any = extraction.json_schema
    elif extraction.schema_path is not None:
        try:
            schema = json.loads(Path(extraction.schema_path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"[extraction] schema_path {extraction.schema_path!r}: {exc}") from exc
    else:
        schema = _model_schema(str(extraction.model))
    if not isinstance(schema, dict):
        raise ValueError(f"[extraction] the JSON Schema must be a JSON object, not {type(schema).__name__}")  # noqa: TRY004
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        at = _json_path(exc.absolute_path)
        raise ValueError(f"[extraction] the JSON Schema is invalid at {at}: {exc.message}") from exc
    _SCHEMAS[key] = schema, cls(schema, format_checker=cls.FORMAT_CHECKER)
    return _SCHEMAS[key]


def _model_schema(path: str) -> dict[str, Any]:
    """``package.module:Class`` -> the pydantic model's ``model_json_schema()``."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"[extraction] model {path!r}: expected 'package.module:Class'")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"[extraction] model {path!r}: {exc}") from exc
    if not (isinstance(target, type) and issubclass(target, BaseModel)):
        raise ValueError(f"[extraction] model {path!r} is not a pydantic model")  # noqa: TRY004
    return target.model_json_schema()


def _properties(schema: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """The schema's top-level properties in order: (name, a unique lower-case slug, its schema)."""
    out: list[tuple[str, str, Any]] = []
    used: set[str] = set()
    for prop, sub in (schema.get("properties") or {}).items():
        base = re.sub(r"[^a-z0-9_]+", "_", str(prop).lower()).strip("_") or "field"
        slug, n = base, 1
        while slug in used:
            n += 1
            slug = f"{base}_{n}"
        used.add(slug)
        out.append((str(prop), slug, sub))
    return out


def _is_text(sub: Any) -> bool:
    return isinstance(sub, dict) and sub.get("type") == "string"


def _field_title(prop: str, sub: Any) -> str:
    description = sub.get("description") if isinstance(sub, dict) else None
    return f"{prop}: {description}" if description else prop


def _json_path(path: Iterable[Any]) -> str:
    out = "$"
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            out += f".{part}"
        else:
            out += f"[{json.dumps(str(part), ensure_ascii=False)}]"
    return out


_NOT_JSON = object()


def _as_json(output: Any) -> Any:
    """The output as JSON data: a string is parsed; what is not JSON gives ``_NOT_JSON``."""
    if isinstance(output, str):
        try:
            return json.loads(output)
        except ValueError:
            return _NOT_JSON
    try:
        return json.loads(json.dumps(output, allow_nan=False))
    except (TypeError, ValueError):
        return _NOT_JSON


def validate_output(spec: Any, output: Any) -> list[str]:
    """Why ``output`` fails the task's schema (one message per error, with its JSON path); ``[]``
    when it meets it. Only for ``extraction`` tasks."""
    if spec.kind != "extraction":
        raise ValueError(f"validate_output is for 'extraction' tasks, not {spec.kind!r}")
    _, validator = _schema(spec.extraction)
    data = _as_json(output)
    if data is _NOT_JSON:
        return [f"at $: the output is not JSON ({type(output).__name__})"]
    errors = sorted(validator.iter_errors(data),
                    key=lambda e: ([(0, p) if isinstance(p, int) else (1, str(p)) for p in e.absolute_path],
                                   e.message))
    return [f"at {_json_path(e.absolute_path)}: {e.message}" for e in errors]


# -- the item and its suggestion --------------------------------------------------------------

def _render(value: Any, text_only: bool) -> str:
    """A value as the reviewer edits it: a string as its plain text (unless, in a field that is not
    text-only, that text would read back as other JSON), anything else as JSON."""
    if isinstance(value, str) and (text_only or _as_json(value) is _NOT_JSON):
        return value
    return json.dumps(value, ensure_ascii=False)


def _read(text: str, text_only: bool) -> Any:
    """What the reviewer wrote: JSON when it parses (never in a text-only field), else the string."""
    if text_only:
        return text
    data = _as_json(text)
    return text if data is _NOT_JSON else data


def _answer_output(output: Any) -> dict[str, Any]:
    data = _as_json(output) if isinstance(output, str) else output
    if not isinstance(data, dict) or ANSWER not in data:
        raise ValueError("an 'answer' output is an object with 'question', 'answer' and 'context'")
    return data


def _passages(context: Any) -> str:
    if context is None:
        return ""
    if isinstance(context, str):
        return context
    return "\n\n".join(f"[{n}] {p}" for n, p in enumerate(context, 1))


def item_fields(spec: Any, inputs: dict[str, Any], output: Any) -> tuple[str, dict[str, Any]]:
    """What one review item stores and shows: its text (the input the output was made from) and
    its data (the output, and for ``answer`` the question and the retrieved context)."""
    review_form(spec)  # refuses a text_field the form uses
    if spec.kind == "answer":
        out = _answer_output(output)
        question = out.get("question")
        if question is None:
            question = inputs.get(spec.text_field, "")
        return str(question), {ANSWER: str(out[ANSWER]), CONTEXT: _passages(out.get(CONTEXT))}
    if spec.text_field in inputs:
        text = str(inputs[spec.text_field])
    else:  # every input field, one per line, by name
        text = "\n".join(f"{k}: {_render(v, True)}" for k, v in sorted(inputs.items()))
    data = _as_json(output)
    if data is _NOT_JSON:
        return text, {OUTPUT: str(output)}
    shown: dict[str, Any] = {OUTPUT: json.dumps(data, indent=2, ensure_ascii=False)}
    if isinstance(data, dict):
        for prop, slug, _ in _properties(load_schema(spec.extraction)):
            if prop in data:
                shown[OUTPUT_PREFIX + slug] = json.dumps(data[prop], ensure_ascii=False)
    return text, shown


def _textarea(name: str, to_name: str, text: str) -> dict[str, Any]:
    return {"from_name": name, "to_name": to_name, "type": "textarea", "value": {"text": [text]}}


def suggestion_result(spec: Any, output: Any) -> list[dict[str, Any]]:
    """The output as the reviewer's editable starting point: Label Studio ``result`` items (the
    Argilla tool turns them into suggestions). No outcome is suggested: the reviewer chooses it."""
    form = review_form(spec)
    if spec.kind == "answer":
        answer = str(_answer_output(output)[ANSWER])
        return [_textarea(e.name, e.to_name, answer) for e in form.editable if answer]
    data = _as_json(output)
    if data is _NOT_JSON:
        return []
    out = []
    for e in form.editable:
        if e.prop is None:
            out.append(_textarea(e.name, e.to_name, json.dumps(data, indent=2, ensure_ascii=False)))
        elif isinstance(data, dict) and e.prop in data:
            out.append(_textarea(e.name, e.to_name, _render(data[e.prop], e.text_only)))
    return out


# -- the tools' settings ----------------------------------------------------------------------

def build_review_config(spec: Any) -> str:
    """The Label Studio labeling config of a review kind: the input and the model output shown
    read-only, the outcome (required), the editable texts, for answers a 1-5 rating and whether the
    context supported the answer, and an optional comment. Its first ``<Choices>`` is the outcome,
    bound to the input's ``<Text>`` (what ``parse_labeling_config`` and the adjudication config read)."""
    import xml.etree.ElementTree as ET

    form = review_form(spec)
    root = ET.Element("View")
    ET.SubElement(root, "Style").text = ".htx-text { white-space: pre-wrap; }"  # JSON and passages keep their lines

    def header(text: str, size: str = "5") -> None:
        ET.SubElement(root, "Header", value=text, size=size)

    def choices(name: str, to_name: str, values: Iterable[str], **more: str) -> None:
        el = ET.SubElement(root, "Choices", name=name, toName=to_name, choice="single-radio", showInline="true", **more)
        for v in values:
            ET.SubElement(el, "Choice", value=v)

    if spec.instructions:
        header(spec.instructions, "4")
    for s in form.shown:
        header(s.title)
        ET.SubElement(root, "Text", name=s.name, value=f"${s.name}")
    header("Outcome")
    choices(OUTCOME, form.shown[0].name, OUTCOMES, required="true")
    if form.editable[0].prop is not None:
        header("Fields: correct what is wrong (JSON; strings as plain text)")
    for e in form.editable:
        header(e.title, "6")
        ET.SubElement(root, "TextArea", name=e.name, toName=e.to_name, editable="true", maxSubmissions="1",
                      rows="4" if e.prop is None else "2")
    if form.rates:
        header("Rating of the answer (1 poor, 5 excellent)")
        ET.SubElement(root, "Rating", name=RATING, toName=ANSWER, maxRating=str(len(RATINGS)))
        header("Did the retrieved context support the answer?")
        choices(SUPPORTED, CONTEXT, SUPPORT_CHOICES)
    header("Comment (optional)")
    ET.SubElement(root, "TextArea", name=COMMENT, toName=form.shown[0].name, maxSubmissions="1", rows="2")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


def argilla_settings(spec: Any, *, min_submitted: int = 1, extra_fields: Mapping[str, str] | None = None,
                     client: Any = None) -> Any:
    """The Argilla dataset settings of a review kind (``argilla.Settings``): a ``TextField`` per
    shown text (then ``extra_fields``: name -> title), the required ``LabelQuestion`` outcome, a
    ``TextQuestion`` per editable text, for answers a ``RatingQuestion`` and the ``LabelQuestion``
    supported, an optional ``TextQuestion`` comment; no metadata. ``client``: the ``argilla.Argilla``
    the settings belong to (else the SDK's default one)."""
    import argilla as rg

    form = review_form(spec)
    instructions = spec.instructions or None
    c = {"client": client}
    fields = [rg.TextField(name=s.name, title=s.title, required=n == 0, **c) for n, s in enumerate(form.shown)]
    fields += [rg.TextField(name=n, title=t, required=False, **c) for n, t in (extra_fields or {}).items()]
    questions: list[Any] = [rg.LabelQuestion(name=OUTCOME, title="Outcome", labels=list(OUTCOMES),
                                             description=instructions, required=True, **c)]
    questions += [rg.TextQuestion(name=e.name, title=e.title[:500], required=False, **c) for e in form.editable]
    if form.rates:
        questions += [rg.RatingQuestion(name=RATING, title="Rating of the answer (1 poor, 5 excellent)",
                                        values=list(RATINGS), required=False, **c),
                      rg.LabelQuestion(name=SUPPORTED, title="Did the retrieved context support the answer?",
                                       labels=list(SUPPORT_CHOICES), required=False, **c)]
    questions.append(rg.TextQuestion(name=COMMENT, title="Comment (optional)", required=False, **c))
    return rg.Settings(guidelines=instructions, fields=fields, questions=questions,
                       distribution=rg.TaskDistribution(min_submitted=min_submitted))


# -- answers ------------------------------------------------------------------------------------

def label_studio_values(result: list[dict[str, Any]] | None) -> dict[str, Any]:
    """A Label Studio ``result`` by control name: choices as a list, a text area's texts joined by
    new lines, a rating as an int."""
    values: dict[str, Any] = {}
    for r in result or []:
        name, value = r.get("from_name"), r.get("value") or {}
        if r.get("type") == "choices":
            values.setdefault(name, []).extend(value.get("choices") or [])
        elif r.get("type") == "textarea":
            text = "\n".join(str(t) for t in value.get("text") or [])
            values[name] = f"{values[name]}\n{text}" if name in values else text
        elif r.get("type") == "rating" and value.get("rating") is not None:
            values[name] = int(value["rating"])
    return values


def parse_answer(spec: Any, values: Mapping[str, Any],
                 shown: Mapping[str, Any] | None = None) -> tuple[list[str], dict[str, Any]]:
    """One reviewer's answer, from its values by control/question name, as ``(value, extra)``.

    ``value``: ``[outcome]``, or ``[]`` when none (or not exactly one) was chosen. ``extra``:
    ``corrected`` (for ``approve`` and ``correct``; ``None`` otherwise): for an extraction the
    model output (read from the item's shown ``output``) with every field the reviewer gave
    replaced by what they wrote (JSON when it parses, else the string; a property the schema
    types as a string keeps the text), for an answer the corrected text; a field left empty keeps
    the model's value, as the tools' forms do (they open pre-filled with it); ``rating`` (int or
    ``None``), ``supported`` (``yes`` / ``no`` / ``partly`` or ``None``), ``comment`` (or ``None``).
    """
    form = review_form(spec)
    shown = shown or {}
    chosen = values.get(OUTCOME)
    chosen = [chosen] if isinstance(chosen, str) else list(chosen or [])
    value = chosen if len(chosen) == 1 and chosen[0] in OUTCOMES else []
    corrected: Any = None
    if value and value[0] != "reject":
        given = {e: t for e in form.editable if isinstance(t := values.get(e.name), str) and t.strip()}
        if form.kind == "answer":
            (e,) = form.editable
            corrected = given[e] if e in given else shown.get(ANSWER)
        else:
            model = _as_json(shown[OUTPUT]) if isinstance(shown.get(OUTPUT), str) else _NOT_JSON
            model = None if model is _NOT_JSON else model
            if form.editable[0].prop is None:
                e = form.editable[0]
                corrected = _read(given[e], e.text_only) if e in given else model
            else:
                corrected = dict(model) if isinstance(model, dict) else {}
                corrected.update({e.prop: _read(t, e.text_only) for e, t in given.items()})
    rating = values.get(RATING)
    supported = values.get(SUPPORTED)
    supported = supported[0] if isinstance(supported, list) and len(supported) == 1 else supported
    comment = values.get(COMMENT)
    return value, {"corrected": corrected,
                   "rating": int(rating) if isinstance(rating, (int, float)) and not isinstance(rating, bool) else None,
                   "supported": supported if supported in SUPPORT_CHOICES else None,
                   "comment": comment.strip() or None if isinstance(comment, str) else None}


def parse_label_studio(spec: Any, result: list[dict[str, Any]] | None,
                       data: Mapping[str, Any] | None = None) -> tuple[list[str], dict[str, Any]]:
    """A Label Studio annotation's ``result`` (on a task with ``data``) as ``(value, extra)``."""
    return parse_answer(spec, label_studio_values(result), data)


def parse_argilla(spec: Any, values: Mapping[str, Any] | None,
                  fields: Mapping[str, Any] | None = None) -> tuple[list[str], dict[str, Any]]:
    """An Argilla response's ``values`` (``{question: {"value": ...}}``, on a record with
    ``fields``) as ``(value, extra)``."""
    flat = {k: v.get("value") if isinstance(v, dict) else v for k, v in (values or {}).items()}
    return parse_answer(spec, flat, fields)


def suggested_texts(result: list[dict[str, Any]] | None) -> dict[str, str]:
    """The editable texts a suggestion (Label Studio ``result``) pre-fills, by control name."""
    return {k: v for k, v in label_studio_values(result).items() if isinstance(v, str) and v}
