"""The state store's tests, one class per repository, written once and run on SQLite
(``tests/unit/test_store*.py``, one file per repository) and on PostgreSQL (``StoreCases``, all of
them, in ``tests/integration/test_store_postgres.py``).

A subclass provides ``empty_store``: a ``StateStore`` on a fresh, empty database (the unit tests'
is in ``tests/unit/conftest.py``).
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
from sqlalchemy.exc import DBAPIError

from connector.ingest import ingest_file
from connector.store import (
    ITEM_STATES,
    AbsenceResult,
    EmbeddingRepository,
    StateStore,
    alembic_config,
    content_hash,
)
from connector.store.models import Base

TABLES = {"items", "predictions", "routing_decisions", "pushes", "annotations", "cursors", "alembic_version",
          "labels", "job_runs", "embeddings", "snapshots", "label_events", "online_decisions", "callback_deliveries"}
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def ingest_three(store):
    store.items.ingest([{"id": "a", "text": "alpha"}, {"id": "b", "text": "beta"}, {"id": "c", "text": "gamma"}])
    return {item.external_id: item.id for item in store.items.list()}


def prediction(item_id, model_version="m1", label="pos", confidence=0.9):
    return {"item_id": item_id, "model_version": model_version, "label": label, "confidence": confidence,
            "probabilities": {"pos": confidence, "neg": 1 - confidence}}


def annotation(item_id, remote_id="101", value=("pos",), updated_at=T0, status="submitted", annotator="ann1"):
    return {"item_id": item_id, "tool": "label_studio", "project": "7", "remote_id": remote_id,
            "annotator": annotator, "value": list(value), "status": status, "remote_updated_at": updated_at,
            "lead_time": 3.5}


class _Cases:
    @pytest.fixture
    def store(self, empty_store: StateStore) -> StateStore:
        empty_store.migrate()
        return empty_store


class FacadeCases(_Cases):
    """The facade: migrations, one engine for every repository, one transaction per call."""

    def test_migrate_creates_every_table_on_an_empty_database_matching_the_models(self, empty_store):
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert empty_store.schema_revision() is None
        assert set(inspect(empty_store.engine).get_table_names()) == set()
        empty_store.migrate()
        assert empty_store.schema_revision() == head == "0008"
        assert set(inspect(empty_store.engine).get_table_names()) == TABLES
        with empty_store.engine.connect() as conn:  # the revision and the models agree, column by column
            assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata) == []

    def test_a_second_migrate_is_a_no_op_that_keeps_the_data(self, store):
        store.items.ingest([{"id": "a", "text": "alpha"}])
        store.migrate()
        assert store.schema_revision() == "0008"
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["0008"]
        assert [i.external_id for i in store.items.list()] == ["a"]

    def test_every_repository_shares_the_facades_engine_and_sessions(self, store):
        repos = [store.items, store.predictions, store.decisions, store.pushes, store.annotations, store.cursors,
                 store.labels, store.embeddings, store.job_runs, store.snapshots, store.history]
        assert all(r.engine is store.engine for r in repos)
        assert len({id(r._sessions) for r in repos}) == 1

    def test_a_failing_call_changes_nothing(self, store):
        ids = ingest_three(store)
        with pytest.raises(ValueError, match="unknown item ids"):
            store.predictions.record([prediction(ids["a"]), prediction(999_999)])
        with pytest.raises(ValueError, match="unknown item ids"):
            store.pushes.begin([ids["a"], 999_999], "label_studio", "7")
        assert store.predictions.list([ids["a"]]) == [] and store.pushes.pending("label_studio", "7") == []
        assert store.items.get(ids["a"]).state == "ingested"


class ItemCases(_Cases):
    """``store.items``: ingest, versions, states."""

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
        items = store.items.list()
        assert [(i.external_id, i.version, i.state) for i in items] == [("1", 1, "ingested"), ("2", 1, "ingested")]
        assert items[0].data == {"text": "good film", "lang": "en"}
        assert items[0].content_hash == content_hash("good film")

    def test_a_changed_text_becomes_version_2_and_version_1_is_kept(self, store, tmp_path):
        ingest_file(store, write_jsonl(tmp_path / "v1.jsonl", [{"id": "x", "text": "first draft"}]))
        (v1,) = store.items.list()
        store.predictions.record([prediction(v1.id)])
        result = ingest_file(store, write_jsonl(tmp_path / "v2.jsonl", [{"id": "x", "text": "second draft"}]))
        assert (result.added, result.new_versions, result.unchanged) == (0, 1, 0)
        old, new = store.items.versions("x")
        assert (old.version, old.text, old.is_current, old.state) == (1, "first draft", False, "predicted")
        assert (new.version, new.text, new.is_current, new.state) == (2, "second draft", True, "ingested")
        assert [i.id for i in store.items.list()] == [new.id]  # only the current version is listed
        assert store.predictions.list([old.id])[0].model_version == "m1"  # the old version's history stays
        # the same changed record again is unchanged; going back to the first text is version 3
        assert store.items.ingest([{"id": "x", "text": "second draft"}]).unchanged == 1
        assert store.items.ingest([{"id": "x", "text": "first draft"}]).new_versions == 1
        assert [v.version for v in store.items.versions("x")] == [1, 2, 3]

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
        assert [i.external_id for i in store.items.list()] == ["1", "5"]

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
        items = {i.external_id: i for i in store.items.list()}
        assert sorted(items) == ["1", "3", "6"]
        assert items["3"].text == "a quoted text\nover two lines" and items["3"].is_gold
        assert items["3"].meta == {"gold_label": "pos"} and "gold_label" not in items["3"].data
        assert not items["1"].is_gold and "is_gold" not in items["1"].data

    def test_gold_label_sets_and_spans_are_stored_as_the_labels_table_stores_them(self, store):
        from connector.label_sets import decode_label_set, decode_spans

        result = store.items.ingest([
            {"id": "set", "text": "t", "is_gold": True, "gold_label": ["tech", "sport"]},
            {"id": "none", "text": "u", "is_gold": True, "gold_label": []},
            {"id": "spans", "text": "Ada in Oslo", "is_gold": True, "gold_label": [[7, 11, "LOC"], [0, 3, "PER"]]},
            {"id": "bad", "text": "v", "is_gold": True, "gold_label": [{"x": 1}]}])
        assert result.added == 3 and len(result.errors) == 1 and "neither a label set nor spans" in result.errors[0]
        gold = {i.external_id: i.meta["gold_label"] for i in store.items.list()}
        assert decode_label_set(gold["set"]) == ["sport", "tech"] and decode_label_set(gold["none"]) == []
        assert decode_spans(gold["spans"]) == [(0, 3, "PER"), (7, 11, "LOC")]

    def test_api_records_bad_ones_are_errors_and_lose_nothing_else(self, store):
        result = store.items.ingest([{"id": "ok", "text": "t"}, "not a dict", {"id": 1.5, "text": "t"},
                                    {"id": "nan", "text": "t", "score": float("nan")}, {"id": "ok2", "text": "u"}])
        assert result.added == 2
        assert [e.split(":")[0] for e in result.errors] == ["record 2", "record 3", "record 4"]
        assert [i.external_id for i in store.items.list()] == ["ok", "ok2"]

    def test_a_record_without_an_id_gets_a_stable_id_from_the_content_hash(self, store):
        first = store.items.ingest([{"text": "no id here"}, {"id": "", "text": "empty id"}])
        again = store.items.ingest([{"text": "no id here"}, {"id": None, "text": "empty id"}])
        assert (first.added, again.added, again.unchanged) == (2, 0, 2)
        ids = [i.external_id for i in store.items.list()]
        assert ids == [f"sha256-{content_hash('no id here')[:16]}", f"sha256-{content_hash('empty id')[:16]}"]

    def test_metadata_fields_and_gold_flag_are_kept_apart_from_the_data(self, store):
        store.items.ingest([{"doc": 7, "body": "text", "source": "web", "split": "test", "is_gold": True,
                            "gold_label": "pos"}],
                           text_field="body", id_field="doc", metadata_fields=["source", "split"])
        (item,) = store.items.list()
        assert (item.external_id, item.text, item.is_gold) == ("7", "text", True)
        assert item.data == {"body": "text"}  # the gold answer never reaches what annotators see
        assert item.meta == {"source": "web", "split": "test", "gold_label": "pos"}
        # a change in metadata alone is a new version too: nothing is overwritten in place
        result = store.items.ingest([{"doc": 7, "body": "text", "source": "api", "split": "test", "is_gold": True,
                                     "gold_label": "pos"}],
                                    text_field="body", id_field="doc", metadata_fields=["source", "split"])
        assert result.new_versions == 1 and [v.meta["source"] for v in store.items.versions("7")] == ["web", "api"]

    def test_a_repeated_id_within_one_call_is_versioned_in_order(self, store):
        result = store.items.ingest([{"id": "d", "text": "one"}, {"id": "d", "text": "one"},
                                     {"id": "d", "text": "two"}])
        assert (result.added, result.unchanged, result.new_versions) == (1, 1, 1)
        assert [(v.version, v.text, v.is_current) for v in store.items.versions("d")] == [(1, "one", False),
                                                                                          (2, "two", True)]

    def test_counts_by_state_lists_every_state_and_set_state_consolidates(self, store):
        ids = ingest_three(store)
        assert store.items.set_state([ids["a"], ids["b"]], "consolidated") == 2
        assert store.items.counts_by_state() == dict.fromkeys(ITEM_STATES, 0) | {"ingested": 1, "consolidated": 2}
        assert [i.external_id for i in store.items.list(state="consolidated", limit=1)] == ["a"]
        with pytest.raises(ValueError, match="unknown state"):
            store.items.set_state([ids["c"]], "done")


class RoutingCases(_Cases):
    """``store.predictions`` and ``store.decisions``."""

    def test_predictions_are_idempotent_per_model_version(self, store):
        ids = ingest_three(store)
        assert store.predictions.record([prediction(ids["a"]), prediction(ids["b"])]) == 2
        assert store.predictions.record([prediction(ids["a"], confidence=0.1)]) == 0  # same version: ignored
        assert store.predictions.record([prediction(ids["a"], model_version="m2", label="neg", confidence=0.6)]) == 1
        preds = store.predictions.list([ids["a"]])
        assert [(p.model_version, p.label, p.confidence) for p in preds] == [("m1", "pos", 0.9), ("m2", "neg", 0.6)]
        assert preds[0].probabilities == {"pos": 0.9, "neg": pytest.approx(0.1)}
        item = store.items.get(ids["a"])
        assert (item.state, item.model_version) == ("predicted", "m2")
        assert store.items.counts_by_state() == dict.fromkeys(ITEM_STATES, 0) | {"ingested": 1, "predicted": 2}

    def test_decisions_move_items_to_routed_and_the_latest_decision_counts(self, store):
        ids = ingest_three(store)
        store.predictions.record([prediction(i) for i in ids.values()])
        assert store.decisions.record([
            {"item_id": ids["a"], "action": "review", "reason": "uncertain", "priority": 0.2, "score": 0.55},
            {"item_id": ids["b"], "action": "review", "reason": "uncertain", "priority": 0.8, "score": 0.51},
            {"item_id": ids["c"], "action": "auto_accept", "reason": "confident", "priority": 0.0},
        ]) == 3
        store.decisions.record([{"item_id": ids["a"], "action": "auto_accept", "reason": "re-routed", "priority": 0}])
        assert store.items.counts_by_state()["routed"] == 3
        review = store.decisions.routed("review")
        assert [(item.external_id, d.reason, d.model_version) for item, d in review] == [("b", "uncertain", "m1")]
        assert [item.external_id for item, _ in store.decisions.routed()] == ["b", "a", "c"]  # highest priority first

    def test_requeue_deferred_puts_only_deferred_routed_items_back_to_predicted(self, store):
        ids = ingest_three(store)
        store.predictions.record([{"item_id": i, "model_version": "v1", "label": "pos", "confidence": 0.5,
                                   "probabilities": {"pos": 0.5}} for i in ids.values()])
        store.decisions.record([{"item_id": ids["a"], "action": "defer", "reason": "over_budget", "priority": 0.5},
                                {"item_id": ids["b"], "action": "review", "reason": "uncertain", "priority": 0.5},
                                {"item_id": ids["c"], "action": "auto_accept", "reason": "confident", "priority": 0.1}])
        assert store.decisions.requeue_deferred() == 1
        assert {k: store.items.get(i).state for k, i in ids.items()} == {"a": "predicted", "b": "routed", "c": "routed"}
        assert [it.external_id for it in store.items.stale("v2")] == ["a", "b", "c"] and store.items.stale("v1") == []
        assert store.pushes.remote_ids([ids["a"]], "label_studio", "7") == {}


class PushCases(_Cases):
    """``store.pushes``: begin, confirm, pending after a crash, cancel."""

    def test_push_begin_confirm_and_pending_after_a_simulated_crash(self, store):
        ids = ingest_three(store)
        a, b, c = ids["a"], ids["b"], ids["c"]
        begun = store.pushes.begin([a, b, c], "label_studio", "7")
        assert [(p.item_id, p.status, p.remote_id) for p in begun] == [(a, "pending", None), (b, "pending", None),
                                                                      (c, "pending", None)]
        # the remote call created tasks for a and b, then the process died before confirming c
        assert store.pushes.confirm({a: 501, b: "502"}, "label_studio", "7") == 2
        # a restarted process: c is found pending; nothing is begun twice
        restarted = StateStore(store.url)
        try:
            assert [p.item_id for p in restarted.pushes.pending("label_studio", "7")] == [c]
            assert restarted.pushes.begin([a, b, c], "label_studio", "7") == []
            assert restarted.pushes.confirm({a: "501"}, "label_studio", "7") == 0  # confirming again: a no-op
            with pytest.raises(ValueError, match="already confirmed"):
                restarted.pushes.confirm({a: "999"}, "label_studio", "7")
            # reconciliation: no remote copy of c, so it is dropped and begun again
            assert restarted.pushes.cancel([a, c], "label_studio", "7") == 1
            assert [p.item_id for p in restarted.pushes.begin([c], "label_studio", "7")] == [c]
            assert restarted.pushes.confirm({c: 503}, "label_studio", "7") == 1
        finally:
            restarted.close()
        assert store.pushes.pending("label_studio", "7") == []
        assert store.pushes.find("label_studio", "7", 502).item_id == b
        assert store.pushes.find("label_studio", "8", 502) is None
        assert store.items.counts_by_state()["pushed"] == 3
        # the same items may go to another project or tool
        assert len(store.pushes.begin([a], "argilla", "reviews")) == 1

    def test_confirming_a_push_that_was_never_begun_or_an_unknown_tool_is_refused(self, store):
        ids = ingest_three(store)
        with pytest.raises(ValueError, match="no push"):
            store.pushes.confirm({ids["a"]: 1}, "label_studio", "7")
        with pytest.raises(ValueError, match="unknown tool"):
            store.pushes.begin([ids["a"]], "prodigy", "7")


class AnnotationCases(_Cases):
    """``store.annotations``, ``store.cursors`` and ``store.labels``."""

    def test_annotation_upsert_inserts_ignores_repeats_and_older_and_takes_newer(self, store):
        ids = ingest_three(store)
        a = ids["a"]
        store.pushes.begin([a], "label_studio", "7")
        store.pushes.confirm({a: 501}, "label_studio", "7")
        first = store.annotations.upsert([annotation(a)])
        assert (first.inserted, first.updated, first.unchanged) == (1, 0, 0)
        assert store.items.get(a).state == "annotated"
        same = store.annotations.upsert([annotation(a)])
        assert (same.inserted, same.updated, same.unchanged) == (0, 0, 1)
        # the same instant written in another zone (and as a string) is not newer
        same_instant = (T0.astimezone(timezone(timedelta(hours=2)))).isoformat()
        assert store.annotations.upsert([annotation(a, value=["neg"], updated_at=same_instant)]).unchanged == 1
        newer = store.annotations.upsert([annotation(a, value=["neg"], updated_at=T0 + timedelta(minutes=5),
                                                     annotator="ann2")])
        assert (newer.inserted, newer.updated, newer.unchanged) == (0, 1, 0)
        older = store.annotations.upsert([annotation(a, value=["pos"], updated_at=T0 + timedelta(minutes=1))])
        assert (older.inserted, older.updated, older.unchanged) == (0, 0, 1)
        (stored,) = store.annotations.list([a])
        assert (stored.value, stored.annotator, stored.status, stored.lead_time) == (["neg"], "ann2", "submitted", 3.5)
        assert stored.remote_updated_at == T0 + timedelta(minutes=5)
        assert stored.remote_updated_at.tzinfo is not None
        # a deletion that is newer is recorded (status), not lost
        deleted = store.annotations.upsert([annotation(a, status="deleted", updated_at=T0 + timedelta(hours=1))])
        assert deleted.updated == 1 and store.annotations.list(status="deleted")[0].remote_id == "101"

    def test_annotations_of_several_annotators_and_tools_are_kept_apart(self, store):
        ids = ingest_three(store)
        rows = [annotation(ids["a"], remote_id="1"), annotation(ids["a"], remote_id="2", annotator="ann2"),
                annotation(ids["a"], remote_id="1") | {"tool": "argilla", "project": "reviews"},
                annotation(ids["b"], remote_id="3", status="skipped")]
        assert store.annotations.upsert(rows).inserted == 4
        assert len(store.annotations.list([ids["a"]])) == 3 and len(store.annotations.list(tool="argilla")) == 1
        # a skipped annotation does not make its item annotated
        assert store.items.get(ids["b"]).state == "ingested" and store.items.get(ids["a"]).state == "annotated"
        with pytest.raises(ValueError, match="unknown annotation status"):
            store.annotations.upsert([annotation(ids["c"], status="maybe")])

    def test_a_revived_row_replaces_a_stored_deletion_whatever_its_time_and_others_do_not(self, store):
        a = ingest_three(store)["a"]
        store.annotations.upsert([annotation(a, status="deleted", updated_at=T0 + timedelta(hours=1))])
        assert store.annotations.upsert([annotation(a)]).unchanged == 1  # older, not revived: stays deleted
        assert store.annotations.upsert([annotation(a) | {"revive": True}]).updated == 1
        (stored,) = store.annotations.list([a])
        assert (stored.status, stored.remote_updated_at) == ("submitted", T0)
        # revive overrides a deletion only, never a newer live answer
        store.annotations.upsert([annotation(a, value=["neg"], updated_at=T0 + timedelta(minutes=5))])
        assert store.annotations.upsert([annotation(a) | {"revive": True}]).unchanged == 1
        assert store.annotations.list([a])[0].value == ["neg"]

    def test_settle_absent_marks_an_answer_once_then_deletes_it_keeping_its_time_and_clears_on_return(self, store):
        ids = ingest_three(store)
        rows = [annotation(ids["a"], remote_id="1") | {"tool": "argilla", "project": "d"},
                annotation(ids["b"], remote_id="2", updated_at=T0 + timedelta(minutes=3)) | {"tool": "argilla",
                                                                                            "project": "d"},
                annotation(ids["c"], remote_id="1")]  # another tool's answer: never settled by argilla's pulls
        store.annotations.upsert(rows)

        def state():
            return {(a.tool, a.remote_id): (a.status, a.missed_pulls) for a in store.annotations.list()}

        first = store.annotations.settle_absent("argilla", "d", ["1"])
        assert (first.missing, first.deleted) == (1, 0)
        assert state() == {("argilla", "1"): ("submitted", 0), ("argilla", "2"): ("submitted", 1),
                           ("label_studio", "1"): ("submitted", 0)}
        store.annotations.settle_absent("argilla", "d", ["1", "2"])  # back: the mark is cleared
        assert state()[("argilla", "2")] == ("submitted", 0)
        store.annotations.settle_absent("argilla", "d", ["1"])
        second = store.annotations.settle_absent("argilla", "d", ["1"])
        assert (second.missing, second.deleted) == (0, 1)
        (gone,) = store.annotations.list(tool="argilla", status="deleted")
        assert (gone.remote_id, gone.remote_updated_at) == ("2", T0 + timedelta(minutes=3))
        assert store.annotations.settle_absent("argilla", "d", ["1"]) == AbsenceResult(0, 0)

    def test_cursors_round_trip_per_tool_project_and_name(self, store):
        assert store.cursors.get("label_studio", "7", "updated_at") is None
        assert store.cursors.get("label_studio", "7", "updated_at", "1970-01-01") == "1970-01-01"
        store.cursors.set("label_studio", "7", "updated_at", "2026-11-01T12:00:00+00:00")
        store.cursors.set("label_studio", "8", "updated_at", "other project")
        store.cursors.set("label_studio", "7", "updated_at", "2026-11-02T08:00:00+00:00")
        assert store.cursors.get("label_studio", "7", "updated_at") == "2026-11-02T08:00:00+00:00"
        assert store.cursors.get("label_studio", "8", "updated_at") == "other project"
        assert store.cursors.get("argilla", "7", "updated_at") is None

    def test_labels_replace_per_item_and_move_items_between_consolidated_and_annotated(self, store):
        ids = ingest_three(store)
        row = {"item_id": ids["a"], "label": "pos", "status": "settled", "method": "majority", "n_answers": 3,
               "reason": "agreed", "agreement": np.float64(2 / 3)}
        assert store.labels.save([row, {**row, "item_id": ids["b"], "label": None, "status": "unsettled",
                                        "reason": "tie"}]) == 2
        assert [(lb.label, lb.agreement) for lb in store.labels.list()] == [("pos", pytest.approx(2 / 3))]
        assert store.items.get(ids["a"]).state == "consolidated" and store.items.get(ids["b"]).state == "ingested"
        store.labels.save([{**row, "label": None, "status": "unsettled", "reason": "tie"}])
        assert store.labels.list() == [] and store.items.get(ids["a"]).state == "annotated"
        assert {lb.reason for lb in store.labels.list(status=None)} == {"tie"}
        with pytest.raises(ValueError, match="unknown label status"):
            store.labels.save([{**row, "status": "maybe"}])


class EmbeddingCases(_Cases):
    """``store.embeddings``, and the cache on its own (``EmbeddingRepository.open``)."""

    def test_the_embedding_cache_keeps_the_first_vector_per_encoder_and_hash(self, store):
        v1, v2 = np.arange(3, dtype=np.float32).tobytes(), np.ones(3, dtype=np.float32).tobytes()
        assert store.embeddings.put("enc", {"h1": v1, "h2": v2}) == 2
        assert store.embeddings.put("enc", {"h1": v2, "h3": v1}) == 1
        assert store.embeddings.get("enc", ["h1", "h3", "missing"]) == {"h1": v1, "h3": v1}
        assert store.embeddings.get("other", ["h1"]) == {}

    def test_the_cache_opened_alone_migrates_once_and_shares_the_database(self, empty_store):
        v = np.ones(2, dtype=np.float32).tobytes()
        with EmbeddingRepository.open(empty_store.url) as cache:  # migrates the empty database
            assert cache.put("enc", {"h": v}) == 1
        assert empty_store.schema_revision() == "0008"
        with EmbeddingRepository.open(empty_store.url) as again:  # a second open: the migration is a no-op
            assert again.get("enc", ["h"]) == {"h": v}
        assert empty_store.embeddings.get("enc", ["h"]) == {"h": v}
        assert EmbeddingRepository(empty_store.engine).get("enc", ["h"]) == {"h": v}  # on an engine alone


class RunCases(_Cases):
    """``store.job_runs`` and ``store.snapshots``."""

    def test_a_job_slot_is_claimed_once_and_the_summary_keeps_the_last_error(self, store):
        first = store.job_runs.claim("sync", "2026-11-27T10:00:00+00:00", "host-a")
        assert first is not None and store.job_runs.claim("sync", "2026-11-27T10:00:00+00:00", "host-b") is None
        store.job_runs.finish(first, "failed", error="boom", detail={"n": np.int64(3)})
        second = store.job_runs.claim("sync", "2026-11-27T10:01:00+00:00", "host-b")
        store.job_runs.finish(second, "ok", detail={"pushed": 2})
        summary = store.job_runs.summary()["sync"]
        assert (summary["runs"], summary["failures"]) == (2, 1)
        assert summary["last_run"].id == second and summary["last_error"].error == "boom"
        assert [r.host for r in store.job_runs.list("sync")] == ["host-b", "host-a"]

    def test_snapshots_are_dated_and_listed_oldest_first(self, store):
        assert store.snapshots.latest("agreement") is None
        store.snapshots.add("agreement", {"fleiss": np.float64(0.5), "matrix": np.eye(2)})
        store.snapshots.add("agreement", {"fleiss": 0.7})
        store.snapshots.add("other", {"x": 1})
        assert [s.payload["fleiss"] for s in store.snapshots.list("agreement")] == [0.5, 0.7]
        assert store.snapshots.latest("agreement").payload == {"fleiss": 0.7}
        assert store.snapshots.list("agreement")[0].payload["matrix"] == [[1.0, 0.0], [0.0, 1.0]]


def events(store, item_id=None, **filters):
    """``(kind, item_id, actor, detail)`` of the history's events, oldest first."""
    return [(e.kind, e.item_id, e.actor, e.detail) for e in store.history.list(item_id=item_id, **filters)]


