import numpy as np
import pytest

from connector.calibration import (
    TemperatureScaler,
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
