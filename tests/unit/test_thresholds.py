import json
import math
import time

import numpy as np
import pytest
from scipy import optimize, special, stats

from connector.thresholds import (
    ACCEPT_NOTHING,
    CURVE_POINTS,
    ThresholdChoice,
    choose_accept_threshold,
    error_upper_bound,
    zero_error_n,
)

# Synthetic calibrated model: top-class confidence ~ Beta(A, B), correct ~ Bernoulli(confidence).
A, B = 12.0, 1.0
TARGET, DELTA = 0.05, 0.1
SEEDS, N_LABELED = 200, 500


def _draw(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = rng.beta(A, B, n)
    return c, rng.random(n) < c


def _true_error(t: float) -> float:
    """Exact population error among items with confidence >= t: 1 - E[c | c >= t] under Beta(A, B)."""
    if t > 1.0:
        return 0.0  # nothing accepted, nothing wrong
    mass = 1.0 - special.betainc(A, B, t)
    mean_c = A / (A + B) * (1.0 - special.betainc(A + 1.0, B, t))
    return 1.0 - mean_c / mass


def _true_review_rate(t: float) -> float:
    return 1.0 if t > 1.0 else float(special.betainc(A, B, t))


def _point_estimate_threshold(c: np.ndarray, ok: np.ndarray, target: float) -> float:
    """The naive rule: the lowest threshold whose empirical error among labeled items >= t is <= target."""
    order = np.argsort(-c, kind="stable")
    cs, wrong = c[order], np.cumsum(~ok[order])
    last_of_tie = np.append(cs[1:] != cs[:-1], True)  # a threshold takes whole tie groups
    n = np.arange(1, len(cs) + 1)
    feasible = last_of_tie & (wrong / n <= target)
    return float(cs[np.flatnonzero(feasible)[-1]]) if feasible.any() else ACCEPT_NOTHING


@pytest.fixture(scope="module")
def simulation():
    rows = []
    for seed in range(SEEDS):
        c, ok = _draw(N_LABELED, seed)
        choice = choose_accept_threshold(c, ok, target_error=TARGET, delta=DELTA)
        naive = _point_estimate_threshold(c, ok, TARGET)
        rows.append((choice.threshold, _true_error(choice.threshold), _true_review_rate(choice.threshold),
                     naive, _true_error(naive)))
    return np.array(rows)


# allowance: if P(true error > target) were exactly DELTA, the count of failing seeds is Binomial(SEEDS, DELTA);
# its 99.9% quantile (34 of 200) is the most the test tolerates
ALLOWED_FAILURES = int(stats.binom.ppf(0.999, SEEDS, DELTA))


# --- error_upper_bound -------------------------------------------------------------------------------------


def test_error_upper_bound_hand_values():
    # zero errors: 1 - delta ** (1 / n)
    assert error_upper_bound(0, 45, delta=0.1) == pytest.approx(1 - 0.1 ** (1 / 45), rel=1e-12)
    assert error_upper_bound(0, 10, delta=0.05) == pytest.approx(1 - 0.05 ** 0.1, rel=1e-12)
    assert error_upper_bound(0, 0) == 1.0
    assert error_upper_bound(0.0, 0.0, delta=0.2) == 1.0
    assert error_upper_bound(7, 7) == 1.0


@pytest.mark.parametrize(("k", "n"), [(0, 1), (0, 59), (1, 20), (3, 100), (12, 250), (40, 1000), (99, 100)])
@pytest.mark.parametrize("delta", [0.05, 0.1, 0.2])
def test_error_upper_bound_is_one_sided_clopper_pearson(k, n, delta):
    two_sided = stats.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * delta, method="exact")
    assert error_upper_bound(k, n, delta=delta) == pytest.approx(two_sided.high, rel=1e-9)


