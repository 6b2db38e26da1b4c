"""Turn calibrated probability rows into prediction records."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from connector.uncertainty import entropy, margin


@dataclass(frozen=True)
class Prediction:
    """One text's prediction: top label, its calibrated probability, and uncertainty."""

    label: str
    confidence: float
    probabilities: dict[str, float]
    entropy: float
    margin: float
    model_version: str
    truncated: bool = False


def to_predictions(probs: np.ndarray, classes: list[str], model_version: str,
                   truncated: np.ndarray | None = None) -> list[Prediction]:
    """One :class:`Prediction` per row of ``probs`` (columns in ``classes`` order)."""
    probs = np.asarray(probs, dtype=np.float64)
    top = probs.argmax(axis=1)
    ent, mar = entropy(probs), margin(probs)
    trunc = truncated if truncated is not None else np.zeros(len(probs), dtype=bool)
    return [
        Prediction(
            label=classes[top[i]],
            confidence=float(probs[i, top[i]]),
            probabilities={c: float(p) for c, p in zip(classes, probs[i])},
            entropy=float(ent[i]),
            margin=float(mar[i]),
            model_version=model_version,
            truncated=bool(trunc[i]),
        )
        for i in range(len(probs))
    ]
