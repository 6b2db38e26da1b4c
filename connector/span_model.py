"""Span predictors: a BIO token head on the frozen encoder, or a Hugging Face token-classification
model directory; both decode to character spans with calibrated scores.

A predictor gives per-token logits over BIO tags (:class:`TokenScores`); :func:`decode` turns them
into spans on the original text (BIO-constrained Viterbi, spans widened to whole words) with

- a per-span score: the raw score is the least of the probabilities that the span starts at its
  first token, continues through each next one and stops after its last, read off temperature-
  scaled token probabilities; a Platt map fitted on held-out spans turns it into the chance that
  the span is exactly right (offsets and label);
- the chance of a missed entity: the largest probability, over tokens outside every predicted
  span, that the token is in an entity, mapped by a second Platt fit to the chance that a gold
  entity overlaps no predicted span;
- a task score ``min(least confident span, 1 - missed)`` for routing.

:class:`SpanTagger` (the encoder head) is trained from character spans: cross-fitted token logits
give the temperature and both Platt maps, the head is then refitted on every text. It is saved
as ``head.safetensors`` + ``span_model.json`` in a directory (:meth:`SpanTagger.save`,
:func:`load_span_model`). :class:`HFSpanModel` reads a local ``AutoModelForTokenClassification``
directory (never the hub) and maps its labels (BIO, BIOES or bare IO labels) to BIO tags.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from connector.calibration import TemperatureScaler, softmax
from connector.spans import (
    OUTSIDE,
    Span,
    TokenAlignment,
    align,
    best_window,
    bio_tags,
    decode_bio,
    encode_bio,
    span_token_ranges,
    tag_parts,
    to_label_studio,
    token_windows,
    valid_spans,
    viterbi,
    without_overlaps,
)

FORMAT = "span-model/1"
_EPS = 1e-6


@dataclass
class TokenScores:
    """One text's tokens and their logits ``(n, len(tags))``."""

    alignment: TokenAlignment
    logits: np.ndarray


@dataclass
class SpanPrediction:
    """Spans with calibrated scores and the task's scores."""

    spans: list[Span]
    least_confident: float
    missed: float

    @property
    def score(self) -> float:
        """Confidence that the whole item is right: no doubtful span and no missed entity."""
        return float(min(self.least_confident, 1.0 - self.missed))


def label_studio_prediction(text: str, prediction: SpanPrediction, *, from_name: str, to_name: str,
                            model_version: str | None = None) -> dict[str, Any]:
    """A Label Studio prediction for one task: one ``labels`` result per span (its score, its
    quoted text) and the task score."""
    out: dict[str, Any] = {"result": to_label_studio(text, prediction.spans, from_name=from_name, to_name=to_name),
                           "score": prediction.score}
    if model_version is not None:
        out["model_version"] = model_version
    return out


@dataclass
class Platt:
    """``sigmoid(a * logit(p) + b)``; the identity when ``a = 1, b = 0``."""

    a: float = 1.0
    b: float = 0.0
    n: int = 0

    def __call__(self, p: np.ndarray | float) -> np.ndarray:
        z = np.log(np.clip(p, _EPS, 1 - _EPS)) - np.log(np.clip(1 - np.asarray(p), _EPS, 1))
        return 1.0 / (1.0 + np.exp(-(self.a * z + self.b)))

    @classmethod
    def fit(cls, p: np.ndarray, y: np.ndarray, *, min_n: int = 20, prior_sd: float = 1.0) -> Platt:
        """Maximum a posteriori ``(a, b)`` (Gaussian prior around the identity); the identity when
        fewer than ``min_n`` outcomes or a single outcome."""
        p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if len(y) < min_n or y.min() == y.max():
            return cls(n=len(y))
        from scipy.optimize import minimize

        z = np.log(np.clip(p, _EPS, 1 - _EPS)) - np.log(np.clip(1 - p, _EPS, 1))
        weight = 1.0 / (2.0 * prior_sd**2)

        def nll(ab: np.ndarray) -> float:
            s = ab[0] * z + ab[1]
            return float(np.sum(np.logaddexp(0, s) - y * s) + weight * ((ab[0] - 1) ** 2 + ab[1] ** 2))

        res = minimize(nll, np.array([1.0, 0.0]), method="L-BFGS-B", bounds=[(0.05, 20), (-20, 20)])
        return cls(float(res.x[0]), float(res.x[1]), len(y))


