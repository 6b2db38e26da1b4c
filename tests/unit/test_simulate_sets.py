"""The multi-label and entity-span simulations (``hitl simulate wnut16_types`` / ``wnut16``): the
simulated annotators' error rates, the figures, and small runs on the tiny random encoder."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from connector.datasets import EntityTexts, LabelSets, wnut16, wnut16_entity_types
from connector.retraining import EmbeddingCache
from connector.spans import Span
from connector.store import StateStore
from hitl.simulate.sets import SetAnnotators, SetSimulationConfig, run_sets, set_scores
from hitl.simulate.spans import SpanAnnotators, SpanSimulationConfig, run_spans, score_ece, span_figures, token_features
from hitl.simulate.structured import simulate_structured, summary, write_html

N = 48


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Heads this small gain nothing from intra-op threads; on a busy CPU their barriers cost 10x."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def label_sets() -> LabelSets:
    ds = wnut16_entity_types()
    keep = [i for i, s in enumerate(ds.labels) if s][:N // 2] + [i for i, s in enumerate(ds.labels) if not s][:N // 2]
    return LabelSets(ds.name, [ds.texts[i] for i in keep], [ds.labels[i] for i in keep], ds.classes)


@pytest.fixture(scope="module")
def entities() -> EntityTexts:
    ds = wnut16()
    keep = [i for i, s in enumerate(ds.spans) if s][:N]
    return EntityTexts(ds.name, [ds.texts[i] for i in keep], [ds.spans[i] for i in keep], ds.labels)


@pytest.fixture(scope="module")
def cache(tiny_encoder, tmp_path_factory):
    store = StateStore(f"sqlite:///{tmp_path_factory.mktemp('cache')}/embeddings.db")
    store.migrate()
    yield EmbeddingCache(store, tiny_encoder, "tiny")
    store.close()


@pytest.fixture(scope="module")
def features(tiny_encoder, entities):
    return token_features(tiny_encoder, entities)


def small_sets(**kw) -> SetSimulationConfig:
    return SetSimulationConfig(**{"budget": 0.5, "batch": 8, "seed_size": 12, "folds": 2} | kw)


def small_spans(**kw) -> SpanSimulationConfig:
    return SpanSimulationConfig(**{"budget": 0.5, "batch": 8, "seed_size": 12, "folds": 2} | kw)


# -- the simulated annotators -------------------------------------------------------------------

def test_set_annotators_flip_each_label_at_their_rate_and_never_answer_twice():
    classes = ["a", "b", "c", "d"]
    ann = SetAnnotators(classes, n=3, error=0.1, seed=0)
    answers = [set(ann.answer(["a", "c"], set())[1]) for _ in range(4000)]
    for label, present in (("a", True), ("b", False), ("c", True), ("d", False)):
        flipped = np.mean([(label in a) != present for a in answers])
        assert abs(flipped - 0.1) < 0.02, (label, flipped)
    assert {ann.answer([], {"annotator-1", "annotator-3"})[0] for _ in range(20)} == {"annotator-2"}
    exact = SetAnnotators(classes, n=2, error=0.0, seed=1)
    assert all(exact.answer(["b", "d"], set())[1] == ["b", "d"] for _ in range(50))
    with pytest.raises(ValueError, match="every annotator"):
        exact.answer([], {"annotator-1", "annotator-2"})


def test_span_annotators_drop_shift_and_relabel_at_their_rates_on_whole_words():
    text = "so I went to New York City with Ann today"
    gold = [Span(13, 26, "geo-loc"), Span(32, 35, "person")]
    words = {(m.start(), m.end()) for m in re.finditer(r"\S+", text)}
    starts, ends = {a for a, _ in words}, {b for _, b in words}
    ann = SpanAnnotators(["geo-loc", "person", "other"], n=3, drop=0.1, shift=0.2, relabel=0.15, seed=0)
    dropped = shifted = relabelled = total = 0
    for _ in range(3000):
        _, spans = ann.answer(text, gold, set())
        for g in gold:
            total += 1
            near = [s for s in spans if s.start < g.end and g.start < s.end]
            if not near:
                dropped += 1
                continue
            (s,) = near
            assert s.start in starts and s.end in ends  # whole words, offsets on the text
            shifted += (s.start, s.end) != (g.start, g.end)
            assert (s.start == g.start) or (s.end == g.end)  # one boundary moved, not both
            relabelled += s.label != g.label
    assert abs(dropped / total - 0.1) < 0.02
    assert abs(shifted / (total - dropped) - 0.2) < 0.03
    assert abs(relabelled / (total - dropped) - 0.15) < 0.03
    perfect = SpanAnnotators(["geo-loc", "person"], n=2, drop=0, shift=0, relabel=0, seed=0)
    assert perfect.answer(text, gold, set())[1] == gold


def test_a_shift_never_runs_into_another_span():
    text = "Ann Bob"
    gold = [Span(0, 3, "person"), Span(4, 7, "person")]
    ann = SpanAnnotators(["person"], n=2, drop=0, shift=1.0, relabel=0, seed=0)
    for _ in range(50):
        assert ann.answer(text, gold, set())[1] == gold  # single words hemmed in: nowhere to move


# -- the figures --------------------------------------------------------------------------------

def test_set_scores_exact_match_micro_and_macro_f1():
    truth = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 1, 0]])
    pred = np.array([[1, 0, 0], [0, 0, 0], [0, 0, 0], [1, 1, 1]])
    s = set_scores(truth, pred)
    assert s["exact_match"] == 0.5
    assert s["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))  # tp 3, fp 1, fn 1
    assert s["macro_f1"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)
    assert set_scores(truth, truth) == {"exact_match": 1.0, "micro_f1": 1.0, "macro_f1": 1.0}


def test_span_figures_and_score_ece():
    gold = [[Span(0, 3, "A")], [Span(4, 9, "B")], []]
    pred = [[Span(0, 3, "A")], [Span(4, 7, "B")], []]
    f = span_figures(gold, pred, ["A", "B"])
    assert f["f1_exact"] == 0.5 and f["f1_overlap"] == 1.0 and f["item_accuracy"] == pytest.approx(2 / 3)
    assert f["macro_f1_exact"] == 0.5
    assert score_ece(np.array([0.9, 0.9, 0.1, 0.1]), np.array([1, 1, 0, 0])) == pytest.approx(0.1)
    assert score_ece(np.array([0.75, 0.75]), np.array([1, 0])) == pytest.approx(0.25)


# -- runs on the tiny encoder -------------------------------------------------------------------

def test_a_set_run_keeps_its_budget_and_final_labels_are_human_where_reviewed(label_sets, cache):
    r = run_sets(label_sets, small_sets(label_error=0.0, eval_fraction=0.25), cache=cache)
    pool = N - 12
    assert r.items == pool and r.reviewed == int(0.5 * pool) and len(set(r.reviewed_items)) == r.reviewed
    assert r.answers == 2 * r.reviewed  # perfect annotators agree: no third answer
    truth = {i: label_sets.labels[i] for i in range(N)}
    final = dict(zip(r.pool, r.final))
    assert all(final[i] == truth[i] for i in r.reviewed_items) and r.reviewed_exact_match == 1.0
    rest = [i for i in r.pool if i not in set(r.reviewed_items)]
    model_right = sum(final[i] == truth[i] for i in rest)
    assert r.labels["exact_match"] == pytest.approx((r.reviewed + model_right) / pool)
    assert r.model["exact_match"] == pytest.approx(model_right / len(rest))
    pts = r.rounds
    assert pts[0]["reviewed"] == 12  # the seed model's point
    assert [p["reviewed"] for p in pts] == sorted(p["reviewed"] for p in pts) and pts[-1]["reviewed"] == r.reviewed
    assert all("eval_micro_f1" in p and 0 <= p["eval_exact_match"] <= 1 for p in pts)
    assert 0 <= r.ece_calibrated <= 1 and set(r.per_label_ece) == set(label_sets.classes)
    assert r.agreement["krippendorff_alpha_masi"] == pytest.approx(1.0)
    json.dumps(r.to_dict())
    assert "final" not in r.to_dict()


def test_reviewing_everything_with_perfect_annotators_gives_exact_labels(label_sets, cache):
    r = run_sets(label_sets, small_sets(budget=1.0, batch=40, label_error=0.0, strategy="entropy"), cache=cache)
    assert r.reviewed == r.items == N and r.labels == {"exact_match": 1.0, "micro_f1": 1.0, "macro_f1": 1.0}
    assert r.oracle_exact_match == 1.0


def test_noisy_annotators_are_asked_again_on_ties_and_dawid_skene_settles_too(label_sets, cache):
    r = run_sets(label_sets, small_sets(label_error=0.3, seed=2), cache=cache)
    assert 2 * r.reviewed < r.answers <= 3 * r.reviewed  # a third answer where a label was tied
    assert r.reviewed_exact_match < 1.0 and r.agreement["krippendorff_alpha_masi"] < 0.9
    ds = run_sets(label_sets, small_sets(label_error=0.1, consensus="dawid_skene"), cache=cache)
    assert ds.reviewed == r.reviewed and ds.answers <= 3 * ds.reviewed


def test_active_learning_and_random_picks_both_draw_curves_from_the_same_seed_set(label_sets, cache):
    al = run_sets(label_sets, small_sets(random_share=0.0), cache=cache)
    rnd = run_sets(label_sets, small_sets(strategy="random"), cache=cache)
    assert al.reviewed_items[:12] == rnd.reviewed_items[:12]  # the seed set
    assert al.reviewed_items[12:] != rnd.reviewed_items[12:]
    assert len(al.rounds) == len(rnd.rounds) >= 3
    assert al.calibration_labels == 12 and rnd.calibration_labels == rnd.reviewed  # random labels only


def test_a_span_run_keeps_its_budget_and_final_spans_are_human_where_reviewed(entities, tiny_encoder, features):
    r = run_spans(entities, small_spans(drop=0, shift=0, relabel=0, eval_fraction=0.25), encoder=tiny_encoder,
                  features=features)
    pool = N - 12
    assert r.items == pool and r.reviewed == int(0.5 * pool) and r.answers == 2 * r.reviewed
    gold = {i: sorted(Span(*s) for s in entities.spans[i]) for i in range(N)}
    final = dict(zip(r.pool, r.final))
    assert all([s.key() for s in final[i]] == [s.key() for s in gold[i]] for i in r.reviewed_items)
    assert r.reviewed_figures["f1_exact"] == 1.0 and r.reviewed_figures["item_accuracy"] == 1.0
    assert r.agreement["pairwise_f1_exact"] == 1.0
    assert all("eval_f1_exact" in p for p in r.rounds) and r.rounds[-1]["reviewed"] == r.reviewed
    rest = [i for i in r.pool if i not in set(r.reviewed_items)]
    model_right = sum([s.key() for s in final[i]] == [s.key() for s in gold[i]] for i in rest)
    assert r.labels["item_accuracy"] == pytest.approx((r.reviewed + model_right) / pool)
    assert np.isfinite(r.missed_ece) and r.temperature > 0
    json.dumps(r.to_dict(), default=str)


def test_reviewing_every_span_item_with_perfect_annotators_gives_span_f1_one(entities, tiny_encoder, features):
    r = run_spans(entities, small_spans(budget=1.0, batch=40, drop=0, shift=0, relabel=0, strategy="random"),
                  encoder=tiny_encoder, features=features)
    assert r.reviewed == r.items == N
    assert r.labels["f1_exact"] == r.labels["f1_overlap"] == r.labels["item_accuracy"] == 1.0


def test_noisy_span_annotators_get_a_third_answer_and_the_majority_repairs_most(entities, tiny_encoder, features):
    r = run_spans(entities, small_spans(drop=0.2, shift=0.2, relabel=0.1, seed=1), encoder=tiny_encoder,
                  features=features)
    assert 2 * r.reviewed < r.answers <= 3 * r.reviewed
    assert r.agreement["pairwise_f1_exact"] < r.agreement["pairwise_f1_overlap"] <= 1.0
    assert r.reviewed_figures["f1_exact"] > r.agreement["pairwise_f1_exact"]  # consensus beats one annotator
    rnd = run_spans(entities, small_spans(drop=0.2, shift=0.2, relabel=0.1, seed=1, strategy="random"),
                    encoder=tiny_encoder, features=features)
    assert rnd.reviewed_items[:12] == r.reviewed_items[:12] and rnd.reviewed_items != r.reviewed_items


# -- the report and the command -----------------------------------------------------------------

def test_the_report_has_a_curve_per_strategy_and_the_summary_compares_with_random(label_sets, cache, tmp_path):
    runs = [run_sets(label_sets, small_sets(strategy=s, eval_fraction=0.25), cache=cache)
            for s in ("least_confidence", "random")]
    page = write_html(runs, tmp_path / "r.html", title="t", kind="sets").read_text()
    assert page.count("<img") == 3 and "least_confidence" in page and "per-label ECE" in page
    lines = summary(runs, "sets")
    assert any("least_confidence against random" in line and "held-out" in line for line in lines)


def test_hitl_simulate_dispatches_the_two_sets_to_their_loops(tiny_encoder, monkeypatch, tmp_path):
    import connector.encoder
    from hitl.cli import app

    monkeypatch.setattr(connector.encoder, "TextEncoder", lambda **_: tiny_encoder)
    for name, kind in (("wnut16_types", "sets"), ("wnut16", "spans")):
        out = tmp_path / f"{name}.html"
        res = CliRunner().invoke(app, ["simulate", name, "--limit", "40", "--budget", "0.4", "--batch", "6",
                                       "--seed-size", "8", "--out", str(out), "--cache", str(tmp_path / "e.db")])
        assert res.exit_code == 0, res.output
        runs = json.loads(out.with_suffix(".json").read_text())
        assert [r["kind"] for r in runs] == [kind] * len(runs)
        assert {r["strategy"] for r in runs} == ({"least_confidence", "entropy", "random"} if kind == "sets"
                                                 else {"least_confidence", "random"})
        assert "against random" in res.output and out.exists()


def test_simulate_structured_limits_the_items(tiny_encoder, tmp_path):
    import io

    from rich.console import Console

    store = StateStore(f"sqlite:///{tmp_path}/e.db")
    store.migrate()
    try:
        runs = simulate_structured("wnut16", console=Console(file=io.StringIO()), encoder=tiny_encoder,
                                   cache_store=store, budget=0.3, batch=5, seed_size=6, overlap=2, seeds=1,
                                   first_seed=3, compare_random=False, eval_fraction=0.0, limit=30, label_error=0.02,
                                   span_drop=0.05, span_shift=0.05, span_relabel=0.05, out=tmp_path / "s.html")
    finally:
        store.close()
    assert [(r.strategy, r.seed, r.items) for r in runs] == [("least_confidence", 3, 30)]
