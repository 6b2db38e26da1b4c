"""Multi-label and two-control projects end to end against a real Label Studio and a real argilla-server:
the backend registered (or the sync's push) stores one prediction per task that the tool accepts,
with a result per control and per-label scores; answers come back control by control, settle label by
label, and the multi-label control's retraining is promoted.

The topics are labelled by a documented rule on real Rotten Tomatoes snippets (:func:`topics_of`):
``long`` (over 120 characters), ``film`` (names a film or a movie), ``story`` (speaks of the story,
the characters or the plot); ``length`` is ``long`` / ``short`` by the same rule.
"""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from connector.classifier import TextClassifier
from connector.control_models import control_store, save_multilabel_version, save_span_version
from connector.datasets import wnut16
from connector.model_store import ModelStore
from connector.multilabel import MultiLabelClassifier
from connector.span_model import SpanTagger
from connector.store import StateStore
from connector.task_spec import TaskSpec
from connector.tools.argilla import ArgillaTool
from connector.tools.label_studio import LabelStudioTool
from sync.jobs import JobContext, consolidate_job, retrain_job
from sync.service import HttpPredictor, SyncService
from tests.integration.test_argilla_client import _annotator
from tests.support.backend import start_backend

pytestmark = pytest.mark.slow

TOPICS = ["long", "film", "story"]
ENTITIES = ["person", "geo-loc", "company"]
SPANS_CONFIG = ('<View><Text name="tweet" value="$tweet"/><Labels name="entities" toName="tweet">'
                '<Label value="person"/><Label value="geo-loc"/><Label value="company"/></Labels></View>')
ROUTING = {"accept_threshold": 0.99, "spot_check_rate": 0.0, "audit_share": 0.0}
TOPICS_CONFIG = ('<View><Text name="review" value="$snippet"/>'
                 '<Choices name="topics" toName="review" choice="multiple"><Choice value="long"/>'
                 '<Choice value="film"/><Choice value="story"/></Choices></View>')
TWO_CONFIG = ('<View><Text name="review" value="$snippet"/>'
              '<Choices name="sentiment" toName="review" choice="single-radio"><Choice value="fresh"/>'
              '<Choice value="rotten"/></Choices>'
              '<Choices name="topics" toName="review" choice="multiple"><Choice value="long"/>'
              '<Choice value="film"/><Choice value="story"/></Choices></View>')


def topics_of(text: str) -> list[str]:
    low = text.lower()
    return [t for t, hit in (("long", len(text) > 120), ("film", "film" in low or "movie" in low),
                             ("story", any(w in low for w in ("story", "characters", "plot")))) if hit]


@pytest.fixture(scope="module")
def controls_root(tmp_path_factory, model_root, encoder, rt_sample):
    """The session's sentiment model at the root, a multi-label ``topics`` model and a one-label
    ``length`` model under ``controls/``, all on the real encoder."""
    root = tmp_path_factory.mktemp("controls-models")
    shutil.copytree(model_root, root, dirs_exist_ok=True)
    texts = rt_sample[0][:480]
    x = encoder.encode(texts)
    topics = MultiLabelClassifier(encoder, classes=TOPICS).fit_embeddings(x, [topics_of(t) for t in texts])
    save_multilabel_version(control_store(root, "topics"), topics, encoder_ref="default", promote=True)
    length = TextClassifier(encoder).fit_embeddings(x, ["long" if len(t) > 120 else "short" for t in texts])
    control_store(root, "length").save(length, encoder_ref="default", promote=True)
    tweets = wnut16()
    tagger = SpanTagger(encoder, labels=ENTITIES).fit(
        tweets.texts[:300], [[s for s in found if s[2] in ENTITIES] for found in tweets.spans[:300]])
    save_span_version(control_store(root, "entities"), tagger, encoder_ref="default", promote=True)
    return root


