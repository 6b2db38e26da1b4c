"""The metrics job's agreement for a label-set primary control and for the task's other controls
(one label, label sets, entity spans): the snapshot's numbers are the reference functions' on the
same answers, with non-current items and adjudicators' answers left out; the report and /metrics
show them; an old snapshot without them still reads."""

from __future__ import annotations

import math
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from connector.agreement_sets import krippendorff_alpha_masi, per_label_agreement
from connector.consolidation import agreement_snapshot, answer_table
from connector.consolidation_sets import set_answer_table
from connector.model_store import ModelStore
from connector.report import build_report
from connector.snapshots import AgreementSnapshot, read_latest
from connector.span_consensus import pairwise_span_agreement
from connector.store import StateStore
from connector.task_spec import TaskSpec
from sync.adjudication import ADJUDICATION_OF
from sync.jobs import JobContext, metrics_job
from sync.metrics import SyncMetricsCollector
from sync.webhooks import PullRequests, create_webhook_app
from tests.unit.test_metrics import _get, _scrape
from tests.unit.test_report import _assert_valid_html

TOPICS = ["sport", "politics", "tech"]
T0 = datetime(2026, 1, 1, tzinfo=UTC)

# item -> annotator -> label set (the primary control of a multi-label task)
SETS = {
    "e0": {"a": ["sport"], "b": ["sport"], "c": ["sport", "tech"]},
    "e1": {"a": ["politics"], "b": ["politics", "tech"], "c": ["politics"]},
    "e2": {"a": [], "b": [], "c": ["tech"]},
    "e3": {"a": ["sport", "politics"], "b": ["sport", "politics"]},
    "e4": {"a": ["tech"], "b": ["tech"], "c": ["tech"]},
    "e5": {"a": ["sport"], "c": ["politics"]},
}
# the other controls of a task of four: item -> annotator -> (sentiment, urgency, topics, entities)
CONTROLS = {
    "e0": {"a": ("pos", "low", ["sport"], [[0, 4, "PER"], [10, 15, "ORG"]]),
           "b": ("pos", "low", ["sport"], [[0, 4, "PER"]]),
           "c": ("neg", "high", ["sport", "tech"], [[0, 4, "PER"], [10, 15, "ORG"]])},
    "e1": {"a": ("neg", "high", ["politics"], [[2, 6, "ORG"]]),
           "b": ("neg", "high", ["politics", "tech"], [[2, 6, "ORG"]]),
           "c": ("neg", "low", ["politics"], [[2, 7, "ORG"]])},
    "e2": {"a": ("pos", "low", [], []), "b": ("pos", "high", [], [[5, 9, "PER"]])},
    "e3": {"a": ("neg", "low", ["tech"], [[1, 3, "PER"], [6, 9, "ORG"]]),
           "b": ("pos", "low", ["tech"], [[1, 3, "PER"], [6, 9, "ORG"]]),
           "c": ("neg", "low", ["tech", "sport"], [[1, 3, "PER"]])},
}


class _Rows:
    """Stores annotations and keeps, as plain rows, which of them the agreement should count."""

    def __init__(self, store: StateStore) -> None:
        self.store, self.n = store, 0
        self.counted: list[Any] = []
        self.everything: list[Any] = []

    def add(self, item_id: int, annotator: str, value: Any, *, extra: dict | None = None, project: str = "p",
            counted: bool = True) -> None:
        self.n += 1
        row = {"item_id": item_id, "tool": "offline", "project": project, "remote_id": str(self.n),
               "annotator": annotator, "value": value, "status": "submitted",
               "remote_updated_at": T0 + timedelta(minutes=self.n), "extra": extra}
        self.store.annotations.upsert([row])
        plain = SimpleNamespace(**row)
        self.everything.append(plain)
        if counted:
            self.counted.append(plain)


def _store(tmp_path, items: list[str]) -> StateStore:
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    store.items.ingest([{"id": x, "text": f"text of {x} " * 3} for x in [*items, "old"]])
    return store


