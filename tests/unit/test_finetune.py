"""Fine-tuning the encoder: pair and batch draws, the losses, the budget, saving and loading, and
that training moves same-label texts together. On the tiny random BERT, one torch thread."""

import time

import numpy as np
import pytest
import torch

from connector.encoder import TextEncoder
from connector.finetune import (
    FinetuneConfig,
    balanced_batches,
    batch_hard_soft_margin_loss,
    contrastive_pairs,
    cosine_loss,
    epoch_batches,
    finetune,
    load_finetuned,
    load_head,
    supcon_loss,
)

GOOD = ["a wonderful great film", "excellent and moving", "great acting, wonderful", "a brilliant joy",
        "superb and excellent", "wonderful, simply great", "moving and brilliant", "a joy: excellent"]
BAD = ["a terrible awful mess", "boring and dull", "awful acting, terrible", "a tedious bore",
       "dreadful and boring", "terrible, simply awful", "dull and dreadful", "a bore: tedious"]
TEXTS = GOOD + BAD
LABELS = ["good"] * len(GOOD) + ["bad"] * len(BAD)


def _cfg(**kw) -> FinetuneConfig:
    return FinetuneConfig(**{"num_threads": 1, "budget_s": 60, **kw})


def _separation(x: np.ndarray, y: np.ndarray) -> float:
    """Mean cosine of same-label pairs minus mean cosine of different-label pairs."""
    sim = x @ x.T
    same = y[:, None] == y[None, :]
    off = ~np.eye(len(y), dtype=bool)
    return float(sim[same & off].mean() - sim[~same].mean())


def test_pairs_pair_each_label_with_one_of_its_class_and_one_of_another():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pairs = contrastive_pairs(y, 3, np.random.default_rng(0))
    assert len(pairs) == 2 * 3 * len(y)
    i, j, target = pairs.T
    assert (i != j).all()
    np.testing.assert_array_equal(target, (y[i] == y[j]).astype(int))
    # every text is an anchor once per iteration, with one positive and one negative
    np.testing.assert_array_equal(np.bincount(i[target == 1], minlength=len(y)), 3)
    np.testing.assert_array_equal(np.bincount(i[target == 0], minlength=len(y)), 3)
    again = contrastive_pairs(y, 3, np.random.default_rng(0))
    np.testing.assert_array_equal(pairs, again)


def test_a_lone_member_of_its_class_gets_no_positive():
    pairs = contrastive_pairs(np.array([0, 1, 1]), 2, np.random.default_rng(1))
    assert not ((pairs[:, 0] == 0) & (pairs[:, 2] == 1)).any()
    assert ((pairs[:, 0] == 0) & (pairs[:, 2] == 0)).sum() == 2


def test_balanced_batches_hold_distinct_texts_of_each_class():
    y = np.array([0] * 20 + [1] * 5)
    batches = balanced_batches(y, 8, np.random.default_rng(0))
    seen = set()
    for _ in range(10):
        b = next(batches)
        assert len(b) == len(set(b.tolist())) <= 8
        assert np.bincount(y[b], minlength=2).min() >= 2
        seen.update(b.tolist())
    assert seen == set(range(25))  # ten batches of four a class pass through every text


def test_an_epoch_covers_every_text_once_in_batches_of_similar_length():
    lengths = np.random.default_rng(0).integers(5, 60, size=203)
    batches = epoch_batches(lengths, 16, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(203))
    assert [len(b) for b in batches].count(16) == 12
    plain = epoch_batches(lengths, 16, np.random.default_rng(1), group_by_length=False)
    assert sorted(np.concatenate(plain).tolist()) == list(range(203))

    def padded(bs: list) -> int:
        return sum(len(b) * lengths[b].max() for b in bs)

    assert padded(batches) < 0.8 * padded(plain)


def test_losses_equal_sentence_transformers_on_the_same_embeddings():
    from sentence_transformers.sentence_transformer import losses  # the dev extra installs it
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(12, 16, generator=g), dim=1)
    labels = torch.tensor([0, 1, 2] * 4)
    ref = losses.BatchHardSoftMarginTripletLoss(torch.nn.Identity()).batch_hard_triplet_soft_margin_loss(labels, z)
    assert batch_hard_soft_margin_loss(z, labels).item() == pytest.approx(ref.item(), abs=1e-5)
    target = torch.tensor([1, 0, 1, 0, 0, 1])
    ref = losses.CosineSimilarityLoss(torch.nn.Identity()).compute_loss_from_embeddings([z[:6], z[6:]], target)
    assert cosine_loss(z[:6], z[6:], target).item() == pytest.approx(ref.item(), abs=1e-6)


