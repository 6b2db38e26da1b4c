"""Sections 2 and 3, from the latest retraining's held-out predictions: the reliability diagram
before and after temperature scaling, and the accuracy of the final labels against the review rate
(:func:`accuracy_vs_review`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from connector.calibration import expected_calibration_error, reliability_bins
from connector.report.figures import embed
from connector.report.markup import NO_DATA, esc, finite, mpl_text, nodata, num, pct, stamp
from connector.snapshots import Dated, RetrainSnapshot, ThresholdsSnapshot

N_BINS = 15  # as in connector.calibration and the retraining's ECE


def accuracy_vs_review(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy of the final labels when the least confident items go to human review.

    ``probs`` (n, k) are the model's probabilities, ``y`` (n,) the true class indices. Items are
    sorted by top-class confidence, ascending (ties in their given order); when the lowest ``m`` are
    reviewed (humans assumed right) and the rest keep the model's label, accuracy is
    ``(m + correct among the others) / n``. Returns ``(review_rates, accuracy)``, both of length
    ``n + 1`` for ``m = 0 .. n``: ``accuracy[0]`` is the model's accuracy, ``accuracy[-1]`` is 1.0.
    """
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if probs.ndim != 2 or y.ndim != 1 or len(probs) != len(y):
        raise ValueError(f"probs must be (n, k) and y (n,), got {probs.shape} and {y.shape}")
    n = len(y)
    if n == 0:
        raise ValueError("accuracy of an empty set is undefined")
    order = np.argsort(probs.max(axis=1), kind="stable")
    correct = (probs.argmax(axis=1) == y)[order]
    correct_after = np.concatenate([np.cumsum(correct[::-1])[::-1], [0]])  # correct among sorted[m:]
    m = np.arange(n + 1)
    return m / n, (m + correct_after) / n

def reliability(retrain: RetrainSnapshot) -> dict[str, np.ndarray] | None:
    """The held-out labels and probabilities as arrays (``uncalibrated`` only when its shape fits),
    or ``None`` when there are none or they do not fit together."""
    rel = retrain.reliability
    try:
        y = np.asarray(rel.y, dtype=np.int64)
        cal = np.asarray(rel.calibrated, dtype=np.float64)
        raw = np.asarray(rel.uncalibrated, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if not len(y) or cal.ndim != 2 or cal.shape[0] != len(y):
        return None
    out = {"y": y, "calibrated": cal}
    if raw.ndim == 2 and raw.shape == cal.shape:
        out["uncalibrated"] = raw
    return out


def calibration_section(plt: Any, latest: Dated[RetrainSnapshot] | None) -> str:
    """Reliability diagram of the latest retraining's candidate, with the ECE before and after."""
    rel = reliability(latest.snapshot) if latest else None
    if latest is None or rel is None:
        return nodata(NO_DATA["calibration"])
    y = rel["y"]
    curves = [(name, rel[key]) for name, key in (("before calibration", "uncalibrated"),
                                                 ("after calibration", "calibrated")) if key in rel]

    def draw(plt: Any) -> Any:
        fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.5, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
        edges = np.linspace(0, 1, N_BINS + 1)
        for (name, probs), color in zip(curves, ("tab:orange", "tab:blue"), strict=False):
            b = reliability_bins(probs, y, n_bins=N_BINS)
            keep = b["count"] > 0
            ece = expected_calibration_error(probs, y, n_bins=N_BINS)
            ax.plot(b["confidence"][keep], b["accuracy"][keep], marker="o", color=color,
                    label=f"{name} (ECE {ece:.3f})")
            hist.hist(probs.max(axis=1), bins=edges, histtype="step", color=color, lw=1.5)
        ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02),
               title=f"Reliability on {len(y)} held-out labels ({N_BINS} bins)")
        ax.legend(loc="upper left")
        hist.set(xlabel="top-class confidence", ylabel="items")
        return fig

    img = embed(plt, draw, "reliability diagram before and after calibration")
    retrain, cm = latest.snapshot, latest.snapshot.candidate_metrics
    return (f'<p class="meta">Held-out labels of candidate {esc(retrain.candidate or "–")} '
            f'(retraining of {esc(stamp(latest.at))}, {"promoted" if retrain.promoted else "not promoted"}). '
            f"ECE {num(cm.ece_uncalibrated)} before and {num(cm.ece)} after temperature scaling.</p>"
            + img)


def accuracy_section(plt: Any, retrain: RetrainSnapshot | None, thresholds: ThresholdsSnapshot | None) -> str:
    """The accuracy-vs-review curve of the held-out items, with the current threshold's review rate."""
    rel = reliability(retrain) if retrain else None
    if rel is None:
        return nodata(NO_DATA["accuracy"])
    probs, y = rel["calibrated"], rel["y"]
    rates, acc = accuracy_vs_review(probs, y)
    base = float(acc[0])
    current_rate = finite(thresholds.review_rate) if thresholds else None
    threshold = finite(thresholds.threshold) if thresholds else None

    def draw(plt: Any) -> Any:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        ax.plot(100 * rates, acc, color="tab:blue", lw=2, label="review the least confident first")
        ax.axhline(base, color="grey", ls="--", lw=1, label=f"no review ({base:.3f})")
        err = 1.0 - base
        ax.plot([0, 100 * err, 100], [base, 1.0, 1.0], color="tab:green", ls=":", lw=1.5,
                label=f"oracle: review exactly the errors ({100 * err:.1f}%)")
        if current_rate is not None:
            at = float(np.interp(current_rate, rates, acc))
            what = "nothing auto-accepted" if threshold is not None and threshold > 1 else f"threshold {threshold:.3g}"
            ax.axvline(100 * current_rate, color="tab:red", lw=1.2,
                       label=f"current {mpl_text(what)}: review {100 * current_rate:.1f}% (acc. {at:.3f})")
        ax.set(xlabel="review rate (% of items sent to humans)", ylabel="accuracy of the final labels",
               xlim=(0, 100), ylim=(max(0.0, min(base, 1.0) - 0.03), 1.005),
               title=f"Accuracy vs review rate ({len(y)} held-out labels)")
        ax.legend(loc="lower right")
        return fig

    img = embed(plt, draw, "accuracy against review rate")
    text = (f"<p class=\"meta\">Held-out items sorted by calibrated confidence; the least confident x% are "
            f"reviewed by humans (taken as right), the rest keep the model's label. No review: {num(base)}; "
            f"the oracle reaches 1.0 at the error rate {pct(1 - base)}.")
    if current_rate is not None:
        text += (f" The current threshold reviews {pct(current_rate)} of the pool, which on these items gives "
                 f"{num(np.interp(current_rate, rates, acc))}.")
    return text + "</p>" + img

