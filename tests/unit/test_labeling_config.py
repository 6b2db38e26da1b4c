import pytest

from connector.labeling_config import LabelingConfigError, parse_labeling_config

SINGLE = """<View>
  <Text name="review" value="$snippet"/>
  <Choices name="sentiment" toName="review" choice="single-radio">
    <Choice value="fresh"/><Choice value="rotten"/>
  </Choices>
</View>"""


def test_single_choice_config_with_custom_names():
    (c,) = parse_labeling_config(SINGLE)
    assert (c.from_name, c.to_name, c.data_key, c.labels, c.multiple) == (
        "sentiment", "review", "snippet", ("fresh", "rotten"), False)


def test_multiple_choice_and_alias():
    cfg = """<View><HyperText name="doc" value="$html"/>
      <Choices name="topics" toName="doc" choice="multiple">
        <Choice value="Sport" alias="sports"/><Choice value="tech"/></Choices></View>"""
    (c,) = parse_labeling_config(cfg)
    assert c.multiple and c.labels == ("sports", "tech") and c.data_key == "html"


def test_result_has_label_studio_shape():
    (c,) = parse_labeling_config(SINGLE)
    assert c.result(["fresh"]) == {"from_name": "sentiment", "to_name": "review", "type": "choices",
                                   "value": {"choices": ["fresh"]}}


def test_choices_bound_to_non_text_tag_are_skipped_but_text_ones_kept():
    cfg = """<View><Image name="img" value="$image"/><Text name="t" value="$text"/>
      <Choices name="a" toName="img"><Choice value="x"/></Choices>
      <Choices name="b" toName="t"><Choice value="y"/><Choice value="z"/></Choices></View>"""
    assert [c.from_name for c in parse_labeling_config(cfg)] == ["b"]


@pytest.mark.parametrize("cfg, message", [
    ("", "empty"),
    ("<View><Text name='t' value='$text'>", "not valid XML"),
    ("<View><Text name='t' value='$text'/></View>", "no <Choices>"),
    ("<View><Image name='i' value='$img'/><Choices name='c' toName='i'><Choice value='a'/></Choices></View>",
     "not a <Text>"),
    ("<View><Text name='t' value='plain'/><Choices name='c' toName='t'><Choice value='a'/></Choices></View>",
     "expected '$field'"),
    ("<View><Text name='t' value='$x'/><Choices name='c' toName='t'></Choices></View>", "no <Choice>"),
])
def test_unsupported_configs_raise_with_reason(cfg, message):
    with pytest.raises(LabelingConfigError, match=message.replace("$", r"\$")):
        parse_labeling_config(cfg)


def test_generated_config_round_trips_through_the_parser():
    from connector.labeling_config import build_choices_config

    cfg = build_choices_config(text_field="body", labels=["a & b", 'say "hi"'], multiple=True, instructions="Pick <all>")
    (c,) = parse_labeling_config(cfg)
    assert (c.data_key, c.labels, c.multiple, c.from_name, c.to_name) == ("body", ("a & b", 'say "hi"'), True, "label", "text")


def test_the_config_cache_keeps_the_most_recent_parses_by_digest():
    from connector.labeling_config import ConfigCache, build_choices_config

    cache = ConfigCache(maxsize=2)
    a, b, c = (build_choices_config(text_field=f, labels=["x", "y"]) for f in ("a", "b", "c"))
    assert cache.get(a).data_key == "a" and cache.get(b).data_key == "b"
    assert cache.get(a) is cache.get(a)  # a hit, and now the most recent
    cache.get(c)  # evicts b, the least recently used
    assert len(cache) == 2 and all(len(k) == 32 for k in cache.digests())
    assert cache.get(b).data_key == "b" and len(cache) == 2
    with pytest.raises(LabelingConfigError):
        cache.get("<View/>")
    assert len(cache) == 2  # errors are not cached
