"""``hitl export``: every item once, with where its label came from, written as JSONL, CSV and
Parquet and read back by pandas and by ``datasets.load_dataset("parquet", ...)``.

The stores are built through the repositories (and, for the loop, by the sync service over the
offline tool), never by writing rows by hand.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from connector.export import (
    ExportRow,
    build_rows,
    counts,
    export_rows,
    filter_rows,
    format_of,
    parse_since,
    read_store,
    threshold_in_force,
    write,
)
from connector.model_store import ModelStore
from connector.snapshots import ThresholdsSnapshot, write_snapshot
from connector.store import StateStore
from connector.task_spec import TaskSpec
from connector.tools.offline import OfflineTool
from sync.jobs import JobContext, consolidate_job
from sync.service import SyncService

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
LABELS = ["a", "b"]


def _pred(item_id: int, label: str, confidence: float, version: str = "m1") -> dict[str, Any]:
    other = "b" if label == "a" else "a"
    return {"item_id": item_id, "model_version": version, "label": label, "confidence": confidence,
            "probabilities": {label: confidence, other: 1 - confidence}}


def _answer(item_id: int, annotator: str, value: Sequence[str], minute: int, status: str = "submitted") -> dict:
    return {"item_id": item_id, "tool": "offline", "project": "p", "remote_id": f"{item_id}-{annotator}",
            "annotator": annotator, "value": list(value), "status": status,
            "remote_updated_at": T0 + timedelta(minutes=minute)}


def _label(item_id: int, label: str | None, method: str, n: int, status: str = "settled",
           agreement: float | None = 1.0) -> dict[str, Any]:
    return {"item_id": item_id, "label": label, "status": status, "method": method, "n_answers": n,
            "agreement": agreement, "reason": "settled" if status == "settled" else "tie"}


def _pause() -> None:
    time.sleep(0.01)  # rows written after this one carry a later time


@pytest.fixture
def store(tmp_path):
    """One item per provenance, built in the order the loop writes them:

    ``gold-1`` (gold, answered once), ``hum-1`` (majority of two), ``hum-2`` (Dawid-Skene, one
    deleted answer), ``adj-1`` (adjudicated), ``seed-1`` (seed label), ``acc-old`` (auto-accepted
    before any threshold review), ``acc-ok`` (auto-accepted under a certified review), ``acc-low``
    (auto-accepted below that review's threshold), ``acc-late`` (auto-accepted after a review that
    certified nothing), ``rej-1`` (auto-rejected), ``sug-1`` (pushed, unanswered), ``tie-1``
    (answered, unsettled), ``new-1`` (nothing yet), ``ver-1`` (two versions: the second counts).
    """
    s = StateStore(f"sqlite:///{tmp_path}/state.db")
    s.migrate()
    ext = ["gold-1", "hum-1", "hum-2", "adj-1", "seed-1", "acc-old", "acc-ok", "acc-low", "acc-late", "rej-1",
           "sug-1", "tie-1", "new-1", "ver-1"]
    records = [{"id": e, "text": f"the text of {e}", "lang": "en", "n": k, "source": "crawl"} for k, e in enumerate(ext)]
    records[0] |= {"is_gold": True, "gold_label": "b"}
    records[1]["extra"] = {"nested": [1, 2]}
    s.items.ingest(records)
    s.items.ingest([{"id": "ver-1", "text": "the text of ver-1, edited", "lang": "en", "n": 13, "source": "crawl"}])
    ids = {it.external_id: it.id for it in s.items.list()}
    s.predictions.record([_pred(ids[e], "a", 0.6) for e in ext if e != "new-1"])
    s.predictions.record([_pred(ids[e], "b", c, "m2") for e, c in
                          [("acc-old", 0.97), ("acc-ok", 0.95), ("acc-low", 0.85), ("acc-late", 0.99), ("rej-1", 0.99),
                           ("sug-1", 0.7)]])
    s.decisions.record([{"item_id": ids["acc-old"], "action": "auto_accept", "reason": "confident", "priority": 0.03,
                         "model_version": "m2"}])
    _pause()
    write_snapshot(s, ThresholdsSnapshot(threshold=0.9, error_ucb=0.04, meets_target=True, target_error=0.05))
    _pause()
    s.decisions.record([{"item_id": ids[e], "action": "auto_accept", "reason": "confident", "priority": 0.05,
                         "model_version": "m2"} for e in ("acc-ok", "acc-low")])
    _pause()
    write_snapshot(s, ThresholdsSnapshot(threshold=math.nextafter(1.0, 2.0), error_ucb=0.2, meets_target=False))
    _pause()
    s.decisions.record([{"item_id": ids["acc-late"], "action": "auto_accept", "reason": "confident",
                         "priority": 0.01, "model_version": "m2"},
                        {"item_id": ids["rej-1"], "action": "auto_reject", "reason": "reject_label",
                         "priority": 0.01, "model_version": "m2"},
                        {"item_id": ids["sug-1"], "action": "review", "reason": "uncertain", "priority": 0.3,
                         "model_version": "m2"}])
    s.annotations.upsert([
        _answer(ids["gold-1"], "ann-1", ["a"], 1),
        _answer(ids["hum-1"], "ann-1", ["b"], 2), _answer(ids["hum-1"], "ann-2", ["b"], 3),
        _answer(ids["hum-2"], "ann-1", ["a"], 4), _answer(ids["hum-2"], "ann-3", ["a"], 5),
        _answer(ids["hum-2"], "ann-2", ["b"], 6, status="deleted"),
        _answer(ids["adj-1"], "ann-1", ["a"], 7), _answer(ids["adj-1"], "ann-2", ["b"], 8),
        _answer(ids["tie-1"], "ann-1", ["a"], 9), _answer(ids["tie-1"], "ann-2", [], 10, status="skipped"),
        _answer(ids["tie-1"], "ann-3", ["b"], 11),
    ])
    s.labels.save([_label(ids["gold-1"], "b", "gold", 1), _label(ids["hum-1"], "b", "majority", 2),
                   _label(ids["hum-2"], "a", "dawid_skene", 2), _label(ids["adj-1"], "b", "adjudicated", 2, agreement=0.5),
                   _label(ids["seed-1"], "a", "seed", 0, agreement=None),
                   _label(ids["tie-1"], None, "majority", 2, status="unsettled", agreement=0.5)])
    yield s
    s.close()


def _by_id(rows: Sequence[ExportRow]) -> dict[str, ExportRow]:
    return {r.item_id: r for r in rows}


def test_every_source_is_told_with_its_label_score_and_evidence(store):
    rows = _by_id(export_rows(store, only="all"))
    want = {"gold-1": ("gold", "b"), "hum-1": ("human_consensus", "b"), "hum-2": ("human_consensus", "a"),
            "adj-1": ("adjudicated", "b"), "seed-1": ("seed", "a"), "acc-old": ("auto_accepted", "b"),
            "acc-ok": ("auto_accepted", "b"), "acc-low": ("auto_accepted", "b"), "acc-late": ("auto_accepted", "b"),
            "rej-1": ("auto_rejected", "b"), "sug-1": ("model_suggestion", "b"), "tie-1": ("model_suggestion", "a"),
            "new-1": ("unlabelled", None), "ver-1": ("model_suggestion", "a")}
    assert {e: (r.source, r.label) for e, r in rows.items()} == want
    gold = rows["gold-1"]  # the known answer, whatever the annotator said
    assert (gold.n_answers, [(a.annotator, a.label) for a in gold.answers], gold.certified) == (1, [("ann-1", "a")], None)
    hum = rows["hum-1"]
    assert (hum.agreement, hum.n_answers, hum.model_label, hum.model_version, hum.score) == (1.0, 2, "a", "m1", 0.6)
    assert [(a.annotator, a.label, a.status, a.answered_at) for a in hum.answers] == [
        ("ann-1", "b", "submitted", T0 + timedelta(minutes=2)), ("ann-2", "b", "submitted", T0 + timedelta(minutes=3))]
    assert [a.annotator for a in rows["hum-2"].answers] == ["ann-1", "ann-3"]  # the deleted answer is gone
    assert (rows["adj-1"].agreement, rows["seed-1"].n_answers) == (0.5, 0)
    tie = rows["tie-1"]  # its answers so far, and the model's label: not settled
    assert [(a.label, a.status) for a in tie.answers] == [("a", "submitted"), (None, "skipped"), ("b", "submitted")]
    assert (tie.n_answers, tie.agreement, tie.settled, tie.certified) == (2, 0.5, False, False)
    # the auto-accepted: the model version that decided, the review in force then
    old, ok, low, late = (rows[e] for e in ("acc-old", "acc-ok", "acc-low", "acc-late"))
    assert (old.model_version, old.score, old.threshold, old.bound, old.certified) == ("m2", 0.97, None, None, False)
    assert (ok.threshold, ok.bound, ok.certified, ok.score) == (0.9, 0.04, True, 0.95)
    assert (low.threshold, low.certified) == (0.9, False)  # below the certified threshold
    assert (late.threshold > 1.0, late.bound, late.certified) == (True, 0.2, False)
    assert rows["rej-1"].certified is False and rows["sug-1"].certified is False
    assert (rows["sug-1"].model_version, rows["sug-1"].score) == ("m2", 0.7)
    assert (rows["new-1"].model_version, rows["new-1"].score, rows["new-1"].label) == (None, None, None)


def test_each_current_item_appears_once_with_its_fields_and_version(store):
    rows = export_rows(store, only="all")
    assert len(rows) == len({r.item_id for r in rows}) == len(store.items.list()) == 14
    ver = _by_id(rows)["ver-1"]
    assert (ver.version, ver.text) == (2, "the text of ver-1, edited")
    hum = _by_id(rows)["hum-1"]
    # the text is its own column; a field named like a column is renamed; nested fields kept
    assert hum.fields == {"lang": "en", "n": 1, "field_source": "crawl", "extra": {"nested": [1, 2]}}


def test_only_settled_keeps_the_final_labels_and_only_all_adds_the_rest(store):
    settled = export_rows(store)
    assert counts(settled) == {"gold": 1, "human_consensus": 2, "adjudicated": 1, "seed": 1, "auto_accepted": 4,
                               "auto_rejected": 1}
    assert all(r.settled and r.settled_at == r.updated_at is not None for r in settled)
    rest = {r.item_id for r in export_rows(store, only="all")} - {r.item_id for r in settled}
    assert rest == {"sug-1", "tie-1", "new-1", "ver-1"}
    with pytest.raises(ValueError, match="settled"):
        export_rows(store, only="some")  # type: ignore[arg-type]


def test_since_keeps_the_items_whose_label_changed_after_it(store):
    ids = {it.external_id: it.id for it in store.items.list()}
    _pause()
    cut = datetime.now(UTC)
    _pause()
    assert export_rows(store, only="all", since=cut) == []
    store.labels.save([_label(ids["hum-1"], "a", "majority", 3, agreement=2 / 3)])  # a third answer turned it
    store.labels.save([_label(ids["tie-1"], "b", "majority", 3, agreement=2 / 3)])  # the tie settled
    store.decisions.record([{"item_id": ids["sug-1"], "action": "auto_accept", "reason": "confident",
                             "priority": 0.3, "model_version": "m2"}])
    changed = _by_id(export_rows(store, since=cut))
    assert {e: (r.source, r.label) for e, r in changed.items()} == {
        "hum-1": ("human_consensus", "a"), "tie-1": ("human_consensus", "b"), "sug-1": ("auto_accepted", "b")}
    assert changed["sug-1"].certified is False  # 0.7 is under the review in force (it certified nothing)
    naive = cut.replace(tzinfo=None)  # naive means UTC
    assert {r.item_id for r in export_rows(store, since=naive)} == set(changed)
    assert len(export_rows(store, since=cut - timedelta(days=1))) == len(export_rows(store))


def test_the_threshold_in_force_is_the_newest_review_written_by_then():
    a, b = ThresholdsSnapshot(threshold=0.9), ThresholdsSnapshot(threshold=0.8)
    from connector.snapshots import Dated

    history = [Dated(a, T0), Dated(b, T0 + timedelta(hours=1))]
    assert threshold_in_force(history, T0 - timedelta(seconds=1)) is None
    assert threshold_in_force(history, T0) is a and threshold_in_force(history, T0 + timedelta(minutes=59)) is a
    assert threshold_in_force(history, T0 + timedelta(hours=2)) is b and threshold_in_force([], T0) is None


def test_formats_and_since_parse_or_say_what_is_wrong(tmp_path):
    assert format_of(tmp_path / "x.parquet") == ["parquet"] and format_of(tmp_path / "x.CSV") == ["csv"]
    assert format_of(tmp_path / "x", "all") == ["jsonl", "csv", "parquet"]
    with pytest.raises(ValueError, match="suffix"):
        format_of(tmp_path / "x.txt")
    with pytest.raises(ValueError, match="unknown format"):
        format_of(tmp_path / "x.csv", "xlsx")
    assert parse_since("2026-03-01") == datetime(2026, 3, 1, tzinfo=UTC)
    assert parse_since("2026-03-01T10:00:00+01:00") == T0
    assert parse_since(None) is None
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_since("yesterday")


# ------------------------------------------------------------------------------------------------ read back


def _norm(value: Any) -> Any:
    """A value read back, as Python: NaN/NaT/None -> None, numpy scalars -> Python, times -> aware UTC."""
    if isinstance(value, list | tuple) or hasattr(value, "tolist") and not isinstance(value, str | float | int):
        value = value.tolist() if hasattr(value, "tolist") else list(value)
        return [_norm(v) for v in value] if isinstance(value, list) else _norm(value)
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and value[10] == "T":
        return datetime.fromisoformat(value).astimezone(UTC)
    return value.item() if hasattr(value, "item") else value


KEYS = ("item_id", "version", "text", "lang", "n", "field_source", "label", "source", "settled", "model_label",
        "model_version", "score", "agreement", "n_answers", "threshold", "bound", "certified", "settled_at",
        "updated_at")


def _expected(rows: Sequence[ExportRow]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        rec = {"item_id": r.item_id, "version": r.version, "text": r.text, "label": r.label, "source": r.source,
               "settled": r.settled, "model_label": r.model_label, "model_version": r.model_version, "score": r.score,
               "agreement": r.agreement, "n_answers": r.n_answers, "threshold": r.threshold, "bound": r.bound,
               "certified": r.certified, "settled_at": r.settled_at, "updated_at": r.updated_at,
               "lang": r.fields["lang"], "n": r.fields["n"], "field_source": r.fields["field_source"],
               "answers": [{"annotator": a.annotator, "label": a.label, "status": a.status,
                            "answered_at": a.answered_at} for a in r.answers]}
        out.append(_norm(rec))
    return out


def _read(frame_rows: list[dict[str, Any]], *, answers_json: bool = False) -> list[dict[str, Any]]:
    out = []
    for rec in frame_rows:
        got = {k: _norm(rec[k]) for k in KEYS}
        answers = json.loads(rec["answers"]) if answers_json else rec["answers"]
        got["answers"] = _norm(answers)
        out.append(got)
    return out


@pytest.fixture
def written(store, tmp_path):
    rows = export_rows(store, only="all")
    paths = write(rows, tmp_path / "out" / "labels", "all")
    assert [p.name for p in paths] == ["labels.jsonl", "labels.csv", "labels.parquet"]
    return rows, {p.suffix[1:]: p for p in paths}


def test_jsonl_reads_back_in_pandas_with_the_same_rows_and_nested_answers(written):
    rows, paths = written
    frame = pd.read_json(paths["jsonl"], lines=True, dtype=False, precise_float=True)
    assert len(frame) == len(rows) == len(paths["jsonl"].read_text().splitlines())
    assert _read(frame.to_dict("records")) == _expected(rows)
    extra = dict(zip(frame["item_id"], frame["extra"]))
    assert extra["hum-1"] == {"nested": [1, 2]} and pd.isna(extra["hum-2"])


def test_csv_reads_back_in_pandas_flat_with_answers_as_json(written):
    rows, paths = written
    frame = pd.read_csv(paths["csv"], keep_default_na=True)
    assert list(frame.columns[:6]) == ["item_id", "version", "text", "lang", "n", "field_source"]
    got = frame.astype(object).where(frame.notna(), None).to_dict("records")
    for rec in got:  # CSV has no types: booleans come back as booleans, empty answers as "[]"
        rec["certified"] = None if rec["certified"] is None else bool(rec["certified"])
    assert _read(got, answers_json=True) == _expected(rows)
    extra = dict(zip(frame["item_id"], frame["extra"]))
    assert json.loads(extra["hum-1"]) == {"nested": [1, 2]}


def test_parquet_has_a_typed_schema_and_reads_back_in_pandas(written):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows, paths = written
    schema = pq.read_schema(paths["parquet"])
    assert schema.field("answers").type == pa.list_(pa.struct([
        ("annotator", pa.string()), ("label", pa.string()), ("status", pa.string()),
        ("answered_at", pa.timestamp("us", tz="UTC"))]))
    assert (schema.field("n").type, schema.field("score").type, schema.field("certified").type) == (
        pa.int64(), pa.float64(), pa.bool_())
    assert schema.field("updated_at").type == pa.timestamp("us", tz="UTC") and schema.field("extra").type == pa.string()
    frame = pd.read_parquet(paths["parquet"])
    assert _read(frame.to_dict("records")) == _expected(rows)


def test_parquet_loads_as_a_hugging_face_dataset_offline(written, tmp_path):
    rows, paths = written
    script = (
        "import json, sys\n"
        "from datasets import load_dataset\n"
        "ds = load_dataset('parquet', data_files=sys.argv[1], split='train')\n"
        "print(json.dumps({'n': ds.num_rows, 'features': str(ds.features['answers']),\n"
        "                  'rows': [{k: r[k] for k in ('item_id', 'label', 'source', 'score', 'certified')}\n"
        "                           | {'answers': [[a['annotator'], a['label'], a['status']] for a in r['answers']]}\n"
        "                           for r in ds]}))\n")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-c", script, str(paths["parquet"])], env=env, capture_output=True,
                          text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["n"] == len(rows) and "annotator" in got["features"] and "answered_at" in got["features"]
    assert got["rows"] == [{"item_id": r.item_id, "label": r.label, "source": r.source, "score": r.score,
                            "certified": r.certified,
                            "answers": [[a.annotator, a.label, a.status] for a in r.answers]} for r in rows]


def test_an_empty_store_writes_three_readable_empty_files(tmp_path):
    with StateStore(f"sqlite:///{tmp_path}/empty.db") as s:
        s.migrate()
        rows = export_rows(s, only="all")
    paths = write(rows, tmp_path / "empty.jsonl", "all")
    assert rows == [] and paths[0].read_text() == ""
    assert pd.read_csv(paths[1]).columns[0] == "item_id" and len(pd.read_parquet(paths[2])) == 0


# ------------------------------------------------------------------------------------------------ the command


def test_the_command_writes_the_format_of_the_suffix_and_counts_the_sources(store, tmp_path, monkeypatch):
    from hitl.cli import app

    monkeypatch.setenv("HITL_DB_URL", store.url)
    runner = CliRunner()
    done = runner.invoke(app, ["export", "--out", str(tmp_path / "x.csv")])
    assert done.exit_code == 0, done.output
    assert "13 items" not in done.output and "10 items" in done.output and "auto_accepted 4" in done.output
    assert len(pd.read_csv(tmp_path / "x.csv")) == 10
    done = runner.invoke(app, ["export", "--out", str(tmp_path / "all"), "--format", "all", "--only", "all",
                               "--since", "2000-01-01"])
    assert done.exit_code == 0, done.output
    assert len(pd.read_parquet(tmp_path / "all.parquet")) == 14 and (tmp_path / "all.jsonl").exists()
    for bad in (["--out", str(tmp_path / "x.txt")], ["--only", "some"], ["--since", "soon"]):
        done = runner.invoke(app, ["export", *bad])
        assert done.exit_code == 2 and not (tmp_path / "x.txt").exists(), (bad, done.output)


# ------------------------------------------------------------------------------------------------ the loop's store


class KeywordPredictor:
    """The model: label ``b`` when the text says so, with a confidence that grows with the item's number."""

    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        out = []
        for t in texts:
            k = int(t.rsplit(" ", 1)[-1])
            label, conf = ("b" if "bee" in t else "a"), 0.55 + 0.44 * (k % 10) / 9
            out.append({"label": label, "confidence": conf, "model_version": "v1",
                        "probabilities": {label: conf, "b" if label == "a" else "a": 1 - conf}})
        return out


