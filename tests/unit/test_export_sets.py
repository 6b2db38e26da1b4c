"""``hitl export`` of a label-set task (``multi_label``) with other controls: labels as lists in
JSONL, CSV and Parquet (read back by pandas, pyarrow and ``datasets``), auto-accepted sets certified
only when the review's rule clears them (per-label thresholds too), and the other controls' settled
values per row. The stores are built through the repositories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from connector.export import ExportRow, export_rows, write
from connector.label_sets import encode_label_set
from connector.snapshots import ThresholdsSnapshot, write_snapshot
from connector.store import StateStore
from connector.task_spec import TaskSpec
from sync.export_controls import settled_controls, task_export_rows

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
TASK = """
name = "news"
overlap = 2

[[controls]]
name = "topics"
labels = ["politics", "sport", "tech"]
multi_label = true

[[controls]]
name = "tone"
labels = ["pos", "neg"]

[[controls]]
name = "flags"
labels = ["spam", "nsfw"]
multi_label = true

[[controls]]
name = "entities"
kind = "spans"
labels = ["PER", "ORG"]
"""


def _spec() -> TaskSpec:
    import tomllib

    return TaskSpec.model_validate(tomllib.loads(TASK))


def _pred(item_id: int, chosen: list[str], score: float, probs: dict[str, float], version: str = "m1") -> dict:
    return {"item_id": item_id, "model_version": version, "label": encode_label_set(chosen), "confidence": score,
            "probabilities": {**probs, "@controls": {"tone": {"labels": ["pos"], "probabilities": {"pos": 0.9},
                                                             "score": 0.9, "model_version": "t1"}}}}


def _answer(item_id: int, annotator: str, value: list[str], minute: int, controls: dict | None = None,
            status: str = "submitted") -> dict:
    return {"item_id": item_id, "tool": "offline", "project": "p", "remote_id": f"{item_id}-{annotator}",
            "annotator": annotator, "value": value, "status": status, "extra": {"controls": controls or {}},
            "remote_updated_at": T0 + timedelta(minutes=minute)}


def _pause() -> None:
    time.sleep(0.01)


@pytest.fixture
def store(tmp_path):
    """``gold-1`` (a gold set), ``hum-1`` (settled by two answers, with the other controls' answers),
    ``hum-2`` (settled; its other controls' answers disagree: nothing settles there), ``acc-ok`` /
    ``acc-low`` (auto-accepted under a one-threshold review, over / under it), ``acc-per`` /
    ``acc-per-ok`` (auto-accepted under a review with per-label thresholds: the first clears the
    global threshold but its ``tech`` decision fails its own), ``sug-1`` (the model's empty set),
    ``new-1`` (nothing)."""
    s = StateStore(f"sqlite:///{tmp_path}/state.db")
    s.migrate()
    ext = ["gold-1", "hum-1", "hum-2", "acc-ok", "acc-low", "acc-per", "acc-per-ok", "sug-1", "new-1"]
    records = [{"id": e, "text": f"Ann Lee on {e}", "lang": "en"} for e in ext]
    records[0] |= {"is_gold": True, "gold_label": encode_label_set(["tech", "politics"])}
    records[1]["controls"] = "a field named like the column"
    s.items.ingest(records)
    ids = {it.external_id: it.id for it in s.items.list()}
    sure = {"politics": 0.97, "sport": 0.05, "tech": 0.04}  # every decision at 0.95 or over
    s.predictions.record([
        _pred(ids["hum-1"], ["sport"], 0.6, {"politics": 0.2, "sport": 0.6, "tech": 0.4}),
        _pred(ids["acc-ok"], ["politics"], 0.95, sure), _pred(ids["acc-low"], ["politics"], 0.85, sure),
        _pred(ids["acc-per"], ["politics"], 0.95, sure),  # tech's decision: 1 - 0.04 = 0.96
        _pred(ids["acc-per-ok"], ["politics"], 0.95, {"politics": 0.97, "sport": 0.05, "tech": 0.005}),
        _pred(ids["sug-1"], [], 0.7, {"politics": 0.3, "sport": 0.1, "tech": 0.2})])
    write_snapshot(s, ThresholdsSnapshot(threshold=0.9, error_ucb=0.04, meets_target=True, target_error=0.05))
    _pause()
    s.decisions.record([{"item_id": ids[e], "action": "auto_accept", "reason": "confident", "priority": 0.05,
                         "model_version": "m1"} for e in ("acc-ok", "acc-low")])
    _pause()
    write_snapshot(s, ThresholdsSnapshot(threshold=0.9, error_ucb=0.03, meets_target=True, target_error=0.05,
                                         label_thresholds={"politics": 0.9, "sport": 0.9, "tech": 0.99}))
    _pause()
    s.decisions.record([{"item_id": ids[e], "action": "auto_accept", "reason": "confident", "priority": 0.05,
                         "model_version": "m1"} for e in ("acc-per", "acc-per-ok")])
    both = {"tone": ["neg"], "flags": ["spam"], "entities": [[0, 7, "PER"]]}
    s.annotations.upsert([
        _answer(ids["gold-1"], "ann-1", ["tech"], 1),
        _answer(ids["hum-1"], "ann-1", ["tech", "sport"], 2, both),
        _answer(ids["hum-1"], "ann-2", ["sport", "tech"], 3, both),
        _answer(ids["hum-2"], "ann-1", [], 4, {"tone": ["pos"]}),
        _answer(ids["hum-2"], "ann-2", [], 5, {"tone": ["neg"]}),
        _answer(ids["hum-2"], "ann-3", [], 6, status="skipped"),
    ])
    s.labels.save([
        {"item_id": ids["gold-1"], "label": encode_label_set(["politics", "tech"]), "status": "settled",
         "method": "gold", "n_answers": 1, "agreement": None, "reason": "gold"},
        {"item_id": ids["hum-1"], "label": encode_label_set(["sport", "tech"]), "status": "settled",
         "method": "majority", "n_answers": 2, "agreement": 1.0, "reason": "settled"},
        {"item_id": ids["hum-2"], "label": encode_label_set([]), "status": "settled", "method": "dawid_skene",
         "n_answers": 2, "agreement": 1.0, "reason": "settled"}])
    yield s
    s.close()


def _by_id(rows: list[ExportRow]) -> dict[str, ExportRow]:
    return {r.item_id: r for r in rows}


WANT = {"gold-1": ("gold", ["politics", "tech"]), "hum-1": ("human_consensus", ["sport", "tech"]),
        "hum-2": ("human_consensus", []), "acc-ok": ("auto_accepted", ["politics"]),
        "acc-low": ("auto_accepted", ["politics"]), "acc-per": ("auto_accepted", ["politics"]),
        "acc-per-ok": ("auto_accepted", ["politics"]), "sug-1": ("model_suggestion", []),
        "new-1": ("unlabelled", None)}


def test_a_label_set_task_exports_its_labels_answers_and_model_labels_as_lists(store):
    rows = _by_id(task_export_rows(store, _spec(), only="all"))
    assert {e: (r.source, r.label) for e, r in rows.items()} == WANT
    hum = rows["hum-1"]
    assert (hum.model_label, hum.score) == (["sport"], 0.6)
    assert [(a.annotator, a.label) for a in hum.answers] == [("ann-1", ["sport", "tech"]), ("ann-2", ["sport", "tech"])]
    # an empty answer is the empty set, a skip no label
    assert [(a.label, a.status) for a in rows["hum-2"].answers] == [([], "submitted"), ([], "submitted"),
                                                                    (None, "skipped")]
    assert hum.fields == {"lang": "en", "field_controls": "a field named like the column"}


def test_an_auto_accepted_set_is_certified_only_when_the_rule_in_force_clears_it(store):
    rows = _by_id(export_rows(store, only="all", spec=_spec()))
    got = {e: (rows[e].threshold, rows[e].bound, rows[e].certified) for e in ("acc-ok", "acc-low", "acc-per",
                                                                                "acc-per-ok")}
    assert got == {"acc-ok": (0.9, 0.04, True), "acc-low": (0.9, 0.04, False),
                   # 0.95 clears the global 0.9, but the tech decision (0.96) fails its own 0.99
                   "acc-per": (0.9, 0.03, False), "acc-per-ok": (0.9, 0.03, True)}
    assert rows["sug-1"].certified is False and rows["gold-1"].certified is None


def test_the_other_controls_settled_values_appear_per_row(store):
    spec = _spec()
    ids = {it.external_id: it.id for it in store.items.list()}
    settled = settled_controls(store, spec)
    assert settled == {ids["hum-1"]: {"tone": "neg", "flags": ["spam"], "entities": [[0, 7, "PER"]]}}
    rows = _by_id(export_rows(store, only="all", spec=spec, controls=settled))
    assert rows["hum-1"].controls == {"tone": "neg", "flags": ["spam"], "entities": [[0, 7, "PER"]]}
    assert all(r.controls is None for e, r in rows.items() if e != "hum-1")  # hum-2's tone answers disagree


def test_without_the_task_the_export_is_as_it_was(store):
    rows = _by_id(export_rows(store, only="all"))
    assert rows["hum-1"].label == '["sport","tech"]' and rows["hum-1"].controls is None
    assert "controls" in rows["hum-1"].fields and not rows["hum-1"].with_controls


# ------------------------------------------------------------------------------------------------ read back


@pytest.fixture
def written(store, tmp_path):
    rows = task_export_rows(store, _spec(), only="all")
    paths = write(rows, tmp_path / "out" / "labels", "all")
    return {p.suffix[1:]: p for p in paths}


def _lists(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value


def test_jsonl_holds_json_lists(written):
    paths = written
    lines = [json.loads(line) for line in paths["jsonl"].read_text().splitlines()]
    assert {r["item_id"]: (r["source"], r["label"]) for r in lines} == WANT
    assert list(lines[0])[:6] == ["item_id", "version", "text", "lang", "field_controls", "label"]
    assert list(lines[0])[6] == "controls"
    hum = next(r for r in lines if r["item_id"] == "hum-1")
    assert hum["controls"] == {"tone": "neg", "flags": ["spam"], "entities": [[0, 7, "PER"]]}
    assert hum["model_label"] == ["sport"] and [a["label"] for a in hum["answers"]] == [["sport", "tech"]] * 2
    frame = pd.read_json(paths["jsonl"], lines=True, dtype=False)
    got = {e: v if isinstance(v, list) else None for e, v in zip(frame["item_id"], frame["label"])}  # NaN: none
    assert got == {e: label for e, (_, label) in WANT.items()}


def test_csv_holds_json_strings(written):
    paths = written
    frame = pd.read_csv(paths["csv"], keep_default_na=False)
    got = {r["item_id"]: json.loads(r["label"]) if r["label"] else None for r in frame.to_dict("records")}
    assert got == {e: label for e, (_, label) in WANT.items()}
    hum = frame[frame["item_id"] == "hum-1"].iloc[0]
    assert json.loads(hum["controls"])["entities"] == [[0, 7, "PER"]] and json.loads(hum["model_label"]) == ["sport"]
    assert [a["label"] for a in json.loads(hum["answers"])] == [["sport", "tech"]] * 2


def test_parquet_has_list_of_string_labels_read_by_pyarrow_and_pandas(written):
    paths = written
    schema = pq.read_schema(paths["parquet"])
    assert schema.field("label").type == schema.field("model_label").type == pa.list_(pa.string())
    assert schema.field("answers").type.value_type.field("label").type == pa.list_(pa.string())
    assert schema.field("controls").type == pa.string()
    table = pq.read_table(paths["parquet"]).to_pylist()
    assert {r["item_id"]: (r["source"], r["label"]) for r in table} == WANT
    frame = pd.read_parquet(paths["parquet"])
    assert {e: _lists(v) for e, v in zip(frame["item_id"], frame["label"])} == {e: lb for e, (_, lb) in WANT.items()}
    hum = next(r for r in table if r["item_id"] == "hum-1")
    assert json.loads(hum["controls"]) == {"tone": "neg", "flags": ["spam"], "entities": [[0, 7, "PER"]]}
    assert [a["label"] for a in hum["answers"]] == [["sport", "tech"]] * 2


def test_parquet_label_sets_load_as_a_hugging_face_dataset(written, tmp_path):
    paths = written
    script = ("import json, sys\n"
              "from datasets import load_dataset\n"
              "ds = load_dataset('parquet', data_files=sys.argv[1], split='train')\n"
              "print(json.dumps({'label': str(ds.features['label']), 'rows': {r['item_id']: r['label'] for r in ds}}))\n")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-c", script, str(paths["parquet"])], env=env, capture_output=True,
                          text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert "string" in got["label"] and got["rows"] == {e: label for e, (_, label) in WANT.items()}


def test_the_command_reads_the_task_file(store, tmp_path, monkeypatch):
    from hitl.cli import app

    task = tmp_path / "task.toml"
    task.write_text(TASK)
    monkeypatch.setenv("HITL_DB_URL", store.url)
    monkeypatch.setenv("HITL_TASK", str(task))
    done = CliRunner().invoke(app, ["export", "--out", str(tmp_path / "x.jsonl"), "--only", "all"])
    assert done.exit_code == 0, done.output
    lines = {json.loads(x)["item_id"]: json.loads(x) for x in (tmp_path / "x.jsonl").read_text().splitlines()}
    assert lines["hum-1"]["label"] == ["sport", "tech"] and lines["hum-1"]["controls"]["tone"] == "neg"
    assert lines["acc-per"]["certified"] is False and lines["acc-per-ok"]["certified"] is True
