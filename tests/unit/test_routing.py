from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from connector.routing import FORCED_BONUS, Batch, Router, RoutingDecision, RoutingPolicy

LABELS = ["ham", "spam", "promo"]


def batch_of(rows, metadata=None, *, prefix="i") -> Batch:
    probs = np.asarray(rows, dtype=float)
    return Batch([f"{prefix}{i}" for i in range(len(probs))], probs, LABELS, metadata)


def confident_batch(n: int, *, conf: float = 0.99, prefix: str = "i", metadata=None) -> Batch:
    rest = (1.0 - conf) / 2
    return batch_of(np.tile([conf, rest, rest], (n, 1)), metadata, prefix=prefix)


def uncertain_batch(n: int, seed: int = 0) -> Batch:
    """n rows whose top probability is in [0.4, 0.6): all below any threshold used here."""
    rng = np.random.default_rng(seed)
    top = rng.uniform(0.4, 0.6, size=n)
    second = (1 - top) * rng.uniform(0.5, 1.0, size=n)
    return batch_of(np.column_stack([top, second, 1 - top - second]))


def by_id(decisions: list[RoutingDecision]) -> dict[str, RoutingDecision]:
    return {d.item_id: d for d in decisions}


def no_spot(**kw) -> Router:
    return Router(RoutingPolicy(spot_check_rate=0.0, **kw))


# --- thresholds -------------------------------------------------------------------------------

def test_accept_threshold_splits_confident_from_uncertain_at_the_boundary():
    b = batch_of([[0.95, 0.03, 0.02], [0.9499, 0.03, 0.0201], [0.20, 0.70, 0.10]])
    d = no_spot(accept_threshold=0.95).route(b)
    assert [(x.action, x.reason) for x in d] == [
        ("auto_accept", "confident"), ("review", "uncertain"), ("review", "uncertain")]
    assert [x.label for x in d] == ["ham", "ham", "spam"]
    assert [x.confidence for x in d] == pytest.approx([0.95, 0.9499, 0.70])
    assert all(x.score is None for x in d)


def test_label_override_replaces_global_threshold_for_that_label_only():
    b = batch_of([[0.85, 0.10, 0.05], [0.10, 0.85, 0.05], [0.05, 0.10, 0.85], [0.10, 0.02, 0.88]])
    d = no_spot(accept_threshold=0.95, label_overrides={"ham": 0.8, "promo": 0.87}).route(b)
    assert [x.action for x in d] == ["auto_accept", "review", "review", "auto_accept"]


def test_predicted_reject_label_with_enough_confidence_is_auto_rejected():
    b = batch_of([[0.05, 0.92, 0.03], [0.10, 0.80, 0.10], [0.92, 0.05, 0.03], [0.02, 0.97, 0.01]])
    d = no_spot(accept_threshold=0.95, reject_label="spam", reject_threshold=0.9).route(b)
    assert [(x.action, x.reason) for x in d] == [
        ("auto_reject", "reject_label"), ("review", "uncertain"), ("review", "uncertain"),
        ("auto_reject", "reject_label")]


def test_without_reject_label_nothing_is_auto_rejected():
    d = no_spot(accept_threshold=0.99).route(batch_of([[0.0, 1.0, 0.0], [0.3, 0.6, 0.1]]))
    assert [x.action for x in d] == ["auto_accept", "review"]


# --- metadata rules ---------------------------------------------------------------------------

def test_force_review_rules_fire_on_risk_and_ood_and_not_on_missing_fields():
    meta = [{"risk": "high"}, {"risk": "low"}, {"ood": True}, {"ood": False}, {}, {"risk": None}]
    b = confident_batch(6, metadata=meta)
    router = no_spot(force_review=[{"field": "risk", "op": "==", "value": "high"},
                                   {"field": "ood", "op": "==", "value": True}])
    d = router.route(b)
    assert [(x.action, x.reason) for x in d] == [
        ("review", "forced:risk"), ("auto_accept", "confident"), ("review", "forced:ood"),
        ("auto_accept", "confident"), ("auto_accept", "confident"), ("auto_accept", "confident")]


@pytest.mark.parametrize(("op", "value", "fires"), [
    ("==", 3, [False, True, False]), ("!=", 3, [True, False, True]), (">=", 3, [False, True, True]),
    ("<=", 3, [True, True, False]), (">", 3, [False, False, True]), ("<", 3, [True, False, False]),
    ("in", [1, 5], [True, False, True]),
])
def test_each_rule_operator_compares_metadata_value_to_rule_value(op, value, fires):
    b = confident_batch(4, metadata=[{"n": 1}, {"n": 3}, {"n": 5}, {"n": "text"}])
    d = no_spot(force_review=[{"field": "n", "op": op, "value": value}]).route(b)
    assert [x.action == "review" for x in d[:3]] == fires
    if op not in ("==", "!=", "in"):
        assert d[3].action == "auto_accept"  # "text" >= 3 cannot be compared: the rule does not fire


