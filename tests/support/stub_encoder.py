"""A stand-in for :class:`connector.encoder.TextEncoder` that loads no weights: a text's vector is
the normalized sum of fixed random vectors of its words, so texts sharing words lie close."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


class StubEncoder:
    """``encode(texts)`` -> (n, dim) float32; the attributes the model store reads."""

    max_length = 64
    normalize = True
    chunk = False
    model_path = "stub"

    def __init__(self, dim: int = 16) -> None:
        self.dim = dim
        self.calls = 0

    def _word(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        return np.random.default_rng(seed).normal(size=self.dim)

    def encode(self, texts: Sequence[str], **_: object) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim))
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i] += self._word(word)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)
