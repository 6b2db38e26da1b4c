"""Entity spans through the sync, over the in-memory tool: a span control's predictions stored beside
the primary control's, pushed as Label Studio ``labels`` results (and Argilla span suggestions with
per-span scores), answers pulled with offsets checked and repaired, spans settled by majority,
retrained as a ``spans`` version promoted on held-out span F1, exported as JSONL with offsets."""

import json

import pytest

from connector.control_models import control_store, load_version
from connector.label_sets import decode_spans, encode_spans
from connector.labeling_config import parse_config
from connector.model_store import ModelStore
from connector.retraining_spans import retrain_spans
from connector.spans import Span
from connector.store import StateStore
from connector.task_spec import CONTROLS_KEY, TaskSpec
from connector.tools.label_studio import spans_of
from connector.tools.offline import OfflineTool
from sync.controls import control_answers, settle_control, settle_spans, stored_label
from sync.jobs import JobContext, consensus_policy, retrain_job
from sync.service import SyncService
from sync.span_export import export_spans, span_control

CONTROLS = [{"name": "sentiment", "labels": ["positive", "negative"]},
            {"name": "entities", "kind": "spans", "labels": ["PER", "LOC"]}]
ROUTING = {"accept_threshold": 0.99, "spot_check_rate": 0.0, "audit_share": 0.0}
NAMES, PLACES = ["Ada", "Bob", "Chloé", "Dan"], ["Paris", "Oslo", "Kyiv"]


def _text(i: int) -> str:
    return f"😀 {NAMES[i % 4]} went to {PLACES[i % 3]} (item {i})."


def _truth(i: int) -> list[list]:
    t = _text(i)
    name, place = NAMES[i % 4], PLACES[i % 3]
    return sorted([[t.index(name), t.index(name) + len(name), "PER"], [t.index(place), t.index(place) + len(place), "LOC"]])


def _spec(**kw) -> TaskSpec:
    return TaskSpec(name="ents", controls=CONTROLS, routing=ROUTING, thresholds={"adapt": False},
                    show_suggestion="always", **kw)


class FakePredictor:
    """/v1/predict: a sentiment control and a span control finding the true spans at fixed scores."""

    def __init__(self) -> None:
        self.by_text: dict[str, int] = {}

    def predict(self, texts):
        out = []
        for t in texts:
            i = self.by_text[t]
            spans = [{"start": s, "end": e, "label": lab, "score": 0.9 if lab == "PER" else 0.7}
                     for s, e, lab in _truth(i)]
            out.append({"truncated": False, "label": "positive", "confidence": 0.6, "model_version": "v1",
                        "probabilities": {"positive": 0.6, "negative": 0.4}, "entropy": 0.0, "margin": 0.0,
                        "controls": {"entities": {"kind": "spans", "spans": spans, "score": 0.65, "missed": 0.1, "model_version": "v2"}}})
        return out


def test_a_spans_control_gets_a_labels_tag_and_can_be_routed_on_too():
    spec = _spec()
    parsed = parse_config(spec.label_config())
    (labels,) = parsed.spans
    assert labels.from_name == "entities" and labels.labels == ("PER", "LOC") and labels.to_name == "text"
    assert [c.from_name for c in parsed.choices] == ["sentiment"]
    assert spec.model_dir(spec.control_specs[1]) == "entities"
    assert TaskSpec(name="x", controls=list(reversed(CONTROLS))).spans_primary  # an NER project (test_sync_ner.py)
    with pytest.raises(ValueError, match="not multi_label"):
        TaskSpec(name="x", controls=[CONTROLS[0], {**CONTROLS[1], "multi_label": True}])


def test_span_sets_are_stored_sorted_and_read_back():
    stored = encode_spans([(7, 10, "LOC"), Span(2, 5, "PER"), {"start": 7, "end": 10, "label": "LOC"}])
    assert stored == '[[2,5,"PER"],[7,10,"LOC"]]'
    assert decode_spans(stored) == [(2, 5, "PER"), (7, 10, "LOC")]
    assert encode_spans([]) == "[]" and decode_spans("[]") == []
    with pytest.raises(ValueError):
        decode_spans('["PER"]')


