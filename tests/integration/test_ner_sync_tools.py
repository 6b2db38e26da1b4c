"""An NER project through the sync with the real tools: a span control as the only (primary)
control. Label Studio gets a ``<Labels>``-only project whose tasks carry span pre-annotations;
argilla-server a dataset whose one question is a ``SpanQuestion``. Answers (an empty span set
among them: "no entity here") are given through each tool's API, pulled, settled by span majority
into the labels table, and a span tagger is retrained and promoted in the control's own store."""

from __future__ import annotations

import json
import time

import pytest

from connector.control_models import control_store
from connector.tools.argilla import ArgillaTool
from sync.jobs import consolidate_job, retrain_job
from tests.integration.test_argilla_client import _annotator
from tests.integration.test_label_sets_tools import (  # noqa: F401 (module fixtures)
    ENTITIES,
    _loop,
    _submit,
    _users,
    controls_backend,
    controls_root,
    ls,
)
from tests.integration.test_spans_sync_tools import _tweets

pytestmark = pytest.mark.slow

ROUTING = {"accept_threshold": 0.99, "spot_check_rate": 0.0, "audit_share": 0.0}


def _spec(name: str, tool: str, overlap: int):
    from connector.task_spec import TaskSpec

    return TaskSpec(name=name, tool=tool, text_field="tweet", overlap=overlap, routing=ROUTING,
                    show_suggestion="always", controls=[{"name": "entities", "kind": "spans", "labels": ENTITIES}])


def _index(store, item_id: int) -> int:
    return int(store.items.get(item_id).external_id.split("-")[1])


def test_a_label_studio_ner_project_routes_on_spans_settles_them_and_retrains(
        tmp_path, ls, controls_backend, encoder):  # noqa: F811 (the imported module fixtures)
    spec = _spec(f"ner ls {time.time_ns()}"[:50], "label_studio", overlap=2)
    texts, gold = _tweets(40, 64)
    store, sync, ctx = _loop(tmp_path, ls, spec, controls_backend.url, texts, encoder)
    decisions = store.decisions.latest()
    assert not any(d.action == "auto_accept" for d in decisions.values())  # nothing certified
    tasks = ls.find(sync.project)
    preds = ls._ls.predictions.list(project=int(sync.project))
    assert preds and len(preds) <= len(tasks)
    text_of = {str(task): texts[int(ext.split("-")[1])] for ext, task in tasks.items()}
    for p in preds:  # only span results, each quoting the text at its offsets
        for item in p.result:
            assert item["type"] == "labels" and item["from_name"] == "entities" and item["to_name"] == "text"
            v = item["value"]
            assert v["labels"][0] in ENTITIES and v["text"] == text_of[str(p.task)][v["start"]:v["end"]]
    by_ext = dict(tasks)
    answered = sorted(by_ext.items())[:10]
    users = _users(ls, 2)
    for n, (ext, task) in enumerate(answered):
        i = int(ext.split("-")[1])
        for user in users:
            spans = [] if n == 0 else [  # the first: both say there is no entity of these types
                {"from_name": "entities", "to_name": "text", "type": "labels",
                 "value": {"start": s, "end": e, "text": texts[i][s:e], "labels": [lab]}} for s, e, lab in gold[i]]
            ls.annotate(task, spans, completed_by=user.id)
    assert sync.pull_pass().counts["inserted"] == 20
    done = consolidate_job(ctx)
    assert done["settled"] == 10
    settled = {_index(store, lb.item_id): json.loads(lb.label) for lb in store.labels.list()}
    first = int(answered[0][0].split("-")[1])
    assert settled == {int(ext.split("-")[1]): [] if int(ext.split("-")[1]) == first else gold[int(ext.split("-")[1])]
                       for ext, _ in answered}
    assert {lb.method for lb in store.labels.list()} == {"span_majority"}
    result = retrain_job(ctx, force=True)
    assert result["n_train"] + result["n_test"] == 10 and result["candidate"] is not None
    models = control_store(ctx.models.root, "entities")
    assert models.meta(result["candidate"]).kind == "spans"
    store.close()


