"""Per-label calibration of :class:`connector.multilabel.MultiLabelClassifier` on SYNTHETIC
embeddings (run by hand: ``python benchmarks/multilabel_calibration.py``).

No multi-label text set shipped in a registry package was at hand, so the data are drawn: unit
vectors in 384 dimensions (MiniLM's width), ``k`` labels each from its own logistic model on the
vector, prevalences from 3 % to 40 % (rare labels are where calibration matters). The heads are fitted
on ``--train`` rows and measured on 4,000 others: per-label ECE (15 bins, the yes/no decision's
confidence), log loss, and two task scores' ECE against "every label of the item decided right":
the least confident label decision (``ECE min``, the routing score) and the product of the
decisions' confidences (``ECE prod``), for no calibration, a temperature per label and Platt per
label, each fitted on 5-fold out-of-fold logits. Prints one table per training size.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from connector.calibration import expected_calibration_error, per_label_ece, sigmoid
from connector.multilabel import MultiLabelClassifier
from connector.uncertainty import label_set_confidence

PREVALENCE = np.array([0.40, 0.25, 0.15, 0.10, 0.06, 0.03])


def draw(n: int, d: int, seed: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors and label sets; ``noise``: share of the label decisions flipped at random (the
    heads, logistic, are then misspecified)."""
    rng = np.random.default_rng(seed)
    k = len(PREVALENCE)
    W = rng.normal(size=(k, d)) * 4.0  # on unit vectors the logits have SD 4: a strong, noisy signal
    x = rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    z = x @ W.T
    b = np.array([np.quantile(-z[:, j], 1 - p) for j, p in enumerate(PREVALENCE)])  # hits each prevalence
    Y = (rng.random((n, k)) < sigmoid(z + b)).astype(np.int8)
    flip = rng.random((n, k)) < noise
    return x.astype(np.float32), np.where(flip, 1 - Y, Y).astype(np.int8)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, nargs="+", default=[300, 1000, 3000])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--C", type=float, default=10.0)
    ap.add_argument("--noise", type=float, default=0.0, help="share of label decisions flipped at random")
    args = ap.parse_args()
    labels = [f"L{j}" for j in range(len(PREVALENCE))]
    x, Y = draw(max(args.train) + 4000, 384, args.seed, args.noise)
    x_test, Y_test = x[-4000:], Y[-4000:]
    for n in args.train:
        sets = [[labels[j] for j in np.flatnonzero(row)] for row in Y[:n]]
        print(f"\ntrain {n} rows, {args.noise:.0%} flipped; prevalence {', '.join(f'{p:.0%}' for p in PREVALENCE)}")
        print(f"{'calibration':<12} {'per-label ECE':<36} {'mean':>6} {'logloss':>8} {'ECE min':>8} "
              f"{'ECE prod':>8} {'fit s':>6}")
        for name, params in [("none", {"calibration": "none"}), ("temperature", {}),
                             ("platt", {"calibration_method": "platt"})]:
            t = time.perf_counter()
            clf = MultiLabelClassifier(C=args.C, classes=labels, **params).fit_embeddings(x[:n], sets)
            fit_s = time.perf_counter() - t
            P = clf.predict_proba_from_embeddings(x_test)
            ece = per_label_ece(P, Y_test)
            eps = 1e-12
            ll = float(-np.mean(Y_test * np.log(P + eps) + (1 - Y_test) * np.log(1 - P + eps)))
            all_right = ((P >= 0.5) == Y_test).all(axis=1).astype(int)
            task_ece = [expected_calibration_error(np.stack([1 - s, s], 1), all_right)
                        for s in (clf.task_score(P), label_set_confidence(P))]
            print(f"{name:<12} {' '.join(f'{e:.3f}' for e in ece):<36} {ece.mean():6.3f} {ll:8.4f} "
                  f"{task_ece[0]:8.3f} {task_ece[1]:8.3f} {fit_s:6.1f}")


if __name__ == "__main__":
    main()
