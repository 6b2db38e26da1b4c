"""The loop for a multi-label task and a task of two controls, over the in-memory tool: predictions
stored per control, routing on the task score, one suggestion result per control, answers pulled
control by control, label sets settled label by label, each control retrained in its own store."""

import json

import numpy as np
import pytest

from connector.control_models import control_store, load_version
from connector.label_sets import decode_label
from connector.model_store import ModelStore
from connector.snapshots import QualitySnapshot, read_latest
from connector.store import StateStore
from connector.task_spec import CONTROLS_KEY, TaskSpec
from connector.tools.argilla import label_suggestions
from connector.tools.offline import OfflineTool
from sync.controls import apply_set_verdicts, control_answers, set_conflict_summaries, settle_control
from sync.jobs import JobContext, consolidate_job, metrics_job, retrain_job
from sync.service import SyncService
from tests.support.stub_encoder import StubEncoder

TOPICS = ["sport", "politics", "tech"]
WORDS = {"sport": "goal match", "politics": "vote party", "tech": "chip code"}


def _text(i: int) -> str:
    chosen = [t for k, t in enumerate(TOPICS) if (i >> k) & 1]
    return " ".join(WORDS[t] for t in chosen) + f" item {i}"


def _truth(i: int) -> list[str]:
    return [t for k, t in enumerate(TOPICS) if (i >> k) & 1]


class FakePredictor:
    """The backend's /v1/predict answer: a main model for ``sentiment`` (when asked) and a model of
    its own for each control in ``controls``, each choosing the true topics with a fixed score."""

    def __init__(self, controls: list[str], *, main: bool = False, score: float = 0.8) -> None:
        self.controls, self.main, self.score = controls, main, score
        self.by_text: dict[str, int] = {}

    def predict(self, texts):
        out = []
        for t in texts:
            i = self.by_text[t]
            p = {"truncated": False}
            if self.main:
                fresh = 0.9 if i % 2 else 0.3
                p |= {"label": "fresh" if fresh >= 0.5 else "rotten", "confidence": max(fresh, 1 - fresh),
                      "probabilities": {"fresh": fresh, "rotten": 1 - fresh}, "model_version": "v1",
                      "entropy": 0.0, "margin": 0.0}
            p["controls"] = {name: {"kind": "multi", "labels": _truth(i),
                                    "probabilities": {t: (0.9 if t in _truth(i) else 0.1) for t in TOPICS},
                                    "score": self.score if i % 3 else 0.97, "model_version": "v7"}
                             for name in self.controls}
            out.append(p)
        return out


def _setup(tmp_path, spec, predictor, n=24):
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    texts = [_text(i) for i in range(n)]
    predictor.by_text = {t: i for i, t in enumerate(texts)}
    store.items.ingest([{"id": f"e{i}", "text": t} for i, t in enumerate(texts)])
    tool = OfflineTool()
    sync = SyncService(store, spec, tool, predictor)
    ctx = JobContext(store, spec, ModelStore(tmp_path / "models"), make_sync=lambda: sync, encoder=StubEncoder())
    return store, tool, sync, ctx


def _index(store, item_id):
    return int(store.items.get(item_id).external_id[1:])


ROUTING = {"accept_threshold": 0.95, "spot_check_rate": 0.0, "audit_share": 0.0}


