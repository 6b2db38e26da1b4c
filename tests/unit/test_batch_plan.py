"""The encoder's batch planner on hand-made token ids: no tokenizer, no weights, no torch."""

import subprocess
import sys

import numpy as np
import pytest

from connector.batch_plan import (
    CHARS_PER_TOKEN_CAP,
    clip_texts,
    packed_arrays,
    padded_arrays,
    plan_batches,
    plan_windows,
    token_lengths,
    truncate_ids,
    window_texts,
)


def _ids(*lengths):
    return [[100 + i] * (n - 1) + [102] for i, n in enumerate(lengths)]  # ends with a [SEP]-like 102


def test_clip_texts_cuts_at_the_character_cap_and_flags_the_cut_ones():
    cap = 4 * CHARS_PER_TOKEN_CAP
    clipped, cut = clip_texts(["x" * cap, "y" * (cap + 1), ""], 4)
    assert [len(t) for t in clipped] == [cap, cap, 0] and cut.tolist() == [False, True, False]


def test_truncate_ids_keeps_the_last_id_and_flags_only_long_lists():
    ids, truncated = truncate_ids([[1, 2, 3, 4, 5, 9], [1, 2, 9]], 4)
    assert ids == [[1, 2, 3, 9], [1, 2, 9]] and truncated.tolist() == [True, False]
    same = [[1, 9]]
    ids, truncated = truncate_ids(same, 4)
    assert ids is same and truncated.tolist() == [False]


def test_plan_batches_sorts_by_length_and_fills_up_to_the_budget():
    plans = plan_batches(np.array([5, 3, 8, 3]), token_budget=12, max_batch_size=4)
    assert [p.index.tolist() for p in plans] == [[1, 3], [0], [2]]  # stable: equal lengths keep input order
    assert [(p.width, p.tokens, p.packed) for p in plans] == [(3, 6, False), (5, 5, False), (8, 8, False)]


@pytest.mark.parametrize("budget, max_rows", [(64, 64), (300, 7), (2048, 64), (10, 3)])
def test_plan_batches_respect_budget_and_row_cap_and_cover_every_text_once(budget, max_rows):
    lengths = np.random.default_rng(0).integers(1, 120, size=300)
    plans = plan_batches(lengths, token_budget=budget, max_batch_size=max_rows)
    seen = np.concatenate([p.index for p in plans])
    assert sorted(seen.tolist()) == list(range(300))
    assert np.all(np.diff(lengths[seen]) >= 0)  # globally length-sorted
    for p in plans:
        assert len(p.index) <= max_rows and (len(p.index) == 1 or len(p.index) * p.width <= budget)
        assert p.width == lengths[p.index].max() and p.tokens == lengths[p.index].sum()


def test_a_batch_is_packed_only_when_small_mixed_and_saving_a_fifth():
    def packed(lengths, pack_tokens=512):
        (plan,) = plan_batches(np.array(lengths), token_budget=4096, max_batch_size=64, pack_tokens=pack_tokens)
        return plan.packed

    assert packed([2, 10])  # 12 tokens computed as 20: packing saves 40 %
    assert not packed([9, 10])  # 19 as 20: not worth it
    assert not packed([10])  # one text has no padding
    assert not packed([2, 10], pack_tokens=0)  # packing off
    assert not packed([2, 300, 300], pack_tokens=512)  # too many tokens for one row
    assert packed([1, 1, 1, 1, 8])  # 12 tokens as 40


def test_padded_arrays_pad_with_the_pad_id_and_mask_the_real_tokens():
    ids = [[5, 6, 7], [8]]
    arr, mask = padded_arrays(ids, np.array([1, 0]), 3, 0)
    assert arr.tolist() == [[8, 0, 0], [5, 6, 7]] and mask.tolist() == [[1, 0, 0], [1, 1, 1]]
    assert arr.dtype == mask.dtype == np.int64


def test_packed_arrays_put_texts_end_to_end_with_restarting_positions():
    flat, lengths, positions, segments = packed_arrays([[5, 6, 7], [8], [9, 9]], np.array([1, 0]))
    assert flat.tolist() == [8, 5, 6, 7] and lengths.tolist() == [1, 3]
    assert positions.tolist() == [0, 0, 1, 2] and segments.tolist() == [0, 1, 1, 1]


def test_token_lengths():
    assert token_lengths(_ids(3, 1, 4)).tolist() == [3, 1, 4]


def test_plan_windows_cuts_long_texts_into_windows_and_keeps_at_most_max_chunks():
    short = [(0, 2), (3, 5)]
    long = [(i * 3, i * 3 + 2) for i in range(5)]  # 5 tokens -> windows at 0, 2, 4
    spans, owner, truncated = plan_windows([short, long], 2, 2)
    assert spans == [None, (0, 5), (6, 11)] and owner.tolist() == [0, 1, 1]
    assert truncated.tolist() == [False, True]
    _, owner, truncated = plan_windows([long], 2, 3)
    assert owner.tolist() == [0, 0, 0] and truncated.tolist() == [False]


def test_window_texts_slice_each_owner():
    texts = ["ab cd", "aa bb cc dd ee"]
    spans, owner, _ = plan_windows([[(0, 2), (3, 5)], [(i * 3, i * 3 + 2) for i in range(5)]], 2, 2)
    assert window_texts(texts, spans, owner) == ["ab cd", "aa bb", "cc dd"]


def test_the_model_modules_import_without_the_service_stack():
    code = ("import sys, connector.batch_plan; assert 'torch' not in sys.modules; "
            "import connector.encoder, connector.tracing, connector.batching, connector.calibration, "
            "connector.finetune; "
            "bad = {'fastapi', 'sqlalchemy', 'label_studio_sdk', 'argilla', 'httpx', 'pydantic', 'sklearn', 'rich'} "
            "& set(sys.modules); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
