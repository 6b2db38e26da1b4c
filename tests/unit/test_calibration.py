import numpy as np
import pytest

from connector.calibration import (
    TemperatureScaler,
    averaged_temperatures,
    expected_calibration_error,
    log_loss,
    reliability_bins,
    reliability_diagram,
    softmax,
)


def _synthetic(n: int, k: int, true_t: float, seed: int):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, k))
    p = softmax(logits, true_t)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return logits, y


@pytest.mark.parametrize("true_t", [0.4, 1.0, 2.5])
def test_temperature_scaler_recovers_known_temperature(true_t):
    logits, y = _synthetic(40_000, 4, true_t, seed=int(true_t * 10))
    ts = TemperatureScaler().fit(logits, y)
    assert ts.temperature_ == pytest.approx(true_t, rel=0.05)
    assert ts.nll_after_ <= ts.nll_before_ + 1e-12


def test_temperature_scaler_finds_the_nll_minimum():
    logits, y = _synthetic(5_000, 3, 1.7, seed=3)
    t = TemperatureScaler().fit(logits, y).temperature_
    best = log_loss(softmax(logits, t), y)
    for other in (t * 0.97, t * 1.03):
        assert log_loss(softmax(logits, other), y) > best


def test_temperature_scaler_fit_returns_self_and_transforms():
    logits, y = _synthetic(2_000, 2, 2.0, seed=4)
    ts = TemperatureScaler()
    assert ts.fit(logits, y) is ts
    np.testing.assert_allclose(ts.transform(logits), softmax(logits / ts.temperature_))


def test_temperature_scaler_rejects_bad_shapes_and_labels():
    with pytest.raises(ValueError):
        TemperatureScaler().fit(np.zeros((3, 2)), np.array([0, 1]))
    with pytest.raises(ValueError):
        TemperatureScaler().fit(np.zeros((2, 2)), np.array([0, 2]))


def test_ece_hand_computed_two_bins():
    # bins of width 0.5: confidences 0.9, 0.8 (bin 2), 0.6 (bin 2), 0.55 (bin 2) ... use 2 bins
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.45, 0.55]])
    y = np.array([0, 0, 0, 1])
    # all confidences in (0.5, 1]: one bin; accuracy 3/4, mean confidence (0.9+0.8+0.6+0.55)/4
    expected = abs(0.75 - (0.9 + 0.8 + 0.6 + 0.55) / 4)
    assert expected_calibration_error(probs, y, n_bins=2) == pytest.approx(expected)


def test_ece_hand_computed_three_bins():
    probs = np.array([[0.3, 0.3, 0.4], [0.1, 0.2, 0.7], [0.05, 0.05, 0.9], [0.95, 0.05, 0.0]])
    y = np.array([2, 0, 2, 0])
    # n_bins=3: 0.4 -> bin 1 (acc 1); 0.7 -> bin 2; 0.9, 0.95 -> bin 2 (acc 2/3, conf 0.85)
    expected = 0.25 * abs(1 - 0.4) + 0.75 * abs(2 / 3 - (0.7 + 0.9 + 0.95) / 3)
    assert expected_calibration_error(probs, y, n_bins=3) == pytest.approx(expected)


def test_ece_bins_are_right_closed():
    # confidence exactly 0.5 with 2 bins belongs to the first bin (0, 0.5]
    b = reliability_bins(np.array([[0.5, 0.5], [1.0, 0.0]]), np.array([0, 0]), n_bins=2)
    assert b["count"].tolist() == [1.0, 1.0]


def test_ece_of_perfectly_calibrated_predictions_is_zero():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(probs, np.array([0, 1])) == 0.0


def test_temperature_scaling_lowers_ece_of_overconfident_logits():
    logits, y = _synthetic(20_000, 3, 3.0, seed=7)  # raw softmax is overconfident
    before = expected_calibration_error(softmax(logits), y)
    after = expected_calibration_error(TemperatureScaler().fit(logits, y).transform(logits), y)
    assert before > 0.1
    assert after < 0.02


def test_reliability_diagram_writes_png(tmp_path):
    logits, y = _synthetic(1_000, 2, 2.0, seed=8)
    path = reliability_diagram({"raw": (softmax(logits), y)}, tmp_path / "r.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_averaged_temperatures_of_one_head_is_the_temperature_scaler():
    logits, y = _synthetic(2000, 3, 2.5, seed=4)
    assert averaged_temperatures([logits], y) == [TemperatureScaler().fit(logits, y).temperature_]


def test_averaged_temperatures_calibrate_the_average_that_per_head_temperatures_leave_underconfident():
    """Two heads, each calibrated at its own temperature, with independent scores: their average is
    underconfident; fitted together on the average, the temperatures sharpen both."""
    rng = np.random.default_rng(5)
    n, k = 4000, 3
    y = rng.integers(k, size=n)
    heads = [rng.normal(size=(n, k)) + 2.0 * np.eye(k)[y] for _ in range(2)]
    own = [TemperatureScaler().fit(z, y).temperature_ for z in heads]
    one_by_one = (softmax(heads[0], own[0]) + softmax(heads[1], own[1])) / 2
    joint_t = averaged_temperatures(heads, y)
    joint = (softmax(heads[0], joint_t[0]) + softmax(heads[1], joint_t[1])) / 2
    assert joint_t[0] < own[0] and joint_t[1] < own[1]
    assert log_loss(joint, y) < log_loss(one_by_one, y)
    assert expected_calibration_error(joint, y) < 0.7 * expected_calibration_error(one_by_one, y)


def test_a_head_no_better_than_chance_is_flattened_out():
    rng = np.random.default_rng(6)
    y = rng.integers(2, size=1000)
    good = rng.normal(size=(1000, 2)) + 3.0 * np.eye(2)[y]
    noise = 5.0 * rng.normal(size=(1000, 2))
    t_good, t_noise = averaged_temperatures([good, noise], y)
    assert t_noise > 20 and t_good < TemperatureScaler().fit(good, y).temperature_  # the good head alone, sharpened
    own = (softmax(good, TemperatureScaler().fit(good, y).temperature_)
           + softmax(noise, TemperatureScaler().fit(noise, y).temperature_)) / 2
    assert log_loss((softmax(good, t_good) + softmax(noise, t_noise)) / 2, y) < log_loss(own, y)
    with pytest.raises(ValueError, match="one shape"):
        averaged_temperatures([good, noise[:10]], y)


def test_a_prior_on_log_t_shrinks_a_temperature_fitted_on_few_labels_towards_one():
    logits, y = _synthetic(4000, 3, 3.0, seed=7)
    mle_few = averaged_temperatures([logits[:15]], y[:15])[0]
    map_few = averaged_temperatures([logits[:15]], y[:15], prior_sd=1.0)[0]
    assert 0 < np.log(map_few) < np.log(mle_few)  # towards T = 1, not past it
    map_many = averaged_temperatures([logits], y, prior_sd=1.0)[0]
    assert map_many == pytest.approx(TemperatureScaler().fit(logits, y).temperature_, rel=0.02)  # the data win