def _spoil(store: StateStore, rows: _Rows, value: Any, *, extra: dict | None = None) -> None:
    """Answers that must not count: an adjudicator's (different sets, of every item), and answers
    to an item's version that a changed text has since replaced."""
    ids = {it.external_id: it.id for it in store.items.list()}
    store.cursors.set("offline", "adj", ADJUDICATION_OF, "p")  # "adj" adjudicates "p"
    for x in ("e0", "e1", "e2"):
        rows.add(ids[x], "lead", value, extra=extra, project="adj", counted=False)
    old = ids["old"]
    for who in "abc":
        rows.add(old, who, value if who != "b" else [], extra=extra, counted=False)
    store.items.ingest([{"id": "old", "text": "a changed text"}])
    assert not store.items.get(old).is_current


def _context(store: StateStore, spec: TaskSpec, tmp_path) -> JobContext:
    return JobContext(store, spec, ModelStore(tmp_path / "models"))


def _near(a: float | None, b: float) -> bool:
    return (a is None and math.isnan(b)) or (a is not None and a == pytest.approx(b))


def _metrics(store: StateStore) -> dict:
    return _scrape(TestClient(create_webhook_app(PullRequests(), secret="s", metrics=SyncMetricsCollector(store))))


# ------------------------------------------------------------------------------------------------ label-set primary


@pytest.fixture
def multi_label(tmp_path):
    store = _store(tmp_path, list(SETS))
    ids = {it.external_id: it.id for it in store.items.list()}
    rows = _Rows(store)
    for x, by in SETS.items():
        for who, chosen in by.items():
            rows.add(ids[x], who, chosen)
    _spoil(store, rows, ["sport", "politics", "tech"])
    spec = TaskSpec(name="topics", labels=TOPICS, multi_label=True)
    yield store, spec, rows
    store.close()


def test_a_label_set_primary_gets_masi_alpha_and_per_label_agreement_of_current_annotators_answers(
        multi_label, tmp_path):
    store, spec, rows = multi_label
    done = metrics_job(_context(store, spec, tmp_path))
    a = read_latest(store, AgreementSnapshot).snapshot
    Y = set_answer_table(rows.counted, TOPICS).Y
    expected = krippendorff_alpha_masi(Y)
    assert a.masi_alpha == pytest.approx(expected)
    # the left-out answers would change it: the test can tell
    assert krippendorff_alpha_masi(set_answer_table(rows.everything, TOPICS).Y) != pytest.approx(expected)
    assert (done["items"], done["annotators"]) == (a.n_items, a.n_annotators) == (6, 3)
    assert a.annotators == ["a", "b", "c"] and a.n_answers == 16 and a.n_pairable_items == 6
    assert a.control == spec.primary.name
    ref = per_label_agreement(Y, TOPICS)
    assert [p.label for p in a.per_label] == TOPICS
    for part, want in zip(a.per_label, ref, strict=True):
        for key in ("fleiss_kappa", "mean_cohen_kappa", "krippendorff_alpha", "percent_agreement"):
            assert _near(getattr(part, key), want[key]), (part.label, key)
        assert (part.n_items, part.n_yes) == (want["n_pairable_items"], want["n_yes"])
    # the one-label statistics stay empty for a label set
    assert a.fleiss_kappa is None and a.krippendorff_alpha is None and a.percent_agreement is None
    assert a.cohen_kappa == [] and a.mean_cohen_kappa is None and a.controls == {}


def test_the_report_and_metrics_show_a_label_set_primary(multi_label, tmp_path):
    store, spec, _ = multi_label
    metrics_job(_context(store, spec, tmp_path))
    a = read_latest(store, AgreementSnapshot).snapshot
    text = build_report(store, ModelStore(tmp_path / "models"))
    _assert_valid_html(text)
    section = text.split('<section id="s6">')[1].split("</section>")[0]
    assert "MASI distance" in section and f"{a.masi_alpha:.3f}" in section
    assert "no data yet" not in section and "kappa matrix" not in section
    for part in a.per_label:
        assert f"<td>{part.label}</td>" in section
    samples = _metrics(store)
    assert _get(samples, "hitl_agreement_masi_alpha", None, control=spec.primary.name) == pytest.approx(a.masi_alpha)
    for part in a.per_label:
        got = _get(samples, "hitl_agreement_label_fleiss_kappa", None, control=spec.primary.name, label=part.label)
        assert _near(got, part.fleiss_kappa if part.fleiss_kappa is not None else math.nan)
    assert ("hitl_fleiss_kappa", ()) not in samples  # the one-label figure is not made up


