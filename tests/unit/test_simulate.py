"""The simulated loop over the store alone: budgets, overlap, reproducibility, what it reports."""

from __future__ import annotations

import numpy as np
import pytest

from connector.datasets import LabeledTexts
from connector.store import StateStore
from connector.tools.base import PushItem
from connector.tools.offline import OfflineProject, OfflineTool
from hitl.simulate import SimulatedAnnotators, SimulationConfig, labels_to_reach, run, write_html
from hitl.simulate.loop import OfflineAnnotating


@pytest.fixture(scope="module")
def small(rt_sample):
    texts, labels = rt_sample
    return LabeledTexts("rt600", list(texts), list(labels))


@pytest.fixture(scope="module")
def cache_store(tmp_path_factory):
    store = StateStore(f"sqlite:///{tmp_path_factory.mktemp('cache')}/embeddings.db")
    store.migrate()
    yield store
    store.close()


def test_simulated_annotators_hit_their_accuracy_and_never_answer_twice():
    ann = SimulatedAnnotators(["a", "b", "c"], n=3, accuracy=0.9, seed=0)
    answers = [ann.answer("a", set()) for _ in range(4000)]
    assert abs(np.mean([label == "a" for _, label in answers]) - 0.9) < 0.02
    wrong = [label for _, label in answers if label != "a"]
    assert abs(wrong.count("b") / len(wrong) - 0.5) < 0.06
    assert {ann.answer("a", {"annotator-1", "annotator-2"})[0] for _ in range(20)} == {"annotator-3"}


def test_anchored_annotators_copy_a_shown_suggestion_at_their_rate_and_judge_otherwise():
    ann = SimulatedAnnotators(["a", "b", "c"], n=3, accuracy=0.9, seed=0, anchoring=0.3)
    shown = [label for _, label in (ann.answer("a", set(), "b") for _ in range(6000))]
    # copied: 0.3; judged: right 0.9 of 0.7, "b" by mistake half of the 0.1 of 0.7
    assert abs(shown.count("b") / len(shown) - (0.3 + 0.7 * 0.05)) < 0.02
    assert abs(shown.count("a") / len(shown) - 0.7 * 0.9) < 0.02
    blind = [label for _, label in (ann.answer("a", set(), None) for _ in range(4000))]
    assert abs(blind.count("a") / len(blind) - 0.9) < 0.02  # nothing shown, nothing to copy
    plain, anchored = (SimulatedAnnotators(["a", "b"], n=3, accuracy=0.8, seed=5, anchoring=x) for x in (0.0, 0.9))
    assert [plain.answer("a", set()) for _ in range(50)] == [anchored.answer("a", set()) for _ in range(50)]


def test_the_offline_annotators_see_the_suggestion_their_task_was_pushed_with():
    tool = OfflineTool(project="p")

    class Sync:  # what OfflineAnnotating reads: the tool and the project
        project = "p"

    Sync.tool = tool
    tool.projects["p"] = OfflineProject()
    shown = {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["sport"]}}
    tool.push("p", [PushItem("with", {"text": "x"}, [shown], 0.9, "hitl"), PushItem("blind", {"text": "y"})])
    annotating = OfflineAnnotating(Sync())  # type: ignore[arg-type]
    assert annotating.shown(1, "with") == "sport" and annotating.shown(2, "blind") is None


@pytest.mark.slow
def test_an_offline_run_keeps_its_budget_and_overlap_reports_everything_and_is_reproducible(small, cache_store, encoder):
    cfg = SimulationConfig(budget=0.2, batch=20, seed_size=40, eval_fraction=0.2, seed=3, target_error=0.1)
    first = run(small, cfg, cache_store=cache_store, encoder=encoder)
    pool = 600 - 120
    assert first.items == pool and first.reviewed <= round(0.2 * pool) and first.reviewed >= 0.2 * pool - 20
    assert 2.0 <= first.answers / first.reviewed <= 3.0  # two answers each, a third when they disagree
    assert first.label_accuracy > first.no_review_accuracy and first.oracle_accuracy >= first.model_accuracy
    assert first.promoted >= 1 and first.versions >= 2 and 0 < first.temperature
    assert first.agreement["n_annotators"] == 5 and first.agreement["percent_agreement"] > 0.8
    pts = first.rounds
    assert [p["reviewed"] for p in pts] == sorted(p["reviewed"] for p in pts) and pts[0]["reviewed"] == 40
    assert all(0 < p["eval_accuracy"] <= 1 and 0 < p["eval_accuracy_newest"] <= 1 for p in pts)
    same = [p for p in pts if p["newest"] == p["version"]]
    assert same and all(p["eval_accuracy_newest"] == p["eval_accuracy"] for p in same)
    rounds = len(pts) - 1  # the first point is the seed model
    assert 4 * (rounds - 1) <= first.audits <= 4 * rounds  # a fifth of each round's 20 seats
    # the threshold review counts the seed set and the audits only (every one, after a promotion)
    assert 40 <= first.threshold_evidence <= 40 + first.audits
    again = run(small, cfg, cache_store=cache_store, encoder=encoder)
    assert again.to_dict() | {"seconds": 0} == first.to_dict() | {"seconds": 0}  # seeds fixed: the same run