def test_error_upper_bound_takes_effective_counts():
    got = error_upper_bound(2.5, 40.3, delta=0.1)
    assert got == pytest.approx(stats.beta.ppf(0.9, 3.5, 37.8), rel=1e-12)
    assert error_upper_bound(2.0, 40.0, delta=0.1) < got < error_upper_bound(3.0, 40.0, delta=0.1)


@pytest.mark.parametrize(("errors", "n", "delta"), [(-1, 10, 0.05), (11, 10, 0.05), (0, -1, 0.05), (1, 10, 0.0),
                                                     (1, 10, 1.0), (math.nan, 10, 0.05)])
def test_error_upper_bound_rejects_bad_input(errors, n, delta):
    with pytest.raises(ValueError):
        error_upper_bound(errors, n, delta=delta)


def test_zero_error_n_is_the_smallest_certifying_count():
    for target, delta in [(0.05, 0.1), (0.05, 0.05), (0.01, 0.05), (0.2, 0.01), (0.5, 0.5)]:
        n = zero_error_n(target, delta=delta)
        assert error_upper_bound(0, n, delta=delta) <= target
        assert n == 1 or error_upper_bound(0, n - 1, delta=delta) > target
    assert zero_error_n(0.05, delta=0.1) == 45


# --- the guarantee -----------------------------------------------------------------------------------------


def test_true_error_formula_matches_fresh_items():
    c, ok = _draw(200_000, seed=10_000)
    for t in (0.8, 0.9, 0.95, 0.98):
        accepted = c >= t
        realized = 1.0 - ok[accepted].mean()
        se = math.sqrt(realized * (1 - realized) / accepted.sum())
        assert abs(realized - _true_error(t)) < 4 * se
        assert abs((c < t).mean() - _true_review_rate(t)) < 4 * math.sqrt(0.25 / len(c))


def test_error_target_holds_across_seeds(simulation):
    chosen, true_err, review = simulation[:, 0], simulation[:, 1], simulation[:, 2]
    over = int((true_err > TARGET).sum())
    # measured: 11 of 200 seeds (5.5%) over target, allowed up to 34 (delta = 10% plus the binomial allowance)
    assert over <= ALLOWED_FAILURES
    # not trivially conservative: the oracle threshold reviews 17.9%; measured median review rate 62.8%,
    # mean 62.0%, and 30 of 200 seeds (15%) accept nothing
    assert np.median(review) < 0.70
    assert (chosen > 1.0).mean() < 0.25
    oracle_t = optimize.brentq(lambda t: _true_error(t) - TARGET, 0.5, 0.999)
    assert _true_review_rate(oracle_t) == pytest.approx(0.179, abs=1e-3)
    assert np.all(true_err[chosen <= 1.0] > 0.0)


def test_point_estimate_rule_would_fail_the_guarantee(simulation):
    chosen, naive, naive_err = simulation[:, 0], simulation[:, 3], simulation[:, 4]
    # the confidence-bound rule never accepts more than the point estimate (every passed t has errors/n <= ucb)
    assert np.all(chosen >= naive)
    # measured: the point-estimate rule exceeds the target in about half the seeds
    assert int((naive_err > TARGET).sum()) > ALLOWED_FAILURES


def test_point_estimate_rule_accepts_what_the_bound_rejects():
    # 60 items at 0.99 with 2 wrong: 3.3% observed, but the 95% upper bound is about 10%
    c = np.full(60, 0.99)
    ok = np.ones(60, dtype=bool)
    ok[:2] = False
    assert _point_estimate_threshold(c, ok, TARGET) == 0.99
    choice = choose_accept_threshold(c, ok, target_error=TARGET, delta=0.05)
    assert not choice.meets_target and choice.threshold > 1.0
    assert choice.curve[0]["ucb"] == pytest.approx(error_upper_bound(2, 60, delta=0.05))


# --- the rule ----------------------------------------------------------------------------------------------


