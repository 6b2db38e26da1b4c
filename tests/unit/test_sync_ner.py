"""An NER project: a span control as the primary (routed) one, over the in-memory tool. Its items
route on the span task score (nothing auto-accepted without a certified threshold), are pushed with
span pre-annotations only, settle by span majority into the labels table, retrain a span tagger in
the control's own store, and have their span agreement in the metrics snapshot."""

import json

import pytest

from connector.control_models import control_store, load_version
from connector.label_sets import decode_spans
from connector.labeling_config import first_text_control, parse_config
from connector.model_store import ModelStore
from connector.snapshots import AgreementSnapshot, CountsSnapshot, read_latest
from connector.store import StateStore
from connector.task_spec import TaskSpec
from connector.tools.offline import OfflineTool
from sync.decisions import DecisionError, DecisionService
from sync.jobs import JobContext, consensus_policy, consolidate_job, metrics_job, retrain_job
from sync.service import SyncService
from sync.span_export import export_spans
from tests.unit.test_sync_spans import _text, _truth

CONTROLS = [{"name": "entities", "kind": "spans", "labels": ["PER", "LOC"]}]
ROUTING = {"accept_threshold": 0.6, "spot_check_rate": 0.0, "audit_share": 0.0}


class SpanPredictor:
    """/v1/predict for a span-only config: no main model, one span control finding the true spans;
    every third text's spans scored 0.95, the others 0.5."""

    def __init__(self) -> None:
        self.by_text: dict[str, int] = {}

    def predict(self, texts):
        out = []
        for t in texts:
            i = self.by_text[t]
            score = 0.95 if i % 3 == 0 else 0.5
            spans = [{"start": s, "end": e, "label": lab, "score": score} for s, e, lab in _truth(i)]
            out.append({"truncated": False, "label": None, "controls": {
                "entities": {"kind": "spans", "spans": spans, "score": score, "missed": 0.05, "model_version": "v3"}}})
        return out


def _spec(**kw) -> TaskSpec:
    return TaskSpec(name="ner", controls=CONTROLS, routing=ROUTING, show_suggestion="always", **kw)


def _setup(tmp_path, n=18, **kw):
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    predictor = SpanPredictor()
    texts = [_text(i) for i in range(n)]
    predictor.by_text = {t: i for i, t in enumerate(texts)}
    store.items.ingest([{"id": f"e{i}", "text": t} for i, t in enumerate(texts)])
    tool, spec = OfflineTool(), _spec(**kw)
    return store, tool, spec, SyncService(store, spec, tool, predictor)


def _index(store, item_id):
    return int(store.items.get(item_id).external_id[1:])


def test_a_span_control_can_be_the_primary_one():
    spec = _spec()
    assert spec.spans_primary and spec.labels == ["PER", "LOC"] and not spec.multi_label
    assert spec.model_dir(spec.primary) == "entities"  # a store of its own, as any span model
    parsed = parse_config(spec.label_config())
    assert not parsed.choices and [c.from_name for c in parsed.spans] == ["entities"]
    assert first_text_control(spec.label_config()).from_name == "entities"
    with_sentiment = TaskSpec(name="x", controls=[*CONTROLS, {"name": "sentiment", "labels": ["pos", "neg"]}])
    assert with_sentiment.spans_primary and [c.name for c in with_sentiment.secondary] == ["sentiment"]
    with pytest.raises(ValueError, match="span task routes on its task score"):
        SyncService(StateStore("sqlite://"), _spec().model_copy(update={"routing": {"label_overrides": {"PER": 0.9}}}),
                    OfflineTool())


