"""Entity spans through the sync with the real tools: a task of a sentiment control and an
``entities`` span control is pushed (spans as Label Studio ``labels`` pre-annotations / an Argilla
``SpanQuestion`` suggestion with one score per span), answered through each tool's API (one Label
Studio annotator counting offsets in UTF-16 units, as a browser does past an emoji), pulled with
the offsets on the text, settled by span majority and retrained as a ``spans`` version."""

from __future__ import annotations

import time

import pytest

from connector.control_models import control_store
from connector.datasets import wnut16
from connector.tools.argilla import ArgillaTool
from sync.adjudication import split_answers
from sync.controls import settle_control
from sync.jobs import consensus_policy, retrain_job
from tests.integration.test_argilla_client import _annotator
from tests.integration.test_label_sets_tools import (  # noqa: F401 (module fixtures)
    ENTITIES,
    ROUTING,
    _loop,
    _submit,
    _users,
    controls_backend,
    controls_root,
    ls,
)

pytestmark = pytest.mark.slow


def _spec(name: str, tool: str, overlap: int):
    from connector.task_spec import TaskSpec

    return TaskSpec(name=name, tool=tool, text_field="tweet", overlap=overlap, routing=ROUTING,
                    thresholds={"adapt": False}, show_suggestion="always", controls=[
                        {"name": "sentiment", "labels": ["fresh", "rotten"]},
                        {"name": "entities", "kind": "spans", "labels": ENTITIES}])


def _tweets(lo: int, hi: int) -> tuple[list[str], list[list[list]]]:
    """Tweets with entities, each behind an emoji (so UTF-16 and code-point offsets differ), and
    their gold spans shifted to match."""
    ds = wnut16()
    texts, spans = [], []
    for t, found in zip(ds.texts, ds.spans):
        keep = [[s + 2, e + 2, lab] for s, e, lab in found if lab in ENTITIES]
        if keep:
            texts.append("😀 " + t)
            spans.append(sorted(keep))
    return texts[lo:hi], spans[lo:hi]


def _utf16(text: str, i: int) -> int:
    return i + sum(1 for ch in text[:i] if ord(ch) > 0xFFFF)


def test_a_label_studio_span_project_pushes_spans_pulls_repaired_offsets_settles_and_retrains(
        tmp_path, ls, controls_backend, encoder):  # noqa: F811 (the imported module fixtures)
    spec = _spec(f"spans ls {time.time_ns()}"[:50], "label_studio", overlap=2)
    texts, gold = _tweets(0, 24)
    store, sync, ctx = _loop(tmp_path, ls, spec, controls_backend.url, texts, encoder)
    tasks = ls.find(sync.project)
    preds = ls._ls.predictions.list(project=int(sync.project))
    assert len(preds) == len(tasks)
    by_task = {str(t): i for i, t in ((int(ext.split("-")[1]), t) for ext, t in tasks.items())}
    span_items = 0
    for p in preds:
        text = texts[by_task[str(p.task)]]
        for item in p.result:
            assert item["to_name"] == "text"
            if item["type"] == "labels":  # each span quotes the text at its offsets, with its own score
                span_items += 1
                v = item["value"]
                assert item["from_name"] == "entities" and v["text"] == text[v["start"]:v["end"]]
                assert v["labels"][0] in ENTITIES and 0.0 <= item["score"] <= 1.0
        assert p.score <= min(item["score"] for item in p.result) + 1e-6
    assert span_items
    users = _users(ls, 2)
    answered = sorted(tasks.items())[:12]
    for ext, task in answered:
        i = int(ext.split("-")[1])
        for k, user in enumerate(users):  # the second counts offsets as a browser does: in UTF-16 units
            spans = [{"from_name": "entities", "to_name": "text", "type": "labels",
                      "value": {"start": _utf16(texts[i], s) if k else s, "end": _utf16(texts[i], e) if k else e,
                                "text": texts[i][s:e], "labels": [lab]}} for s, e, lab in gold[i]]
            ls.annotate(task, [{"from_name": "sentiment", "to_name": "text", "type": "choices",
                                "value": {"choices": ["fresh" if i % 2 else "rotten"]}}, *spans],
                          completed_by=user.id)
    assert sync.pull_pass().counts["inserted"] == 24
    for a in store.annotations.list(tool="label_studio", project=sync.project):
        i = int(store.items.get(a.item_id).external_id.split("-")[1])
        assert a.extra["controls"]["entities"] == gold[i]  # both annotators' offsets on the text
    control = spec.control_specs[1]
    settled = settle_control(split_answers(store, store.annotations.list())[0], spec, control, consensus_policy(spec))
    assert {int(store.items.get(i).external_id.split("-")[1]): v for i, v in settled.items()} == {
        int(ext.split("-")[1]): gold[int(ext.split("-")[1])] for ext, _ in answered}
    result = retrain_job(ctx, force=True)
    ents = result["controls"]["entities"]
    assert ents["promoted"] and ents["n_train"] + ents["n_test"] == 12
    models = control_store(ctx.models.root, "entities")
    assert models.current() == "v1" and models.meta("v1").kind == "spans"
    store.close()


def test_an_argilla_span_question_gets_per_span_scores_and_span_responses_come_back(
        tmp_path, argilla, controls_backend, encoder):  # noqa: F811
    tool = ArgillaTool(argilla.url, argilla.api_key)
    spec = _spec(f"spans-ar-{time.time_ns()}", "argilla", overlap=1)
    texts, gold = _tweets(24, 40)
    store, sync, _ = _loop(tmp_path, tool, spec, controls_backend.url, texts, encoder)
    dataset = tool.dataset(sync.project)
    assert type(dataset.settings.questions["entities"]).__name__ == "SpanQuestion"
    preds = {store.items.get(p.item_id).external_id: p
             for p in store.predictions.list([it.id for it in store.items.list()])}
    with_spans = 0
    for r in dataset.records(with_suggestions=True):
        s = {x.question_name: x for x in r.suggestions}.get("entities")
        entry = preds[str(r.id)].probabilities["@controls"]["entities"]
        if not entry["spans"]:
            assert s is None
            continue
        with_spans += 1
        assert [{k: v[k] for k in ("start", "end", "label")} for v in s.value] == [{"start": x["start"], "end": x["end"], "label": x["label"]} for x in entry["spans"]]
        assert s.score == pytest.approx([x["score"] for x in entry["spans"]], abs=1e-6)  # one per span
    assert with_spans
    (user, client), = [_annotator(tool, argilla.url, f"spans-ar-{time.time_ns()}", dataset.workspace.name)]
    records = tool.find(sync.project)
    for ext, rid in sorted(records.items())[:6]:
        i = int(ext.split("-")[1])
        _submit(client, rid, {"sentiment": "fresh",
                              "entities": [{"start": s, "end": e, "label": lab} for s, e, lab in gold[i]]}, user.id)
    assert sync.pull_pass().counts["inserted"] == 6
    for a in store.annotations.list(tool="argilla", project=sync.project):
        i = int(store.items.get(a.item_id).external_id.split("-")[1])
        assert a.extra == {"controls": {"entities": gold[i]}}
    settled = settle_control(split_answers(store, store.annotations.list())[0], spec, spec.control_specs[1],
                             consensus_policy(spec))
    assert len(settled) == 6
    store.close()
