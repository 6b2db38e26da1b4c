"""Confidence calibration: temperature scaling (one head, or several heads averaged), Platt scaling
of a yes/no score (one label of a multi-label model), and expected calibration error (top-label,
and per label for label sets).

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


def sigmoid(z: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-z))``, numerically stable."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def logit(p: np.ndarray, *, eps: float = 1e-12) -> np.ndarray:
    """``log(p / (1 - p))``, ``p`` clipped to ``[eps, 1 - eps]``."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return np.log(p) - np.log1p(-p)


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


class PlattScaler:
    """Fit ``a, b`` so that ``sigmoid(a * z + b)`` minimises the NLL of yes/no labels ``y`` (Platt 1999).

    ``prior_sd``: a Gaussian prior on ``a - 1`` and on ``b``, centred on the identity (``a = 1, b = 0``),
    so a few labels move the map little (as :func:`averaged_temperatures`' prior does); ``None``:
    maximum likelihood, which diverges when ``z`` separates ``y``. The objective is convex: Newton's
    method with a backtracking line search finds its optimum in a few steps.
    """

    def __init__(self, *, prior_sd: float | None = 1.0, max_iter: int = 100, tol: float = 1e-10) -> None:
        self.prior_sd = prior_sd
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, z: np.ndarray, y: np.ndarray) -> PlattScaler:
        z = np.asarray(z, dtype=np.float64).ravel()
        y = np.asarray(y, dtype=np.float64).ravel()
        if len(z) != len(y) or not len(y) or not np.isin(y, (0.0, 1.0)).all():
            raise ValueError(f"need one 0/1 label per score, got {len(z)} scores and labels {np.unique(y)[:5]}")
        lam = 0.0 if self.prior_sd is None else 1.0 / (self.prior_sd**2 * len(y))  # the prior, per label
        X = np.stack([z, np.ones_like(z)], axis=1)
        centre = np.array([1.0, 0.0])

        def objective(theta: np.ndarray) -> float:
            s = X @ theta
            nll = float(np.mean(np.logaddexp(0.0, s) - y * s))
            return nll + 0.5 * lam * float(np.sum((theta - centre) ** 2))

        theta = centre.copy()
        value = objective(theta)
        for it in range(1, self.max_iter + 1):
            self.n_iter_ = it
            p = sigmoid(X @ theta)
            grad = X.T @ (p - y) / len(y) + lam * (theta - centre)
            hess = (X * (p * (1 - p))[:, None]).T @ X / len(y) + (lam + 1e-12) * np.eye(2)
            step = np.linalg.solve(hess, grad)
            t = 1.0
            while t > 1e-10 and objective(theta - t * step) > value - 1e-4 * t * float(grad @ step):
                t /= 2
            new = theta - t * step
            new_value = objective(new)
            done = abs(value - new_value) <= self.tol * max(1.0, abs(value))
            theta, value = new, new_value
            if done:
                break
        self.a_, self.b_ = float(theta[0]), float(theta[1])
        return self

    def transform(self, z: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of ``z``."""
        return sigmoid(self.a_ * np.asarray(z, dtype=np.float64) + self.b_)


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


def per_label_ece(probs: np.ndarray, y: np.ndarray, *, n_bins: int = 15) -> np.ndarray:
    """ECE of each label's yes/no decision: column ``l`` of ``probs`` (n, k) holds independent
    probabilities that label ``l`` applies, ``y`` (n, k) 0/1 says whether it does. Each column is
    scored as a two-class problem, ``[1 - p, p]``, by :func:`expected_calibration_error` (so the
    confidence binned is ``max(p, 1 - p)``, the decision's). Returns ``(k,)``."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    if probs.ndim != 2 or probs.shape != y.shape:
        raise ValueError(f"probs and y must both be (n, k), got {probs.shape} and {y.shape}")
    return np.array([expected_calibration_error(np.stack([1 - probs[:, j], probs[:, j]], axis=1),
                                                y[:, j].astype(np.int64), n_bins=n_bins)
                     for j in range(probs.shape[1])])


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
