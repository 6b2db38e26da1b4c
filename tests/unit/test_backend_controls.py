"""The ML backend with models per control: one result per control, coverage, a root of controls only,
and a control's new version picked up without a restart (tiny random encoder: behaviour, not accuracy)."""

import shutil

import numpy as np
import pytest

from connector.control_models import control_store, save_multilabel_version
from connector.multilabel import MultiLabelClassifier
from ml_backend.service import ModelService
from ml_backend.settings import BackendSettings
from tests.unit.conftest import backend_client

TOPICS = ["long", "question", "film"]
TWO = ('<View><Text name="review" value="$snippet"/>'
       '<Choices name="sentiment" toName="review" choice="single-radio"><Choice value="fresh"/>'
       '<Choice value="rotten"/></Choices>'
       '<Choices name="topics" toName="review" choice="multiple"><Choice value="long"/><Choice value="question"/>'
       '<Choice value="film"/><Choice value="music"/></Choices>'
       '<TextArea name="note" toName="review"/></View>')
TOPICS_ONLY = ('<View><Text name="review" value="$snippet"/><Choices name="topics" toName="review" choice="multiple">'
               '<Choice value="long"/><Choice value="question"/><Choice value="film"/></Choices></View>')


def topic_sets(texts):
    """A documented rule: ``long`` over 120 characters, ``question`` with a '?', ``film`` naming film or movie."""
    return [[t for t, hit in (("long", len(x) > 120), ("question", "?" in x),
                              ("film", "film" in x.lower() or "movie" in x.lower())) if hit] for x in texts]


@pytest.fixture(scope="module")
def topics_clf(tiny_encoder, rt_sample):
    texts = rt_sample[0][:300]
    return MultiLabelClassifier(tiny_encoder, classes=TOPICS).fit(texts, topic_sets(texts))


@pytest.fixture(scope="module")
def roots(tmp_path_factory, tiny_model_root, tiny_model_dir, topics_clf):
    both = tmp_path_factory.mktemp("both")
    shutil.copytree(tiny_model_root, both, dirs_exist_ok=True)
    save_multilabel_version(control_store(both, "topics"), topics_clf, encoder_ref=str(tiny_model_dir), promote=True)
    only = tmp_path_factory.mktemp("only-controls")
    save_multilabel_version(control_store(only, "topics"), topics_clf, encoder_ref=str(tiny_model_dir), promote=True)
    return both, only


def _service(root):
    return ModelService(BackendSettings(model_root=root, reload_interval_s=0, torch_threads=1))


@pytest.fixture(scope="module")
def both_service(roots):
    s = _service(roots[0])
    yield s
    s.close()


def _tasks(*texts):
    return [{"id": i + 1, "data": {"snippet": t}} for i, t in enumerate(texts)]


def test_a_two_control_config_gets_one_result_per_control_with_per_label_scores(both_service, tmp_path, topics_clf):
    texts = [("A long, winding, beautifully shot film about memory and loss, with a score that lingers well "
              "after the credits roll?"), "Dull."]
    assert both_service._any_encoder() is both_service._controls["topics"].encoder  # one encoder, shared
    with backend_client(both_service, tmp_path) as c:
        r = c.post("/predict", json={"tasks": _tasks(*texts), "label_config": TWO})
        assert r.status_code == 200, r.text
        body = r.json()
        probs = topics_clf.predict_proba(texts)
        for res, p in zip(body["results"], probs):
            by_name = {item["from_name"]: item for item in res["result"]}
            assert set(by_name) == {"sentiment", "topics"}
            assert all((item["to_name"], item["type"]) == ("review", "choices") for item in res["result"])
            topics = by_name["topics"]
            expected = {label: float(q) for label, q in zip(topics_clf.classes_, p)}
            assert topics["meta"]["scores"] == pytest.approx(expected, abs=1e-6)
            assert set(topics["value"]["choices"]) == {k for k, q in expected.items() if q >= 0.5}
            assert topics["score"] == pytest.approx(float(topics_clf.task_score(p[None])[0]), abs=1e-6)
            assert by_name["sentiment"]["value"]["choices"][0] in ("fresh", "rotten")
            assert res["score"] == pytest.approx(min(topics["score"], by_name["sentiment"]["score"]))
            assert res["model_version"] == "sentiment:v1+topics:v1"
        setup = c.post("/setup", json={"project": 1, "schema": TWO}).json()
        cov = {item["name"]: item for item in setup["coverage"]}
        assert cov["sentiment"]["predicted"] and cov["sentiment"]["source"] == "main"
        assert cov["topics"]["predicted"] and cov["topics"]["source"] == "topics"
        assert cov["topics"]["missing"] == ["music"]  # in the config, not in the model
        assert not cov["note"]["predicted"] and "TextArea" in cov["note"]["reason"]
        assert any("'music'" in w for w in setup["warnings"])


def test_v1_predict_and_versions_report_each_control(both_service, tmp_path):
    with backend_client(both_service, tmp_path) as c:
        (p,) = c.post("/v1/predict", json={"texts": ["Is this a film?"]}).json()["predictions"]
        assert p["label"] in ("fresh", "rotten") and p["model_version"] == "v1"
        topics = p["controls"]["topics"]
        assert topics["kind"] == "multi" and topics["model_version"] == "v1" and set(topics["probabilities"]) == set(TOPICS)
        assert set(topics["labels"]) == {k for k, q in topics["probabilities"].items() if q >= 0.5}
        versions = c.get("/versions").json()
        assert versions["serving"] == "v1" and versions["controls"]["topics"] == {
            "versions": ["v1"], "current": "v1", "serving": "v1"}