def test_ner_items_route_on_the_span_score_push_spans_settle_retrain_and_export(tmp_path, tiny_encoder):
    store, tool, spec, sync = _setup(tmp_path, overlap=3)
    assert sync.predict_pass().counts["predicted"] == 18
    preds = {p.item_id: p for p in store.predictions.list([it.id for it in store.items.list()])}
    for item_id, p in preds.items():
        assert decode_spans(p.label) == [tuple(t) for t in _truth(_index(store, item_id))]
        assert p.confidence in (0.95, 0.5) and p.model_version == "v3"
    counts = sync.route_pass().counts
    decisions = store.decisions.latest()
    # no certified threshold: the confident third waits as suggestions, the unsure go to review
    deferred = {i for i, d in decisions.items() if d.action == "defer"}
    assert counts["auto_accept"] == 0 and deferred == {i for i, p in preds.items() if p.confidence == 0.95}
    assert {d.reason for i, d in decisions.items() if i in deferred} == {"uncertified"}
    sync.push_pass()
    (key,) = tool.projects
    project = tool.projects[key]
    assert len(project.items) == 12
    for it in project.items.values():
        i = int(it.external_id[1:])
        assert {r["type"] for r in it.result} == {"labels"} and it.score == pytest.approx(0.5)
        assert sorted([r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]] for r in it.result) == _truth(i)
        assert all(r["value"]["text"] == _text(i)[r["value"]["start"]:r["value"]["end"]] for r in it.result)
    for it in list(project.items.values()):
        i = int(it.external_id[1:])
        for who in ("a", "b"):
            tool.annotate(key, it.external_id, who, [], extra={"controls": {"entities": _truth(i)}})
        tool.annotate(key, it.external_id, "c", [], extra={"controls": {"entities": []}})  # outvoted
    sync.pull_pass()
    ctx = JobContext(store, spec, ModelStore(tmp_path / "models"), make_sync=lambda: sync, encoder=tiny_encoder)
    done = consolidate_job(ctx)
    assert done["settled"] == 12 and done["unsettled"] == 0
    labels = store.labels.list()
    assert len(labels) == 12 and {lb.method for lb in labels} == {"span_majority"}
    for lb in labels:
        assert json.loads(lb.label) == _truth(_index(store, lb.item_id)) and lb.n_answers == 3
    assert consolidate_job(ctx)["settled"] == 12  # again: the same labels, nothing new on record
    changes = store.history.list(kind="consensus_changed")
    assert len(changes) == 12
    result = retrain_job(ctx, force=True)
    assert result["promoted"] and result["candidate"] == "v1" and result["n_train"] + result["n_test"] == 12
    own = control_store(ctx.models.root, "entities")
    assert own.current() == "v1" and ctx.models.current() is None
    assert load_version(own, encoder=tiny_encoder).kind == "spans"
    metrics_job(ctx)
    assert read_latest(store, CountsSnapshot).snapshot.labels == {"PER": 12, "LOC": 12}  # spans per class
    agreement = read_latest(store, AgreementSnapshot).snapshot
    ents = agreement.controls["entities"]
    # pairs (a, b) agree fully, (a, c) and (b, c) not at all: the mean pairwise span F1 is 1/3
    assert ents.kind == "spans" and agreement.n_items == 12 and ents.span_f1["micro"] == pytest.approx(1 / 3)
    from connector.report import build_report

    html = build_report(store, control_store(ctx.models.root, "entities"))
    assert "entities" in html and "PER" in html and "span F1" in html
    out = tmp_path / "ner.jsonl"
    assert export_spans(store, spec, "entities", out, consensus_policy(spec)) == 12
    # the whole-set export: each settled item's spans with their text, in JSONL, CSV and Parquet alike
    import pyarrow.parquet as pq

    from connector.export import write
    from sync.export_controls import task_export_rows

    rows = task_export_rows(store, spec)
    assert len(rows) == 12
    files = write(rows, tmp_path / "labels", "all")
    jsonl = [json.loads(line) for line in files[0].read_text(encoding="utf-8").splitlines()]
    parquet = pq.read_table(files[2]).to_pylist()
    import csv

    with files[1].open(encoding="utf-8") as fh:
        csv_rows = list(csv.DictReader(fh))
    for rec, pa_rec, csv_rec in zip(jsonl, parquet, csv_rows, strict=True):
        i = int(rec["item_id"][1:])
        expected = [{"start": s, "end": e, "label": lab, "text": _text(i)[s:e]} for s, e, lab in _truth(i)]
        assert rec["label"] == pa_rec["label"] == json.loads(csv_rec["label"]) == expected
        assert rec["source"] == "human_consensus" and rec["model_label"] == expected
        assert sorted(a["annotator"] for a in rec["answers"]) == ["a", "b", "c"]
        assert {a["annotator"]: a["label"] for a in pa_rec["answers"]}["c"] == []
    # hitl report reads the NER project's versions from the control's own store
    from typer.testing import CliRunner

    from hitl.cli import app

    task = tmp_path / "task.toml"
    task.write_text('name = "ner"\n[[controls]]\nname = "entities"\nkind = "spans"\nlabels = ["PER", "LOC"]\n')
    report = tmp_path / "report.html"
    ran = CliRunner().invoke(app, ["report", "--out", str(report), "--model-root", str(tmp_path / "models")],
                             env={"HITL_DB_URL": f"sqlite:///{tmp_path / 'state.db'}", "HITL_TASK": str(task)})
    assert ran.exit_code == 0, ran.output
    assert str(tmp_path / "models" / "controls" / "entities") in report.read_text(encoding="utf-8")
    with pytest.raises(DecisionError, match="entity-span task"):
        from connector.decisions import DecisionRequest

        DecisionService(store, spec).decide(DecisionRequest(idempotency_key="k1", input={"text": "Ada in Oslo"}))


