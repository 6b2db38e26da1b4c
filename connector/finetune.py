"""Fine-tune a copy of the encoder on labelled texts, within a time budget.

Two methods:

- ``contrastive`` (SetFit's first stage): the encoder learns to put texts of one label close
  together and texts of different labels apart; the loop's linear head is then fitted on the new
  embeddings as on the frozen ones. Losses: ``cosine`` (SetFit's default: pairs drawn from the
  labels, same label a positive, different a negative, the squared error between their cosine
  similarity and 1 or 0), and two in-batch losses over label-balanced batches, which use every
  pair within a batch: ``batch_hard`` (sentence-transformers' batch-hard soft-margin triplet loss:
  each text's farthest same-label and nearest other-label text) and ``supcon`` (supervised
  contrastive, Khosla et al. 2020).
- ``classifier``: full fine-tuning with a linear softmax head (cross-entropy), the head first
  fitted on the frozen embeddings (linear probe, then fine-tune: the encoder's first gradients come
  from a sensible head, not a random one).

The losses are written here in plain torch rather than taken from ``setfit`` or
sentence-transformers' trainer: the step loop has to stop at the budget (and plan its learning-rate
schedule to end there), the pooling must be the frozen encoder's own, and neither package is a
runtime dependency. ``tests/unit/test_finetune.py`` checks the ``cosine`` and ``batch_hard`` losses
against sentence-transformers' on the same embeddings.

The copy is a :class:`~connector.encoder.TextEncoder` loaded from the same directory whose model is
trained in place, so the result encodes exactly as the frozen one does (attention-masked mean
pooling, L2-normalised, the same batching). :meth:`Finetuned.save` writes a Hugging Face model
directory (``model.safetensors``, the tokenizer, the sentence-transformers configuration, and
``finetune.json``); :func:`load_finetuned` (or ``TextEncoder(path)``) reads it back.

The budget (``budget_s``, wall seconds from the call) is enforced: no step starts that would end
after it, whatever the planned steps, and on CPU training leaves as much time as loading the model
took for the final TorchScript trace of the new weights. After a few steps the schedule is refitted so that the
learning rate decays to zero at the budget rather than being cut off mid-schedule. Seeds are fixed
(pair draws, batch order, dropout); on one machine and thread count, a run that is not cut short by
the budget is repeatable.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from connector import batch_plan
from connector.encoder import TextEncoder, resolve_model_path

Method = Literal["contrastive", "classifier"]
Loss = Literal["cosine", "batch_hard", "supcon"]

METADATA_FILE = "finetune.json"
HEAD_FILE = "head.safetensors"
# sentence-transformers' own configuration: copied so the directory also loads as a SentenceTransformer
_ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
_ST_DIRS = ("1_Pooling", "2_Normalize")


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune (a plain dataclass: this module imports torch, transformers and numpy only, so
    it runs on a bare GPU machine).

    - ``method`` / ``loss``: see the module docstring (``loss`` is for ``contrastive`` only).
    - ``budget_s``: wall seconds from the call; no training step starts that would end after it.
    - ``epochs``: passes over the training data (``contrastive``: over the drawn pairs;
      ``classifier``: over the labels); ``None``: 1 for ``contrastive``, 10 for ``classifier``.
    - ``pairs_per_label``: ``contrastive``: SetFit's ``num_iterations``: per label and iteration one
      positive and one negative pair, so ``2 * pairs_per_label * n`` pairs an epoch (drawn iteration
      by iteration as training consumes them; a later epoch draws fresh pairs).
    - ``batch_size``: pairs a step (``cosine``); the in-batch losses take ``2 * batch_size`` texts a
      step (the same number of texts encoded); ``classifier``: texts a step.
    - ``learning_rate``: the encoder's (AdamW, linear warm-up over ``warmup_fraction`` of the steps,
      then linear decay to zero); ``head_learning_rate``: the ``classifier`` head's.
    - ``temperature``: ``supcon``'s; ``max_length``: tokens a text is cut to while training.
    - ``freeze_embeddings``: keep the token, position and type embeddings as they are (half of
      MiniLM's weights: the optimizer step costs a third, and few labels say little about them).
    - ``group_by_length``: ``classifier``: batches of texts of similar length (less padding).
    - ``max_steps``: a cap on the steps whatever the epochs; ``fit_to_budget``: refit the schedule's
      length to what the budget allows (measured step time), else run the planned schedule until the
      budget stops it.
    - ``num_threads``: torch threads while training (``None``: every CPU this process may use).
    """

    method: Method = "contrastive"
    loss: Loss = "cosine"
    budget_s: float = 180.0
    epochs: float | None = None
    pairs_per_label: int = 20
    batch_size: int = 16
    learning_rate: float = 2e-5
    head_learning_rate: float = 1e-3
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    temperature: float = 0.1
    max_length: int = 128
    max_steps: int | None = None
    freeze_embeddings: bool = True
    group_by_length: bool = True
    fit_to_budget: bool = True
    seed: int = 0
    num_threads: int | None = None

    def __post_init__(self) -> None:
        bounds = {"budget_s": (0, None), "epochs": (0, None), "learning_rate": (0, None),
                  "head_learning_rate": (0, None), "temperature": (0, None)}
        at_least = {"pairs_per_label": 1, "batch_size": 2, "max_length": 8, "max_steps": 1, "num_threads": 1,
                    "weight_decay": 0, "warmup_fraction": 0}
        problems = [f"{k} must be > {lo}" for k, (lo, _) in bounds.items()
                    if getattr(self, k) is not None and not getattr(self, k) > lo]
        problems += [f"{k} must be >= {lo}" for k, lo in at_least.items()
                     if getattr(self, k) is not None and getattr(self, k) < lo]
        if not self.warmup_fraction < 1:
            problems.append("warmup_fraction must be < 1")
        if self.method not in ("contrastive", "classifier"):
            problems.append(f"method must be 'contrastive' or 'classifier', not {self.method!r}")
        if self.loss not in ("cosine", "batch_hard", "supcon"):
            problems.append(f"loss must be 'cosine', 'batch_hard' or 'supcon', not {self.loss!r}")
        if problems:
            raise ValueError("FinetuneConfig: " + "; ".join(problems))

    def model_dump(self, *, exclude: set[str] | None = None) -> dict[str, Any]:
        """The settings as a dict (``exclude``: names left out)."""
        return {k: v for k, v in asdict(self).items() if k not in (exclude or set())}

    def n_epochs(self) -> float:
        return self.epochs if self.epochs is not None else (1.0 if self.method == "contrastive" else 10.0)