def test_forced_review_wins_over_auto_reject_and_names_the_first_rule_that_fired():
    b = batch_of([[0.01, 0.98, 0.01]], [{"risk": "high", "ood": True}])
    router = no_spot(reject_label="spam", reject_threshold=0.9,
                     force_review=[{"field": "ood", "op": "==", "value": True},
                                   {"field": "risk", "op": "in", "value": ["high", "critical"]}])
    (d,) = router.route(b)
    assert (d.action, d.reason) == ("review", "forced:ood")


# --- priority ---------------------------------------------------------------------------------

def test_priority_is_uncertainty_plus_bonus_for_forced_items():
    b = batch_of([[0.6, 0.3, 0.1], [0.99, 0.005, 0.005], [0.5, 0.3, 0.2]], [{}, {"risk": "high"}, {}])
    d = no_spot(force_review=[{"field": "risk", "op": "==", "value": "high"}]).route(b)
    assert [x.priority for x in d] == pytest.approx([0.4, 0.01 + FORCED_BONUS, 0.5])
    ranked = sorted(d, key=lambda x: -x.priority)
    assert [x.item_id for x in ranked] == ["i1", "i2", "i0"]


# --- spot checks and gold ---------------------------------------------------------------------

def test_spot_check_count_is_within_binomial_bounds():
    n, rate = 20_000, 0.05
    d = Router(RoutingPolicy(spot_check_rate=rate, seed=11)).route(confident_batch(n))
    counts = Counter((x.action, x.reason) for x in d)
    sd = np.sqrt(n * rate * (1 - rate))
    assert abs(counts["review", "spot_check"] - n * rate) <= 4 * sd
    assert counts["review", "spot_check"] + counts["auto_accept", "confident"] == n


def test_spot_checks_are_drawn_only_from_would_be_accepted_items():
    b = batch_of([[0.99, 0.005, 0.005]] * 50 + [[0.5, 0.3, 0.2]] * 50)
    d = Router(RoutingPolicy(spot_check_rate=1.0)).route(b)
    assert {x.reason for x in d[:50]} == {"spot_check"}
    assert {x.reason for x in d[50:]} == {"uncertain"}


def test_same_seed_gives_same_decisions_and_other_seed_differs():
    b = confident_batch(2_000)
    gold = confident_batch(300, prefix="g", metadata=[{"is_gold": True}] * 300)
    policy = {"spot_check_rate": 0.1, "gold_rate": 0.2, "seed": 5}
    a = Router(policy).route(b, gold_pool=gold)
    assert a == Router(policy).route(b, gold_pool=gold)
    c = Router({**policy, "seed": 6}).route(b, gold_pool=gold)
    assert [x.reason for x in a] != [x.reason for x in c]


def test_router_stream_advances_across_batches_reproducibly():
    b = confident_batch(1_000)
    r1, r2 = Router({"spot_check_rate": 0.1}), Router({"spot_check_rate": 0.1})
    first, second = r1.route(b), r1.route(b)
    assert [x.reason for x in first] != [x.reason for x in second]
    assert r2.route(b) == first and r2.route(b) == second


def test_gold_items_are_mixed_in_at_the_gold_rate_from_flagged_pool_items():
    b = uncertain_batch(200)
    pool_meta = [{"is_gold": True}] * 60 + [{"is_gold": False}] * 20 + [{}] * 20
    gold = confident_batch(100, prefix="g", metadata=pool_meta)
    d = no_spot(gold_rate=0.15).route(b, gold_pool=gold)
    golds = [x for x in d if x.reason == "gold"]
    assert len(golds) == 30  # round(0.15 * 200 batch items in review)
    assert all(x.action == "review" for x in golds)
    ids = [x.item_id for x in golds]
    assert len(set(ids)) == 30 and all(int(i[1:]) < 60 for i in ids)  # distinct, flagged gold only
    assert [x.item_id for x in d[:200]] == list(b.item_ids)  # batch order first, then gold


def test_gold_share_is_computed_on_the_review_set_and_capped_by_the_pool():
    b = batch_of([[0.99, 0.005, 0.005]] * 90 + [[0.5, 0.3, 0.2]] * 10)
    gold = confident_batch(3, prefix="g", metadata=[{"is_gold": True}] * 3)
    assert sum(x.reason == "gold" for x in no_spot(gold_rate=0.2).route(b, gold_pool=gold)) == 2
    assert sum(x.reason == "gold" for x in no_spot(gold_rate=1.0).route(b, gold_pool=gold)) == 3
    assert sum(x.reason == "gold" for x in no_spot(gold_rate=0.5).route(b)) == 0  # no pool given


