"""Query strategies and uncertainty scores for label sets (independent probabilities per label)."""

from __future__ import annotations

import numpy as np
import pytest

from connector.strategies import (
    SET_STRATEGIES,
    LeastConfidentLabel,
    MeanBinaryEntropy,
    Mix,
    RandomSampling,
    make_set_strategy,
)
from connector.uncertainty import (
    binary_entropy,
    label_decision_confidence,
    label_set_confidence,
    least_confident_label,
    mean_binary_entropy,
)

P = np.array([
    [0.99, 0.01, 0.98],  # every label decided surely
    [0.90, 0.55, 0.02],  # one label near the fence
    [0.50, 0.50, 0.50],  # nothing decided
    [0.70, 0.20, 0.75],
])


def test_decision_confidence_and_the_least_confident_label():
    np.testing.assert_allclose(label_decision_confidence(P[1]), [0.90, 0.55, 0.98])
    np.testing.assert_allclose(least_confident_label(P), [0.98, 0.55, 0.5, 0.70])
    # at a threshold of 0.6, p = 0.55 is a "no" decided with confidence 0.45
    np.testing.assert_allclose(least_confident_label(P[1:2], np.array([0.5, 0.6, 0.5])), [0.45])
    assert least_confident_label(np.zeros((2, 0))).tolist() == [1.0, 1.0]  # no label: nothing to doubt


def test_set_confidence_is_the_product_of_the_decisions_and_bounded_by_the_least():
    np.testing.assert_allclose(label_set_confidence(P[1:2]), [0.90 * 0.55 * 0.98])
    assert (label_set_confidence(P) <= least_confident_label(P)).all()
    assert label_set_confidence(np.zeros((1, 0))).tolist() == [1.0]


def test_binary_entropy_matches_the_definition_and_is_finite_at_the_ends():
    p = np.array([[0.0, 1.0, 0.5, 0.2]])
    ref = [0.0, 0.0, np.log(2), -(0.2 * np.log(0.2) + 0.8 * np.log(0.8))]
    np.testing.assert_allclose(binary_entropy(p)[0], ref)
    np.testing.assert_allclose(mean_binary_entropy(p), [np.mean(ref)])


def test_least_confident_label_ranks_the_row_with_the_weakest_decision_first():
    strategy = LeastConfidentLabel()
    picks = strategy.query(P, 4)
    assert picks.tolist() == [2, 1, 3, 0]
    np.testing.assert_allclose(strategy.last_scores, 1 - least_confident_label(P))


def test_mean_entropy_prefers_many_uncertain_labels_over_one():
    # row 0: one label at 0.5, two sure; row 1: three labels at 0.8 -> least confidence picks row 0 first,
    # mean entropy picks row 1 (more total doubt)
    p = np.array([[0.5, 0.999, 0.001], [0.8, 0.8, 0.2]])
    assert LeastConfidentLabel().query(p, 1).tolist() == [0]
    assert MeanBinaryEntropy().query(p, 1).tolist() == [1]


def test_candidates_and_budget_follow_the_base_interface():
    picks = MeanBinaryEntropy().query(P, 2, candidates=np.array([0, 3, 1]))
    assert picks.tolist() == [3, 1]  # mean entropies 0.56 and 0.37; row 2 is no candidate


def test_make_set_strategy_builds_each_and_mixes_random():
    assert set(SET_STRATEGIES) == {"least_confidence", "entropy", "random"}
    assert isinstance(make_set_strategy("least_confidence"), LeastConfidentLabel)
    assert isinstance(make_set_strategy("entropy"), MeanBinaryEntropy)
    assert isinstance(make_set_strategy("random", seed=3), RandomSampling)
    mix = make_set_strategy("entropy", random_share=0.25, seed=1)
    assert isinstance(mix, Mix) and isinstance(mix.parts[0][0], MeanBinaryEntropy)
    rng = np.random.default_rng(0)
    p = rng.random((200, 4))
    picks = mix.query(p, 20)
    assert len(set(picks.tolist())) == 20 and (mix.last_picked_by[picks] == 1).sum() == 5
    top = np.argsort(-mean_binary_entropy(p), kind="stable")[:15]
    assert picks[:15].tolist() == top.tolist()
    with pytest.raises(ValueError, match="unknown strategy 'margin'"):
        make_set_strategy("margin")  # a margin between two classes means nothing for a set


def test_thresholds_reach_the_least_confidence_strategy():
    strategy = make_set_strategy("least_confidence", thresholds=np.array([0.5, 0.6, 0.5]))
    np.testing.assert_allclose(strategy.score(P[1:2]), [0.55])  # 1 - 0.45