def _setup(tmp_path, n=12):
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    predictor = FakePredictor()
    texts = [_text(i) for i in range(n)]
    predictor.by_text = {t: i for i, t in enumerate(texts)}
    store.items.ingest([{"id": f"e{i}", "text": t} for i, t in enumerate(texts)])
    tool, spec = OfflineTool(), _spec(overlap=3)
    sync = SyncService(store, spec, tool, predictor)
    return store, tool, spec, sync


def test_predictions_and_pushed_suggestions_carry_each_span_with_its_score(tmp_path):
    store, tool, _, sync = _setup(tmp_path)
    sync.predict_pass()
    pred = store.predictions.list([store.items.list()[0].id])[0]
    entry = pred.probabilities[CONTROLS_KEY]["entities"]
    assert entry["kind"] == "spans" and entry["missed"] == 0.1 and entry["model_version"] == "v2"
    sync.route_pass()
    sync.push_pass()
    (project,) = tool.projects.values()
    assert len(project.items) == 12
    for it in project.items.values():
        i = int(it.external_id[1:])
        text = _text(i)
        choices = [r for r in it.result if r["type"] == "choices"]
        spans = [r for r in it.result if r["type"] == "labels"]
        assert [r["from_name"] for r in choices] == ["sentiment"]
        assert sorted([r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]] for r in spans) == _truth(i)
        for r in spans:
            assert r["from_name"] == "entities" and r["to_name"] == "text"
            assert r["value"]["text"] == text[r["value"]["start"]:r["value"]["end"]]  # offsets quote the text
            assert r["score"] == (0.9 if r["value"]["labels"] == ["PER"] else 0.7)
        assert it.score == pytest.approx(0.6)  # the least sure control: sentiment 0.6 < spans 0.65


def test_argilla_gets_a_span_suggestion_with_one_score_per_span():
    import argilla as rg

    from connector.tools.argilla import label_suggestions, span_answer

    text = _text(1)
    def q(cls):  # the SDK's question classes (their constructor wants a client); only the class is read
        return object.__new__(cls)

    questions = {"sentiment": q(rg.LabelQuestion), "entities": q(rg.SpanQuestion)}
    result = [{"from_name": "sentiment", "type": "choices", "value": {"choices": ["positive"]}, "score": 0.6},
              *[{"from_name": "entities", "type": "labels", "score": sc,
                 "value": {"start": s, "end": e, "text": text[s:e], "labels": [lab]}}
                for (s, e, lab), sc in zip(_truth(1), [0.7, 0.9], strict=True)]]
    got = {name: (value, score) for name, value, score in label_suggestions(result, 0.6, questions)}
    assert got["sentiment"] == ("positive", 0.6)
    value, scores = got["entities"]
    assert value == [{"start": s, "end": e, "label": lab} for s, e, lab in _truth(1)]
    assert scores == [0.7, 0.9] and len(scores) == len(value)  # aligned, as argilla-server 2.8 requires
    rg.Suggestion("entities", value, score=scores)  # the SDK takes it
    # a response read back: out-of-range spans dropped
    assert span_answer(text, [*value, {"start": 3, "end": 999, "label": "PER"}]) == [list(t.values()) for t in value]