def test_the_store_the_offline_loop_writes_exports_every_item_once(tmp_path):
    """The sync service's passes over the offline tool (predict, route, push, answers, pull,
    consolidation), with a certified threshold review: every item once, each source honest."""
    with StateStore(f"sqlite:///{tmp_path}/loop.db") as s:
        s.migrate()
        s.items.ingest([{"id": f"i{k}", "text": f"{'bee' if k % 3 else 'ant'} item {k}"} for k in range(60)]
                       + [{"id": f"g{k}", "text": f"gold bee {k}", "is_gold": True, "gold_label": "b"}
                          for k in range(3)])
        write_snapshot(s, ThresholdsSnapshot(threshold=0.9, error_ucb=0.045, meets_target=True, target_error=0.05))
        spec = TaskSpec(name="export loop", labels=LABELS, overlap=2,
                        routing={"accept_threshold": 0.9, "review_budget": 20, "gold_rate": 0.1, "seed": 1},
                        consensus={"min_answers": 2, "max_answers": 3})
        tool = OfflineTool()
        sync = SyncService(s, spec, tool, KeywordPredictor())
        ctx = JobContext(s, spec, ModelStore(tmp_path / "models"), make_sync=lambda: sync)
        sync.predict_pass()
        sync.route_pass()
        sync.push_pass()
        pushed = s.items.list(state="pushed")
        for k, it in enumerate(pushed):  # two answers each: most agree, every fifth is a tie
            tool.annotate(sync.project, it.external_id, "ann-1", ["b"])
            tool.annotate(sync.project, it.external_id, "ann-2", ["a" if k % 5 == 0 else "b"])
        sync.pull_pass()
        consolidate_job(ctx)
        view = read_store(s)
        rows = build_rows(view)
    assert len(rows) == len({r.item_id for r in rows}) == 63
    by_source = counts(rows)
    accepted = [r for r in rows if r.source == "auto_accepted"]
    decisions = view.decisions
    assert len(accepted) == sum(d.action == "auto_accept" for d in decisions.values()) > 0
    assert all(r.certified and r.threshold == 0.9 and r.bound == 0.045 and r.score >= 0.9 for r in accepted)
    humans = [r for r in rows if r.source == "human_consensus"]
    assert humans and all(r.n_answers == 2 and len(r.answers) == 2 and r.agreement == 1.0 for r in humans)
    ties = [r for r in rows if r.source == "model_suggestion" and r.answers]
    assert ties and all(r.n_answers == 2 and not r.settled for r in ties)  # sent back for a third answer
    assert by_source["gold"] == 3 and all(r.label == "b" for r in rows if r.source == "gold")
    assert sum(by_source.values()) == 63 and set(by_source) <= {"gold", "human_consensus", "auto_accepted",
                                                                "model_suggestion"}
    settled = filter_rows(rows)
    assert len(settled) == by_source["gold"] + len(humans) + len(accepted)