@dataclass(frozen=True)
class Head:
    """A linear softmax head over the (normalised) embeddings; rows follow ``classes``."""

    classes: list[str]
    coef: np.ndarray
    intercept: np.ndarray

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        from connector.calibration import softmax

        return softmax(np.asarray(x, dtype=np.float64) @ self.coef.T + self.intercept)


@dataclass
class Finetuned:
    """A fine-tuned encoder and how far its training got.

    ``steps_planned``: by the epochs (and ``max_steps``); ``steps_fitted``: the schedule's length
    after fitting it to the budget; ``steps_done``: steps taken; ``stopped_by_budget``: the budget
    ended training before the schedule did. ``train_s``: the step loop; ``elapsed_s``: the whole call.
    """

    encoder: TextEncoder
    config: FinetuneConfig
    classes: list[str]
    n_labels: int
    steps_planned: int
    steps_fitted: int
    steps_done: int
    stopped_by_budget: bool
    train_s: float
    elapsed_s: float
    losses: list[float] = field(default_factory=list)
    head: Head | None = None
    base_model: str = ""

    def summary(self) -> str:
        how = "stopped by the budget" if self.stopped_by_budget else "schedule complete"
        return (f"{self.config.method}{'/' + self.config.loss if self.config.method == 'contrastive' else ''}: "
                f"{self.steps_done} of {self.steps_planned} planned steps ({self.steps_fitted} fitted to the "
                f"budget) in {self.train_s:.1f} s, {self.elapsed_s:.1f} s in all (budget {self.config.budget_s:g} s), "
                f"{how}")

    def metadata(self) -> dict[str, Any]:
        return {"base_model": self.base_model, "config": self.config.model_dump(), "classes": self.classes,
                "n_labels": self.n_labels, "steps_planned": self.steps_planned, "steps_fitted": self.steps_fitted,
                "steps_done": self.steps_done, "stopped_by_budget": self.stopped_by_budget,
                "train_s": round(self.train_s, 3), "elapsed_s": round(self.elapsed_s, 3),
                "final_loss": float(np.mean(self.losses[-10:])) if self.losses else None}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the weights (safetensors), tokenizer and configuration into directory ``path``."""
        from safetensors.numpy import save_file

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.encoder.model.save_pretrained(out, safe_serialization=True)
        self.encoder.tokenizer.save_pretrained(out)
        base = Path(self.encoder.model_path)
        for name in _ST_FILES:
            if (base / name).exists() and base != out:
                shutil.copy(base / name, out / name)
        for name in _ST_DIRS:
            if (base / name).is_dir() and base != out:
                shutil.copytree(base / name, out / name, dirs_exist_ok=True)
        if self.head is not None:
            save_file({"coef": self.head.coef.astype(np.float32), "intercept": self.head.intercept.astype(np.float32)},
                      str(out / HEAD_FILE))
        (out / METADATA_FILE).write_text(json.dumps(self.metadata(), indent=2))
        return out


def load_finetuned(path: str | os.PathLike, **encoder_kwargs: Any) -> TextEncoder:
    """The encoder saved by :meth:`Finetuned.save` (any :class:`TextEncoder` keyword applies)."""
    return TextEncoder(path, **encoder_kwargs)


def load_head(path: str | os.PathLike) -> Head | None:
    """The ``classifier`` head saved with a fine-tuned encoder, or ``None`` when there is none."""
    from safetensors.numpy import load_file

    path = Path(path)
    if not (path / HEAD_FILE).exists():
        return None
    tensors = load_file(str(path / HEAD_FILE))
    classes = json.loads((path / METADATA_FILE).read_text())["classes"]
    return Head(list(classes), tensors["coef"], tensors["intercept"])


# -- training data ---------------------------------------------------------------------------------


def contrastive_pairs(y: np.ndarray, pairs_per_label: int, rng: np.random.Generator) -> np.ndarray:
    """SetFit's pairs: for each iteration and each label, one other text of its class (target 1) and
    one of another class (target 0). Returns ``(m, 3)`` int64 rows ``(i, j, target)``, shuffled; a
    class with a single member gets no positives, a lone class no negatives."""
    y = np.asarray(y)
    chunks: list[np.ndarray] = []
    for _ in range(pairs_per_label):
        anchors = rng.permutation(len(y))
        for c in np.unique(y):
            a = anchors[y[anchors] == c]
            same, diff = np.flatnonzero(y == c), np.flatnonzero(y != c)
            if len(same) > 1:  # another member: draw among n - 1 positions, skipping the anchor's own
                r = rng.integers(len(same) - 1, size=len(a))
                r += r >= np.searchsorted(same, a)
                chunks.append(np.column_stack([a, same[r], np.ones_like(a)]))
            if len(diff):
                chunks.append(np.column_stack([a, diff[rng.integers(len(diff), size=len(a))], np.zeros_like(a)]))
    out = np.concatenate(chunks).astype(np.int64) if chunks else np.zeros((0, 3), dtype=np.int64)
    return out[rng.permutation(len(out))]


def balanced_batches(y: np.ndarray, size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless batches of ``size`` distinct indices, as many of each class as fit (up to ``size // 2``
    classes a batch, at least two of each where the class has two): every batch holds positives and
    negatives. Each class is walked through in a fresh random order, pass after pass."""
    y = np.asarray(y)
    classes = np.unique(y)
    members = {c: np.flatnonzero(y == c) for c in classes}
    queues = {c: rng.permutation(m) for c, m in members.items()}
    per_batch = max(1, min(len(classes), size // 2))

    def take(c: Any, k: int) -> np.ndarray:
        k = min(k, len(members[c]))
        if len(queues[c]) < k:
            queues[c] = np.concatenate([queues[c], rng.permutation(members[c])])
        got, queues[c] = queues[c][:k], queues[c][k:]
        return np.unique(got)  # a class passes its end mid-batch: a duplicate is dropped

    while True:
        chosen = rng.choice(classes, per_batch, replace=False)
        k = size // per_batch
        yield np.concatenate([take(c, k) for c in chosen])


def epoch_batches(lengths: np.ndarray, size: int, rng: np.random.Generator, *, group_by_length: bool = True,
                  window: int = 50) -> list[np.ndarray]:
    """One epoch's batches of ``size`` indices in random order; with ``group_by_length``, each run of
    ``window`` batches is sorted by token length before it is cut into batches (less padding, the
    batches still shuffled), as Hugging Face's length-grouped sampler does."""
    order = rng.permutation(len(lengths))
    if group_by_length:
        chunks = [order[i:i + window * size] for i in range(0, len(order), window * size)]
        order = np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in chunks])
    batches = [order[i:i + size] for i in range(0, len(order), size)]
    return [batches[i] for i in rng.permutation(len(batches))]