def test_ties_are_taken_whole():
    # 50 items at 0.99, all right; 50 at 0.95, 10 wrong; 50 at 0.9, all right
    c = np.repeat([0.99, 0.95, 0.9], 50)
    ok = np.ones(150, dtype=bool)
    ok[60:70] = False
    choice = choose_accept_threshold(c, ok, target_error=TARGET, delta=DELTA)
    assert choice.threshold == 0.99
    assert (choice.n, choice.errors) == (50, 0)
    assert choice.review_rate == pytest.approx(100 / 150)
    assert choice.meets_target and choice.error_ucb <= TARGET
    # the sequence stops at 0.95 (100 items, 10 wrong) even though 0.9 alone is clean
    assert [(p["threshold"], p["n"], p["errors"], p["passed"]) for p in choice.curve] == [
        (0.99, 50, 0, True), (0.95, 100, 10, False)]
    assert "0.95" in choice.note and "failed" in choice.note


def test_candidates_grid_and_tie_boundary():
    c = np.repeat([0.99, 0.95, 0.9], 50)
    ok = np.ones(150, dtype=bool)
    # a grid threshold exactly at a tied value accepts the whole tie group
    choice = choose_accept_threshold(c, ok, target_error=TARGET, delta=DELTA, candidates=[1.0, 0.95, 0.9, 0.5])
    assert choice.threshold == 0.5 and choice.n == 150 and choice.review_rate == 0.0
    assert [p["n"] for p in choice.curve] == [100, 150, 150]  # 1.0 accepts nothing labeled: not tested
    choice = choose_accept_threshold(c, ok, target_error=TARGET, delta=DELTA, candidates=[0.96])
    assert choice.threshold == 0.96 and choice.n == 50 and choice.review_rate == pytest.approx(2 / 3)


def test_nothing_passes_accepts_nothing():
    c, ok = _draw(2_000, seed=1)
    choice = choose_accept_threshold(c, ~ok, target_error=TARGET, delta=DELTA)  # a model that is mostly wrong
    assert choice.threshold == ACCEPT_NOTHING == math.nextafter(1.0, 2.0)
    assert choice.safe_threshold == ACCEPT_NOTHING
    assert not choice.meets_target
    assert (choice.n, choice.errors, choice.review_rate, choice.error_ucb) == (0, 0, 1.0, 1.0)
    assert "cannot be met" in choice.note and "45 error-free" in choice.note
    assert "nothing is auto-accepted" in choice.note
    assert len(choice.curve) == 1 and not choice.curve[0]["passed"] and choice.curve[0]["n"] == 45
    # too few labeled items to test anything
    few = choose_accept_threshold(c[:30], ok[:30], target_error=TARGET, delta=DELTA)
    assert few.threshold > 1.0 and few.curve == [] and "30 labeled items" in few.note


def test_band_raises_a_low_review_rate():
    c, ok = _draw(20_000, seed=2)
    pool = _draw(50_000, seed=3)[0]
    safe = choose_accept_threshold(c, ok, target_error=TARGET, delta=DELTA, pool_confidence=pool)
    assert safe.meets_target and 0.1 < safe.review_rate < 0.4
    raised = choose_accept_threshold(c, ok, target_error=TARGET, delta=DELTA, pool_confidence=pool,
                                     review_band=(0.5, 0.9))
    assert raised.threshold > safe.threshold == raised.safe_threshold
    assert 0.5 <= raised.review_rate < 0.5 + 1 / len(pool)  # the smallest raise that reaches the band
    assert raised.review_rate == np.mean(pool < raised.threshold)
    assert raised.within_band and raised.meets_target
    assert "raised" in raised.note
    assert raised.n == int((c >= raised.threshold).sum()) and raised.errors == int((~ok[c >= raised.threshold]).sum())