@pytest.fixture(scope="module")
def controls_backend(controls_root, tmp_path_factory):
    proc = start_backend(controls_root, tmp_path_factory.mktemp("controls-backend"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def ls(label_studio):
    return LabelStudioTool(label_studio.url, label_studio.token)


def _check_prediction(p, names: set[str], to_name: str) -> dict[str, dict]:
    """One stored prediction: a result item per control named, each a ``choices`` on the text, with
    its per-label scores; the task score its least sure control's."""
    by_name = {item["from_name"]: item for item in p.result}
    assert set(by_name) == names
    for item in p.result:
        assert item["to_name"] == to_name and item["type"] == "choices"
        assert 0.0 < item["score"] <= 1.0 and item["meta"]["scores"]
    if "topics" in by_name:
        scores = by_name["topics"]["meta"]["scores"]
        assert set(scores) == set(TOPICS)
        assert set(by_name["topics"]["value"]["choices"]) == {t for t, s in scores.items() if s >= 0.5}
    assert p.score == pytest.approx(min(item["score"] for item in p.result), abs=1e-5)
    return by_name


# -- Label Studio: the backend registered ----------------------------------------------------------


@pytest.mark.parametrize("config, names", [(TOPICS_CONFIG, {"topics"}), (TWO_CONFIG, {"sentiment", "topics"})],
                         ids=["multi-label", "two-controls"])
def test_label_studio_registers_the_backend_and_stores_one_prediction_per_task(ls, controls_backend, rt_sample,
                                                                              config, names):
    client = ls._ls
    texts = rt_sample[0][480:495]
    project = client.projects.create(title=f"hitl {'+'.join(sorted(names))} {time.time_ns()}"[:50],
                                     label_config=config)
    task_ids = client.projects.import_tasks(project.id, request=[{"snippet": t} for t in texts],
                                            return_task_ids=True).task_ids
    ml = client.ml.create(project=project.id, url=controls_backend.url, title="hitl controls")
    assert ml.readable_state == "Connected"
    client.actions.create(id="retrieve_tasks_predictions", project=project.id,
                          selected_items={"all": False, "included": task_ids})
    preds = client.predictions.list(project=project.id)
    assert sorted(p.task for p in preds) == sorted(task_ids)  # one each, none twice
    for p in preds:
        _check_prediction(p, names, "review")
    import httpx

    setup = httpx.post(f"{controls_backend.url}/setup", json={"project": project.id, "schema": config}).json()
    assert {c["name"] for c in setup["coverage"] if c["predicted"]} == names


def test_label_studio_registers_the_backend_on_a_span_project_and_offsets_quote_the_text(ls, controls_backend):
    client = ls._ls
    tweets = wnut16()
    texts = tweets.texts[300:340]
    project = client.projects.create(title=f"hitl spans {time.time_ns()}"[:50], label_config=SPANS_CONFIG)
    task_ids = client.projects.import_tasks(project.id, request=[{"tweet": t} for t in texts],
                                            return_task_ids=True).task_ids
    assert client.ml.create(project=project.id, url=controls_backend.url, title="hitl spans").readable_state == \
        "Connected"
    client.actions.create(id="retrieve_tasks_predictions", project=project.id,
                          selected_items={"all": False, "included": task_ids})
    preds = client.predictions.list(project=project.id)
    assert sorted(p.task for p in preds) == sorted(task_ids)  # one each, none twice
    text_of = dict(zip(task_ids, texts))
    n_spans = 0
    for p in preds:
        text = text_of[p.task]
        for item in p.result:
            assert (item["from_name"], item["to_name"], item["type"]) == ("entities", "tweet", "labels")
            v = item["value"]
            assert v["text"] == text[v["start"]:v["end"]] and v["labels"][0] in ENTITIES  # offsets exact
            assert 0.0 <= item["score"] <= 1.0
            n_spans += 1
        assert 0.0 <= p.score <= 1.0
    assert n_spans > 0  # the tagger found entities in these 40 tweets


# -- Label Studio: the sync's push, answers pulled, settled, retrained -----------------------------


def _users(client, n):
    stamp = time.time_ns()
    return [client._ls.users.create(username=f"sets-{k}-{stamp}", email=f"sets{k}-{stamp}@example.com",
                                    password="pw-123456789") for k in range(n)]


def _loop(tmp_path, tool, spec, backend_url, texts, encoder):
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    store.items.ingest([{"id": f"rt-{i}", "text": t} for i, t in enumerate(texts)])
    sync = SyncService(store, spec, tool, HttpPredictor(backend_url))
    ctx = JobContext(store, spec, ModelStore(tmp_path / "models"), make_sync=lambda: sync, encoder=encoder)
    sync.predict_pass()
    sync.route_pass()
    assert sync.push_pass().counts["pushed"] > 0
    return store, sync, ctx


def test_a_multi_label_project_fed_by_the_sync_settles_label_by_label_and_retrains(tmp_path, ls, controls_backend,
                                                                                   rt_sample, encoder):
    spec = TaskSpec(name=f"sets ml {time.time_ns()}"[:50], text_field="snippet", overlap=3, routing=ROUTING,
                    thresholds={"adapt": False}, show_suggestion="always",
                    controls=[{"name": "topics", "labels": TOPICS, "multi_label": True}],
                    consensus={"min_agreement": 0.6})
    texts = rt_sample[0][500:530]
    store, sync, ctx = _loop(tmp_path, ls, spec, controls_backend.url, texts, encoder)
    project = int(sync.project)
    tasks = ls.find(sync.project)
    preds = ls._ls.predictions.list(project=project)
    assert len(preds) == len(tasks)  # one per pushed task, each with the set and its scores
    for p in preds:
        _check_prediction(p, {"topics"}, "text")  # a set the model thinks empty: an empty choices item
    text_of = {f"rt-{i}": t for i, t in enumerate(texts)}
    users = _users(ls, 3)
    answered = sorted(tasks.items())[:12]
    for ext, task in answered:
        truth = topics_of(text_of[ext])
        for k, user in enumerate(users):  # the third annotator adds "story" where it does not apply
            given = sorted(set(truth) | {"story"}) if k == 2 else truth
            ls.annotate(task, [{"from_name": "topics", "to_name": "text", "type": "choices",
                                "value": {"choices": given}}], completed_by=user.id)
    assert sync.pull_pass().counts["inserted"] == 36
    stored = store.annotations.list(tool="label_studio", project=sync.project)
    assert all(isinstance(a.value, list) for a in stored)
    done = consolidate_job(ctx)
    assert done["settled"] == 12 and done["invalid_answers"] == 0
    by_ext = {store.items.get(lb.item_id).external_id: lb for lb in store.labels.list()}
    for ext, _ in answered:
        assert json.loads(by_ext[ext].label) == sorted(topics_of(text_of[ext]))  # per-label majority
    result = retrain_job(ctx, force=True)
    assert result["promoted"] and result["n_train"] + result["n_test"] == 12
    assert control_store(ctx.models.root, "topics").current() == result["candidate"] == "v1"
    store.close()


def test_a_two_control_project_fed_by_the_sync_pulls_both_answers_and_retrains_each(tmp_path, ls, controls_backend,
                                                                                    rt_sample, encoder):
    spec = TaskSpec(name=f"sets two {time.time_ns()}"[:50], text_field="snippet", overlap=2, routing=ROUTING,
                    thresholds={"adapt": False}, show_suggestion="always", controls=[
                        {"name": "sentiment", "labels": ["fresh", "rotten"]},
                        {"name": "topics", "labels": TOPICS, "multi_label": True}])
    texts, truth = rt_sample[0][530:560], rt_sample[1][530:560]
    store, sync, ctx = _loop(tmp_path, ls, spec, controls_backend.url, texts, encoder)
    tasks = ls.find(sync.project)
    preds = ls._ls.predictions.list(project=int(sync.project))
    assert len(preds) == len(tasks)
    for p in preds:
        _check_prediction(p, {"sentiment", "topics"}, "text")
    users = _users(ls, 2)
    answered = sorted(tasks.items())[:10]
    for ext, task in answered:
        i = int(ext.split("-")[1])
        result = [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [truth[i]]}},
                  {"from_name": "topics", "to_name": "text", "type": "choices",
                   "value": {"choices": topics_of(texts[i])}}]
        for user in users:
            ls.annotate(task, result, completed_by=user.id)
    assert sync.pull_pass().counts["inserted"] == 20
    for a in store.annotations.list(tool="label_studio", project=sync.project):
        i = int(store.items.get(a.item_id).external_id.split("-")[1])
        assert a.value == [truth[i]] and a.extra == {"controls": {"topics": topics_of(texts[i])}}
    done = consolidate_job(ctx)
    assert done["settled"] == 10 and done["controls"] == {"topics": {"settled": 10}}
    result = retrain_job(ctx, force=True)
    assert result["promoted"] and ctx.models.current() == "v1"
    assert result["controls"]["topics"]["promoted"] and control_store(ctx.models.root, "topics").current() == "v1"
    store.close()