def test_label_studio_span_answers_are_checked_against_the_text_and_repaired():
    text = "🙂🙂 Ada met Bob"
    ada, bob = text.index("Ada"), text.index("Bob")
    result = [  # Ada counted in UTF-16 units (each emoji is two), Bob right, one span quoting text not there
        {"from_name": "entities", "type": "labels", "value": {"start": ada + 2, "end": ada + 5, "text": "Ada",
                                                              "labels": ["PER"]}},
        {"from_name": "entities", "type": "labels", "value": {"start": bob, "end": bob + 3, "text": "Bob",
                                                              "labels": ["PER"]}},
        {"from_name": "entities", "type": "labels", "value": {"start": 0, "end": 3, "text": "Zed", "labels": ["PER"]}},
        {"from_name": "other", "type": "labels", "value": {"start": 0, "end": 1, "text": "🙂", "labels": ["X"]}},
    ]
    got = spans_of(result, "entities", text)
    assert got == [[ada, ada + 3, "PER"], [bob, bob + 3, "PER"]]
    assert all(text[s:e] in ("Ada", "Bob") for s, e, _ in got)


class _A:
    def __init__(self, item_id, annotator, spans, status="submitted", at="2026-01-01"):
        self.item_id, self.annotator, self.status, self.remote_updated_at = item_id, annotator, status, at
        self.value, self.extra = ["positive"], {"controls": {"entities": spans}}


def test_spans_settle_by_majority_skips_do_not_vote_and_the_latest_answer_counts():
    spec = _spec()
    control = spec.control_specs[1]
    policy = consensus_policy(spec).model_copy(update={"min_answers": 2})
    answers = [
        _A(1, "a", [[0, 3, "PER"], [8, 12, "LOC"]]),
        _A(1, "b", [[0, 3, "PER"], [8, 13, "LOC"]]),   # LOC: overlap match, a's boundaries chosen (a, c agree)
        _A(1, "c", [[0, 3, "LOC"], [8, 12, "LOC"]]),   # c's first span: outvoted
        _A(1, "c", [[0, 3, "PER"]], status="skipped"),  # a skip says nothing about spans
        _A(2, "a", [[0, 2, "PER"]], at="2026-01-01"),
        _A(2, "a", [], at="2026-01-02"),                # a changed their answer: nothing
        _A(2, "b", [[0, 2, "PER"]]),                    # one of two: not kept
        _A(3, "a", [[0, 2, "PER"]]),                    # one answer: below min_answers
    ]
    assert len(control_answers(answers, spec, control)) == 7
    settled = settle_control(answers, spec, control, policy)
    assert settled == {1: [[0, 3, "PER"], [8, 12, "LOC"]], 2: []}
    assert stored_label(control, settled[1]) == '[[0,3,"PER"],[8,12,"LOC"]]'
    only3 = [a for a in control_answers(answers, spec, control) if a.item_id == 3]
    assert settle_spans(only3) == {3: [[0, 2, "PER"]]}  # min_answers 1: a lone annotator's spans


def test_pulled_span_answers_settle_retrain_a_span_version_and_export(tmp_path, tiny_encoder):
    store, tool, spec, sync = _setup(tmp_path, n=30)
    sync.predict_pass()
    sync.route_pass()
    sync.push_pass()
    (key,) = tool.projects
    for it in list(tool.projects[key].items.values()):
        i = int(it.external_id[1:])
        for who in ("a", "b"):
            tool.annotate(key, it.external_id, who, ["positive"], extra={"controls": {"entities": _truth(i)}})
        tool.annotate(key, it.external_id, "c", ["positive"], extra={"controls": {"entities": []}})  # outvoted
    sync.pull_pass()
    ctx = JobContext(store, spec, ModelStore(tmp_path / "models"), make_sync=lambda: sync, encoder=tiny_encoder)
    control = spec.control_specs[1]
    from sync.adjudication import split_answers

    settled = settle_control(split_answers(store, store.annotations.list())[0], spec, control, consensus_policy(spec))
    assert len(settled) == 30
    assert all(sorted(v) == _truth(_index(store, i)) for i, v in settled.items())
    result = retrain_job(ctx, force=True)
    ents = result["controls"]["entities"]
    assert ents["promoted"] and ents["candidate"] == "v1" and ents["n_train"] + ents["n_test"] == 30
    models = control_store(ctx.models.root, "entities")
    loaded = load_version(models, encoder=tiny_encoder)
    assert loaded.kind == "spans" and loaded.labels == ["PER", "LOC"]
    assert "span_f1" in models.meta("v1").metrics
    # the export: one row per settled item, offsets quoting the text, spaCy's tuples beside them
    out = tmp_path / "spans.jsonl"
    assert export_spans(store, spec, "entities", out, consensus_policy(spec)) == 30
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    for row in rows:
        i = int(row["id"][1:])
        assert row["text"] == _text(i) and [list(e) for e in row["entities"]] == _truth(i)
        assert all(s["text"] == row["text"][s["start"]:s["end"]] for s in row["spans"])
    with pytest.raises(ValueError, match="not a spans"):
        span_control(spec, "sentiment")