def test_an_argilla_ner_dataset_asks_one_span_question_and_settles_its_responses(
        tmp_path, argilla, controls_backend, encoder):  # noqa: F811
    tool = ArgillaTool(argilla.url, argilla.api_key)
    spec = _spec(f"ner-ar-{time.time_ns()}", "argilla", overlap=1)
    texts, gold = _tweets(64, 80)
    store, sync, ctx = _loop(tmp_path, tool, spec, controls_backend.url, texts, encoder)
    dataset = tool.dataset(sync.project)
    assert [type(q).__name__ for q in dataset.settings.questions] == ["SpanQuestion"]
    with_spans = sum(bool({s.question_name for s in r.suggestions}) for r in dataset.records(with_suggestions=True))
    assert with_spans
    (user, client), = [_annotator(tool, argilla.url, f"ner-ar-{time.time_ns()}", dataset.workspace.name)]
    records = sorted(tool.find(sync.project).items())[:5]
    for n, (ext, rid) in enumerate(records):
        i = int(ext.split("-")[1])
        spans = [] if n == 0 else [{"start": s, "end": e, "label": lab} for s, e, lab in gold[i]]
        _submit(client, rid, {"entities": spans}, user.id)
    assert sync.pull_pass().counts["inserted"] == 5
    first = int(records[0][0].split("-")[1])
    for a in store.annotations.list(tool="argilla", project=sync.project):
        i = _index(store, a.item_id)
        assert a.value == [] and a.extra == {"controls": {"entities": [] if i == first else gold[i]}}
    assert consolidate_job(ctx)["settled"] == 5
    settled = {_index(store, lb.item_id): json.loads(lb.label) for lb in store.labels.list()}
    assert settled[first] == [] and all(settled[i] == gold[i] for i in settled if i != first)
    store.close()


def test_a_label_studio_span_tie_goes_to_adjudication_and_the_adjudicators_spans_settle_it(
        tmp_path, ls, controls_backend, encoder):  # noqa: F811
    from connector.task_spec import TaskSpec

    spec = TaskSpec(name=f"ner adj {time.time_ns()}"[:50], text_field="tweet", overlap=2, routing=ROUTING,
                    consensus={"max_answers": 2}, show_suggestion="always",
                    controls=[{"name": "entities", "kind": "spans", "labels": ENTITIES}])
    texts, gold = _tweets(80, 86)
    store, sync, ctx = _loop(tmp_path, ls, spec, controls_backend.url, texts, encoder)
    ext, task = min(ls.find(sync.project).items())
    i = int(ext.split("-")[1])
    users = _users(ls, 3)

    def spans(found):
        return [{"from_name": "entities", "to_name": "text", "type": "labels",
                 "value": {"start": s, "end": e, "text": texts[i][s:e], "labels": [lab]}} for s, e, lab in found]

    ls.annotate(task, spans(gold[i]), completed_by=users[0].id)
    ls.annotate(task, [], completed_by=users[1].id)  # "no entity": every span 1 of 2, a tie at max_answers
    sync.pull_pass()
    assert consolidate_job(ctx)["to_adjudication"] == 1
    adjudication = sync.adjudication.key
    (adj_task,) = ls.find(adjudication).values()
    shown = ls._ls.tasks.get(int(adj_task)).data
    assert shown["hitl_answers"].splitlines()[1].endswith("no entity") and shown["tweet"] == texts[i]
    ls.annotate(adj_task, spans(gold[i][:1]), completed_by=users[2].id)
    done = consolidate_job(ctx)
    assert done["adjudicated"] == 1
    (row,) = [lb for lb in store.labels.list() if _index(store, lb.item_id) == i]
    assert json.loads(row.label) == gold[i][:1] and row.method == "adjudicated"
    store.close()


def test_an_argilla_span_tie_goes_to_the_adjudication_dataset_and_the_adjudicators_spans_settle_it(
        tmp_path, argilla, controls_backend, encoder):  # noqa: F811
    tool = ArgillaTool(argilla.url, argilla.api_key)
    spec = _spec(f"ner-adj-{time.time_ns()}", "argilla", overlap=2)
    texts, gold = _tweets(86, 90)
    store, sync, ctx = _loop(tmp_path, tool, spec, controls_backend.url, texts, encoder)
    workspace = tool.dataset(sync.project).workspace.name
    stamp = time.time_ns()
    people = [_annotator(tool, argilla.url, f"ner-adj-{k}-{stamp}", workspace) for k in range(3)]
    ext, rid = min(tool.find(sync.project).items())
    i = int(ext.split("-")[1])
    found = [{"start": s, "end": e, "label": lab} for s, e, lab in gold[i]]
    _submit(people[0][1], rid, {"entities": found}, people[0][0].id)
    _submit(people[1][1], rid, {"entities": []}, people[1][0].id)  # a tie: Argilla cannot ask one more answer
    sync.pull_pass()
    assert consolidate_job(ctx)["to_adjudication"] == 1
    adjudication = sync.adjudication.key
    (adj_id,) = tool.find(adjudication).values()
    _submit(people[2][1], adj_id, {"entities": found[:1]}, people[2][0].id)
    done = consolidate_job(ctx)
    assert done["adjudicated"] == 1
    (row,) = store.labels.list()
    assert json.loads(row.label) == gold[i][:1] and row.method == "adjudicated"
    store.close()