# -- losses (on L2-normalised embeddings) ----------------------------------------------------------


def cosine_loss(u: Any, v: Any, target: Any) -> Any:
    """SetFit's ``CosineSimilarityLoss``: mean squared error between ``cos(u, v)`` and the 0/1 target."""
    import torch

    return torch.nn.functional.mse_loss(torch.nn.functional.cosine_similarity(u, v), target.to(u.dtype))


def batch_hard_soft_margin_loss(z: Any, labels: Any) -> Any:
    """sentence-transformers' ``BatchHardSoftMarginTripletLoss``: per anchor, ``log(1 + exp(d(a, p) -
    d(a, n)))`` with its farthest positive and nearest negative (Euclidean)."""
    import torch

    # z is unit-length: |a - b|^2 = 2 - 2 cos; clamped so the zero diagonal has a zero gradient
    d = (2.0 - 2.0 * z @ z.T).clamp(min=1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=z.device)
    hardest_pos = (d * (same & ~eye)).max(dim=1).values
    hardest_neg = d.masked_fill(same, float("inf")).min(dim=1).values
    ok = torch.isfinite(hardest_neg)
    return torch.nn.functional.softplus(hardest_pos[ok] - hardest_neg[ok]).mean()


def supcon_loss(z: Any, labels: Any, temperature: float) -> Any:
    """Supervised contrastive loss: per anchor, the mean log-probability of its positives among all
    other texts of the batch under ``softmax(cos / temperature)``."""
    import torch

    logits = z @ z.T / temperature
    eye = torch.eye(len(labels), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    n_pos = pos.sum(dim=1)
    keep = n_pos > 0
    per_anchor = -(log_prob.masked_fill(~pos, 0.0)).sum(dim=1)[keep] / n_pos[keep]
    return per_anchor.mean()


# -- the step loop ---------------------------------------------------------------------------------


class _Schedule:
    """Linear warm-up over ``warmup`` of ``total`` steps, then linear decay to zero at ``total``;
    ``total`` may be refitted while training."""

    def __init__(self, total: int, warmup_fraction: float) -> None:
        self.total, self.warmup_fraction = total, warmup_fraction

    def __call__(self, step: int) -> float:
        warm = max(1, int(self.warmup_fraction * self.total))
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (self.total - step) / max(1, self.total - warm))