class HistoryCases(_Cases):
    """``store.history``: every change to an item's label leaves exactly its event, in the change's
    transaction, and the database refuses to change or delete one."""

    def test_an_answer_added_edited_deleted_and_revived_each_leave_exactly_one_event(self, store):
        a = ingest_three(store)["a"]
        where = {"tool": "label_studio", "project": "7", "remote_id": "101"}
        store.annotations.upsert([annotation(a)])
        store.annotations.upsert([annotation(a, value=["neg"], updated_at=T0 + timedelta(minutes=5))])
        store.annotations.upsert([annotation(a, value=["neg"], status="deleted", updated_at=T0 + timedelta(hours=1))])
        store.annotations.upsert([annotation(a, value=["pos"], annotator="ann2") | {"revive": True}])
        assert events(store, a) == [
            ("answer_added", a, "ann1", where | {"value": ["pos"], "status": "submitted"}),
            ("answer_edited", a, "ann1", where | {"value": ["neg"], "status": "submitted", "old_value": ["pos"],
                                                 "old_status": "submitted"}),
            ("answer_deleted", a, "ann1", where | {"value": ["neg"], "status": "deleted", "old_value": ["neg"],
                                                  "old_status": "submitted"}),
            ("answer_revived", a, "ann2", where | {"value": ["pos"], "status": "submitted", "old_value": ["neg"],
                                                  "old_status": "deleted", "old_annotator": "ann1"}),
        ]
        # the tool's own times, and ours
        assert [e.source_at for e in store.history.for_item(a)] == [T0, T0 + timedelta(minutes=5),
                                                                   T0 + timedelta(hours=1), T0]
        assert all(e.at.tzinfo is not None for e in store.history.for_item(a))

    def test_repeats_older_answers_and_replacements_that_change_nothing_leave_no_event(self, store):
        a = ingest_three(store)["a"]
        store.annotations.upsert([annotation(a)])
        store.annotations.upsert([annotation(a)])  # the same answer again
        store.annotations.upsert([annotation(a, value=["neg"], updated_at=T0 - timedelta(minutes=1))])  # older
        newer_same = store.annotations.upsert([annotation(a, updated_at=T0 + timedelta(minutes=1))])
        assert newer_same.updated == 1  # stored (a newer time), but the answer did not change
        assert [k for k, *_ in events(store, a)] == ["answer_added"]
        # two rows for one new answer in one call: added, then edited
        b = store.items.list()[1].id
        store.annotations.upsert([annotation(b, remote_id="201"),
                                  annotation(b, remote_id="201", value=["neg"], updated_at=T0 + timedelta(minutes=2))])
        assert [(k, d["value"]) for k, _, _, d in events(store, b)] == [("answer_added", ["pos"]),
                                                                          ("answer_edited", ["neg"])]

    def test_a_deletion_seen_first_and_an_answer_absent_twice_are_deleted_on_record(self, store):
        ids = ingest_three(store)
        store.annotations.upsert([annotation(ids["a"], status="deleted")])
        ((kind, _, _, detail),) = events(store, ids["a"])
        assert (kind, detail["old_value"], detail["old_status"]) == ("answer_deleted", None, None)
        row = annotation(ids["b"], remote_id="2", updated_at=T0 + timedelta(minutes=3))
        store.annotations.upsert([row | {"tool": "argilla", "project": "d"}])
        store.annotations.settle_absent("argilla", "d", [])  # missing once: marked, still live
        assert [k for k, *_ in events(store, ids["b"])] == ["answer_added"]
        store.annotations.settle_absent("argilla", "d", [])
        store.annotations.settle_absent("argilla", "d", [])  # already deleted: nothing more
        (_, deleted) = store.history.for_item(ids["b"])
        assert (deleted.kind, deleted.actor, deleted.source_at) == ("answer_deleted", "ann1", T0 + timedelta(minutes=3))
        assert deleted.detail == {"tool": "argilla", "project": "d", "remote_id": "2", "value": ["pos"],
                                  "status": "deleted", "old_value": ["pos"], "old_status": "submitted",
                                  "inferred": "absent from 2 whole pulls"}

    def test_a_consensus_change_is_on_record_and_a_label_saved_again_is_not(self, store):
        ids = ingest_three(store)
        row = {"item_id": ids["a"], "label": "pos", "status": "settled", "method": "majority", "n_answers": 2,
               "reason": "agreed", "agreement": np.float64(1.0)}
        store.labels.save([row])
        store.labels.save([row | {"n_answers": 3, "agreement": 2 / 3}])  # more answers, same label: no change
        store.labels.save([row | {"label": None, "status": "unsettled", "reason": "tie", "agreement": float("nan")}])
        store.labels.save([row | {"label": "neg", "method": "adjudicated", "actor": "lead"}])
        got = events(store, ids["a"])
        assert [(k, actor, d["old_label"], d["old_status"], d["label"], d["status"], d["method"])
                for k, _, actor, d in got] == [
            ("consensus_changed", "scheduler", None, None, "pos", "settled", "majority"),
            ("consensus_changed", "scheduler", "pos", "settled", None, "unsettled", "majority"),
            ("consensus_changed", "lead", None, "unsettled", "neg", "settled", "adjudicated")]
        assert got[0][3]["agreement"] == 1.0 and got[1][3]["agreement"] is None  # NaN is not JSON: None

    def test_auto_accepts_and_rejects_are_on_record_with_model_version_confidence_and_threshold(self, store):
        ids = ingest_three(store)
        store.predictions.record([prediction(i, confidence=0.97) for i in ids.values()])
        store.decisions.record([
            {"item_id": ids["a"], "action": "auto_accept", "reason": "confident", "priority": 0.03,
             "label": "pos", "confidence": 0.97, "threshold": 0.95},
            {"item_id": ids["b"], "action": "auto_accept", "reason": "confident", "priority": 0.03},  # from its prediction
            {"item_id": ids["c"], "action": "review", "reason": "uncertain", "priority": 0.5},
        ])
        store.decisions.record([{"item_id": ids["c"], "action": "auto_reject", "reason": "reject_label",
                                 "priority": 0.1, "threshold": 0.9}])
        assert events(store) == [
            ("auto_accepted", ids["a"], "router", {"label": "pos", "confidence": 0.97, "model_version": "m1",
                                                   "threshold": 0.95, "reason": "confident"}),
            ("auto_accepted", ids["b"], "router", {"label": "pos", "confidence": 0.97, "model_version": "m1",
                                                   "threshold": None, "reason": "confident"}),
            ("auto_rejected", ids["c"], "router", {"label": "pos", "confidence": 0.97, "model_version": "m1",
                                                   "threshold": 0.9, "reason": "reject_label"})]

    def test_a_threshold_change_is_on_record_once_as_a_task_wide_event(self, store):
        from connector.snapshots import ThresholdsSnapshot, write_snapshot

        for t in (0.93, 0.93, 0.9):
            write_snapshot(store, ThresholdsSnapshot(threshold=t, adapt=True, target_error=0.02, n_evidence=40))
        got = store.history.list(kind="threshold_changed")
        assert [(e.item_id, e.actor, e.detail["old"], e.detail["new"]) for e in got] == [
            (None, "scheduler", None, 0.93), (None, "scheduler", 0.93, 0.9)]
        assert got[1].detail["target_error"] == 0.02 and got[1].detail["n_evidence"] == 40
        store.snapshots.add("thresholds", {"threshold": 0.5})  # not through write_snapshot: no review of it
        assert len(store.history.list(kind="threshold_changed")) == 2

    def test_a_send_back_is_on_record_for_each_item_pushed_there(self, store):
        ids = ingest_three(store)
        store.pushes.begin([ids["a"], ids["b"]], "label_studio", "7")
        store.pushes.confirm({ids["a"]: 501}, "label_studio", "7")  # b: pending, never sent
        row = {"item_id": ids["a"], "label": None, "status": "unsettled", "method": "majority", "n_answers": 2,
               "reason": "tie"}
        store.labels.save([row, row | {"item_id": ids["b"]}], sent_back=[(ids["a"], 3, "tie"), (ids["b"], 3, "tie")],
                          tool="label_studio", project="7")
        assert [(k, i) for k, i, _, _ in events(store)] == [("consensus_changed", ids["a"]),
                                                            ("consensus_changed", ids["b"]), ("sent_back", ids["a"])]
        assert events(store, kind="sent_back")[0][3] == {"tool": "label_studio", "project": "7", "remote_id": "501",
                                                         "answers_wanted": 3, "reason": "tie"}
        with pytest.raises(ValueError, match="tool and the project"):
            store.labels.save([row], sent_back=[(ids["a"], 3, "tie")])

    def test_update_and_delete_on_the_history_are_refused_by_the_database(self, store):
        a = ingest_three(store)["a"]
        store.annotations.upsert([annotation(a)])
        for statement in ("UPDATE label_events SET kind = 'answer_edited'", "UPDATE label_events SET detail = '{}'",
                          "DELETE FROM label_events", f"DELETE FROM label_events WHERE item_id = {a}"):
            with pytest.raises(DBAPIError, match="append-only"), store.engine.begin() as conn:
                conn.execute(text(statement))
        (kept,) = store.history.for_item(a)
        assert (kept.kind, kept.detail["value"]) == ("answer_added", ["pos"])

    def test_a_failed_call_leaves_no_event(self, store):
        a = ingest_three(store)["a"]
        with pytest.raises(ValueError, match="unknown item ids"):
            store.annotations.upsert([annotation(a), annotation(999_999, remote_id="2")])
        with pytest.raises(ValueError, match="unknown item ids"):
            store.labels.save([{"item_id": a, "label": "pos", "status": "settled", "method": "majority",
                                "n_answers": 1, "reason": "agreed"}, {"item_id": 999_999, "label": "pos",
                                "status": "settled", "method": "majority", "n_answers": 1, "reason": "agreed"}])
        with pytest.raises(ValueError, match="unknown item ids"):
            store.decisions.record([{"item_id": a, "action": "auto_accept", "reason": "confident", "priority": 0},
                                    {"item_id": 999_999, "action": "review", "reason": "uncertain", "priority": 0}])
        with pytest.raises(ValueError, match="unknown item ids"):
            store.history.record([{"item_id": a, "kind": "adjudicated", "actor": "lead", "detail": {"label": "pos"}},
                                  {"item_id": 999_999, "kind": "adjudicated", "actor": "lead"}])
        with pytest.raises(ValueError, match="unknown event kind"):
            store.history.record([{"item_id": a, "kind": "relabelled", "actor": "lead"}])
        assert store.history.list() == [] and store.annotations.list() == [] and store.labels.list(status=None) == []

    def test_a_change_whose_event_fails_is_not_stored_either(self, store, monkeypatch):
        import connector.store.annotations as annotations_module

        a = ingest_three(store)["a"]

        def broken(s, rows):
            raise RuntimeError("the event insert failed")

        monkeypatch.setattr(annotations_module, "append_events", broken)
        with pytest.raises(RuntimeError, match="event insert failed"):
            store.annotations.upsert([annotation(a)])
        assert store.annotations.list() == [] and store.items.get(a).state == "ingested"

    def test_adjudication_records_through_the_repository_and_reads_back_by_item_and_kind(self, store):
        ids = ingest_three(store)
        assert store.history.record([{"item_id": ids["b"], "kind": "adjudicated", "actor": "lead",
                                      "detail": {"old_label": None, "label": "neg", "note": "sarcasm"}}]) == 1
        store.annotations.upsert([annotation(ids["b"])])
        assert [e.kind for e in store.history.for_item(ids["b"])] == ["adjudicated", "answer_added"]
        assert [e.kind for e in store.history.list(kind=["adjudicated"])] == ["adjudicated"]
        later = store.history.list(kind="answer_added")[0].at
        assert [e.kind for e in store.history.list(since=later)] == ["answer_added"]
        assert store.history.for_item(ids["a"]) == []


class StoreCases(FacadeCases, ItemCases, RoutingCases, PushCases, AnnotationCases, EmbeddingCases, RunCases,
                 HistoryCases):
    """Every repository's cases, for a database that runs them all (PostgreSQL)."""
