"""The stopping rule: kappa between successive candidates on a fixed stop set, over a window of
retrainings; kept by the retrain job, told by ``hitl status``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from typer.testing import CliRunner

from connector.model_store import ModelStore
from connector.snapshots import StoppingSnapshot, read_history, read_latest
from connector.stopping import StoppingPolicy, advance, choose_stop_set, cohen_kappa, describe, stop_set_id
from connector.store import StateStore
from connector.task_spec import TaskSpec
from sync.jobs import JobContext, retrain_job

LABELS = ["a", "b", "c"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Heads of a 16-wide stub encoder gain nothing from torch's intra-op threads; on a busy CPU they cost 10x."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_kappa_equals_sklearns_on_random_predictions(k):
    rng = np.random.default_rng(k)
    for flip in (0.0, 0.01, 0.2, 0.9):
        a = rng.integers(k, size=400)
        b = np.where(rng.random(400) < flip, rng.integers(k, size=400), a)
        assert cohen_kappa(a, b, n_classes=k) == pytest.approx(cohen_kappa_score(a, b, labels=np.arange(k)), abs=1e-12)
    # sklearn's undefined case (one class throughout in both): identical predictions, so 1.0
    assert cohen_kappa([1] * 50, [1] * 50, n_classes=k) == 1.0
    with pytest.raises(ValueError):
        cohen_kappa([0, 1], [0], n_classes=k)


def test_the_stop_set_is_the_lowest_content_hashes():
    pool = [(f"e{i}", h) for i, h in enumerate(["c", "a", "d", "b", "a"])]
    assert choose_stop_set(pool, 3) == ["e1", "e4", "e3"]  # ties by external id
    assert choose_stop_set(pool, 10) == ["e1", "e4", "e3", "e0", "e2"]


def _flip(pred: np.ndarray, n: int, k: int = 3) -> np.ndarray:
    out = pred.copy()
    out[:n] = (out[:n] + 1) % k
    return out


def test_the_rule_fires_after_window_kappas_in_a_row_at_the_level_and_a_dip_restarts_the_count():
    policy = StoppingPolicy(kappa=0.99, window=3)
    members = [(f"e{i}", f"h{i}") for i in range(400)]
    base = np.random.default_rng(0).integers(3, size=400)
    # predictions round by round: 40 changed (kappa ~0.85), then 1 changed (~0.996) thrice, a dip, three more
    changes = [None, 40, 1, 1, 0, 30, 0, 1, 0]
    snap, seen = None, []
    pred = base
    for n in changes:
        pred = pred if n is None else _flip(pred, n)
        snap = advance(snap, candidate=f"v{len(seen) + 1}", members=members, predictions=pred, labels=LABELS,
                       policy=policy, n_labels=10 * len(seen))
        seen.append((snap.kappa, snap.run, snap.fired))
    kappas = [k for k, _, _ in seen]
    assert kappas[0] is None and kappas[1] < 0.9 and all(k >= 0.99 for k in kappas[2:5]) and kappas[5] < 0.99
    assert [r for _, r, _ in seen] == [0, 0, 1, 2, 3, 0, 1, 2, 3]
    assert [f for _, _, f in seen] == [False, False, False, False, True, False, False, False, True]
    assert snap.kappas == pytest.approx(kappas[-3:]) and len(snap.kappas) == 3
    assert snap.set_id == stop_set_id(members, LABELS) and snap.predictions == pred.tolist()
    assert describe(snap) == ("kappa 1.000, 0.996, 1.000 over the last 3 retrainings: more labels are unlikely to "
                              "change the model")


def test_a_set_that_changed_restarts_the_count():
    policy = StoppingPolicy(kappa=0.9, window=2)
    members = [(f"e{i}", f"h{i}") for i in range(50)]
    pred = np.zeros(50, dtype=int)
    first = advance(None, candidate="v1", members=members, predictions=pred, labels=LABELS, policy=policy)
    second = advance(first, candidate="v2", members=members, predictions=pred, labels=LABELS, policy=policy)
    third = advance(second, candidate="v3", members=members, predictions=pred, labels=LABELS, policy=policy)
    assert (second.kappa, second.run, third.run, third.fired) == (1.0, 1, 2, True)
    changed_text = [*members[:-1], ("e49", "new hash")]
    after = advance(third, candidate="v4", members=changed_text, predictions=pred, labels=LABELS, policy=policy)
    assert (after.kappa, after.kappas, after.run, after.fired) == (None, [], 0, False)
    assert after.set_id != third.set_id and "not yet" in describe(after)
    relabelled = advance(third, candidate="v4", members=members, predictions=pred, labels=["a", "b", "d"],
                         policy=policy)  # the indices mean other labels now
    assert relabelled.kappa is None and relabelled.run == 0
    with pytest.raises(ValueError, match="predictions for a stop set"):
        advance(third, candidate="v4", members=members, predictions=pred[:10], labels=LABELS, policy=policy)


def test_the_words_before_any_retraining_and_before_the_window_fills():
    assert describe(None) == "no retraining has predicted the stop set yet"
    policy = StoppingPolicy(kappa=0.99, window=3)
    members = [(f"e{i}", "h") for i in range(20)]
    first = advance(None, candidate="v1", members=members, predictions=[0] * 20, labels=LABELS, policy=policy)
    assert describe(first) == ("not yet: the stop set (20 items) has been predicted once (by v1); 3 kappas in a row "
                               "at >= 0.99 needed")
    second = advance(first, candidate="v2", members=members, predictions=[0] * 19 + [1], labels=LABELS, policy=policy)
    assert describe(second) == "not yet: kappa 0.000 over the last 1 retraining, 0 in a row at >= 0.99 (3 needed)"


# ------------------------------------------------------------------------------------------------ the retrain job


def _project(tmp_path, *, n: int = 160, labelled: int = 60, stopping: dict | None = None):
    """A store of ``n`` items on synthetic texts (stub encoder), the first ``labelled`` with settled labels."""
    from tests.support.stub_encoder import StubEncoder
    from tests.unit.test_classifier import texts_for

    rng = np.random.default_rng(0)
    truth = [LABELS[int(i)] for i in rng.integers(3, size=n)]
    texts = [f"{t} n{i}" for i, t in enumerate(texts_for(truth, seed=1))]
    store = StateStore(f"sqlite:///{tmp_path}/state.db")
    store.migrate()
    store.items.ingest([{"id": f"it{i}", "text": t} for i, t in enumerate(texts)])
    ids = {it.external_id: it.id for it in store.items.list()}
    store.labels.save([{"item_id": ids[f"it{i}"], "label": truth[i], "status": "settled", "method": "seed",
                        "n_answers": 2, "reason": "settled"} for i in range(labelled)])
    spec = TaskSpec(name="stop", labels=LABELS, retraining={"min_test": 5, "folds": 3},
                    stopping={"stop_set_size": 50, "kappa": 0.9, "window": 2, **(stopping or {})})
    encoder = StubEncoder()
    return JobContext(store, spec, ModelStore(tmp_path / "models"), encoder=encoder), truth, ids


def _label(ctx: JobContext, ids: dict[str, int], truth: list[str], which: range) -> None:
    ctx.store.labels.save([{"item_id": ids[f"it{i}"], "label": truth[i], "status": "settled", "method": "majority",
                            "n_answers": 2, "reason": "settled"} for i in which])


def test_each_retraining_predicts_one_fixed_stop_set_through_the_embedding_cache(tmp_path):
    ctx, truth, ids = _project(tmp_path)
    store = ctx.store
    first = retrain_job(ctx, force=True)
    snap = read_latest(store, StoppingSnapshot).snapshot
    unlabelled = {it.external_id: it.content_hash for it in store.items.list() if it.id not in
                  {lb.item_id for lb in store.labels.list()}}
    assert snap.external_ids == choose_stop_set(unlabelled.items(), 50) and len(snap.external_ids) == 50
    assert snap.candidate == first["candidate"] == "v1" and snap.kappa is None and first["stopping"]["run"] == 0
    clf, _ = ctx.models.load("v1", encoder=ctx.encoder)
    texts = [store.items.versions(e)[-1].text for e in snap.external_ids]
    expected = [LABELS.index(lb) for lb in clf.predict(texts)]
    assert snap.predictions == expected and snap.labels == LABELS and snap.n_labels == 60

    store.items.ingest([{"id": "late", "text": "a0 a1 w1 w2"}])  # ingested after the set was chosen: not in it
    _label(ctx, ids, truth, range(60, 80))  # some of the stop set may get labels: it stays in the set
    calls = ctx.encoder.calls
    second = retrain_job(ctx, force=True)
    again = read_latest(store, StoppingSnapshot).snapshot
    assert again.external_ids == snap.external_ids and again.set_id == snap.set_id and again.candidate == "v2"
    in_set = sum(f"it{i}" in snap.external_ids for i in range(60, 80))
    assert 0 < in_set < 20  # the new labels' texts are encoded but for the set's members, cached already,
    assert second["encoded"] == 20 - in_set and ctx.encoder.calls == calls + 1  # and the set costs nothing
    assert again.kappa == pytest.approx(cohen_kappa(snap.predictions, again.predictions, n_classes=3))
    assert second["stopping"] == {"kappa": again.kappa, "run": again.run, "fired": again.fired}

    member = snap.external_ids[0]  # a member's text changes: predicted on its new text, and the count restarts
    store.items.ingest([{"id": member, "text": "b0 b1 w3"}])
    retrain_job(ctx, force=True)
    changed = read_latest(store, StoppingSnapshot).snapshot
    assert changed.external_ids == snap.external_ids and changed.set_id != snap.set_id
    assert changed.kappa is None and changed.run == 0
    assert len(read_history(store, StoppingSnapshot)) == 3
    store.close()


def test_the_rule_fires_when_retrainings_stop_moving_the_candidates_and_new_labels_that_move_them_reset_it(tmp_path):
    ctx, truth, ids = _project(tmp_path, n=300, labelled=60, stopping={"kappa": 0.999, "window": 2})
    assert retrain_job(ctx, force=True)["stopping"] == {"kappa": None, "run": 0, "fired": False}
    # no new label: the same candidate again (training is seeded), predictions unchanged
    assert [retrain_job(ctx, force=True)["stopping"] for _ in range(2)] == [
        {"kappa": 1.0, "run": 1, "fired": False}, {"kappa": 1.0, "run": 2, "fired": True}]
    assert "more labels are unlikely" in describe(read_latest(ctx.store, StoppingSnapshot).snapshot)
    _label(ctx, ids, truth, range(60, 200))  # many more labels: the model moves
    moved = retrain_job(ctx, force=True)["stopping"]
    assert moved["kappa"] < 0.999 and moved["run"] == 0 and not moved["fired"]
    ctx.store.close()


def test_a_disabled_rule_keeps_no_snapshot_and_a_pool_without_unlabelled_items_no_stop_set(tmp_path):
    ctx, _, _ = _project(tmp_path / "off", stopping={"enabled": False})
    assert "stopping" not in retrain_job(ctx, force=True) and read_latest(ctx.store, StoppingSnapshot) is None
    ctx.store.close()
    every, _, _ = _project(tmp_path / "all", n=80, labelled=80)
    assert "stopping" not in retrain_job(every, force=True) and read_latest(every.store, StoppingSnapshot) is None
    every.store.close()


# ------------------------------------------------------------------------------------------------ hitl status


def test_hitl_status_tells_the_stopping_rule(tmp_path):
    from hitl.cli import app

    env = {"HITL_DB_URL": f"sqlite:///{tmp_path}/s.db", "HITL_TASK": str(tmp_path / "none.toml")}
    with StateStore(env["HITL_DB_URL"]) as store:
        store.migrate()
    before = CliRunner().invoke(app, ["status"], env=env)
    assert before.exit_code == 0, before.output
    assert "stopping rule: no retraining has predicted the stop set yet" in before.output
    policy = StoppingPolicy(kappa=0.99, window=3)
    members = [(f"e{i}", f"h{i}") for i in range(1000)]
    pred = np.random.default_rng(1).integers(2, size=1000)
    snap = None
    with StateStore(env["HITL_DB_URL"]) as store:
        for n in (None, 300, 2, 1, 1):
            pred = pred if n is None else _flip(pred, n, k=2)
            snap = advance(snap, candidate="v", members=members, predictions=pred, labels=["a", "b"], policy=policy)
            store.snapshots.add(snap.kind, snap.model_dump())
            if n == 2:
                halfway = CliRunner().invoke(app, ["status"], env=env).output
    assert "stopping rule: not yet: kappa 0.400, 0.996 over the last 2 retrainings, 1 in a row at >= 0.99" in halfway
    fired = CliRunner().invoke(app, ["status"], env=env).output
    assert ("stopping rule: kappa 0.996, 0.998, 0.998 over the last 3 retrainings: more labels are unlikely to "
            "change the model") in fired


def test_a_label_set_task_pools_the_kappa_over_every_label_decision_of_the_stop_set(tmp_path):
    from connector.control_models import control_store, load_version
    from tests.unit.test_sync_controls import TOPICS, _text, _truth

    store = StateStore(f"sqlite:///{tmp_path}/state.db")
    store.migrate()
    store.items.ingest([{"id": f"it{i}", "text": _text(i)} for i in range(120)])
    ids = {it.external_id: it.id for it in store.items.list()}
    store.labels.save([{"item_id": ids[f"it{i}"], "label": json.dumps(sorted(_truth(i)), separators=(",", ":")),
                        "status": "settled", "method": "seed", "n_answers": 2, "reason": "settled"} for i in range(48)])
    spec = TaskSpec(name="sets", labels=TOPICS, multi_label=True, retraining={"min_test": 5, "folds": 3},
                    stopping={"stop_set_size": 30, "kappa": 0.99, "window": 2})
    from tests.support.stub_encoder import StubEncoder

    ctx = JobContext(store, spec, ModelStore(tmp_path / "models"), encoder=StubEncoder())
    first = retrain_job(ctx, force=True)
    snap = read_latest(store, StoppingSnapshot).snapshot
    assert first["stopping"] == {"kappa": None, "run": 0, "fired": False} and len(snap.external_ids) == 30
    loaded = load_version(control_store(ctx.models.root, "label"), encoder=ctx.encoder)
    texts = [store.items.versions(e)[-1].text for e in snap.external_ids]
    probs = loaded.model.predict_proba(texts)
    own = [str(c) for c in loaded.model.classes_]
    expected = [int(probs[r, own.index(c)] >= loaded.model.thresholds_[own.index(c)])
                for r in range(len(texts)) for c in TOPICS]
    assert snap.predictions == expected  # one 0/1 decision per member and label, in the task's label order
    again = retrain_job(ctx, force=True)  # the same labels: the same candidate, every decision the same
    assert again["stopping"] == {"kappa": 1.0, "run": 1, "fired": False}
    with pytest.raises(ValueError, match="label decisions each"):
        advance(None, candidate="v9", members=[("a", "h")], predictions=[1], labels=TOPICS,
                policy=StoppingPolicy(), label_sets=True)
    store.close()
