"""Predict-path throughput and calibration, all measured in one run (run by hand, not in CI).

Throughput on Rotten Tomatoes snippets, texts/s, for: a per-item loop (the usual ML-backend
pattern), fixed unsorted batches of 32, sentence-transformers' ``encode``, our path
(``TextClassifier.predict_proba``: length-sorted token-budget batches, bf16 + overlapped
tokenization on a GPU), and the model-only ceiling (pre-tokenized sorted batches, forward only).
Then ECE before/after temperature scaling on held-out data of Rotten Tomatoes and BBC News.

    PYTHONPATH=. python benchmarks/predict.py [--n 2000] [--device cuda] [--skip-ece]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from connector.calibration import expected_calibration_error, reliability_diagram
from connector.classifier import TextClassifier, stratified_split
from connector.encoder import TextEncoder

OUT = Path(__file__).resolve().parent / "out"


def _timed(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` runs (after the caller's warm-up)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def load_texts(n: int, *, allow_synthetic: bool) -> list[str]:
    """``n`` Rotten Tomatoes snippets (repeated if ``n`` exceeds the 12,752 unique ones)."""
    try:
        from connector.datasets import rotten_tomatoes

        base = rotten_tomatoes(full=True).texts
    except FileNotFoundError:
        if not allow_synthetic:
            raise
        rng = np.random.default_rng(0)  # a bare GPU machine may lack the data package
        words = ["the", "a", "film", "story", "actor", "plot", "scene", "great", "dull", "moving", "funny", "slow", "sharp", "warm", "cold", "script"]
        base = [" ".join(rng.choice(words, size=rng.integers(8, 40))) for _ in range(12_000)]
    rng = np.random.default_rng(0)
    idx = rng.permutation(np.resize(np.arange(len(base)), max(n, len(base))))[:n]
    return [base[i] for i in idx]


def throughput(args: argparse.Namespace) -> dict[str, float]:
    import torch

    enc = TextEncoder(args.model, device=args.device)
    dev = enc.device
    texts = load_texts(args.n, allow_synthetic=args.device == "cuda")
    rng = np.random.default_rng(1)
    # a head fitted on random vectors costs what one fitted on the texts costs
    clf = TextClassifier(enc, calibration="none").fit_embeddings(
        rng.normal(size=(64, enc.dim)).astype(np.float32), ["fresh", "rotten"] * 32)
    tok, model, m = enc.tokenizer, enc.model, enc.max_length
    print(f"device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else platform.processor() or 'cpu'}), "
          f"dtype {enc.dtype}, torch threads {torch.get_num_threads()}, {len(texts)} texts, max_length {m}")

    def head(pooled):
        return torch.softmax(pooled @ torch.as_tensor(clf.coef_.T, device=dev) + torch.as_tensor(clf.intercept_, device=dev), -1)

    def forward(batch_texts):
        b = tok(batch_texts, padding=True, truncation=True, max_length=m, return_tensors="pt").to(dev)
        h = model(**b).last_hidden_state
        mask = b["attention_mask"].unsqueeze(-1).to(h.dtype)
        pooled = torch.nn.functional.normalize(((h * mask).sum(1) / mask.sum(1)).float(), dim=1)
        return head(pooled).cpu()

    n_item = min(len(texts), args.n_per_item)
    results: dict[str, float] = {}

    def per_item():
        with torch.inference_mode():
            for t in texts[:n_item]:
                forward([t])

    def fixed32():
        with torch.inference_mode():
            for i in range(0, len(texts), 32):
                forward(texts[i:i + 32])

    def ours():
        clf.predict_proba(texts)
        _sync(dev)

    pre = list(enc.batches(enc.tokenize(texts)[0]))

    def model_only():
        with torch.inference_mode():
            for b in pre:
                enc._forward(b)
        _sync(dev)

    runs = [("per-item loop", per_item, n_item), ("fixed batches of 32, unsorted", fixed32, len(texts))]
    try:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(enc.model_path), device=str(dev))
        if dev.type == "cuda":
            st = st.to(enc.dtype)
        runs.append(("sentence-transformers encode", lambda: st.encode(texts, batch_size=32), len(texts)))
    except ImportError:
        print("sentence-transformers not installed: its row is skipped")
    runs += [("ours (predict_proba)", ours, len(texts)), ("model only, pre-tokenized", model_only, len(texts))]

    for name, fn, count in runs:
        if name == "per-item loop":  # warm-up on a few items
            with torch.inference_mode():
                forward(texts[:1])
        else:
            fn() if count <= 5000 else None
        secs = _timed(fn, args.repeats)
        results[name] = count / secs
        print(f"  {name:32s} {results[name]:10.1f} texts/s")
    base = results["ours (predict_proba)"]
    print("ratios of our path:")
    for name, rate in results.items():
        if name != "ours (predict_proba)":
            print(f"  ours / {name:32s} {base / rate:6.2f}x")
    return results


def _embed_cached(enc: TextEncoder, name: str, texts: list[str]) -> np.ndarray:
    key = hashlib.sha256(("\n".join(texts) + str(enc.model_path) + str(enc.max_length)).encode()).hexdigest()[:16]
    path = OUT / f"emb-{name}-{key}-{enc.device.type}.npy"
    if path.exists():
        return np.load(path)
    x = enc.encode(texts, progress=True)
    OUT.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    return x


def calibration(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    from connector.datasets import bbc_news, rotten_tomatoes

    enc = TextEncoder(args.model, device=args.device)
    out: dict[str, dict[str, float]] = {}
    for ds in (rotten_tomatoes(full=True), bbc_news()):
        x = _embed_cached(enc, ds.name, ds.texts)
        y_all = np.array(ds.labels)
        # (a) one 60/20/20 stratified split: head on 60 %, temperature on 20 %, ECE on 20 %
        rest, test = stratified_split(y_all, 0.2, seed=args.seed)
        clf = TextClassifier(enc, calibration="holdout", calibration_fraction=0.25, random_state=args.seed).fit_embeddings(
            x[rest], y_all[rest].tolist())
        y = clf.label_indices(y_all[test].tolist())
        raw = clf.predict_proba_from_embeddings(x[test], calibrated=False)
        cal = clf.predict_proba_from_embeddings(x[test])
        split = (expected_calibration_error(raw, y), expected_calibration_error(cal, y))
        # (b) 5-fold cross-fitting: every item held out once, ECE over all of them (less noise)
        rng = np.random.default_rng(args.seed)
        fold = np.empty(len(y_all), dtype=int)
        for c in np.unique(y_all):
            idx = rng.permutation(np.flatnonzero(y_all == c))
            fold[idx] = np.arange(len(idx)) % 5
        raws, cals, ys, temps = [], [], [], []
        for k in range(5):
            tr, te = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
            c5 = TextClassifier(enc, calibration="holdout", calibration_fraction=0.25, random_state=args.seed + k).fit_embeddings(
                x[tr], y_all[tr].tolist())
            ys.append(c5.label_indices(y_all[te].tolist()))
            raws.append(c5.predict_proba_from_embeddings(x[te], calibrated=False))
            cals.append(c5.predict_proba_from_embeddings(x[te]))
            temps.append(c5.temperature_)
        R, C, Y = np.concatenate(raws), np.concatenate(cals), np.concatenate(ys)
        cv = (expected_calibration_error(R, Y), expected_calibration_error(C, Y))
        acc = float((C.argmax(1) == Y).mean())
        out[ds.name] = {"n": len(y_all), "accuracy_cv": acc, "ece_split_before": split[0], "ece_split_after": split[1],
                        "ece_cv_before": cv[0], "ece_cv_after": cv[1], "temperature_mean": float(np.mean(temps)),
                        "n_test_split": len(test)}
        png = reliability_diagram({"uncalibrated": (R, Y), "temperature-scaled": (C, Y)},
                                  OUT / f"reliability-{ds.name}.png", title=f"{ds.name}, 5-fold held-out")
        print(f"  {ds.name:16s} n={len(y_all):6d} acc {acc:.4f} T~{np.mean(temps):.3f} | ECE split(n={len(test)}) "
              f"{split[0]:.4f} -> {split[1]:.4f} | ECE 5-fold held-out {cv[0]:.4f} -> {cv[1]:.4f}  ({png.name})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="'default' (bundled MiniLM) or a local HF model dir")
    ap.add_argument("--device", default=None)
    ap.add_argument("--n", type=int, default=None, help="texts for the batched paths (CPU 2000, GPU 40000)")
    ap.add_argument("--n-per-item", type=int, default=None, help="texts for the per-item loop (CPU: all, GPU 2000)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-ece", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    import torch

    on_gpu = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    args.n = args.n or (40_000 if on_gpu else 2_000)
    args.n_per_item = args.n_per_item or (2_000 if on_gpu else args.n)
    report: dict = {"machine": platform.node(), "cpu_count": os.cpu_count()}
    if not args.skip_throughput:
        print("== throughput")
        report["throughput"] = throughput(args)
    if not args.skip_ece:
        print("== calibration (15-bin ECE)")
        report["calibration"] = calibration(args)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "predict.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
