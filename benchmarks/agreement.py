"""Agreement metrics over 1,000,000 annotations, ours against the reference implementations (run by hand).

Data: a ratings matrix of 142,858 items x 10 annotators (1,428,580 cells) with exactly 428,580 cells
missing (-1, 30.0%), so exactly 1,000,000 answers over 5 labels; each annotator keeps the item's
true label with probability 0.6, otherwise answers uniformly at random.

Ours, in one run: Cohen's kappa for all 45 pairs, Fleiss' kappa (varying-count generalisation, all
items), Krippendorff's alpha (nominal), percent agreement and one pairwise confusion matrix.
References on the same data: scikit-learn ``cohen_kappa_score`` for each of the 45 pairs,
statsmodels ``fleiss_kappa`` on the complete rows (its only valid input), and the ``krippendorff``
package. Prints each time, the ratio, the largest difference of the values, and whether ours met
"< 2 s total". Asserts nothing.

    PYTHONPATH=. python benchmarks/agreement.py [--seed 0] [--repeat 3]
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connector.agreement import (
    cohen_kappa_matrix,
    fleiss_kappa,
    krippendorff_alpha_nominal,
    pairwise_confusion,
    percent_agreement,
)

N_ITEMS, N_ANNOTATORS, N_CLASSES, N_MISSING = 142_858, 10, 5, 428_580


def make_ratings(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, N_CLASSES, size=N_ITEMS)
    noise = rng.integers(0, N_CLASSES, size=(N_ITEMS, N_ANNOTATORS))
    R = np.where(rng.random((N_ITEMS, N_ANNOTATORS)) < 0.6, truth[:, None], noise).astype(np.int64)
    R.reshape(-1)[rng.choice(R.size, size=N_MISSING, replace=False)] = -1
    return R


def best_of(repeat: int, fn):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def ours(R: np.ndarray) -> dict:
    k = N_CLASSES
    return {
        "cohen": cohen_kappa_matrix(R, n_classes=k),
        "fleiss": fleiss_kappa(R, n_classes=k),
        "fleiss_complete": fleiss_kappa(R[(R >= 0).all(axis=1)], n_classes=k),
        "alpha": krippendorff_alpha_nominal(R, n_classes=k),
        "percent": percent_agreement(R, n_classes=k),
        "confusion_0_1": pairwise_confusion(R, 0, 1, n_classes=k),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs for ours (references run once)")
    args = ap.parse_args()

    from importlib.metadata import version

    import krippendorff
    from sklearn.metrics import cohen_kappa_score
    from statsmodels.stats.inter_rater import aggregate_raters
    from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss

    R = make_ratings(args.seed)
    n_answers = int((R >= 0).sum())
    complete = (R >= 0).all(axis=1)
    libs = ", ".join(f"{d} {version(d)}" for d in ("numpy", "scikit-learn", "statsmodels", "krippendorff"))
    print(f"python {platform.python_version()}, {libs}, {platform.machine()}")
    print(f"ratings {R.shape[0]:,} x {R.shape[1]} = {R.size:,} cells, {n_answers:,} answers "
          f"({1 - n_answers / R.size:.4%} missing), {N_CLASSES} labels, {int(complete.sum()):,} complete rows")

    # ours, every metric in one run, and each alone
    t_all, res = best_of(args.repeat, lambda: ours(R))
    parts = {
        "cohen (45 pairs)": lambda: cohen_kappa_matrix(R, n_classes=N_CLASSES),
        "fleiss": lambda: fleiss_kappa(R, n_classes=N_CLASSES),
        "krippendorff": lambda: krippendorff_alpha_nominal(R, n_classes=N_CLASSES),
        "percent agreement": lambda: percent_agreement(R, n_classes=N_CLASSES),
        "confusion (0, 1)": lambda: pairwise_confusion(R, 0, 1, n_classes=N_CLASSES),
    }
    t_ours = {name: best_of(args.repeat, fn)[0] for name, fn in parts.items()}

    # references, once each
    def sk_all():
        K = np.full((N_ANNOTATORS, N_ANNOTATORS), np.nan)
        for a, b in itertools.combinations(range(N_ANNOTATORS), 2):
            both = (R[:, a] >= 0) & (R[:, b] >= 0)
            K[a, b] = K[b, a] = cohen_kappa_score(R[both, a], R[both, b])
        return K

    def sm():
        return sm_fleiss(aggregate_raters(R[complete], n_cat=N_CLASSES)[0], method="fleiss")

    def kr():
        data = np.where(R >= 0, R, np.nan).astype(np.float64).T
        return krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")

    t_sk, K_ref = best_of(1, sk_all)
    t_sm, fleiss_ref = best_of(1, sm)
    t_kr, alpha_ref = best_of(1, kr)

    off = ~np.eye(N_ANNOTATORS, dtype=bool)
    rows = [
        ("cohen (45 pairs)", t_ours["cohen (45 pairs)"], "sklearn cohen_kappa_score x45", t_sk,
         float(np.abs(res["cohen"][off] - K_ref[off]).max())),
        ("fleiss (all items)", t_ours["fleiss"], "statsmodels fleiss_kappa (complete rows)", t_sm,
         abs(res["fleiss_complete"] - fleiss_ref)),
        ("krippendorff", t_ours["krippendorff"], "krippendorff.alpha nominal", t_kr, abs(res["alpha"] - alpha_ref)),
    ]
    print(f"\n{'metric':<20}{'ours s':>10}  {'reference':<42}{'ref s':>9}{'ratio':>9}{'max |diff|':>12}")
    for name, t, ref_name, tr, diff in rows:
        print(f"{name:<20}{t:>10.4f}  {ref_name:<42}{tr:>9.4f}{tr / t:>8.1f}x{diff:>12.2e}")
    for name in ("percent agreement", "confusion (0, 1)"):
        print(f"{name:<20}{t_ours[name]:>10.4f}  {'(no reference)':<42}")
    t_ref = t_sk + t_sm + t_kr
    print(f"\nours, all metrics in one run (best of {args.repeat}): {t_all:.3f} s; "
          f"references: {t_ref:.3f} s ({t_ref / t_all:.1f}x)")
    print(f"values: fleiss {res['fleiss']:.6f} (complete rows {res['fleiss_complete']:.6f}), "
          f"alpha {res['alpha']:.6f}, percent {res['percent']:.6f}, "
          f"mean cohen {res['cohen'][off].mean():.6f}")
    print(f"target < 2 s total: {'met' if t_all < 2.0 else 'NOT met'} ({t_all:.3f} s)")


if __name__ == "__main__":
    main()