def test_a_multi_label_task_stores_sets_routes_on_the_task_score_and_retrains_its_own_store(tmp_path):
    spec = TaskSpec(name="topics", labels=TOPICS, multi_label=True, routing=ROUTING, thresholds={"adapt": False},
                    overlap=3)
    assert spec.model_dir(spec.primary) == "label"  # a multi-label control: a store of its own
    store, tool, sync, ctx = _setup(tmp_path, spec, FakePredictor(["label"]))
    assert sync.predict_pass().counts["predicted"] == 24
    preds = {p.item_id: p for p in store.predictions.list([it.id for it in store.items.list()])}
    for item_id, p in preds.items():
        assert decode_label(p.label) == sorted(_truth(_index(store, item_id)))
        assert p.model_version == "v7" and set(p.probabilities) == set(TOPICS)
    counts = sync.route_pass().counts
    accepted = {d.item_id for d in store.decisions.latest().values() if d.action == "auto_accept"}
    assert counts["auto_accept"] == len(accepted) == 8  # the task score 0.97 of every third item, at 0.95
    assert all(preds[i].confidence == 0.97 for i in accepted)
    sync.push_pass()
    (project,) = tool.projects.values()
    shown = [it for it in project.items.values() if it.result]
    assert shown  # some go without (blind share), the others carry the set
    for it in shown:
        (item,) = it.result
        i = int(it.external_id[1:])
        assert item["from_name"] == "label" and item["type"] == "choices"
        assert item["value"]["choices"] == [t for t in TOPICS if t in _truth(i)]  # config order
        assert item["meta"]["scores"] == {t: (0.9 if t in _truth(i) else 0.1) for t in TOPICS}
        assert it.score == pytest.approx(0.8)
    pushed = {it.external_id for it in project.items.values()}
    for ext in pushed:  # per-label majority: annotator c adds a wrong "tech" the others leave out
        i = int(ext[1:])
        tool.annotate(project_key(tool), ext, "a", _truth(i))
        tool.annotate(project_key(tool), ext, "b", _truth(i))
        tool.annotate(project_key(tool), ext, "c", sorted(set(_truth(i)) | {"tech"}))
    sync.pull_pass()
    done = consolidate_job(ctx)
    assert done["settled"] == len(pushed) and done["invalid_answers"] == 0
    labels = store.labels.list()
    for lb in labels:
        assert lb.label == json.dumps(sorted(_truth(_index(store, lb.item_id))), separators=(",", ":"))
        # the least of its labels' agreements: "tech" splits 2-1 unless it truly applies
        assert lb.agreement == pytest.approx(1.0 if "tech" in _truth(_index(store, lb.item_id)) else 2 / 3)
    metrics_job(ctx)  # each annotator's whole sets against the settled ones
    quality = {q.annotator: q for q in read_latest(store, QualitySnapshot).snapshot.annotators}
    with_tech = sum("tech" in _truth(_index(store, lb.item_id)) for lb in labels)
    assert quality["a"].consensus_agreement == 1.0 and quality["a"].consensus_n == len(labels)
    assert quality["c"].consensus_agreement == pytest.approx(with_tech / len(labels)) and with_tech < len(labels)
    result = retrain_job(ctx, force=True)
    assert result["promoted"] and result["candidate"] == "v1"
    own = control_store(ctx.models.root, "label")
    assert own.current() == "v1" and ctx.models.current() is None  # nothing at the root: no single-label model
    loaded = load_version(own, encoder=StubEncoder())
    assert loaded.kind == "multi" and loaded.labels == sorted(TOPICS)


def project_key(tool):
    return next(iter(tool.projects))


def test_two_controls_predict_push_pull_settle_and_retrain_each(tmp_path):
    spec = TaskSpec(name="two", routing=ROUTING, thresholds={"adapt": False}, overlap=2, controls=[
        {"name": "sentiment", "labels": ["fresh", "rotten"]},
        {"name": "topics", "labels": TOPICS, "multi_label": True}])
    assert spec.model_dir(spec.primary) is None and spec.model_dir(spec.secondary[0]) == "topics"
    store, tool, sync, ctx = _setup(tmp_path, spec, FakePredictor(["topics"], main=True), n=40)
    sync.predict_pass()
    p = store.predictions.list([store.items.list()[3].id])[0]
    assert p.label == "fresh" and p.probabilities["fresh"] == 0.9
    assert p.probabilities[CONTROLS_KEY]["topics"]["labels"] == _truth(3)
    sync.route_pass()
    sync.push_pass()
    project = project_key(tool)
    shown = [it for it in tool.projects[project].items.values() if it.result]
    assert shown
    for it in shown:
        by_name = {r["from_name"]: r for r in it.result}
        i = int(it.external_id[1:])
        assert set(by_name) == {"sentiment", "topics"}  # an empty set too: an empty choices item
        assert by_name["sentiment"]["value"]["choices"] == ["fresh" if i % 2 else "rotten"]
        assert it.score == pytest.approx(min(r["score"] for r in it.result))
    for ext in {it.external_id for it in tool.projects[project].items.values()}:
        i = int(ext[1:])
        for who in ("a", "b"):
            tool.annotate(project, ext, who, ["fresh" if i % 2 else "rotten"],
                          extra={"controls": {"topics": _truth(i)}})
    sync.pull_pass()
    stored = store.annotations.list()
    assert stored and all(a.extra["controls"]["topics"] == _truth(_index(store, a.item_id)) for a in stored)
    done = consolidate_job(ctx)
    assert done["settled"] == len({a.item_id for a in stored})
    assert done["controls"]["topics"]["settled"] == done["settled"]
    assert {lb.label for lb in store.labels.list()} == {"fresh", "rotten"}  # the primary control's, as it was
    result = retrain_job(ctx, force=True)
    assert result["promoted"] and ctx.models.current() == "v1"  # the primary: the model root, single-label
    assert result["controls"]["topics"]["promoted"] and control_store(ctx.models.root, "topics").current() == "v1"
    assert load_version(control_store(ctx.models.root, "topics"), encoder=StubEncoder()).kind == "multi"