def test_labels_to_reach_takes_the_point_from_which_accuracy_stays_up(tmp_path):
    rounds = [{"reviewed": r, "eval_accuracy": a} for r, a in [(20, 0.9), (40, 0.7), (60, 0.91), (80, 0.95)]]
    assert labels_to_reach(rounds, 0.9) == 60 and labels_to_reach(rounds, 0.99) is None
    for p, a in zip(rounds, [0.9, 0.92, 0.93, 0.95]):
        p["eval_accuracy_newest"] = a
    assert labels_to_reach(rounds, 0.9, key="eval_accuracy_newest") == 20


@pytest.mark.slow
def test_the_html_report_has_the_table_and_both_plots(small, cache_store, encoder, tmp_path):
    cfg = SimulationConfig(budget=0.1, batch=20, seed_size=20, eval_fraction=0.2, seed=1)
    results = [run(small, cfg, cache_store=cache_store, encoder=encoder),
               run(small, SimulationConfig(**{**cfg.__dict__, "strategy": "random"}), cache_store=cache_store,
                   encoder=encoder)]
    page = write_html(results, tmp_path / "sim.html", title="sim <test>").read_text()
    assert page.count("data:image/png;base64,") == 2 and "sim &lt;test&gt;" in page
    assert page.count("<tr><td>") == 2 and page.count("random labels,") == 2


@pytest.mark.slow
def test_anchoring_changes_nothing_when_no_suggestion_is_shown_and_biases_audits_when_they_are(small, cache_store, encoder):
    cfg = SimulationConfig(budget=0.15, batch=20, seed_size=30, seed=2, show_suggestion="never")
    blind = run(small, cfg, cache_store=cache_store, encoder=encoder)
    anchored = run(small, SimulationConfig(**{**cfg.__dict__, "anchoring": 1.0}), cache_store=cache_store, encoder=encoder)
    assert anchored.to_dict() | {"seconds": 0} == blind.to_dict() | {"seconds": 0}
    shown = run(small, SimulationConfig(**{**cfg.__dict__, "anchoring": 1.0, "show_suggestion": "always"}),
                cache_store=cache_store, encoder=encoder)
    # every answer to a shown item copies the model: two agreeing answers, never a third (only the seed
    # items, shown nothing, still disagree now and then)
    assert shown.audits > 0 and blind.audits > 0
    assert shown.answers < blind.answers


@pytest.fixture
def synthetic():
    """400 short synthetic texts whose words say their label most of the time (for the stub encoder)."""
    from tests.unit.test_classifier import texts_for

    rng = np.random.default_rng(0)
    labels = [["a", "b", "c"][int(i)] for i in rng.integers(3, size=400)]
    return LabeledTexts("synthetic", [f"{t} n{i}" for i, t in enumerate(texts_for(labels, seed=1))], labels)


def test_the_stopping_rule_is_recorded_per_round_and_stop_early_ends_the_run_where_it_fires(synthetic, tmp_path):
    import torch

    from hitl.simulate.report import stopping_text
    from tests.support.stub_encoder import StubEncoder

    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # a 16-wide head: threads only cost on a busy CPU
    try:
        with StateStore(f"sqlite:///{tmp_path}/cache.db") as cache:
            cache.migrate()
            cfg = SimulationConfig(budget=0.4, batch=20, seed_size=30, features="embeddings", stop_set_size=100,
                                   stop_kappa=0.9, stop_window=2)
            full = run(synthetic, cfg, cache_store=cache, encoder=StubEncoder())
            early = run(synthetic, SimulationConfig(**{**cfg.__dict__, "stop_early": True}), cache_store=cache,
                        encoder=StubEncoder())
    finally:
        torch.set_num_threads(saved)
    pts = full.rounds
    assert pts[0]["stopping_kappa"] is None and all(p["stopping_kappa"] is not None for p in pts[1:])
    first = next(k for k, p in enumerate(pts) if p["stopping_fired"])
    assert 2 <= first < len(pts) - 1  # fires before the budget, after two kappas at >= 0.9 in a row
    assert pts[first - 1]["stopping_kappa"] >= 0.9 and pts[first]["stopping_kappa"] >= 0.9
    assert not any(p["stopping_fired"] for p in pts[:first])
    assert (full.stop_reviewed, full.stop_review_share, full.stop_label_accuracy) == (
        pts[first]["reviewed"], pts[first]["review_share"], pts[first]["label_accuracy"])
    assert not full.stopped_early and full.reviewed > full.stop_reviewed
    assert stopping_text(full) == (f"stops at {full.stop_reviewed} reviewed ({100 * full.stop_review_share:.1f} %): "
                                   f"label accuracy {100 * full.stop_label_accuracy:.2f} % vs "
                                   f"{100 * full.label_accuracy:.2f} % at the full budget")
    # seeds fixed: the early run is the full one up to the round the rule fires, and ends there
    assert early.rounds == pts[:first + 1] and early.stopped_early
    assert early.reviewed == full.stop_reviewed and early.stop_label_accuracy == full.stop_label_accuracy
    assert stopping_text(early).startswith(f"stopped at {full.stop_reviewed} reviewed")
    page = write_html([full, early], tmp_path / "sim.html", title="stop").read_text()
    assert stopping_text(full) in page and "stopped at" in page