# -- Argilla: suggestions with per-label scores, responses pulled ----------------------------------


def _submit(rg_client, record_id, values, user_id):
    resp = rg_client.http_client.post(f"/api/v1/records/{record_id}/responses", json={
        "values": {name: {"value": v} for name, v in values.items()}, "status": "submitted", "user_id": str(user_id)})
    resp.raise_for_status()


def _suggestions(tool, dataset_name):
    dataset = tool.dataset(dataset_name)
    return {str(r.id): {s.question_name: s for s in r.suggestions} for r in dataset.records(with_suggestions=True)}


def test_argilla_multi_label_dataset_carries_per_label_scores_and_pulls_sets(tmp_path, argilla, controls_backend,
                                                                            rt_sample, encoder):
    tool = ArgillaTool(argilla.url, argilla.api_key)
    spec = TaskSpec(name=f"sets-ml-{time.time_ns()}", tool="argilla", text_field="snippet", routing=ROUTING,
                    thresholds={"adapt": False}, show_suggestion="always", overlap=2,
                    controls=[{"name": "topics", "labels": TOPICS, "multi_label": True}])
    texts = rt_sample[0][560:580]
    store, sync, ctx = _loop(tmp_path, tool, spec, controls_backend.url, texts, encoder)
    question = tool.dataset(sync.project).settings.questions["topics"]
    assert type(question).__name__ == "MultiLabelQuestion"
    preds = {store.items.get(p.item_id).external_id: p
             for p in store.predictions.list([it.id for it in store.items.list()])}
    suggestions = _suggestions(tool, sync.project)
    assert suggestions
    with_set = 0
    for ext, by_question in suggestions.items():
        chosen = json.loads(preds[ext].label)
        if not chosen:
            assert not by_question  # an empty set is not suggested
            continue
        with_set += 1
        s = by_question["topics"]
        assert s.value == [t for t in TOPICS if t in chosen] and s.agent == "hitl"
        assert s.score == pytest.approx([preds[ext].probabilities[t] for t in s.value], abs=1e-6)  # aligned
    assert with_set
    owner_ws = tool.dataset(sync.project).workspace.name
    users = [_annotator(tool, argilla.url, f"sets-ml-{k}-{time.time_ns()}", owner_ws) for k in range(2)]
    records = tool.find(sync.project)
    for ext, rid in sorted(records.items())[:5]:
        for user, client in users:
            _submit(client, rid, {"topics": topics_of(texts[int(ext.split("-")[1])]) or ["story"]}, user.id)
    assert sync.pull_pass().counts["inserted"] == 10
    for a in store.annotations.list(tool="argilla", project=sync.project):
        assert a.value == (topics_of(store.items.get(a.item_id).text) or ["story"]) and a.extra is None
    assert consolidate_job(ctx)["settled"] == 5
    store.close()