def test_a_multi_label_task_refuses_routing_rules_that_name_one_label(tmp_path):
    spec = TaskSpec(name="t", labels=TOPICS, multi_label=True, routing={"label_overrides": {"sport": 0.99}})
    with pytest.raises(ValueError, match="task score"):
        SyncService(StateStore(f"sqlite:///{tmp_path / 's.db'}"), spec, OfflineTool())


def test_a_declared_control_the_labeling_config_lacks_is_refused(tmp_path):
    spec = TaskSpec(name="t", controls=[{"name": "sentiment", "labels": ["a", "b"]}, {"name": "topics", "labels": ["x"],
                                                                                       "multi_label": True}],
                    label_studio={"label_config": '<View><Text name="t" value="$text"/><Choices name="sentiment" '
                                                  'toName="t"><Choice value="a"/><Choice value="b"/></Choices></View>'})
    with pytest.raises(ValueError, match=r"no <Choices> named \['topics'\]"):
        SyncService(StateStore(f"sqlite:///{tmp_path / 's.db'}"), spec, OfflineTool())


# -- the pieces -----------------------------------------------------------------------------------


class _A:
    def __init__(self, item_id, annotator, value, extra=None, status="submitted", at=0):
        self.item_id, self.annotator, self.value, self.extra, self.status = item_id, annotator, value, extra, status
        self.remote_updated_at = at


def test_another_controls_answers_come_from_extra_and_settle_by_the_tasks_policy():
    spec = TaskSpec(name="t", controls=[{"name": "sentiment", "labels": ["pos", "neg"]},
                                        {"name": "topics", "labels": TOPICS, "multi_label": True},
                                        {"name": "tone", "labels": ["calm", "angry"]}])
    rows = [_A(1, "a", ["pos"], {"controls": {"topics": ["sport"], "tone": ["calm"]}}),
            _A(1, "b", ["pos"], {"controls": {"topics": ["sport", "tech"], "tone": []}}),
            _A(1, "c", ["neg"], {"controls": {"topics": ["sport"], "tone": ["calm"]}}),
            _A(2, "a", ["neg"], None),
            _A(3, "a", [], None, status="skipped")]
    tone = control_answers(rows, spec, spec.control_specs[2])
    assert [(a.item_id, a.value) for a in tone] == [(1, ["calm"]), (1, ["calm"]), (3, [])]  # empty: no answer
    topics = control_answers(rows, spec, spec.control_specs[1])
    assert [a.value for a in topics if a.item_id == 1] == [["sport"], ["sport", "tech"], ["sport"]]
    from connector.consolidation import ConsensusPolicy

    policy = ConsensusPolicy(min_answers=2, min_agreement=0.6)
    assert settle_control(rows, spec, spec.control_specs[1], policy) == {1: ["sport"]}
    assert settle_control(rows, spec, spec.control_specs[2], policy) == {1: "calm"}
    assert settle_control(rows, spec, spec.control_specs[0], policy) == {1: "pos"}


