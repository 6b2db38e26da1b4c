"""The state store's tests, written once and run on SQLite (``tests/unit/test_store.py``) and on
PostgreSQL (``tests/integration/test_store_postgres.py``).

A subclass provides ``empty_store``: a ``StateStore`` on a fresh, empty database.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from connector.ingest import ingest_file
from connector.store import ITEM_STATES, StateStore, alembic_config, content_hash
from connector.store.models import Base

TABLES = {"items", "predictions", "routing_decisions", "pushes", "annotations", "cursors", "alembic_version",
          "labels", "job_runs", "embeddings", "snapshots"}
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def ingest_three(store):
    store.ingest([{"id": "a", "text": "alpha"}, {"id": "b", "text": "beta"}, {"id": "c", "text": "gamma"}])
    return {item.external_id: item.id for item in store.items()}


def prediction(item_id, model_version="m1", label="pos", confidence=0.9):
    return {"item_id": item_id, "model_version": model_version, "label": label, "confidence": confidence,
            "probabilities": {"pos": confidence, "neg": 1 - confidence}}


def annotation(item_id, remote_id="101", value=("pos",), updated_at=T0, status="submitted", annotator="ann1"):
    return {"item_id": item_id, "tool": "label_studio", "project": "7", "remote_id": remote_id,
            "annotator": annotator, "value": list(value), "status": status, "remote_updated_at": updated_at,
            "lead_time": 3.5}


class StoreCases:
    @pytest.fixture
    def store(self, empty_store: StateStore) -> StateStore:
        empty_store.migrate()
        return empty_store

    # ------------------------------------------------------------ migrations

    def test_migrate_creates_every_table_on_an_empty_database_matching_the_models(self, empty_store):
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert empty_store.schema_revision() is None
        assert set(inspect(empty_store.engine).get_table_names()) == set()
        empty_store.migrate()
        assert empty_store.schema_revision() == head == "0003"
        assert set(inspect(empty_store.engine).get_table_names()) == TABLES
        with empty_store.engine.connect() as conn:  # the revision and the models agree, column by column
            assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata) == []

    def test_a_second_migrate_is_a_no_op_that_keeps_the_data(self, store):
        store.ingest([{"id": "a", "text": "alpha"}])
        store.migrate()
        assert store.schema_revision() == "0003"
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["0003"]
        assert [i.external_id for i in store.items()] == ["a"]

    # ------------------------------------------------------------ ingest

    @pytest.mark.parametrize("fmt", ["jsonl", "csv"])
    def test_ingesting_the_same_file_twice_adds_nothing(self, store, tmp_path, fmt):
        if fmt == "jsonl":
            path = write_jsonl(tmp_path / "items.jsonl", [{"id": 1, "text": "good film", "lang": "en"},
                                                         {"id": 2, "text": "bad film", "lang": "en"}])
        else:
            path = write_csv(tmp_path / "items.csv", ["id,text,lang", "1,good film,en", '2,"bad, film",en'])
        first = ingest_file(store, path)
        second = ingest_file(store, path)
        assert (first.added, first.new_versions, first.unchanged, first.errors) == (2, 0, 0, [])
        assert (second.added, second.new_versions, second.unchanged, second.errors) == (0, 0, 2, [])
        items = store.items()
        assert [(i.external_id, i.version, i.state) for i in items] == [("1", 1, "ingested"), ("2", 1, "ingested")]
        assert items[0].data == {"text": "good film", "lang": "en"}
        assert items[0].content_hash == content_hash("good film")

    def test_a_changed_text_becomes_version_2_and_version_1_is_kept(self, store, tmp_path):
        ingest_file(store, write_jsonl(tmp_path / "v1.jsonl", [{"id": "x", "text": "first draft"}]))
        (v1,) = store.items()
        store.record_predictions([prediction(v1.id)])
        result = ingest_file(store, write_jsonl(tmp_path / "v2.jsonl", [{"id": "x", "text": "second draft"}]))
        assert (result.added, result.new_versions, result.unchanged) == (0, 1, 0)
        old, new = store.versions("x")
        assert (old.version, old.text, old.is_current, old.state) == (1, "first draft", False, "predicted")
        assert (new.version, new.text, new.is_current, new.state) == (2, "second draft", True, "ingested")
        assert [i.id for i in store.items()] == [new.id]  # only the current version is listed
        assert store.predictions([old.id])[0].model_version == "m1"  # the old version's history stays
        # the same changed record again is unchanged; going back to the first text is version 3
        assert store.ingest([{"id": "x", "text": "second draft"}]).unchanged == 1
        assert store.ingest([{"id": "x", "text": "first draft"}]).new_versions == 1
        assert [v.version for v in store.versions("x")] == [1, 2, 3]

    def test_malformed_jsonl_lines_are_reported_with_their_line_and_the_rest_ingested(self, store, tmp_path):
        path = write_jsonl(tmp_path / "mixed.jsonl", [
            {"id": 1, "text": "fine"},
            '{"id": 2, "text": "broken',
            {"id": 3},
            "",
            {"id": 4, "text": 42},
            "[1, 2]",
            {"id": 5, "text": "also fine"},
        ])
        result = ingest_file(store, path)
        assert result.added == 2
        assert [e.split(":")[0] for e in result.errors] == ["line 2", "line 3", "line 5", "line 6"]
        assert "invalid JSON" in result.errors[0] and "no text field 'text'" in result.errors[1]
        assert "must be a string, not int" in result.errors[2] and "JSON object" in result.errors[3]
        assert [i.external_id for i in store.items()] == ["1", "5"]

    def test_malformed_csv_rows_are_reported_with_their_line_and_the_rest_ingested(self, store, tmp_path):
        path = write_csv(tmp_path / "mixed.csv", [
            "id,text,is_gold,gold_label",
            "1,fine,false,",
            "2,too,many,fields,x",
            '3,"a quoted text',
            'over two lines",true,pos',
            "4,,false,",
            "5,gold?,perhaps,",
            "6,last,,",
            "7,gold without answer,true,",
        ])
        result = ingest_file(store, path)
        assert result.errors == ["line 3: 5 fields; the header has 4",
                                 "line 6: text field 'text' is empty",
                                 "line 7: gold field 'is_gold' is 'perhaps'; expected true or false",
                                 "line 9: gold item without its answer in 'gold_label'"]
        items = {i.external_id: i for i in store.items()}
        assert sorted(items) == ["1", "3", "6"]
        assert items["3"].text == "a quoted text\nover two lines" and items["3"].is_gold
        assert items["3"].meta == {"gold_label": "pos"} and "gold_label" not in items["3"].data
        assert not items["1"].is_gold and "is_gold" not in items["1"].data

    def test_api_records_bad_ones_are_errors_and_lose_nothing_else(self, store):
        result = store.ingest([{"id": "ok", "text": "t"}, "not a dict", {"id": 1.5, "text": "t"},
                               {"id": "nan", "text": "t", "score": float("nan")}, {"id": "ok2", "text": "u"}])
        assert result.added == 2
        assert [e.split(":")[0] for e in result.errors] == ["record 2", "record 3", "record 4"]
        assert [i.external_id for i in store.items()] == ["ok", "ok2"]

    def test_a_record_without_an_id_gets_a_stable_id_from_the_content_hash(self, store):
        first = store.ingest([{"text": "no id here"}, {"id": "", "text": "empty id"}])
        again = store.ingest([{"text": "no id here"}, {"id": None, "text": "empty id"}])
        assert (first.added, again.added, again.unchanged) == (2, 0, 2)
        ids = [i.external_id for i in store.items()]
        assert ids == [f"sha256-{content_hash('no id here')[:16]}", f"sha256-{content_hash('empty id')[:16]}"]

    def test_metadata_fields_and_gold_flag_are_kept_apart_from_the_data(self, store):
        store.ingest([{"doc": 7, "body": "text", "source": "web", "split": "test", "is_gold": True,
                      "gold_label": "pos"}],
                     text_field="body", id_field="doc", metadata_fields=["source", "split"])
        (item,) = store.items()
        assert (item.external_id, item.text, item.is_gold) == ("7", "text", True)
        assert item.data == {"body": "text"}  # the gold answer never reaches what annotators see
        assert item.meta == {"source": "web", "split": "test", "gold_label": "pos"}
        # a change in metadata alone is a new version too: nothing is overwritten in place
        result = store.ingest([{"doc": 7, "body": "text", "source": "api", "split": "test", "is_gold": True,
                                "gold_label": "pos"}], text_field="body", id_field="doc", metadata_fields=["source", "split"])
        assert result.new_versions == 1 and [v.meta["source"] for v in store.versions("7")] == ["web", "api"]

    def test_a_repeated_id_within_one_call_is_versioned_in_order(self, store):
        result = store.ingest([{"id": "d", "text": "one"}, {"id": "d", "text": "one"}, {"id": "d", "text": "two"}])
        assert (result.added, result.unchanged, result.new_versions) == (1, 1, 1)
        assert [(v.version, v.text, v.is_current) for v in store.versions("d")] == [(1, "one", False), (2, "two", True)]

    # ------------------------------------------------------------ predictions and routing

    def test_predictions_are_idempotent_per_model_version(self, store):
        ids = ingest_three(store)
        assert store.record_predictions([prediction(ids["a"]), prediction(ids["b"])]) == 2
        assert store.record_predictions([prediction(ids["a"], confidence=0.1)]) == 0  # same version: ignored
        assert store.record_predictions([prediction(ids["a"], model_version="m2", label="neg", confidence=0.6)]) == 1
        preds = store.predictions([ids["a"]])
        assert [(p.model_version, p.label, p.confidence) for p in preds] == [("m1", "pos", 0.9), ("m2", "neg", 0.6)]
        assert preds[0].probabilities == {"pos": 0.9, "neg": pytest.approx(0.1)}
        item = store.get_item(ids["a"])
        assert (item.state, item.model_version) == ("predicted", "m2")
        assert store.counts_by_state() == dict.fromkeys(ITEM_STATES, 0) | {"ingested": 1, "predicted": 2}

    def test_decisions_move_items_to_routed_and_the_latest_decision_counts(self, store):
        ids = ingest_three(store)
        store.record_predictions([prediction(i) for i in ids.values()])
        assert store.record_decisions([
            {"item_id": ids["a"], "action": "review", "reason": "uncertain", "priority": 0.2, "score": 0.55},
            {"item_id": ids["b"], "action": "review", "reason": "uncertain", "priority": 0.8, "score": 0.51},
            {"item_id": ids["c"], "action": "auto_accept", "reason": "confident", "priority": 0.0},
        ]) == 3
        store.record_decisions([{"item_id": ids["a"], "action": "auto_accept", "reason": "re-routed", "priority": 0}])
        assert store.counts_by_state()["routed"] == 3
        review = store.routed("review")
        assert [(item.external_id, d.reason, d.model_version) for item, d in review] == [("b", "uncertain", "m1")]
        assert [item.external_id for item, _ in store.routed()] == ["b", "a", "c"]  # highest priority first

    def test_a_failing_call_changes_nothing(self, store):
        ids = ingest_three(store)
        with pytest.raises(ValueError, match="unknown item ids"):
            store.record_predictions([prediction(ids["a"]), prediction(999_999)])
        with pytest.raises(ValueError, match="unknown item ids"):
            store.begin_push([ids["a"], 999_999], "label_studio", "7")
        assert store.predictions([ids["a"]]) == [] and store.pending_pushes("label_studio", "7") == []
        assert store.get_item(ids["a"]).state == "ingested"

    # ------------------------------------------------------------ pushes

    def test_push_begin_confirm_and_pending_after_a_simulated_crash(self, store):
        ids = ingest_three(store)
        a, b, c = ids["a"], ids["b"], ids["c"]
        begun = store.begin_push([a, b, c], "label_studio", "7")
        assert [(p.item_id, p.status, p.remote_id) for p in begun] == [(a, "pending", None), (b, "pending", None),
                                                                      (c, "pending", None)]
        # the remote call created tasks for a and b, then the process died before confirming c
        assert store.confirm_push({a: 501, b: "502"}, "label_studio", "7") == 2
        # a restarted process: c is found pending; nothing is begun twice
        restarted = StateStore(store.url)
        try:
            assert [p.item_id for p in restarted.pending_pushes("label_studio", "7")] == [c]
            assert restarted.begin_push([a, b, c], "label_studio", "7") == []
            assert restarted.confirm_push({a: "501"}, "label_studio", "7") == 0  # confirming again: a no-op
            with pytest.raises(ValueError, match="already confirmed"):
                restarted.confirm_push({a: "999"}, "label_studio", "7")
            # reconciliation: no remote copy of c, so it is dropped and begun again
            assert restarted.cancel_push([a, c], "label_studio", "7") == 1
            assert [p.item_id for p in restarted.begin_push([c], "label_studio", "7")] == [c]
            assert restarted.confirm_push({c: 503}, "label_studio", "7") == 1
        finally:
            restarted.close()
        assert store.pending_pushes("label_studio", "7") == []
        assert store.find_push("label_studio", "7", 502).item_id == b
        assert store.find_push("label_studio", "8", 502) is None
        assert store.counts_by_state()["pushed"] == 3
        # the same items may go to another project or tool
        assert len(store.begin_push([a], "argilla", "reviews")) == 1

    def test_confirming_a_push_that_was_never_begun_or_an_unknown_tool_is_refused(self, store):
        ids = ingest_three(store)
        with pytest.raises(ValueError, match="no push"):
            store.confirm_push({ids["a"]: 1}, "label_studio", "7")
        with pytest.raises(ValueError, match="unknown tool"):
            store.begin_push([ids["a"]], "prodigy", "7")

    # ------------------------------------------------------------ annotations

    def test_annotation_upsert_inserts_ignores_repeats_and_older_and_takes_newer(self, store):
        ids = ingest_three(store)
        a = ids["a"]
        store.begin_push([a], "label_studio", "7")
        store.confirm_push({a: 501}, "label_studio", "7")
        first = store.upsert_annotations([annotation(a)])
        assert (first.inserted, first.updated, first.unchanged) == (1, 0, 0)
        assert store.get_item(a).state == "annotated"
        same = store.upsert_annotations([annotation(a)])
        assert (same.inserted, same.updated, same.unchanged) == (0, 0, 1)
        # the same instant written in another zone (and as a string) is not newer
        same_instant = (T0.astimezone(timezone(timedelta(hours=2)))).isoformat()
        assert store.upsert_annotations([annotation(a, value=["neg"], updated_at=same_instant)]).unchanged == 1
        newer = store.upsert_annotations([annotation(a, value=["neg"], updated_at=T0 + timedelta(minutes=5),
                                                     annotator="ann2")])
        assert (newer.inserted, newer.updated, newer.unchanged) == (0, 1, 0)
        older = store.upsert_annotations([annotation(a, value=["pos"], updated_at=T0 + timedelta(minutes=1))])
        assert (older.inserted, older.updated, older.unchanged) == (0, 0, 1)
        (stored,) = store.annotations([a])
        assert (stored.value, stored.annotator, stored.status, stored.lead_time) == (["neg"], "ann2", "submitted", 3.5)
        assert stored.remote_updated_at == T0 + timedelta(minutes=5)
        assert stored.remote_updated_at.tzinfo is not None
        # a deletion that is newer is recorded (status), not lost
        deleted = store.upsert_annotations([annotation(a, status="deleted", updated_at=T0 + timedelta(hours=1))])
        assert deleted.updated == 1 and store.annotations(status="deleted")[0].remote_id == "101"

    def test_annotations_of_several_annotators_and_tools_are_kept_apart(self, store):
        ids = ingest_three(store)
        rows = [annotation(ids["a"], remote_id="1"), annotation(ids["a"], remote_id="2", annotator="ann2"),
                annotation(ids["a"], remote_id="1") | {"tool": "argilla", "project": "reviews"},
                annotation(ids["b"], remote_id="3", status="skipped")]
        assert store.upsert_annotations(rows).inserted == 4
        assert len(store.annotations([ids["a"]])) == 3 and len(store.annotations(tool="argilla")) == 1
        # a skipped annotation does not make its item annotated
        assert store.get_item(ids["b"]).state == "ingested" and store.get_item(ids["a"]).state == "annotated"
        with pytest.raises(ValueError, match="unknown annotation status"):
            store.upsert_annotations([annotation(ids["c"], status="maybe")])

    # ------------------------------------------------------------ cursors and states

    def test_cursors_round_trip_per_tool_project_and_name(self, store):
        assert store.get_cursor("label_studio", "7", "updated_at") is None
        assert store.get_cursor("label_studio", "7", "updated_at", "1970-01-01") == "1970-01-01"
        store.set_cursor("label_studio", "7", "updated_at", "2026-11-01T12:00:00+00:00")
        store.set_cursor("label_studio", "8", "updated_at", "other project")
        store.set_cursor("label_studio", "7", "updated_at", "2026-11-02T08:00:00+00:00")
        assert store.get_cursor("label_studio", "7", "updated_at") == "2026-11-02T08:00:00+00:00"
        assert store.get_cursor("label_studio", "8", "updated_at") == "other project"
        assert store.get_cursor("argilla", "7", "updated_at") is None

    def test_counts_by_state_lists_every_state_and_set_state_consolidates(self, store):
        ids = ingest_three(store)
        assert store.set_state([ids["a"], ids["b"]], "consolidated") == 2
        assert store.counts_by_state() == dict.fromkeys(ITEM_STATES, 0) | {"ingested": 1, "consolidated": 2}
        assert [i.external_id for i in store.items(state="consolidated", limit=1)] == ["a"]
        with pytest.raises(ValueError, match="unknown state"):
            store.set_state([ids["c"]], "done")

    # ------------------------------------------------------------ scheduler tables

    def test_labels_replace_per_item_and_move_items_between_consolidated_and_annotated(self, store):
        ids = ingest_three(store)
        row = {"item_id": ids["a"], "label": "pos", "status": "settled", "method": "majority", "n_answers": 3,
               "reason": "agreed", "agreement": np.float64(2 / 3)}
        assert store.save_labels([row, {**row, "item_id": ids["b"], "label": None, "status": "unsettled",
                                        "reason": "tie"}]) == 2
        assert [(lb.label, lb.agreement) for lb in store.labels()] == [("pos", pytest.approx(2 / 3))]
        assert store.get_item(ids["a"]).state == "consolidated" and store.get_item(ids["b"]).state == "ingested"
        store.save_labels([{**row, "label": None, "status": "unsettled", "reason": "tie"}])
        assert store.labels() == [] and store.get_item(ids["a"]).state == "annotated"
        assert {lb.reason for lb in store.labels(status=None)} == {"tie"}
        with pytest.raises(ValueError, match="unknown label status"):
            store.save_labels([{**row, "status": "maybe"}])

    def test_the_embedding_cache_keeps_the_first_vector_per_encoder_and_hash(self, store):
        v1, v2 = np.arange(3, dtype=np.float32).tobytes(), np.ones(3, dtype=np.float32).tobytes()
        assert store.put_embeddings("enc", {"h1": v1, "h2": v2}) == 2
        assert store.put_embeddings("enc", {"h1": v2, "h3": v1}) == 1
        assert store.get_embeddings("enc", ["h1", "h3", "missing"]) == {"h1": v1, "h3": v1}
        assert store.get_embeddings("other", ["h1"]) == {}

    def test_a_job_slot_is_claimed_once_and_the_summary_keeps_the_last_error(self, store):
        first = store.claim_job_run("sync", "2026-11-27T10:00:00+00:00", "host-a")
        assert first is not None and store.claim_job_run("sync", "2026-11-27T10:00:00+00:00", "host-b") is None
        store.finish_job_run(first, "failed", error="boom", detail={"n": np.int64(3)})
        second = store.claim_job_run("sync", "2026-11-27T10:01:00+00:00", "host-b")
        store.finish_job_run(second, "ok", detail={"pushed": 2})
        summary = store.job_summary()["sync"]
        assert (summary["runs"], summary["failures"]) == (2, 1)
        assert summary["last_run"].id == second and summary["last_error"].error == "boom"
        assert [r.host for r in store.job_runs("sync")] == ["host-b", "host-a"]

    def test_snapshots_are_dated_and_listed_oldest_first(self, store):
        assert store.latest_snapshot("agreement") is None
        store.add_snapshot("agreement", {"fleiss": np.float64(0.5), "matrix": np.eye(2)})
        store.add_snapshot("agreement", {"fleiss": 0.7})
        store.add_snapshot("other", {"x": 1})
        assert [s.payload["fleiss"] for s in store.snapshots("agreement")] == [0.5, 0.7]
        assert store.latest_snapshot("agreement").payload == {"fleiss": 0.7}
        assert store.snapshots("agreement")[0].payload["matrix"] == [[1.0, 0.0], [0.0, 1.0]]

    def test_requeue_deferred_puts_only_deferred_routed_items_back_to_predicted(self, store):
        ids = ingest_three(store)
        store.record_predictions([{"item_id": i, "model_version": "v1", "label": "pos", "confidence": 0.5,
                                   "probabilities": {"pos": 0.5}} for i in ids.values()])
        store.record_decisions([{"item_id": ids["a"], "action": "defer", "reason": "over_budget", "priority": 0.5},
                                {"item_id": ids["b"], "action": "review", "reason": "uncertain", "priority": 0.5},
                                {"item_id": ids["c"], "action": "auto_accept", "reason": "confident", "priority": 0.1}])
        assert store.requeue_deferred() == 1
        assert {k: store.get_item(i).state for k, i in ids.items()} == {"a": "predicted", "b": "routed", "c": "routed"}
        assert [it.external_id for it in store.stale_items("v2")] == ["a", "b", "c"] and store.stale_items("v1") == []
        assert store.remote_ids([ids["a"]], "label_studio", "7") == {}
