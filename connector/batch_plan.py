"""Batch planning for the text encoder: pure functions over token ids and lengths, numpy only.

The steps, in the order ``TextEncoder`` applies them:

1. ``clip_texts``: cut each text at ``max_length * CHARS_PER_TOKEN_CAP`` characters before
   tokenizing, so a huge input costs the tokenizer little; such a text is flagged truncated.
2. ``truncate_ids``: cut token ids to ``max_length``, keeping the final special token ([SEP]).
3. ``plan_batches``: sort by length (stable) and cut the order into batches whose padded size
   (rows x longest row) stays within the token budget; a batch of mixed lengths is marked for
   packing when it is small and packing saves at least 20 % of the computed tokens.
4. ``padded_arrays`` / ``packed_arrays``: the arrays a planned batch is made of.

Long texts, when the encoder chunks them, are first cut into windows by ``plan_windows``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# A token covers at most ~100 characters of a word (longer words become one [UNK]); cutting
# the text at this many characters per allowed token bounds tokenizer work on huge inputs
# without changing the tokens that survive truncation for ordinary text.
CHARS_PER_TOKEN_CAP = 24
# Pack a batch only when its padded size is at least this many times its real token count.
PACK_MIN_SAVING = 1.25


@dataclass(frozen=True)
class BatchPlan:
    """One forward pass: ``index`` (positions in the token id list, shortest first), the padded
    ``width`` (its longest row), the real token count ``tokens``, and whether to pack it."""

    index: np.ndarray
    width: int
    tokens: int
    packed: bool


def clip_texts(texts: Sequence[str], max_length: int) -> tuple[list[str], np.ndarray]:
    """Texts cut at ``max_length * CHARS_PER_TOKEN_CAP`` characters, and which ones were cut."""
    cap = max_length * CHARS_PER_TOKEN_CAP
    clipped = [t if len(t) <= cap else t[:cap] for t in texts]
    cut = np.fromiter((len(t) > cap for t in texts), dtype=bool, count=len(texts))
    return clipped, cut


def truncate_ids(ids: list[list[int]], max_length: int) -> tuple[list[list[int]], np.ndarray]:
    """Token id lists cut to ``max_length`` (keeping the last id, the [SEP]), and which were cut."""
    truncated = np.fromiter((len(x) > max_length for x in ids), dtype=bool, count=len(ids))
    if truncated.any():
        ids = [x if len(x) <= max_length else x[: max_length - 1] + x[-1:] for x in ids]
    return ids, truncated


def token_lengths(ids: Sequence[Sequence[int]]) -> np.ndarray:
    """Length of each token id list as int64."""
    return np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))


def plan_batches(lengths: np.ndarray, *, token_budget: int, max_batch_size: int,
                 pack_tokens: int = 0) -> list[BatchPlan]:
    """Length-sorted batches whose padded size stays within ``token_budget``.

    A batch holds at most ``max_batch_size`` rows; a single row may exceed the budget. With
    ``pack_tokens``, a batch of several texts totalling at most that many tokens is marked
    ``packed`` when its padded size is at least ``PACK_MIN_SAVING`` times its real token count.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    plans: list[BatchPlan] = []
    start = 0
    while start < len(order):
        end = start + 1
        # sorted ascending, so the last item of a batch sets its padded length
        while (end < len(order) and end - start < max_batch_size
               and (end - start + 1) * lengths[order[end]] <= token_budget):
            end += 1
        idx = order[start:end]
        width = int(lengths[idx[-1]])
        total = int(lengths[idx].sum())
        packed = bool(pack_tokens and len(idx) > 1 and total <= pack_tokens
                      and total * PACK_MIN_SAVING <= len(idx) * width)
        plans.append(BatchPlan(idx, width, total, packed))
        start = end
    return plans


def padded_arrays(ids: Sequence[Sequence[int]], index: np.ndarray, width: int,
                  pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``(len(index), width)`` int64 token ids padded with ``pad_id``, and the 0/1 attention mask."""
    arr = np.full((len(index), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(index), width), dtype=np.int64)
    for row, i in enumerate(index):
        n = len(ids[i])
        arr[row, :n] = ids[i]
        mask[row, :n] = 1
    return arr, mask


def packed_arrays(ids: Sequence[Sequence[int]], index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The texts of ``index`` end to end, as int64 arrays.

    Returns ``flat`` (T,) token ids, ``lengths`` (n,), ``positions`` (T,) restarting at 0 for
    each text, and ``segments`` (T,) the row number in ``index`` each token belongs to.
    """
    lengths = np.fromiter((len(ids[i]) for i in index), dtype=np.int64, count=len(index))
    flat = np.fromiter((t for i in index for t in ids[i]), dtype=np.int64, count=int(lengths.sum()))
    positions = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths] or [np.zeros(0, np.int64)])
    segments = np.repeat(np.arange(len(index), dtype=np.int64), lengths)
    return flat, lengths, positions, segments


def plan_windows(offsets: Sequence[Sequence[tuple[int, int]]], width: int,
                 max_chunks: int) -> tuple[list[tuple[int, int] | None], np.ndarray, np.ndarray]:
    """Character spans of consecutive windows of at most ``width`` tokens per text.

    ``offsets``: per text, the ``(start, end)`` character offsets of its tokens (no special
    tokens). A text of at most ``width`` tokens gets one span ``None`` meaning "the whole text".
    Returns the spans per window, the owning text of each window, and per text whether it had
    more than ``max_chunks`` windows (only the first ``max_chunks`` are kept).
    """
    spans: list[tuple[int, int] | None] = []
    owner: list[int] = []
    truncated = np.zeros(len(offsets), dtype=bool)
    for i, offs in enumerate(offsets):
        if len(offs) <= width:
            spans.append(None)
            owner.append(i)
            continue
        starts = range(0, len(offs), width)
        truncated[i] = len(starts) > max_chunks
        for start in list(starts)[:max_chunks]:
            window = offs[start:start + width]
            spans.append((window[0][0], window[-1][1]))
            owner.append(i)
    return spans, np.array(owner, dtype=np.int64), truncated


def window_texts(texts: Sequence[str], spans: Sequence[tuple[int, int] | None],
                 owner: np.ndarray) -> list[str]:
    """The text of each window from ``plan_windows`` (the whole text where the span is ``None``)."""
    return [texts[o] if s is None else texts[o][s[0]:s[1]] for s, o in zip(spans, owner.tolist())]
