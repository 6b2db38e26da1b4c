"""The route pass over a real SQLite store (no tool needed: routing happens before any push)."""

import numpy as np

from connector.store import StateStore
from connector.task_spec import TaskSpec
from connector.tools.offline import OfflineTool
from sync.service import SyncService


def _store(tmp_path, n, n_gold, seed=0):
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    gold = [{"id": f"g{i}", "text": f"gold {i}", "is_gold": True, "gold_label": "pos"} for i in range(n_gold)]
    store.items.ingest([{"id": f"i{i}", "text": f"text {i}"} for i in range(n)] + gold)
    rng = np.random.default_rng(seed)
    items = store.items.list(state="ingested")
    conf = rng.uniform(0.5, 1.0, size=len(items))
    store.predictions.record([{"item_id": it.id, "model_version": "v1", "label": "a", "confidence": float(c),
                               "probabilities": {"a": float(c), "b": float(1 - c)}} for it, c in zip(items, conf)])
    return store


def test_route_pass_mixes_gold_items_at_the_set_rate_and_keeps_the_rest_for_later(tmp_path):
    store = _store(tmp_path, 400, 30)
    spec = TaskSpec(name="t", labels=["a", "b"], routing={"accept_threshold": 0.9, "spot_check_rate": 0.0,
                                                         "gold_rate": 0.1}, thresholds={"adapt": False})
    sync = SyncService(store, spec, OfflineTool())
    counts = sync.route_pass().counts
    assert counts["review"] + counts["auto_accept"] == 400  # every ordinary item routed once
    assert counts["gold"] == round(0.1 * counts["review"])
    routed = store.decisions.routed()
    gold_routed = [it for it, d in routed if it.is_gold]
    assert len(gold_routed) == counts["gold"] and all(d.reason == "gold" for it, d in routed if it.is_gold)
    still_waiting = [it for it in store.items.list(state="predicted") if it.is_gold]
    assert len(still_waiting) == 30 - counts["gold"]  # the others stay in the pool
    assert sync.route_pass().counts == {}  # nothing ordinary left: no gold drawn for an empty batch


def test_route_pass_records_a_reason_for_every_decision(tmp_path):
    store = _store(tmp_path, 100, 0, seed=3)
    spec = TaskSpec(name="t", labels=["a", "b"], routing={"accept_threshold": 0.8, "review_budget": 10},
                    thresholds={"adapt": False})
    SyncService(store, spec, OfflineTool()).route_pass()
    reasons = {d.reason for _, d in store.decisions.routed()}
    assert reasons <= {"confident", "spot_check", "active_learning", "over_budget"} and "over_budget" in reasons


def test_deferred_items_are_routed_again_only_once_every_review_item_was_answered(tmp_path):
    store = _store(tmp_path, 100, 0, seed=4)
    spec = TaskSpec(name="t", labels=["a", "b"], routing={"accept_threshold": 0.99, "spot_check_rate": 0.0,
                                                         "review_budget": 10})
    sync = SyncService(store, spec, OfflineTool())
    assert sync.route_pass().counts["review"] == 10
    assert sync.route_pass().counts == {}  # ten still wait to be pushed: no second batch
    first = [it.id for it, _ in store.decisions.routed(action="review")]
    store.items.set_state(first, "annotated")  # pushed and answered
    again = sync.route_pass().counts
    assert again["requeued"] == again["defer"] + again["review"] and again["review"] == 10
    assert not set(first) & {it.id for it, _ in store.decisions.routed(action="review")}


def test_the_review_budget_holds_for_the_whole_pass_however_many_items(tmp_path):
    store = _store(tmp_path, 300, 0, seed=5)
    spec = TaskSpec(name="t", labels=["a", "b"], routing={"accept_threshold": 0.99, "spot_check_rate": 0.0,
                                                         "review_budget": 7})
    counts = SyncService(store, spec, OfflineTool()).route_pass(batch=64).counts  # five chunks of 64
    assert counts["review"] == 7 and counts["review"] + counts["defer"] + counts["auto_accept"] == 300


def _review(store, *, threshold, meets_target):
    from connector.snapshots import ThresholdsSnapshot, write_snapshot

    write_snapshot(store, ThresholdsSnapshot(threshold=threshold, meets_target=meets_target, error_ucb=0.04, n=80,
                                             adapt=True, target_error=0.05, delta=0.05))


def test_with_adapt_nothing_is_auto_accepted_until_a_review_certifies_a_threshold(tmp_path):
    store = _store(tmp_path, 200, 0, seed=6)
    spec = TaskSpec(name="t", labels=["a", "b"], routing={"accept_threshold": 0.8, "spot_check_rate": 0.0})
    sync = SyncService(store, spec, OfflineTool())
    first = sync.route_pass().counts  # adapt = true (the default) and no review yet: the 0.8 is not certified
    assert first["auto_accept"] == 0 and first["defer"] > 50 and first["review"] + first["defer"] == 200
    waiting = {it.id for it, d in store.decisions.routed(action="defer")}
    assert {d.reason for _, d in store.decisions.routed(action="defer")} == {"uncertified"}
    assert all(store.predictions.list([i])[0].confidence >= 0.8 for i in list(waiting)[:20])  # kept as suggestions

    _review(store, threshold=None, meets_target=False)  # a review that certifies nothing: still none
    assert sync.route_pass().counts.get("auto_accept", 0) == 0

    _review(store, threshold=0.9, meets_target=True)  # certified: the waiting items are routed against it
    again = sync.route_pass().counts
    accepted = {it.id for it, d in store.decisions.routed(action="auto_accept")}
    assert again["requeued"] == len(waiting) and accepted and accepted <= waiting
    assert all(p.confidence >= 0.9 for p in store.predictions.list(list(accepted)))
    assert {d.reason for _, d in store.decisions.routed(action="defer")} <= {"uncertified"}

    _review(store, threshold=0.92, meets_target=False)  # a later review certifies nothing: auto-accept stops
    store.items.ingest([{"id": "late", "text": "a late item"}])
    (late,) = store.items.list(state="ingested")
    store.predictions.record([{"item_id": late.id, "model_version": "v1", "label": "a", "confidence": 0.99,
                               "probabilities": {"a": 0.99, "b": 0.01}}])
    assert sync.route_pass().counts == {"defer": 1}
    assert store.decisions.latest([late.id])[late.id].reason == "uncertified"
