"""GPU checks that need only torch, transformers, numpy and safetensors (the lent GPU machine).

1. The CUDA encoder (bf16, overlapped tokenization) gives the same embeddings as fp32 on CPU
   (cosine > 0.995 per text) and keeps input order.
2. The micro-batcher on CUDA returns each caller its own rows.
Exit status 1 on a failed check. Run with ``PYTHONPATH=.``.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

from connector.batching import MicroBatcher
from connector.encoder import TextEncoder


def main(model: str) -> int:
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    rng = np.random.default_rng(0)
    words = ["the", "a", "film", "story", "actor", "plot", "scene", "great", "dull", "moving", "funny", "slow", "sharp", "warm", "cold", "script"]
    texts = [" ".join(rng.choice(words, size=rng.integers(3, 120))) for _ in range(3000)]
    gpu = TextEncoder(model, device="cuda")
    cpu = TextEncoder(model, device="cpu", dtype="float32", jit=False)
    g = gpu.encode(texts)
    c = cpu.encode(texts[:300])
    cos = (g[:300] * c).sum(1)
    ok = True
    print(f"bf16 CUDA vs fp32 CPU: min cosine {cos.min():.5f}, mean {cos.mean():.5f}")
    ok &= bool(cos.min() > 0.995)
    rev = gpu.encode(texts[:300][::-1])[::-1]
    ok &= bool(np.allclose(rev, g[:300], atol=2e-2))
    b = MicroBatcher(lambda xs: list(gpu.encode(xs)), max_batch_size=256, max_wait_ms=2)
    out: dict[int, np.ndarray] = {}
    ths = [threading.Thread(target=lambda i=i: out.__setitem__(i, np.stack(b([texts[i]])))) for i in range(64)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    b.close()
    same = all(float((out[i][0] * g[i]).sum()) > 0.995 for i in range(64))
    print(f"micro-batcher on CUDA: callers get their own rows: {same}")
    ok &= same
    print("GPU checks:", "passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "default"))