@dataclass
class SpanCalibration:
    """Token temperature, span Platt map, missed-entity Platt map."""

    temperature: float = 1.0
    span: Platt = field(default_factory=Platt)
    missed: Platt = field(default_factory=Platt)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SpanCalibration:
        return cls(float(d.get("temperature", 1.0)), Platt(**d.get("span", {})), Platt(**d.get("missed", {})))


# -- decoding ---------------------------------------------------------------------------------


def _raw_scores(text: str, scores: TokenScores, tags: Sequence[str], *, strict: bool, snap_words: bool,
                temperature: float) -> tuple[list[Span], np.ndarray, float]:
    """Spans, their raw scores, and the raw missed-entity score of one text."""
    n = len(scores.alignment)
    if n == 0:
        return [], np.zeros(0), 0.0
    p = softmax(scores.logits, temperature)
    path = viterbi(np.log(np.clip(p, 1e-300, 1)), tags) if strict else np.argmax(p, axis=1)
    spans = decode_bio(text, scores.alignment, path, tags, snap_words=snap_words)
    index = {t: i for i, t in enumerate(tags)}
    raw = np.zeros(len(spans))
    inside = np.zeros(n, dtype=bool)
    for k, (s, (first, last)) in enumerate(zip(spans, span_token_ranges(scores.alignment, spans))):
        inside[first:last + 1] = True
        b, i = index[f"B-{s.label}"], index[f"I-{s.label}"]
        if strict:
            parts = [p[first, b], *p[first + 1:last + 1, i]]
        else:  # IO models: the mass of the label on each token
            parts = list(p[first:last + 1, b] + p[first:last + 1, i])
        if last + 1 < n:
            parts.append(1.0 - p[last + 1, i])
        raw[k] = min(parts)
    outside = ~inside
    missed = float((1.0 - p[outside, index[OUTSIDE]]).max()) if outside.any() else 0.0
    return spans, raw, missed


def decode(text: str, scores: TokenScores, tags: Sequence[str], calibration: SpanCalibration, *,
           strict: bool = True, snap_words: bool = True) -> SpanPrediction:
    """Calibrated spans and task scores of one text from its token logits."""
    spans, raw, missed = _raw_scores(text, scores, tags, strict=strict, snap_words=snap_words,
                                     temperature=calibration.temperature)
    cal = calibration.span(raw) if len(raw) else raw
    out = [Span(s.start, s.end, s.label, float(c)) for s, c in zip(spans, cal)]
    least = float(min(cal)) if len(cal) else 1.0
    return SpanPrediction(out, least, float(calibration.missed(missed)) if len(scores.alignment) else 0.0)


def fit_calibration(texts: Sequence[str], scores: Sequence[TokenScores], gold: Sequence[Sequence[Span]],
                    tags: Sequence[str], *, strict: bool = True, snap_words: bool = True,
                    min_outcomes: int = 20) -> SpanCalibration:
    """Temperature on held-out token logits, then the span and missed-entity Platt maps on the
    spans decoded with it (a span is right when its offsets and label equal a gold span's; an
    entity is missed when it overlaps no predicted span)."""
    y = [encode_bio(s.alignment, g, tags) for s, g in zip(scores, gold)]
    z = np.concatenate([s.logits for s in scores]) if scores else np.zeros((0, len(tags)))
    yy = np.concatenate(y) if y else np.zeros(0, dtype=np.int64)
    temperature = TemperatureScaler().fit(z, yy).temperature_ if len(yy) and len(np.unique(yy)) > 1 else 1.0
    span_raw, span_ok, miss_raw, miss_ok = [], [], [], []
    for text, s, g in zip(texts, scores, gold):
        spans, raw, missed = _raw_scores(text, s, tags, strict=strict, snap_words=snap_words, temperature=temperature)
        keys = {x.key() for x in g}
        span_raw.extend(raw)
        span_ok.extend(x.key() in keys for x in spans)
        miss_raw.append(missed)
        miss_ok.append(any(all(x.end <= q.start or q.end <= x.start for q in spans) for x in g))
    return SpanCalibration(float(temperature),
                           Platt.fit(np.array(span_raw), np.array(span_ok), min_n=min_outcomes),
                           Platt.fit(np.array(miss_raw), np.array(miss_ok), min_n=min_outcomes))


