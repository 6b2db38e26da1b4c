"""Entity spans: character offsets on the original text, BIO tags over a fast tokenizer's offsets,
and the span shapes of Label Studio, Argilla, JSONL and spaCy.

Offsets are Python string indices (Unicode code points) into the text exactly as the tool holds
it: never into a normalised, stripped or re-joined copy. A fast tokenizer reports each token's
offsets on the original string; a span decoded from tokens starts where its first token starts
and ends where its last token ends, extended over the combining marks, variation selectors and
joiners that close the last character (BERT's normaliser drops them from the token, not from the
text). Lone surrogates, which the tokenizer refuses, are replaced by U+FFFD one for one, so no
offset moves. Long texts are tokenised once and cut into overlapping windows of tokens
(:func:`token_windows`); the offsets stay those of the whole text.

Only numpy is imported here; the tokenizer is the caller's (any Hugging Face fast tokenizer).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

OUTSIDE = "O"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# Characters that continue the grapheme before them: zero-width joiner, variation selectors,
# emoji skin-tone modifiers, tag characters (emoji flag sequences).
_EXTENDERS = {0x200D, 0x20E3} | set(range(0xFE00, 0xFE10)) | set(range(0x1F3FB, 0x1F400)) \
    | set(range(0xE0020, 0xE0080)) | set(range(0xE0100, 0xE01F0))


@dataclass(frozen=True, order=True)
class Span:
    """``text[start:end]`` labelled ``label``; ``score`` is a calibrated probability or a vote share."""

    start: int
    end: int
    label: str
    score: float | None = field(default=None, compare=False)

    def text_in(self, text: str) -> str:
        return text[self.start:self.end]

    def key(self) -> tuple[int, int, str]:
        return self.start, self.end, self.label


def as_spans(spans: Iterable[Span | tuple | Mapping[str, Any]]) -> list[Span]:
    """Spans from ``Span``, ``(start, end, label)`` / ``(start, end, label, score)`` tuples or
    ``{"start", "end", "label"}`` mappings (``labels: [..]`` gives one span per label)."""
    out: list[Span] = []
    for s in spans:
        if isinstance(s, Span):
            out.append(s)
        elif isinstance(s, Mapping):
            labels = s["labels"] if "labels" in s else [s["label"]]
            out.extend(Span(int(s["start"]), int(s["end"]), str(lab), s.get("score")) for lab in labels)
        else:
            out.append(Span(int(s[0]), int(s[1]), str(s[2]), s[3] if len(s) > 3 else None))
    return out


def valid_spans(text: str, spans: Iterable[Span | tuple | Mapping[str, Any]]) -> list[Span]:
    """Sorted, deduplicated spans inside ``text`` with ``start < end``; others dropped."""
    keep = {s.key(): s for s in as_spans(spans) if 0 <= s.start < s.end <= len(text)}
    return [keep[k] for k in sorted(keep)]


def without_overlaps(spans: Iterable[Span]) -> list[Span]:
    """A non-overlapping subset, as BIO can represent: longer spans first, then earlier ones."""
    chosen: list[Span] = []
    for s in sorted(spans, key=lambda s: (-(s.end - s.start), s.start, s.label)):
        if all(s.end <= c.start or c.end <= s.start for c in chosen):
            chosen.append(s)
    return sorted(chosen)


def scalar_text(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD: same length, same offsets."""
    return _LONE_SURROGATE.sub("\ufffd", text) if _LONE_SURROGATE.search(text) else text


def grapheme_end(text: str, end: int) -> int:
    """``end`` moved past the combining marks, joiners and selectors that continue the character
    before it (a joiner also takes the character it joins)."""
    while end < len(text):
        cp = ord(text[end])
        if cp == 0x200D and end + 1 < len(text):
            end += 2
        elif cp in _EXTENDERS or unicodedata.category(text[end]) in ("Mn", "Me", "Mc"):
            end += 1
        else:
            break
    return end


# -- tokens and their offsets -----------------------------------------------------------------