def test_a_root_of_controls_only_serves_them_and_says_what_it_cannot(roots, tmp_path):
    s = _service(roots[1])
    try:
        assert s.ready and s.model_version == "topics:v1"
        with backend_client(s, tmp_path) as c:
            assert c.get("/health").json()["status"] == "UP"
            r = c.post("/predict", json={"tasks": _tasks("Why?"), "label_config": TOPICS_ONLY})
            assert r.status_code == 200 and r.json()["results"][0]["result"][0]["from_name"] == "topics"
            # a config whose only control has no model: 422 saying so, never an empty result
            r = c.post("/predict", json={"tasks": _tasks("Why?"), "label_config": TWO.replace('"topics"', '"mood"')})
            assert r.status_code == 422
            detail = r.json()["detail"]
            assert "nothing will be predicted" in detail and "no head for this control" in detail
            (p,) = c.post("/v1/predict", json={"texts": ["Why?"]}).json()["predictions"]
            assert "label" not in p and set(p["controls"]) == {"topics"}
    finally:
        s.close()


def test_a_newly_promoted_control_version_is_served_without_a_restart(roots, tmp_path_factory, tiny_model_dir,
                                                                      topics_clf, rt_sample):
    root = tmp_path_factory.mktemp("swap")
    shutil.copytree(roots[1], root, dirs_exist_ok=True)
    s = _service(root)
    try:
        before = s.control_versions
        texts = rt_sample[0][300:400]
        refit = MultiLabelClassifier(topics_clf.encoder, classes=TOPICS, thresholds=0.3).fit(texts, topic_sets(texts))
        save_multilabel_version(control_store(root, "topics"), refit, encoder_ref=str(tiny_model_dir), promote=True)
        assert s.reload_if_changed() == "topics:v2"
        assert before == {"topics": "v1"} and s.control_versions == {"topics": "v2"}
        assert s._controls["topics"].thresholds() == {label: 0.3 for label in TOPICS}
        assert s.reload_if_changed() is None
        save_multilabel_version(control_store(root, "mood"), refit, encoder_ref=str(tiny_model_dir), promote=True)
        assert s.reload_if_changed() == "mood:v1" and s._controls["mood"].encoder is s._controls["topics"].encoder
        np.testing.assert_array_equal(s._controls["mood"].model.coef_, refit.coef_)
    finally:
        s.close()


# -- entity spans ---------------------------------------------------------------------------------

SPANS_CONFIG = ('<View><Text name="review" value="$snippet"/>'
                '<Labels name="entities" toName="review"><Label value="person"/><Label value="geo-loc"/>'
                '<Label value="company"/><Label value="weather"/></Labels>'
                '<Choices name="sentiment" toName="review"><Choice value="fresh"/><Choice value="rotten"/></Choices>'
                '</View>')


@pytest.fixture(scope="module")
def span_root(tmp_path_factory, tiny_model_root, tiny_model_dir, tiny_encoder):
    """The tiny sentiment model at the root and a span tagger under controls/entities whose head is
    pushed to tag every word ``person`` (so that spans come out of a random encoder)."""
    from connector.control_models import save_span_version
    from connector.datasets import wnut16
    from connector.span_model import SpanTagger

    ds = wnut16()
    keep = ("person", "geo-loc", "company")
    spans = [[s for s in found if s[2] in keep] for found in ds.spans[:40]]
    tagger = SpanTagger(tiny_encoder, labels=list(keep), min_calibration_texts=10**6).fit(ds.texts[:40], spans)
    tagger.intercept_ = tagger.intercept_.copy()
    tagger.intercept_[tagger.tags.index("B-person")] += 50.0
    root = tmp_path_factory.mktemp("spans")
    shutil.copytree(tiny_model_root, root, dirs_exist_ok=True)
    save_span_version(control_store(root, "entities"), tagger, encoder_ref=str(tiny_model_dir), promote=True)
    return root, tagger


def test_a_span_control_gets_labels_results_whose_offsets_quote_the_text(span_root, tmp_path):
    root, tagger = span_root
    texts = ["Ann met Bob in Paris 🎉 at\r\nACME café.", "Ω 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and 👩‍👩‍👧 families"]
    s = _service(root)
    try:
        assert s._controls["entities"].kind == "spans"
        assert s._controls["entities"].encoder is s._any_encoder()  # the main model's encoder, shared
        with backend_client(s, tmp_path) as c:
            r = c.post("/predict", json={"tasks": _tasks(*texts), "label_config": SPANS_CONFIG})
            assert r.status_code == 200, r.text
            direct = tagger.predict(texts)
            for text, res, pred in zip(texts, r.json()["results"], direct):
                found = [item for item in res["result"] if item["type"] == "labels"]
                assert found and all(item["from_name"] == "entities" and item["to_name"] == "review" for item in found)
                for item in found:
                    v = item["value"]
                    assert v["text"] == text[v["start"]:v["end"]] and v["labels"] == ["person"]
                assert [(i["value"]["start"], i["value"]["end"]) for i in found] == [(x.start, x.end) for x in pred.spans]
                sentiment = next(item for item in res["result"] if item["from_name"] == "sentiment")
                assert res["score"] == pytest.approx(min(pred.score, sentiment["score"]))
            cov = {c_["name"]: c_ for c_ in c.post("/setup", json={"schema": SPANS_CONFIG}).json()["coverage"]}
            assert cov["entities"]["predicted"] and cov["entities"]["missing"] == ["weather"]
            (p,) = c.post("/v1/predict", json={"texts": texts[:1]}).json()["predictions"]
            ents = p["controls"]["entities"]
            assert ents["kind"] == "spans" and ents["spans"] and 0 <= ents["missed"] <= 1
            assert all(texts[0][x["start"]:x["end"]].strip() for x in ents["spans"])
    finally:
        s.close()