def test_an_adjudicators_set_settles_its_item_and_conflicts_read_one_set_a_line():
    from connector.consolidation_sets import set_answer_table

    table = set_answer_table([_A(5, "alice", ["sport", "tech"]), _A(5, "bob", ["sport"]),
                              _A(5, "carol", ["tech", "sport"]), _A(6, "dan", [])], TOPICS)
    summary = set_conflict_summaries(table, [5, 6])
    assert summary[5].splitlines() == ["sport, tech: 2 (alice, carol)", "sport: 1 (bob)"]
    assert summary[6] == "(none): 1 (dan)"
    base = [{"item_id": 5, "label": None, "status": "unsettled", "method": "majority", "reason": "tie"},
            {"item_id": 6, "label": None, "status": "unsettled", "method": "majority", "reason": "tie"}]
    rows, invalid = apply_set_verdicts(base, {5: _A(5, "judge", ["tech", "sport"]), 6: _A(6, "judge", ["weather"])},
                                       TOPICS)
    assert rows[0]["label"] == '["sport","tech"]' and rows[0]["method"] == "adjudicated"
    assert rows[1]["status"] == "unsettled" and invalid[0][0] == 6


def test_argilla_suggestions_carry_aligned_per_label_scores_for_a_multi_label_question():
    import argilla as rg

    def q(cls):  # the SDK's question classes (their constructor wants a client); only the class is read
        return object.__new__(cls)

    questions = {"sentiment": q(rg.LabelQuestion), "topics": q(rg.MultiLabelQuestion)}
    result = [{"from_name": "sentiment", "type": "choices", "value": {"choices": ["pos"]}, "score": 0.8},
              {"from_name": "topics", "type": "choices", "value": {"choices": ["sport", "tech"]}, "score": 0.6,
               "meta": {"scores": {"sport": 0.9, "politics": 0.2, "tech": 0.6}}},
              {"from_name": "mood", "type": "choices", "value": {"choices": ["x"]}}]
    assert label_suggestions(result, 0.6, questions) == [("sentiment", "pos", 0.8), ("topics", ["sport", "tech"], [0.9, 0.6])]
    one = {"label": q(rg.MultiLabelQuestion)}
    # one question: a result of another control name, or plain labels, is its suggestion; one score per value
    assert label_suggestions([{"from_name": "x", "type": "choices", "value": {"choices": ["tech"]}}], 0.7, one) == [
        ("label", ["tech"], [0.7])]
    assert label_suggestions(["sport", "tech"], 0.5, one) == [("label", ["sport", "tech"], [0.5, 0.5])]
    assert label_suggestions([{"from_name": "label", "type": "choices", "value": {"choices": []}}], 0.5, one) == []


def test_label_studio_reads_each_control_of_an_answer(monkeypatch):
    from connector.tools.label_studio import LabelStudioTool

    tool = LabelStudioTool("http://127.0.0.1:9", "token")
    spec = TaskSpec(name="t", controls=[{"name": "sentiment", "labels": ["pos", "neg"]},
                                        {"name": "topics", "labels": TOPICS, "multi_label": True}])
    assert tool._known(7, spec) == "7"
    result = [{"from_name": "topics", "to_name": "text", "type": "choices", "value": {"choices": ["tech", "sport"]}},
              {"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": ["neg"]}}]
    assert tool.answer_of(7, result, {}) == (["neg"], {"controls": {"topics": ["tech", "sport"]}})
    assert tool.answer_of(8, result, {}) == (["tech", "sport", "neg"], None)  # a project of one control: as before


def test_task_spec_controls_are_checked():
    with pytest.raises(ValueError, match="labels are the first control's"):
        TaskSpec(name="t", labels=["x", "y"], controls=[{"name": "a", "labels": ["p", "q"]}])
    with pytest.raises(ValueError, match="a name of its own"):
        TaskSpec(name="t", controls=[{"name": "a", "labels": ["p", "q"]}, {"name": "a", "labels": ["r", "s"]}])
    with pytest.raises(ValueError, match="cannot name a model directory"):
        TaskSpec(name="t", controls=[{"name": "../a", "labels": ["p", "q"]}])
    # many long labels are fine: a settled set is stored as TEXT (store 0008)
    assert len(TaskSpec(name="t", labels=[f"a-rather-long-label-{i}" for i in range(20)], multi_label=True).labels) == 20
    spec = TaskSpec(name="t", controls=[{"name": "a", "labels": ["p", "q"]},
                                        {"name": "b", "labels": ["r"], "multi_label": True}])
    assert spec.labels == ["p", "q"] and not spec.multi_label and [c.name for c in spec.secondary] == ["b"]
    assert 'name="b"' in spec.label_config() and 'choice="multiple"' in spec.label_config()
    assert np.array_equal([c.name for c in TaskSpec(name="u", labels=["p", "q"]).control_specs], ["label"])