@dataclass
class TokenAlignment:
    """One text's tokens (no special tokens): ids, ``offsets`` ``(n, 2)`` on the original text and
    the word each token belongs to (the tokenizer's pre-tokenisation: whitespace and punctuation)."""

    ids: np.ndarray
    offsets: np.ndarray
    word_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def align(tokenizer: Any, texts: Sequence[str]) -> list[TokenAlignment]:
    """Token ids and character offsets of ``texts`` from a fast tokenizer, untruncated.

    Tokens whose offsets are empty (nothing of the text under them) are dropped.
    """
    if not texts:
        return []
    enc = tokenizer([scalar_text(t) for t in texts], add_special_tokens=False, truncation=False, verbose=False,
                    return_offsets_mapping=True, return_attention_mask=False, return_token_type_ids=False)
    out = []
    for i in range(len(texts)):
        offsets = np.asarray(enc["offset_mapping"][i], dtype=np.int64).reshape(-1, 2)
        words = np.asarray([-1 if w is None else w for w in enc.word_ids(i)], dtype=np.int64)
        ids = np.asarray(enc["input_ids"][i], dtype=np.int64)
        keep = offsets[:, 1] > offsets[:, 0]
        out.append(TokenAlignment(ids[keep], offsets[keep], words[keep]))
    return out


