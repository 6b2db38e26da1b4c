"""Confidence calibration: temperature scaling (one head, or several heads averaged) and expected
calibration error.

Only numpy is imported here (matplotlib lazily, for the diagram; scipy lazily, to fit several
temperatures), so the predict path can be measured on a bare GPU machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``, numerically stable."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_loss(probs: np.ndarray, y: np.ndarray, *, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true class."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], eps, 1.0))))


class TemperatureScaler:
    """Fit one temperature ``T`` so that ``softmax(logits / T)`` minimises held-out NLL.

    NLL is convex in the inverse temperature ``beta = 1 / T``: its derivative is
    ``mean(E_p[z] - z_y)`` and its second derivative ``mean(Var_p[z]) >= 0``, so a
    safeguarded Newton iteration on ``beta`` finds the exact optimum in a few steps.
    """

    def __init__(self, *, max_iter: int = 100, tol: float = 1e-10, min_temperature: float = 1e-3,
                 max_temperature: float = 1e3) -> None:
        self.max_iter = max_iter
        self.tol = tol
        self.min_temperature = min_temperature
        self.max_temperature = max_temperature

    def fit(self, logits: np.ndarray, y: np.ndarray) -> TemperatureScaler:
        z = np.asarray(logits, dtype=np.float64)
        y = np.asarray(y, dtype=np.int64)
        if z.ndim != 2 or len(z) != len(y) or len(y) == 0:
            raise ValueError(f"logits must be (n, k) with n == len(y) > 0, got {z.shape} and {y.shape}")
        if y.min() < 0 or y.max() >= z.shape[1]:
            raise ValueError("labels must be class indices in [0, k)")
        zy = z[np.arange(len(y)), y]
        lo, hi = 1.0 / self.max_temperature, 1.0 / self.min_temperature
        beta = 1.0
        for it in range(1, self.max_iter + 1):
            self.n_iter_ = it
            p = softmax(z, 1.0 / beta)
            mean_z = (p * z).sum(axis=1)
            grad = float(np.mean(mean_z - zy))
            hess = float(np.mean((p * z * z).sum(axis=1) - mean_z**2))
            if grad > 0:
                hi = min(hi, beta)
            else:
                lo = max(lo, beta)
            step = grad / hess if hess > 1e-15 else np.inf
            new_beta = beta - step
            if not (lo < new_beta < hi):  # Newton left the bracket: bisect instead
                new_beta = 0.5 * (lo + hi)
            if abs(new_beta - beta) <= self.tol * max(1.0, beta):
                beta = new_beta
                break
            beta = new_beta
        self.temperature_ = float(1.0 / beta)
        self.nll_before_ = log_loss(softmax(z), y)
        self.nll_after_ = log_loss(softmax(z, self.temperature_), y)
        return self

    def transform(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for ``logits``."""
        return softmax(logits, self.temperature_)


def averaged_temperatures(logits: Sequence[np.ndarray], y: np.ndarray, *, prior_sd: float | None = None,
                          min_temperature: float = 1e-3, max_temperature: float = 1e3,
                          grid: int = 23) -> list[float]:
    """One temperature per head such that the average of the heads' tempered softmaxes, the
    probability a model with several heads serves, minimises NLL on ``y``.

    Calibrating each head on its own and averaging leaves the average underconfident wherever the
    heads disagree; fitted jointly, the temperatures also weigh the heads (a head no better than
    chance on ``y`` is flattened). ``prior_sd``: a Gaussian prior on each ``log T``, centred on
    ``T = 1``: the fit maximises the posterior (NLL summed over the labels plus
    ``sum(log T ** 2) / (2 prior_sd ** 2)``), so a few labels move the temperatures little and
    many labels as much as they say; ``None``: maximum likelihood. One head without a prior:
    :class:`TemperatureScaler`; else the best point of a log-spaced ``grid`` per head, refined by
    L-BFGS-B within the bounds (scipy, imported lazily).
    """
    zs = [np.asarray(z, dtype=np.float64) for z in logits]
    y = np.asarray(y, dtype=np.int64)
    if not zs or any(z.shape != zs[0].shape for z in zs) or zs[0].ndim != 2 or len(y) != len(zs[0]) or not len(y):
        raise ValueError("logits must be (n, k) arrays of one shape with n == len(y) > 0")
    if len(zs) == 1 and prior_sd is None:
        scaler = TemperatureScaler(min_temperature=min_temperature, max_temperature=max_temperature)
        return [scaler.fit(zs[0], y).temperature_]
    from itertools import product

    from scipy.optimize import minimize

    lo, hi = np.log(min_temperature), np.log(max_temperature)
    weight = 0.0 if prior_sd is None else 1.0 / (2.0 * prior_sd**2 * len(y))  # the prior, per label

    def objective(log_t: np.ndarray) -> float:
        p = sum(softmax(z, float(np.exp(t))) for z, t in zip(zs, log_t)) / len(zs)
        return log_loss(p, y) + weight * float(np.sum(np.square(log_t)))

    points = np.linspace(lo, hi, grid)
    start = min((np.array(c) for c in product(points, repeat=len(zs))), key=objective)
    best = minimize(objective, start, method="L-BFGS-B", bounds=[(lo, hi)] * len(zs))
    log_t = best.x if best.fun <= objective(start) else start
    return [float(np.exp(t)) for t in log_t]


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, *, n_bins: int = 15) -> float:
    """Top-label ECE with ``n_bins`` equal-width confidence bins over (0, 1].

    ``sum_b |B_b| / n * |accuracy(B_b) - mean confidence(B_b)|``; a confidence of exactly
    ``k / n_bins`` falls in bin ``k`` (right-closed bins, as in Guo et al. 2017).
    """
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        raise ValueError("ECE of an empty set is undefined")
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    gap = np.bincount(bins, weights=correct - conf, minlength=n_bins)
    return float(np.abs(gap).sum() / len(y))


def reliability_bins(probs: np.ndarray, y: np.ndarray, *, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin ``count``, mean ``confidence`` and ``accuracy`` (NaN for empty bins)."""
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(y)).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(bins, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / count
    return {"count": count, "confidence": confidence, "accuracy": accuracy}


def reliability_diagram(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, *,
                        n_bins: int = 15, title: str = "Reliability diagram") -> Path:
    """Write a PNG reliability diagram; ``curves`` maps a name to ``(probs, y)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect")
    for name, (probs, y) in curves.items():
        b = reliability_bins(probs, y, n_bins=n_bins)
        keep = b["count"] > 0
        ece = expected_calibration_error(probs, y, n_bins=n_bins)
        ax.plot(b["confidence"][keep], b["accuracy"][keep], marker="o", label=f"{name} (ECE {ece:.3f})")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper left")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