def test_band_upper_limit_that_the_target_cannot_meet():
    c, ok = _draw(20_000, seed=4)
    safe = choose_accept_threshold(c, ok, target_error=TARGET, delta=DELTA)
    choice = choose_accept_threshold(c, ok, target_error=TARGET, delta=DELTA, review_band=(0.0, 0.05))
    assert choice.threshold == safe.threshold and choice.review_rate == safe.review_rate > 0.05
    assert not choice.within_band and choice.meets_target
    assert "cannot be met" in choice.note and f"{100 * safe.review_rate:.1f}%" in choice.note
    assert choice.error_ucb <= TARGET


def test_stricter_target_never_lowers_the_threshold():
    targets = [0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2]
    for seed in range(20):
        c, ok = _draw(3_000, seed=100 + seed)
        thresholds = [choose_accept_threshold(c, ok, target_error=t, delta=DELTA).threshold for t in targets]
        assert thresholds == sorted(thresholds, reverse=True), (seed, thresholds)
    assert thresholds[0] > thresholds[-1]


def test_every_passed_candidate_is_within_target_and_review_rate_is_consistent():
    c, ok = _draw(5_000, seed=5)
    choice = choose_accept_threshold(c, ok, target_error=TARGET, delta=DELTA)
    passed = [p for p in choice.curve if p["passed"]]
    assert passed and all(p["ucb"] <= TARGET + 1e-12 for p in passed)
    assert passed[-1]["threshold"] == choice.threshold
    assert choice.curve[-1]["ucb"] > TARGET and not choice.curve[-1]["passed"]
    assert [p["threshold"] for p in choice.curve] == sorted((p["threshold"] for p in choice.curve), reverse=True)
    assert choice.review_rate == np.mean(c < choice.threshold)
    assert choice.error_rate == pytest.approx(choice.errors / choice.n)


def test_to_dict_is_json_ready():
    c, ok = _draw(1_000, seed=6)
    choice = choose_accept_threshold(c, ok.astype(int), target_error=0.1, delta=DELTA, review_band=(0.2, 0.8))
    d = choice.to_dict()
    assert set(d) == {f for f in ThresholdChoice.__dataclass_fields__}
    assert json.loads(json.dumps(d)) == d


def test_large_input_is_fast_and_curve_is_thinned():
    c, ok = _draw(100_000, seed=7)
    start = time.perf_counter()
    choice = choose_accept_threshold(c, ok, target_error=TARGET, delta=DELTA)
    everything_passes = choose_accept_threshold(c, np.ones_like(ok), target_error=TARGET, delta=DELTA)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0  # measured about 0.1 s for both calls
    assert choice.meets_target and len(choice.curve) <= CURVE_POINTS
    assert everything_passes.threshold == c.min() and everything_passes.review_rate == 0.0
    assert len(everything_passes.curve) <= CURVE_POINTS and everything_passes.curve[-1]["passed"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"confidence": [0.9, 0.8], "correct": [True]}, "equal length"),
        ({"target_error": 0.0}, "target_error"),
        ({"target_error": 1.0}, "target_error"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.5}, "delta"),
        ({"review_band": (0.6, 0.4)}, "review_band"),
        ({"review_band": (-0.1, 0.5)}, "review_band"),
        ({"review_band": (0.1, 1.2)}, "review_band"),
        ({"min_n": 0}, "min_n"),
        ({"confidence": [0.9, 1.2]}, "confidence"),
        ({"confidence": [0.9, math.nan]}, "confidence"),
        ({"correct": [1, 2]}, "correct"),
        ({"pool_confidence": []}, "pool_confidence"),
        ({"pool_confidence": [-0.1]}, "pool_confidence"),
        ({"candidates": [0.5, 2.0]}, "candidates"),
    ],
)
def test_input_validation(kwargs, message):
    args = {"confidence": [0.9, 0.8], "correct": [True, False], "target_error": TARGET} | kwargs
    confidence, correct = args.pop("confidence"), args.pop("correct")
    with pytest.raises(ValueError, match=message):
        choose_accept_threshold(confidence, correct, **args)
