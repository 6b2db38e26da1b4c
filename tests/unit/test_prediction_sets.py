"""Label Studio results for label sets and for several controls, checked with the validator Label
Studio runs on a prediction (the SDK's ``LabelInterface.validate_prediction``)."""

from __future__ import annotations

import pytest

from connector.labeling_config import parse_config
from connector.prediction import ControlPrediction, choices_prediction, ls_prediction

CONFIG = """<View>
  <Text name="review" value="$text"/>
  <Choices name="sentiment" toName="review" choice="single-radio">
    <Choice value="positive"/><Choice value="negative"/><Choice value="neutral"/>
  </Choices>
  <Choices name="topic" toName="review" choice="multiple">
    <Choice value="price"/><Choice value="service" alias="svc"/><Choice value="food"/>
  </Choices>
</View>"""
SENTIMENT, TOPIC = parse_config(CONFIG).choices


def validate(prediction: dict) -> list[str]:
    from label_studio_sdk.label_interface import LabelInterface

    return LabelInterface(CONFIG).validate_prediction(prediction, return_errors=True)


def test_a_set_chooses_every_label_over_its_threshold_scored_by_the_least_sure_decision():
    p = choices_prediction(TOPIC, {"price": 0.91, "svc": 0.62, "food": 0.08, "delivery": 0.99})
    assert p.chosen == ("price", "svc")  # config order; "delivery" is not in the config
    assert p.score == pytest.approx(0.62)  # svc, decided "yes" with 0.62
    assert p.probabilities == {"price": 0.91, "svc": 0.62, "food": 0.08}
    assert p.result() == {"from_name": "topic", "to_name": "review", "type": "choices",
                          "value": {"choices": ["price", "svc"]}, "score": pytest.approx(0.62),
                          "meta": {"scores": {"price": 0.91, "svc": 0.62, "food": 0.08}}}
    strict = choices_prediction(TOPIC, {"price": 0.91, "svc": 0.62, "food": 0.08}, thresholds={"svc": 0.7})
    assert strict.chosen == ("price",) and strict.score == pytest.approx(0.38)  # svc is now a "no" at 0.38


def test_a_distribution_on_a_one_choice_control_picks_its_best():
    p = choices_prediction(SENTIMENT, {"positive": 0.7, "negative": 0.2, "neutral": 0.1})
    assert (p.chosen, p.score) == (("positive",), 0.7)
    set_model = choices_prediction(SENTIMENT, {"positive": 0.3, "negative": 0.6}, label_set=True)
    assert (set_model.chosen, set_model.score) == (("negative",), 0.6)


def test_a_distribution_on_a_several_choices_control_keeps_the_backends_rule():
    p = choices_prediction(TOPIC, {"price": 0.3, "svc": 0.3, "food": 0.4}, label_set=False)
    assert p.chosen == ("food",)  # nothing over 0.5: the most probable
    two = choices_prediction(TOPIC, {"price": 0.55, "svc": 0.45, "food": 0.0}, label_set=False, thresholds=0.4)
    assert two.chosen == ("price", "svc") and two.score == 0.55


def test_a_control_whose_labels_the_model_lacks_raises_with_the_reason():
    with pytest.raises(ValueError, match="knows none of the labels of <Choices name='topic'>"):
        choices_prediction(TOPIC, {"delivery": 0.9})


def test_one_result_per_control_and_the_task_score_is_the_least_sure_control():
    sentiment = choices_prediction(SENTIMENT, {"positive": 0.8, "negative": 0.15, "neutral": 0.05})
    topic = choices_prediction(TOPIC, {"price": 0.97, "svc": 0.3, "food": 0.01})
    pred = ls_prediction([sentiment, topic], "v3")
    assert [r["from_name"] for r in pred["result"]] == ["sentiment", "topic"]
    assert pred["score"] == pytest.approx(0.7) and pred["model_version"] == "v3"
    assert validate(pred) == []


def test_a_set_with_nothing_chosen_is_left_out_unless_asked_and_both_shapes_validate():
    nothing = choices_prediction(TOPIC, {"price": 0.1, "svc": 0.2, "food": 0.05})
    sentiment = choices_prediction(SENTIMENT, {"positive": 0.9, "negative": 0.1})
    pred = ls_prediction([sentiment, nothing], "v1")
    assert [r["from_name"] for r in pred["result"]] == ["sentiment"] and pred["score"] == pytest.approx(0.8)
    kept = ls_prediction([sentiment, nothing], "v1", keep_empty=True)
    assert kept["result"][1]["value"] == {"choices": []}
    assert validate(pred) == [] and validate(kept) == []
    with pytest.raises(ValueError):
        ls_prediction([], "v1")


def test_the_validator_would_catch_a_label_outside_the_control():
    bad = ControlPrediction(TOPIC, ("delivery",), {"delivery": 0.9}, 0.9)
    assert validate(ls_prediction([bad], "v1"))  # what choices_prediction never builds