def test_gold_count_over_many_batches_tracks_the_rate():
    router = no_spot(gold_rate=0.05, seed=3)
    gold = confident_batch(500, prefix="g", metadata=[{"is_gold": True}] * 500)
    total = sum(sum(x.reason == "gold" for x in router.route(uncertain_batch(400, s), gold_pool=gold))
                for s in range(10))
    assert total == 10 * round(0.05 * 400)


# --- review budget and active learning --------------------------------------------------------

def test_review_budget_is_honoured_and_the_rest_deferred_over_budget():
    b = uncertain_batch(100)
    d = no_spot(review_budget=25).route(b)
    counts = Counter((x.action, x.reason) for x in d)
    assert counts == {("review", "active_learning"): 25, ("defer", "over_budget"): 75}


def test_budget_picks_are_the_least_confident_with_their_scores():
    b = uncertain_batch(100, seed=1)
    d = no_spot(review_budget=10, strategy="least_confidence").route(b)
    lc = 1.0 - b.probs.max(axis=1)
    expected = sorted(range(100), key=lambda i: (-lc[i], i))[:10]
    picked = [i for i, x in enumerate(d) if x.action == "review"]
    assert picked == sorted(expected)
    assert [d[i].score for i in picked] == pytest.approx(lc[picked].tolist())
    assert all(x.score is None for x in d if x.action == "defer")


def test_margin_strategy_picks_smallest_top_two_gaps_under_budget():
    b = uncertain_batch(100, seed=2)
    d = no_spot(review_budget=10, strategy="margin").route(b)
    s = np.sort(b.probs, axis=1)
    gap = s[:, -1] - s[:, -2]
    expected = sorted(range(100), key=lambda i: (gap[i], i))[:10]
    assert sorted(i for i, x in enumerate(d) if x.action == "review") == sorted(expected)


def test_budget_fitting_the_uncertain_set_sends_all_as_uncertain_without_scores():
    d = no_spot(review_budget=100).route(uncertain_batch(40))
    assert {(x.action, x.reason, x.score) for x in d} == {("review", "uncertain", None)}


@pytest.mark.parametrize(("budget", "reviewed", "reason"), [(40, 40, "uncertain"), (39, 39, "active_learning"),
                                                          (0, 0, None)])
def test_budget_boundary_one_below_the_uncertain_count_defers_exactly_one(budget, reviewed, reason):
    d = no_spot(review_budget=budget).route(uncertain_batch(40))
    assert sum(x.action == "review" for x in d) == reviewed
    assert sum(x.action == "defer" for x in d) == 40 - reviewed
    assert {x.reason for x in d if x.action == "review"} == ({reason} if reason else set())


def test_forced_items_and_spot_checks_take_budget_seats_first():
    meta = [{"risk": "high"}] * 3 + [{}] * 27
    rows = [[0.99, 0.005, 0.005]] * 10 + [[0.5, 0.3, 0.2]] * 20
    router = Router(RoutingPolicy(spot_check_rate=1.0, review_budget=15,
                                  force_review=[{"field": "risk", "op": "==", "value": "high"}]))
    counts = Counter((x.action, x.reason) for x in router.route(batch_of(rows, meta)))
    # 3 forced + 7 spot checks leave 5 seats for 20 uncertain items
    assert counts == {("review", "forced:risk"): 3, ("review", "spot_check"): 7,
                      ("review", "active_learning"): 5, ("defer", "over_budget"): 15}


def test_random_share_mixes_random_picks_into_the_budget():
    b = uncertain_batch(200, seed=4)
    d = no_spot(review_budget=20, random_share=0.5, seed=1).route(b)
    lc = 1.0 - b.probs.max(axis=1)
    top10 = set(sorted(range(200), key=lambda i: (-lc[i], i))[:10])
    picked = {i for i, x in enumerate(d) if x.action == "review"}
    assert len(picked) == 20 and top10 <= picked
    assert picked != set(sorted(range(200), key=lambda i: (-lc[i], i))[:20])


