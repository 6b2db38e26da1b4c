"""A retraining with fine-tuning on 300 Rotten Tomatoes labels, against the frozen-only retraining in
the same run (run by hand).

Data: the full Rotten Tomatoes corpus (12,752 unique snippets), shuffled once (seed 0): ``--n``
labelled snippets are the human labels (every one counted as drawn at random, as a seed set is),
``--test`` others the test set, and ``--pool`` others stand for the unlabelled pool a promotion has
to re-score. For each setting (``frozen``: ``[retraining.finetune] enabled = false``; ``finetune``:
the defaults) a fresh model store runs :func:`connector.retraining.retrain` once with the bundled
MiniLM, and the run prints:

- the retraining's wall time (the fine-tuning budget is enforced; the Done-when bound is 5 minutes),
  what was tried and chosen, and the chosen model's accuracy and ECE on the test set;
- the cost of re-embedding the pool with the chosen encoder (a fine-tuned one invalidates the cache).

Ratios are against ``frozen``. Figures go to ``benchmarks/out/retrain_finetune.json``.

    PYTHONPATH=. python benchmarks/retrain_finetune.py [--n 300] [--budget 180]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from connector.calibration import expected_calibration_error
from connector.datasets import rotten_tomatoes
from connector.encoder import TextEncoder
from connector.model_store import ModelStore
from connector.retraining import FinetunePolicy, RetrainPolicy, retrain
from connector.store import StateStore, content_hash

OUT = Path(__file__).resolve().parent / "out" / "retrain_finetune.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--pool", type=int, default=2000)
    ap.add_argument("--budget", type=float, default=FinetunePolicy().budget_s)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    data = rotten_tomatoes(full=True)
    order = np.random.default_rng(args.seed).permutation(len(data.texts))
    lab, test = order[:args.n], order[args.n:args.n + args.test]
    pool = order[args.n + args.test:args.n + args.test + args.pool]
    classes = sorted(set(data.labels))
    texts = [data.texts[i] for i in lab]
    labels = [data.labels[i] for i in lab]
    ext = [f"rt-{i}" for i in lab]
    t_test = [data.texts[i] for i in test]
    y_test = np.array([classes.index(data.labels[i]) for i in test])
    t_pool = [data.texts[i] for i in pool]
    encoder = TextEncoder()
    print(f"{platform.machine()}, {os.cpu_count()} cores; {args.n} labels, {len(test)} test, {len(pool)} pool; "
          f"fine-tuning budget {args.budget:g} s")
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = StateStore(f"sqlite:///{tmp}/cache.db")
        cache.migrate()
        encoder.encode(texts[:8])  # warm the trace
        for setting in ("frozen", "finetune"):
            models = ModelStore(Path(tmp) / setting)
            policy = RetrainPolicy(finetune=FinetunePolicy(enabled=setting == "finetune", budget_s=args.budget))
            t0 = time.perf_counter()
            result = retrain(texts, labels, ext, [content_hash(t) for t in texts], classes=classes, models=models,
                             cache_store=cache, policy=policy, encoder=encoder, seed=args.seed,
                             calibrate_on=[True] * len(texts), progress=True)
            seconds = time.perf_counter() - t0
            meta = models.meta(result.candidate)
            clf, _ = models.load(result.candidate, encoder=encoder)
            t1 = time.perf_counter()
            clf.encoder.encode(t_pool)
            reembed = time.perf_counter() - t1
            probs = clf.predict_proba(t_test)
            tuned = (meta.metrics.get("candidates") or {}).get("finetuned") or {}
            rec = {"setting": setting, "seconds": round(seconds, 2), "choice": meta.metrics.get("choice"),
                   "finetune_s": tuned.get("seconds"), "steps": (tuned.get("finetune") or {}).get("steps_done"),
                   "method": tuned.get("method"), "own_encoder": bool(meta.encoder.get("weights")),
                   "accuracy": float((probs.argmax(1) == y_test).mean()),
                   "ece": expected_calibration_error(probs, y_test),
                   "pool_reembed_s": round(reembed, 2), "pool_texts_per_s": round(len(t_pool) / reembed, 1)}
            records.append(rec)
            print(f"{setting:9s} retraining {seconds:6.1f} s  accuracy {rec['accuracy']:.4f}  ECE {rec['ece']:.4f}  "
                  f"pool re-embedding {reembed:5.1f} s ({rec['pool_texts_per_s']:.0f}/s)")
            print(f"          {rec['choice']}")
        cache.close()
    base, ft = records
    print(f"finetune / frozen: time x{ft['seconds'] / base['seconds']:.1f}, accuracy x{ft['accuracy'] / base['accuracy']:.3f}, "
          f"ECE x{ft['ece'] / max(base['ece'], 1e-9):.2f}; within 5 minutes: {ft['seconds'] <= 300}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores", "n": args.n,
                               "budget_s": args.budget, "runs": records}, indent=1))


if __name__ == "__main__":
    main()
