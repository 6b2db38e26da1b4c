"""Retraining on 10,000 human labels with the embedding cache, against encoding from scratch (run by hand).

Data: 10,000 Rotten Tomatoes snippets (the full corpus, deduplicated, first 10,000 by a fixed
shuffle) ingested into a fresh SQLite state store with settled labels. Runs ``retrain_job``
three times on the same labels:

1. cold: nothing cached, every text is encoded (the cost without a cache);
2. warm: every embedding comes from the cache (the scheduler's steady state);
3. warm + 500 new labels: only the new texts are encoded.

Prints each time, how many texts were encoded, and the cold/warm ratio. Asserts nothing.

    PYTHONPATH=. python benchmarks/retrain.py [--n 10000]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from connector.classifier import TextClassifier
from connector.datasets import rotten_tomatoes
from connector.model_store import ModelStore
from connector.store import StateStore
from connector.task_spec import TaskSpec
from sync.jobs import JobContext, retrain_job


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    args = ap.parse_args()
    ds = rotten_tomatoes(full=True)
    order = np.random.default_rng(0).permutation(len(ds.texts))
    extra = 500
    idx = order[: args.n + extra]
    texts = [ds.texts[i] for i in idx]
    labels = [ds.labels[i] for i in idx]
    with tempfile.TemporaryDirectory() as tmp:
        store = StateStore(f"sqlite:///{tmp}/state.db")
        store.migrate()
        store.items.ingest([{"id": f"rt{i}", "text": t} for i, t in enumerate(texts)])
        ids = {it.external_id: it.id for it in store.items.list()}

        def settle(rng: range) -> None:
            store.labels.save([{"item_id": ids[f"rt{i}"], "label": labels[i], "status": "settled",
                                "method": "majority", "n_answers": 1, "reason": "settled"} for i in rng])

        settle(range(args.n))
        models = ModelStore(Path(tmp) / "models")
        seed_clf = TextClassifier(calibration="none").fit(texts[:20], labels[:20])
        models.save(seed_clf, encoder_ref="default", promote=True)
        spec = TaskSpec(name="bench", labels=["fresh", "rotten"], retraining={"min_new_labels": 1})
        ctx = JobContext(store, spec, models)
        rows = []
        for name, prepare in (("cold (nothing cached)", None), ("warm (all cached)", None),
                              (f"warm + {extra} new labels", lambda: settle(range(args.n, args.n + extra)))):
            if prepare:
                prepare()
            t0 = time.perf_counter()
            out = retrain_job(ctx, force=True)
            rows.append((name, time.perf_counter() - t0, out["encoded"], out["n_train"] + out["n_test"], out["promoted"]))
        store.close()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch threads {__import__('torch').get_num_threads()}")
    print(f"{'run':28s} {'seconds':>8s} {'encoded':>8s} {'labels':>7s}  promoted")
    for name, secs, enc, n, promoted in rows:
        print(f"{name:28s} {secs:8.2f} {enc:8d} {n:7d}  {promoted}")
    print(f"cold / warm: {rows[0][1] / rows[1][1]:.1f}x")


if __name__ == "__main__":
    main()