# ------------------------------------------------------------------------------------------------ other controls


@pytest.fixture
def controls(tmp_path):
    store = _store(tmp_path, list(CONTROLS))
    ids = {it.external_id: it.id for it in store.items.list()}
    rows = _Rows(store)
    for x, by in CONTROLS.items():
        for who, (sentiment, urgency, topics, entities) in by.items():
            rows.add(ids[x], who, sentiment,
                     extra={"controls": {"urgency": [urgency], "topics": topics, "entities": entities}})
    _spoil(store, rows, "neg", extra={"controls": {"urgency": ["high"], "topics": TOPICS,
                                                   "entities": [[0, 4, "ORG"], [5, 9, "LOC"]]}})
    spec = TaskSpec(name="news", controls=[
        {"name": "sentiment", "labels": ["pos", "neg"]},
        {"name": "urgency", "labels": ["low", "high"]},
        {"name": "topics", "labels": TOPICS, "multi_label": True},
        {"name": "entities", "kind": "spans", "labels": ["PER", "ORG", "LOC"]},
    ])
    yield store, spec, rows
    store.close()


def _controls_of(rows: list[Any], name: str) -> list[Any]:
    return [SimpleNamespace(**{**vars(r), "value": r.extra["controls"][name]}) for r in rows]


def _spans_of(rows: list[Any]) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(r.item_id, {})[r.annotator] = [tuple(s) for s in r.extra["controls"]["entities"]]
    return out


def test_each_other_control_gets_its_agreement_from_the_current_annotators_answers(controls, tmp_path):
    store, spec, rows = controls
    metrics_job(_context(store, spec, tmp_path))
    a = read_latest(store, AgreementSnapshot).snapshot
    assert list(a.controls) == ["urgency", "topics", "entities"]
    # the primary one-label control as before, over current items only
    primary = agreement_snapshot(answer_table(rows.counted, ["pos", "neg"]))
    assert a.fleiss_kappa == pytest.approx(primary["fleiss_kappa"]) and a.n_items == 4 and a.masi_alpha is None
    # one label
    urgency = agreement_snapshot(answer_table(_controls_of(rows.counted, "urgency"), ["low", "high"]))
    u = a.controls["urgency"]
    assert u.kind == "labels" and (u.n_items, u.n_annotators, u.n_answers) == (4, 3, 11)
    for key in ("fleiss_kappa", "krippendorff_alpha", "percent_agreement", "mean_cohen_kappa"):
        assert getattr(u, key) == pytest.approx(urgency[key]), key
    # label sets
    t = a.controls["topics"]
    Y = set_answer_table(_controls_of(rows.counted, "topics"), TOPICS).Y
    assert t.kind == "sets" and t.masi_alpha == pytest.approx(krippendorff_alpha_masi(Y))
    spoiled = set_answer_table(_controls_of(rows.everything, "topics"), TOPICS).Y
    assert krippendorff_alpha_masi(spoiled) != pytest.approx(t.masi_alpha)
    for part, want in zip(t.per_label, per_label_agreement(Y, TOPICS), strict=True):
        assert part.label == want["label"] and _near(part.fleiss_kappa, want["fleiss_kappa"])
    # spans
    e = a.controls["entities"]
    want = pairwise_span_agreement(_spans_of(rows.counted), labels=["PER", "ORG", "LOC"])
    assert e.kind == "spans" and e.pairs == want.pop("pairs") == 3  # (a, b), (a, c), (b, c)
    assert set(e.span_f1) == {"PER", "ORG", "LOC", "micro"}
    for label, f1 in want.items():
        assert _near(e.span_f1[label], f1), label
    assert e.span_f1["LOC"] is None  # only the left-out answers drew a LOC
    assert 0 < e.span_f1["micro"] < 1 and e.n_items == 4 and e.n_pairable_items == 4
    spoiled_spans = pairwise_span_agreement(_spans_of(rows.everything), labels=["PER", "ORG", "LOC"])
    assert spoiled_spans["micro"] != pytest.approx(e.span_f1["micro"])