def test_a_ner_item_waits_for_its_answers_and_a_skip_is_no_vote(tmp_path):
    store, tool, spec, sync = _setup(tmp_path, n=6, overlap=2)
    sync.predict_pass()
    sync.route_pass()
    sync.push_pass()
    (key,) = tool.projects
    items = list(tool.projects[key].items.values())
    first, second = items[0], items[1]
    tool.annotate(key, first.external_id, "a", [], extra={"controls": {"entities": _truth(int(first.external_id[1:]))}})
    tool.annotate(key, second.external_id, "a", [], status="skipped")
    sync.pull_pass()
    ctx = JobContext(store, spec, ModelStore(tmp_path / "models"), make_sync=lambda: sync)
    done = consolidate_job(ctx)
    assert done == {"items": 1, "settled": 0, "unsettled": 1, "sent_back": 0, "invalid_answers": 0,
                    "adjudicated": 0, "to_adjudication": 0}
    (row,) = store.labels.list(status=None)
    assert row.status == "unsettled" and row.reason == "1 of 2 answers" and row.label is None
    tool.annotate(key, first.external_id, "b", [], extra={"controls": {"entities": _truth(int(first.external_id[1:]))}})
    sync.pull_pass()
    assert consolidate_job(ctx)["settled"] == 1


def test_settled_labels_are_counted_per_class_for_spans_and_sets():
    from sync.jobs import label_counts

    assert label_counts(_spec(), ['[[0,3,"PER"],[5,9,"LOC"]]', "[]", '[[1,2,"PER"]]', None]) == {
        "PER": 2, "LOC": 1, "(no entity)": 1}
    sets = TaskSpec(name="t", labels=["a", "b"], multi_label=True)
    assert label_counts(sets, ['["a","b"]', '["a"]', "[]"]) == {"a": 2, "b": 1, "(no label)": 1}
    assert label_counts(TaskSpec(name="t", labels=["a", "b"]), ["a", "a", "b"]) == {"a": 2, "b": 1}


def test_a_span_tie_is_sent_back_once_then_settles_by_the_third_answer(tmp_path):
    store, tool, spec, sync = _setup(tmp_path, n=3, overlap=2)
    sync.predict_pass()
    sync.route_pass()
    sync.push_pass()
    (key,) = tool.projects
    it = next(iter(tool.projects[key].items.values()))
    truth = _truth(int(it.external_id[1:]))
    tool.annotate(key, it.external_id, "a", [], extra={"controls": {"entities": truth}})
    tool.annotate(key, it.external_id, "b", [], extra={"controls": {"entities": truth[:1]}})  # one span: 1 of 2
    sync.pull_pass()
    ctx = JobContext(store, spec, ModelStore(tmp_path / "models"), make_sync=lambda: sync)
    assert consolidate_job(ctx)["sent_back"] == 1
    assert [w[1:] for w in tool.projects[key].sent_back] == [(3, "span_tie")]
    (row,) = store.labels.list(status=None)
    assert row.status == "unsettled" and row.reason == "span_tie"
    assert consolidate_job(ctx)["sent_back"] == 0  # asked already at this answer count
    assert [e.kind for e in store.history.list(kind="sent_back")] == ["sent_back"]
    tool.annotate(key, it.external_id, "c", [], extra={"controls": {"entities": truth}})
    sync.pull_pass()
    assert consolidate_job(ctx)["settled"] == 1
    assert json.loads(store.labels.list()[0].label) == truth