@dataclass
class _Plan:
    """What one training step consumes: ``step(k)`` returns the loss tensor of step ``k``."""

    steps: int
    step: Callable[[int], Any]
    head: Any = None


def finetune(texts: Sequence[str], labels: Sequence[str], config: FinetuneConfig | None = None, *,
             base: TextEncoder | str | os.PathLike | None = None, device: str | None = None,
             progress: bool = False) -> Finetuned:
    """Fine-tune a copy of ``base`` (a :class:`TextEncoder`, a model directory, or ``None`` for the
    bundled MiniLM) on ``texts`` and their ``labels``, within ``config.budget_s``.

    Returns the fine-tuned encoder (a ``TextEncoder``: same ``encode``) and how far training got;
    with ``method="classifier"`` also its head (rows in sorted label order).
    """
    import torch

    t0 = time.perf_counter()
    cfg = config or FinetuneConfig()
    texts, labels = list(texts), [str(lb) for lb in labels]
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"fine-tuning needs labels of at least two classes, have {len(classes)}")
    y = np.array([classes.index(lb) for lb in labels], dtype=np.int64)
    path = Path(base.model_path) if isinstance(base, TextEncoder) else resolve_model_path(base)
    if device is None and isinstance(base, TextEncoder):
        device = str(base.device)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads or len(os.sched_getaffinity(0)))
    loading = time.perf_counter()
    enc = TextEncoder(path, device=device, dtype="float32", jit=False)
    on_gpu = enc.device.type == "cuda"
    # the final trace (CPU) takes about as long as loading did: training leaves that much of the budget
    deadline = t0 + cfg.budget_s - (0.0 if on_gpu else time.perf_counter() - loading)
    try:
        with torch.random.fork_rng(devices=[enc.device.index or 0] if on_gpu else []):
            torch.manual_seed(cfg.seed)
            rng = np.random.default_rng(cfg.seed)
            ids, _ = enc.tokenize(texts)
            ids, _ = batch_plan.truncate_ids(ids, min(cfg.max_length, enc.max_length))
            plan = (_classifier_plan if cfg.method == "classifier" else _contrastive_plan)(enc, ids, y, cfg, rng)
            result = _train(enc, plan, cfg, deadline, progress=progress)
    finally:
        torch.set_num_threads(saved_threads)
        enc.model.eval().requires_grad_(False)
    head = None
    if plan.head is not None:
        w = plan.head.weight.detach().float().cpu().numpy()
        b = plan.head.bias.detach().float().cpu().numpy()
        head = Head(classes, w, b)
    if on_gpu:  # serve as the frozen encoder does on a GPU: bf16
        enc.model.to(torch.bfloat16)
        enc.dtype = torch.bfloat16
    else:  # and on CPU: a frozen TorchScript trace of the new weights
        enc.jit = True
        enc._trace()
    steps_done, steps_fitted, stopped, train_s, losses = result
    return Finetuned(enc, cfg, classes, len(texts), plan.steps, steps_fitted, steps_done, stopped, train_s,
                     time.perf_counter() - t0, losses, head, str(path))


