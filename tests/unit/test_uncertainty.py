import numpy as np
import pytest

from connector.prediction import to_predictions
from connector.uncertainty import entropy, least_confidence, margin


def test_uncertainty_scores_on_known_rows():
    p = np.array([[1.0, 0.0, 0.0], [0.5, 0.3, 0.2], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(least_confidence(p), [0.0, 0.5, 2 / 3])
    np.testing.assert_allclose(margin(p), [1.0, 0.2, 0.0], atol=1e-12)
    np.testing.assert_allclose(entropy(p), [0.0, -(0.5 * np.log(0.5) + 0.3 * np.log(0.3) + 0.2 * np.log(0.2)),
                                            np.log(3)])


def test_to_predictions_reports_top_label_and_its_probability():
    (pred,) = to_predictions(np.array([[0.2, 0.8]]), ["fresh", "rotten"], "v7", np.array([True]))
    assert (pred.label, pred.model_version, pred.truncated) == ("rotten", "v7", True)
    assert pred.confidence == pytest.approx(0.8) and pred.margin == pytest.approx(0.6)
