"""Property tests over random Unicode texts and span sets: our pre-annotations (encode -> decode of
gold tags, the Label Studio / Argilla shapes) and our consolidation never shift an offset."""

from __future__ import annotations

import itertools
import string
import unicodedata

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.span_consensus import consolidate_spans
from connector.spans import (
    Span,
    align,
    bio_tags,
    decode_bio,
    encode_bio,
    from_argilla,
    from_label_studio,
    from_utf16_offset,
    grapheme_end,
    repair_offsets,
    to_argilla,
    to_label_studio,
    utf16_offset,
    valid_spans,
    without_overlaps,
)
from tests.unit.test_spans import tokenizer

LABELS = ["PER", "LOC", "ORG"]
TAGS = bio_tags(LABELS)
PIECES = [
    *string.ascii_letters[:12], "Paris", "New", "York", "Zoë", "Zoe\u0308", "e\u0301", "\u0301", "\u0303a", "São",
    "東京", "Москва", "القاهرة", "😀", "🚒", "👨🏻\u200d🚒", "🇫🇷", "❣\ufe0f",
    "\u200b", "\u200d", "\ufeff", "ﬁ", "Ⅻ", "½",
    "\ud800", "\udfff", "1,000", "U.S.", "#tag", "@user", "http://t.co/x", "'s", "-", "...",
]
SEPARATORS = [" ", "  ", "\r\n", "\n", "\t", "\u00a0", "", "\u3000"]

words = st.lists(st.tuples(st.sampled_from(PIECES), st.sampled_from(SEPARATORS)), min_size=0, max_size=40)
texts = st.one_of(words.map(lambda ws: "".join(w + s for w, s in ws)), st.text(max_size=80))
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def token_aligned_spans(text: str, data: st.DataObject, *, words: bool) -> list[Span]:
    """Random disjoint spans whose boundaries are token (or word) boundaries, as the decoder draws them."""
    (a,) = align(tokenizer(), [text])
    n = len(a)
    cuts = sorted(data.draw(st.sets(st.integers(0, n), max_size=8)) | {0, n})
    spans: list[Span] = []
    for lo, hi in itertools.pairwise(cuts):
        if hi <= lo or not data.draw(st.booleans()):
            continue
        first, last = lo, hi - 1
        if words:
            while first > 0 and a.word_ids[first - 1] == a.word_ids[first]:
                first -= 1
            while last + 1 < n and a.word_ids[last + 1] == a.word_ids[last]:
                last += 1
        start, end = int(a.offsets[first, 0]), grapheme_end(text, int(a.offsets[last, 1]))
        if spans and start < spans[-1].end:
            continue
        # a token further on that still overlaps the span would be tagged with it: not a decoder's span
        if any(a.offsets[t, 0] < end for t in range(last + 1, n)):
            continue
        spans.append(Span(start, end, data.draw(st.sampled_from(LABELS))))
    return spans


@FAST
@given(text=texts, data=st.data())
def test_token_aligned_gold_spans_round_trip_exactly(text, data):
    gold = token_aligned_spans(text, data, words=False)
    (a,) = align(tokenizer(), [text])
    assert decode_bio(text, a, encode_bio(a, gold, TAGS), TAGS) == gold


@FAST
@given(text=texts, data=st.data())
def test_word_aligned_gold_spans_round_trip_exactly_with_snapping(text, data):
    gold = token_aligned_spans(text, data, words=True)
    (a,) = align(tokenizer(), [text])
    assert decode_bio(text, a, encode_bio(a, gold, TAGS), TAGS, snap_words=True) == gold


def random_spans(text: str, data: st.DataObject, max_size: int = 6) -> list[Span]:
    if not text:
        return []
    bounds = st.tuples(st.integers(0, len(text) - 1), st.integers(1, len(text)), st.sampled_from(LABELS))
    raw = data.draw(st.lists(bounds, max_size=max_size))
    return valid_spans(text, [(min(s, e), max(s, e), lab) for s, e, lab in raw if s != e])


@FAST
@given(text=texts, data=st.data())
def test_any_gold_spans_decode_inside_the_text_and_quote_it(text, data):
    gold = without_overlaps(random_spans(text, data))
    (a,) = align(tokenizer(), [text])
    decoded = decode_bio(text, a, encode_bio(a, gold, TAGS), TAGS, snap_words=data.draw(st.booleans()))
    assert len(decoded) <= len(gold)
    for s in decoded:
        assert 0 <= s.start < s.end <= len(text)
        assert any(g.label == s.label and g.start < s.end and s.start < g.end for g in gold)
        # never ends inside a character: no accent, selector or joiner of its last letter left out
        assert s.end == len(text) or (unicodedata.category(text[s.end]) not in ("Mn", "Me")
                                      and text[s.end] != "\u200d")
    results = to_label_studio(text, decoded, from_name="ner", to_name="text")
    assert [(r["value"]["start"], r["value"]["end"]) for r in results] == [(s.start, s.end) for s in decoded]
    assert all(r["value"]["text"] == text[r["value"]["start"]:r["value"]["end"]] for r in results)
    assert from_label_studio(text, results) == decoded
    assert from_argilla(text, to_argilla(text, decoded)[0]) == decoded


@FAST
@given(text=texts, data=st.data())
def test_consolidated_spans_are_spans_an_annotator_drew(text, data):
    raters = data.draw(st.integers(1, 5))
    annotations = [random_spans(text, data, max_size=4) for _ in range(raters)]
    if text and raters > 1 and annotations[0]:  # make agreement likely
        annotations[1] = annotations[1] + annotations[0][:1]
    mode = data.draw(st.sampled_from(["exact", "overlap"]))
    drawn = {s.key() for spans in annotations for s in spans}
    out = consolidate_spans(annotations, mode=mode, allow_overlap=data.draw(st.booleans()))
    for s in out:
        assert s.key() in drawn and 0.5 < s.score <= 1.0
    results = to_label_studio(text, out, from_name="ner", to_name="text")
    assert all(r["value"]["text"] == text[r["value"]["start"]:r["value"]["end"]] for r in results)
    assert len(results) == len(out)


@FAST
@given(text=texts, data=st.data())
def test_utf16_offsets_convert_back_and_repairs_quote_the_span(text, data):
    for i in range(len(text) + 1):
        assert from_utf16_offset(text, utf16_offset(text, i)) == i
    for s in random_spans(text, data):
        quoted = text[s.start:s.end]
        fixed = repair_offsets(text, utf16_offset(text, s.start), utf16_offset(text, s.end), quoted)
        assert fixed is not None and text[fixed[0]:fixed[1]] == quoted
        assert repair_offsets(text, s.start, s.end, quoted) == (s.start, s.end)