@pytest.mark.parametrize("per_item_overlap", [True, False])
def test_a_span_tie_at_max_answers_goes_to_adjudication_and_the_verdict_settles_it(tmp_path, per_item_overlap):
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    predictor = SpanPredictor()
    predictor.by_text = {_text(i): i for i in range(3)}
    store.items.ingest([{"id": f"e{i}", "text": _text(i)} for i in range(3)])
    tool = OfflineTool(per_item_overlap=per_item_overlap)
    spec = _spec(overlap=2, consensus={"max_answers": 2 if per_item_overlap else 5})
    sync = SyncService(store, spec, tool, predictor)
    sync.predict_pass()
    sync.route_pass()
    sync.push_pass()
    (key,) = tool.projects
    it = next(iter(tool.projects[key].items.values()))
    i = int(it.external_id[1:])
    truth = _truth(i)
    tool.annotate(key, it.external_id, "a", [], extra={"controls": {"entities": truth}})
    tool.annotate(key, it.external_id, "b", [], extra={"controls": {"entities": []}})
    sync.pull_pass()
    ctx = JobContext(store, spec, ModelStore(tmp_path / "models"), make_sync=lambda: sync)
    done = consolidate_job(ctx)
    assert done["to_adjudication"] == 1 and done["sent_back"] == 0
    adjudication = next(k for k in tool.projects if k != key)
    (pushed,) = tool.projects[adjudication].items.values()
    shown = pushed.data["hitl_answers"]
    name, place = _text(i)[truth[0][0]:truth[0][1]], _text(i)[truth[1][0]:truth[1][1]]
    assert shown.splitlines() == [f"a: {name} ({truth[0][2]}), {place} ({truth[1][2]})", "b: no entity"]
    assert consolidate_job(ctx)["to_adjudication"] == 0  # pushed once
    tool.annotate(adjudication, pushed.external_id, "judge", [], extra={"controls": {"entities": truth[1:]}})
    done = consolidate_job(ctx)
    assert done["adjudicated"] == 1 and done["settled"] == 1
    (row,) = store.labels.list()
    assert json.loads(row.label) == truth[1:] and row.method == "adjudicated" and row.reason == "adjudicated by judge"
    assert [e.actor for e in store.history.list(kind="adjudicated")] == ["judge"]


def test_a_promoted_span_tagger_gives_the_threshold_review_its_held_out_evidence(tmp_path, tiny_encoder):
    from connector.snapshots import RetrainSnapshot, ThresholdsSnapshot

    store, _, spec, _ = _setup(tmp_path, n=40)
    spec = spec.model_copy(update={"thresholds": spec.thresholds.model_copy(update={
        "evidence": "all", "min_evidence": 1, "min_n": 1, "target_error": 0.5, "delta": 0.2})})
    store.labels.save([{"item_id": it.id, "label": json.dumps(_truth(int(it.external_id[1:])), separators=(",", ":")),
                        "status": "settled", "method": "seed", "n_answers": 1, "reason": ""}
                       for it in store.items.list()])
    ctx = JobContext(store, spec, ModelStore(tmp_path / "models"), encoder=tiny_encoder)
    result = retrain_job(ctx, force=True)
    assert result["promoted"] and result["n_test"] > 0
    evidence = read_latest(store, RetrainSnapshot).snapshot.evidence
    assert len(evidence.confidence) == len(evidence.correct) == len(evidence.external_id) == result["n_test"]
    model = load_version(control_store(ctx.models.root, "entities"), encoder=tiny_encoder).model
    by_ext = {it.external_id: it for it in store.items.list()}
    for ext, conf, right in zip(evidence.external_id, evidence.confidence, evidence.correct, strict=True):
        (p,) = model.predict([by_ext[ext].text])
        assert conf == pytest.approx(p.score)
        assert right == float(sorted(list(s.key()) for s in p.spans) == _truth(int(ext[1:])))
    review = read_latest(store, ThresholdsSnapshot)
    assert review is not None and review.snapshot.n_evidence == result["n_test"]