@pytest.mark.slow
def test_an_offline_simulation_exports_every_item_once_in_three_readable_formats(rt_sample, encoder, tmp_path,
                                                                                 monkeypatch):
    """``hitl simulate``'s loop on 600 snippets (the real encoder): its store, exported before the
    run deletes it, holds every item once, the human labels and the auto-accepted items it counted."""
    from connector.datasets import LabeledTexts
    from hitl.simulate import loop

    measure, seen = loop._measure, {}

    def export_then_measure(data, cfg, store, *args, **kwargs):
        seen["rows"] = export_rows(store, only="all")
        seen["files"] = write(seen["rows"], tmp_path / "sim", "all")
        settled = {lb.item_id for lb in store.labels.list()}
        seen["accepted"] = sum(d.action == "auto_accept" and i not in settled
                               for i, d in store.decisions.latest().items())
        seen["labels"] = len(store.labels.list(status=None))
        return measure(data, cfg, store, *args, **kwargs)

    monkeypatch.setattr(loop, "_measure", export_then_measure)
    cache = StateStore(f"sqlite:///{tmp_path}/cache.db")
    cache.migrate()
    texts, labels = rt_sample
    result = loop.run(LabeledTexts("rt600", list(texts), list(labels)),
                      loop.SimulationConfig(budget=0.2, batch=20, seed_size=40, seed=3, target_error=0.1),
                      cache_store=cache, encoder=encoder)
    cache.close()
    rows = seen["rows"]
    assert len(rows) == len({r.item_id for r in rows}) == result.items
    by_source = counts(rows)
    assert set(by_source) <= {"human_consensus", "auto_accepted", "model_suggestion"}
    answered = [r for r in rows if r.answers]
    assert len(answered) == seen["labels"] == result.reviewed and by_source["human_consensus"] <= result.reviewed
    assert all(r.n_answers >= 2 for r in answered)
    assert by_source.get("auto_accepted", 0) == seen["accepted"]
    certified = [r for r in rows if r.source == "auto_accepted" and r.certified]
    assert all(r.score >= r.threshold and r.bound is not None for r in certified)
    jsonl, csv_, parquet = seen["files"]
    assert len(pd.read_json(jsonl, lines=True)) == len(pd.read_csv(csv_)) == len(pd.read_parquet(parquet)) == len(rows)
