"""Several controls in one labeling config, <Labels> spans, and the coverage report."""

from __future__ import annotations

import pytest

from connector.labeling_config import (
    ChoicesControl,
    ConfigCache,
    Head,
    LabelingConfigError,
    LabelsControl,
    coverage,
    parse_config,
    parse_labeling_config,
)

TWO_CONTROLS = """<View>
  <Text name="review" value="$text"/>
  <Choices name="sentiment" toName="review" choice="single-radio">
    <Choice value="positive"/><Choice value="negative"/><Choice value="neutral"/>
  </Choices>
  <Choices name="topic" toName="review" choice="multiple">
    <Choice value="price"/><Choice value="service" alias="svc"/><Choice value="food"/>
  </Choices>
  <Labels name="entities" toName="review">
    <Label value="PER"/><Label value="ORG" alias="organisation"/>
  </Labels>
  <Rating name="stars" toName="review" maxRating="5"/>
  <TextArea name="note" toName="review"/>
  <Choices name="region_kind" toName="review" perRegion="true"><Choice value="x"/></Choices>
  <Choices name="dynamic" toName="review" value="$options"/>
</View>"""

HEADS = {
    "sentiment": Head("choices", ("negative", "positive")),        # lacks neutral
    "topic": Head("multilabel", ("price", "svc", "food", "delivery")),  # has one the config lacks
    "entities": Head("spans", ("PER", "organisation")),
}


def test_parse_config_reads_every_control_and_says_why_it_skips_some():
    parsed = parse_config(TWO_CONTROLS)
    assert [c.from_name for c in parsed.choices] == ["sentiment", "topic"]
    sentiment, topic = parsed.choices
    assert not sentiment.multiple and topic.multiple and topic.labels == ("price", "svc", "food")
    assert parsed.spans == (LabelsControl("entities", "review", "text", ("PER", "organisation")),)
    skipped = {u.name: u.reason for u in parsed.unsupported}
    assert set(skipped) == {"stars", "note", "region_kind", "dynamic"}
    assert skipped["stars"] == "a <Rating> control; this backend predicts only <Choices> and <Labels> on a text"
    assert "<TextArea>" in skipped["note"]
    assert "per-region" in skipped["region_kind"]
    assert "dynamic" in skipped["dynamic"]
    assert [c.from_name for c in parsed.controls] == ["sentiment", "topic", "entities"]
    assert parsed.control("entities").labels == ("PER", "organisation")
    with pytest.raises(KeyError, match="stars"):
        parsed.control("stars")


def test_the_single_control_api_still_returns_the_choices_in_order():
    assert [c.from_name for c in parse_labeling_config(TWO_CONTROLS)] == ["sentiment", "topic"]
    assert ConfigCache().get(TWO_CONTROLS).from_name == "sentiment"
    spans_only = '<View><Text name="t" value="$x"/><Labels name="l" toName="t"><Label value="A"/></Labels></View>'
    with pytest.raises(LabelingConfigError, match="no <Choices>"):
        parse_labeling_config(spans_only)  # callers that need choices are told there are none
    assert parse_config(spans_only).spans[0].data_key == "x"


def test_the_config_cache_returns_the_full_parse_too_and_caches_a_spans_only_config():
    cache = ConfigCache(maxsize=4)
    spans_only = '<View><Text name="t" value="$x"/><Labels name="l" toName="t"><Label value="A"/></Labels></View>'
    assert cache.get_config(spans_only) is cache.get_config(spans_only)
    assert len(cache) == 1
    with pytest.raises(LabelingConfigError):
        cache.get("<View/>")
    assert len(cache) == 1  # a config without choices is not cached by get


def test_labels_on_a_non_text_tag_and_without_labels_are_reported():
    cfg = """<View><Image name="img" value="$image"/><Text name="t" value="$text"/>
      <Labels name="a" toName="img"><Label value="x"/></Labels>
      <Labels name="b" toName="t"/>
      <RectangleLabels name="boxes" toName="img"><Label value="car"/></RectangleLabels></View>"""
    parsed = parse_config(cfg)
    assert not parsed.choices and not parsed.spans
    reasons = {u.name: u.reason for u in parsed.unsupported}
    assert "not a <Text> or <HyperText> tag" in reasons["a"]
    assert "has no <Label> values" in reasons["b"]
    assert "a <RectangleLabels> control" in reasons["boxes"]


def test_coverage_says_control_by_control_what_will_and_will_not_be_predicted():
    cov = coverage(TWO_CONTROLS, HEADS)
    by_name = {c.name: c for c in cov.controls}
    assert cov.ok and [c.name for c in cov.predicted] == ["sentiment", "topic", "entities"]
    assert by_name["sentiment"].labels == ("positive", "negative") and by_name["sentiment"].missing == ("neutral",)
    assert by_name["topic"].unused == ("delivery",) and by_name["topic"].missing == ()
    assert not by_name["stars"].predicted and "not predicted" in by_name["stars"].sentence()
    summary = cov.summary()
    assert summary.startswith("will predict 3 of 7 controls (sentiment, topic, entities)")
    for needle in ("neutral", "delivery", "<Rating name='stars'>", "<TextArea name='note'>", "per-region"):
        assert needle in summary
    assert len(cov.warnings()) == 6  # sentiment (missing), topic (unused), and the four skipped


def test_coverage_of_controls_without_a_head_or_with_no_known_label_or_the_wrong_kind():
    cov = coverage(TWO_CONTROLS, {"sentiment": Head("choices", ("joy", "anger")),
                                  "topic": Head("spans", ("price",))})
    by_name = {c.name: c for c in cov.controls}
    assert not cov.ok and cov.summary().startswith("nothing will be predicted")
    assert "none of its labels is known to the model" in by_name["sentiment"].reason
    assert "predicts spans, the control takes multilabel" in by_name["topic"].reason
    assert "no head for this control (its heads: sentiment, topic)" in by_name["entities"].reason
    assert by_name["entities"].missing == ("PER", "organisation")


def test_coverage_notes_a_one_label_head_on_a_several_choices_control():
    cov = coverage(TWO_CONTROLS, {"topic": Head("choices", ("price", "svc", "food"))})
    topic = next(c for c in cov.controls if c.name == "topic")
    assert topic.predicted and "picks one" in topic.sentence()
    assert coverage("<View><Text name='t' value='$x'/></View>", {}).summary().startswith(
        "nothing will be predicted: the config has no control tag")


def test_choices_control_is_still_the_same_type():
    (c,) = parse_config('<View><Text name="t" value="$x"/><Choices name="c" toName="t"><Choice value="a"/>'
                        '</Choices></View>').choices
    assert isinstance(c, ChoicesControl) and c.result(["a"])["type"] == "choices"


def test_parse_config_refuses_a_dtd_and_bad_xml_as_the_single_control_parse_does():
    with pytest.raises(LabelingConfigError, match="DTD"):
        parse_config('<!DOCTYPE x [<!ENTITY a "b">]><View/>')
    with pytest.raises(LabelingConfigError, match="not valid XML"):
        parse_config("<View><Text name='t' value='$x'>")
    with pytest.raises(LabelingConfigError, match="empty"):
        parse_config("  ")