def _embed(enc: TextEncoder, ids: list[list[int]], index: np.ndarray) -> Any:
    """Mean-pooled, L2-normalised embeddings of ``ids[index]`` with gradients (the frozen encoder's
    padded forward pass)."""
    import torch

    width = max(len(ids[i]) for i in index)
    arr, mask = batch_plan.padded_arrays(ids, index, width, enc.pad_id)
    input_ids, attention = torch.from_numpy(arr).to(enc.device), torch.from_numpy(mask).to(enc.device)
    with torch.autocast(enc.device.type, dtype=torch.bfloat16, enabled=enc.device.type == "cuda"):
        hidden = enc.model(input_ids=input_ids, attention_mask=attention).last_hidden_state
    m = attention.unsqueeze(-1).to(hidden.dtype)
    pooled = ((hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)).float()
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def _contrastive_plan(enc: TextEncoder, ids: list[list[int]], y: np.ndarray, cfg: FinetuneConfig,
                      rng: np.random.Generator) -> _Plan:
    import torch

    n_pairs = 2 * cfg.pairs_per_label * len(y)
    steps = max(1, math.ceil(cfg.n_epochs() * n_pairs / cfg.batch_size))
    if cfg.max_steps:
        steps = min(steps, cfg.max_steps)
    if cfg.loss == "cosine":
        pairs = _pair_stream(y, rng)

        def step(k: int) -> Any:
            batch = np.stack([next(pairs) for _ in range(cfg.batch_size)])
            uniq, inverse = np.unique(batch[:, :2], return_inverse=True)
            z = _embed(enc, ids, uniq)
            inverse = torch.from_numpy(inverse.reshape(-1, 2)).to(enc.device)
            return cosine_loss(z[inverse[:, 0]], z[inverse[:, 1]], torch.from_numpy(batch[:, 2]).to(enc.device))

        return _Plan(steps, step)
    batches = balanced_batches(y, 2 * cfg.batch_size, rng)
    y_t = torch.from_numpy(y).to(enc.device)

    def in_batch_step(k: int) -> Any:
        index = next(batches)
        z = _embed(enc, ids, index)
        if cfg.loss == "batch_hard":
            return batch_hard_soft_margin_loss(z, y_t[index])
        return supcon_loss(z, y_t[index], cfg.temperature)

    return _Plan(steps, in_batch_step)