def test_argilla_two_label_questions_get_a_suggestion_each_and_both_answers_come_back(tmp_path, argilla,
                                                                                     controls_backend, rt_sample,
                                                                                     encoder):
    tool = ArgillaTool(argilla.url, argilla.api_key)
    spec = TaskSpec(name=f"sets-two-{time.time_ns()}", tool="argilla", text_field="snippet", routing=ROUTING,
                    thresholds={"adapt": False}, show_suggestion="always", overlap=1, controls=[
                        {"name": "sentiment", "labels": ["fresh", "rotten"]},
                        {"name": "length", "labels": ["long", "short"]}])
    texts, truth = rt_sample[0][580:600], rt_sample[1][580:600]
    store, sync, ctx = _loop(tmp_path, tool, spec, controls_backend.url, texts, encoder)
    questions = tool.dataset(sync.project).settings.questions
    assert [type(questions[n]).__name__ for n in ("sentiment", "length")] == ["LabelQuestion", "LabelQuestion"]
    preds = {store.items.get(p.item_id).external_id: p
             for p in store.predictions.list([it.id for it in store.items.list()])}
    suggestions = _suggestions(tool, sync.project)
    assert suggestions
    for ext, by_question in suggestions.items():
        p = preds[ext]
        length = p.probabilities["@controls"]["length"]
        assert by_question["sentiment"].value == p.label
        assert by_question["sentiment"].score == pytest.approx(p.confidence, abs=1e-6)
        assert by_question["length"].value == length["labels"][0]
        assert by_question["length"].score == pytest.approx(length["score"], abs=1e-6)
        assert np.isclose(sum(length["probabilities"].values()), 1.0)
    (user, client), = [_annotator(tool, argilla.url, f"sets-two-{time.time_ns()}",
                                  tool.dataset(sync.project).workspace.name)]
    records = tool.find(sync.project)
    for ext, rid in sorted(records.items())[:6]:
        i = int(ext.split("-")[1])
        _submit(client, rid, {"sentiment": truth[i], "length": "long" if len(texts[i]) > 120 else "short"}, user.id)
    assert sync.pull_pass().counts["inserted"] == 6
    for a in store.annotations.list(tool="argilla", project=sync.project):
        i = int(store.items.get(a.item_id).external_id.split("-")[1])
        assert a.value == [truth[i]]
        assert a.extra == {"controls": {"length": ["long" if len(texts[i]) > 120 else "short"]}}
    done = consolidate_job(ctx)
    assert done["settled"] == 6 and done["controls"] == {"length": {"settled": 6}}
    store.close()
