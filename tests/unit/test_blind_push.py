"""What an annotator is shown: the item's own fields and its key, the model's label only where the
task allows, and never why the item was sent (reason, priority, gold, audit, model version)."""

from __future__ import annotations

import pytest

from connector.store import StateStore
from connector.task_spec import TaskSpec
from connector.tools.offline import OfflineTool
from sync.service import SUGGESTION_SOURCE, SyncService

REASONS = ["gold", "audit", "spot_check", "uncertain", "active_learning", "forced:amount"]


def _store(empty_store: StateStore, n_ordinary: int = 0) -> StateStore:
    """One item per reason (the gold one flagged gold), plus ``n_ordinary`` uncertain ones, all predicted
    and routed to review."""
    store = empty_store
    store.migrate()
    rows = [{"id": f"it-{r}", "text": f"a text sent as {r}", "source": "web", "is_gold": r == "gold",
             **({"gold_label": "a"} if r == "gold" else {})} for r in REASONS]
    rows += [{"id": f"more-{i}", "text": f"another text {i}", "source": "web"} for i in range(n_ordinary)]
    store.items.ingest(rows)
    items = store.items.list()
    store.predictions.record([{"item_id": it.id, "model_version": "v7", "label": "a", "confidence": 0.91,
                               "probabilities": {"a": 0.91, "b": 0.09}} for it in items])
    reason = {f"it-{r}": r for r in REASONS}
    store.decisions.record([{"item_id": it.id, "action": "review", "reason": reason.get(it.external_id, "uncertain"),
                             "priority": 0.3, "score": 0.5} for it in items])
    return store


def _pushed(store: StateStore, **spec) -> dict[str, object]:
    tool = OfflineTool()
    sync = SyncService(store, TaskSpec(name="blind", labels=["a", "b"], **spec), tool)
    sync.push_pass()
    return {it.external_id: it for it in tool.projects[sync.project].items.values()}


def test_a_task_carries_the_items_fields_and_key_and_nothing_about_why_it_was_sent(empty_store):
    pushed = _pushed(_store(empty_store), show_suggestion="always")
    assert len(pushed) == len(REASONS)
    for key, it in pushed.items():
        assert it.data == {"text": f"a text sent as {key.removeprefix('it-')}", "source": "web"}
        assert it.model_version == SUGGESTION_SOURCE  # never the version ("v7")
        assert it.score == pytest.approx(0.91) and it.result  # "always": every item has its suggestion


def test_checks_never_show_the_models_label(empty_store):
    pushed = _pushed(_store(empty_store), blind_share=0.0)  # the default mode, no blind share
    shown = {key.removeprefix("it-") for key, it in pushed.items() if it.result is not None}
    assert shown == {"uncertain", "active_learning", "forced:amount"}
    for reason in ("gold", "audit", "spot_check"):
        hidden = pushed[f"it-{reason}"]
        assert hidden.result is None and hidden.score is None and hidden.model_version is None


def test_a_random_share_of_ordinary_items_is_blind_too_and_stays_so(empty_store):
    store = _store(empty_store, n_ordinary=400)
    first = _pushed(store, blind_share=0.5)
    ordinary = [k for k in first if k.startswith("more-")]
    blind = {k for k in ordinary if first[k].result is None}
    assert 160 <= len(blind) <= 240  # about half of 400 (binomial: 5 sd either side)
    # the draw is the item's: another process deciding again (a re-push) hides the same items
    again = SyncService(store, TaskSpec(name="blind", labels=["a", "b"], blind_share=0.5), OfflineTool())
    decisions = store.decisions.latest()
    assert {it.external_id for it in store.items.list() if it.external_id.startswith("more-")
            and not again.shows_suggestion(it, decisions[it.id])} == blind


def test_never_shows_no_suggestion_at_all(empty_store):
    pushed = _pushed(_store(empty_store), show_suggestion="never")
    assert all(it.result is None for it in pushed.values())


def test_the_task_file_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="show_suggestion"):
        TaskSpec(name="x", labels=["a", "b"], show_suggestion="sometimes")