def test_the_report_and_metrics_show_each_controls_agreement(controls, tmp_path):
    store, spec, _ = controls
    metrics_job(_context(store, spec, tmp_path))
    a = read_latest(store, AgreementSnapshot).snapshot
    text = build_report(store, ModelStore(tmp_path / "models"))
    _assert_valid_html(text)
    section = text.split('<section id="s6">')[1].split("</section>")[0]
    assert "<h3>Control urgency (one label)</h3>" in section
    assert "<h3>Control topics (label sets)</h3>" in section and f"{a.controls['topics'].masi_alpha:.3f}" in section
    assert "<h3>Control entities (entity spans)</h3>" in section and "span F1" in section
    for label in ("PER", "ORG", "micro"):
        assert f'<td>{label}</td><td class="num">{a.controls["entities"].span_f1[label]:.3f}</td>' in section
    assert '<td>LOC</td><td class="num">–</td>' in section
    samples = _metrics(store)
    assert _get(samples, "hitl_agreement_masi_alpha", None, control="topics") == pytest.approx(
        a.controls["topics"].masi_alpha)
    assert _get(samples, "hitl_agreement_fleiss_kappa", None, control="urgency") == pytest.approx(
        a.controls["urgency"].fleiss_kappa)
    assert _get(samples, "hitl_agreement_krippendorff_alpha", None, control="urgency") == pytest.approx(
        a.controls["urgency"].krippendorff_alpha)
    for label in ("PER", "ORG", "micro"):
        assert _get(samples, "hitl_agreement_span_f1", None, control="entities", label=label) == pytest.approx(
            a.controls["entities"].span_f1[label])
    assert ("hitl_agreement_span_f1", (("control", "entities"), ("label", "LOC"))) not in samples  # undefined
    assert _get(samples, "hitl_fleiss_kappa") == pytest.approx(a.fleiss_kappa)  # the primary's, unchanged


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (Debian: prometheus)")
def test_promtool_accepts_the_agreement_families(controls, tmp_path):
    store, spec, _ = controls
    metrics_job(_context(store, spec, tmp_path))
    exposition = TestClient(create_webhook_app(PullRequests(), secret="s", metrics=SyncMetricsCollector(store))).get(
        "/metrics").text
    ours = "\n".join(line for line in exposition.splitlines() if "hitl_agreement_" in line) + "\n"
    assert "hitl_agreement_span_f1{" in ours
    done = subprocess.run(["promtool", "check", "metrics"], input=ours, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------------------------------------ old snapshots


def test_an_agreement_snapshot_written_before_the_set_and_control_fields_still_reads(tmp_path):
    store = _store(tmp_path, [])
    old = {"n_items": 3, "n_annotators": 2, "annotators": ["a", "b"], "labels": ["x", "y"], "fleiss_kappa": 0.5,
           "cohen_kappa": [[1.0, 0.5], [0.5, 1.0]], "pair_counts": [[3, 3], [3, 3]]}
    store.snapshots.add("agreement", old)
    a = read_latest(store, AgreementSnapshot).snapshot
    assert a.fleiss_kappa == 0.5 and a.n_items == 3
    assert a.masi_alpha is None and a.per_label == [] and a.controls == {} and a.control is None
    text = build_report(store, ModelStore(tmp_path / "models"))
    assert "<h3>Control" not in text and "Fleiss&#x27; kappa" in text
    assert not any(name.startswith("hitl_agreement_") for name, _ in _metrics(store))
    store.close()