def token_windows(n: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` token windows of at most ``size`` covering ``0..n``, consecutive ones sharing
    ``overlap`` tokens (one empty window when ``n == 0``)."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"need size >= 1 and 0 <= overlap < size, got {size}, {overlap}")
    if n <= size:
        return [(0, n)]
    step = size - overlap
    starts = list(range(0, n - size, step)) + [n - size]
    return [(lo, lo + size) for lo in starts]


def best_window(n: int, windows: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``n`` tokens the window where it has the most context on its nearer side, and
    its position in that window."""
    which = np.zeros(n, dtype=np.int64)
    margin = np.full(n, -1, dtype=np.int64)
    for w, (lo, hi) in enumerate(windows):
        pos = np.arange(lo, hi)
        m = np.minimum(pos - lo, hi - 1 - pos)
        better = m > margin[lo:hi]
        which[lo:hi][better] = w
        margin[lo:hi][better] = m[better]
    starts = np.asarray([windows[w][0] for w in which], dtype=np.int64) if n else np.zeros(0, np.int64)
    return which, np.arange(n) - starts


# -- BIO tags ---------------------------------------------------------------------------------


def bio_tags(labels: Sequence[str]) -> list[str]:
    """``["O", "B-<l>", "I-<l>", ...]`` for the entity labels, in their order."""
    if len(set(labels)) != len(labels) or any(not lab for lab in labels):
        raise ValueError(f"entity labels must be distinct and non-empty: {list(labels)}")
    return [OUTSIDE] + [f"{p}-{lab}" for lab in labels for p in ("B", "I")]


def tag_parts(tag: str) -> tuple[str, str]:
    """``("B" | "I" | "O", label)`` of a BIO tag."""
    if tag == OUTSIDE:
        return OUTSIDE, ""
    prefix, _, label = tag.partition("-")
    return prefix, label


def encode_bio(alignment: TokenAlignment, spans: Iterable[Span], tags: Sequence[str]) -> np.ndarray:
    """Tag ids of the tokens: a token takes the span it overlaps most (spans of unknown labels are
    ignored); the first token of a span is ``B``, the rest ``I``."""
    index = {t: i for i, t in enumerate(tags)}
    y = np.zeros(len(alignment), dtype=np.int64)
    best = np.zeros(len(alignment), dtype=np.int64)
    owner = np.full(len(alignment), -1, dtype=np.int64)
    spans = [s for s in spans if f"B-{s.label}" in index]
    a, b = alignment.offsets[:, 0], alignment.offsets[:, 1]
    for k, s in enumerate(spans):
        overlap = np.minimum(b, s.end) - np.maximum(a, s.start)
        take = overlap > best
        owner[take], best[take] = k, overlap[take]
    prev = -1
    for t in range(len(alignment)):
        k = owner[t]
        if k >= 0:
            y[t] = index[("I-" if k == prev else "B-") + spans[k].label]
        prev = k
    return y


def decode_bio(text: str, alignment: TokenAlignment, tag_ids: Sequence[int], tags: Sequence[str], *,
               snap_words: bool = False) -> list[Span]:
    """Spans from token tags (lenient: an ``I-X`` not continuing an ``X`` starts one).

    ``snap_words``: a span that covers part of a word is widened to the whole word.
    """
    runs: list[list[int]] = []  # [first token, last token, label index in tags]
    for t, tid in enumerate(tag_ids):
        prefix, label = tag_parts(tags[int(tid)])
        if prefix == OUTSIDE:
            continue
        if prefix == "I" and runs and runs[-1][1] == t - 1 and tag_parts(tags[runs[-1][2]])[1] == label:
            runs[-1][1] = t
        else:
            runs.append([t, t, int(tid)])
    spans = []
    words = alignment.word_ids
    for first, last, tid in runs:
        if snap_words and len(words):
            while first > 0 and words[first] >= 0 and words[first - 1] == words[first]:
                first -= 1
            while last + 1 < len(words) and words[last] >= 0 and words[last + 1] == words[last]:
                last += 1
        start, end = int(alignment.offsets[first, 0]), grapheme_end(text, int(alignment.offsets[last, 1]))
        spans.append(Span(start, end, tag_parts(tags[tid])[1]))
    # snapping can make neighbours overlap: keep the first
    out: list[Span] = []
    for s in spans:
        if not out or s.start >= out[-1].end:
            out.append(s)
    return out


def span_token_ranges(alignment: TokenAlignment, spans: Sequence[Span]) -> list[tuple[int, int]]:
    """``[first, last]`` token indices under each span (``(-1, -1)`` when none)."""
    a, b = alignment.offsets[:, 0], alignment.offsets[:, 1]
    out = []
    for s in spans:
        under = np.flatnonzero((b > s.start) & (a < s.end))
        out.append((int(under[0]), int(under[-1])) if len(under) else (-1, -1))
    return out


def allowed_transitions(tags: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """BIO constraints: ``(start (k,), transition (k, k))`` booleans; ``I-X`` only after ``B-X``/``I-X``."""
    parts = [tag_parts(t) for t in tags]
    start = np.array([p != "I" for p, _ in parts])
    trans = np.ones((len(tags), len(tags)), dtype=bool)
    for j, (p, lab) in enumerate(parts):
        if p == "I":
            trans[:, j] = [q in ("B", "I") and lab2 == lab for q, lab2 in parts]
    return start, trans


def viterbi(log_probs: np.ndarray, tags: Sequence[str]) -> np.ndarray:
    """The most probable tag path under the BIO constraints, from per-token log probabilities."""
    n, k = log_probs.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    start, trans = allowed_transitions(tags)
    penalty = np.where(trans, 0.0, -np.inf)
    score = np.where(start, log_probs[0], -np.inf)
    back = np.zeros((n, k), dtype=np.int64)
    for t in range(1, n):
        cand = score[:, None] + penalty
        back[t] = np.argmax(cand, axis=0)
        score = cand[back[t], np.arange(k)] + log_probs[t]
    path = np.zeros(n, dtype=np.int64)
    path[-1] = int(np.argmax(score))
    for t in range(n - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


# -- offsets as other programs count them -----------------------------------------------------


def utf16_offset(text: str, index: int) -> int:
    """The UTF-16 code-unit offset (a JavaScript string index) of code-point ``index``."""
    return index + sum(1 for ch in text[:index] if ord(ch) > 0xFFFF)


def from_utf16_offset(text: str, offset: int) -> int:
    """The code-point index of UTF-16 code-unit ``offset`` (inside a surrogate pair: the pair's character)."""
    units = 0
    for i, ch in enumerate(text):
        if units >= offset:
            return i
        units += 2 if ord(ch) > 0xFFFF else 1
    return len(text)


def repair_offsets(text: str, start: int, end: int, quoted: str | None) -> tuple[int, int] | None:
    """Code-point offsets for a span a tool reported as ``(start, end)`` with its text ``quoted``.

    Kept when ``text[start:end] == quoted`` (or nothing is quoted and they are in range); else read
    as UTF-16 offsets (what a browser counts past an emoji); else the occurrence of ``quoted``
    nearest to ``start``; ``None`` when ``quoted`` is not in the text.
    """
    if quoted is None:
        return (start, end) if 0 <= start < end <= len(text) else None
    if text[start:end] == quoted and start < end:
        return start, end
    s16, e16 = from_utf16_offset(text, start), from_utf16_offset(text, end)
    if text[s16:e16] == quoted and s16 < e16:
        return s16, e16
    hits = [m.start() for m in re.finditer(re.escape(quoted), text)] if quoted else []
    if not hits:
        return None
    best = min(hits, key=lambda h: abs(h - start))
    return best, best + len(quoted)


# -- Label Studio, Argilla, export ------------------------------------------------------------


def to_label_studio(text: str, spans: Iterable[Span], *, from_name: str, to_name: str,
                    id_prefix: str | None = None) -> list[dict[str, Any]]:
    """Label Studio ``labels`` results: one per span, its ``text`` equal to ``text[start:end]``."""
    out = []
    for i, s in enumerate(valid_spans(text, spans)):
        r: dict[str, Any] = {"from_name": from_name, "to_name": to_name, "type": "labels",
                             "value": {"start": s.start, "end": s.end, "text": text[s.start:s.end],
                                       "labels": [s.label]}}
        if s.score is not None:
            r["score"] = float(s.score)
        if id_prefix is not None:
            r["id"] = f"{id_prefix}{i}"
        out.append(r)
    return out


def from_label_studio(text: str, results: Iterable[Mapping[str, Any]], *,
                      from_name: str | None = None) -> list[Span]:
    """Spans of the ``labels`` results (of ``from_name`` when given), offsets checked against the
    quoted text and repaired (:func:`repair_offsets`); a result whose text is not found is dropped."""
    out = []
    for r in results:
        if r.get("type") != "labels" or (from_name is not None and r.get("from_name") != from_name):
            continue
        v = r.get("value") or {}
        if "start" not in v or "end" not in v:
            continue
        fixed = repair_offsets(text, int(v["start"]), int(v["end"]), v.get("text"))
        if fixed is None:
            continue
        out.extend(Span(fixed[0], fixed[1], str(lab), r.get("score")) for lab in v.get("labels") or [])
    return valid_spans(text, out)


def to_argilla(text: str, spans: Iterable[Span]) -> tuple[list[dict[str, Any]], list[float] | None]:
    """An Argilla ``SpanQuestion`` suggestion: its value ``[{"start", "end", "label"}]`` and one score
    per span (``None`` unless every span has one)."""
    spans = valid_spans(text, spans)
    value = [{"start": s.start, "end": s.end, "label": s.label} for s in spans]
    scores = [float(s.score) for s in spans] if spans and all(s.score is not None for s in spans) else None
    return value, scores


def from_argilla(text: str, value: Iterable[Mapping[str, Any]] | None) -> list[Span]:
    """Spans of an Argilla span response or suggestion value (out-of-range ones dropped)."""
    return valid_spans(text, [Span(int(v["start"]), int(v["end"]), str(v["label"])) for v in value or []])


def spacy_tuples(spans: Iterable[Span]) -> list[tuple[int, int, str]]:
    """spaCy's ``(start, end, label)`` training tuples (character offsets)."""
    return [(s.start, s.end, s.label) for s in sorted(as_spans(spans))]


def span_record(item_id: str, text: str, spans: Iterable[Span], **extra: Any) -> dict[str, Any]:
    """One JSONL row: the text, its spans with offsets, their text and score, and spaCy's tuples."""
    spans = valid_spans(text, spans)
    return {"id": item_id, "text": text,
            "spans": [{"start": s.start, "end": s.end, "label": s.label, "text": text[s.start:s.end],
                       **({"score": float(s.score)} if s.score is not None else {})} for s in spans],
            "entities": spacy_tuples(spans), **extra}


def write_span_jsonl(path: Any, rows: Iterable[tuple[str, str, Iterable[Span]]]) -> int:
    """Write ``(id, text, spans)`` rows as JSONL (UTF-8, non-ASCII kept); returns the row count."""
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for item_id, text, spans in rows:
            # a lone surrogate cannot be written as UTF-8: such a row is escaped, its offsets unchanged
            escape = bool(_LONE_SURROGATE.search(text))
            fh.write(json.dumps(span_record(item_id, text, spans), ensure_ascii=escape) + "\n")
            n += 1
    return n