def _pair_stream(y: np.ndarray, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless pairs, one iteration of :func:`contrastive_pairs` at a time (drawn as consumed, so a
    budget that allows few steps does not wait for pairs it will never use)."""
    while True:
        chunk = contrastive_pairs(y, 1, rng)
        if not len(chunk):
            raise ValueError("no pairs to train on")
        yield from chunk


def _classifier_plan(enc: TextEncoder, ids: list[list[int]], y: np.ndarray, cfg: FinetuneConfig,
                     rng: np.random.Generator) -> _Plan:
    import torch

    from connector.classifier import fit_softmax_head

    k = int(y.max()) + 1
    head = torch.nn.Linear(enc.dim, k).to(enc.device)
    with torch.no_grad():  # linear probe first: the head the loop would fit on the frozen embeddings
        x = torch.cat([_embed(enc, ids, chunk) for chunk in np.array_split(np.arange(len(y)), max(1, len(y) // 64))])
        coef, intercept = fit_softmax_head(x.cpu().numpy(), y, k)
        head.weight.copy_(torch.from_numpy(coef))
        head.bias.copy_(torch.from_numpy(intercept))
    per_epoch = math.ceil(len(y) / cfg.batch_size)
    steps = max(1, math.ceil(cfg.n_epochs() * per_epoch))
    if cfg.max_steps:
        steps = min(steps, cfg.max_steps)
    lengths = batch_plan.token_lengths(ids)
    batches = [b for _ in range(math.ceil(steps / per_epoch))
               for b in epoch_batches(lengths, cfg.batch_size, rng, group_by_length=cfg.group_by_length)]
    y_t = torch.from_numpy(y).to(enc.device)

    def step(s: int) -> Any:
        index = batches[s]
        return torch.nn.functional.cross_entropy(head(_embed(enc, ids, index)), y_t[index])

    return _Plan(steps, step, head)


def _train(enc: TextEncoder, plan: _Plan, cfg: FinetuneConfig, deadline: float, *,
           progress: bool) -> tuple[int, int, bool, float, list[float]]:
    """Run ``plan`` until its schedule ends or the next step would end past ``deadline``; returns
    ``(steps done, steps fitted, stopped by the budget, seconds, losses)``."""
    import torch

    enc.model.train().requires_grad_(True)
    if cfg.freeze_embeddings:
        enc.model.get_input_embeddings().requires_grad_(False)
        getattr(enc.model, "embeddings", enc.model.get_input_embeddings()).requires_grad_(False)
    no_decay = ("bias", "LayerNorm.weight")
    named = [(n, p) for n, p in enc.model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if not n.endswith(no_decay)], "weight_decay": cfg.weight_decay},
              {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0}]
    if plan.head is not None:
        groups.append({"params": list(plan.head.parameters()), "weight_decay": 0.0, "lr": cfg.head_learning_rate})
    opt = torch.optim.AdamW(groups, lr=cfg.learning_rate)
    schedule = _Schedule(plan.steps, cfg.warmup_fraction)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    bar = _Bar(plan.steps, cfg, enabled=progress)
    times: list[float] = []
    losses: list[float] = []
    stopped = False
    start = time.perf_counter()
    step = 0
    try:
        while step < schedule.total:
            now = time.perf_counter()
            # the slowest of the last few steps: a step that would end past the budget is not begun
            if now + (max(times[-5:]) if times else 0.0) > deadline:
                stopped = True
                break
            opt.zero_grad(set_to_none=True)
            loss = plan.step(step)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
            opt.step()
            sched.step()
            step += 1
            losses.append(float(loss.detach()))
            times.append(time.perf_counter() - now)
            if cfg.fit_to_budget and (step == 3 or step % 20 == 0):
                per_step = float(np.median(times[-20:]))
                fits = step + int(0.97 * (deadline - time.perf_counter()) / per_step)
                schedule.total = min(plan.steps, max(step + 1, fits))
            bar.update(step, schedule.total, losses[-1])
    finally:
        bar.close()
    return step, schedule.total, stopped, time.perf_counter() - start, losses


class _Bar:
    """A rich progress bar of the steps with the loss and the budget (a no-op when disabled)."""

    def __init__(self, total: int, cfg: FinetuneConfig, *, enabled: bool) -> None:
        self.p = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(),
                          TextColumn("of {task.fields[budget]:g} s"), transient=True)
        name = f"fine-tuning ({cfg.method}{'/' + cfg.loss if cfg.method == 'contrastive' else ''})"
        self.task = self.p.add_task(name, total=total, loss=float("nan"), budget=cfg.budget_s)
        self.p.start()

    def update(self, done: int, total: int, loss: float) -> None:
        if self.p is not None:
            self.p.update(self.task, completed=done, total=total, loss=loss)

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()