# --- policy validation ------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"accept_threshold": 1.5}, "less than or equal to 1"),
    ({"accept_threshold": -0.1}, "greater than or equal to 0"),
    ({"spot_check_rate": 2.0}, "spot_check_rate"),
    ({"gold_rate": -0.5}, "gold_rate"),
    ({"random_share": 1.1}, "random_share"),
    ({"review_budget": -1}, "review_budget"),
    ({"reject_label": "spam", "reject_threshold": 0.99, "accept_threshold": 0.9}, "must be <= accept_threshold"),
    ({"reject_label": "spam"}, "set together"),
    ({"reject_threshold": 0.5}, "set together"),
    ({"label_overrides": {"ham": 1.2}}, "label_overrides"),
    ({"strategy": "bald"}, "strategy"),
    ({"force_review": [{"field": "risk", "op": "~=", "value": 1}]}, "op"),
    ({"force_review": [{"field": "risk", "op": "in", "value": "high"}]}, "needs a list"),
    ({"acept_threshold": 0.9}, "acept_threshold"),
])
def test_invalid_policy_is_a_clear_validation_error(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        RoutingPolicy(**kwargs)


def test_policy_naming_labels_the_batch_lacks_is_rejected_at_route_time():
    with pytest.raises(ValueError, match="promotion"):
        no_spot(label_overrides={"promotion": 0.8}).route(confident_batch(2))


def test_batch_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="shape"):
        Batch(["a", "b"], np.array([[0.5, 0.5]]), ["x", "y"])
    with pytest.raises(ValueError, match="metadata"):
        Batch(["a"], np.array([[0.5, 0.5]]), ["x", "y"], [{}, {}])


def test_policy_loads_from_a_task_file_dict():
    policy = RoutingPolicy.model_validate({
        "accept_threshold": 0.9, "label_overrides": {"spam": 0.97}, "review_budget": 50,
        "force_review": [{"field": "risk", "op": "==", "value": "high"}], "strategy": "entropy",
        "random_share": 0.2, "seed": 7,
    })
    assert policy.threshold_for("spam") == 0.97 and policy.threshold_for("ham") == 0.9
    assert Router(policy).policy is policy


# --- audits -----------------------------------------------------------------------------------

def test_audits_take_their_share_of_the_seats_and_the_strategy_fills_the_rest():
    rows = [[0.99, 0.005, 0.005]] * 60 + [[0.5, 0.3, 0.2]] * 40
    d = no_spot(review_budget=20, audit_share=0.25, seed=3).route(batch_of(rows))
    counts = Counter((x.action, x.reason) for x in d)
    assert counts[("review", "audit")] == 5
    assert counts[("review", "active_learning")] == 15
    assert sum(x.action == "review" for x in d) == 20


def test_audits_are_uniform_over_every_item_no_rule_sends_to_a_human():
    """Over many batches, each item is audited equally often whatever its confidence (a chi-square
    test on the per-position counts, and the confident share of audits near the pool's 60 %)."""
    from scipy import stats

    rows = [[0.99, 0.005, 0.005]] * 60 + [[0.5, 0.3, 0.2]] * 40
    router = no_spot(review_budget=20, audit_share=0.25, seed=0)
    hits = np.zeros(100)
    for _ in range(2000):
        for i, x in enumerate(router.route(batch_of(rows))):
            hits[i] += x.reason == "audit"
    assert hits.sum() == 2000 * 5
    assert stats.chisquare(hits).pvalue > 0.001
    confident_share = hits[:60].sum() / hits.sum()
    assert abs(confident_share - 0.6) < 0.02  # sd about 0.0049


def test_audited_confident_items_are_not_auto_accepted_and_forced_items_are_not_audited():
    meta = [{"risk": "high"}] * 5 + [{}] * 95
    router = Router(RoutingPolicy(spot_check_rate=0.0, audit_share=1.0, review_budget=10, accept_threshold=0.9,
                                  force_review=[{"field": "risk", "op": "==", "value": "high"}]))
    d = router.route(confident_batch(100, metadata=meta))
    counts = Counter((x.action, x.reason) for x in d)
    assert counts == {("review", "forced:risk"): 5, ("review", "audit"): 5, ("auto_accept", "confident"): 90}
    assert all(x.reason == "forced:risk" for x in d[:5])


def test_without_a_budget_audits_are_a_share_of_the_uncertain_count():
    rows = [[0.99, 0.005, 0.005]] * 80 + [[0.5, 0.3, 0.2]] * 20
    d = no_spot(audit_share=0.5, accept_threshold=0.9).route(batch_of(rows))
    assert sum(x.reason == "audit" for x in d) == 10
    assert sum(x.action == "review" for x in d) >= 20  # every uncertain item is still reviewed


def test_a_threshold_of_one_accepts_nothing_even_a_probability_rounded_to_one():
    d = no_spot(accept_threshold=1.0).route(batch_of([[1.0, 0.0, 0.0], [0.999, 0.0005, 0.0005]]))
    assert [x.action for x in d] == ["review", "review"]
    d = no_spot(accept_threshold=0.5, label_overrides={"ham": 1.0}).route(batch_of([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert [x.action for x in d] == ["review", "auto_accept"]