def _index(store, item_id):
    return int(store.items.get(item_id).external_id[1:])


def test_a_span_candidate_is_promoted_only_when_its_held_out_f1_is_higher(tmp_path, tiny_encoder):
    texts = [_text(i) for i in range(40)]
    truth = [_truth(i) for i in range(40)]
    ext = [f"e{i}" for i in range(40)]
    models = ModelStore(tmp_path / "m")
    first = retrain_spans(texts, truth, ext, labels=["PER", "LOC"], models=models, encoder=tiny_encoder,
                          test_fraction=0.3, C=10.0)
    assert first.promoted and first.n_test > 0 and models.current() == "v1"
    # the same data again: the same tagger, no higher F1: kept as v2, not promoted
    again = retrain_spans(texts, truth, ext, labels=["PER", "LOC"], models=models, encoder=tiny_encoder,
                          test_fraction=0.3, C=10.0)
    assert again.candidate == "v2" and not again.promoted and models.current() == "v1"
    assert again.candidate_metrics["span_f1"] == pytest.approx(again.current_metrics["span_f1"])
    # spans all dropped (labels the control does not have): too few to train on, nothing saved
    none = retrain_spans(texts, [[[0, 1, "ORG"]]] * 40, ext, labels=["PER", "LOC"], models=models,
                         encoder=tiny_encoder)
    assert none.candidate is None and not none.promoted and models.versions() == ["v1", "v2"]


def test_hitl_export_control_writes_the_settled_spans_as_jsonl(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from hitl.cli import app

    store, tool, _, sync = _setup(tmp_path, n=6)
    sync.predict_pass()
    sync.route_pass()
    sync.push_pass()
    (key,) = tool.projects
    for it in list(tool.projects[key].items.values())[:4]:
        i = int(it.external_id[1:])
        for who in ("a", "b", "c"):
            tool.annotate(key, it.external_id, who, ["positive"], extra={"controls": {"entities": _truth(i)}})
    sync.pull_pass()
    task = tmp_path / "task.toml"
    task.write_text('name = "ents"\noverlap = 3\n[[controls]]\nname = "sentiment"\nlabels = ["positive", "negative"]\n'
                    '[[controls]]\nname = "entities"\nkind = "spans"\nlabels = ["PER", "LOC"]\n')
    monkeypatch.setenv("HITL_DB_URL", store.url)
    monkeypatch.setenv("HITL_TASK", str(task))
    runner = CliRunner()
    done = runner.invoke(app, ["export", "--control", "entities", "--out", str(tmp_path / "ents.jsonl")])
    assert done.exit_code == 0, done.output
    assert "4 items" in done.output
    rows = [json.loads(line) for line in (tmp_path / "ents.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len({r["id"] for r in rows}) == 4
    assert all([list(e) for e in r["entities"]] == _truth(int(r["id"][1:])) for r in rows)
    bad = runner.invoke(app, ["export", "--control", "sentiment", "--out", str(tmp_path / "x.jsonl")],
                        env={"COLUMNS": "200"})
    assert bad.exit_code != 0 and "not a spans" in bad.output
