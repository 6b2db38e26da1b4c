import numpy as np
import pytest

from connector.strategies import (
    EmptyPoolError,
    Entropy,
    LeastConfidence,
    Margin,
    Mix,
    RandomSampling,
    make_strategy,
)


def random_probs(seed: int, n: int = 200, k: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(k, 0.7), size=n)


def brute_force_rank(scores: np.ndarray, pool: np.ndarray, *, ascending: bool) -> np.ndarray:
    """Sort pool rows by score (most informative first), ties by lower index, with plain Python."""
    key = (lambda i: (scores[i], i)) if ascending else (lambda i: (-scores[i], i))
    return np.array(sorted(pool.tolist(), key=key), dtype=np.intp)


def direct_scores(name: str, p: np.ndarray) -> tuple[np.ndarray, bool]:
    s = np.sort(p, axis=1)
    if name == "least_confidence":
        return 1.0 - s[:, -1], False
    if name == "margin":
        return s[:, -1] - s[:, -2], True
    terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -terms.sum(axis=1), False


STRATEGY_CLASSES = {"least_confidence": LeastConfidence, "margin": Margin, "entropy": Entropy}


def test_known_rows_are_ranked_by_each_strategy():
    p = np.array([
        [0.90, 0.05, 0.05],  # confident
        [0.40, 0.35, 0.25],  # small margin, high entropy
        [0.50, 0.50, 0.00],  # zero margin, lower entropy than row 1
        [0.34, 0.33, 0.33],  # least confident, highest entropy
    ])
    assert LeastConfidence().query(p, 4).tolist() == [3, 1, 2, 0]
    assert Margin().query(p, 4).tolist() == [2, 3, 1, 0]
    assert Entropy().query(p, 4).tolist() == [3, 1, 2, 0]


@pytest.mark.parametrize("name", sorted(STRATEGY_CLASSES))
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_picks_equal_brute_force_ranking_of_directly_computed_scores(name, seed):
    p = random_probs(seed)
    pool = np.random.default_rng(100 + seed).choice(len(p), size=120, replace=False)
    strategy = STRATEGY_CLASSES[name]()
    picks = strategy.query(p, 30, candidates=pool)
    scores, ascending = direct_scores(name, p)
    expected = brute_force_rank(scores, np.sort(pool), ascending=ascending)[:30]
    np.testing.assert_array_equal(picks, expected)
    np.testing.assert_allclose(strategy.last_scores[pool], scores[pool], atol=1e-12)


@pytest.mark.parametrize("seed", [0, 7, 42])
def test_random_sampling_equals_ranking_of_seeded_uniform_draws(seed):
    p = random_probs(seed, n=50)
    pool = np.arange(10, 50)
    picks = RandomSampling(seed).query(p, 15, candidates=pool)
    draws = np.random.default_rng(seed).random(len(pool))
    expected = pool[brute_force_rank(draws, np.arange(len(pool)), ascending=False)[:15]]
    np.testing.assert_array_equal(picks, expected)


def test_random_sampling_is_reproducible_and_seed_dependent():
    p = random_probs(0, n=100)
    a, b, c = (RandomSampling(s).query(p, 20) for s in (5, 5, 6))
    np.testing.assert_array_equal(a, b)
    assert a.tolist() != c.tolist()
    assert len(set(a.tolist())) == 20


def test_ties_are_broken_by_lower_index():
    p = np.array([[0.5, 0.5]] * 4 + [[0.9, 0.1]])
    assert LeastConfidence().query(p, 3).tolist() == [0, 1, 2]
    assert Margin().query(p, 5, candidates=np.array([4, 3, 1])).tolist() == [1, 3, 4]


def test_budget_larger_than_pool_returns_whole_pool_ranked():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.7, 0.3]])
    assert LeastConfidence().query(p, 10).tolist() == [1, 2, 0]
    assert LeastConfidence().query(p, 10, candidates=np.array([0, 2])).tolist() == [2, 0]


def test_zero_budget_returns_nothing_but_still_scores():
    s = LeastConfidence()
    picks = s.query(np.array([[0.9, 0.1], [0.6, 0.4]]), 0)
    assert picks.size == 0
    np.testing.assert_allclose(s.last_scores, [0.1, 0.4])


def test_last_scores_are_nan_for_non_candidates():
    s = LeastConfidence()
    s.query(np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2]]), 1, candidates=np.array([0, 2]))
    np.testing.assert_allclose(s.last_scores[[0, 2]], [0.1, 0.2])
    assert np.isnan(s.last_scores[1])


def test_boolean_candidate_mask_is_accepted():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2]])
    assert LeastConfidence().query(p, 3, candidates=np.array([True, False, True])).tolist() == [2, 0]