class SpanModel:
    """What every span predictor shares: tags, calibration, decoding. Subclasses give ``token_scores``."""

    labels: list[str]
    tags: list[str]
    strict: bool = True
    snap_words: bool = True
    calibration: SpanCalibration

    def token_scores(self, texts: Sequence[str]) -> list[TokenScores]:
        raise NotImplementedError

    def predict(self, texts: Sequence[str]) -> list[SpanPrediction]:
        """Calibrated spans (character offsets on each text) and task scores."""
        return [decode(t, s, self.tags, self.calibration, strict=self.strict, snap_words=self.snap_words)
                for t, s in zip(texts, self.token_scores(texts))]

    def calibrate(self, texts: Sequence[str], spans: Sequence[Sequence[Any]], *, min_outcomes: int = 20) -> SpanModel:
        """Fit the temperature and the Platt maps on labelled texts the model was not trained on."""
        gold = [without_overlaps(valid_spans(t, s)) for t, s in zip(texts, spans)]
        self.calibration = fit_calibration(texts, self.token_scores(texts), gold, self.tags, strict=self.strict,
                                           snap_words=self.snap_words, min_outcomes=min_outcomes)
        return self


# -- running a transformer over token windows ---------------------------------------------------


def _special_layout(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Special token ids before and after a single sequence (``[CLS]`` / ``[SEP]`` for BERT)."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for at in range(len(full) - len(bare) + 1):
        if full[at:at + len(bare)] == bare:
            return list(full[:at]), list(full[at + len(bare):])
    raise ValueError(f"cannot find where {type(tokenizer).__name__} puts a sequence among its special tokens")


def window_outputs(model_fn: Any, tokenizer: Any, alignments: Sequence[TokenAlignment], *, max_length: int,
                   overlap: int, token_budget: int = 4096, device: Any = "cpu") -> list[np.ndarray]:
    """Per text, the output row of each token, each token read from the window where it has the
    most context. ``model_fn(input_ids, attention_mask)`` returns ``(batch, width, dim)``."""
    import torch

    before, after = _special_layout(tokenizer)
    size = max(1, max_length - len(before) - len(after))
    pad = int(tokenizer.pad_token_id or 0)
    jobs = []  # (text index, window index, ids)
    plans = []
    for i, a in enumerate(alignments):
        wins = token_windows(len(a), size, min(overlap, size - 1))
        plans.append(wins)
        for w, (lo, hi) in enumerate(wins):
            if hi > lo:
                jobs.append((i, w, before + a.ids[lo:hi].tolist() + after))
    rows: dict[tuple[int, int], np.ndarray] = {}
    jobs.sort(key=lambda j: len(j[2]))
    k = 0
    with torch.inference_mode():
        while k < len(jobs):
            width = len(jobs[k][2])
            m = k + 1
            while m < len(jobs) and (m - k + 1) * len(jobs[m][2]) <= token_budget:
                m += 1
            batch = jobs[k:m]
            width = len(batch[-1][2])
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, (_, _, x) in enumerate(batch):
                ids[r, :len(x)] = torch.tensor(x)
                mask[r, :len(x)] = 1
            out = model_fn(ids.to(device), mask.to(device)).float().cpu().numpy()
            for r, (i, w, x) in enumerate(batch):
                rows[(i, w)] = out[r, len(before):len(x) - len(after)]
            k = m
    result = []
    for i, a in enumerate(alignments):
        which, pos = best_window(len(a), plans[i])
        if len(a) == 0:
            result.append(np.zeros((0, 0), dtype=np.float32))
            continue
        result.append(np.stack([rows[(i, int(w))][int(p)] for w, p in zip(which, pos)]).astype(np.float32))
    return result


# -- the head on the frozen encoder -------------------------------------------------------------


def _with_context(x: np.ndarray, context: int) -> np.ndarray:
    """Each token's row with its ``context`` neighbours' rows on each side (zeros past the ends)."""
    if context == 0 or len(x) == 0:
        return x
    parts = [x]
    for d in range(1, context + 1):
        prev = np.zeros_like(x)
        nxt = np.zeros_like(x)
        prev[d:] = x[:-d]
        nxt[:-d] = x[d:]
        parts += [prev, nxt]
    return np.concatenate(parts, axis=1)


def fit_token_head(x: np.ndarray, y: np.ndarray, k: int, *, C: float = 1.0, balance: float = 0.0,
                   max_iter: int = 150) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression over tokens by L-BFGS (float32; L2 on the weights as
    scikit-learn's ``C``). ``balance`` in ``[0, 1]``: class weights ``(n / (k_seen * n_c)) ** balance``
    (0: none, 1: balanced), so rare entity tags are not drowned by ``O``.
    Returns ``(coef (k, d), intercept (k,))``."""
    import torch

    counts = np.bincount(y, minlength=k).astype(np.float64)
    seen = counts > 0
    w = np.zeros(k)
    w[seen] = (len(y) / (seen.sum() * counts[seen])) ** balance
    weights = torch.as_tensor(w[y] / np.mean(w[y]), dtype=torch.float32)
    xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.as_tensor(y, dtype=torch.int64)
    coef = torch.zeros((k, x.shape[1]), dtype=torch.float32, requires_grad=True)
    bias = torch.zeros(k, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.LBFGS([coef, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-7, tolerance_change=1e-10,
                            history_size=20, line_search_fn="strong_wolfe")
    reg = 1.0 / (2.0 * C * len(y))

    def closure() -> torch.Tensor:
        opt.zero_grad()
        ce = torch.nn.functional.cross_entropy(xt @ coef.T + bias, yt, reduction="none")
        loss = (weights * ce).mean() + reg * (coef * coef).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return coef.detach().numpy().copy(), bias.detach().numpy().copy()


class SpanTagger(SpanModel):
    """BIO softmax head on the frozen encoder's last hidden states (scikit-learn style: the
    hyperparameters are ``__init__``'s keywords, what fitting learns ends in ``_``).

    - ``labels``: the entity labels (a ``<Labels>`` control's values), in order.
    - ``C``: inverse L2 strength of the head. ``context``: neighbouring tokens' states added to each token's.
    - ``balance``: class weighting of the tags (:func:`fit_token_head`); the calibration reads the
      scores of the weighted head, so the reported probabilities stay calibrated.
    - ``folds``: cross-fitting folds for the calibration (by text); fewer than ``min_calibration_texts``
      labelled texts: no calibration (temperature 1, identity maps).
    - ``max_length`` (``None``: the encoder's) and ``overlap``: token windows for long texts.
    """

    def __init__(self, encoder: Any = None, *, labels: Sequence[str], C: float = 1.0, context: int = 1,
                 balance: float = 0.5, folds: int = 3, min_calibration_texts: int = 20,
                 max_length: int | None = None, overlap: int = 64, snap_words: bool = True, seed: int = 0) -> None:
        self.encoder = encoder
        self.labels = list(labels)
        self.tags = bio_tags(self.labels)
        self.C = C
        self.context = context
        self.balance = balance
        self.folds = folds
        self.min_calibration_texts = min_calibration_texts
        self.max_length = max_length
        self.overlap = overlap
        self.snap_words = snap_words
        self.seed = seed
        self.calibration = SpanCalibration()

    def _encoder(self) -> Any:
        if self.encoder is None:
            from connector.encoder import TextEncoder

            self.encoder = TextEncoder()
        return self.encoder

    def token_features(self, texts: Sequence[str]) -> tuple[list[TokenAlignment], list[np.ndarray]]:
        """Alignments and per-token features (hidden state, with neighbours when ``context``)."""
        enc = self._encoder()
        with enc._tokenizer_lock:
            alignments = align(enc.tokenizer, texts)

        def forward(ids: Any, mask: Any) -> Any:
            return enc.model(input_ids=ids, attention_mask=mask).last_hidden_state

        states = window_outputs(forward, enc.tokenizer, alignments, max_length=self.max_length or enc.max_length,
                                overlap=self.overlap, token_budget=enc.token_budget, device=enc.device)
        width = int(enc.dim) * (1 + 2 * self.context)
        feats = [_with_context(x, self.context) if len(x) else np.zeros((0, width), np.float32) for x in states]
        return alignments, feats

    def fit(self, texts: Sequence[str], spans: Sequence[Sequence[Any]]) -> SpanTagger:
        """Train on character spans (``Span``, ``(start, end, label)`` or ``{"start", "end", "label"}``);
        overlapping spans are reduced to a non-overlapping set first."""
        if len(texts) != len(spans):
            raise ValueError(f"{len(texts)} texts but {len(spans)} span lists")
        gold = [without_overlaps(valid_spans(t, s)) for t, s in zip(texts, spans)]
        alignments, feats = self.token_features(texts)
        return self.fit_features(texts, alignments, feats, gold)

    def fit_features(self, texts: Sequence[str], alignments: Sequence[TokenAlignment], feats: Sequence[np.ndarray],
                     gold: Sequence[Sequence[Span]]) -> SpanTagger:
        """:meth:`fit` on precomputed :meth:`token_features` (benchmarks reuse them)."""
        y = [encode_bio(a, g, self.tags) for a, g in zip(alignments, gold)]
        self.calibration = SpanCalibration()
        n = len(texts)
        if n >= max(self.min_calibration_texts, 2 * self.folds) and self.folds >= 2:
            order = np.random.default_rng(self.seed).permutation(n)
            oof: list[TokenScores | None] = [None] * n
            for f in range(self.folds):
                held = order[f::self.folds]
                rest = np.setdiff1d(order, held)
                coef, intercept = self._fit_head([feats[i] for i in rest], [y[i] for i in rest])
                for i in held:
                    oof[i] = TokenScores(alignments[i], feats[i] @ coef.T + intercept)
            self.calibration = fit_calibration(texts, oof, gold, self.tags, snap_words=self.snap_words)
        self.coef_, self.intercept_ = self._fit_head(list(feats), y)
        self.n_train_ = n
        return self

    def _fit_head(self, feats: list[np.ndarray], y: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate(feats) if feats else np.zeros((0, 1), np.float32)
        yy = np.concatenate(y) if y else np.zeros(0, np.int64)
        if not len(yy):
            raise ValueError("no tokens to train on")
        return fit_token_head(x, yy, len(self.tags), C=self.C, balance=self.balance)

    def token_scores(self, texts: Sequence[str]) -> list[TokenScores]:
        alignments, feats = self.token_features(texts)
        return self.scores_from_features(alignments, feats)

    def scores_from_features(self, alignments: Sequence[TokenAlignment],
                             feats: Sequence[np.ndarray]) -> list[TokenScores]:
        return [TokenScores(a, (x @ self.coef_.T + self.intercept_) if len(a) else np.zeros((0, len(self.tags))))
                for a, x in zip(alignments, feats)]

    # -- persistence ----------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> Path:
        """``head.safetensors`` (coef, intercept) and ``span_model.json`` in ``directory``."""
        from safetensors.numpy import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file({"coef": np.ascontiguousarray(self.coef_, dtype=np.float32),
                   "intercept": np.ascontiguousarray(self.intercept_, dtype=np.float32)}, str(d / "head.safetensors"))
        meta = {"format": FORMAT, "kind": "encoder_head", "labels": self.labels, "tags": self.tags,
                "C": self.C, "context": self.context, "balance": self.balance, "max_length": self.max_length,
                "overlap": self.overlap,
                "snap_words": self.snap_words, "n_train": getattr(self, "n_train_", None),
                "encoder_dim": int(self.coef_.shape[1] // (1 + 2 * self.context)),
                "calibration": self.calibration.to_json()}
        (d / "span_model.json").write_text(json.dumps(meta, indent=2))
        return d


def model_tag(tag: str) -> tuple[str, str]:
    """``(B | I | O, label)`` of a token-classification model's label: BIO, BIOES/BILOU (``S``/``U``
    read as ``B``, ``E``/``L`` as ``I``) or a bare label (read as ``I``: the IO scheme)."""
    if tag.upper() == OUTSIDE:
        return OUTSIDE, ""
    m = re.fullmatch(r"([BIESLU])[-_](.+)", tag)
    if m:
        return {"S": "B", "U": "B", "E": "I", "L": "I"}.get(m[1], m[1]), m[2]
    return "I", tag


class HFSpanModel(SpanModel):
    """A local Hugging Face token-classification model as the span predictor.

    Its ``config.id2label`` is read as BIO (``B-X``/``I-X``/``O``), BIOES (``S-X`` as ``B-X``,
    ``E-X`` as ``I-X``) or bare labels (IO: every token of ``X`` labelled ``X``; then decoding is
    not BIO-constrained). ``label_map`` renames the model's entity labels (to a config's labels).
    """

    def __init__(self, model_dir: str | os.PathLike, *, label_map: dict[str, str] | None = None,
                 device: str | None = None, max_length: int | None = None, overlap: int = 64,
                 snap_words: bool = True, calibration: SpanCalibration | None = None) -> None:
        import torch
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").exists():
            raise FileNotFoundError(f"{self.model_dir} is not a Hugging Face model directory (no config.json)")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(f"{self.model_dir}: a fast tokenizer (tokenizer.json) is needed for character offsets")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = AutoModelForTokenClassification.from_pretrained(self.model_dir, local_files_only=True)
        self.model.to(self.device).eval().requires_grad_(False)
        self.label_map = dict(label_map or {})
        model_tags = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self.labels, self.group, self.strict = self._tag_groups(model_tags)
        self.tags = bio_tags(self.labels)
        limit = int(getattr(self.model.config, "max_position_embeddings", 512))
        tok_limit = getattr(self.tokenizer, "model_max_length", limit)
        self.max_length = max_length or (min(limit, tok_limit) if tok_limit and tok_limit < 1e9 else limit)
        self.overlap = overlap
        self.snap_words = snap_words
        self.calibration = calibration or SpanCalibration()

    def _tag_groups(self, model_tags: list[str]) -> tuple[list[str], np.ndarray, bool]:
        """Entity labels, the BIO tag each model label feeds, and whether the scheme is BIO."""
        parsed = [model_tag(t) for t in model_tags]
        parsed = [(p, self.label_map.get(lab, lab)) for p, lab in parsed]
        labels = list(dict.fromkeys(lab for p, lab in parsed if p != OUTSIDE))
        tags = bio_tags(labels)
        group = np.array([tags.index(OUTSIDE if p == OUTSIDE else f"{p}-{lab}") for p, lab in parsed])
        return labels, group, any(p == "B" for p, _ in parsed)

    def token_scores(self, texts: Sequence[str]) -> list[TokenScores]:
        alignments = align(self.tokenizer, texts)

        def forward(ids: Any, mask: Any) -> Any:
            return self.model(input_ids=ids, attention_mask=mask).logits

        raw = window_outputs(forward, self.tokenizer, alignments, max_length=self.max_length, overlap=self.overlap,
                             device=self.device)
        out = []
        for a, z in zip(alignments, raw):
            if len(a) == 0:
                out.append(TokenScores(a, np.zeros((0, len(self.tags)))))
                continue
            p = softmax(z)
            grouped = np.zeros((len(a), len(self.tags)))
            np.add.at(grouped.T, self.group, p.T)
            out.append(TokenScores(a, np.log(np.clip(grouped, 1e-12, None))))
        return out

    def save(self, directory: str | os.PathLike) -> Path:
        """``span_model.json`` naming the model directory, with the calibration fitted on top."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "kind": "huggingface", "model_dir": str(self.model_dir.resolve()),
                "label_map": self.label_map, "labels": self.labels, "tags": self.tags, "overlap": self.overlap,
                "snap_words": self.snap_words, "calibration": self.calibration.to_json()}
        (d / "span_model.json").write_text(json.dumps(meta, indent=2))
        return d


def load_span_model(directory: str | os.PathLike, encoder: Any = None, **kwargs: Any) -> SpanModel:
    """A span model saved by :meth:`SpanTagger.save` or :meth:`HFSpanModel.save`, or a Hugging Face
    token-classification model directory itself (no ``span_model.json``: uncalibrated)."""
    d = Path(directory)
    meta_path = d / "span_model.json"
    if not meta_path.exists():
        return HFSpanModel(d, **kwargs)
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: unknown format {meta.get('format')!r}")
    calibration = SpanCalibration.from_json(meta.get("calibration", {}))
    if meta["kind"] == "huggingface":
        return HFSpanModel(meta["model_dir"], label_map=meta.get("label_map"), overlap=meta.get("overlap", 64),
                           snap_words=meta.get("snap_words", True), calibration=calibration, **kwargs)
    from safetensors.numpy import load_file

    tensors = load_file(str(d / "head.safetensors"))
    model = SpanTagger(encoder, labels=meta["labels"], C=meta["C"], context=meta["context"],
                       balance=meta.get("balance", 0.0),
                       max_length=meta.get("max_length"), overlap=meta.get("overlap", 64),
                       snap_words=meta.get("snap_words", True))
    if encoder is not None and int(encoder.dim) != meta["encoder_dim"]:
        raise ValueError(f"{d}: head trained on {meta['encoder_dim']}-wide states, encoder gives {encoder.dim}")
    model.coef_, model.intercept_ = tensors["coef"], tensors["intercept"]
    model.n_train_ = meta.get("n_train")
    model.calibration = calibration
    if model.tags != meta["tags"]:
        raise ValueError(f"{d}: tags {meta['tags']} do not follow labels {meta['labels']}")
    return model


__all__ = ["HFSpanModel", "Platt", "SpanCalibration", "SpanModel", "SpanPrediction", "SpanTagger", "TokenScores",
           "decode", "fit_calibration", "label_studio_prediction", "load_span_model", "tag_parts", "window_outputs"]
