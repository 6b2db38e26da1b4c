"""Per-label auto-accept thresholds of a label set (connector/thresholds_sets.py): the path of rules,
the scores that stand for it, the guarantee on whole sets by simulation, and the rule in the loop
(the threshold review chooses it, the router applies it label by label)."""

import json

import numpy as np
import pytest
from scipy import stats

from connector.auto_accept import clears, in_force
from connector.snapshots import Evidence, RetrainSnapshot, ThresholdsSnapshot, read_latest, write_snapshot
from connector.task_spec import TaskSpec
from connector.thresholds import ACCEPT_NOTHING, choose_accept_threshold
from connector.thresholds_sets import LEVELS, choose_label_thresholds, label_threshold_path, path_scores

LABELS = ["rare", "frequent", "easy"]
SHAPES = (20.0, 8.0, 100.0)  # Beta(a, 1) above 0.5: each label's decision confidence, calibrated


def _draw(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Label-decision confidences ``(n, 3)`` and whether each whole set is right (each label right
    with probability its confidence, independently: calibrated by construction)."""
    c = np.column_stack([0.5 + 0.5 * rng.beta(a, 1.0, n) for a in SHAPES])
    return c, (rng.random(c.shape) < c).all(axis=1)


def _true_error(label_thresholds: np.ndarray, fresh: tuple[np.ndarray, np.ndarray]) -> float:
    c, _ = fresh
    accepted = (c >= label_thresholds).all(axis=1)
    # the expected set error of the accepted items, from their own confidences (exact given c)
    return float(1.0 - c[accepted].prod(axis=1).mean()) if accepted.any() else 0.0


def test_the_path_is_nested_and_reads_the_pool_alone():
    rng = np.random.default_rng(0)
    pool, _ = _draw(2000, rng)
    path = label_threshold_path(pool)
    assert path.shape == (len(LEVELS), 3)
    assert np.all(np.diff(path, axis=0) <= 0)  # a looser level never raises a label's threshold
    assert np.all(path[0] > 1.0 - 1e-12) or np.all(path[0] >= pool.max(axis=0))  # level 0: (almost) nothing
    # each threshold is the lowest whose accepted pool items' mean predicted error is within the level
    for i in (60, 150, 250):
        for j in range(3):
            t = path[i, j]
            assert (1 - pool[pool[:, j] >= t, j]).mean() <= LEVELS[i] + 1e-12
            below = pool[pool[:, j] < t, j]
            if len(below):  # the next value down would break the level
                nxt = below.max()
                assert (1 - pool[pool[:, j] >= nxt, j]).mean() > LEVELS[i]
    # labels differ: the easy label's threshold is the lowest at a middle level
    assert path[150, 2] < path[150, 0] and path[150, 2] < path[150, 1]


def test_a_score_at_or_over_one_minus_a_level_is_that_levels_rule():
    rng = np.random.default_rng(1)
    pool, _ = _draw(1500, rng)
    items, _ = _draw(500, rng)
    path = label_threshold_path(pool)
    s = path_scores(items, path)
    for i in range(0, len(LEVELS), 7):
        assert np.array_equal(s >= 1.0 - LEVELS[i], (items >= path[i]).all(axis=1))


def test_per_label_thresholds_keep_the_set_error_target_across_seeds():
    target, delta, seeds = 0.05, 0.1, 120
    fresh = _draw(200_000, np.random.default_rng(10_000))
    over, accepted_share, single_share = 0, [], []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        conf, correct = _draw(600, rng)
        pool, _ = _draw(3000, rng)
        chosen = choose_label_thresholds(LABELS, conf, correct, pool, target_error=target, delta=delta)
        if chosen.label_thresholds is None:
            accepted_share.append(0.0)
        else:
            t = np.array([chosen.label_thresholds[lb] for lb in LABELS])
            over += _true_error(t, fresh) > target
            accepted_share.append(float((fresh[0] >= t).all(axis=1).mean()))
        single = choose_accept_threshold(conf.min(axis=1), correct, target_error=target, delta=delta,
                                         pool_confidence=pool.min(axis=1))
        single_share.append(float((fresh[0].min(axis=1) >= single.threshold).mean()))
    assert over <= stats.binom.ppf(0.999, seeds, delta)  # the rule's guarantee, with the binomial allowance
    assert np.mean(accepted_share) > 0.05  # not trivially conservative
    # calibrated labels of different difficulty: about what one threshold on the least sure label accepts
    # (measured: 11.1 % vs 11.1 % of fresh sets over 40 seeds), never far below it
    assert np.mean(accepted_share) > 0.8 * np.mean(single_share)


def test_nothing_certified_gives_no_label_thresholds():
    rng = np.random.default_rng(3)
    conf, _ = _draw(40, rng)  # too few labelled sets to certify 5 %
    chosen = choose_label_thresholds(LABELS, conf, np.ones(40, dtype=bool), _draw(500, rng)[0], target_error=0.05)
    assert chosen.label_thresholds is None and chosen.choice.threshold == ACCEPT_NOTHING
    with pytest.raises(ValueError, match="one column per label"):
        choose_label_thresholds(LABELS[:2], conf, np.ones(40, dtype=bool), conf, target_error=0.05)


def test_clears_asks_every_label_for_its_own_threshold():
    rule = {"rare": 0.9, "frequent": 0.8, "easy": 0.97}
    probs = {"rare": 0.05, "frequent": 0.85, "easy": 0.98}
    assert clears(0.99, rule, 0.0, probabilities=probs, chosen=["frequent", "easy"])  # the score is not read
    assert not clears(0.5, rule, 0.99, probabilities=probs, chosen=["frequent"])  # "easy" left out: 0.02 sure
    assert not clears(0.5, rule, 0.99, probabilities={"rare": 0.05, "frequent": 0.85}, chosen=["frequent"])
    assert clears(0.9, None, 0.95) and not clears(0.9, None, 0.85) and not clears(1.0, None, 1.0)
    with pytest.raises(ValueError):
        clears(None, rule, 0.9)


# -- in the loop --------------------------------------------------------------------------------------------


def test_the_review_chooses_per_label_thresholds_and_the_router_applies_them(tmp_path):
    from sync.jobs import threshold_job
    from tests.unit.test_sync_controls import ROUTING, FakePredictor, _setup

    spec = TaskSpec(name="topics", labels=["sport", "politics", "tech"], multi_label=True, routing=ROUTING,
                    thresholds={"target_error": 0.05, "evidence": "all", "min_evidence": 10, "delta": 0.1,
                                "per_label": True},
                    overlap=1)
    store, _, sync, ctx = _setup(tmp_path, spec, FakePredictor(["label"]), n=24)
    sync.predict_pass()
    # honest evidence: sport and politics decided surely and right, tech less sure but right
    rng = np.random.default_rng(0)
    n = 400
    ev = np.column_stack([np.full(n, 0.99), np.full(n, 0.99), rng.uniform(0.85, 0.95, n)])
    write_snapshot(store, RetrainSnapshot(promoted=True, evidence=Evidence(
        confidence=ev.min(axis=1).tolist(), correct=[1.0] * n, external_id=[f"x{i}" for i in range(n)],
        labels=["politics", "sport", "tech"], label_confidence=ev[:, [1, 0, 2]].tolist())))
    out = threshold_job(ctx)
    review = read_latest(store, ThresholdsSnapshot).snapshot
    assert review.meets_target and review.label_thresholds is not None, out
    assert set(review.label_thresholds) == {"politics", "sport", "tech"}
    rule = in_force(store, spec)
    assert rule.state == "certified" and rule.label_thresholds == review.label_thresholds
    # the pool's predictions: each chosen topic at 0.9, each other at 0.1 (every label 0.9 sure)
    lt = review.label_thresholds
    # without per_label the same evidence gives one threshold, as for one label
    one = spec.model_copy(update={"thresholds": spec.thresholds.model_copy(update={"per_label": False})})
    threshold_job(type(ctx)(store, one, ctx.models))
    assert read_latest(store, ThresholdsSnapshot).snapshot.label_thresholds is None
    threshold_job(ctx)
    sure = all(t <= 0.9 for t in lt.values())
    sync.route_pass()
    decisions = store.decisions.latest()
    accepted = {i for i, d in decisions.items() if d.action == "auto_accept"}
    # the task score (0.8 or 0.97) is not what decides: every label's own confidence (0.9) is
    assert accepted == (set(decisions) if sure else set())
    preds = {p.item_id: p for p in store.predictions.list(list(decisions))}
    for i in decisions:
        p = preds[i]
        expected = rule.clears(p.confidence, probabilities={k: v for k, v in p.probabilities.items() if k in lt},
                               chosen=json.loads(p.label))
        assert (i in accepted) == expected


def test_a_label_threshold_over_a_labels_confidence_sends_the_set_to_review(tmp_path):
    from tests.unit.test_sync_controls import ROUTING, FakePredictor, _setup

    spec = TaskSpec(name="topics", labels=["sport", "politics", "tech"], multi_label=True, routing=ROUTING,
                    overlap=1)
    store, _, sync, _ = _setup(tmp_path, spec, FakePredictor(["label"]), n=12)
    sync.predict_pass()
    # certified: the one-threshold level 0.95 would accept the items scored 0.97, but "tech" asks 0.95
    # of its decision and every decision here is 0.9 sure
    write_snapshot(store, ThresholdsSnapshot(threshold=0.95, meets_target=True, adapt=True,
                                             label_thresholds={"sport": 0.85, "politics": 0.85, "tech": 0.95}))
    sync.route_pass()
    decisions = store.decisions.latest()
    assert decisions and not any(d.action == "auto_accept" for d in decisions.values())
    scores = {p.item_id: p.confidence for p in store.predictions.list(list(decisions))}
    assert any(scores[i] >= 0.95 for i in decisions)  # a task score over the level, still not accepted


def test_the_report_names_each_labels_threshold():
    from connector.report.thresholds import threshold_text

    text = threshold_text(ThresholdsSnapshot(threshold=0.97, meets_target=True,
                                             label_thresholds={"tech": 0.95, "sport": 0.9}))
    assert "sport ≥ 0.9" in text and "tech ≥ 0.95" in text and "0.03" in text
    assert threshold_text(ThresholdsSnapshot(threshold=0.97)) == "confidence ≥ 0.97"