@pytest.mark.parametrize("strategy", [LeastConfidence(), Margin(), Entropy(), RandomSampling(0),
                                      Mix([(LeastConfidence(), 0.8), (RandomSampling(0), 0.2)])])
def test_empty_pool_raises_empty_pool_error(strategy):
    p = np.array([[0.9, 0.1], [0.6, 0.4]])
    with pytest.raises(EmptyPoolError):
        strategy.query(p, 1, candidates=np.array([], dtype=int))
    with pytest.raises(EmptyPoolError):
        strategy.query(np.zeros((0, 2)), 1)


def test_invalid_budget_and_candidates_are_rejected():
    p = np.array([[0.9, 0.1], [0.6, 0.4]])
    with pytest.raises(ValueError, match="budget"):
        LeastConfidence().query(p, -1)
    with pytest.raises(IndexError):
        LeastConfidence().query(p, 1, candidates=np.array([0, 2]))
    with pytest.raises(ValueError, match="2-D"):
        LeastConfidence().query(np.array([0.9, 0.1]), 1)


@pytest.mark.parametrize(("budget", "quotas"), [(10, [8, 2]), (7, [6, 1]), (4, [4, 0]), (5, [4, 1]), (0, [0, 0])])
def test_mix_quotas_floor_the_later_parts_and_give_leftovers_to_the_first(budget, quotas):
    assert Mix([(LeastConfidence(), 0.8), (RandomSampling(0), 0.2)]).quotas(budget) == quotas


def test_mix_quotas_with_three_parts_and_unnormalised_weights():
    mix = Mix([(LeastConfidence(), 5), (Margin(), 3), (RandomSampling(0), 2)])
    assert mix.quotas(10) == [5, 3, 2]
    assert mix.quotas(9) == [6, 2, 1]  # floor(2.7) = 2, floor(1.8) = 1, the first part takes the rest


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mix_proportions_are_exact_and_picks_have_no_duplicates(seed):
    p = random_probs(seed, n=300)
    mix = Mix([(LeastConfidence(), 0.8), (RandomSampling(seed), 0.2)])
    picks = mix.query(p, 50)
    assert len(picks) == 50 and len(set(picks.tolist())) == 50
    assert (mix.last_picked_by[picks] == 0).sum() == 40
    assert (mix.last_picked_by[picks] == 1).sum() == 10
    assert (mix.last_picked_by >= 0).sum() == 50
    # the least-confidence part takes the 40 least confident rows, first in the result
    lc, _ = direct_scores("least_confidence", p)
    np.testing.assert_array_equal(picks[:40], brute_force_rank(lc, np.arange(len(p)), ascending=False)[:40])
    # the random part picks among the rest, in the order of its own seeded draws
    rest = np.setdiff1d(np.arange(len(p)), picks[:40])
    draws = np.random.default_rng(seed).random(len(rest))
    np.testing.assert_array_equal(picks[40:], rest[np.argsort(-draws, kind="stable")[:10]])


def test_mix_with_budget_equal_to_pool_returns_every_candidate_once():
    p = random_probs(3, n=20)
    pool = np.arange(0, 20, 2)
    picks = Mix([(Entropy(), 0.5), (RandomSampling(1), 0.5)]).query(p, 100, candidates=pool)
    assert sorted(picks.tolist()) == pool.tolist()


def test_mix_last_scores_come_from_the_part_that_picked_each_row():
    p = random_probs(4, n=40)
    lc = LeastConfidence()
    rnd = RandomSampling(9)
    mix = Mix([(lc, 0.5), (rnd, 0.5)])
    picks = mix.query(p, 10)
    from_random = picks[mix.last_picked_by[picks] == 1]
    np.testing.assert_allclose(mix.last_scores[from_random], rnd.last_scores[from_random])
    unpicked = np.setdiff1d(np.arange(40), picks)
    np.testing.assert_allclose(mix.last_scores[unpicked], direct_scores("least_confidence", p)[0][unpicked])


def test_mix_rejects_bad_weights():
    with pytest.raises(ValueError):
        Mix([])
    with pytest.raises(ValueError):
        Mix([(LeastConfidence(), 0.0), (RandomSampling(0), 0.0)])
    with pytest.raises(ValueError):
        Mix([(LeastConfidence(), -1.0), (RandomSampling(0), 2.0)])


def test_make_strategy_builds_named_strategies_and_random_mixes():
    assert isinstance(make_strategy("margin"), Margin)
    mix = make_strategy("entropy", random_share=0.25, seed=3)
    assert isinstance(mix, Mix) and isinstance(mix.parts[0][0], Entropy)
    assert mix.quotas(8) == [6, 2]
    with pytest.raises(ValueError, match="unknown strategy"):
        make_strategy("bald")
