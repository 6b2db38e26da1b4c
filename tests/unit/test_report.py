"""The HTML report: renders on an empty store, plots every section of a filled one, escapes text."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from connector.calibration import softmax
from connector.classifier import TextClassifier
from connector.model_store import ModelStore
from connector.report import SECTION_TITLES, accuracy_vs_review, build_report, write_report
from connector.store import StateStore
from connector.thresholds import choose_accept_threshold

IMG = '<img src="data:image/png;base64,'
VOID = {"meta", "img", "br", "hr", "link", "input"}


class _Balance(HTMLParser):
    """Checks that every non-void element is closed, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def _assert_valid_html(text: str) -> None:
    assert text.startswith("<!DOCTYPE html>")
    parser = _Balance()
    parser.feed(text)
    parser.close()
    assert not parser.errors and not parser.stack, (parser.errors[:5], parser.stack)


def _store(tmp_path: Path, name: str = "s.db") -> StateStore:
    store = StateStore(f"sqlite:///{tmp_path}/{name}")
    store.migrate()
    return store


def _open_figures() -> list[int]:
    import matplotlib.pyplot as plt

    return plt.get_fignums()


# ------------------------------------------------------------------------------------------------ the curve


def test_accuracy_vs_review_on_a_hand_case():
    # confidences 0.9 (right), 0.6 (wrong), 0.7 (right), 0.55 (right): ascending 0.55 R, 0.6 W, 0.7 R, 0.9 R
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]])
    y = np.array([0, 1, 1, 1])
    rates, acc = accuracy_vs_review(probs, y)
    np.testing.assert_allclose(rates, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(acc, [0.75, 0.75, 1.0, 1.0, 1.0])
    assert acc[0] == (probs.argmax(1) == y).mean() and acc[-1] == 1.0


def test_accuracy_vs_review_is_monotone_and_ends_at_one():
    rng = np.random.default_rng(0)
    probs = softmax(rng.normal(size=(300, 3)) * 2)
    y = rng.integers(0, 3, 300)
    rates, acc = accuracy_vs_review(probs, y)
    assert len(rates) == len(acc) == 301
    assert acc[0] == pytest.approx((probs.argmax(1) == y).mean()) and acc[-1] == 1.0
    assert np.all(np.diff(acc) >= 0) and np.all(np.diff(acc) <= 1 / 300 + 1e-12)


def test_accuracy_vs_review_refuses_bad_input():
    with pytest.raises(ValueError):
        accuracy_vs_review(np.zeros((0, 2)), np.zeros(0))
    with pytest.raises(ValueError):
        accuracy_vs_review(np.full((3, 2), 0.5), np.zeros(2))


# ------------------------------------------------------------------------------------------------ empty store


def test_an_empty_store_renders_every_section_with_no_data_lines(tmp_path):
    with _store(tmp_path) as store:
        text = build_report(store, ModelStore(tmp_path / "models"), title="empty <loop>")
    _assert_valid_html(text)
    for i, heading in enumerate(SECTION_TITLES, 1):
        assert f"<h2>{i}. {heading}</h2>" in text
    assert text.count("no data yet") == len(SECTION_TITLES) - 1  # every section but the summary
    assert IMG not in text and "<script" not in text
    assert "<title>empty &lt;loop&gt;</title>" in text
    assert _open_figures() == []


# ------------------------------------------------------------------------------------------------ filled store


def _retrain_payload(rng: np.random.Generator, n: int = 240, k: int = 3) -> dict:
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.6  # a decent model...
    raw, cal = softmax(logits * 2.5), softmax(logits * 2.5, 2.0)  # ...overconfident before scaling
    metrics = {"accuracy": float((cal.argmax(1) == y).mean()), "macro_f1": 0.7, "ece": 0.03, "log_loss": 0.6,
               "n": n, "ece_uncalibrated": 0.12}
    conf = cal.max(1)
    return {"candidate": "v2", "current": "v1", "promoted": True, "reason": "log_loss 0.6 vs current 0.7 (better)",
            "n_train": 960, "n_test": n, "encoded": 30, "candidate_metrics": metrics,
            "current_metrics": metrics | {"accuracy": 0.65, "log_loss": 0.7},
            "evidence": {"confidence": conf.tolist(), "correct": (cal.argmax(1) == y).astype(float).tolist()},
            "reliability": {"y": y.tolist(), "uncalibrated": raw.tolist(), "calibrated": cal.tolist()},
            "n_labels": 1200}


def _fill(store: StateStore, root: Path) -> ModelStore:
    rng = np.random.default_rng(1)
    retrain = _retrain_payload(rng)
    store.snapshots.add("retrain", retrain)
    conf = np.array(retrain["evidence"]["confidence"])
    correct = np.array(retrain["evidence"]["correct"]).astype(bool)
    choice = choose_accept_threshold(conf, correct, target_error=0.1, delta=0.1,
                                     pool_confidence=rng.uniform(0.34, 1.0, 2000))
    assert choice.curve  # the synthetic evidence is good enough to test some thresholds
    store.snapshots.add("thresholds", choice.to_dict() | {"adapt": True, "target_error": 0.1, "delta": 0.1})
    names = ["ann", "<b>eve</b>", "bob"]
    store.snapshots.add("agreement", {
        "n_items": 150, "n_annotators": 3, "n_classes": 3, "n_answers": 400, "annotators": names,
        "labels": ["pos", "neg", "neu"], "percent_agreement": 0.81, "fleiss_kappa": 0.62, "krippendorff_alpha": 0.63,
        "cohen_kappa": [[1.0, 0.55, 0.7], [0.55, 1.0, None], [0.7, None, 1.0]], "mean_cohen_kappa": 0.625,
        "pair_counts": [[150, 60, 90], [60, 100, 0], [90, 0, 150]]})
    store.snapshots.add("quality", {"annotators": [
        {"annotator": "ann", "answers": 150, "gold_n": 12, "gold_correct": 11, "gold_accuracy": 11 / 12,
         "consensus_n": 120, "consensus_agreement": 0.9, "flagged": False},
        {"annotator": "<b>eve</b>", "answers": 100, "gold_n": 10, "gold_correct": 5, "gold_accuracy": 0.5,
         "consensus_n": 80, "consensus_agreement": 0.6, "flagged": True},
        {"annotator": "bob", "answers": 150, "gold_n": 0, "gold_correct": 0, "gold_accuracy": None,
         "consensus_n": 0, "consensus_agreement": None, "flagged": False},
    ], "flagged": ["<b>eve</b>"]})
    for step in range(1, 5):
        store.snapshots.add("counts", {
            "states": {"routed": 100 - 20 * step, "consolidated": 40 * step},
            "decisions": {"review": 30 + step, "auto_accept": 70 - step},
            "labels": {"pos": 20 * step, "neg": 15 * step, "neu": 5 * step}, "human_labels": 40 * step})
    store.snapshots.add("model", {"current": "v2"})
    run = store.job_runs.claim("retrain", "slot-1", "host")
    store.job_runs.finish(run, "failed", error="boom <script>alert(1)</script>")
    run = store.job_runs.claim("metrics", "slot-1", "host")
    store.job_runs.finish(run, "ok", detail={"items": 150})

    models = ModelStore(root)
    x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    clf = TextClassifier(None, calibration="none").fit_embeddings(x, ["a", "b"] * 10)
    models.save(clf, metrics={"accuracy": 0.65, "ece": 0.05, "ece_uncalibrated": 0.1, "log_loss": 0.7,
                              "n_train": 800, "n_test": 200, "dataset": "rotten_tomatoes"},
                encoder_ref="default", promote=True)
    models.save(clf, metrics={"held_out": retrain["candidate_metrics"], "current_held_out": retrain["current_metrics"],
                              "current": "v1", "promoted": True, "decision": retrain["reason"],
                              "n_train": 960, "n_test": 240},
                encoder_ref="default", parent="v1", promote=True)
    return models


def test_a_filled_store_gets_a_plot_in_every_section_but_the_summary(tmp_path):
    with _store(tmp_path) as store:
        models = _fill(store, tmp_path / "models")
        text = build_report(store, models)
    _assert_valid_html(text)
    sections = re.findall(r'<section id="s\d+"><h2>\d+\. ([^<]+)</h2>(.*?)</section>', text, flags=re.DOTALL)
    assert [title for title, _ in sections] == list(SECTION_TITLES)
    per_section = {title: body.count(IMG) for title, body in sections}
    assert per_section == {title: int(title != "Summary") for title in SECTION_TITLES}
    assert text.count(IMG) == 7 and "no data yet" not in text
    assert _open_figures() == []  # every figure closed


def test_the_report_escapes_text_and_marks_flagged_annotators_and_the_current_version(tmp_path):
    with _store(tmp_path) as store:
        models = _fill(store, tmp_path / "models")
        text = build_report(store, models)
    assert "<b>eve</b>" not in text and "<script>" not in text
    assert "&lt;b&gt;eve&lt;/b&gt;" in text and "boom &lt;script&gt;" in text
    flagged_rows = re.findall(r'<tr class="flagged"><td>(.*?)</td>', text)
    assert '&lt;b&gt;eve&lt;/b&gt; <span class="badge flagged">flagged</span>' in flagged_rows
    assert not any(row.startswith(("ann", "bob")) for row in flagged_rows)
    assert re.search(r'<tr class="current"><td>v2 <span class="badge current">current</span></td>', text)
    assert text.count('<span class="badge current">') == 1
    # the summary: served version, threshold, flagged annotators, job failures
    summary = text.split('<section id="s2">')[0]
    assert "current model version</b></td><td>v2" in summary
    assert "confidence ≥" in summary and "&lt;b&gt;eve&lt;/b&gt;" in summary
    assert re.search(r"<td>retrain</td><td class=\"num\">1</td><td class=\"num\">1</td>", summary)


def test_write_report_creates_the_folder_and_returns_the_path(tmp_path):
    with _store(tmp_path) as store:
        path = write_report(store, ModelStore(tmp_path / "models"), tmp_path / "out" / "r.html")
    assert path == tmp_path / "out" / "r.html"
    _assert_valid_html(path.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------ CLI


def test_the_cli_writes_the_report(tmp_path):
    from hitl.cli import app

    out = tmp_path / "reports" / "hitl.html"
    with _store(tmp_path, "cli.db") as store:
        models = _fill(store, tmp_path / "models")
        assert models.current() == "v2"
    result = CliRunner().invoke(app, ["report", "--out", str(out), "--model-root", str(tmp_path / "models")],
                                env={"HITL_DB_URL": f"sqlite:///{tmp_path}/cli.db"})
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    text = out.read_text(encoding="utf-8")
    assert text.count(IMG) == 7 and "v2" in text


def test_the_summary_names_the_auto_accept_rule_in_force(tmp_path):
    from connector.task_spec import TaskSpec

    adapt = TaskSpec(name="t", labels=["a", "b"])
    fixed = TaskSpec(name="t", labels=["a", "b"], routing={"accept_threshold": 0.97}, thresholds={"adapt": False})
    with _store(tmp_path) as store:
        models = ModelStore(tmp_path / "models")
        assert "nothing is auto-accepted until a threshold review certifies" in build_report(store, models, spec=adapt)
        uncertified = build_report(store, models, spec=fixed)
        assert "uncertified" in uncertified and "confidence ≥ 0.97" in uncertified
        store.snapshots.add("thresholds", {"threshold": 0.93, "meets_target": True, "error_ucb": 0.04})
        certified = build_report(store, models, spec=adapt)
        assert "certified</span> confidence ≥ 0.93" in certified and "uncertified" not in certified


def test_the_threshold_section_shows_what_the_checks_found_and_a_pause(tmp_path):
    with _store(tmp_path) as store:
        models = ModelStore(tmp_path / "models")
        assert "No answered spot check, audit or gold item yet" in build_report(store, models)
        store.snapshots.add("checks", {"rows": [
            {"kind": "spot_check", "model_version": "v2", "label": "*", "n": 40, "correct": 30, "accuracy": 0.75,
             "lower": 0.588, "upper": 0.873}], "model_version": "v2", "paused": True, "note": "10 wrong of 40"})
        text = build_report(store, models)
    assert "auto-accept paused" in text and "spot checks (auto-accepted items)" in text
    assert "75.0%" in text or "75 %" in text or "75%" in text


def test_the_summary_tells_the_stopping_rule(tmp_path):
    from connector.snapshots import write_snapshot
    from connector.stopping import StoppingPolicy, advance

    def summary(store: StateStore) -> str:
        text = build_report(store, ModelStore(tmp_path / "models"))
        _assert_valid_html(text)
        return text.split('<section id="s2">')[0]

    with _store(tmp_path) as store:
        assert "stopping rule</b></td><td>no retraining has predicted the stop set yet" in summary(store)
        policy, members = StoppingPolicy(kappa=0.99, window=2), [(f"e{i}", "h") for i in range(300)]
        snap = None
        for version in ("v1", "v2<x>", "v3"):
            snap = advance(snap, candidate=version, members=members, predictions=[0] * 150 + [1] * 150,
                           labels=["a", "b"], policy=policy, n_labels=40)
            write_snapshot(store, snap)
            if version == "v2<x>":
                halfway = summary(store)
        fired = summary(store)
    assert "not yet: kappa 1.000 over the last 1 retraining, 1 in a row at &gt;= 0.99 (2 needed)" in halfway
    assert "v2&lt;x&gt;" in halfway and "badge current\">fired" not in halfway
    assert ('<span class="badge current">fired</span> kappa 1.000, 1.000 over the last 2 retrainings: more labels '
            "are unlikely to change the model (stop set of 300 items; candidate v3, 40 labels;") in fired