def test_supcon_is_low_when_classes_are_apart_and_high_when_mixed():
    labels = torch.tensor([0, 0, 1, 1])
    apart = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])
    mixed = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    assert supcon_loss(apart, labels, 0.1).item() < 1e-3
    assert supcon_loss(mixed, labels, 0.1).item() > 5.0


def test_the_budget_stops_training_whatever_the_planned_steps(tiny_model_dir):
    budget = 3.0
    start = time.perf_counter()
    ft = finetune(TEXTS, LABELS, _cfg(budget_s=budget, pairs_per_label=100_000), base=tiny_model_dir)
    wall = time.perf_counter() - start
    # the schedule is refitted to the budget (or cut by it), and the step loop ends by the deadline (one
    # step may overrun an estimate a busy machine made); loading and the final trace come around it
    assert ft.steps_done > 0 and ft.steps_fitted < ft.steps_planned, ft.summary()
    assert ft.steps_done == ft.steps_fitted or ft.stopped_by_budget, ft.summary()
    assert ft.train_s <= budget + 1.0 and ft.elapsed_s <= wall
    assert "of 200000 planned steps" in ft.summary()  # 2 * 100_000 * 16 pairs, 16 a step


def test_a_run_the_budget_does_not_cut_is_repeatable(tiny_model_dir):
    runs = [finetune(TEXTS, LABELS, _cfg(max_steps=15, learning_rate=1e-3, seed=3), base=tiny_model_dir)
            for _ in range(2)]
    assert [r.steps_done for r in runs] == [15, 15] and not runs[0].stopped_by_budget
    np.testing.assert_allclose(runs[0].encoder.encode(TEXTS), runs[1].encoder.encode(TEXTS), atol=1e-6)
    other = finetune(TEXTS, LABELS, _cfg(max_steps=15, learning_rate=1e-3, seed=4), base=tiny_model_dir)
    assert not np.allclose(other.encoder.encode(TEXTS), runs[0].encoder.encode(TEXTS), atol=1e-4)


@pytest.mark.parametrize(("loss", "lr"), [("cosine", 5e-3), ("batch_hard", 1e-2), ("supcon", 5e-3)])
def test_contrastive_fine_tuning_moves_same_label_texts_together(tiny_model_dir, tiny_encoder, loss, lr):
    y = np.array([lb == "good" for lb in LABELS])
    before = _separation(tiny_encoder.encode(TEXTS), y)
    ft = finetune(TEXTS, LABELS, _cfg(loss=loss, max_steps=40, learning_rate=lr), base=tiny_model_dir)
    x = ft.encoder.encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)  # normalised, as the frozen encoder's
    after = _separation(x, y)
    assert after > before + 0.1, (before, after)
    # the base encoder is a copy's origin, not trained itself
    assert _separation(tiny_encoder.encode(TEXTS), y) == pytest.approx(before, abs=1e-6)


def test_weights_and_head_round_trip_through_safetensors(tiny_model_dir, tmp_path):
    ft = finetune(TEXTS, LABELS, _cfg(method="classifier", epochs=8, learning_rate=1e-3, batch_size=8),
                  base=tiny_model_dir)
    assert ft.head is not None and ft.head.classes == ["bad", "good"]
    x = ft.encoder.encode(TEXTS)
    y = np.array([ft.head.classes.index(lb) for lb in LABELS])
    assert (ft.head.predict_proba(x).argmax(axis=1) == y).mean() == 1.0
    out = ft.save(tmp_path / "ft")
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    loaded = load_finetuned(out)
    np.testing.assert_allclose(loaded.encode(TEXTS), x, atol=1e-6)
    base = TextEncoder(tiny_model_dir)
    assert not np.allclose(base.encode(TEXTS), x, atol=1e-3)
    # the embeddings stay frozen (freeze_embeddings), the layers above them moved
    torch.testing.assert_close(loaded.model.get_input_embeddings().weight, base.model.get_input_embeddings().weight)
    assert not torch.allclose(loaded.model.encoder.layer[0].attention.self.query.weight,
                              base.model.encoder.layer[0].attention.self.query.weight)
    head = load_head(out)
    assert head.classes == ft.head.classes
    np.testing.assert_allclose(head.predict_proba(x), ft.head.predict_proba(x), atol=1e-6)
    assert load_head(tiny_model_dir) is None


def test_fewer_than_two_classes_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="two classes"):
        finetune(GOOD, ["good"] * len(GOOD), _cfg(), base=tiny_model_dir)


@pytest.mark.parametrize("bad", [{"budget_s": 0}, {"batch_size": 1}, {"warmup_fraction": 1.0}, {"method": "lora"},
                                 {"loss": "triplet"}, {"max_length": 4}])
def test_a_setting_out_of_range_is_refused_with_its_name(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        FinetuneConfig(**bad)
